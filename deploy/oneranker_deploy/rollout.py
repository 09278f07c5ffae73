"""Deployment helpers: shared-memory sizing from the tensor contract, versioned model rollout.

Torch-free (imports only ``oneranker.config``, the tensor contract and the standard library), so
it runs in the builder image, the Triton image and on the CPU machines alike.

This module holds the versioned rollout and the ``python -m oneranker_deploy`` CLI; the
shared-memory sizing lives in :mod:`oneranker_deploy.shm` and the repository reading and
rendering in :mod:`oneranker_deploy.repository`. Every name of those listed in ``__all__`` below
is importable from here too.

Rollout (``promote`` / ``retire`` / ``load``)
---------------------------------------------
``oneranker build --out STAGE`` renders a complete repository (version ``1`` of each model).
``promote`` copies it into the live repository as the next version ``V`` of *every* model (the
same number everywhere: one release = one version), each version folder written under a hidden
name and renamed into place, ``config.pbtxt`` replaced last (Triton ignores non-numeric folders,
so it never sees half a version). Triton runs with ``--model-control-mode=explicit``: nothing
changes until ``load`` asks it to (``POST /v2/repository/models/NAME/load``, non-ensembles first,
ensembles last; models the repository no longer holds are unloaded); the old version serves until
the new one is loaded. ``retire`` hides version V again (rollback: retire, then load). The
repository API is restricted (``oneranker_client.restricted_api``): ``load`` sends the admin key
held by ``$ONERANKER_ADMIN_KEY`` (``--admin-key-env``) as the ``oneranker-admin-key`` header.

CLI::

    python -m oneranker_deploy shm --preset paper [--instances preprocess=2,...] [--bytes]
    python -m oneranker_deploy shm --compose docker-compose.yml --service triton
    python -m oneranker_deploy promote --staging STAGE/tensorrt --repository LIVE [--version V]
    python -m oneranker_deploy retire --repository LIVE --version V
    python -m oneranker_deploy latest --repository LIVE
    python -m oneranker_deploy load --url HOST:8000 --repository LIVE [--admin-key-env NAME]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path

from .repository import (
    _model_dirs,
    _models,
    _versions,
    config_instance_count,
    config_preset,
    contract_dims,
    latest_version,
    render_default,
    rendered_instance_counts,
    repository_instance_counts,
)
from .shm import (
    GIB,
    MIB,
    SHM_FLOOR_BYTES,
    VARIABLE_DIMS,
    compose_shm_inputs,
    deploy_limits,
    format_size,
    model_request_bytes,
    parse_instance_counts,
    parse_size,
    shm_size_bytes,
    shm_size_for_preset,
    tensor_bytes,
)

__all__ = [
    "GIB",
    "MIB",
    "SHM_FLOOR_BYTES",
    "VARIABLE_DIMS",
    "rendered_instance_counts",
    "render_default",
    "repository_instance_counts",
    "config_instance_count",
    "config_preset",
    "contract_dims",
    "deploy_limits",
    "tensor_bytes",
    "model_request_bytes",
    "shm_size_bytes",
    "shm_size_for_preset",
    "format_size",
    "parse_size",
    "parse_instance_counts",
    "compose_shm_inputs",
    "latest_version",
    "RELEASE_CONFIG",
    "pin_release",
    "promote",
    "retire",
    "load_order",
    "load_models",
    "main",
]

# A copy of each model's config.pbtxt as promoted, kept in its version folder (Triton ignores it)
# so that a rollback restores the config of the release it returns to.
RELEASE_CONFIG = "release-config.pbtxt"


def pin_release(config_text: str, version: int) -> str:
    """A rendered config.pbtxt (pinned to the staging version 1) -> the same pinned to release
    `version`: every ensemble step's `model_version` and the `release_version` parameter."""
    text = re.sub(r"(?m)^(\s*model_version:\s*)-?\d+\s*$", rf"\g<1>{int(version)}", config_text)
    return re.sub(r'(key: "release_version" value: \{ string_value: ")\d+(" \})', rf"\g<1>{int(version)}\g<2>", text)


def _replace_dir(src: Path, dest: Path, stamp: str) -> None:
    """dest := a copy of src (a model-level folder such as warmup/), swapped in by renames."""
    tmp, old = dest.parent / f".{dest.name}.{stamp}", dest.parent / f".{dest.name}.old.{stamp}"
    shutil.copytree(src, tmp)
    if dest.exists():
        os.replace(dest, old)
    os.replace(tmp, dest)
    shutil.rmtree(old, ignore_errors=True)


