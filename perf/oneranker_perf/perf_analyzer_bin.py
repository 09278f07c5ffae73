"""Locate Triton's ``perf_analyzer`` as installed by ``scripts/bootstrap.sh``.

The real binary ships only inside the ``tritonclient==2.50.0`` wheel (the ``perf-analyzer`` name on
PyPI is an empty placeholder). bootstrap installs that wheel ``--no-deps --target
artifacts/tools/pa`` (its Python pins clash with locust) and makes ``artifacts/tools/pa/lib`` with
``libb64.so.0d`` and ``libcudart.so.12`` symlinked to the copies in the nvidia-pytriton wheel.
``ONERANKER_PA_DIR`` overrides the install folder (same variable as bootstrap).

Usage::

    argv, env = perf_analyzer_command()
    subprocess.run(argv + ["-m", "model", "-i", "grpc", "-u", url, ...], env=env, check=True)
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

__all__ = ["perf_analyzer_command", "perf_analyzer_dir", "find_perf_analyzer"]

BOOTSTRAP_HINT = "run `bash scripts/bootstrap.sh` (installs tritonclient==2.50.0 --target artifacts/tools/pa)"
_NEEDED_LIBS = ("libb64.so.0d", "libcudart.so.12")


def _repo_root() -> Path:
    # perf/oneranker_perf/perf_analyzer_bin.py -> repo root (the package is installed editable)
    return Path(__file__).resolve().parents[2]


def perf_analyzer_dir() -> Path:
    env = os.environ.get("ONERANKER_PA_DIR")
    if env:
        p = Path(env)
        return p if p.is_absolute() else _repo_root() / p
    return _repo_root() / "artifacts" / "tools" / "pa"


def find_perf_analyzer(pa_dir: Path | None = None) -> Path:
    pa_dir = Path(pa_dir) if pa_dir is not None else perf_analyzer_dir()
    candidates = [pa_dir / "bin" / "perf_analyzer"]
    if pa_dir.is_dir():
        candidates += sorted(p for p in pa_dir.rglob("perf_analyzer") if p.parent.name != "lib")
    for c in candidates:
        if c.is_file() and os.access(c, os.X_OK):
            return c
    raise RuntimeError(f"perf_analyzer not found under {pa_dir}: {BOOTSTRAP_HINT}")


def perf_analyzer_command(
    base_env: Mapping[str, str] | None = None,
) -> tuple[list[str], dict[str, str]]:
    """``(argv_prefix, env)`` to run perf_analyzer.

    ``argv_prefix`` is ``[<path to perf_analyzer>]``; append its arguments. ``env`` is a full
    environment (``base_env``, default ``os.environ``) with the folder holding the libb64/libcudart
    sonames prepended to ``LD_LIBRARY_PATH``; pass it as ``env=`` to subprocess.
    """
    pa_dir = perf_analyzer_dir()
    binary = find_perf_analyzer(pa_dir)
    lib = pa_dir / "lib"
    missing = [name for name in _NEEDED_LIBS if not (lib / name).exists()]  # follows symlinks
    if missing:
        raise RuntimeError(
            f"perf_analyzer needs {', '.join(missing)} in {lib} (missing or dangling symlink): {BOOTSTRAP_HINT}"
        )
    env = dict(os.environ if base_env is None else base_env)
    old = env.get("LD_LIBRARY_PATH")
    env["LD_LIBRARY_PATH"] = str(lib) + (os.pathsep + old if old else "")
    return [str(binary)], env
