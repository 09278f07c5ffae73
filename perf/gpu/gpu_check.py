#!/usr/bin/env python3
"""GPU check: serve OneRanker's torch engine on KIND_GPU from carried files and time it.

For a machine with a CUDA GPU and PyTorch but no tritonserver, tritonclient or network (the device
machine the project is lent now and then). Two commands:

    python -m oneranker_perf.gpu_carry --out artifacts/gpu_carry     # here: cut the server out of
                                                                     # the nvidia-pytriton wheel (~45 MB)
    python perf/gpu/gpu_check.py --carry artifacts/gpu_carry --out DIR   # there: the whole check

The check unpacks the carry (tritonserver, its libraries, the Python backend and stub, numpy < 2
when the machine's numpy is 2.x), builds a randomly initialised `paper` model, serves the torch
repository on KIND_GPU, checks served answers against the same programs in process and measures
in-process and served latency at history 512 and 2048, 256 candidates, batch 1 and 8
(`oneranker_perf.gpu_check`). It writes report.md, summary.json, latency.png and
tritonserver.log into DIR and exits 1 when the served answers differ.

`--dry-run` runs the same steps on CPU with the `tiny` preset (tests/integration/test_gpu_check.py).

Two stages: this interpreter (standard library only) unpacks the carry and makes a venv
(`gpu_carry.make_env`: the carried numpy < 2 first, then the project's sources and this
interpreter's site-packages), then runs this script again inside it with `--in-env`. The
Python-backend stubs embed CPython in isolated mode, so they see exactly that venv too.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SOURCES = [REPO / d for d in ("training", "build", "client", "perf", "serving")]


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--carry", type=Path, required=True, help="folder written by `python -m oneranker_perf.gpu_carry`")
    ap.add_argument("--out", type=Path, required=True, help="report.md, summary.json, latency.png, tritonserver.log")
    ap.add_argument("--dry-run", action="store_true", help="CPU and the tiny preset: the wiring, not the times")
    ap.add_argument("--preset", choices=("tiny", "small", "paper"), help="default: paper (tiny with --dry-run)")
    ap.add_argument("--device", help="torch device (default cuda:0; cpu with --dry-run)")
    ap.add_argument("--work", type=Path, help="scratch folder (default: a temporary one, removed at the end)")
    ap.add_argument("--in-env", action="store_true", help=argparse.SUPPRESS)  # the second stage, inside the venv
    args = ap.parse_args(argv)

    if args.in_env:
        import numpy

        if int(numpy.__version__.split(".")[0]) >= 2:
            raise SystemExit(f"the check's environment imports numpy {numpy.__version__} ({numpy.__file__})")
        from oneranker_perf.gpu_check import make_plan, run

        plan = make_plan(args.dry_run, args.preset, args.device)
        return run(plan, args.work / "carry", args.work.resolve(), args.out.resolve())

    sys.path.insert(0, str(REPO / "perf"))
    from oneranker_perf import gpu_carry

    work = (args.work or Path(tempfile.mkdtemp(prefix="oneranker-gpu-check-"))).resolve()
    try:
        try:
            unpacked = gpu_carry.unpack(args.carry, work / "carry")
            python = gpu_carry.make_env(unpacked, work / "env", SOURCES)
        except gpu_carry.CarryError as err:
            print(f"[gpu-check] cannot run: {err}", file=sys.stderr, flush=True)
            return 2
        print(f"[gpu-check] carry unpacked into {work}; numpy from {unpacked.numpy_wheel or 'this interpreter'}")
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the stubs ignore it: so does the check
        if unpacked.libpython_dir is not None:
            env["LD_LIBRARY_PATH"] = os.pathsep.join(
                filter(None, [str(unpacked.libpython_dir), env.get("LD_LIBRARY_PATH")])
            )
        cmd = [str(python), str(Path(__file__).resolve()), *argv, "--work", str(work), "--in-env"]
        return subprocess.call(cmd, env={**env, "PYTHONUNBUFFERED": "1"})
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
