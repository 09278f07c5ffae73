"""The Triton models' logic under a fake `pb_utils` (no server, no trained run): per-request
errors in a dynamic batch, the graphs topology's batching, output names of the contract.

The artifacts are synthetic: 6 ads on a 2-level trie (3 codes per level), random transitions.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

import numpy as np
import pytest
from safetensors.numpy import save_file

from oneranker_client import contract
from oneranker_serving.decoders import FactorizedTables
from oneranker_serving.tables import GenerationTables, ItemTables, generation_table_arrays
from oneranker_serving.triton import models

F, D, K, H, R2, DM, T2 = 2, 2, 3, 3, 2, 4, 2
AD_IDS = np.array([100, 101, 102, 103, 104, 105], np.int64)


class FakeTensor:
    def __init__(self, name, value):
        self.name, self.value = name, np.asarray(value)

    def as_numpy(self):
        return self.value

    def is_cpu(self):
        return True


@dataclass
class FakeResponse:
    output_tensors: list = field(default_factory=list)
    failure: object = None

    def has_error(self):
        return self.failure is not None

    def error(self):
        return self.failure


class FakeError:
    INVALID_ARG, INTERNAL, CANCELLED = "INVALID_ARG", "INTERNAL", "CANCELLED"

    def __init__(self, msg, code="INTERNAL"):
        self.msg, self.code = msg, code

    def message(self):
        return self.msg


class FakeMetric:
    def __init__(self, labels):
        self.labels, self.value, self.sends = labels, 0.0, 0

    def increment(self, value):  # in Triton an IPC round trip: `sends` counts them
        self.value += value
        self.sends += 1


class FakeMetricFamily:
    COUNTER = "counter"

    def __init__(self, name, description, kind):
        self.name, self.metrics = name, []

    def Metric(self, labels):
        self.metrics.append(FakeMetric(labels))
        return self.metrics[-1]


class FakeLogger:
    errors: list = []

    @classmethod
    def log_error(cls, message):
        cls.errors.append(message)


class FakePb:
    """The parts of triton_python_backend_utils the models use."""

    Logger = FakeLogger
    Tensor = FakeTensor
    TritonError = FakeError
    MetricFamily = FakeMetricFamily

    @staticmethod
    def InferenceResponse(output_tensors, error=None):
        return FakeResponse(list(output_tensors), error)

    @staticmethod
    def get_input_tensor_by_name(request, name):
        return request.get(name)


def _outputs(response) -> dict:
    return {t.name: t.as_numpy() for t in response.output_tensors}


@pytest.fixture()
def artifacts(tmp_path):
    """A model version's artifacts folder with synthetic tables and export_info.json."""
    rng = np.random.default_rng(0)
    root = tmp_path / "1" / "artifacts"
    root.mkdir(parents=True)
    codes = np.array([[0, 0], [0, 1], [1, 0], [1, 2], [2, 1], [2, 2]], np.int64)
    level1 = np.full((3, K), -1, np.int64)
    for ad, (a, b) in enumerate(codes):
        level1[a, b] = ad
    trie = [np.array([[0, 1, 2]], np.int64), level1]
    gen = GenerationTables(FactorizedTables(rng.standard_normal((D, D, K, K)).astype(np.float32)), trie, 2, 1)
    items = ItemTables(
        ad_ids=AD_IDS,
        ad_codes=codes,
        ad_advertiser=np.arange(6, dtype=np.int64),
        ad_category=np.zeros(6, np.int64),
        ad_bid=np.array([1, 6, 2, 5, 3, 4], np.float32),
        content_ids=np.array([7], np.int64),
        content_codes=np.zeros((1, D), np.int64),
    )
    save_file(generation_table_arrays(gen, items), str(root / "generation_tables.safetensors"))
    info = {
        "checkpoint_sha256": "abc",
        "sid_version": "v",
        "dims": dict(F=F, D=D, K=K, H=H, R2=R2, DM=DM),
        "num_interest_heads": 2,
        "num_value_heads": 1,
        "num_step2_tokens": T2,
        "feature_cardinality": 4,
        "serve": {"top_k": 2, "num_candidates": 4, "beam_width": 3, "max_exclude_items": 3, "length_buckets": [4, 8]},
    }
    (root / "export_info.json").write_text(json.dumps(info))
    return tmp_path


