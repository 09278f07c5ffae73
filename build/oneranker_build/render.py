"""Render a complete Triton model repository from `model_repository/` templates.

    model_repository/<model>/config.pbtxt.tmpl + 1/model.py   (templates and Python glue, in git)
      + contract (tensor blocks) + RenderSettings (batching, instances, threads)
      + export dir (ONNX graphs, generation tables, export_info.json)
      -> OUT/<engine>/<model>/config.pbtxt, 1/model.py, 1/artifacts/...   (git-ignored)
Rendering fails on a template variable that is missing or left over.
"""

from __future__ import annotations

import json
import re
import shutil
import string
from dataclasses import dataclass
from pathlib import Path

from oneranker_client import contract
from oneranker_serving.triton.counters import DEFAULT_INTERVAL_MS
from oneranker_serving.triton.models import DEFAULT_CANCEL_CHECK_INTERVAL_US

from . import warmup

TEMPLATES = Path(__file__).resolve().parents[2] / "model_repository"
LEFTOVER = re.compile(r"\$\{[^}]*\}")


class RenderError(ValueError):
    pass


@dataclass
class RenderSettings:
    """Serving knobs for a 2-core CPU host by default (see README: "Batching and threads")."""

    max_batch_size: int = 8
    # No batching wait: the batcher never waits for more requests, so a batch holds what queued
    # while the instances were busy. Measured side by side against 100 and 500 us
    # (perf/results/queue_delay): the lowest c1 p50 on both paths (fused 4.29 / 4.48 / 4.86 ms,
    # graphs 5.84 / 6.22 / 7.49 ms in that run's 6-way interleave) and at least the saturated
    # throughput of 100 us (fused 614 / 607, graphs 383 / 352 req/s).
    max_queue_delay_us: int = 0
    # Overload shedding by Triton's default_queue_policy (beyond max_queue_size, or queued longer
    # than queue_timeout_us, a request is answered UNAVAILABLE at once). Off by default: Triton
    # 2.51's dynamic batcher, whenever a queue policy is set, sometimes holds a whole batch for its
    # fixed 500 ms re-check wait under saturation, with one instance or two (README "Batching and
    # threads"); without a policy no request was held. Requests then wait in an unbounded queue
    # until served or until the client's deadline cancels them.
    queue_policy: bool = False
    max_queue_size: int = 64
    # Half the latency budget a client gives a request (oneranker_client.defaults: 1 s deadline)
    # may pass in the queue; a client may override it per request (`timeout` parameter,
    # allow_timeout_override) to apply its own deadline.
    queue_timeout_us: int = 500_000
    # Versions of every non-ensemble model kept loaded: the release being rolled out and the one
    # before it, which the ensembles pinned to it keep answering from until they move.
    versions_loaded: int = 2
    # Instances per model (the one home of every instance count). The engine models run one
    # instance per core with one intra-op thread each: the most saturated throughput measured
    # (fused, 8 clients: ~850 req/s against ~640 for one instance with two threads); at
    # concurrency 1 the two layouts measured within noise. README "Batching and threads".
    preprocess_instances: int = 2  # light, but one instance would serialise every request of numpy_beam/graphs
    recommender_instances: int = 2  # fused model, numpy beam baseline and the cascade baseline
    generation_instances: int = 2  # topology graphs
    ranking_instances: int = 2
    intra_op_threads: int = 1  # ONNX Runtime / torch threads inside each engine-model instance
    # An engine model (recommender, recommender_numpy_beam, cascade, generation, ranking) with two
    # or more instances renders one preferred instance and the rest as spill-over
    # (`instance_group_block`): at low load every batch goes to the preferred one, whose caches
    # are warm; the others take a batch whenever it is busy. Needs the server's rate limiter
    # (oneranker_serving.local_server.SCHEDULING_FLAGS); a server without it ignores the
    # priorities and hands batches to the instances in turn. Measured side by side against that
    # (perf/results/instance_layout, README "One preferred instance").
    preferred_instance: bool = True
    # Recommender models re-check cancellation at a stage boundary only when this long has passed
    # since the batch's last check (each check is an IPC round trip, perf/results/backend_ipc).
    cancel_check_interval_us: int = DEFAULT_CANCEL_CHECK_INTERVAL_US
    # Recommender models send their Prometheus counters from a background thread, each at most once
    # per this interval (oneranker_serving.triton.counters): a scrape lags the answers by about it.
    counter_interval_ms: int = DEFAULT_INTERVAL_MS
    instance_kind: str = "KIND_CPU"


