"""The topology bench's report: results.md, results.png and summary.json from the results dict
that `topology_bench.run` measures (also rebuilt from a committed results.json by
`oneranker_perf.summaries`).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .summary_file import write_summary


def new_vs_old_summary(results: dict) -> dict:
    """The in-graph beam search path ("new", the default fused model) against the numpy beam search
    baseline ("old"), each pair measured interleaved (part of `summary`)."""
    local, served = results["in_process_new_vs_old"], results["new_vs_old"]
    new, old = contract_names()
    out = {
        "commit": results["commit"],
        "machine": results["machine"],
        "in_process_p50_ms": {"new": local["new"]["p50_ms"], "old": local["old"]["p50_ms"]},
        "served_c1_p50_ms": {"new": served[new]["c1"]["p50_ms"], "old": served[old]["c1"]["p50_ms"]},
        "served_c1_p99_ms": {"new": served[new]["c1"]["p99_ms"], "old": served[old]["c1"]["p99_ms"]},
        "saturated_rps": {"new": served[new]["throughput_rps"], "old": served[old]["throughput_rps"]},
    }
    if "served_vs_in_process" in results:  # each path served and in process, interleaved call by call
        pairs = results["served_vs_in_process"]
        out["served_minus_in_process_p50_ms"] = {
            k: pairs[k]["served"]["p50_ms"] - pairs[k]["in_process"]["p50_ms"] for k in ("new", "old")
        }
        out["served_vs_in_process_p50_ms"] = {
            k: {side: pairs[k][side]["p50_ms"] for side in ("served", "in_process")} for k in ("new", "old")
        }
    if "c1_blocks" in served[new]:  # the same pair, each path a back-to-back stream in rotating blocks
        blocks = {k: served[m]["c1_blocks"] for k, m in (("new", new), ("old", old))}
        out["served_c1_p50_ms_blocks"] = {k: b["p50_ms"] for k, b in blocks.items()}
        out["c1_block"] = blocks["new"]["block"]
    if "in_process_new_vs_old_blocks" in results:  # and in process, in the same rotating blocks
        out["in_process_p50_ms_blocks"] = {
            k: results["in_process_new_vs_old_blocks"][k]["p50_ms"] for k in ("new", "old")
        }
    return out


def summary(results: dict) -> dict:
    """summary.json: commit, machine, command, the default topology, per served path (each topology,
    the cascade) its c1 p50/p99 ms, saturated req/s and saturated p99 ms, the in-process ONNX Runtime p50 and, when
    the run measured the pair, new_vs_old_summary's in-graph vs numpy beam search figures."""
    paths = {**results["topologies"], **({"cascade": results["cascade"]} if "cascade" in results else {})}
    out = {
        "commit": results.get("commit"),
        "machine": results["machine"],
        "command": results.get("command"),
        "default_topology": results["default_topology"],
        "paths": {
            name: {
                "c1_p50_ms": t["c1"]["p50_ms"],
                "c1_p99_ms": t["c1"]["p99_ms"],
                "saturated_rps": t["saturation"]["throughput_rps"],
                "saturated_p99_ms": t["saturation"]["p99_ms"],
            }
            for name, t in paths.items()
        },
        "in_process_onnxruntime_p50_ms": results["in_process_onnxruntime"]["p50_ms"],
    }
    return {**out, **new_vs_old_summary(results)} if "new_vs_old" in results else out


def contract_names() -> tuple[str, str]:
    from oneranker_client import contract

    return contract.TOPOLOGY_MODELS["fused"], contract.NUMPY_BEAM_PUBLIC_MODEL


def served_and_gap_rows(how: str, new: float, old: float, in_process: dict) -> list[str]:
    """Two rows of the new-vs-old table: served c1 p50 measured `how` (new, old, ratio) and that
    minus each path's in-process p50."""
    return [
        f"| served c1 p50 ms, {how} | {new:.2f} | {old:.2f} | {new / old:.2f}x | |",
        f"| served c1 p50 ({how}) - in-process p50, ms | {new - in_process['new']:.2f} | "
        f"{old - in_process['old']:.2f} | | |",
    ]