def promote(staging: str | os.PathLike, repository: str | os.PathLike, version: int | None = None) -> int:
    """Copy a rendered repository into the live one as version `version` (default: next).

    Every model of `staging` must hold exactly one version folder. Returns the version.
    """
    staging, repository = Path(staging), Path(repository)
    models = _model_dirs(staging) if staging.is_dir() else []
    if not models:
        raise ValueError(f"{staging} holds no model (a folder with config.pbtxt)")
    sources = {}
    for m in models:
        vs = _versions(m)
        if len(vs) != 1:
            raise ValueError(f"{m} must hold exactly one version folder, found {vs}")
        sources[m.name] = m / str(vs[0])
        config = (m / "config.pbtxt").read_text()
        if re.search(r'platform\s*:\s*"tensorrt_plan"', config):
            name = re.search(r'default_model_filename\s*:\s*"([^"]+)"', config)
            plan = sources[m.name] / (name.group(1) if name else "model.plan")
            if not plan.is_file():
                raise ValueError(
                    f"{plan} is missing: the TensorRT plans were not built (run the "
                    "build where TensorRT exists: the NGC builder image)"
                )
    target = latest_version(repository) + 1 if version is None else int(version)
    if target < 1:
        raise ValueError("version must be >= 1")
    for name in sources:
        if (repository / name / str(target)).exists():
            raise FileExistsError(f"{repository / name / str(target)} exists already")
    repository.mkdir(parents=True, exist_ok=True)
    stamp = f"{os.getpid()}-{time.monotonic_ns()}"
    # 1. every version folder, each under a hidden name then renamed (atomic on one fs)
    for name, src in sources.items():
        dest_model = repository / name
        dest_model.mkdir(exist_ok=True)
        tmp = dest_model / f".promote-{target}-{stamp}"
        shutil.copytree(src, tmp, symlinks=False)
        os.replace(tmp, dest_model / str(target))
    # 2. model-level folders (warmup samples), then files (config.pbtxt last, pinned to the
    # release): atomic replace each
    for m in models:
        for d in (p for p in m.iterdir() if p.is_dir() and not p.name.isdigit()):
            _replace_dir(d, repository / m.name / d.name, stamp)
        files = sorted((p for p in m.iterdir() if p.is_file()), key=lambda p: p.name == "config.pbtxt")
        for f in files:
            tmp = repository / m.name / f".{f.name}.{stamp}"
            if f.name == "config.pbtxt":
                pinned = pin_release(f.read_text(), target)
                (repository / m.name / str(target) / RELEASE_CONFIG).write_text(pinned)  # for a rollback
                tmp.write_text(pinned)
            else:
                shutil.copy2(f, tmp)
            os.replace(tmp, repository / m.name / f.name)
    return target


def retire(repository: str | os.PathLike, version: int) -> list[Path]:
    """Hide version `version` of every model (rollback). The version folder is renamed to
    ``.retired-V-<time>`` (Triton ignores non-numeric folders); a model whose only version it is
    (new in that release) moves out of the repository, to ``<repository>.retired/``, since
    Triton cannot load a model without versions."""
    root = Path(repository)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    moved = []
    for m in _model_dirs(root):
        src = m / str(int(version))
        if not src.is_dir():
            continue
        if _versions(m) == [int(version)]:
            dest = root.parent / f"{root.name}.retired" / f"{m.name}-v{int(version)}-{stamp}"
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(m), str(dest))
        else:
            dest = m / f".retired-{int(version)}-{stamp}"
            os.replace(src, dest)
        moved.append(dest)
    if not moved:
        raise FileNotFoundError(f"no model of {repository} has a version {version}")
    # every config goes back to the newest release left: its own saved config, else re-pinned
    latest = latest_version(root)
    for m in _model_dirs(root):
        config, saved = m / "config.pbtxt", m / str(latest) / RELEASE_CONFIG
        text = saved.read_text() if saved.is_file() else pin_release(config.read_text(), latest)
        tmp = m / f".config.pbtxt.{stamp}"
        tmp.write_text(text)
        os.replace(tmp, config)
    return moved


def load_order(repository: str | os.PathLike) -> list[str]:
    """Models that have a version, ensembles last (their composing models load first)."""
    models = [m for m in _model_dirs(Path(repository)) if _versions(m)]
    is_ens = {m.name: bool(re.search(r'platform\s*:\s*"ensemble"', (m / "config.pbtxt").read_text())) for m in models}
    return sorted(is_ens, key=lambda n: (is_ens[n], n))


_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _http(method: str, url: str, timeout: float, headers: Mapping[str, str] | None = None) -> tuple[int, str]:
    req = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None, headers=headers or {})
    try:
        with _NO_PROXY.open(req, timeout=timeout) as r:
            return r.status, r.read().decode(errors="replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")


def _http_ok(method: str, url: str, timeout: float, what: str, headers: Mapping[str, str] | None = None) -> str:
    """_http that raises RuntimeError("WHAT: HTTP status body") unless the answer is 200."""
    status, body = _http(method, url, timeout, headers)
    if status != 200:
        hint = " (the repository API is restricted: give the admin key, --admin-key-env)" if status == 403 else ""
        raise RuntimeError(f"{what}: HTTP {status} {body.strip()}{hint}")
    return body


