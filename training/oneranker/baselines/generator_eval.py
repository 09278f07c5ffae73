"""OneRanker's generator on HSTU's MovieLens protocol: full-catalogue ranking by the exact
log-probability of every item's semantic-ID path (= beam search at unlimited width).

Data flow (U users, I items, D = SID depth, K codes per level, H = 8 task heads, L <= 200):

    SeqData (data.movielens)  --`to_dataset`-->  schema.Dataset: every rating one ACTION_CLICK
        event (the HSTU protocol: every rating an interaction), item = dense movie index,
        one constant profile token, no context, bid 1, no price, no advertiser/category.
    `tokenizer.fit_semantic_ids` on that Dataset: codes from TRAINING rows only
        (`splits.training_rows_mask` = rows before each user's second-to-last event = exactly
        the protocol's train portion)                                   -> item paths [I, D]
    model = `pipeline.build_model` with `use_ranker=False` (generator only: Steps 1-2)
    training (`train_generator_mtp`, this module's own thin loop; the project's train.py is
    being reworked by the model issue): per epoch `samples_per_user` cut rows per user, drawn
    uniformly among the user's train rows with a non-empty history; history = the up-to-200
    events before the cut; head targets from a future window of `future_window` train rows
    starting at the cut, with the funnel layout of `data.splits` on a log where every event is
    a click (no conversions): heads 0 and 2 = the cut's item, 1 and 3 = the next one, 4 and 5
    (conversions) none, 6 and 7 (value) = independent uniform draws among the window (value-
    weighted sampling with a constant bid is uniform). Loss = `losses.mtp_loss` of
    `model.path_log_probs` (the generator-only MTP objective of train.py).
    evaluation: per user `encode_user` -> decoder_state [B, H, Z]; `all_item_log_probs` ->
    log P_h(path_i) for every item i and head h [B, H, I] (vectorised over items: level l's
    log-softmax depends on the user and the item's prefix only, so it is computed once per
    distinct prefix) -> streams as serving forms them
    (`selection.stream_matrix`: 6 interest streams + 1 bagged value stream = mean of the 2
    value heads' log-probs) -> scores [B, I] -> `movielens.full_rank`.

Which stream ranks (declared before any run): the VALUE stream (bagged heads 6, 7 =
`model.generation_scores`). Why: it is the one stream the paper makes the generator's output
(the value-aware task absorbs the interest tasks through the causal task order), it is what the
project's `evaluate.py` reports as the "generation" scorer, and it is trained on every source
(the conversion heads 4, 5 never receive a target on MovieLens, so a max over all streams would
let untrained heads in). Also reported, secondary: the max over the streams that receive
targets here (interest heads 0-3 and the value stream), i.e. serving's merge (best log-prob
wins) at unlimited beam width over the trained streams.

Stopping rule (declared): validation NDCG@10 of the value stream (seen items masked) after every
epoch, `patience` epochs, at most `max_epochs` and `max_minutes` of wall time, best restored.
"""

from __future__ import annotations

import math
import sys
from dataclasses import asdict, dataclass

import numpy as np
import torch

from oneranker_serving.selection import stream_matrix

from .. import losses
from ..config import ACTION_CLICK, ExperimentConfig, ModelConfig
from ..data import movielens as ml
from ..data.schema import Catalog, Dataset, EventLog
from .epochs import fit_by_epochs
from .hstu import _fast_bias_tables

INTEREST_HEADS_WITH_TARGETS = (0, 1, 2, 3)  # click-funnel heads; 4, 5 (conversion) get none here


@dataclass
class GeneratorConfig:
    """Written down before any run. Model sizes = the project's `small` preset (d 64, 2 heads,
    2 G-layers, 2 Step-2 layers, 6 + 2 task heads, 32 fake items; tokenizer 3 x 16 codes +
    16-slot collision suffix); history 200 as in the HSTU protocol."""

    seed: int = 0
    num_threads: int = 1
    max_minutes: float = 60.0
    max_epochs: int = 30
    patience: int = 3
    samples_per_user: int = 4  # cut points per user per epoch (a fresh draw every epoch)
    future_window: int = 24  # DataConfig.mtp_future_window
    batch_size: int = 128
    lr: float = 1e-3  # constant after `warmup_steps` (no schedule tied to a budget)
    warmup_steps: int = 100
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    eval_batch_size: int = 64
    max_len: int = ml.MAX_HISTORY
    decoder: str = ModelConfig.decoder  # the shipped default; the decoder benchmark sets both


