"""Compile the exported ONNX graphs to TensorRT plans (runs where TensorRT exists: NGC images).

    generation.onnx / ranking.onnx + build/profiles.json (min/opt/max per input, aligned with
    the serving length buckets, batch bound = Triton max_batch_size)
    + <cache dir>/tensorrt-<TensorRT version>-<GPU>.cache (timing cache of earlier builds, if any)
      -> <repo>/<model>/1/model.plan (path: oneranker_serving.plans.plan_path, which TrtRunner
         reads too) + build_info.json (TensorRT version, profile, precision, ONNX sha256, timing
         cache reused or not): the `generation` and `ranking` models of the `graphs` topology
      -> the updated timing cache, back in <cache dir>

Precision: TensorRT 10 builds *strongly typed* networks (`NetworkDefinitionCreationFlag.STRONGLY_TYPED`):
the precision comes from the ONNX graph (fp32 here; export an fp16/bf16 graph to change it), not
from builder flags. One optimization profile per engine (Triton requires all profiles to share
the max batch; profile switching costs latency).

Timing cache: kept outside every folder a build recreates (default OUT/tensorrt-timing-cache
beside OUT/export and OUT/tensorrt; `oneranker build --timing-cache-dir`), one file per TensorRT
version and GPU model, since a cache only fits the TensorRT and GPU that wrote it.

`compile_torch_tensorrt` is the second path the user asked for: the decoder-state generator/ranker
PyTorch modules through torch-tensorrt (dynamo IR), to be checked against the ONNX path on an NGC
host; profiles.json keeps their profiles for it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from pathlib import Path

from oneranker_serving.plans import PLAN_MODELS, plan_path

PROFILES = Path(__file__).resolve().parents[1] / "profiles.json"
SUPPORTED_OPS = Path(__file__).resolve().parents[1] / "onnx_tensorrt_supported_ops.txt"
TIMING_CACHE_DIR = "tensorrt-timing-cache"  # default: beside the repository, in the build's OUT


class TensorRTUnavailable(RuntimeError):
    pass


def require_tensorrt():
    try:
        import tensorrt as trt  # noqa: F401
    except ImportError as err:
        raise TensorRTUnavailable(
            "TensorRT is not installed in this environment (its PyPI package downloads the real libraries "
            "from NVIDIA's index, unreachable here). Build plans inside the NGC image: "
            "`docker compose --env-file deploy/.env run builder` (see docs/deployment.md)."
        ) from err
    return trt


def load_profiles(preset: str, path: Path = PROFILES) -> dict:
    """{model: {input: {"min": [...], "opt": [...], "max": [...]}}} with the batch dim first."""
    data = json.loads(Path(path).read_text())
    if preset not in data["presets"]:
        raise KeyError(f"{path} has no profile for preset {preset!r} (has {sorted(data['presets'])})")
    return data["presets"][preset]


def supported_ops() -> set[str]:
    return {
        line.strip() for line in SUPPORTED_OPS.read_text().splitlines() if line.strip() and not line.startswith("#")
    }


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def gpu_key(device: int = 0) -> str:
    """The GPU model a plan and a timing cache are built for, as a file-name part: "nvidia-h200-sm90"."""
    import torch

    if not torch.cuda.is_available():
        raise TensorRTUnavailable("no CUDA GPU is visible: TensorRT compiles plans for the GPU it runs on")
    major, minor = torch.cuda.get_device_capability(device)
    name = re.sub(r"[^a-z0-9.]+", "-", torch.cuda.get_device_name(device).lower()).strip("-")
    return f"{name}-sm{major}{minor}"


def timing_cache_file(cache_dir: Path, tensorrt_version: str, gpu: str) -> Path:
    """One timing cache per (TensorRT version, GPU model): a cache only fits the pair that wrote it."""
    return Path(cache_dir) / f"tensorrt-{tensorrt_version}-{gpu}.cache"


def build_engine(
    onnx_path: Path, profile: dict, out_plan: Path, timing_cache: Path, workspace_gib: float = 4.0
) -> dict:
    """ONNX -> serialized TensorRT engine with one optimization profile. Reads `timing_cache` when
    it exists and writes it back (atomically) with this build's timings added."""
    trt = require_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(Path(onnx_path).read_bytes()):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    timing_cache = Path(timing_cache)
    cache_bytes = timing_cache.read_bytes() if timing_cache.exists() else b""
    cache = config.create_timing_cache(cache_bytes)
    if not config.set_timing_cache(cache, ignore_mismatch=False):
        raise RuntimeError(f"TensorRT refused the timing cache {timing_cache}: delete it to start a new one")
    opt = builder.create_optimization_profile()
    for name, shapes in profile.items():
        opt.set_shape(name, tuple(shapes["min"]), tuple(shapes["opt"]), tuple(shapes["max"]))
    config.add_optimization_profile(opt)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise RuntimeError(f"TensorRT failed to build {onnx_path}")
    out_plan.parent.mkdir(parents=True, exist_ok=True)
    out_plan.write_bytes(bytes(plan))
    timing_cache.parent.mkdir(parents=True, exist_ok=True)
    partial = timing_cache.with_name(f".{timing_cache.name}.{os.getpid()}")
    partial.write_bytes(bytes(config.get_timing_cache().serialize()))
    os.replace(partial, timing_cache)  # a concurrent build reads the old cache or the new, never half
    return {
        "tensorrt_version": trt.__version__,
        "profile": profile,
        "precision": "from ONNX (strongly typed)",
        "onnx_sha256": sha256(onnx_path),
        "plan_bytes": out_plan.stat().st_size,
        "timing_cache_bytes_read": len(cache_bytes),
    }


