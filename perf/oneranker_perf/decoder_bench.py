"""Which semantic-ID decoder ships: factorized vs prefix-conditioned (`oneranker.decoders`).

    python -m oneranker_perf.decoder_bench --source ml1m --decoder conditioned --seed 0
    python -m oneranker_perf.decoder_bench --source synthetic --decoder factorized --seed 1
    python -m oneranker_perf.decoder_bench --report

Declared before any run (the decision rule and everything it reads):
  * ML-1M (`ml1m`): OneRanker's generator on the HSTU protocol (`oneranker_perf.ml1m_bench`,
    `oneranker.baselines.generator_eval`: its training and its stopping rule, validation NDCG@10
    of the value stream, patience 3), at most 30 minutes of training per run, one thread.
    Metric: full-catalogue generation recall@50 = HR@50 of the value stream over every item,
    seen items masked; validation decides, test is reported.
  * Synthetic (`synthetic`): the `small` preset, full OneRanker (generator + ranker), the model
    issue's stopping rule (`TrainConfig`: validation HR@5 every 50 steps, patience 5, best
    restored); generation recall@50 = the target among the first 50 merged beam-search candidates
    (serving's beam width), and the final ranking HR@5 (the paper's protocol: target among 30).
    Reported, not deciding.
  * Seeds 0, 1, 2 for each (source, decoder); the data seed is fixed (0).
  * Decision: the conditioned decoder becomes `ModelConfig.decoder`'s default unless its
    seed-averaged ML-1M validation recall@50 is lower than the factorized decoder's by more than
    MARGIN = 0.01 (absolute).
  * Intervals: `ml1m_bench.interval` (95%: t over seeds in quadrature with a bootstrap over users).

Each run writes ONE file `OUT/runs/<source>-<decoder>-seed<N>.json` (per-user hits packed), so
the runs can span sessions; `--report` rebuilds `summary.json` and `results.md` from whatever run
files exist and lists the missing ones. The latency block is read from `OUT/latency.json`
(`oneranker_perf.decoder_latency`) when it exists.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from .ml1m_bench import git_commit, interval, reproduce_command, unpack_ranks

SEEDS = (0, 1, 2)  # declared before any run
DECODERS = ("factorized", "conditioned")
SOURCES = ("ml1m", "synthetic")
MARGIN = 0.01  # declared before any run: conditioned is the default unless lower by more
ML1M_MAX_MINUTES = 30.0  # the per-run training budget
METRICS = ("val_recall@50", "test_recall@50", "test_hr@5")
RESULTS = Path(__file__).resolve().parents[1] / "results"
DEFAULT_OUT = RESULTS / "decoder"


def pack_hits(hits: np.ndarray) -> str:
    return base64.b64encode(np.packbits(np.asarray(hits, dtype=bool))).decode()


def unpack_hits(text: str, n: int) -> np.ndarray:
    return np.unpackbits(np.frombuffer(base64.b64decode(text), dtype=np.uint8))[:n].astype(np.float64)


def run_path(out: Path, source: str, decoder: str, seed: int) -> Path:
    return out / "runs" / f"{source}-{decoder}-seed{seed}.json"


# ----------------------------------------------------------------------------- runs


def run_ml1m(decoder: str, seed: int, out: Path, max_minutes: float, command: str, **smoke) -> Path:
    """One generator run on ML-1M (`ml1m_bench.run_one`), then per-user hits of the metrics."""
    from . import ml1m_bench

    with tempfile.TemporaryDirectory() as tmp:
        raw = ml1m_bench.run_one(
            "ml1m",
            "oneranker",
            seed,
            max_minutes,
            Path(tmp),
            command=command,
            decoder=decoder,
            path=Path(tmp) / "run.json",
            **smoke,
        )
        rec = json.loads(raw.read_text())
    valid, test = unpack_ranks(rec["valid"]["ranks"]), unpack_ranks(rec["test"]["ranks"])
    hits = {"val_recall@50": valid < 50, "test_recall@50": test < 50, "test_hr@5": test < 5}
    keep = ("epochs", "best_epoch", "stopped_by", "train_minutes", "curve", "config", "threads", "data")
    record = {k: rec[k] for k in keep} | {"metrics": {k: float(v.mean()) for k, v in hits.items()}}
    record["hits"] = {k: pack_hits(v) for k, v in hits.items()}
    record["users"] = int(valid.size)
    return _write(out, "ml1m", decoder, seed, record, command)


def synthetic_config(decoder: str, seed: int, threads: int, max_steps: int = 0):
    from oneranker.config import preset

    cfg = preset("small")
    cfg.model.decoder = decoder
    cfg.train.seed = cfg.tokenizer.seed = seed  # the data seed (cfg.data.seed) stays fixed
    cfg.train.early_stopping, cfg.train.eval_every = True, 50  # the model issue's stopping rule
    cfg.train.num_threads = threads
    if max_steps:  # smoke runs only
        cfg.train.steps, cfg.train.eval_every, cfg.train.warmup_steps = max_steps, max_steps, 1
    return cfg.validate()


def run_synthetic(
    decoder: str, seed: int, out: Path, command: str, threads: int, keep_run: Path | None = None, max_steps: int = 0
) -> Path:
    """One full OneRanker run on the synthetic world; `keep_run` keeps its run directory (the
    latency benchmark builds from it)."""
    from oneranker import study
    from oneranker.evaluate import score_split, target_rank
    from oneranker.train import train

    cfg = synthetic_config(decoder, seed, threads, max_steps)
    started = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        result = train(cfg, keep_run or Path(tmp), progress=sys.stderr.isatty())
    model, prep = result["model"], result["prep"]
    hits = {}
    for split in ("valid", "test"):
        cat = study.catalogue_metrics(study.full_catalogue(model, model, prep, split), prep, split, None)
        hits[f"{'val' if split == 'valid' else split}_recall@50"] = cat["gen_R@50"] > 0
    hits["test_hr@5"] = target_rank(score_split(model, prep, "test")["ranking"]) < 5
    summary = result.get("summary", {})
    record = {
        "config": cfg.to_dict(),
        "threads": threads,
        "stopping": summary.get("stopping"),
        "train_minutes": (time.time() - started) / 60,
        "metrics": {k: float(np.mean(v)) for k, v in hits.items()},
        "hits": {k: pack_hits(v) for k, v in hits.items()},
        "users": {k: int(len(v)) for k, v in hits.items()},
    }
    return _write(out, "synthetic", decoder, seed, record, command)


def _write(out: Path, source: str, decoder: str, seed: int, record: dict, command: str) -> Path:
    record = {
        "source": source,
        "decoder": decoder,
        "seed": seed,
        "git_commit": git_commit(),
        "command": command,
    } | record
    path = run_path(out, source, decoder, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1) + "\n")
    return path


# ----------------------------------------------------------------------------- report


def _users(rec: dict, metric: str) -> int:
    users = rec["users"]
    return users if isinstance(users, int) else users[metric]


def _stopped(rec: dict) -> str:
    """How a run ended: ML-1M 'epochs E (best B), <reason>'; synthetic 'step S (best B)'."""
    if "epochs" in rec:
        return f"{rec['epochs']} epochs (best {rec['best_epoch']}), {rec['stopped_by']}"
    stop = rec.get("stopping") or {}
    return f"step {stop.get('stopped_step')} (best {stop.get('best_step')})"


def load_runs(out: Path) -> dict:
    runs: dict = {}
    for path in sorted((out / "runs").glob("*-seed*.json")):
        rec = json.loads(path.read_text())
        runs.setdefault(rec["source"], {}).setdefault(rec["decoder"], {})[int(rec["seed"])] = rec
    return runs


def decide(block: dict) -> dict:
    """The declared rule on ML-1M validation recall@50 (module docstring); 'pending' until every
    seed of both decoders is in."""
    have = {d: block.get(d, {}) for d in DECODERS}
    if any(len(have[d].get("_seeds", [])) < len(SEEDS) for d in DECODERS):
        return {"default": "pending", "rule": f"conditioned unless val recall@50 lower by > {MARGIN}"}
    diff = have["conditioned"]["val_recall@50"][0] - have["factorized"]["val_recall@50"][0]
    return {
        "default": "factorized" if diff < -MARGIN else "conditioned",
        "val_recall@50_conditioned_minus_factorized": diff,
        "rule": f"conditioned unless val recall@50 lower by > {MARGIN}",
    }


def latency_block(out: Path) -> dict:
    """{decoder: {"in_process_p50", "served_c1_p50", "paper_generation_p50"}} in ms, from
    `decoder_latency`'s latency.json ({} before it ran)."""
    path = out / "latency.json"
    return json.loads(path.read_text())["latency_ms"] if path.exists() else {}


