"""Locate and prepare the CPU ``tritonserver`` shipped in the ``nvidia-pytriton`` wheel (torch-free).

The ``nvidia-pytriton==0.7.0`` wheel (installed by ``scripts/bootstrap.sh``) carries a complete
tritonserver 2.51 binary, its shared libraries (``nvidia_pytriton.libs``), the Python backend and
Python-backend stubs for CPython 3.8-3.13 (see ``shared/docs/platform.md``). This module finds
those pieces without importing ``pytriton`` and turns them into what a server start needs:

* :func:`find_tritonserver` -> the binary; :func:`pytriton_libs_dir` -> its ``.so`` folder;
* :func:`prepare_backend_dir` -> a ``--backend-directory`` holding ``backends/python`` plus the
  stub of the *running* Python (:func:`stub_versions` lists the stubs there are);
* :func:`server_env` -> the environment: this virtualenv's ``bin`` first on ``PATH`` so the stub
  imports this venv's packages (numpy<2, onnxruntime, torch), ``nvidia_pytriton.libs`` (and the
  interpreter's ``libpython``) on ``LD_LIBRARY_PATH``.

:class:`oneranker_serving.local_server.TritonServer` runs the server from them.

Every function takes an optional ``root``: a folder laid out like the wheel's ``site-packages``
(``pytriton/tritonserver/...`` beside ``nvidia_pytriton.libs``), e.g. the pieces cut out of the
wheel by ``oneranker_perf.gpu_carry`` and unpacked on a machine without the wheel; ``None`` means
the installed wheel.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

__all__ = [
    "BOOTSTRAP_HINT",
    "find_tritonserver",
    "prepare_backend_dir",
    "pytriton_libs_dir",
    "server_env",
    "STUB_THREAD_ENV",
    "stub_versions",
]

BOOTSTRAP_HINT = "run `bash scripts/bootstrap.sh` (installs nvidia-pytriton==0.7.0 --no-deps)"


def _pytriton_root(root: Path | None = None) -> Path:
    """Directory of the ``pytriton`` package: ``root/pytriton``, or the installed one, found without
    importing it (its Python API's dependencies are deliberately not installed)."""
    if root is not None:
        return Path(root) / "pytriton"
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"the nvidia-pytriton package is not installed in {sys.prefix}: {BOOTSTRAP_HINT}")
    return Path(list(spec.submodule_search_locations)[0])


def _tritonserver_root(root: Path | None = None) -> Path:
    return _pytriton_root(root) / "tritonserver"


def find_tritonserver(root: Path | None = None) -> Path:
    """Path of the ``tritonserver`` binary inside the nvidia-pytriton wheel (or under ``root``)."""
    binary = _tritonserver_root(root) / "bin" / "tritonserver"
    if not binary.is_file():
        raise RuntimeError(f"tritonserver binary not found at {binary}: {BOOTSTRAP_HINT}")
    if not os.access(binary, os.X_OK):
        raise RuntimeError(f"tritonserver at {binary} is not executable: {BOOTSTRAP_HINT}")
    return binary


def pytriton_libs_dir(root: Path | None = None) -> Path:
    """``site-packages/nvidia_pytriton.libs`` (tritonserver's and perf_analyzer's .so files)."""
    libs = _pytriton_root(root).parent / "nvidia_pytriton.libs"
    if not libs.is_dir():
        raise RuntimeError(f"{libs} not found: {BOOTSTRAP_HINT}")
    return libs


def stub_versions(root: Path | None = None) -> list[str]:
    """Python versions ("3.12", ...) that have a Python-backend stub (the wheel ships 3.8-3.13)."""
    stubs = _tritonserver_root(root) / "python_backend_stubs"
    found = [p.parent.name for p in stubs.glob("*/triton_python_backend_stub")] if stubs.is_dir() else []
    return sorted(found, key=lambda v: tuple(int(x) for x in v.split(".")))


def _stub_for_running_python(root: Path | None = None) -> Path:
    ver = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = _tritonserver_root(root) / "python_backend_stubs" / ver / "triton_python_backend_stub"
    if not stub.is_file():
        where = "the nvidia-pytriton wheel" if root is None else str(root)
        raise RuntimeError(
            f"no Python-backend stub for Python {ver} in {where} ({stub}); "
            f"stubs there: {', '.join(stub_versions(root)) or 'none'}"
        )
    return stub


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def prepare_backend_dir(out: Path, root: Path | None = None) -> Path:
    """Make ``out/python`` = the wheel's ``backends/python`` + the stub of the running Python.

    Returns ``out`` (the value for ``--backend-directory``). Idempotent: an up-to-date folder is
    left alone; otherwise it is rebuilt beside and swapped in, so concurrent callers never see a
    half-copied backend.
    """
    out = Path(out).resolve()
    src = _tritonserver_root(root) / "backends" / "python"
    if not (src / "libtriton_python.so").is_file():
        raise RuntimeError(f"Python backend not found at {src}: {BOOTSTRAP_HINT}")
    stub = _stub_for_running_python(root)
    marker_text = (
        f"src={src}\nstub={stub}\nlib={_file_digest(src / 'libtriton_python.so')}\nstub_sha={_file_digest(stub)}\n"
    )
    dest = out / "python"
    marker = dest / ".oneranker-backend"
    if marker.is_file() and marker.read_text() == marker_text and (dest / "triton_python_backend_stub").is_file():
        return out

    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".python-", dir=out))
    try:
        staged = tmp / "python"
        shutil.copytree(src, staged, ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copy2(stub, staged / "triton_python_backend_stub")
        (staged / "triton_python_backend_stub").chmod(0o755)
        (staged / ".oneranker-backend").write_text(marker_text)
        old = None
        if dest.exists():
            old = out / f".old-python-{os.getpid()}-{time.monotonic_ns()}"
            os.replace(dest, old)
        os.replace(staged, dest)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _prepend(value: str, existing: str | None) -> str:
    return value if not existing else f"{value}{os.pathsep}{existing}"


# OpenMP (torch's CPU wheels, OpenBLAS builds that use it), OpenBLAS and MKL thread pools of a stub.
STUB_THREAD_ENV = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def server_env(root: Path | None = None) -> dict[str, str]:
    """This process's environment, set up for the tritonserver of ``root`` and its Python stubs."""
    env = dict(os.environ)
    # The stub embeds CPython and finds its packages through the first python on PATH: put
    # this interpreter's (venv) bin dir first. Do not resolve symlinks: that would leave
    # the venv.
    env["PATH"] = _prepend(os.path.dirname(os.path.abspath(sys.executable)), env.get("PATH"))
    ld = [str(pytriton_libs_dir(root))]
    # The stub links libpython3.X.so.1.0: prefer the one of the interpreter the venv was made
    # from (pyenv builds ship it) over whatever the system has.
    libdir = sysconfig.get_config_var("LIBDIR")
    ldlib = sysconfig.get_config_var("LDLIBRARY")
    if libdir and ldlib and (Path(libdir) / ldlib).exists():
        ld.append(libdir)
    env["LD_LIBRARY_PATH"] = _prepend(os.pathsep.join(ld), env.get("LD_LIBRARY_PATH"))
    # Every Python stub is one model instance with its engine threads set by the model config
    # (`intra_op_threads`); an OpenMP or BLAS pool per stub on top would only oversubscribe the
    # cores. Set, not defaulted: a caller's OMP_NUM_THREADS=2 (the benchmarks' own setting) must
    # not reach the stubs. `TritonServer(env=...)` still overrides them.
    env.update(STUB_THREAD_ENV)
    env.pop("PYTHONHOME", None)
    return env
