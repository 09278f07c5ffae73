"""What a GPU check carries to a machine that has CUDA and PyTorch but no tritonserver, no
tritonclient and no network: the server cut out of the installed ``nvidia-pytriton`` wheel.

    python -m oneranker_perf.gpu_carry --out artifacts/gpu_carry [--python 3.12] [--no-numpy]

writes into OUT (git-ignored under ``artifacts/``):

    triton.tar.xz   site/pytriton/tritonserver/{bin/tritonserver, backends/python,
                    python_backend_stubs/3.10-3.12} + site/nvidia_pytriton.libs/ (the .so files
                    those load, found by walking their ELF DT_NEEDED entries; the same relative
                    layout as the wheel, so the binaries' RPATHs still resolve)
    wheels/         numpy==1.26.4 for each --python: tritonserver 2.51's Python backend corrupts
                    tensors with numpy 2.x (shared/docs/platform.md), and the target's own numpy may be 2.x
    carry.json      contents, sizes, the stubs carried, what each binary expects from the system

Left out on purpose: the 3.8/3.9 stubs (the project needs Python >= 3.10) and the 3.13 stub (it
links a 32 MB libpython of its own, and no numpy < 2 exists for 3.13).

Standard library only: `unpack` and `make_env` run before numpy may be imported (they decide
WHICH numpy the check and the stubs import).
"""

from __future__ import annotations

import argparse
import ctypes.util
import json
import os
import shutil
import struct
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

# The device tool moves 64 MiB in all, the working tree (~3.5 MB) included.
CARRY_LIMIT_BYTES = 60 * 2**20
NUMPY_PIN = "1.26.4"
DEFAULT_STUBS = ("3.10", "3.11", "3.12")
DEFAULT_NUMPY_PYTHONS = ("3.12",)  # the H200 machine's python3 (KINDS.md: Python 3.12.3, numpy 2.x)
MANIFEST = "carry.json"
_TRITON = "pytriton/tritonserver"
_LIBS = "nvidia_pytriton.libs"
_PLATFORMS = ("manylinux_2_17_x86_64", "manylinux2014_x86_64")


class CarryError(RuntimeError):
    """The carry is missing, incomplete or does not fit the running interpreter."""


# ---------------------------------------------------------------------------------------------
# Packing
# ---------------------------------------------------------------------------------------------
def elf_needed(path: Path) -> list[str]:
    """DT_NEEDED entries of a 64-bit little-endian ELF file (what `readelf -d` lists as NEEDED)."""
    data = Path(path).read_bytes()
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise CarryError(f"{path} is not a 64-bit little-endian ELF file")
    phoff = struct.unpack_from("<Q", data, 0x20)[0]
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    loads, dynamic = [], None
    for i in range(phnum):
        p_type, _flags, p_offset, p_vaddr, _paddr, p_filesz = struct.unpack_from("<IIQQQQ", data, phoff + i * phentsize)
        if p_type == 1:  # PT_LOAD: maps file offsets to addresses
            loads.append((p_vaddr, p_offset, p_filesz))
        elif p_type == 2:  # PT_DYNAMIC
            dynamic = (p_offset, p_filesz)
    if dynamic is None:
        return []
    entries = [struct.unpack_from("<qQ", data, dynamic[0] + off) for off in range(0, dynamic[1], 16)]
    strtab = next(v for tag, v in entries if tag == 5)  # DT_STRTAB, an address
    base = next(off + strtab - vaddr for vaddr, off, size in loads if vaddr <= strtab < vaddr + size)
    return [data[base + v : data.index(b"\0", base + v)].decode() for tag, v in entries if tag == 1]


def library_closure(binaries: list[Path], libs_dir: Path) -> tuple[list[str], list[str]]:
    """(names of the .so files in libs_dir the binaries load, directly or not; the other names
    they need, which the target system must provide: libc, libstdc++, libz, libpython3.X)."""
    carried, system, todo = set(), set(), list(binaries)
    while todo:
        for name in elf_needed(todo.pop()):
            if (libs_dir / name).is_file():
                if name not in carried:
                    carried.add(name)
                    todo.append(libs_dir / name)
            else:
                system.add(name)
    return sorted(carried), sorted(system)