# Rate-limiter priority of the spill-over instances. Triton gives a free batch to the ready
# instance with the lowest execution count x priority, so the preferred instance (priority 1) gets
# every batch it is free for until it has run SPILL_PRIORITY times as many as a spill-over one.
SPILL_PRIORITY = 1_000_000


def instance_group_block(model: str, count: int, kind: str, preferred: bool) -> str:
    """The `instance_group [...]` line of Python model `model`: `count` instances of `kind`, or,
    when `preferred` and count >= 2, group `<model>_preferred` (1 instance, priority 1) + group
    `<model>_spill` (count - 1 instances, priority SPILL_PRIORITY). Triton names the instances
    `<group>_<i>` (its logs, the stub processes)."""
    if count < 1:
        raise RenderError(f"an instance count must be >= 1, got {count}")
    if not preferred or count == 1:
        return f"instance_group [ {{ count: {count} kind: {kind} }} ]"
    return (
        f'instance_group [ {{ name: "{model}_preferred" count: 1 kind: {kind} rate_limiter {{ priority: 1 }} }}, '
        f'{{ name: "{model}_spill" count: {count - 1} kind: {kind} rate_limiter {{ priority: {SPILL_PRIORITY} }} }} ]'
    )


def queue_policy_block(s: RenderSettings) -> str:
    """The default_queue_policy lines inside `dynamic_batching { }`, or "" when s.queue_policy is off."""
    if not s.queue_policy:
        return ""
    return (
        "\n  default_queue_policy {\n"
        f"    max_queue_size: {s.max_queue_size}\n"
        "    timeout_action: REJECT\n"
        f"    default_timeout_microseconds: {s.queue_timeout_us}\n"
        "    allow_timeout_override: true\n"
        "  }"
    )


@dataclass(frozen=True)
class KVTransport:
    """How the KV crosses from the `generation` model to the `ranking` model (topology graphs,
    Python-backend engines).

    onnxruntime: host numpy arrays (the runner's KV is host memory anyway).
    torch: DLPack (zero copy); FORCE_CPU_ONLY_INPUT_TENSORS=no so a KV made on the GPU reaches
    the ranking model on the GPU."""

    transport: str  # "numpy" | "dlpack"

    def engine_values(self) -> dict:
        return {"kv_transport": self.transport, "force_cpu_only_inputs": "no" if self.transport == "dlpack" else "yes"}


def kv_transport(runner_engine: str) -> KVTransport:
    return KVTransport("dlpack" if runner_engine == "torch" else "numpy")


def tensor_block(section: str, specs, dims: contract.ContractDims, ragged: bool) -> str:
    """`input [...]` / `output [...]` block generated from the contract."""
    entries = []
    for spec in specs:
        t = spec.resolve(dims)
        lines = [
            f'    name: "{t.name}"',
            f"    data_type: {t.dtype}",
            "    dims: [ " + ", ".join(str(d) for d in t.dims) + " ]",
        ]
        if t.reshape is not None:
            lines.append("    reshape: { shape: [ " + ", ".join(str(d) for d in t.reshape) + " ] }")
        if section == "input" and t.optional:
            lines.append("    optional: true")
        if section == "input" and ragged and -1 in t.dims:
            lines.append("    allow_ragged_batch: true")
        entries.append("  {\n" + "\n".join(lines) + "\n  }")
    return f"{section} [\n" + ",\n".join(entries) + "\n]"


# A rendered repository holds one release as version folder 1; `oneranker_deploy promote` copies
# it in as version N and rewrites every pin below to N (`oneranker_deploy.rollout.pin_release`).
STAGING_VERSION = 1


def ensemble_steps(steps: list[tuple[str, contract.ModelSpec, dict, dict]]) -> str:
    """steps: (model name, spec, input_map {model input: ensemble tensor}, output_map). Every step
    is pinned to the release's version, so one answer never mixes two releases. Internal
    tensors (named `_...`) that no later step reads are left out of the output maps: Triton
    refuses an ensemble with an unused tensor, and a step may produce more than one topology reads
    (preprocess feeds both the numpy-beam and the graphs topologies)."""
    consumed = {tensor for _, _, in_map, _ in steps for tensor in in_map.values()}
    blocks = []
    for model_name, _spec, in_map, out_map in steps:
        out_map = {k: v for k, v in out_map.items() if not v.startswith("_") or v in consumed}
        lines = [f'    model_name: "{model_name}"', f"    model_version: {STAGING_VERSION}"]
        lines += [f'    input_map {{ key: "{k}" value: "{v}" }}' for k, v in in_map.items()]
        lines += [f'    output_map {{ key: "{k}" value: "{v}" }}' for k, v in out_map.items()]
        blocks.append("  step [\n   {\n" + "\n".join(lines) + "\n   }\n  ]")
    return "\n".join(blocks)


