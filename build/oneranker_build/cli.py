"""`oneranker build | serve | quickstart` (registered into the `oneranker` command)."""

from __future__ import annotations

import dataclasses
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from oneranker_serving.local_server import TritonServer

BUILDABLE = ("onnxruntime", "torch")


def export_run(
    run_dir: Path, export_dir: Path, beam_search_graphs: bool = True, onnx_too: bool = True
) -> tuple[dict, object, dict, object]:
    """One run dir -> export_dir (graphs, generation tables, export_info.json); returns (export
    info, contract dims, manifest, config). The cascade's halves need the decoder-state graphs only;
    `onnx_too=False` writes the exported programs (.pt2) alone, all the torch engine reads."""
    from oneranker.checkpoint import load_run
    from oneranker.reference import tables_from_run

    from .export import (
        dims_for,
        export_beam_search_graphs,
        export_decoder_state_graphs,
        write_export_info,
        write_generation_tables,
    )

    cfg, model, sids, manifest = load_run(run_dir)
    if export_dir.exists():
        shutil.rmtree(export_dir)
    print(f"[build] exporting {'ONNX graphs' if onnx_too else 'programs'} of {run_dir} ...", flush=True)
    info = export_decoder_state_graphs(
        model, export_dir, manifest["num_advertisers"], manifest["num_categories"], cfg.model.max_history, onnx_too
    )
    tables = tables_from_run(run_dir, sids)
    if beam_search_graphs:
        info.update(export_beam_search_graphs(model, sids, tables, export_dir, cfg.model.max_history, onnx_too))
    write_generation_tables(model, sids, tables, export_dir)
    dims = dims_for(model)
    info = write_export_info(export_dir, manifest, info, dims, cfg)
    graphs = [g for g in ("generation", "ranking", "generator", "ranker") if f"{g}_export_s" in info]
    suffix = "onnx" if onnx_too else "pt2"
    sizes = {g: info.get(f"{g}_bytes", info[f"{g}_program_bytes"]) for g in graphs}
    print(
        "[build] " + ", ".join(f"{g}.{suffix} {sizes[g] / 1e6:.2f} MB ({info[f'{g}_export_s']:.1f}s)" for g in graphs),
        flush=True,
    )
    return info, dims, manifest, cfg


def build(
    run_dir: Path,
    out: Path,
    engines: list[str],
    instance_kind: str = "KIND_CPU",
    cascade_run: Path | None = None,
    settings_overrides: dict | None = None,
    onnx_too: bool = True,
    timing_cache_dir: Path | None = None,
) -> dict:
    """Checkpoint -> ONNX graphs + generation tables (OUT/export) -> one rendered repository per
    engine (OUT/<engine>; tensorrt: plus its plans, compiled with the timing cache in
    `timing_cache_dir`, default OUT/tensorrt-timing-cache, which no build deletes).
    Each repository is rendered (and its plans built) in a hidden folder of OUT and moved to
    OUT/<engine> only once complete: a failed build leaves no partial repository and the previous
    one untouched. A tensorrt build without TensorRT raises TensorRTUnavailable before exporting.
    `cascade_run` (a `train_cascade` run dir) adds the cascade baseline as `oneranker_cascade`;
    `settings_overrides` replaces RenderSettings fields (e.g. max_queue_delay_us); `onnx_too=False`
    (engines ["torch"] only) skips the ONNX conversion."""
    import torch

    from oneranker.cascade import GENERATOR, RANKER

    from .render import CascadeExports, RenderSettings, render_repository
    from .tensorrt_build import TIMING_CACHE_DIR, build_plans, require_tensorrt

    if not onnx_too and set(engines) != {"torch"}:
        raise ValueError(f"engines {engines} need ONNX graphs: onnx_too=False is for the torch engine alone")
    if "tensorrt" in engines:
        require_tensorrt()  # fail before the export, not after it with a repository lacking its plans
    out = Path(out)
    torch.set_num_threads(2)
    info, dims, manifest, cfg = export_run(Path(run_dir), out / "export", onnx_too=onnx_too)
    cascade = None
    if cascade_run is not None:
        cascade_run = Path(cascade_run)
        exports = {half: out / "export_cascade" / half for half in (GENERATOR, RANKER)}
        for half, folder in exports.items():
            export_run(cascade_run / half, folder, beam_search_graphs=False, onnx_too=onnx_too)
        cascade = CascadeExports(exports[GENERATOR], exports[RANKER])
    rendered, plans = {}, {}
    for engine in engines:
        settings = dataclasses.replace(
            RenderSettings(instance_kind=instance_kind if engine == "torch" else "KIND_CPU"),
            **(settings_overrides or {}),
        )
        repo = out / engine
        out.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{engine}.staging-", dir=out))
        try:
            render_repository(
                out / "export",
                staging,
                engine,
                dims,
                manifest["checkpoint_sha256"],
                settings=settings,
                cascade=cascade if engine != "tensorrt" else None,
            )
            if engine == "tensorrt":
                plans[engine] = build_plans(
                    out / "export", staging, cfg.name, timing_cache_dir or out / TIMING_CACHE_DIR
                )
            publish(staging, repo)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        rendered[engine] = str(repo)
        print(
            f"[build] rendered {engine} repository -> {repo}"
            + (" (with the cascade baseline oneranker_cascade)" if cascade and engine != "tensorrt" else "")
            + (" with its TensorRT plans" if engine == "tensorrt" else ""),
            flush=True,
        )
    return {"export": info, "repositories": rendered, "plans": plans}