REPORT_COMMAND = "python -m oneranker_perf.decoder_bench --report"


def build_summary(out: Path = DEFAULT_OUT) -> dict:
    """summary.json of the folder, from its run files and latency.json only (so a rebuild on any
    machine gives the same figures): commit = the commits the runs record, machine = the latency
    run's."""
    runs = load_runs(out)
    small: dict = {}
    missing = []
    for source in SOURCES:
        for decoder in DECODERS:
            have = runs.get(source, {}).get(decoder, {})
            missing += [f"{source}-{decoder}-seed{s}" for s in SEEDS if s not in have]
            if not have:
                continue
            recs = [have[s] for s in sorted(have)]
            cell = {}
            for metric in METRICS:
                per_seed = np.stack([unpack_hits(r["hits"][metric], _users(r, metric)) for r in recs])
                cell[metric] = [round(float(v), 5) for v in interval(per_seed)]
            cell["_seeds"] = sorted(have)
            cell["_train_minutes"] = round(float(np.mean([r["train_minutes"] for r in recs])), 2)
            cell["_stopped"] = [_stopped(r) for r in recs]
            small.setdefault(source, {})[decoder] = cell
    every = [r for by_decoder in runs.values() for by_seed in by_decoder.values() for r in by_seed.values()]
    latency_path = out / "latency.json"
    latency = json.loads(latency_path.read_text()) if latency_path.exists() else {}
    return {
        "commit": ", ".join(sorted({r["git_commit"] for r in every if r.get("git_commit")})) or None,
        "machine": latency.get("machine") or "2-core CPU machine (each run file records its threads)",
        "command": REPORT_COMMAND,
        "small": small,
        "latency_ms": latency_block(out),
        "decision": decide(small.get("ml1m", {})),
        "runs_missing": missing,
        "interval": "95%: t over seeds (+) bootstrap over users, in quadrature (ml1m_bench.interval)",
    }