def fill(template_path: Path, values: dict, keep_comments: bool = True) -> str:
    """Substitute every ${name} of a template; unused values and leftovers are errors."""
    text = template_path.read_text()
    if not keep_comments:
        text = "".join(line for line in text.splitlines(keepends=True) if not line.startswith("#"))
    used = set(re.findall(r"\$\{([^}]*)\}", text))
    unused = set(values) - used
    if unused:
        raise RenderError(f"{template_path}: values given but not used by the template: {sorted(unused)}")
    try:
        out = string.Template(text).substitute(values)
    except KeyError as err:
        raise RenderError(f"{template_path}: no value for template variable {err}") from err
    left = LEFTOVER.findall(out)
    if left:
        raise RenderError(f"{template_path}: leftover template variables {left}")
    return out


def _identity(specs) -> dict:
    return {t.name: t.name for t in specs}


def _internal(specs) -> dict:
    return {t.name: f"_{t.name}" for t in specs}


def _preprocess_step() -> tuple:
    """The shared preprocess step: tokens go to internal tensors, the status outputs (history
    counts, model version) straight to the ensemble's outputs."""
    out_map = _internal(contract.PREPROCESS.outputs)
    out_map.update(_identity(contract.STATUS_OUTPUTS))
    return (contract.PREPROCESS_MODEL, contract.PREPROCESS, _identity(contract.PUBLIC.inputs), out_map)


def topology_steps(topology: str) -> list:
    """Ensemble steps (model, spec, input_map, output_map) of each serving topology."""
    if topology == "fused":  # one Python model validates, tokenizes, generates and ranks
        return [
            (
                contract.FUSED_MODEL,
                contract.FUSED,
                _identity(contract.PUBLIC.inputs),
                _identity(contract.PUBLIC.outputs),
            )
        ]
    if topology == "numpy_beam":
        return numpy_beam_steps()
    if topology == "graphs":  # preprocess -> generation graph -> ranking graph, nothing in between
        preprocess = _preprocess_step()
        pre_out = preprocess[3]
        gen_in = {t.name: pre_out[t.name] for t in contract.GENERATION.inputs}
        gen_out = _internal(contract.GENERATION.outputs)
        rank_in = {
            "kv": gen_out["kv"],
            "hist_len": pre_out["hist_len"],
            **{k: gen_out[k] for k in ("cand_idx", "cand_logp", "cand_stream")},
            "top_k": pre_out["top_k"],
        }
        rank_out = _identity(contract.REC_OUTPUTS)
        return [
            preprocess,
            (contract.GENERATION_MODEL, contract.GENERATION, gen_in, gen_out),
            (contract.RANKING_MODEL, contract.RANKING, rank_in, rank_out),
        ]
    raise RenderError(f"unknown topology {topology!r}")


def _after_preprocess(model: str, spec: contract.ModelSpec) -> list:
    """Ensemble steps: the shared preprocess, then one fused-style model over its tokens."""
    preprocess = _preprocess_step()
    return [preprocess, (model, spec, {t.name: preprocess[3][t.name] for t in spec.inputs}, _identity(spec.outputs))]


def cascade_steps() -> list:
    """Ensemble steps of `oneranker_cascade`: the same preprocess, then the cascade model."""
    return _after_preprocess(contract.CASCADE_MODEL, contract.CASCADE)


def numpy_beam_steps() -> list:
    """Ensemble steps of `oneranker_numpy_beam`: the same preprocess, then the baseline model."""
    return _after_preprocess(contract.NUMPY_BEAM_MODEL, contract.NUMPY_BEAM)


@dataclass(frozen=True)
class CascadeExports:
    """The two exports of a cascade run (`oneranker.cascade`), served as `oneranker_cascade`."""

    generator: Path  # export dir of run_dir/generator (graphs, tables, export_info.json)
    ranker: Path  # export dir of run_dir/ranker

    def checkpoints(self) -> str:
        """ "GENERATOR_SHA,RANKER_SHA": what the cascade model checks its artifacts against."""
        return ",".join(
            json.loads((d / "export_info.json").read_text())["checkpoint_sha256"] for d in (self.generator, self.ranker)
        )

    def check_preprocess_compatible(self, export_dir: Path) -> None:
        """The cascade shares OneRanker's preprocess: same semantic IDs and item tables required."""
        unified = json.loads((Path(export_dir) / "export_info.json").read_text())
        for half, folder in (("generator", self.generator), ("ranker", self.ranker)):
            info = json.loads((folder / "export_info.json").read_text())
            for key in ("sid_version", "item_tables_sha256", "feature_cardinality"):
                if info.get(key) != unified.get(key):
                    raise RenderError(
                        f"cascade {half} {key} {info.get(key)!r} differs from the unified model's "
                        f"{unified.get(key)!r}: "
                        "train the cascade on the unified run's data and semantic IDs (`oneranker train-cascade "
                        "--unified-run`)"
                    )