def publish(staging: Path, final: Path) -> None:
    """Move a complete repository from `staging` to `final` (same parent folder: renames only);
    the repository it replaces is deleted afterwards."""
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.replaced-{os.getpid()}")
        os.replace(final, old)
    os.replace(staging, final)
    if old is not None:
        shutil.rmtree(old)


def _non_negative_int(text: str) -> int:
    import argparse

    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _positive_int(text: str) -> int:
    import argparse

    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def settings_overrides(args) -> dict:
    """The RenderSettings fields the build command's flags set (unset flags keep the defaults)."""
    out = {}
    if args.max_queue_delay_us is not None:
        out["max_queue_delay_us"] = args.max_queue_delay_us
    if args.engine_instances is not None:
        out.update(
            dict.fromkeys(("recommender_instances", "generation_instances", "ranking_instances"), args.engine_instances)
        )
    if args.intra_op_threads is not None:
        out["intra_op_threads"] = args.intra_op_threads
    if args.queue_policy:
        out["queue_policy"] = True
    return out


def register(sub, common, make_config, run_dir_of) -> None:
    from oneranker.cli import ARTIFACTS

    p = sub.add_parser("build", help="export ONNX graphs and render Triton model repositories")
    common(p)
    p.add_argument("--engine", default="onnxruntime", choices=BUILDABLE + ("tensorrt", "all"))
    p.add_argument(
        "--out",
        type=Path,
        default=ARTIFACTS / "model_repository",
        help="output folder; repositories land in OUT/<engine>/",
    )
    p.add_argument(
        "--instance-kind",
        default="KIND_CPU",
        choices=("KIND_CPU", "KIND_GPU"),
        help="instance kind of the torch engine's models (KIND_GPU: PyTorch on CUDA)",
    )
    p.add_argument(
        "--cascade-run",
        type=Path,
        help="a `oneranker train-cascade` run dir: also serve the cascade baseline as oneranker_cascade",
    )

    p.add_argument(
        "--max-queue-delay-us",
        type=_non_negative_int,
        help="dynamic batching wait per model (default 0: the lowest concurrency-1 p50 and the "
        "same or higher saturated throughput than 100 or 500, perf/results/queue_delay)",
    )
    p.add_argument(
        "--engine-instances",
        type=_positive_int,
        help="instances of each engine model (recommender, generation, ranking; default 2, one per core)",
    )
    p.add_argument(
        "--queue-policy",
        action="store_true",
        help="render Triton's default_queue_policy (bounded queue of 64, 2 s queue timeout: overload answered "
        "UNAVAILABLE at once); off by default because Triton 2.51's batcher then sometimes holds a batch "
        "500 ms under saturation (README 'Batching and threads')",
    )
    p.add_argument(
        "--intra-op-threads",
        type=_positive_int,
        help="engine threads per instance (default 1; `--engine-instances 1 --intra-op-threads 2` "
        "trades saturated throughput for concurrency-1 latency, README 'Batching and threads')",
    )

    p.add_argument(
        "--timing-cache-dir",
        type=Path,
        help="TensorRT timing caches, one per TensorRT version and GPU, kept across builds "
        "(default OUT/tensorrt-timing-cache)",
    )

    def cmd_build(args) -> int:
        from .tensorrt_build import TensorRTUnavailable

        cfg = make_config(args)
        engines = list(BUILDABLE + ("tensorrt",)) if args.engine == "all" else [args.engine]
        try:
            build(
                run_dir_of(args, cfg),
                args.out,
                engines,
                instance_kind=args.instance_kind,
                cascade_run=args.cascade_run,
                settings_overrides=settings_overrides(args),
                timing_cache_dir=args.timing_cache_dir,
            )
        except TensorRTUnavailable as err:
            print(f"error: cannot build the tensorrt engine: {err}", file=sys.stderr)
            return 2
        return 0

    p.set_defaults(func=cmd_build)

    p = sub.add_parser("serve", help="start tritonserver (CPU, Python backend) on a rendered repository")
    p.add_argument("--engine", default="onnxruntime", choices=BUILDABLE)
    p.add_argument("--repository", type=Path, help="rendered repository (default artifacts/model_repository/ENGINE)")
    p.add_argument("--grpc-port", type=int, default=8001)
    p.add_argument("--http-port", type=int, default=8000)
    p.add_argument("--metrics-port", type=int, default=8002)
    p.add_argument("--log-file", type=Path, default=ARTIFACTS / "logs" / "tritonserver.log")

    def cmd_serve(args) -> int:
        import signal
        import threading

        repo = args.repository or ARTIFACTS / "model_repository" / args.engine
        if not (repo / "oneranker" / "config.pbtxt").exists():
            raise FileNotFoundError(f"{repo} has no rendered repository; run `oneranker build --engine {args.engine}`")
        args.log_file.parent.mkdir(parents=True, exist_ok=True)
        server = TritonServer(
            repo,
            grpc_port=args.grpc_port,
            http_port=args.http_port,
            metrics_port=args.metrics_port,
            log_file=args.log_file,
        )
        server.start()
        server.wait_ready(120)
        print(
            f"tritonserver ready: grpc {server.grpc_url} http {server.http_url} metrics {server.metrics_url} "
            f"(log {args.log_file}); Ctrl-C stops it",
            flush=True,
        )
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        while not stop.is_set() and server.is_live():
            stop.wait(1.0)
        server.stop()
        return 0

    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("quickstart", help="the main job: train small, evaluate, build, serve, answer a query")
    common(p)
    p.add_argument("--retrain", action="store_true", help="train even if the run exists")
    p.add_argument("--keep-serving", action="store_true", help="leave the server up after the query")

    def cmd_quickstart(args) -> int:
        cfg = make_config(args)
        run_dir = run_dir_of(args, cfg)
        t0 = time.time()
        if args.retrain or not (run_dir / "manifest.json").exists():
            from oneranker.cli import _print_eval
            from oneranker.train import train

            result = train(cfg, run_dir)
            _print_eval(result["model"], result["prep"], run_dir)
        out = ARTIFACTS / "model_repository"
        build(run_dir, out, ["onnxruntime"])
        return serve_and_query(run_dir, out / "onnxruntime", keep=args.keep_serving, started=t0)

    p.set_defaults(func=cmd_quickstart)