def download_numpy(dest: Path, python: str) -> Path:
    """numpy==NUMPY_PIN's manylinux x86-64 wheel for CPython `python` ("3.12"), by pip."""
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--implementation", "cp"]
    cmd += ["--python-version", python, *(f"--platform={p}" for p in _PLATFORMS), "-d", str(dest)]
    subprocess.run([*cmd, f"numpy=={NUMPY_PIN}"], check=True, stdout=subprocess.DEVNULL)
    tag = "cp" + python.replace(".", "")
    found = sorted(dest.glob(f"numpy-{NUMPY_PIN}-{tag}-*.whl"))
    if not found:
        raise CarryError(f"pip saved no numpy {NUMPY_PIN} wheel for CPython {python} in {dest}")
    return found[0]


def pack(
    out: Path,
    stubs=DEFAULT_STUBS,
    numpy_pythons=DEFAULT_NUMPY_PYTHONS,
    compression: str = "xz",
    triton_root: Path | None = None,
) -> dict:
    """Write the carry into `out` (replacing it); returns its manifest. `triton_root`: a folder
    holding pytriton/ and nvidia_pytriton.libs/ (default: the installed wheel)."""
    from oneranker_serving.triton_install import find_tritonserver

    site = find_tritonserver(triton_root).parents[3]  # site/pytriton/tritonserver/bin/tritonserver
    triton = site / _TRITON
    members = [
        "bin/tritonserver",
        "backends/python/libtriton_python.so",
        "backends/python/triton_python_backend_utils.py",
    ]
    members += [f"python_backend_stubs/{v}/triton_python_backend_stub" for v in stubs]
    missing = [m for m in members if not (triton / m).is_file()]
    if missing:
        raise CarryError(f"{triton} lacks {missing}")
    binaries = [triton / m for m in members if not m.endswith(".py")]
    libs, system = library_closure(binaries, site / _LIBS)

    out = Path(out)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    archive = out / f"triton.tar.{compression}"
    level = {"compresslevel": 6} if compression == "gz" else {"preset": 6}
    with tarfile.open(archive, f"w:{compression}", **level) as tar:
        for rel in [f"{_TRITON}/{m}" for m in members] + [f"{_LIBS}/{name}" for name in libs]:
            tar.add(site / rel, arcname=f"site/{rel}")
    wheels = [download_numpy(out / "wheels", py) for py in numpy_pythons]
    files = [archive, *wheels]
    manifest = {
        "nvidia_pytriton": _version("nvidia-pytriton"),
        "archive": archive.name,
        "stubs": list(stubs),
        "libraries": libs,
        "system_libraries": system,
        "numpy_wheels": [f"wheels/{w.name}" for w in wheels],
        "bytes": {str(f.relative_to(out)): f.stat().st_size for f in files},
    }
    manifest["total_bytes"] = sum(manifest["bytes"].values())
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2))
    if manifest["total_bytes"] > CARRY_LIMIT_BYTES:
        raise CarryError(
            f"the carry is {manifest['total_bytes'] / 2**20:.1f} MiB, over {CARRY_LIMIT_BYTES / 2**20:.0f} MiB: "
            "use xz, or carry fewer stubs / numpy wheels"
        )
    return manifest


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


# ---------------------------------------------------------------------------------------------
# Unpacking on the target
# ---------------------------------------------------------------------------------------------
@dataclass
class Unpacked:
    root: Path  # TritonServer(triton_root=...): holds pytriton/ and nvidia_pytriton.libs/
    numpy_wheel: Path | None  # the carried numpy < 2 to install, None: this interpreter's numpy is < 2
    libpython_dir: Path | None  # folder of libpython3.X.so.1.0 when the loader would not find it alone
    manifest: dict


def running_python() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def numpy_major() -> int | None:
    """Major version of the numpy this interpreter would import (None: not installed), read from
    its metadata without importing it."""
    version = _version("numpy")
    return int(version.split(".")[0]) if version else None


def find_libpython() -> tuple[bool, Path | None]:
    """(found, folder to add to LD_LIBRARY_PATH or None): libpython3.X.so.1.0, which the stub links."""
    name = f"libpython{running_python()}.so.1.0"
    for folder in (sysconfig.get_config_var("LIBDIR"), Path(sys.base_prefix) / "lib"):
        if folder and (Path(folder) / name).exists():
            return True, Path(folder)
    return ctypes.util.find_library(f"python{running_python()}") is not None, None