TOPOLOGIES = ("fused", "numpy_beam", "graphs")
# The measured default (perf/results/topology: highest saturated throughput, lowest latency at
# concurrency 1): the in-graph beam search path, one Python model, two engine calls per batch.
DEFAULT_TOPOLOGY = "fused"
# TensorRT plans serve as the `graphs` ensemble: preprocess, then the generation and ranking plans
# with no Python between them (the KV stays on the device).
TENSORRT_TOPOLOGY = "graphs"


def default_topology(engine: str) -> str:
    """The topology the public `oneranker` ensemble routes to for an engine."""
    return TENSORRT_TOPOLOGY if engine == "tensorrt" else DEFAULT_TOPOLOGY


def render_repository(
    export_dir: Path,
    out_dir: Path,
    engine: str,
    dims: contract.ContractDims,
    checkpoint_sha256: str,
    settings: RenderSettings | None = None,
    topology: str | None = None,
    placeholder_engine: str | None = None,
    cascade: CascadeExports | None = None,
    samples: bool = True,
) -> Path:
    """Write OUT/<model>/... for one engine; returns OUT.

    engine onnxruntime|torch: every model, every topology. engine tensorrt: generation and
    ranking are `tensorrt_plan` models (plans built by tensorrt_build) and the one topology is
    graphs (preprocess, then the two native engines); with `placeholder_engine` they are
    rendered as Python models of the same tensor blocks running that engine, so the
    repository's wiring can be loaded and checked on a CPU host.
    `cascade`: also render the cascade baseline (`cascade` model + `oneranker_cascade` ensemble);
    onnxruntime and torch engines only.
    `samples`: render the warm-up samples and the example request (needs a real export; off only
    to inspect the configs a deployment would serve, without a trained run)."""
    s = settings or RenderSettings()
    out_dir = Path(out_dir)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    common = {"max_batch_size": s.max_batch_size, "contract_version": contract.CONTRACT_VERSION}
    queue = {
        "model_common": fill(
            TEMPLATES / "model_common.pbtxt.tmpl",
            {
                "max_queue_delay_us": s.max_queue_delay_us,
                "queue_policy": queue_policy_block(s),
                "versions_loaded": s.versions_loaded,
                "release_version": STAGING_VERSION,
            },
            keep_comments=False,
        )
    }
    native_trt = engine == "tensorrt" and placeholder_engine is None
    runner_engine = placeholder_engine or engine
    topologies = (TENSORRT_TOPOLOGY,) if engine == "tensorrt" else TOPOLOGIES
    public_topology = topology or default_topology(engine)
    if public_topology not in topologies:
        raise RenderError(f"default topology {public_topology!r} is not rendered for engine {engine}")
    if cascade is not None:
        if engine == "tensorrt":
            raise RenderError("the cascade baseline is rendered for the onnxruntime and torch engines only")
        cascade.check_preprocess_compatible(export_dir)

    def blocks(spec, ragged: bool) -> dict:
        return {
            "inputs": tensor_block("input", spec.inputs, dims, ragged=ragged),
            "outputs": tensor_block("output", spec.outputs, dims, ragged=False),
        }

    warm = warmup.warmup_inputs(export_dir, runner_engine) if samples else None
    # the example request as a quoted pbtxt string
    example = json.dumps(json.dumps(warmup.example_request_json(export_dir) if samples else {}))

    def write(
        model: str,
        values: dict,
        artifacts: bool,
        template: str | None = None,
        code: bool = True,
        spec: contract.ModelSpec | None = None,
    ) -> None:
        """`spec`: a non-ensemble model, warmed up with its sample of `warm` before it is ready."""
        folder = out_dir / values["name"]
        (folder / "1").mkdir(parents=True, exist_ok=True)
        if spec is not None:
            values = {**values, "warmup": warmup.warmup_block(spec, warm[values["name"]]) if warm else ""}
            if warm:
                warmup.write_warmup_files(folder, spec, warm[values["name"]])
        (folder / "config.pbtxt").write_text(fill(TEMPLATES / model / (template or "config.pbtxt.tmpl"), values))
        source = TEMPLATES / model / "1" / "model.py"
        if code and source.exists():
            shutil.copy2(source, folder / "1" / "model.py")
        if artifacts:
            target = folder / "1" / "artifacts"
            shutil.copytree(export_dir, target)

    python_model = {**common, **queue, "checkpoint_sha256": checkpoint_sha256}
    engine_model = {
        **python_model,
        "engine": runner_engine,
        "intra_op_threads": s.intra_op_threads,
    }
    # the recommender models' own knobs (fused, numpy beam search baseline, cascade)
    recommender_params = {
        "cancel_check_interval_us": s.cancel_check_interval_us,
        "counter_interval_ms": s.counter_interval_ms,
    }
    transport = kv_transport(runner_engine)
    for topology in topologies:
        names = [contract.TOPOLOGY_MODELS[topology]] + ([contract.PUBLIC_MODEL] if topology == public_topology else [])
        for name in names:
            write(
                contract.PUBLIC_MODEL,
                {
                    "name": name,
                    **common,
                    **blocks(contract.PUBLIC, False),
                    "steps": ensemble_steps(topology_steps(topology)),
                    "example_request": example,
                },
                artifacts=False,
            )
    write(
        contract.PREPROCESS_MODEL,
        {
            "name": contract.PREPROCESS_MODEL,
            **python_model,
            # plain: the liveness probe (oneranker_serving.probe) must be able to reach each instance
            # of the one Python model the TensorRT topology keeps; a spill-over one idles at low load
            "instance_group": instance_group_block(
                contract.PREPROCESS_MODEL, s.preprocess_instances, "KIND_CPU", False
            ),
            **blocks(contract.PREPROCESS, True),
        },
        artifacts=True,
        spec=contract.PREPROCESS,
    )
    if "fused" in topologies:
        write(
            contract.FUSED_MODEL,
            {
                "name": contract.FUSED_MODEL,
                **engine_model,
                "system": "unified",
                "beam_search": "graph",
                "request_format": "raw",
                **recommender_params,
                "instance_group": instance_group_block(
                    contract.FUSED_MODEL, s.recommender_instances, s.instance_kind, s.preferred_instance
                ),
                **blocks(contract.FUSED, True),
            },
            artifacts=True,
            spec=contract.FUSED,
        )
        write(
            contract.FUSED_MODEL,
            {
                "name": contract.NUMPY_BEAM_MODEL,
                **engine_model,
                "system": "unified",
                "beam_search": "numpy",
                "request_format": "tokens",
                **recommender_params,
                "instance_group": instance_group_block(
                    contract.NUMPY_BEAM_MODEL, s.recommender_instances, s.instance_kind, s.preferred_instance
                ),
                **blocks(contract.NUMPY_BEAM, True),
            },
            artifacts=True,
            spec=contract.NUMPY_BEAM,
        )
    instances = {contract.GENERATION_MODEL: s.generation_instances, contract.RANKING_MODEL: s.ranking_instances}
    for spec in (contract.GENERATION, contract.RANKING):
        if native_trt:
            write(
                spec.name,
                {"name": spec.name, **common, **queue, "instance_count": instances[spec.name], **blocks(spec, False)},
                artifacts=False,
                template="config.tensorrt.pbtxt.tmpl",
                code=False,
                spec=spec,
            )
        else:
            write(
                spec.name,
                {
                    "name": spec.name,
                    **engine_model,
                    "instance_group": instance_group_block(
                        spec.name, instances[spec.name], s.instance_kind, s.preferred_instance
                    ),
                    **transport.engine_values(),
                    **blocks(spec, engine != "tensorrt"),
                },
                artifacts=True,
                spec=spec,
            )
    if cascade is not None:
        write(
            contract.PUBLIC_MODEL,
            {
                "name": contract.CASCADE_PUBLIC_MODEL,
                **common,
                **blocks(contract.PUBLIC, False),
                "steps": ensemble_steps(cascade_steps()),
                "example_request": example,
            },
            artifacts=False,
        )
        write(
            contract.FUSED_MODEL,
            {
                "name": contract.CASCADE_MODEL,
                **engine_model,
                "system": "cascade",
                "beam_search": "numpy",
                "request_format": "tokens",
                "checkpoint_sha256": cascade.checkpoints(),
                **recommender_params,
                "instance_group": instance_group_block(
                    contract.CASCADE_MODEL, s.recommender_instances, s.instance_kind, s.preferred_instance
                ),
                **blocks(contract.CASCADE, True),
            },
            artifacts=False,
            spec=contract.CASCADE,
        )
        for half, folder in (("generator", cascade.generator), ("ranker", cascade.ranker)):
            shutil.copytree(folder, out_dir / contract.CASCADE_MODEL / "1" / "artifacts" / half)
    return out_dir