def _args(repo, **params) -> dict:
    config = {"parameters": {k: {"string_value": v} for k, v in {"checkpoint_sha256": "abc", **params}.items()}}
    return {"model_config": json.dumps(config), "model_repository": str(repo), "model_version": "1"}


def _raw(item_ids=(100, 103), actions=(3, 2), **options) -> dict:
    n = len(item_ids)
    request = {
        "user_features": np.array([[1, 2]], np.int64),
        "item_ids": np.array([item_ids], np.int64),
        "actions": np.array([actions], np.int64),
        "timestamps": np.arange(n, dtype=np.int64)[None],
        "request_time": np.array([[n + 5]], np.int64),
    }
    request.update({k: np.asarray(v).reshape(1, -1) for k, v in options.items()})
    return {k: FakeTensor(k, v) for k, v in request.items()}


def _model(cls, repo, **params):
    model = type("Model", (cls,), {"pb": FakePb})()
    model.initialize(_args(repo, **params))
    return model


def test_preprocess_answers_each_request_of_a_batch_on_its_own(artifacts):
    model = _model(models.PreprocessModel, artifacts)
    bad_action = _raw(actions=(3, 9))
    too_many_excluded = _raw(exclude_item_ids=np.array([100, 101, 102, 103], np.int64))
    responses = model.execute(
        [_raw(), bad_action, _raw(item_ids=(100, 101, 102), actions=(3, 2, 2)), too_many_excluded]
    )
    assert [r.has_error() for r in responses] == [False, True, False, True]
    assert "unknown action code 9" in responses[1].error().message() and responses[1].error().code == "INVALID_ARG"
    assert "maximum is 3" in responses[3].error().message()
    out = _outputs(responses[0])
    assert list(out) == [t.name for t in contract.PREPROCESS.outputs]
    assert out["hist_sids"].shape == (1, 4, D)  # padded to the first length bucket
    np.testing.assert_array_equal(out["hist_sids"][0, :2], [[0, 0], [1, 2]])
    np.testing.assert_array_equal(out["options"], [[2, 4, 3]])  # serve defaults from export_info


class RecordingGraphRunner:
    """A generation/ranking runner that records the batch it was given and answers with values
    derived from it: candidate i of row r is 100 * r + i; the ranking returns each row's first
    top_k[r] valid candidates (rec_count = that many), padded with -1 to the batch's largest top_k."""

    def __init__(self, num_prefix: int, num_step2: int, dm: int = 2):
        self.num_prefix, self.num_step2, self.dm = num_prefix, num_step2, dm
        self.calls: list[tuple[str, dict]] = []

    def generate(self, inputs: dict, knobs: dict):
        self.calls.append(("generate", {**inputs, **knobs}))
        b, length = inputs["hist_actions"].shape
        n = int(knobs["num_candidates"].max())
        idx = np.array([[100 * r + i if i < knobs["num_candidates"][r] else -1 for i in range(n)] for r in range(b)])
        kv = np.zeros((b, 2, self.num_prefix + length + self.num_step2, self.dm), np.float32)
        kv[:, :, : self.num_prefix + length] = np.arange(b, dtype=np.float32)[:, None, None, None] + 1
        return {"cand_idx": idx, "cand_logp": -idx.astype(np.float32), "cand_stream": idx % 7}, kv

    def rank(self, kv, hist_len, cands: dict, top_k):
        self.calls.append(("rank", {"kv": kv, "hist_len": hist_len, **cands, "top_k": top_k}))
        k = int(np.max(top_k))
        b = len(top_k)
        ids = np.full((b, k), -1, np.int64)
        count = np.zeros(b, np.int64)
        for r in range(b):
            valid = cands["cand_idx"][r][cands["cand_idx"][r] >= 0][: top_k[r]]
            ids[r, : len(valid)] = valid
            count[r] = len(valid)
        scores = ids.astype(np.float32)
        return {
            "rec_item_ids": ids,
            "rec_scores": scores,
            "rec_gen_logp": scores,
            "rec_source_head": ids % 7,
            "rec_count": count,
            "num_generated": (cands["cand_idx"] >= 0).sum(1),
        }


