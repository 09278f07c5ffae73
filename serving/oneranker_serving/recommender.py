"""The Recommender, engine-agnostic (numpy + an `EngineRunner`): the Triton models and the
in-process reference both run exactly this code.

    requests (raw) -> validate + tokenize (features.tokenize_request)   per request, errors kept
      -> pad the valid ones to one length bucket -> runner.generate      once per batch
         decoder_state [B, H, Z], kv (opaque, stays inside the runner)
      -> selection.beam_search + merge_candidates                       per request
      -> candidates padded to the batch's largest n -> runner.rank      once per batch
      -> top-k by value score                                           per request
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from .config import ServeConfig
from .selection import beam_search, merge_candidates, top_k
from .tables import GenerationTables, ItemTables
from .tokenize import (
    HistoryPolicy,
    RequestError,
    UserTokens,
    bucket_for,
    pad_batch,
    pad_exclusions,
    tokenize_request,
)


class RequestCancelled(Exception):
    """The client cancelled the request (or its deadline passed) before a stage ran; the stage
    is skipped for it."""


# Called between generation and ranking with the batch's requests: True where the request is
# still wanted (Triton: not `request.is_cancelled()`). When none is, ranking does not run.
StillWanted = Callable[[list], list]


class EngineRunner(Protocol):
    def generate(self, inputs: dict[str, np.ndarray]) -> tuple[np.ndarray, Any]:
        """Generator inputs -> (decoder_state [B, H, Z] float32, kv handle)."""

    def rank(
        self, kv: Any, hist_len: np.ndarray, cand_sids: np.ndarray, cand_attrs: np.ndarray, cand_bid: np.ndarray
    ) -> np.ndarray:
        """kv handle + candidates [B, n, ...] -> scores [B, n] float32."""


class CascadeRunner:
    """EngineRunner of the cascade baseline over two runners of any engine: generate() encodes the
    user twice, the generator for the decoder state (candidates) and the independent ranker for its
    own K/V; rank() and release() are the ranker's. The generator's KV is computed and dropped."""

    def __init__(self, generator: EngineRunner, ranker: EngineRunner):
        self.generator, self.ranker = generator, ranker

    def generate(self, inputs):
        decoder_state, unused_kv = self.generator.generate(inputs)
        release = getattr(self.generator, "release", None)
        if release is not None:
            release(unused_kv)
        _, kv = self.ranker.generate(inputs)  # the ranker re-encodes the history
        return decoder_state, kv

    def rank(self, kv, hist_len, cand_sids, cand_attrs, cand_bid):
        return self.ranker.rank(kv, hist_len, cand_sids, cand_attrs, cand_bid)

    def release(self, kv) -> None:
        release = getattr(self.ranker, "release", None)
        if release is not None:
            release(kv)


@dataclass
class Request:
    user_features: np.ndarray
    item_ids: np.ndarray
    actions: np.ndarray
    timestamps: np.ndarray
    request_time: int
    top_k: int | None = None
    num_candidates: int | None = None
    beam_width: int | None = None
    exclude_item_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))


@dataclass
class Response:
    item_ids: np.ndarray  # [k] int64
    scores: np.ndarray  # [k] float32 value score (R-Decoder)
    gen_logp: np.ndarray  # [k] float32 generation log-probability
    source_head: np.ndarray  # [k] int32: 0-5 interest heads, 6 the bagged value stream
    num_candidates: int = 0
    history_unknown: int = 0  # history events served as the OOV token
    history_dropped: int = 0  # oldest history events cut beyond max_history


@dataclass
class StageTimes:
    generate_s: float = 0.0
    select_s: float = 0.0
    rank_s: float = 0.0
    candidates: int = 0


def _option(value, default: int, low: int, high: int, name: str) -> int:
    if value is None:
        return default
    value = int(value)
    if not low <= value <= high:
        raise RequestError(f"{name}={value} is out of range [{low}, {high}]")
    return value


class RequestValidator:
    """Validates and tokenizes one raw request against a model version's item tables and limits;
    what the preprocess step runs, with no engine behind it."""

    def __init__(
        self,
        tables: ItemTables,
        serve: ServeConfig,
        feature_cardinality: int,
        num_user_features: int,
        oov_code: int | None = None,
    ):
        self.tables, self.serve = tables, serve
        self.feature_cardinality, self.num_user_features = feature_cardinality, num_user_features
        self.policy = HistoryPolicy(
            feature_cardinality, serve.max_history, oov_code, serve.oov_policy, serve.timestamp_skew_s
        )

    def validate(self, req: Request) -> tuple[UserTokens, int, int, int, np.ndarray]:
        """-> (tokens, top_k, num_candidates, beam_width, excluded dense ad indices)."""
        s = self.serve
        feats = np.asarray(req.user_features)
        if feats.reshape(-1).shape[0] != self.num_user_features:
            raise RequestError(f"user_features must have {self.num_user_features} values, got {feats.size}")
        k = _option(req.top_k, s.top_k, 1, s.max_top_k, "top_k")
        n = _option(req.num_candidates, s.num_candidates, 1, s.max_num_candidates, "num_candidates")
        w = _option(req.beam_width, s.beam_width, 1, s.max_beam_width, "beam_width")
        if k > n:
            raise RequestError(f"top_k={k} is larger than num_candidates={n}")
        tokens = tokenize_request(
            self.tables,
            req.user_features,
            req.item_ids,
            req.actions,
            req.timestamps,
            req.request_time,
            self.policy,
            now=time.time(),
        )
        exclude_ids = np.asarray(req.exclude_item_ids, dtype=np.int64).reshape(-1)
        if exclude_ids.size > s.max_exclude_items:
            raise RequestError(f"exclude_item_ids has {exclude_ids.size} ids, the maximum is {s.max_exclude_items}")
        exclude = self.tables.ad_index(exclude_ids)
        return tokens, k, n, w, exclude[exclude >= 0]


class Recommender:
    """validate -> generate (once per batch) -> beam search (per request) -> rank (once per batch)."""

    def __init__(
        self,
        runner: EngineRunner,
        tables: ItemTables,
        gen_tables: GenerationTables,
        serve: ServeConfig,
        feature_cardinality: int,
        num_user_features: int,
        oov_code: int | None = None,
    ):
        self.runner, self.gen_tables = runner, gen_tables
        self.validator = RequestValidator(tables, serve, feature_cardinality, num_user_features, oov_code)
        self.tables, self.serve = tables, serve

    @classmethod
    def from_validator(cls, runner: EngineRunner, validator: RequestValidator, gen_tables: GenerationTables):
        return cls(
            runner,
            validator.tables,
            gen_tables,
            validator.serve,
            validator.feature_cardinality,
            validator.num_user_features,
            validator.policy.oov_code,
        )

    def validate(self, req: Request):
        return self.validator.validate(req)

    def recommend(self, requests: list[Request], times: StageTimes | None = None) -> list[Response | RequestError]:
        """One batch of raw requests; an invalid request yields its RequestError without
        affecting the others."""
        results: list[Any] = [None] * len(requests)
        parsed: list[Parsed] = []
        for i, req in enumerate(requests):
            try:
                parsed.append(Parsed(i, *self.validate(req)))
            except RequestError as err:
                results[i] = err
        for p, out in zip(parsed, self.recommend_parsed(parsed, times)):
            results[p.slot] = out
        return results

    def _release(self, kv) -> None:
        release = getattr(self.runner, "release", None)
        if release is not None:
            release(kv)

    @staticmethod
    def _cancelled_rows(parsed: list[Parsed], still_wanted: StillWanted | None) -> list[bool] | None:
        """None when every request is still wanted, else per row True = cancelled."""
        if still_wanted is None:
            return None
        wanted = still_wanted(parsed)
        return None if all(wanted) else [not w for w in wanted]

    def recommend_parsed(
        self, parsed: list[Parsed], times: StageTimes | None = None, still_wanted: StillWanted | None = None
    ) -> list[Response | RequestError | RequestCancelled]:
        """Validated, tokenized requests -> responses (generate once, select per request, rank
        once). `still_wanted` is asked between generation and ranking: a cancelled request gets
        RequestCancelled, and when all are, ranking is skipped."""
        times = times if times is not None else StageTimes()
        if not parsed:
            return []
        users = [p.tokens for p in parsed]
        length = bucket_for(max(u.length for u in users), self.serve.length_buckets)
        inputs = pad_batch(users, length)
        t0 = time.perf_counter()
        decoder_state, kv = self.runner.generate(inputs)
        cancelled = self._cancelled_rows(parsed, still_wanted)
        if cancelled is not None and all(cancelled):
            self._release(kv)
            return [RequestCancelled("cancelled before ranking") for _ in parsed]
        t1 = time.perf_counter()
        selected = [
            merge_candidates(
                *beam_search(decoder_state[row], self.gen_tables, p.beam_width), p.num_candidates, p.exclude
            )
            for row, p in enumerate(parsed)
        ]
        t2 = time.perf_counter()
        width = max(1, max(len(sel[0]) for sel in selected))
        cand = np.zeros((len(parsed), width), dtype=np.int64)
        for row, sel in enumerate(selected):
            cand[row, : len(sel[0])] = sel[0]
        cand_sids, cand_attrs, cand_bid = self.tables.candidate_features(cand)
        scores = self.runner.rank(kv, inputs["hist_len"], cand_sids, cand_attrs, cand_bid)
        self._release(kv)
        t3 = time.perf_counter()
        times.generate_s += t1 - t0
        times.select_s += t2 - t1
        times.rank_s += t3 - t2
        out: list[Any] = []
        for row, p in enumerate(parsed):
            ads, lp, head = selected[row]
            if cancelled is not None and cancelled[row]:
                out.append(RequestCancelled("cancelled before ranking"))
                continue
            if len(ads) == 0:
                out.append(RequestError("no candidate left after exclusions"))
                continue
            sc = scores[row, : len(ads)]
            best = top_k(sc, p.top_k)
            times.candidates += len(ads)
            out.append(
                Response(
                    item_ids=self.tables.ad_ids[ads[best]].astype(np.int64),
                    scores=sc[best].astype(np.float32),
                    gen_logp=lp[best].astype(np.float32),
                    source_head=head[best].astype(np.int32),
                    num_candidates=len(ads),
                    history_unknown=p.tokens.unknown,
                    history_dropped=p.tokens.dropped,
                )
            )
        return out


class GraphRecommender(Recommender):
    """validate -> generation graph (beam search inside) -> ranking graph (top-k inside): two
    engine calls per batch, nothing back on the host between them.

    The runner is an OrtGraphRunner / TorchGraphRunner: generate(inputs, knobs) -> (candidates,
    kv); rank(kv, hist_len, candidates, top_k) -> rec_* [B, k], rec_count [B] and num_generated [B]
    (candidates the generation graph kept)."""

    def __init__(self, runner, validator: RequestValidator):
        super().__init__(
            runner,
            validator.tables,
            None,
            validator.serve,
            validator.feature_cardinality,
            validator.num_user_features,
            validator.policy.oov_code,
        )

    @staticmethod
    def knobs(parsed: list[Parsed]) -> dict[str, np.ndarray]:
        """Per-request knobs of a batch: beam_width, num_candidates, top_k [B]; exclude_idx [B, E]
        padded with -1 to the batch's longest list (E >= 1)."""
        return {
            "beam_width": np.array([p.beam_width for p in parsed], np.int64),
            "num_candidates": np.array([p.num_candidates for p in parsed], np.int64),
            "exclude_idx": pad_exclusions([p.exclude for p in parsed]),
            "top_k": np.array([p.top_k for p in parsed], np.int64),
        }

    def recommend_parsed(
        self, parsed: list[Parsed], times: StageTimes | None = None, still_wanted: StillWanted | None = None
    ) -> list[Response | RequestError | RequestCancelled]:
        times = times if times is not None else StageTimes()
        if not parsed:
            return []
        users = [p.tokens for p in parsed]
        inputs = pad_batch(users, bucket_for(max(u.length for u in users), self.serve.length_buckets))
        knobs = self.knobs(parsed)
        top = knobs.pop("top_k")
        t0 = time.perf_counter()
        cands, kv = self.runner.generate(inputs, knobs)
        cancelled = self._cancelled_rows(parsed, still_wanted)
        if cancelled is not None and all(cancelled):
            self._release(kv)
            return [RequestCancelled("cancelled before ranking") for _ in parsed]
        t1 = time.perf_counter()
        rec = self.runner.rank(kv, inputs["hist_len"], cands, top)
        self._release(kv)
        t2 = time.perf_counter()
        times.generate_s += t1 - t0
        times.rank_s += t2 - t1
        generated = rec["num_generated"]
        out: list[Any] = []
        for row in range(len(parsed)):
            n = int(rec["rec_count"][row])
            if cancelled is not None and cancelled[row]:
                out.append(RequestCancelled("cancelled before ranking"))
                continue
            if n == 0:
                out.append(RequestError("no candidate left after exclusions"))
                continue
            times.candidates += int(generated[row])
            out.append(
                Response(
                    item_ids=rec["rec_item_ids"][row, :n].astype(np.int64),
                    scores=rec["rec_scores"][row, :n].astype(np.float32),
                    gen_logp=rec["rec_gen_logp"][row, :n].astype(np.float32),
                    source_head=rec["rec_source_head"][row, :n].astype(np.int32),
                    num_candidates=int(generated[row]),
                    history_unknown=parsed[row].tokens.unknown,
                    history_dropped=parsed[row].tokens.dropped,
                )
            )
        return out


@dataclass
class Parsed:
    """A validated request: its slot in the batch, tokens and options."""

    slot: int
    tokens: UserTokens
    top_k: int
    num_candidates: int
    beam_width: int
    exclude: np.ndarray  # dense ad indices