def report(out: Path = DEFAULT_OUT) -> dict:
    """Rebuild summary.json and results.md of `out` from its run files."""
    summary = build_summary(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    (out / "results.md").write_text(markdown(summary))
    return summary


def markdown(summary: dict) -> str:
    def cell(v):
        return f"{v[0]:.4f} [{v[1]:.4f}, {v[2]:.4f}]"

    lines = [
        "# Semantic-ID decoder: factorized vs prefix-conditioned",
        "",
        "Generated by `python -m oneranker_perf.decoder_bench --report` from the run files in `runs/`;",
        "protocol and decision rule: the module docstring of `perf/oneranker_perf/decoder_bench.py`",
        "(declared before any run). Intervals: 95%, training seeds and test users combined.",
        "",
        "| source | decoder | seeds | val recall@50 | test recall@50 | test HR@5 | train min | stopped (per seed) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for source, block in summary["small"].items():
        for decoder, c in block.items():
            lines.append(
                f"| {source} | {decoder} | {len(c['_seeds'])} | {cell(c['val_recall@50'])} | "
                f"{cell(c['test_recall@50'])} | {cell(c['test_hr@5'])} | {c['_train_minutes']} | "
                f"{'; '.join(c['_stopped'])} |"
            )
    lines += [
        "",
        "HR@5: ML-1M = full-catalogue HR@5 of the generator's value stream (no ranker on that protocol);",
        "synthetic = the final ranking's HR@5 (target among the 30 candidates of the paper's protocol).",
        "ML-1M runs stop at the first epoch end past 30 minutes of wall time, so a decoder whose epochs",
        "are slower trains fewer epochs in the same budget (the per-seed epochs are listed).",
        "",
        f"**Decision** ({summary['decision']['rule']}): `{summary['decision']['default']}`"
        + (
            f", conditioned - factorized val recall@50 = "
            f"{summary['decision']['val_recall@50_conditioned_minus_factorized']:+.4f}."
            if "val_recall@50_conditioned_minus_factorized" in summary["decision"]
            else "."
        ),
        "",
    ]
    if summary["latency_ms"]:
        lines += [
            "Latency (`latency.json`, `python -m oneranker_perf.decoder_latency`; both decoders "
            "interleaved in one run):",
            "",
            "| decoder | in-process p50 ms | served c=1 p50 ms | paper preset: generation p50 ms | "
            "paper preset: beam search alone p50 ms |",
            "|---|---|---|---|---|",
        ]
        for decoder, lat in summary["latency_ms"].items():
            lines.append(
                f"| {decoder} | {lat['in_process_p50']:.2f} | {lat['served_c1_p50']:.2f} | "
                f"{lat['paper_generation_p50']:.2f} | {lat['paper_search_p50']:.2f} |"
            )
        lines.append("")
    if summary["runs_missing"]:
        lines += ["Missing runs: " + ", ".join(summary["runs_missing"]), ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", choices=SOURCES)
    parser.add_argument("--decoder", choices=DECODERS)
    parser.add_argument("--seed", type=int, choices=SEEDS, default=0)
    parser.add_argument("--max-minutes", type=float, default=ML1M_MAX_MINUTES, help="ML-1M training budget")
    parser.add_argument("--report", action="store_true", help="rebuild summary.json / results.md")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--max-users", type=int, default=0, help="ML-1M: first N users only (smoke tests)")
    parser.add_argument("--max-epochs", type=int, default=0, help="ML-1M: override the config (smoke tests)")
    parser.add_argument("--max-steps-per-epoch", type=int, default=0, help="ML-1M: truncate epochs (smoke)")
    parser.add_argument("--max-steps", type=int, default=0, help="synthetic: step budget (smoke tests)")
    parser.add_argument("--keep-run", type=Path, help="synthetic: keep the run directory here")
    args = parser.parse_args(argv)
    command = reproduce_command(argv).replace("ml1m_bench", "decoder_bench")
    if args.report:
        print(json.dumps(report(args.out), indent=1))
        return 0
    if args.source is None or args.decoder is None:
        parser.error("--source and --decoder are required unless --report")
    threads = int(os.environ.get("OMP_NUM_THREADS", "1"))
    if args.source == "ml1m":
        smoke = {
            "max_users": args.max_users,
            "max_epochs": args.max_epochs,
            "max_steps_per_epoch": args.max_steps_per_epoch,
        }
        path = run_ml1m(args.decoder, args.seed, args.out, args.max_minutes, command, **smoke)
    else:
        path = run_synthetic(args.decoder, args.seed, args.out, command, threads, args.keep_run, args.max_steps)
    print(f"{path}: {json.loads(path.read_text())['metrics']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