def _generation_request(length: int, beam: int, n: int, exclude: list[int]) -> dict:
    return {
        "user_features": np.zeros((1, 2), np.int64),
        "hist_sids": np.ones((1, length, 3), np.int64),
        "hist_actions": np.ones((1, length), np.int64),
        "hist_dt": np.zeros((1, length), np.float32),
        "hist_len": np.array([length], np.int64),
        "beam_width": np.array([beam], np.int64),
        "num_candidates": np.array([n], np.int64),
        "exclude_idx": np.array([exclude], np.int64),
    }


def test_graphs_topology_batches_pad_together_and_cut_apart():
    """generate_graphs pads histories and exclusions of a dynamic batch into one call and gives
    each request its own candidates and a KV laid out for its own history; rank_graphs pads
    candidates with the graph's empty-slot values and cuts each answer to its own rec_count."""
    from oneranker_serving.triton import batching

    runner = RecordingGraphRunner(num_prefix=2, num_step2=1)
    items = [_generation_request(4, 2, 3, [-1]), _generation_request(8, 5, 6, [7, 9, 11])]
    outs = batching.generate_graphs(runner, items, num_prefix=2)
    _, fed = runner.calls[0]
    assert fed["hist_actions"].shape == (2, 8)  # padded to the longest history
    np.testing.assert_array_equal(fed["beam_width"], [2, 5])
    np.testing.assert_array_equal(fed["exclude_idx"], [[-1, -1, -1], [7, 9, 11]])  # -1-padded to the widest
    assert outs[0]["kv"].shape == (1, 2, 2 + 4 + 1, 2) and outs[1]["kv"].shape == (1, 2, 2 + 8 + 1, 2)
    assert outs[0]["kv"][0, 0, -1, 0] == 0  # the H2 segment stays last after the cut
    np.testing.assert_array_equal(outs[0]["cand_idx"], [[0, 1, 2, -1, -1, -1]])
    np.testing.assert_array_equal(outs[1]["cand_idx"], [[100, 101, 102, 103, 104, 105]])

    rank_items = [
        {**o, "hist_len": it["hist_len"], "top_k": np.array([k], np.int64)} for o, it, k in zip(outs, items, (2, 5))
    ]
    rank_items[0] = {**rank_items[0], **{k: v[:, :3] for k, v in rank_items[0].items() if k.startswith("cand_")}}
    answers = batching.rank_graphs(runner, rank_items, num_prefix=2, num_step2=1)
    _, fed = runner.calls[1]
    assert fed["kv"].shape == (2, 2, 2 + 8 + 1, 2)  # both KVs laid out for the longest history
    np.testing.assert_array_equal(fed["cand_idx"][0], [0, 1, 2, -1, -1, -1])  # padded with empty slots
    assert fed["cand_logp"][0, -1] == np.float32(batching.CANDIDATE_PAD["cand_logp"])
    np.testing.assert_array_equal(answers[0]["rec_item_ids"], [[0, 1]])  # cut to its own count
    np.testing.assert_array_equal(answers[1]["rec_item_ids"], [[100, 101, 102, 103, 104]])
    np.testing.assert_array_equal(answers[1]["rec_count"], [5])


def test_ranking_model_gives_a_request_with_no_candidate_left_its_own_error():
    """The `ranking` model answers a request whose exclusions left no candidate (rec_count 0)
    with its own INVALID_ARG, as the fused model does, and the others of the batch normally,
    each with the ranking contract's outputs cut to its own count."""
    from types import SimpleNamespace

    from oneranker_serving.triton.codec import TensorCodec

    runner = RecordingGraphRunner(num_prefix=2, num_step2=1)
    model = type("Model", (models.RankingModel,), {"pb": FakePb})()
    model.engine = models.GraphEngine(SimpleNamespace(runner=runner), TensorCodec(FakePb), 2, 1)

    def request(cand_idx, top_k):
        idx = np.array([cand_idx], np.int64)
        values = {
            "kv": np.zeros((1, 2, 2 + 4 + 1, 2), np.float32),
            "hist_len": np.array([4], np.int64),
            "cand_idx": idx,
            "cand_logp": -np.abs(idx).astype(np.float32),
            "cand_stream": np.zeros_like(idx),
            "top_k": np.array([top_k], np.int64),
        }
        return {k: FakeTensor(k, v) for k, v in values.items()}

    good, empty = request([5, 6, 7], 2), request([-1, -1], 3)
    responses = model.execute([good, empty])
    assert [r.has_error() for r in responses] == [False, True]
    assert "no candidate left after exclusions" in responses[1].error().message()
    assert responses[1].error().code == "INVALID_ARG"
    out = _outputs(responses[0])
    assert list(out) == [t.name for t in contract.RANKING.outputs]
    np.testing.assert_array_equal(out["rec_item_ids"], [[5, 6]])
    np.testing.assert_array_equal(out["rec_count"], [2])


