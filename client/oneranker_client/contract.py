"""The tensor contract of every Triton model of oneranker: one source of truth (torch-free).

Export (ONNX input/output names), the rendered `config.pbtxt` files, the Python models and the
client all read these specs; `tests/model/test_render.py` proves they agree.

Symbolic dims resolved by `ContractDims`: F user features, D semantic-ID depth, K codes per
level, H task-token heads, R2 = 2 x R-Decoder layers (K and V per layer), DM model width, Z the
semantic-ID decoder's state width (D * K factorized, the user-vector width conditioned).
-1 = variable (history length L, candidate count n). Dims exclude Triton's batch dimension;
every model has max_batch_size > 0, so a client sends a leading batch dimension of 1 per user.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# Version of this contract (tensor names, dtypes, dims, meanings, action codes). Every rendered
# model reports it as the config parameter `contract_version`; the client compares it with its own
# (`OneRankerClient.check_contract`). Bump it on any change a client or an export would notice.
CONTRACT_VERSION = 5

# Action codes of behaviour events (`actions` input). 0 is padding inside the model. Order = the
# funnel order of the task tokens.
ACTION_PAD = 0
ACTION_CONTENT_VIEW = 1  # X token: organic content consumed
ACTION_IMPRESSION = 2  # I token: ad shown
ACTION_CLICK = 3  # I token: ad clicked
ACTION_CONVERSION = 4  # I token: ad converted
NUM_ACTIONS = 5
AD_ACTIONS = (ACTION_IMPRESSION, ACTION_CLICK, ACTION_CONVERSION)

PUBLIC_MODEL = "oneranker"
PREPROCESS_MODEL = "preprocess"
FUSED_MODEL = "recommender"  # topology (a): one Python model owns the engine runner
# Public ensembles with the same contract as PUBLIC, one per topology; PUBLIC_MODEL is the
# measured default (see README "Serving topologies").
TOPOLOGY_MODELS = {
    "fused": "oneranker_fused",  # (a) one Python model, beam search inside the generation graph
    "numpy_beam": "oneranker_numpy_beam",  # (a') preprocess -> fused model with the numpy beam search
    "graphs": "oneranker_graphs",  # preprocess -> generation graph -> ranking graph (TensorRT: native plans)
}
# The baseline OneRanker replaces, served beside it for side-by-side measurement (rendered when
# `oneranker build --cascade-run` is given): the same preprocess, then a generator that only
# generates and an independent ranker that re-encodes the history. Same public contract.
CASCADE_MODEL = "cascade"
CASCADE_PUBLIC_MODEL = "oneranker_cascade"
# The fused model before the in-graph beam search (decoder-state graphs, numpy beam search between
# them), served beside it as a benchmark baseline: same preprocess, same contract.
NUMPY_BEAM_MODEL = "recommender_numpy_beam"
NUMPY_BEAM_PUBLIC_MODEL = TOPOLOGY_MODELS["numpy_beam"]
# The two graphs of the in-graph beam search path: generation (Steps 1-2, beam search over the
# semantic-ID trie, merge, exclusions; -> candidates + KV) and ranking (Step 3 over the KV,
# top-k). Run inside `recommender` (fused) and served as models of their own in the `graphs`
# topology (native tensorrt_plan models on GPU hosts).
GENERATION_MODEL = "generation"
RANKING_MODEL = "ranking"
# The decoder-state graphs (generator: Steps 1-2 -> decoder state + KV; ranker: Step 3 -> scores),
# exported beside them for the numpy beam search baseline and the cascade, which load them in
# process. Graphs only, not Triton models.
GENERATOR_GRAPH = "generator"
RANKER_GRAPH = "ranker"

TRITON_TO_NUMPY = {"TYPE_INT64": np.int64, "TYPE_INT32": np.int32, "TYPE_FP32": np.float32}
TRITON_TO_WIRE = {"TYPE_INT64": "INT64", "TYPE_INT32": "INT32", "TYPE_FP32": "FP32"}


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # Triton config dtype, e.g. TYPE_INT64
    dims: tuple  # ints or symbolic names ("F", "D", ...); -1 variable
    meaning: str
    optional: bool = False
    reshape: tuple | None = None  # Triton `reshape` (what the model sees, batch excluded)

    @property
    def numpy_dtype(self):
        return TRITON_TO_NUMPY[self.dtype]

    @property
    def wire_dtype(self) -> str:
        return TRITON_TO_WIRE[self.dtype]

    def resolve(self, dims: ContractDims) -> TensorSpec:
        return TensorSpec(
            self.name, self.dtype, tuple(dims.value(d) for d in self.dims), self.meaning, self.optional, self.reshape
        )


@dataclass(frozen=True)
class ModelSpec:
    name: str
    inputs: tuple
    outputs: tuple
    doc: str = ""

    def input(self, name: str) -> TensorSpec:
        return next(t for t in self.inputs if t.name == name)

    def output(self, name: str) -> TensorSpec:
        return next(t for t in self.outputs if t.name == name)

    def resolve(self, dims: ContractDims) -> ModelSpec:
        return ModelSpec(
            self.name,
            tuple(t.resolve(dims) for t in self.inputs),
            tuple(t.resolve(dims) for t in self.outputs),
            self.doc,
        )


@dataclass(frozen=True)
class ContractDims:
    F: int  # user feature tokens (profile + context)
    D: int  # semantic-ID depth (residual levels + collision suffix)
    K: int  # codes per level (padded to the largest level)
    H: int  # task-token heads (interest + value)
    R2: int  # 2 x R-Decoder layers
    DM: int  # model width d
    Z: int = 0  # decoder state width (`oneranker.decoders`); only the decoder-state generator graph has it
    extra: dict = field(default_factory=dict)

    def value(self, dim):
        return getattr(self, dim) if isinstance(dim, str) else dim


_HIST = (
    TensorSpec("user_features", "TYPE_INT64", ("F",), "profile (U) then context (C) feature values"),
    TensorSpec("hist_sids", "TYPE_INT64", (-1, "D"), "semantic-ID path of each history event, right-padded"),
    TensorSpec("hist_actions", "TYPE_INT64", (-1,), "action code per event (0 = padding)"),
    TensorSpec("hist_dt", "TYPE_FP32", (-1,), "request_time - event time, seconds"),
    TensorSpec("hist_len", "TYPE_INT64", (1,), "true history length", reshape=()),
)

# Per item of the answer (the recommendation itself).
REC_OUTPUTS = (
    TensorSpec("rec_item_ids", "TYPE_INT64", (-1,), "recommended ad ids, best first; -1 = padding"),
    TensorSpec("rec_scores", "TYPE_FP32", (-1,), "R-Decoder value score (ordinal, not calibrated)"),
    TensorSpec("rec_gen_logp", "TYPE_FP32", (-1,), "generation log-probability of the item"),
    TensorSpec("rec_source_head", "TYPE_INT32", (-1,), "generating stream: 0-5 interest heads, 6 value"),
)
# Per request: what tokenization did to the history (made where the request is validated).
HISTORY_OUTPUTS = (
    TensorSpec(
        "history_unknown",
        "TYPE_INT64",
        (1,),
        "history events whose item id this model version does not know (served as the OOV token)",
    ),
    TensorSpec("history_dropped", "TYPE_INT64", (1,), "oldest history events dropped beyond max_history"),
)
# Per request: the model release that answered (its Triton version number; every ensemble step is
# pinned to it, so one answer never mixes two releases' semantic IDs).
VERSION_OUTPUT = TensorSpec("model_version", "TYPE_INT64", (1,), "version of the model release that answered")
# Made by the model that validates the request (the fused model, or preprocess in the ensembles
# that have one: the ensemble maps them straight to its outputs).
STATUS_OUTPUTS = HISTORY_OUTPUTS + (VERSION_OUTPUT,)

PUBLIC = ModelSpec(
    PUBLIC_MODEL,
    inputs=(
        TensorSpec("user_features", "TYPE_INT64", ("F",), "profile then context feature values"),
        TensorSpec("item_ids", "TYPE_INT64", (-1,), "behaviour history: item id per event (ad or content id)"),
        TensorSpec("actions", "TYPE_INT64", (-1,), "1 content view, 2 ad impression, 3 ad click, 4 ad conversion"),
        TensorSpec("timestamps", "TYPE_INT64", (-1,), "event time, unix seconds, not after request_time"),
        TensorSpec("request_time", "TYPE_INT64", (1,), "request time, unix seconds"),
        TensorSpec("top_k", "TYPE_INT32", (1,), "items returned (default 10, 1..max_top_k)", optional=True),
        TensorSpec("num_candidates", "TYPE_INT32", (1,), "candidates ranked (default 64)", optional=True),
        TensorSpec("beam_width", "TYPE_INT32", (1,), "beam width per head (default 16)", optional=True),
        TensorSpec(
            "exclude_item_ids",
            "TYPE_INT64",
            (-1,),
            "ad ids never returned (at most max_exclude_items, default 1024)",
            optional=True,
        ),
    ),
    outputs=REC_OUTPUTS + STATUS_OUTPUTS,
    doc="Public entry: raw request in, top-k out. Ensemble of preprocess -> recommender.",
)

_KNOB = {"dims": (1,), "reshape": ()}

PREPROCESS = ModelSpec(
    PREPROCESS_MODEL,
    inputs=PUBLIC.inputs,
    outputs=_HIST
    + (
        TensorSpec("options", "TYPE_INT32", (3,), "validated top_k, num_candidates, beam_width"),
        TensorSpec("exclude_idx", "TYPE_INT64", (-1,), "dense ad indices to exclude, -1 = padding (>= 1 entry)"),
        TensorSpec("beam_width", "TYPE_INT64", **_KNOB, meaning="validated beam width (the graphs topology)"),
        TensorSpec("num_candidates", "TYPE_INT64", **_KNOB, meaning="validated candidate count (graphs topology)"),
        TensorSpec("top_k", "TYPE_INT64", **_KNOB, meaning="validated top_k (the graphs topology)"),
    )
    + STATUS_OUTPUTS,
    doc="Validation + tokenization (the training code path): raw events -> tokens.",
)

FUSED = ModelSpec(
    FUSED_MODEL,
    inputs=PUBLIC.inputs,
    outputs=PUBLIC.outputs,
    doc="Topology (a): validation and tokenization, the generation graph (beam search inside) and the "
    "ranking graph in one Python model; no preprocess hop, and the KV never leaves the process.",
)

GENERATOR = ModelSpec(
    GENERATOR_GRAPH,
    inputs=_HIST,
    outputs=(
        TensorSpec("decoder_state", "TYPE_FP32", ("H", "Z"), "semantic-ID decoder state per head"),
        TensorSpec("kv", "TYPE_FP32", ("R2", -1, "DM"), "Step-3 keys/values over [H1 ; H2]"),
    ),
    doc="Decoder-state graph (not a Triton model): Steps 1 and 2 + KV projection, loaded in process by "
    "`recommender_numpy_beam` and `cascade`.",
)

RANKER = ModelSpec(
    RANKER_GRAPH,
    inputs=(
        TensorSpec("kv", "TYPE_FP32", ("R2", -1, "DM"), "the generator's kv"),
        TensorSpec("hist_len", "TYPE_INT64", (1,), "true history length", reshape=()),
        TensorSpec("cand_sids", "TYPE_INT64", (-1, "D"), "candidate semantic-ID paths"),
        TensorSpec("cand_attrs", "TYPE_INT64", (-1, 2), "candidate advertiser, category"),
        TensorSpec("cand_bid", "TYPE_FP32", (-1,), "candidate bid"),
    ),
    outputs=(TensorSpec("scores", "TYPE_FP32", (-1,), "value score per candidate"),),
    doc="Decoder-state ranker graph (not a Triton model): Step 3 R-Decoder over the generator graph's KV, "
    "loaded in process by `recommender_numpy_beam` and `cascade`.",
)

GENERATION = ModelSpec(
    GENERATION_MODEL,
    inputs=_HIST
    + (
        TensorSpec("beam_width", "TYPE_INT64", **_KNOB, meaning="beam width per stream (validated)"),
        TensorSpec("num_candidates", "TYPE_INT64", **_KNOB, meaning="candidates kept (validated)"),
        TensorSpec("exclude_idx", "TYPE_INT64", (-1,), "dense ad indices never generated, -1 = padding"),
    ),
    outputs=(
        TensorSpec("cand_idx", "TYPE_INT64", (-1,), "candidate ad indices, by generation log-prob; -1 = empty"),
        TensorSpec("cand_logp", "TYPE_FP32", (-1,), "generation log-probability of each candidate"),
        TensorSpec("cand_stream", "TYPE_INT64", (-1,), "generating stream of each candidate"),
        TensorSpec("kv", "TYPE_FP32", ("R2", -1, "DM"), "Step-3 keys/values over [H1 ; H2]"),
    ),
    doc="Steps 1-2, trie-constrained beam search per stream, merge, dedupe and exclusions in one graph.",
)

RANKING = ModelSpec(
    RANKING_MODEL,
    inputs=(
        TensorSpec("kv", "TYPE_FP32", ("R2", -1, "DM"), "the generation graph's kv"),
        TensorSpec("hist_len", "TYPE_INT64", (1,), "true history length", reshape=()),
        TensorSpec("cand_idx", "TYPE_INT64", (-1,), "the generation graph's candidates"),
        TensorSpec("cand_logp", "TYPE_FP32", (-1,), "their generation log-probabilities"),
        TensorSpec("cand_stream", "TYPE_INT64", (-1,), "their generating streams"),
        TensorSpec("top_k", "TYPE_INT64", **_KNOB, meaning="items returned (validated)"),
    ),
    outputs=REC_OUTPUTS
    + (
        TensorSpec(
            "rec_count",
            "TYPE_INT64",
            (1,),
            "valid entries of the rec_* outputs (the rest is padding, item id -1)",
            reshape=(),
        ),
    ),
    doc="Step 3 R-Decoder over the generation graph's KV and candidates, then top-k by value score.",
)

NUMPY_BEAM = ModelSpec(
    NUMPY_BEAM_MODEL,
    inputs=PREPROCESS.outputs[: -len(STATUS_OUTPUTS)],
    outputs=REC_OUTPUTS,
    doc="The fused model with the numpy beam search between a decoder-state generator graph and a ranker "
    "graph (ensemble `oneranker_numpy_beam`): the baseline the in-graph beam search is measured against.",
)

CASCADE = ModelSpec(
    CASCADE_MODEL,
    inputs=PREPROCESS.outputs[: -len(STATUS_OUTPUTS)],
    outputs=REC_OUTPUTS,
    doc="The cascade baseline (ensemble `oneranker_cascade`): the cascade generator's beam search, then "
    "an independent ranker that encodes the history a second time. Same contract as the fused model.",
)

# Every Triton model a repository may hold, besides the public ensembles.
MODELS = {m.name: m for m in (PUBLIC, PREPROCESS, FUSED, CASCADE, NUMPY_BEAM, GENERATION, RANKING)}
# Every exported graph (ONNX / TensorRT / torch.export tensor names): the in-graph beam search
# path's two graphs (also the `graphs` topology's models) and the decoder-state pair.
GRAPHS = {m.name: m for m in (GENERATION, RANKING, GENERATOR, RANKER)}
# Public ensembles: every one has the PUBLIC contract.
ENSEMBLES = (PUBLIC_MODEL, *TOPOLOGY_MODELS.values(), CASCADE_PUBLIC_MODEL)


def markdown_tables(dims: ContractDims | None = None) -> str:
    """One Markdown table per model (used for model_repository/README.md)."""
    parts = []
    for spec in (*MODELS.values(), *(g for name, g in GRAPHS.items() if name not in MODELS)):
        spec = spec.resolve(dims) if dims else spec
        parts.append(
            f"### `{spec.name}`\n\n{spec.doc}\n\n| tensor | io | dtype | dims | meaning |\n|---|---|---|---|---|"
        )
        for io, tensors in (("in", spec.inputs), ("out", spec.outputs)):
            for t in tensors:
                opt = " (optional)" if t.optional else ""
                dims_s = "[" + ", ".join(str(d) for d in t.dims) + "]"
                parts.append(f"| `{t.name}` | {io} | {t.dtype[5:]} | {dims_s} | {t.meaning}{opt} |")
        parts.append("")
    return "\n".join(parts)


def update_readme(path) -> None:
    """Rewrite the tables after the '## Tensor contract' intro of model_repository/README.md."""
    from pathlib import Path

    text = Path(path).read_text()
    marker = "batch dimension.\n\n"
    head = text[: text.index(marker, text.index("## Tensor contract")) + len(marker)]
    Path(path).write_text(head + markdown_tables())


if __name__ == "__main__":  # python -m oneranker_client.contract model_repository/README.md
    import sys

    update_readme(sys.argv[1])