def unpack(carry: Path, dest: Path) -> Unpacked:
    """Extract the carry into `dest` and check it fits this interpreter; CarryError says why not."""
    carry, dest = Path(carry), Path(dest)
    if not (carry / MANIFEST).is_file():
        raise CarryError(f"{carry} holds no {MANIFEST}: run `python -m oneranker_perf.gpu_carry --out {carry}` first")
    manifest = json.loads((carry / MANIFEST).read_text())
    py = running_python()
    if py not in manifest["stubs"]:
        raise CarryError(
            f"this is Python {py}; the carry has Python-backend stubs for {', '.join(manifest['stubs'])} only "
            f"(pack with --stub {py}; 3.13 is not supported: no numpy < 2 exists for it)"
        )
    found, libpython_dir = find_libpython()
    if not found:
        raise CarryError(
            f"libpython{py}.so.1.0 is not on this machine (the Python-backend stub links it); "
            "install the shared CPython library (Debian/Ubuntu: libpython3.X)"
        )
    wheel = None
    if (numpy_major() or 2) >= 2:
        tag = "cp" + py.replace(".", "")
        wheels = [w for w in manifest["numpy_wheels"] if f"-{tag}-" in Path(w).name]
        if not wheels:
            raise CarryError(
                f"this interpreter's numpy is {_version('numpy') or 'missing'} and the carry has no numpy < 2 "
                f"wheel for Python {py} (pack with --python {py}); the Python backend corrupts tensors with numpy 2"
            )
        wheel = carry / wheels[0]
    with tarfile.open(carry / manifest["archive"]) as tar:
        if hasattr(tarfile, "data_filter"):
            tar.extractall(dest, filter="data")
        else:  # Python < 3.10.12 / 3.11.4: members are our own archive's
            tar.extractall(dest)
    (dest / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return Unpacked(dest / "site", wheel, libpython_dir, manifest)


def make_env(unpacked: Unpacked, dest: Path, sources: list[Path]) -> Path:
    """A virtual environment at `dest` for the check AND tritonserver's stubs; returns its python.

    The stub runs CPython isolated (PYTHONPATH is ignored; only the site-packages of the first
    python on PATH count, which TritonServer makes the running interpreter's), so what the models
    import has to be in a venv: the carried numpy < 2 installed in its site-packages (first on
    sys.path), then a .pth file adding `sources`, this process's PYTHONPATH and its site-packages
    (torch, safetensors, ...: after the venv's own, so their numpy 2 is shadowed)."""
    import site
    import venv

    venv.EnvBuilder(symlinks=True, with_pip=False, clear=True).create(dest)
    packages = Path(dest) / "lib" / f"python{running_python()}" / "site-packages"
    if not packages.is_dir():
        raise CarryError(f"the virtual environment {dest} has no {packages}")
    if unpacked.numpy_wheel is not None:
        with zipfile.ZipFile(unpacked.numpy_wheel) as whl:
            whl.extractall(packages)
    extra = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and Path(p).is_dir()]
    sites = site.getsitepackages() + ([site.getusersitepackages()] if site.ENABLE_USER_SITE else [])
    lines = [str(Path(p).resolve()) for p in [*sources, *extra]]
    lines += [f"import site; site.addsitedir({str(p)!r})" for p in sites if Path(p).is_dir()]
    (packages / "oneranker-gpu-check.pth").write_text("\n".join(lines) + "\n")
    return Path(dest) / "bin" / "python"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m oneranker_perf.gpu_carry", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("artifacts/gpu_carry"))
    ap.add_argument(
        "--stub", action="append", help=f"Python version whose stub to carry (repeatable; default {DEFAULT_STUBS})"
    )
    ap.add_argument(
        "--python",
        action="append",
        help=f"carry numpy=={NUMPY_PIN} for this CPython (repeatable; default {DEFAULT_NUMPY_PYTHONS})",
    )
    ap.add_argument("--no-numpy", action="store_true", help="carry no numpy wheel (the target has numpy < 2)")
    ap.add_argument("--compression", choices=("xz", "gz"), default="xz", help="xz: ~27 MB, ~40 s; gz: ~40 MB, ~4 s")
    args = ap.parse_args(argv)
    numpy_pythons = () if args.no_numpy else tuple(args.python or DEFAULT_NUMPY_PYTHONS)
    manifest = pack(args.out, tuple(args.stub or DEFAULT_STUBS), numpy_pythons, args.compression)
    for name, size in manifest["bytes"].items():
        print(f"{args.out / name}  {size / 2**20:.1f} MiB")
    print(
        f"carry {manifest['total_bytes'] / 2**20:.1f} MiB (limit {CARRY_LIMIT_BYTES / 2**20:.0f}): "
        f"{len(manifest['libraries'])} libraries, stubs {', '.join(manifest['stubs'])}; "
        f"the target must provide {', '.join(manifest['system_libraries'])}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