# ---------------------------------------------------------------------------------------------
# Request lifecycle: cancellation at the stage boundaries of the fused model
# ---------------------------------------------------------------------------------------------
class CancellableRequest(dict):
    """A fake request whose is_cancelled() turns True from its `cancel_at`-th check on (1 = the
    first boundary, before validation); None = never."""

    def __init__(self, tensors, cancel_at=None):
        super().__init__(tensors)
        self.cancel_at, self.checks = cancel_at, 0

    def is_cancelled(self):
        self.checks += 1
        return self.cancel_at is not None and self.checks >= self.cancel_at


def _execute(model, requests: list) -> list:
    """model.execute(requests) -> one response per request, returned in order."""
    returned = model.execute(requests)
    assert len(returned) == len(requests)
    return returned


class CountingRunner:
    """Level-logit runner (numpy beam search path): zero logits, scores = bids; counts calls."""

    def __init__(self):
        self.generated, self.ranked = 0, 0

    def generate(self, inputs):
        self.generated += 1
        b = inputs["hist_actions"].shape[0]
        return np.zeros((b, H, D * K), np.float32), object()

    def rank(self, kv, hist_len, cand_sids, cand_attrs, cand_bid):
        self.ranked += 1
        return cand_bid.astype(np.float32)


@pytest.fixture()
def fused(artifacts, monkeypatch):
    from oneranker_serving.artifacts import load_selector
    from oneranker_serving.recommender import Recommender

    runner = CountingRunner()
    validator, gen = load_selector(artifacts / "1" / "artifacts")
    monkeypatch.setattr(models, "load_system", lambda *a, **k: Recommender.from_validator(runner, validator, gen))
    # every boundary checks (the interval's skipping has its own test); counters sent at once
    # (their deferral has its own test)
    model = _model(
        models.RecommenderModel, artifacts, request_format="raw", cancel_check_interval_us="0", counter_interval_ms="0"
    )
    return model, runner


def _cancelled_counts(model) -> dict:
    return {m.labels["stage"]: m.value for m in model.families["cancelled"].metrics}


@pytest.mark.parametrize(
    "cancel_at, stage, generated, ranked",
    [(1, "validate", 0, 0), (2, "generate", 0, 0), (3, "rank", 1, 0), (None, None, 1, 1)],
)
def test_a_cancelled_request_stops_at_its_stage_boundary(fused, cancel_at, stage, generated, ranked):
    """Cancelled before validation, generation or ranking: a CANCELLED response, the stage's
    counter +1, and none of the later engine calls runs; never cancelled: answered."""
    model, runner = fused
    (response,) = _execute(model, [CancellableRequest(_raw(), cancel_at)])
    assert (runner.generated, runner.ranked) == (generated, ranked)
    counts = _cancelled_counts(model)
    if stage is None:
        assert not response.has_error() and sum(counts.values()) == 0
        assert _outputs(response)["model_version"].tolist() == [[1]]
    else:
        assert response.has_error() and response.error().code == "CANCELLED"
        assert stage in response.error().message()
        assert counts == {s: float(s == stage) for s in model.CANCEL_STAGES}