def build_plans(export_dir: Path, repo_dir: Path, preset: str, cache_dir: Path, gpu: str | None = None) -> dict:
    """Every engine into a rendered `tensorrt` repository (plan_path: <repo>/<model>/1/model.plan):
    the generation and ranking graphs, the native models of its one topology, `graphs`.
    `cache_dir` holds the timing caches (outside every folder a build recreates); whether this
    build found one of an earlier build is printed and recorded in each build_info.json
    (`timing_cache_reused`). Returns {model: build info}."""
    trt = require_tensorrt()
    profiles = load_profiles(preset)
    cache = timing_cache_file(cache_dir, trt.__version__, gpu or gpu_key())
    reused = cache.exists()
    print(
        f"[build] TensorRT timing cache {cache}: "
        + (f"reused from an earlier build ({cache.stat().st_size} bytes)" if reused else "none yet, starting one"),
        flush=True,
    )
    info = {}
    for model in PLAN_MODELS:
        plan = plan_path(repo_dir, model)
        info[model] = build_engine(Path(export_dir) / f"{model}.onnx", profiles[model], plan, cache)
        info[model].update(timing_cache=str(cache), timing_cache_reused=reused)
        (plan.parent / "build_info.json").write_text(json.dumps(info[model], indent=2))
    return info


def compile_torch_tensorrt(model, preset: str, out_dir: Path) -> dict:
    """The same generator/ranker modules through torch-tensorrt (dynamo IR), saved as
    TorchScript-free exported programs for comparison with the ONNX path on an NGC host."""
    require_tensorrt()
    import torch
    import torch_tensorrt

    from .export import GeneratorGraph, RankerGraph

    profiles = load_profiles(preset)
    dtypes = {
        "user_features": torch.int64,
        "hist_sids": torch.int64,
        "hist_actions": torch.int64,
        "hist_dt": torch.float32,
        "hist_len": torch.int64,
        "kv": torch.float32,
        "cand_sids": torch.int64,
        "cand_attrs": torch.int64,
        "cand_bid": torch.float32,
    }
    out = {}
    for name, module in (("generator", GeneratorGraph(model)), ("ranker", RankerGraph(model))):
        inputs = [
            torch_tensorrt.Input(min_shape=s["min"], opt_shape=s["opt"], max_shape=s["max"], dtype=dtypes[k])
            for k, s in profiles[name].items()
        ]
        compiled = torch_tensorrt.compile(module.eval().cuda(), ir="dynamo", inputs=inputs)
        path = Path(out_dir) / f"{name}.torchtrt.ep"
        torch_tensorrt.save(compiled, str(path), inputs=[i.example_tensor("opt_shape").cuda() for i in inputs])
        out[name] = str(path)
    return out


