"""Deployment helpers: shared-memory sizing from the tensor contract, versioned model rollout.

Torch-free (imports only ``oneranker.config``, the tensor contract and the standard library), so
it runs in the builder image, the Triton image and on the CPU machines alike.

Shared memory (``shm_size`` of the ``triton`` service, ``/dev/shm`` of the Kubernetes pods)
------------------------------------------------------------------------------------------
Triton's Python backend moves every input and output tensor of a Python model through POSIX
shared memory in ``/dev/shm``. Docker gives a container 64 MiB
of it by default, which the python_backend README (section "Managing Shared Memory") calls
"very small". Per that README the backend allocates ``shm-default-byte-size`` per model instance
up front (1 MiB in current releases; 64 MiB in the releases that introduced shared memory) and
grows the region in ``shm-growth-byte-size`` chunks when a batch needs more (both set with
``--backend-config=python,<key>=<bytes>``). The size we give the container is::

    shm = round_up_MiB( safety * sum_models( instances[m] * max_batch_size *
                                             sum_tensors(m) bytes of one request ) )
    shm = max(shm, 256 MiB)

over every model of ``oneranker_client.contract.MODELS`` and every one of its inputs and
outputs, at the largest shape a request may have. Variable (-1) dimensions resolve by the rule
in ``VARIABLE_DIMS`` (explicit per tensor name; a tensor the rule does not know is an error, so a
contract change forces a decision here):

* ``history``: the behaviour history, padded at most to ``max_history`` (model.max_history);
* ``kv``: the Step-3 key/value sequence ``[H1 ; H2]`` = ``F`` feature tokens + ``max_history``
  events + the Step-2 tokens (``model.num_step2_tokens``: task tokens + fake items);
* ``candidates``: candidate lists, the top-k outputs and the exclusion lists, bounded by
  ``max_candidates`` (serve.max_num_candidates; top_k <= num_candidates <= max_candidates).
  ``exclude_item_ids`` is not bounded by the contract itself: preprocess must reject longer
  lists, otherwise the bound here is not one.

``safety`` (default 2) covers a request's inputs and outputs being alive at once and the growth
chunks' fragmentation. The 256 MiB floor covers the per-instance default regions (64 MiB each in
early python_backend releases) and the backend's control structures, whatever the tensors.

Instance counts: one per contract model, as ``oneranker build`` renders them
(`rendered_instance_counts` renders the templates and reads their instance groups back: 1 for an
ensemble, 0 for a contract model the repository does not hold, e.g. the fused recommender in the
tensorrt repository). A deployment that raises counts
declares its own (``--instances``, or the ``oneranker.instances`` label of the compose service).

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
import math
import os
import re
import shutil
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported lazily: `latest`/`promote`/`retire`/`load` start in ~0.1 s
    from oneranker.config import ExperimentConfig
    from oneranker_client.contract import ContractDims, ModelSpec, TensorSpec

__all__ = [
    "MIB",
    "SHM_FLOOR_BYTES",
    "VARIABLE_DIMS",
    "rendered_instance_counts",
    "render_default",
    "repository_instance_counts",
    "config_instance_count",
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
    "promote",
    "retire",
    "load_order",
    "load_models",
    "main",
]


def _models() -> dict:
    from oneranker_client.contract import MODELS

    return MODELS


def config_preset(name: str) -> ExperimentConfig:
    from oneranker.config import preset

    return preset(name)


MIB = 1 << 20
GIB = 1 << 30
SHM_FLOOR_BYTES = 256 * MIB
_WORD_BYTES = {"TYPE_INT64": 8, "TYPE_INT32": 4, "TYPE_FP32": 4}

# How every variable (-1) dimension of the contract resolves (see the module docstring).
VARIABLE_DIMS: dict[str, str] = {
    # behaviour history
    "item_ids": "history",
    "actions": "history",
    "timestamps": "history",
    "hist_sids": "history",
    "hist_actions": "history",
    "hist_dt": "history",
    # Step-3 key/value sequence [H1 ; H2]
    "kv": "kv",
    # candidate-sized lists
    "exclude_item_ids": "candidates",
    "exclude_idx": "candidates",
    "cand_idx": "candidates",
    "cand_logp": "candidates",
    "cand_stream": "candidates",
    "rec_item_ids": "candidates",
    "rec_scores": "candidates",
    "rec_gen_logp": "candidates",
    "rec_source_head": "candidates",
}


def config_instance_count(config_text: str) -> int:
    """Instances a config.pbtxt asks for: 1 for an ensemble (it is counted once, for the tensors
    it hands between steps), the sum of its instance_group counts, 1 without instance_group
    (Triton's default on one GPU or on CPU)."""
    if re.search(r'platform\s*:\s*"ensemble"', config_text):
        return 1
    groups = re.search(r"instance_group\s*\[(.*?)\]", config_text, re.S)
    if not groups:
        return 1
    counts = [int(c) for c in re.findall(r"count\s*:\s*(\d+)", groups.group(1))]
    return sum(counts) if counts else 1


def repository_instance_counts(repository: str | os.PathLike) -> dict[str, int]:
    """Instance count of every contract model in a rendered repository (0 = not in it)."""
    root = Path(repository)
    counts = {name: 0 for name in _models()}
    for m in _model_dirs(root):
        if m.name in counts:
            counts[m.name] = config_instance_count((m / "config.pbtxt").read_text())
    return counts


def render_default(engine: str, out_dir: str | os.PathLike, settings=None) -> Path:
    """Render the repository `oneranker build --engine ENGINE` would (same templates, default
    settings and default topology) from an empty export folder: configs and Python code, no
    artifacts. For inspecting what a deployment serves without a trained run."""
    from oneranker_build import render

    export = Path(out_dir) / ".empty-export"
    export.mkdir(parents=True, exist_ok=True)
    return render.render_repository(
        export,
        Path(out_dir) / engine,
        engine,
        contract_dims(config_preset("tiny")),
        "0" * 64,
        settings=settings,
        samples=False,
    )


def rendered_instance_counts(engine: str = "onnxruntime", settings=None) -> dict[str, int]:
    """Instance counts of the repository `oneranker build` renders for `engine` (templates
    rendered into a temporary folder, instance groups read back). docker-compose.yml declares
    the same in its labels."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="oneranker-render-") as tmp:
        return repository_instance_counts(render_default(engine, tmp, settings))


# ---------------------------------------------------------------------------------------------
# Shared-memory sizing
# ---------------------------------------------------------------------------------------------
def contract_dims(cfg: ExperimentConfig) -> ContractDims:
    """The contract's symbolic dims for a config (``extra['step2_tokens']`` = H2 length)."""
    from oneranker_client.contract import ContractDims

    return ContractDims(
        F=cfg.data.num_profile_features + cfg.data.num_context_features,
        D=cfg.tokenizer.sid_depth,
        K=cfg.tokenizer.max_codes,
        H=cfg.model.num_task_tokens,
        R2=2 * cfg.model.r_layers,
        DM=cfg.model.d_model,
        extra={"step2_tokens": cfg.model.num_step2_tokens},
    )


def deploy_limits(cfg: ExperimentConfig) -> dict[str, int]:
    """The shape limits of one request under a config (arguments of `shm_size_bytes`)."""
    return {
        "max_batch_size": cfg.serve.max_batch_size,
        "max_history": cfg.model.max_history,
        "max_candidates": cfg.serve.max_num_candidates,
    }


def _variable_length(
    tensor: TensorSpec, dims: ContractDims, max_history: int, max_candidates: int, step2_tokens: int
) -> int:
    kind = VARIABLE_DIMS.get(tensor.name)
    if kind is None:
        raise ValueError(
            f"tensor {tensor.name!r} has a variable dimension that oneranker_deploy."
            "VARIABLE_DIMS does not classify (history, kv or candidates): add it there"
        )
    if kind == "history":
        return max_history
    if kind == "candidates":
        return max_candidates
    return dims.F + max_history + step2_tokens  # kv


def tensor_bytes(
    tensor: TensorSpec, dims: ContractDims, max_history: int, max_candidates: int, step2_tokens: int
) -> int:
    """Bytes of one request's tensor at its largest shape (batch dimension excluded)."""
    if tensor.dtype not in _WORD_BYTES:
        raise ValueError(f"tensor {tensor.name!r}: unknown dtype {tensor.dtype}")
    n = 1
    for d in tensor.dims:
        v = dims.value(d)
        if v == -1:
            v = _variable_length(tensor, dims, max_history, max_candidates, step2_tokens)
        if not isinstance(v, int) or v < 0:
            raise ValueError(f"tensor {tensor.name!r}: cannot resolve dimension {d!r}")
        n *= v
    return n * _WORD_BYTES[tensor.dtype]


def model_request_bytes(
    model: ModelSpec, dims: ContractDims, max_history: int, max_candidates: int, step2_tokens: int
) -> int:
    """Bytes of every input and output of one request of `model`, at the largest shapes."""
    return sum(
        tensor_bytes(t, dims, max_history, max_candidates, step2_tokens) for t in (*model.inputs, *model.outputs)
    )


def _step2_tokens(dims: ContractDims, step2_tokens: int | None) -> int:
    if step2_tokens is not None:
        return int(step2_tokens)
    if "step2_tokens" not in dims.extra:
        raise ValueError(
            "the kv length needs the Step-2 token count: pass step2_tokens= or build dims with contract_dims(cfg)"
        )
    return int(dims.extra["step2_tokens"])


def shm_size_bytes(
    dims: ContractDims,
    max_batch_size: int,
    instance_counts: Mapping[str, int],
    max_history: int,
    max_candidates: int,
    safety: float = 2.0,
    *,
    step2_tokens: int | None = None,
    floor: int = SHM_FLOOR_BYTES,
) -> int:
    """``/dev/shm`` bytes for a Triton server holding `instance_counts` of the contract's models.

    ``instance_counts`` must name every model of ``contract.MODELS`` (0 = not in this
    repository) and nothing else: a model added to the contract must be sized on purpose.
    """
    unknown = sorted(set(instance_counts) - set(_models()))
    missing = sorted(set(_models()) - set(instance_counts))
    if unknown or missing:
        raise ValueError(
            f"instance_counts must name exactly the contract's models "
            f"{sorted(_models())}; unknown {unknown}, missing {missing}"
        )
    if max_batch_size < 1 or max_history < 1 or max_candidates < 1:
        raise ValueError("max_batch_size, max_history and max_candidates must be >= 1")
    if safety < 1.0:
        raise ValueError("safety must be >= 1")
    t2 = _step2_tokens(dims, step2_tokens)
    total = 0
    for name, model in _models().items():
        count = int(instance_counts[name])
        if count < 0:
            raise ValueError(f"instance count of {name!r} must be >= 0")
        total += count * max_batch_size * model_request_bytes(model, dims, max_history, max_candidates, t2)
    need = math.ceil(total * safety / MIB) * MIB
    return max(need, floor)


def shm_size_for_preset(
    preset: str | ExperimentConfig, instance_counts: Mapping[str, int] | None = None, safety: float = 2.0
) -> int:
    cfg = config_preset(preset) if isinstance(preset, str) else preset
    counts = rendered_instance_counts() if instance_counts is None else dict(instance_counts)
    return shm_size_bytes(contract_dims(cfg), instance_counts=counts, safety=safety, **deploy_limits(cfg))


def format_size(nbytes: int) -> str:
    """Docker/compose size string: "2g" when a whole number of GiB, else "768m" (MiB, up)."""
    if nbytes % GIB == 0:
        return f"{nbytes // GIB}g"
    return f"{math.ceil(nbytes / MIB)}m"


_SIZE_RE = re.compile(r"^\s*(\d+)\s*([bkmg]?)b?\s*$", re.IGNORECASE)
_SIZE_UNIT = {"": 1, "b": 1, "k": 1 << 10, "m": MIB, "g": GIB}


def parse_size(text: str | int) -> int:
    """Inverse of `format_size`; accepts docker's forms (512m, 2g, 2gb, 1024k, bytes)."""
    if isinstance(text, int):
        return text
    m = _SIZE_RE.match(str(text))
    if not m:
        raise ValueError(f"not a size: {text!r}")
    return int(m.group(1)) * _SIZE_UNIT[m.group(2).lower()]


def parse_instance_counts(text: str) -> dict[str, int]:
    """ "generation=2,ranking=2" -> {"generation": 2, "ranking": 2}"""
    out: dict[str, int] = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        name, sep, value = item.partition("=")
        if not sep or not value.strip().isdigit():
            raise ValueError(f"expected MODEL=COUNT, got {item!r}")
        out[name.strip()] = int(value)
    return out


def compose_shm_inputs(compose: dict, service: str) -> tuple[str, dict[str, int]]:
    """(preset, instance counts) a compose service declares in its labels
    ``oneranker.shm.preset`` and ``oneranker.instances`` (contract models the label does not
    name have no instance in that repository: 0)."""
    svc = compose["services"][service]
    labels = svc.get("labels") or {}
    if isinstance(labels, list):
        labels = dict(item.split("=", 1) for item in labels)
    try:
        preset_name, declared = labels["oneranker.shm.preset"], parse_instance_counts(labels["oneranker.instances"])
    except KeyError as e:
        raise ValueError(f"service {service!r} lacks label {e.args[0]!r}") from None
    unknown = sorted(set(declared) - set(_models()))
    if unknown:
        raise ValueError(f"service {service!r}: label oneranker.instances names unknown models {unknown}")
    return preset_name, {name: declared.get(name, 0) for name in _models()}


# ---------------------------------------------------------------------------------------------
# Versioned rollout
# ---------------------------------------------------------------------------------------------
def _model_dirs(root: Path) -> list[Path]:
    return sorted(
        p for p in Path(root).iterdir() if p.is_dir() and not p.name.startswith(".") and (p / "config.pbtxt").is_file()
    )


def _versions(model_dir: Path) -> list[int]:
    # Triton's rule: a version folder is named by a positive integer without a leading zero.
    return sorted(
        int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit() and not p.name.startswith("0")
    )


def latest_version(repository: str | os.PathLike) -> int:
    """Highest version folder of any model in the repository (0 if none or no repository)."""
    root = Path(repository)
    if not root.is_dir():
        return 0
    return max((v for m in _model_dirs(root) for v in _versions(m)), default=0)


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