def new_vs_old_section(results: dict) -> list[str]:
    """Markdown: the issue's three targets, measured side by side in this run."""
    summ = new_vs_old_summary(results)
    ip, c1, p99, rps = (summ[k] for k in ("in_process_p50_ms", "served_c1_p50_ms", "served_c1_p99_ms", "saturated_rps"))
    gap_new, gap_old = c1["new"] - ip["new"], c1["old"] - ip["old"]
    lines = [
        "## In-graph beam search (new) vs numpy beam search (old)",
        "",
        "new = the fused model `oneranker_fused` (one Python model: validate, tokenize, generation "
        "graph with the beam search inside, ranking graph with the top-k inside; two engine calls); old = "
        "`oneranker_numpy_beam` (preprocess model, then a Python model running the decoder-state graph, the "
        "numpy beam search and the ranker graph). Same checkpoint, same client, each pair interleaved.",
        "",
        "| | new | old | new / old | target |",
        "|---|---|---|---|---|",
        f"| in-process p50 ms | {ip['new']:.2f} | {ip['old']:.2f} | {ip['new'] / ip['old']:.2f}x | <= 0.75x |",
        f"| served c1 p50 ms | {c1['new']:.2f} | {c1['old']:.2f} | {c1['new'] / c1['old']:.2f}x | |",
        f"| served c1 p99 ms | {p99['new']:.2f} | {p99['old']:.2f} | {p99['new'] / p99['old']:.2f}x | |",
        f"| served c1 p50 - in-process p50, ms | {gap_new:.2f} | {gap_old:.2f} | | new <= 1.5 |",
        f"| saturated req/s | {rps['new']:.1f} | {rps['old']:.1f} | {rps['new'] / rps['old']:.2f}x | >= 1.4x |",
        "",
    ]
    notes = ["The first served rows send each request to both paths in turn (interleaved, as the target asks)."]
    own = {**results["topologies"], **({"numpy_beam": results["numpy_beam"]} if "numpy_beam" in results else {})}
    if "fused" in own and "numpy_beam" in own:
        own_new, own_old = own["fused"]["c1"]["p50_ms"], own["numpy_beam"]["c1"]["p50_ms"]
        lines[-1:-1] = served_and_gap_rows("own window", own_new, own_old, ip)
        notes.append(
            "The rows 'own window' take each path's served p50 from its own concurrency-1 loop (the first "
            "table) and the in-process p50 from the interleaved in-process pair."
        )
    if "in_process_p50_ms_blocks" in summ:
        ipb, n = summ["in_process_p50_ms_blocks"], results["in_process_new_vs_old_blocks"]["new"]["block"]
        lines[-1:-1] = [
            f"| in-process p50 ms, blocks of {n} | {ipb['new']:.2f} | {ipb['old']:.2f} | "
            f"{ipb['new'] / ipb['old']:.2f}x | |"
        ]
        notes.append(
            f"The row 'in-process p50 ms, blocks of {n}' runs the in-process pair again, {n} consecutive "
            "requests on one path, then the same on the other, rotating; the first row alternates the two "
            "paths call by call in one process, so each call finds the caches last used by the other path."
        )
    if "served_c1_p50_ms_blocks" in summ:
        blk, n = summ["served_c1_p50_ms_blocks"], summ["c1_block"]
        lines[-1:-1] = served_and_gap_rows(f"blocks of {n}", blk["new"], blk["old"], ip)
        notes.append(
            f"The rows 'blocks of {n}' send {n} consecutive requests to one path, then the same {n} to the "
            "other, rotating: each path sees a back-to-back stream, as perf_analyzer at concurrency 1 does. "
            "The difference from the interleaved rows is what alternating costs each path: its Python stub "
            "and engine threads wake from idle, and the other path's processes have used the caches in between."
        )
    if "served_minus_in_process_p50_ms" in summ:
        gap, pair = summ["served_minus_in_process_p50_ms"], summ["served_vs_in_process_p50_ms"]
        lines[-1:-1] = [
            f"| served c1 p50 - in-process p50, the two interleaved call by call, ms "
            f"({pair['new']['served']:.2f} - {pair['new']['in_process']:.2f}; "
            f"{pair['old']['served']:.2f} - {pair['old']['in_process']:.2f}) | "
            f"{gap['new']:.2f} | {gap['old']:.2f} | | |",
        ]
        notes.append(
            "The row 'interleaved call by call' sends each request to one path served and runs it in "
            "process, in turn (order rotating: half the served calls follow an in-process call, half another "
            "served call), and subtracts the two p50s. The first gap row takes its in-process p50 from before "
            "the server started and its served p50 with the other path's processes running between two "
            "requests."
        )
    if len(notes) > 1:
        lines += [" ".join(notes), ""]
    return lines


