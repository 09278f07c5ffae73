"""How the cost of one request grows with history length and candidate count, per engine.

    python -m oneranker_perf.scaling_bench --preset paper --out perf/results/scaling

An untrained model of the preset (cost does not depend on the weights) is exported to ONNX;
generate (Steps 1-2 + KV) and rank (Step 3) are timed in process with ONNX Runtime and PyTorch
side by side, for history lengths 128..2048 and candidate counts 64..1024, next to the analytic
FLOPs of each stage and the matmul rate torch reaches on this machine in the same run (the
"fraction of machine peak"). Also: the unified ranker (KV pass-through) vs the cascade ranker that
re-encodes the history (generate + rank) at the same shapes. And the served request path new vs
old (`new_vs_old`): one untrained release of the preset, built by `oneranker build --engine
onnxruntime`, answers the same requests through the in-graph beam search ("new", the fused model's
Recommender) and through the decoder-state graph + numpy beam search ("old"), interleaved, with
the fraction of the matmul rate the new path reaches. Writes results.md/json/png and summary.json
(`summary`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from oneranker_serving.selection import stream_matrix
from oneranker_serving.tokenize import bucket_for

from .common import flops, git_commit, machine, matmul_gflops, reproduce_command
from .gpu_check import PAPER_LOG, synthetic_request, to_request, untrained_release_config
from .summary_file import write_summary
from .topology_bench import paired_in_process

WARMUP_CALLS = 3  # per path and case, before timing: the first calls of a new shape allocate


def time_call(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def run(
    preset_name: str,
    out: Path,
    lengths,
    counts,
    threads: int,
    repeats: int,
    command: str = "",
    new_vs_old_repeats: int = 0,
) -> dict:
    import torch

    from oneranker.config import preset
    from oneranker.reference import ModuleRunner
    from oneranker_build.export import example_candidates, example_generator_inputs, export_decoder_state_graphs
    from oneranker_serving.runners.onnxruntime import OrtRunner

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    cfg = preset(preset_name)
    cfg.model.max_history = max(max(lengths), cfg.model.max_history)
    model = _untrained_model(cfg)
    peak = matmul_gflops(threads)
    export_dir = Path(tempfile.mkdtemp(prefix="oneranker_scaling_"))
    print(f"[scaling] exporting {preset_name} graphs ...", flush=True)
    export_decoder_state_graphs(model, export_dir, 64, 32, cfg.model.max_history)
    (export_dir / "export_info.json").write_text(
        json.dumps(
            {
                "dims": {
                    "F": model.num_prefix,
                    "D": model.depth,
                    "K": model.codes,
                    "H": cfg.model.num_task_tokens,
                    "R2": 2 * cfg.model.r_layers,
                    "DM": cfg.model.d_model,
                },
                "num_step2_tokens": cfg.model.num_step2_tokens,
            }
        )
    )
    engines = {"onnxruntime": OrtRunner(export_dir, threads=threads), "torch": ModuleRunner(model)}
    rows = []
    for length in lengths:
        inputs = {k: v.numpy() for k, v in example_generator_inputs(model, 1, length).items()}
        inputs["hist_len"][:] = length
        for n in counts:
            cands = {k: v.numpy() for k, v in example_candidates(model, 1, n, 64, 32).items()}
            fl = flops(cfg, length, n)
            row = {
                "history": length,
                "candidates": n,
                "gflop_generate": fl["generate"] / 1e9,
                "gflop_rank": fl["rank"] / 1e9,
            }
            for name, runner in engines.items():
                _, kv = runner.generate(inputs)
                row[f"{name}_generate_ms"] = 1e3 * time_call(
                    lambda: _release(runner, runner.generate(inputs)[1]), repeats
                )
                row[f"{name}_rank_ms"] = 1e3 * time_call(
                    lambda: runner.rank(
                        kv, inputs["hist_len"], cands["cand_sids"], cands["cand_attrs"], cands["cand_bid"]
                    ),
                    repeats,
                )
                _release(runner, kv)
            ort_total = row["onnxruntime_generate_ms"] + row["onnxruntime_rank_ms"]
            row["fraction_of_peak"] = (fl["generate"] + fl["rank"]) / 1e9 / (ort_total / 1e3) / peak
            # cascade ranker: the ranker re-encodes the history before ranking the same candidates
            row["cascade_rank_ms"] = row["onnxruntime_generate_ms"] + row["onnxruntime_rank_ms"]
            row["unified_rank_ms"] = row["onnxruntime_rank_ms"]
            rows.append(row)
            print(
                f"[scaling] L={length:5d} n={n:5d}  ort gen {row['onnxruntime_generate_ms']:7.2f} ms "
                f"rank {row['onnxruntime_rank_ms']:7.2f} ms | torch gen {row['torch_generate_ms']:7.2f} "
                f"rank {row['torch_rank_ms']:7.2f} ms | {row['fraction_of_peak']:.1%} of peak",
                flush=True,
            )
    results = {
        "preset": preset_name,
        "machine": machine(),
        "commit": git_commit(),
        "command": command,
        "threads": threads,
        "matmul_gflops": peak,
        "rows": rows,
        "kv_binding": bound_vs_unbound(
            export_dir, model, lengths[len(lengths) // 2], counts[len(counts) // 2], threads, repeats * 4
        ),
    }
    if new_vs_old_repeats:
        results["new_vs_old"] = new_vs_old(preset_name, lengths, counts, threads, new_vs_old_repeats, peak)
    write_report(results, out)
    return results


def bound_vs_unbound(export_dir: Path, model, length: int, n: int, threads: int, repeats: int) -> dict:
    """generate + rank with the KV bound in place (pooled OrtValue, IOBinding) vs returned to
    numpy and fed back (plain session.run), interleaved so drift hits both alike."""
    from oneranker_build.export import example_candidates, example_generator_inputs
    from oneranker_serving.runners.onnxruntime import OrtRunner

    inputs = {k: v.numpy() for k, v in example_generator_inputs(model, 1, length).items()}
    cands = {k: v.numpy() for k, v in example_candidates(model, 1, n, 64, 32).items()}
    runners = {
        "bound": OrtRunner(export_dir, threads=threads, bind_kv=True),
        "unbound": OrtRunner(export_dir, threads=threads, bind_kv=False),
    }
    times = {name: [] for name in runners}
    for _ in range(repeats):
        for name, runner in runners.items():
            start = time.perf_counter()
            _, kv = runner.generate(inputs)
            runner.rank(kv, inputs["hist_len"], cands["cand_sids"], cands["cand_attrs"], cands["cand_bid"])
            runner.release(kv)
            times[name].append(time.perf_counter() - start)
    out = {name: 1e3 * float(np.median(t)) for name, t in times.items()}
    out.update({"history": length, "candidates": n, "unbound_over_bound": out["unbound"] / out["bound"]})
    return out


def new_vs_old(preset_name: str, lengths, counts, threads: int, repeats: int, peak_gflops: float) -> dict:
    """Builds one untrained release of the preset (`oneranker build --engine onnxruntime`) and times
    its two request paths on it (`time_new_vs_old`)."""
    from oneranker.train import init_run
    from oneranker_build.cli import build
    from oneranker_client import contract

    cfg = untrained_release_config(preset_name)
    with tempfile.TemporaryDirectory(prefix="oneranker_new_vs_old_") as tmp:
        work = Path(tmp)
        print(f"[scaling] new vs old: building an untrained {preset_name} release (onnxruntime) ...", flush=True)
        init_run(cfg, work / "run")
        build(work / "run", work / "build", ["onnxruntime"], "KIND_CPU")
        artifacts = work / "build" / "onnxruntime" / contract.FUSED_MODEL / "1" / "artifacts"
        pair = time_new_vs_old(artifacts, cfg, lengths, counts, threads, repeats, peak_gflops)
    return {**pair, "log_overrides": PAPER_LOG if preset_name == "paper" else {}}


def time_new_vs_old(artifacts: Path, cfg, lengths, counts, threads: int, repeats: int, peak_gflops: float) -> dict:
    """Per (history, candidates): the interleaved median of `Recommender.recommend([request])`
    (validation, tokenization, both graphs, selection; batch 1) on the in-graph beam search path
    ("new", the fused model's) and the numpy beam search path ("old") of the release in
    `artifacts` (exported from a run of `cfg`), and the fraction of `peak_gflops` the new path
    reaches on the model's matmul FLOPs (`common.flops` at the history's length bucket and the
    candidates actually ranked; the beam search's own work is not counted).
    A request asks for `candidates` with top_k = min(default, candidates); the beam width is raised
    to ceil(candidates / streams) (one search stream per interest head, one shared by the value
    heads: `selection.stream_matrix`) where the default beam cannot yield that many, and duplicates
    across streams can still leave fewer; histories and candidate counts above the release's
    serving limits are clipped to them."""
    from oneranker_serving.artifacts import load_recommender, read_export_info

    info = read_export_info(artifacts)
    streams = len(stream_matrix(int(info["num_interest_heads"]), int(info["num_value_heads"])))
    paths = {
        "new": load_recommender(artifacts, "onnxruntime", threads=threads, search="graph"),
        "old": load_recommender(artifacts, "onnxruntime", threads=threads, search="numpy"),
    }
    s = paths["new"].serve  # the release's own limits and defaults
    rng = np.random.default_rng(0)
    rows = []
    for length in sorted({min(h, s.max_history) for h in lengths}):
        for n in sorted({min(c, s.max_num_candidates) for c in counts}):
            beam = min(s.max_beam_width, max(s.beam_width, -(-n // streams)))
            raw = synthetic_request(rng, paths["new"].tables, info["dims"]["F"], info["feature_cardinality"], length)
            req = to_request(dataclasses.replace(raw, num_candidates=n, beam_width=beam, top_k=min(s.top_k, n)))
            for _ in range(WARMUP_CALLS):
                answers = {name: rec.recommend([req])[0] for name, rec in paths.items()}
            for name, answer in answers.items():
                if isinstance(answer, Exception):
                    raise RuntimeError(f"{name} path refused history {length}, {n} candidates: {answer}")
            # interleaved, the order alternating, so drift hits both alike
            calls = {name: (lambda r, rec=rec: rec.recommend([r])) for name, rec in paths.items()}
            ms = {name: lat["p50_ms"] for name, lat in paired_in_process(calls, [req], repeats).items()}
            fl = flops(cfg, bucket_for(length, s.length_buckets), answers["new"].num_candidates)
            gflop = (fl["generate"] + fl["rank"]) / 1e9
            rows.append(
                {
                    "history": length,
                    "candidates": n,
                    "beam_width": beam,
                    "candidates_ranked": {name: int(a.num_candidates) for name, a in answers.items()},
                    "new_ms": ms["new"],
                    "old_ms": ms["old"],
                    "new_over_old": ms["new"] / ms["old"],
                    "gflop": gflop,
                    "fraction_of_peak_new": gflop / (ms["new"] / 1e3) / peak_gflops,
                }
            )
            print(
                f"[scaling] new vs old L={length:5d} n={n:5d} beam {beam:3d}: new {ms['new']:8.2f} ms, "
                f"old {ms['old']:8.2f} ms ({ms['new'] / ms['old']:.2f}x)",
                flush=True,
            )
    return {"repeats": repeats, "threads": threads, "streams": streams, "rows": rows}


def _release(runner, kv):
    release = getattr(runner, "release", None)
    if release is not None:
        release(kv)


def _untrained_model(cfg):
    import torch

    from oneranker.model import OneRanker

    t, m = cfg.tokenizer, cfg.model
    sizes = [t.codebook_size] * t.num_levels + [t.max_collisions]
    return OneRanker(
        m,
        t,
        cfg.data,
        fake_item_centroids=torch.randn(m.num_fake_items, t.embedding_dim),
        level_code_features=torch.rand(t.sid_depth, t.max_codes, m.num_fake_items),
        level_sizes=sizes,
        num_advertisers=64,
        num_categories=32,
    ).eval()


def summary(results: dict) -> dict:
    """summary.json: commit, machine, command, preset, threads, the matmul rate and, per case
    "history H, candidates N": ONNX Runtime and torch ms (generate + rank), the unified rank (over
    the generator's KV) and cascade rank (re-encode + rank) ms, the fraction of matmul peak; and the
    KV binding's unbound/bound ratio."""
    return {
        "commit": results.get("commit"),
        "machine": results.get("machine"),
        "command": results.get("command"),
        "preset": results["preset"],
        "threads": results["threads"],
        "matmul_gflops": results["matmul_gflops"],
        "cases": {
            f"history {r['history']}, candidates {r['candidates']}": {
                "onnxruntime_ms": r["onnxruntime_generate_ms"] + r["onnxruntime_rank_ms"],
                "torch_ms": r["torch_generate_ms"] + r["torch_rank_ms"],
                "unified_rank_ms": r["unified_rank_ms"],
                "cascade_rank_ms": r["cascade_rank_ms"],
                "fraction_of_peak": r["fraction_of_peak"],
            }
            for r in results["rows"]
        },
        "kv_unbound_over_bound": results["kv_binding"]["unbound_over_bound"],
        **({"new_vs_old": new_vs_old_summary(results["new_vs_old"])} if "new_vs_old" in results else {}),
    }


def new_vs_old_summary(pair: dict) -> dict:
    """Per case "history H, candidates N": new and old ms, new/old, the new path's fraction of peak."""
    return {
        f"history {r['history']}, candidates {r['candidates']}": {
            "new_ms": r["new_ms"],
            "old_ms": r["old_ms"],
            "new_over_old": r["new_over_old"],
            "beam_width": r["beam_width"],
            "fraction_of_peak_new": r["fraction_of_peak_new"],
        }
        for r in pair["rows"]
    }


def new_vs_old_section(pair: dict) -> list[str]:
    """Markdown: the served request path, in-graph beam search (new) vs numpy beam search (old)."""
    lines = [
        "",
        "## In-graph beam search (new) vs numpy beam search (old), the whole request in process",
        "",
        "One untrained release of the preset built by `oneranker build --engine onnxruntime`; each "
        "request answered by the fused model's Recommender (beam search inside the generation graph, "
        "two engine calls) and by the numpy beam search path (decoder-state graph, numpy beam search, "
        f"ranker graph): validation, tokenization, graphs and selection, batch 1, {pair['threads']} "
        f"intra-op thread(s), medians of {pair['repeats']} calls each, the two paths interleaved. The beam "
        f"width is raised to ceil(candidates / {pair['streams']} search streams) where the default beam "
        "yields fewer; duplicates across streams can still leave fewer candidates than asked (the ranked "
        "column). Fraction of peak: the model's matmul FLOPs at the history's length bucket and the "
        "candidates ranked (the beam search's own work not counted) over the new path's time, against "
        "the matmul rate above.",
        "",
        "| history | candidates | beam width | candidates ranked (new / old) | GFLOP | new ms | old ms "
        "| new / old | fraction of peak (new) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in pair["rows"]:
        ranked = r["candidates_ranked"]
        lines.append(
            f"| {r['history']} | {r['candidates']} | {r['beam_width']} | {ranked['new']} / {ranked['old']} | "
            f"{r['gflop']:.3f} | {r['new_ms']:.2f} | {r['old_ms']:.2f} | {r['new_over_old']:.2f}x | "
            f"{r['fraction_of_peak_new']:.1%} |"
        )
    return lines


def write_report(results: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    rows = results["rows"]
    lines = [
        f"# Cost of one request vs history length and candidates ({results['preset']} model, untrained)",
        "",
        f"Machine: {results.get('machine') or machine()}; {results['threads']} intra-op threads; torch.matmul reaches "
        f"{results['matmul_gflops']:.1f} GFLOP/s here (512x512 fp32, same run). Medians of in-process calls, "
        "batch 1. Unified rank = Step 3 over the generator's KV; cascade rank = re-encode the history "
        "(generate) + Step 3.",
        "",
        f"Reproduce: `{results.get('command') or 'python -m oneranker_perf.scaling_bench --preset paper'}`.",
        "",
        "| history | candidates | GFLOP gen | GFLOP rank | ORT gen ms | ORT rank ms | torch gen ms | torch rank ms "
        "| torch/ORT total | cascade/unified rank | fraction of peak (ORT) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ort = r["onnxruntime_generate_ms"] + r["onnxruntime_rank_ms"]
        tor = r["torch_generate_ms"] + r["torch_rank_ms"]
        lines.append(
            f"| {r['history']} | {r['candidates']} | {r['gflop_generate']:.3f} | {r['gflop_rank']:.3f} | "
            f"{r['onnxruntime_generate_ms']:.2f} | {r['onnxruntime_rank_ms']:.2f} | {r['torch_generate_ms']:.2f} | "
            f"{r['torch_rank_ms']:.2f} | {tor / ort:.2f}x | {r['cascade_rank_ms'] / r['unified_rank_ms']:.1f}x | "
            f"{r['fraction_of_peak']:.1%} |"
        )
    kb = results["kv_binding"]
    lines += [
        "",
        f"KV binding (history {kb['history']}, {kb['candidates']} candidates, interleaved medians): bound in "
        f"place {kb['bound']:.2f} ms, unbound (KV to numpy and back) {kb['unbound']:.2f} ms: "
        f"unbound/bound = {kb['unbound_over_bound']:.2f}x.",
    ]
    if "new_vs_old" in results:
        lines += new_vs_old_section(results["new_vs_old"])
    (out / "results.md").write_text("\n".join(lines) + "\n")
    write_summary(out, summary(results))

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    counts = sorted({r["candidates"] for r in rows})
    lengths = sorted({r["history"] for r in rows})
    for n in counts:
        sel = [r for r in rows if r["candidates"] == n]
        axes[0].plot(
            [r["history"] for r in sel],
            [r["onnxruntime_generate_ms"] + r["onnxruntime_rank_ms"] for r in sel],
            marker="o",
            label=f"n={n}",
        )
    axes[0].set_xscale("log", base=2)
    axes[0].set_xlabel("history length")
    axes[0].set_ylabel("ms per request (ORT, generate + rank)")
    axes[0].legend()
    for length in lengths:
        sel = [r for r in rows if r["history"] == length]
        axes[1].plot(
            [r["candidates"] for r in sel],
            [r["cascade_rank_ms"] / r["unified_rank_ms"] for r in sel],
            marker="o",
            label=f"L={length}",
        )
    axes[1].set_xscale("log", base=2)
    axes[1].set_xlabel("candidates")
    axes[1].set_ylabel("cascade rank time / unified rank time")
    axes[1].legend()
    fig.suptitle(f"oneranker cost scaling ({results['preset']})")
    fig.tight_layout()
    fig.savefig(out / "results.png", dpi=120)
    print((out / "results.md").read_text())


def main(argv=None) -> int:

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="paper")
    parser.add_argument("--out", type=Path, default=Path("perf/results/scaling"))
    parser.add_argument("--lengths", default="128,512,2048")
    parser.add_argument("--candidates", default="64,256,1024")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--new-vs-old-repeats",
        type=int,
        default=20,
        help="calls per path and case of the whole-request new vs old comparison (0: skip it)",
    )
    args = parser.parse_args(argv)
    run(
        args.preset,
        args.out,
        [int(x) for x in args.lengths.split(",")],
        [int(x) for x in args.candidates.split(",")],
        args.threads,
        args.repeats,
        command=reproduce_command("oneranker_perf.scaling_bench", argv),
        new_vs_old_repeats=args.new_vs_old_repeats,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