@pytest.mark.parametrize("interval_us, stage_delay_s, checks", [("0", 0, 3), ("60000000", 0, 0), ("5000", 0.01, 2)])
def test_boundaries_check_cancellation_only_once_the_interval_has_passed(
    fused, artifacts, monkeypatch, interval_us, stage_delay_s, checks
):
    """Each is_cancelled() is an IPC round trip: a boundary asks only once the interval has passed
    since the batch's last check or its arrival (Triton's batcher has just dropped what was
    cancelled in the queue). Interval 0: all three boundaries ask; a minute: none; 5 ms with a
    10 ms pause before each engine call: not on arrival, then before each engine call."""
    _, runner = fused
    monkeypatch.setenv(models.STAGE_DELAY_ENV, str(stage_delay_s))
    model = _model(
        models.RecommenderModel,
        artifacts,
        request_format="raw",
        cancel_check_interval_us=interval_us,
        counter_interval_ms="0",
    )
    request = CancellableRequest(_raw())
    (response,) = _execute(model, [request])
    assert not response.has_error() and request.checks == checks
    assert runner.ranked == 1


def test_counters_are_sent_off_the_request_path_summed_once_per_interval(artifacts, monkeypatch):
    """With a send interval, execute sends no counter (each send is an IPC round trip): the
    batches' values are summed in the stub and each counter goes out once, by the background
    thread once the interval has passed, or at finalize."""
    from oneranker_serving.artifacts import load_selector
    from oneranker_serving.recommender import Recommender

    validator, gen = load_selector(artifacts / "1" / "artifacts")
    monkeypatch.setattr(
        models, "load_system", lambda *a, **k: Recommender.from_validator(CountingRunner(), validator, gen)
    )

    def served(interval_ms: str):
        model = _model(models.RecommenderModel, artifacts, request_format="raw", counter_interval_ms=interval_ms)
        for batch in (1, 2, 1):
            assert not any(r.has_error() for r in _execute(model, [CancellableRequest(_raw()) for _ in range(batch)]))
        return model

    model = served("600000")  # ten minutes: only finalize sends
    counted = (model.requests_metric, model.candidates, model.stage_metrics["generate"], model.stage_metrics["rank"])
    assert [m.sends for m in counted] == [0, 0, 0, 0]
    model.finalize()
    assert [m.sends for m in counted] == [1, 1, 1, 1] and model.requests_metric.value == 4.0

    model = served("200")  # the thread sends them 200 ms after the first batch
    deadline = time.monotonic() + 5
    while model.requests_metric.value < 4.0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert model.requests_metric.value == 4.0 and model.requests_metric.sends < 3  # not one per batch
    model.finalize()


def test_failing_counters_are_logged_and_never_fail_the_answers(fused, monkeypatch):
    model, _ = fused

    def broken(value):
        raise RuntimeError("metrics IPC failed")

    monkeypatch.setattr(model.requests_metric, "increment", broken)
    FakeLogger.errors.clear()
    responses = _execute(model, [CancellableRequest(_raw()) for _ in range(2)])
    assert len(responses) == 2 and not any(r.has_error() for r in responses)
    assert len(FakeLogger.errors) == 1 and "metrics IPC failed" in FakeLogger.errors[0]


def test_cancelling_one_request_of_a_batch_leaves_the_others_answered(fused):
    model, runner = fused
    responses = _execute(model, [CancellableRequest(_raw()), CancellableRequest(_raw(), 3), CancellableRequest(_raw())])
    assert [r.has_error() for r in responses] == [False, True, False]
    assert runner.ranked == 1  # the batch still ranks once for the two live requests
    assert responses[1].error().code == "CANCELLED"
    np.testing.assert_array_equal(_outputs(responses[0])["rec_item_ids"], _outputs(responses[2])["rec_item_ids"])


def test_graph_models_answer_a_request_cancelled_in_the_queue_without_running_it():
    from types import SimpleNamespace

    from oneranker_serving.triton.codec import TensorCodec

    runner = RecordingGraphRunner(num_prefix=2, num_step2=1)
    model = type("Model", (models.GenerationModel,), {"pb": FakePb})()
    model.engine = models.GraphEngine(SimpleNamespace(runner=runner), TensorCodec(FakePb), 2, 1)

    def request(cancel_at):
        tensors = {k: FakeTensor(k, v) for k, v in _generation_request(3, 2, 4, [-1]).items()}
        return CancellableRequest(tensors, cancel_at)

    live, gone = request(None), request(1)
    responses = model.execute([gone, live])
    assert responses[0].error().code == "CANCELLED" and not responses[1].has_error()
    assert len(runner.calls) == 1 and runner.calls[0][1]["hist_actions"].shape[0] == 1  # only the live one ran