def where_the_time_goes(results: dict) -> list[str]:
    """Markdown: per-path breakdown of one concurrency-1 request (means, ms)."""
    paths = {
        **results["topologies"],
        **({"cascade": results["cascade"]} if "cascade" in results else {}),
        **({"numpy_beam": results["numpy_beam"]} if "numpy_beam" in results else {}),
    }
    lines = [
        "## Where the time goes (concurrency 1, mean ms per request)",
        "",
        "From Triton's Prometheus counters over the concurrency-1 loop: the ensemble's server-side request "
        "time, each composing model's compute time (queue time in brackets) and, inside the fused-style "
        "models, their own generate / select / rank counters. Client minus server = gRPC, (de)serialisation "
        "and the client's Python. Queue time is the dynamic batcher's (its `max_queue_delay_microseconds` "
        "if the repository sets one: at concurrency 1 a batch never fills, so a path pays it once per "
        "composing model) plus the hand-over to a free instance. The fused-style models send their own "
        "counters from a background thread (oneranker_serving.triton.counters), off these times.",
        "",
        "| path | client mean | server (ensemble) | client - server | per model: compute (queue) | generate | select | rank |",  # noqa: E501 (a Markdown table header)
        "|---|---|---|---|---|---|---|---|",
    ]
    for t in paths.values():
        st = t["c1"].get("stages") or {}
        if not st:
            continue
        models = [k[: -len("_compute_ms")] for k in st if k.endswith("_compute_ms")]
        per_model = "; ".join(f"{m} {st[m + '_compute_ms']:.2f} ({st[m + '_queue_ms']:.2f})" for m in models)
        inner = [f"{st[k]:.2f}" if k in st else "" for k in ("generate_ms", "select_ms", "rank_ms")]
        lines.append(
            f"| {t['model']} | {t['c1']['mean_ms']:.2f} | {st['ensemble_request_ms']:.2f} | "
            f"{t['c1']['mean_ms'] - st['ensemble_request_ms']:.2f} | {per_model} | " + " | ".join(inner) + " |"
        )
    return lines + [""]