def serve_and_query(run_dir: Path, repo: Path, keep: bool, started: float) -> int:
    import numpy as np
    import tritonclient.grpc as grpcclient

    from oneranker.checkpoint import load_run
    from oneranker.cli import ARTIFACTS, example_request, response_dict
    from oneranker.pipeline import prepare
    from oneranker.reference import load_reference
    from oneranker_client import contract

    cfg, _, sids, _ = load_run(run_dir)
    prep = prepare(cfg, sids=sids)
    req = example_request(prep, 0)
    reference = response_dict(load_reference(run_dir).recommend([req])[0])
    log = ARTIFACTS / "logs" / "tritonserver.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    server = TritonServer(repo, log_file=log)
    server.start()
    try:
        server.wait_ready(120)
        print(f"[serve] tritonserver ready: grpc {server.grpc_url} (log {log})", flush=True)
        client = grpcclient.InferenceServerClient(server.grpc_url)
        arrays = {
            "user_features": req.user_features,
            "item_ids": req.item_ids,
            "actions": req.actions,
            "timestamps": req.timestamps,
            "request_time": np.array([req.request_time]),
        }
        inputs = []
        for spec in contract.PUBLIC.inputs:
            if spec.name in arrays:
                value = np.asarray(arrays[spec.name], dtype=spec.numpy_dtype)[None]
                tensor = grpcclient.InferInput(spec.name, list(value.shape), spec.wire_dtype)
                tensor.set_data_from_numpy(value)
                inputs.append(tensor)
        result = client.infer(contract.PUBLIC_MODEL, inputs)
        served = {
            "item_ids": result.as_numpy("rec_item_ids")[0].tolist(),
            "scores": [round(float(x), 6) for x in result.as_numpy("rec_scores")[0]],
        }
        print("\n| rank | served item | served score | reference item | reference score |")
        print("|---|---|---|---|---|")
        for i, (a, b) in enumerate(zip(served["item_ids"], served["scores"])):
            print(f"| {i + 1} | {a} | {b:.6f} | {reference['item_ids'][i]} | {reference['scores'][i]:.6f} |")
        same = served["item_ids"] == reference["item_ids"]
        print(
            f"\nserved top-k {'equals' if same else 'DIFFERS FROM'} the in-process PyTorch reference; "
            f"main job took {time.time() - started:.0f}s",
            flush=True,
        )
        if keep:
            print("server left running; stop it with Ctrl-C", flush=True)
            while server.is_live():
                time.sleep(1)
        return 0 if same else 1
    finally:
        server.stop()