def profile_for(cfg, max_batch_size: int = 8) -> dict:
    """The optimization profile implied by a config: batch 1..max_batch_size (opt: half), history
    1..largest length bucket (opt: the middle bucket), candidates 1..max_num_candidates (opt: the
    default num_candidates). `build/profiles.json` is this, frozen per preset (a test keeps it so)."""
    m, t, s, d = cfg.model, cfg.tokenizer, cfg.serve, cfg.data
    f = d.num_profile_features + d.num_context_features
    depth, t2, r2 = t.sid_depth, m.num_step2_tokens, 2 * m.r_layers
    buckets = list(s.length_buckets)
    lo, opt, hi = 1, buckets[len(buckets) // 2], buckets[-1]
    b_opt = max(1, max_batch_size // 2)
    n_lo, n_opt, n_hi = 1, s.num_candidates, s.max_num_candidates

    def shp(*dims):
        return list(dims)

    generator = {
        "user_features": {"min": shp(1, f), "opt": shp(b_opt, f), "max": shp(max_batch_size, f)},
        "hist_sids": {"min": shp(1, lo, depth), "opt": shp(b_opt, opt, depth), "max": shp(max_batch_size, hi, depth)},
        "hist_actions": {"min": shp(1, lo), "opt": shp(b_opt, opt), "max": shp(max_batch_size, hi)},
        "hist_dt": {"min": shp(1, lo), "opt": shp(b_opt, opt), "max": shp(max_batch_size, hi)},
        "hist_len": {"min": shp(1), "opt": shp(b_opt), "max": shp(max_batch_size)},
    }
    ranker = {
        "kv": {
            "min": shp(1, r2, f + lo + t2, m.d_model),
            "opt": shp(b_opt, r2, f + opt + t2, m.d_model),
            "max": shp(max_batch_size, r2, f + hi + t2, m.d_model),
        },
        "hist_len": {"min": shp(1), "opt": shp(b_opt), "max": shp(max_batch_size)},
        "cand_sids": {
            "min": shp(1, n_lo, depth),
            "opt": shp(b_opt, n_opt, depth),
            "max": shp(max_batch_size, n_hi, depth),
        },
        "cand_attrs": {"min": shp(1, n_lo, 2), "opt": shp(b_opt, n_opt, 2), "max": shp(max_batch_size, n_hi, 2)},
        "cand_bid": {"min": shp(1, n_lo), "opt": shp(b_opt, n_opt), "max": shp(max_batch_size, n_hi)},
    }
    e_hi = s.max_exclude_items
    knob = {"min": shp(1), "opt": shp(b_opt), "max": shp(max_batch_size)}
    generation = {
        **generator,
        "beam_width": knob,
        "num_candidates": knob,
        "exclude_idx": {"min": shp(1, 1), "opt": shp(b_opt, 1), "max": shp(max_batch_size, e_hi)},
    }
    # the generation graph keeps up to the batch's largest num_candidates
    candidates = {"min": shp(1, n_lo), "opt": shp(b_opt, n_opt), "max": shp(max_batch_size, n_hi)}
    ranking = {
        "kv": ranker["kv"],
        "hist_len": knob,
        "cand_idx": candidates,
        "cand_logp": candidates,
        "cand_stream": candidates,
        "top_k": knob,
    }
    return {"generator": generator, "ranker": ranker, "generation": generation, "ranking": ranking}


def write_profiles(path: Path = PROFILES, max_batch_size: int = 8) -> None:
    from oneranker.config import PRESETS, preset

    data = {
        "comment": "TensorRT optimization profiles per preset; regenerate with "
        "`python -m oneranker_build.tensorrt_build --write-profiles`",
        "max_batch_size": max_batch_size,
        "presets": {name: profile_for(preset(name), max_batch_size) for name in PRESETS},
    }
    Path(path).write_text(json.dumps(data, indent=1) + "\n")


def main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--write-profiles", action="store_true", help="regenerate build/profiles.json")
    parser.add_argument("--export-dir", type=Path, help="folder with generation.onnx and ranking.onnx")
    parser.add_argument("--repository", type=Path, help="rendered tensorrt repository to place model.plan files in")
    parser.add_argument("--preset", default="small")
    parser.add_argument(
        "--timing-cache-dir", type=Path, help=f"timing caches (default: {TIMING_CACHE_DIR} beside the repository)"
    )
    args = parser.parse_args(argv)
    if args.write_profiles:
        write_profiles()
        print(f"wrote {PROFILES}")
        return 0
    if not (args.export_dir and args.repository):
        parser.error("--export-dir and --repository are required to build plans")
    cache_dir = args.timing_cache_dir or args.repository.parent / TIMING_CACHE_DIR
    try:
        info = build_plans(args.export_dir, args.repository, args.preset, cache_dir)
    except TensorRTUnavailable as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(info, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