def write_report(results: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    write_summary(out, summary(results))
    lines = [
        f"# Serving topologies ({results['preset']} model)",
        "",
        f"Repository: `{results.get('repository', '?')}` (its engine runs inside the Python models).",
        "",
        f"Reproduce: `{results.get('command') or 'python -m oneranker_perf.topology_bench --help'}` "
        "(or `bash perf/reproduce.sh` for every figure).",
        "",
        f"Machine: {results['machine']}. {results['requests']} test-split requests (mean history "
        f"{results['mean_history']:.0f} events), defaults top_k/num_candidates/beam_width. Server and client share the "
        "cores (client threads compete with the server: absolute numbers are a floor; compare ratios).",
        "",
        "| path | c1 p50 ms | c1 p99 ms | saturated req/s | saturated p50 ms | saturated p99 ms | p99 <= 2x c1 p50 | errors | KV bytes across processes / request | server RSS at rest MiB | peak RSS under load MiB | RSS per in-flight request MiB |",  # noqa: E501 (a Markdown table header)
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, t in results["topologies"].items():
        c1, sat = t["c1"], t["saturation"]
        lines.append(
            f"| {t['model']} ({name}) | {c1['p50_ms']:.2f} | {c1['p99_ms']:.2f} | {sat['throughput_rps']:.1f} | "
            f"{sat['p50_ms']:.2f} | {sat['p99_ms']:.2f} | {'yes' if sat['p99_ms'] <= 2 * c1['p50_ms'] else 'no'} | "
            f"{sat['errors']} | {t['kv_bytes_crossing_per_request']:,.0f} | {sat['rss_at_rest_mb']:.0f} | "
            f"{sat['rss_peak_mb']:.0f} | {sat['rss_per_in_flight_mb']:.1f} |"
        )
    if "cascade" in results:
        t = results["cascade"]
        c1, sat = t["c1"], t["saturation"]
        lines.append(
            f"| {t['model']} (cascade baseline, fused-style) | {c1['p50_ms']:.2f} | {c1['p99_ms']:.2f} | "
            f"{sat['throughput_rps']:.1f} | {sat['p50_ms']:.2f} | {sat['p99_ms']:.2f} | | {sat['errors']} | 0 | "
            f"{sat['rss_at_rest_mb']:.0f} | {sat['rss_peak_mb']:.0f} | {sat['rss_per_in_flight_mb']:.1f} |"
        )
    for key, label in (
        ("in_process_onnxruntime", "in-process (same ONNX graphs + serving code)"),
        ("in_process_torch_reference", "in-process PyTorch reference"),
        ("in_process_cascade_onnxruntime", "in-process cascade (same ONNX graphs + code)"),
    ):
        if key in results:
            r = results[key]
            lines.append(f"| {label} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | | | | | | 0 | | | |")
    fused = results["topologies"]["fused"]["c1"]["p50_ms"]
    local = results["in_process_onnxruntime"]["p50_ms"]
    lines += [
        "",
        f"Default topology (highest saturated throughput with p99 <= 2x its c1 p50): "
        f"**{results['default_topology']}**.",
        f"Price of serving at concurrency 1: served fused p50 / in-process p50 = {fused / local:.2f}x "
        f"({fused - local:.2f} ms of Triton, gRPC and stub overhead).",
        "",
    ]
    if "new_vs_old" in results:
        lines += new_vs_old_section(results)
    lines += where_the_time_goes(results)
    floor = results.get("compute_floor")
    if floor:
        lines += [
            f"Compute floor of one request ({floor['candidates']} candidates, history padded to its bucket; "
            f"torch.matmul reaches {floor['matmul_gflops']:.1f} GFLOP/s here in the same run): unified "
            f"{floor['unified_gflop'] * 1e3:.2f} MFLOP = {floor['unified_floor_ms']:.3f} ms, cascade "
            f"{floor['cascade_gflop'] * 1e3:.2f} MFLOP = {floor['cascade_floor_ms']:.3f} ms. At this model size "
            "the measured latency is far above the floor: per-call overhead (Python, Triton, gRPC), not "
            "arithmetic, sets it.",
            "",
        ]
    if "unified_vs_cascade" in results:
        pair = results["unified_vs_cascade"]
        pair_names = list(pair)
        uni, cas = pair[pair_names[0]], pair[pair_names[1]]
        local_cas = results["in_process_cascade_onnxruntime"]["p50_ms"]
        lines += [
            "## Unified OneRanker vs the cascade baseline (both served, same server, interleaved)",
            "",
            "The cascade (`oneranker_cascade`) runs its own generator for candidates, then an independent "
            "ranker that encodes the history again; both are fused-style Python models with the same "
            "preprocess, batching and engine, so the difference is the second encoding. Measured "
            "interleaved (each concurrency-1 request sent to both, alternating order; saturation in "
            "alternating windows) so that machine noise falls on both alike; the table above measured "
            "each path in its own window.",
            "",
            f"| | unified `{pair_names[0]}` | cascade `{pair_names[1]}` | cascade / unified |",
            "|---|---|---|---|",
            f"| served c1 p50 ms | {uni['c1']['p50_ms']:.2f} | {cas['c1']['p50_ms']:.2f} | "
            f"{cas['c1']['p50_ms'] / uni['c1']['p50_ms']:.2f}x |",
            f"| served c1 p99 ms | {uni['c1']['p99_ms']:.2f} | {cas['c1']['p99_ms']:.2f} | "
            f"{cas['c1']['p99_ms'] / uni['c1']['p99_ms']:.2f}x |",
            f"| saturated req/s ({results['topologies']['fused']['saturation']['concurrency']} threads) | "
            f"{uni['throughput_rps']:.1f} | {cas['throughput_rps']:.1f} | "
            f"{cas['throughput_rps'] / uni['throughput_rps']:.2f}x |",
            f"| errors | {uni['errors']} | {cas['errors']} | |",
            f"| in-process c1 p50 ms (sequential) | {local:.2f} | {local_cas:.2f} | {local_cas / local:.2f}x |",
        ]
        if floor:
            lines.append(
                f"| compute floor ms | {floor['unified_floor_ms']:.3f} | {floor['cascade_floor_ms']:.3f} | "
                f"{floor['cascade_floor_ms'] / floor['unified_floor_ms']:.2f}x |"
            )
        lines.append("")
    (out / "results.md").write_text("\n".join(lines))

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    paths = {**results["topologies"], **({"cascade": results["cascade"]} if "cascade" in results else {})}
    names = list(paths)
    axes[0].bar(names, [paths[n]["saturation"]["throughput_rps"] for n in names], color="#76b900")
    axes[0].set_ylabel("requests / s at saturation")
    axes[0].set_title("throughput")
    x = np.arange(len(names))
    axes[1].bar(x - 0.2, [paths[n]["c1"]["p50_ms"] for n in names], 0.4, label="c1 p50")
    axes[1].bar(x + 0.2, [paths[n]["saturation"]["p99_ms"] for n in names], 0.4, label="saturated p99")
    axes[1].set_xticks(x, names)
    axes[1].set_ylabel("ms")
    axes[1].set_title("latency")
    axes[1].legend()
    fig.suptitle(f"oneranker serving topologies ({results['preset']}, {results['machine'].split('(')[0].strip()})")
    fig.tight_layout()
    fig.savefig(out / "results.png", dpi=120)
    print((out / "results.md").read_text())