def load_models(url: str, names: Sequence[str], timeout: float = 600.0, admin_key: str | None = None) -> None:
    """POST /v2/repository/models/NAME/load for each name in order, unload the models the server
    still serves that are not in `names` (retired ones), then check readiness. `admin_key`: the
    key of the server's restricted repository API (sent as its header)."""
    from oneranker_client.restricted_api import http_headers

    h = http_headers(admin_key) if admin_key else {}
    base = url if url.startswith("http") else f"http://{url}"
    for name in names:
        _http_ok("POST", f"{base}/v2/repository/models/{name}/load", timeout, f"loading {name}", h)
        print(f"loaded {name}", flush=True)
    body = _http_ok("POST", f"{base}/v2/repository/index", 10.0, "repository index", h)
    stale = sorted(
        {e["name"] for e in json.loads(body or "[]") if e.get("state") == "READY" and e.get("name") not in set(names)}
    )
    for name in stale:
        _http_ok("POST", f"{base}/v2/repository/models/{name}/unload", timeout, f"unloading {name}", h)
        print(f"unloaded {name} (no longer in the repository)", flush=True)
    _http_ok("GET", f"{base}/v2/health/ready", 10.0, "server not ready after the load")
    status, body = _http("POST", f"{base}/v2/repository/index", 10.0, h)
    if status == 200:
        for entry in json.loads(body or "[]"):
            print(f"  {entry.get('name')} v{entry.get('version', '?')}: {entry.get('state', '?')}")


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m oneranker_deploy", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("shm", help="shm_size for the triton service (docker size string)")
    p.add_argument("--preset", default="paper", help="config preset (default paper)")
    p.add_argument(
        "--instances",
        default=None,
        metavar="MODEL=N,...",
        help="instance counts (models not named: 0; default: those of the repository "
        "`oneranker build --engine onnxruntime` renders)",
    )
    p.add_argument(
        "--compose", type=Path, default=None, help="read preset and instance counts from this compose file's labels"
    )
    p.add_argument("--service", default="triton", help="compose service (with --compose)")
    p.add_argument("--safety", type=float, default=2.0)
    p.add_argument("--bytes", action="store_true", help="print bytes instead of 256m/2g")

    p = sub.add_parser("promote", help="copy a rendered repository in as the next version")
    p.add_argument("--staging", type=Path, required=True, help="rendered repository (OUT/<engine>)")
    p.add_argument("--repository", type=Path, required=True, help="live repository")
    p.add_argument("--version", type=int, default=None, help="default: latest + 1")

    p = sub.add_parser("retire", help="hide version V of every model (rollback)")
    p.add_argument("--repository", type=Path, required=True)
    p.add_argument("--version", type=int, required=True)

    p = sub.add_parser("latest", help="print the highest version in a repository (0: none)")
    p.add_argument("--repository", type=Path, required=True)

    p = sub.add_parser("load", help="ask a running Triton (explicit mode) to (re)load every model")
    p.add_argument("--url", required=True, help="HTTP address, e.g. localhost:8000")
    p.add_argument(
        "--repository", type=Path, required=True, help="the live repository (for the model names; ensembles load last)"
    )
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per model load")
    p.add_argument(
        "--admin-key-env",
        metavar="NAME",
        default=None,
        help="environment variable holding the server's admin key (default ONERANKER_ADMIN_KEY; unset: no key sent)",
    )

    args = ap.parse_args(argv)
    try:
        if args.command == "shm":
            preset, counts = args.preset, None
            if args.instances:
                declared = parse_instance_counts(args.instances)
                counts = {name: declared.pop(name, 0) for name in _models()}
                if declared:
                    raise ValueError(f"unknown models in --instances: {sorted(declared)}")
            if args.compose is not None:
                import yaml

                preset, counts = compose_shm_inputs(yaml.safe_load(args.compose.read_text()), args.service)
            n = shm_size_for_preset(preset, counts, args.safety)
            print(n if args.bytes else format_size(n))
        elif args.command == "promote":
            v = promote(args.staging, args.repository, args.version)
            print(f"promoted {args.staging} -> {args.repository} as version {v}")
        elif args.command == "retire":
            for p in retire(args.repository, args.version):
                print(f"retired {p}")
        elif args.command == "latest":
            print(latest_version(args.repository))
        elif args.command == "load":
            from oneranker_client.restricted_api import ADMIN_KEY_ENV, admin_key_from_env

            key = admin_key_from_env(args.admin_key_env or ADMIN_KEY_ENV)
            if args.admin_key_env and key is None:
                raise ValueError(f"--admin-key-env {args.admin_key_env}: that environment variable holds no key")
            load_models(args.url, load_order(args.repository), args.timeout, admin_key=key)
    except (ValueError, FileExistsError, FileNotFoundError, RuntimeError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
