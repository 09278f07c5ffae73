"""`oneranker` command line: one entry point for every stage.

oneranker data       build the dataset, splits and semantic IDs, print their statistics
oneranker train      train a preset (safetensors checkpoint in artifacts/runs/NAME)
oneranker train-cascade  train the cascade baseline (generator + independent ranker)
oneranker evaluate   HR@K / NDCG@K of generation and ranking next to popularity
oneranker recommend  top-k for one test user with the in-process PyTorch reference
oneranker build      export ONNX graphs, TensorRT plans (where TensorRT exists), render repos
oneranker serve      start tritonserver on the rendered repository
oneranker quickstart the README's main job: train, evaluate, build, serve, answer a query
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ARTIFACTS = Path(os.environ.get("ONERANKER_ARTIFACTS", Path(__file__).resolve().parents[2] / "artifacts"))


def _config(args):
    from .config import ExperimentConfig, preset

    cfg = ExperimentConfig.load(args.config) if getattr(args, "config", None) else preset(args.preset)
    for item in getattr(args, "set", None) or []:
        _apply_override(cfg, item)
    if getattr(args, "seed", None) is not None:
        cfg.data.seed = cfg.train.seed = cfg.tokenizer.seed = args.seed
    if getattr(args, "steps", None):
        cfg.train.steps = args.steps
    return cfg.validate()


def _apply_override(cfg, item: str) -> None:
    """--set model.d_model=32: dotted field = JSON (or bare string) value."""
    from .config import ConfigError

    if "=" not in item:
        raise ConfigError(f"--set expects FIELD=VALUE, got {item!r}")
    path, raw = item.split("=", 1)
    *parents, leaf = path.split(".")
    target = cfg
    for name in parents:
        if not hasattr(target, name):
            raise ConfigError(f"unknown config field {path}")
        target = getattr(target, name)
    if not hasattr(target, leaf):
        raise ConfigError(f"unknown config field {path}")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    current = getattr(target, leaf)
    if isinstance(current, tuple):
        value = tuple(value)
    elif isinstance(current, bool) and not isinstance(value, bool):
        raise ConfigError(f"config field {path} expects true/false, got {raw!r}")
    elif isinstance(current, (int, float)) and not isinstance(current, bool) and not isinstance(value, (int, float)):
        raise ConfigError(f"config field {path} expects a number, got {raw!r}")
    setattr(target, leaf, value)


def _common(p: argparse.ArgumentParser, run: bool = True) -> None:
    p.add_argument("--preset", default="small", help="config preset: small (CPU default), tiny, paper")
    p.add_argument("--config", help="JSON config file (overrides --preset)")
    p.add_argument(
        "--set", action="append", metavar="FIELD=VALUE", help="override a config field, e.g. model.use_dc_loss=false"
    )
    p.add_argument("--seed", type=int, help="seed for data, tokenizer and training")
    if run:
        p.add_argument("--run-dir", type=Path, help="run directory (default artifacts/runs/PRESET)")


def _run_dir(args, cfg) -> Path:
    return args.run_dir or ARTIFACTS / "runs" / cfg.name


def cmd_data(args) -> int:
    from .pipeline import prepare

    cfg = _config(args)
    t0 = time.time()
    prep = prepare(cfg)
    print(
        f"dataset {prep.dataset.name}: {prep.dataset.log.num_users} users, {prep.dataset.catalog.num_ads} ads, "
        f"{prep.dataset.catalog.num_contents} contents, {len(prep.dataset.log.user)} events"
    )
    for name, s in prep.splits.items():
        print(f"  {name}: {len(s)} samples, mean history {float((s.hist_end - s.hist_start).mean()):.1f}")
    print("semantic ids:", json.dumps(prep.sids.report(), sort_keys=True))
    print(f"labels: {json.dumps(prep.dataset.label_sources, sort_keys=True)}")
    print(f"built in {time.time() - t0:.1f}s")
    return 0


def cmd_train(args) -> int:
    from .train import train

    cfg = _config(args)
    run_dir = _run_dir(args, cfg)
    result = train(cfg, run_dir, resume=args.resume)
    s = result["summary"]
    if s.get("rank", 0) != 0:  # under torchrun only rank 0 reports
        return 0
    print(f"trained {cfg.name} in {s['train_seconds']:.1f}s -> {run_dir}")
    print("loss first:", {k: round(v, 4) for k, v in s["first_loss"].items()})
    print("loss last :", {k: round(v, 4) for k, v in s["last_loss"].items()})
    if not args.no_eval:
        _print_eval(result["model"], result["prep"], run_dir)
    return 0


def cmd_train_cascade(args) -> int:
    """The cascade baseline on the unified run's data and semantic IDs (so both can share one
    served preprocess): run_dir/generator, run_dir/ranker, run_dir/cascade.json."""
    from .cascade import train_cascade
    from .checkpoint import load_run
    from .pipeline import prepare

    cfg = _config(args)
    unified = args.unified_run or ARTIFACTS / "runs" / cfg.name
    run_dir = args.run_dir or ARTIFACTS / "runs" / f"{cfg.name}-cascade"
    if (unified / "manifest.json").exists():
        _, _, sids, _ = load_run(unified)
        print(f"[cascade] semantic IDs of {unified} (shared preprocess with the unified model)", flush=True)
        prep = prepare(cfg, sids=sids)
    else:
        print(f"[cascade] no unified run at {unified}: building data and semantic IDs afresh", flush=True)
        prep = prepare(cfg)
    run = train_cascade(cfg, run_dir, prep=prep)
    print(
        f"cascade trained -> {run_dir} (generator: {run.generator['summary']['train_seconds']:.1f}s, "
        f"ranker: {run.ranker['summary']['train_seconds']:.1f}s)"
    )
    return 0


def _print_eval(model, prep, run_dir: Path) -> dict:
    from .evaluate import evaluate, format_table

    table = evaluate(model, prep, "test")
    cols = ["HR@1", "HR@3", "HR@5", "HR@10", "NDCG@1", "NDCG@5", "NDCG@10"]
    extra = [c for c in ("vNDCG@5", "eCPM@5", "GMV@5") if c in table["ranking"]]
    print(f"\ntest split, target among {prep.splits['test'].candidates.shape[1]} candidates:")
    print(format_table(table, cols + extra))
    (Path(run_dir) / "metrics.json").write_text(json.dumps(table, indent=2))
    return table


def cmd_evaluate(args) -> int:
    from .checkpoint import load_run
    from .pipeline import prepare

    cfg0 = _config(args)
    run_dir = _run_dir(args, cfg0)
    cfg, model, sids, _ = load_run(run_dir)
    prep = prepare(cfg, sids=sids)
    _print_eval(model, prep, run_dir)
    return 0


def cmd_recommend(args) -> int:
    from .checkpoint import load_run
    from .pipeline import prepare
    from .reference import load_reference

    cfg0 = _config(args)
    run_dir = _run_dir(args, cfg0)
    cfg, _, sids, _ = load_run(run_dir)
    prep = prepare(cfg, sids=sids)
    rec = load_reference(run_dir)
    req = example_request(prep, args.user_row)
    req.top_k = args.top_k
    out = rec.recommend([req])[0]
    print(json.dumps(response_dict(out), indent=2))
    return 0


def example_request(prep, row: int = 0, split: str = "test"):
    """A raw request for sample `row` of a split: ids, actions and timestamps as a client sends them."""
    import numpy as np

    from oneranker_serving.recommender import Request

    from .config import ACTION_CONTENT_VIEW

    s = prep.splits[split]
    log, cat = prep.dataset.log, prep.dataset.catalog
    rows = np.arange(s.hist_start[row], s.hist_end[row])
    actions, items = log.action[rows], log.item[rows]
    content = actions == ACTION_CONTENT_VIEW
    ids = np.empty(len(rows), dtype=np.int64)
    ids[content] = cat.content_ids[items[content]]
    ids[~content] = cat.ad_ids[items[~content]]
    feats = np.concatenate([log.profile[s.user[row]], s.context[row]])
    return Request(
        user_features=feats.astype(np.int64),
        item_ids=ids,
        actions=actions.astype(np.int64),
        timestamps=log.timestamp[rows].astype(np.int64),
        request_time=int(s.request_time[row]),
    )


def response_dict(out) -> dict:
    if isinstance(out, Exception):
        return {"error": str(out)}
    return {
        "item_ids": out.item_ids.tolist(),
        "scores": [round(float(x), 6) for x in out.scores],
        "gen_logp": [round(float(x), 4) for x in out.gen_logp],
        "source_head": out.source_head.tolist(),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="oneranker", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("data", help="build dataset, splits and semantic IDs; print statistics")
    _common(p, run=False)
    p.set_defaults(func=cmd_data)

    p = sub.add_parser("train", help="train a model and evaluate it on the test split")
    _common(p)
    p.add_argument("--steps", type=int, help="override train.steps")
    p.add_argument("--resume", action="store_true", help="continue from the optimizer state in --run-dir")
    p.add_argument("--no-eval", action="store_true", help="skip the evaluation table")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("train-cascade", help="train the cascade baseline (generator + independent ranker)")
    _common(p)
    p.add_argument("--steps", type=int, help="override train.steps")
    p.add_argument(
        "--unified-run",
        type=Path,
        help="OneRanker run whose semantic IDs the cascade reuses (default artifacts/runs/PRESET)",
    )
    p.set_defaults(func=cmd_train_cascade)

    p = sub.add_parser("evaluate", help="evaluate a trained run on the test split")
    _common(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("recommend", help="top-k for one test user with the PyTorch reference")
    _common(p)
    p.add_argument("--user-row", type=int, default=0, help="row of the test split to use as the request")
    p.add_argument("--top-k", type=int, default=10)
    p.set_defaults(func=cmd_recommend)

    from oneranker_build import cli as build_cli  # build, serve, quickstart (same distribution)

    build_cli.register(sub, _common, _config, _run_dir)

    args = parser.parse_args(argv)
    from oneranker_serving.tokenize import RequestError

    from .config import ConfigError

    try:
        return args.func(args)
    except (ConfigError, RequestError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