def experiment_config(cfg: GeneratorConfig) -> ExperimentConfig:
    """The OneRanker `small` preset, generator only, history 200, one constant profile token."""
    exp = ExperimentConfig(name="ml-generator")
    exp.data.num_profile_features, exp.data.num_context_features = 1, 0
    exp.data.max_history = exp.model.max_history = cfg.max_len
    exp.serve.length_buckets = (cfg.max_len // 4, cfg.max_len // 2, cfg.max_len)
    exp.model.use_ranker = False  # "OneRanker S2": Steps 1-2, MTP only
    exp.model.position_buckets = cfg.max_len + 1
    exp.tokenizer.seed = cfg.seed
    exp.model.decoder = cfg.decoder
    return exp.validate()


def to_dataset(data: ml.SeqData, exp: ExperimentConfig) -> Dataset:
    """SeqData -> schema.Dataset (module docstring); ad index = dense item index."""
    I = data.num_items
    catalog = Catalog(
        ad_ids=np.arange(I, dtype=np.int64),
        ad_advertiser=np.zeros(I, np.int64),
        ad_category=np.zeros(I, np.int64),
        ad_bid=np.ones(I, np.float32),
        ad_price=np.zeros(I, np.float32),
        content_ids=np.zeros(0, np.int64),
        num_advertisers=1,
        num_categories=1,
    )
    user = np.repeat(np.arange(data.num_users), data.lengths).astype(np.int64)
    log = EventLog(
        user=user,
        item=data.items.astype(np.int64),
        action=np.full(user.size, ACTION_CLICK, np.int64),
        timestamp=data.timestamps.astype(np.int64),
        profile=np.zeros((data.num_users, exp.data.num_profile_features), np.int64),
        num_users=data.num_users,
    )
    return Dataset(name=data.name, catalog=catalog, log=log, label_sources={"click": "every rating"})


# ----------------------------------------------------------------------------- log-probs


def distinct_prefixes(paths: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per level l: (prefixes [P_l, l], inverse [I]): the P_l distinct prefixes paths[:, :l] and
    each item's row among them (level 0: one empty prefix)."""
    out = [(paths.new_zeros(1, 0), torch.zeros(paths.shape[0], dtype=torch.long))]
    for level in range(1, paths.shape[1]):
        out.append(torch.unique(paths[:, :level], dim=0, return_inverse=True))
    return out


def all_item_log_probs(
    decoder, state: torch.Tensor, paths: torch.Tensor, prefixes=None, constants=None, chunk: int = 16
) -> torch.Tensor:
    """log P_h(path_i) for every item: decoder state [B, H, Z], paths [I, D] -> [B, H, I].

    Same numbers as `decoder.path_log_probs(state, paths.expand(B, I, D))` without a [B, H, I, K]
    tensor per level: the level-l log-softmax is computed once per distinct prefix [B, H, P_l, K]
    and gathered per item; users go `chunk` at a time (the conditioned decoder's hidden layer is
    [chunk, H, P_l, hidden])."""
    prefixes = distinct_prefixes(paths) if prefixes is None else prefixes
    constants = decoder.constants() if constants is None else constants
    out = []
    for start in range(0, state.shape[0], chunk):
        part = state[start : start + chunk]
        total = 0.0
        for level, (prefix, inverse) in enumerate(prefixes):
            logits = decoder.level_logits(part, level, prefix.view(1, 1, *prefix.shape), constants)  # [b, H, P|1, K]
            logp = torch.log_softmax(logits, dim=-1)
            total = total + logp[:, :, inverse, paths[:, level]]  # [b, H, I]
        out.append(total)
    return torch.cat(out)


def stream_scores(head_logp: torch.Tensor, num_interest: int, num_value: int) -> dict[str, torch.Tensor]:
    """[B, H, I] -> {"value": [B, I] bagged value stream, "max_streams": [B, I] max over the
    trained streams} (module docstring; stream layout = `selection.stream_matrix`)."""
    mat = torch.as_tensor(stream_matrix(num_interest, num_value), dtype=head_logp.dtype)  # [S, H]
    streams = torch.einsum("sh,bhi->bsi", mat, head_logp)  # [B, S, I]
    trained = list(INTEREST_HEADS_WITH_TARGETS) + [num_interest]  # the value stream's row
    return {"value": streams[:, num_interest], "max_streams": streams[:, trained].max(1).values}


# ----------------------------------------------------------------------------- model inputs


class GeneratorData:
    """Everything the generator needs on one SeqData: config, Dataset, semantic IDs, paths."""

    def __init__(self, data: ml.SeqData, cfg: GeneratorConfig):
        from ..tokenizer import fit_semantic_ids

        self.data, self.cfg = data, cfg
        self.exp = experiment_config(cfg)
        self.dataset = to_dataset(data, self.exp)
        self.sids = fit_semantic_ids(self.dataset, self.exp.tokenizer)
        self.paths = torch.from_numpy(self.sids.ad_codes.astype(np.int64))  # [I, D]
        self.bounds = ml.split_bounds(data)

    def batch(self, end_rows: np.ndarray) -> dict[str, torch.Tensor]:
        """Model inputs for queries whose history ends before rows `end_rows` [B] (the target /
        cut rows): up to max_len previous events of the same user."""
        d = self.data
        user = np.searchsorted(d.offsets, end_rows, side="right") - 1
        start = np.maximum(d.offsets[user], end_rows - self.cfg.max_len)
        length = end_rows - start
        width = max(int(length.max()), 1)
        idx = start[:, None] + np.arange(width)[None, :]
        valid = np.arange(width)[None, :] < length[:, None]
        idx = np.where(valid, idx, 0)
        codes = np.where(valid[..., None], self.sids.ad_codes[d.items[idx]], 0)
        dt = np.where(valid, d.timestamps[end_rows][:, None] - d.timestamps[idx], 0).astype(np.float32)
        return {
            "user_features": torch.zeros(len(end_rows), 1, dtype=torch.long),
            "hist_sids": torch.from_numpy(codes.astype(np.int64)),
            "hist_actions": torch.from_numpy(np.where(valid, ACTION_CLICK, 0).astype(np.int64)),
            "hist_dt": torch.from_numpy(dt),
            "hist_len": torch.from_numpy(length.astype(np.int64)),
        }

    def head_targets(self, cut_rows: np.ndarray, rng) -> np.ndarray:
        """[B, H] item index per head (-1 = none), the click-funnel layout of the module
        docstring; the window never reaches a validation/test row."""
        d, T = self.data, self.exp.model.num_task_tokens
        user = np.searchsorted(d.offsets, cut_rows, side="right") - 1
        limit = np.minimum(self.bounds["train_end"][user], cut_rows + self.cfg.future_window)
        out = np.full((cut_rows.size, T), -1, dtype=np.int64)
        first = d.items[cut_rows]
        has_second = cut_rows + 1 < limit
        second = np.where(has_second, d.items[np.minimum(cut_rows + 1, d.items.size - 1)], -1)
        out[:, 0], out[:, 2], out[:, 1], out[:, 3] = first, first, second, second
        size = limit - cut_rows  # >= 1: the cut row itself is a train row
        for h in range(self.exp.model.num_interest_tokens, T):
            out[:, h] = d.items[cut_rows + (rng.random(cut_rows.size) * size).astype(np.int64)]
        return out

    def cut_rows(self, rng) -> np.ndarray:
        """samples_per_user cut rows per user among train rows with >= 1 earlier event."""
        d = self.data
        first = d.offsets[:-1] + 1
        n = self.bounds["train_end"] - first  # candidate cuts per user
        users = np.flatnonzero(n > 0)
        k = self.cfg.samples_per_user
        draw = (rng.random((users.size, k)) * n[users, None]).astype(np.int64)
        return (first[users, None] + draw).reshape(-1)


def build(data: ml.SeqData, cfg: GeneratorConfig):
    from ..pipeline import build_model

    torch.manual_seed(cfg.seed)
    gd = GeneratorData(data, cfg)
    model = build_model(gd.exp, gd.sids, 1, 1)
    for layer in model.g_layers:  # same parameters and forward; the bias tables' backward is
        _fast_bias_tables(layer)  # a bincount instead of a sort over B x N x N indices
    model.ml = gd  # evaluation needs the item paths and the input builder
    return model


def train_generator_mtp(model, gd: GeneratorData, optimizer, rows: np.ndarray, rng, step: int) -> float:
    """One generator-only MTP step (train.py's `mtp` term alone) on cut rows [B]."""
    cfg = gd.cfg
    lr = cfg.lr * min(1.0, (step + 1) / cfg.warmup_steps)
    for group in optimizer.param_groups:
        group["lr"] = lr
    batch = gd.batch(rows)
    targets = gd.head_targets(rows, rng)
    valid = torch.from_numpy(targets >= 0)
    paths = torch.from_numpy(np.where(targets[..., None] >= 0, gd.sids.ad_codes[np.maximum(targets, 0)], -1))
    enc = model.encode_user(
        batch["user_features"], batch["hist_sids"], batch["hist_actions"], batch["hist_dt"], batch["hist_len"]
    )
    head_logp = model.path_log_probs(enc.decoder_state, paths.unsqueeze(2))[..., 0]  # each head its own target [B, H]
    loss = losses.mtp_loss(head_logp, valid)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    optimizer.step()
    return float(loss.detach())


@torch.no_grad()
def evaluate(model, inputs: ml.EvalInputs, mask_seen: bool = True, stream: str = "value") -> dict:
    """Full-catalogue ranking by the `stream` score ("value" or "max_streams"), plus the
    other stream's metrics under "other_streams"."""
    gd: GeneratorData = model.ml
    model.eval()
    constants = model.decoder_constants()
    prefixes = distinct_prefixes(gd.paths)
    mcfg = model.cfg
    end = inputs.target_row  # the history is the up-to-200 rows before the target row
    other = "max_streams" if stream == "value" else "value"
    other_ranks: list[tuple[np.ndarray, np.ndarray]] = []

    def scores(index):
        batch = gd.batch(end[index])
        enc = model.encode_user(
            batch["user_features"], batch["hist_sids"], batch["hist_actions"], batch["hist_dt"], batch["hist_len"]
        )
        head = all_item_log_probs(model.decoder, enc.decoder_state, gd.paths, prefixes, constants)  # [b, H, I]
        s = stream_scores(head, mcfg.num_interest_tokens, mcfg.num_value_tokens)
        other_ranks.append(ml.target_ranks(s[other], inputs.target[index], inputs.hist[index] if mask_seen else None))
        return s[stream]

    main = ml.full_rank(scores, inputs, batch_size=gd.cfg.eval_batch_size, mask_seen=mask_seen)
    r_un = np.concatenate([r[0] for r in other_ranks])
    r_ma = np.concatenate([r[1] for r in other_ranks])
    main["other_streams"] = {
        other: {k: float(v.mean()) for k, v in ml.hits_from_ranks(r_ma).items()},
        other + "_unmasked": {k: float(v.mean()) for k, v in ml.hits_from_ranks(r_un).items()},
    }
    return main


def fit(data: ml.SeqData, cfg: GeneratorConfig, progress: bool | None = None, max_steps_per_epoch: int = 0) -> dict:
    """Train under the declared stopping rule (module docstring); same result keys as
    `hstu.fit`."""
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.num_threads)
    rng = np.random.default_rng(cfg.seed)
    if progress is None:
        progress = sys.stderr.isatty()
    model = build(data, cfg)
    gd: GeneratorData = model.ml
    valid = ml.eval_inputs(data, "valid", cfg.max_len)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps, steps_per_epoch = 0, 0

    def run_epoch(epoch: int) -> list[float]:
        nonlocal steps, steps_per_epoch
        rows = rng.permutation(gd.cut_rows(rng))
        steps_per_epoch = math.ceil(rows.size / cfg.batch_size)
        if max_steps_per_epoch:
            steps_per_epoch = min(steps_per_epoch, max_steps_per_epoch)
        losses = []
        for s in range(steps_per_epoch):
            batch_rows = rows[s * cfg.batch_size : (s + 1) * cfg.batch_size]
            losses.append(train_generator_mtp(model, gd, optimizer, batch_rows, rng, steps))
            steps += 1
        return losses

    def validate() -> dict:
        res = evaluate(model, valid)
        val = res["metrics"]
        return {
            "val_ndcg@10": val["ndcg@10"],
            "val_hr@10": val["hr@10"],
            "val_max_streams_ndcg@10": res["other_streams"]["max_streams"]["ndcg@10"],
        }

    loop = fit_by_epochs(
        model,
        run_epoch,
        validate,
        cfg.max_epochs,
        cfg.patience,
        cfg.max_minutes,
        f"generator {data.name} seed {cfg.seed}",
        progress,
    )
    config = asdict(cfg)
    config["experiment"] = gd.exp.to_dict()
    config["semantic_ids"] = {"version": gd.sids.version, "report": gd.sids.report_}
    return {
        "model": model,
        **loop,
        "steps": steps,
        "steps_per_epoch": steps_per_epoch,
        "config": config,
    }
