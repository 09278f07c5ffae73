"""Run files: one compressed `.npz` per (source, unit, seed) holding the per-user metrics of the
rows that unit fills, written atomically; the report is rebuilt from whatever files exist.

Path: OUT/runs/<source>/<unit>-seed<N>.npz (model-free units: OUT/runs/<source>/<unit>.npz).

Content (U = test users, n = candidates of the 30-candidate protocol, all arrays row-major):
  meta                      uint8 [bytes] UTF-8 JSON: format, source, unit, seed, rows, protocol
                            hash, test_key (hash of the test users and candidates: every file of a
                            source must agree), dataset info, per-run training record (seconds,
                            stopping), evaluation seconds, commit, machine, pooled AUC per row
  target_price              float32 [U] real price of each test target (sources with real prices)
  <row>/rank                uint8 [U] 0-based rank of the target among the n (ties against it)
                            -> HR@K, NDCG@K (K = 1, 3, 5, 10), exact
  <row>/auc2                uint8 [U] 2 * #(negatives below) + #(ties) -> GAUC = auc2 / (2 (n-1)), exact
  <row>/vndcg               float16 [U, 4] vNDCG@{1,3,5,10} (ground truth only; abs error < 2.5e-4)
  <row>/value5              float32 [U, 2] expected eCPM@5, eGMV@5 of the top 5 of the n (ground truth)
  <row>/gen_pos             int16 [U] position of the target in the full-catalogue generation
                            candidates (-1: absent) -> gen_R@K, gen_NDCG@K (K = 10, 50), exact
  <row>/slate_hit           uint8 [ceil(U/8)] bit-packed: target in the final slate -> slate_HR@10
  <row>/slate_value         float32 [U, 2] expected eCPM@10, eGMV@10 of the slate (ground truth)
  <row>/dc_perm             uint8 [U, n] (DC_ROWS only): the Step-3 ranking rank of the candidate at
                            Step-2 generation rank i -> |rank diff| per candidate, top-K overlap (Fig. 3)
  history/<run>             float16 [steps, terms] training losses per step (terms in meta)
rGMV@5 and slate_rGMV@10 = target_price x the hit; they are not stored twice.
uint8 widens to uint16 where n > 128 (never at the study's n = 30).
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import numpy as np

from .catalogue import GEN_KS, SLATE_K, slate_value
from .stats import KS, PROTOCOL_SLATE_K

FORMAT = 1
SUFFIX = ".npz"


# ------------------------------------------------------------------ names and paths


def unit_name(unit: str, seed: int | None) -> str:
    return unit if seed is None else f"{unit}-seed{seed}"


def unit_path(out: Path, source: str, unit: str, seed: int | None) -> Path:
    return Path(out) / "runs" / source / f"{unit_name(unit, seed)}{SUFFIX}"


def parse_name(stem: str) -> tuple[str, int | None]:
    """'full-seed3' -> ('full', 3); 'popularity' -> ('popularity', None)."""
    unit, sep, seed = stem.rpartition("-seed")
    if sep and seed.isdigit():
        return unit, int(seed)
    return stem, None


def existing_units(out: Path) -> dict[tuple[str, str, int | None], Path]:
    """(source, unit, seed) -> path of every finished run file under OUT/runs (temporary files of
    a unit still being written, or of one that was killed while writing, are not listed)."""
    found = {}
    for path in sorted((Path(out) / "runs").glob(f"*/*{SUFFIX}")):
        if path.name.startswith("."):
            continue
        unit, seed = parse_name(path.stem)
        found[(path.parent.name, unit, seed)] = path
    return found


# ------------------------------------------------------------------ per-user codes


def _small_uint(values: np.ndarray, limit: int) -> np.ndarray:
    return values.astype(np.uint8 if limit < 256 else np.uint16)


def protocol_codes(scores: np.ndarray, samples, has_ground_truth: bool) -> dict[str, np.ndarray]:
    """scores [U, n] (column 0 = target) -> the row's protocol codes (module docstring)."""
    n = scores.shape[1]
    target, neg = scores[:, :1], scores[:, 1:]
    codes = {
        "rank": _small_uint((neg >= target).sum(1), n),
        "auc2": _small_uint(2 * (neg < target).sum(1) + (neg == target).sum(1), 2 * n),
    }
    if has_ground_truth:
        from .stats import protocol_metrics

        m = protocol_metrics(scores, samples, None)
        codes["vndcg"] = np.stack([m[f"vNDCG@{k}"] for k in KS], 1).astype(np.float16)
        codes["value5"] = np.stack([m[f"eCPM@{PROTOCOL_SLATE_K}"], m[f"eGMV@{PROTOCOL_SLATE_K}"]], 1).astype(np.float32)
    return codes


def catalogue_codes(result: dict[str, np.ndarray], prep, split: str = "test") -> dict[str, np.ndarray]:
    """`catalogue.full_catalogue`-shaped result -> gen_pos, slate_hit, slate_value (ground truth)."""
    samples = prep.splits[split]
    target = samples.target[:, None]
    cands, slate = result["candidates"], result["slate"]
    found = (cands == target).any(1)
    codes = {
        "gen_pos": np.where(found, (cands == target).argmax(1), -1).astype(np.int16),
        "slate_hit": np.packbits((slate == target).any(1)),
    }
    value = slate_value(slate, prep, split)
    if value is not None:
        codes["slate_value"] = np.stack(value, 1).astype(np.float32)
    return codes


def dc_codes(generation: np.ndarray, ranking: np.ndarray) -> dict[str, np.ndarray]:
    """Step-2 and Step-3 scores [U, n] of one model -> dc_perm (module docstring): both rankings
    in one permutation per user, which is all Fig. 3 reads."""
    from .stats import candidate_ranks

    by_generation = np.argsort(candidate_ranks(generation), axis=1)  # candidate at generation rank i
    perm = np.take_along_axis(candidate_ranks(ranking), by_generation, 1)
    return {"dc_perm": _small_uint(perm, generation.shape[1])}


def decode_row(
    codes: dict[str, np.ndarray], num_candidates: int, target_price: np.ndarray | None
) -> dict[str, np.ndarray]:
    """A row's codes -> {metric: float64 [U]} with the names `stats.protocol_metrics` and
    `catalogue.catalogue_metrics` use (their values, up to the float16 of vNDCG)."""
    out: dict[str, np.ndarray] = {}
    rank = codes["rank"].astype(np.int64)
    num_users = rank.shape[0]
    for k in KS:
        hit = rank < k
        out[f"HR@{k}"] = hit.astype(np.float64)
        out[f"NDCG@{k}"] = hit / np.log2(rank + 2)
    if "vndcg" in codes:
        for i, k in enumerate(KS):
            out[f"vNDCG@{k}"] = codes["vndcg"][:, i].astype(np.float64)
        out[f"eCPM@{PROTOCOL_SLATE_K}"] = codes["value5"][:, 0].astype(np.float64)
        out[f"eGMV@{PROTOCOL_SLATE_K}"] = codes["value5"][:, 1].astype(np.float64)
    if target_price is not None:
        out[f"rGMV@{PROTOCOL_SLATE_K}"] = target_price.astype(np.float64) * (rank < PROTOCOL_SLATE_K)
    out["GAUC"] = codes["auc2"].astype(np.float64) / (2 * (num_candidates - 1))
    if "gen_pos" in codes:
        pos = codes["gen_pos"].astype(np.int64)
        for k in GEN_KS:
            hit = (pos >= 0) & (pos < k)
            out[f"gen_R@{k}"] = hit.astype(np.float64)
            out[f"gen_NDCG@{k}"] = np.where(hit, 1.0 / np.log2(np.maximum(pos, 0) + 2), 0.0)
        in_slate = np.unpackbits(codes["slate_hit"], count=num_users).astype(bool)
        out[f"slate_HR@{SLATE_K}"] = in_slate.astype(np.float64)
        if "slate_value" in codes:
            out[f"slate_eCPM@{SLATE_K}"] = codes["slate_value"][:, 0].astype(np.float64)
            out[f"slate_eGMV@{SLATE_K}"] = codes["slate_value"][:, 1].astype(np.float64)
        if target_price is not None:
            out[f"slate_rGMV@{SLATE_K}"] = target_price.astype(np.float64) * in_slate
    return out


def decode_dc(codes: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """-> {"abs_diff": [U, n] |Step-2 rank - Step-3 rank| of each candidate (in generation order),
    "overlap": [U, n] top-K overlap for K = 1..n}: `stats.rank_agreement`'s values (abs_diff up to
    the order of the candidates within a user)."""
    rr = codes["dc_perm"].astype(np.int64)
    n = rr.shape[1]
    rg = np.broadcast_to(np.arange(n), rr.shape)
    overlap = np.stack([((rg < k) & (rr < k)).sum(1) / k for k in range(1, n + 1)], axis=1)
    return {"abs_diff": np.abs(rg - rr), "overlap": overlap}


def history_array(history: list[dict]) -> tuple[list[str], np.ndarray]:
    """train_history rows -> (loss terms, float16 [steps, terms]); validation values live in the
    stopping record instead."""
    if not history:
        return [], np.zeros((0, 0), dtype=np.float16)
    terms = [k for k in history[0] if k != "step" and k != "param_checksums" and not k.startswith("valid_")]
    return terms, np.array([[row.get(t, np.nan) for t in terms] for row in history], dtype=np.float16)


# ------------------------------------------------------------------ reading and writing


def write_unit(path: Path, meta: dict, arrays: dict[str, np.ndarray]) -> Path:
    """Write the run file atomically: a hidden temporary file in the same folder, renamed into
    place only once complete, removed if writing fails. A process killed before the rename
    leaves no run file (at most a hidden temporary that `clean_temporaries` removes)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{os.getpid()}.tmp"
    payload = {"meta": np.frombuffer(json.dumps(meta, sort_keys=True).encode(), dtype=np.uint8), **arrays}
    try:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def read_unit(path: Path) -> tuple[dict, dict[str, np.ndarray]]:
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(arrays.pop("meta").tobytes().decode())
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path}: run file format {meta.get('format')}, this code reads {FORMAT}")
    return meta, arrays


def row_codes(arrays: dict[str, np.ndarray], row: str) -> dict[str, np.ndarray]:
    prefix = f"{row}/"
    return {k[len(prefix) :]: v for k, v in arrays.items() if k.startswith(prefix)}


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_temporaries(folder: Path) -> list[Path]:
    """Remove hidden temporaries left by killed writers of this host (their pid is gone)."""
    removed = []
    for tmp in Path(folder).glob("runs/*/.*.tmp"):
        pid = tmp.name.rsplit(".", 2)[-2]
        if pid.isdigit() and not _pid_alive(int(pid)):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


class UnitLock:
    """`<run file>.lock` held while a unit runs (O_EXCL create), so that two `run --missing`
    processes on one checkout never train the same unit. A lock whose process is gone (same host)
    is stale and taken over."""

    def __init__(self, path: Path):
        self.path = Path(str(path) + ".lock")
        self.held = False

    def acquire(self) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                try:
                    host, pid = self.path.read_text().split()
                except (OSError, ValueError):
                    return False
                if host == socket.gethostname() and not _pid_alive(int(pid)):
                    self.path.unlink(missing_ok=True)
                    continue
                return False
            with os.fdopen(fd, "w") as f:
                f.write(f"{socket.gethostname()} {os.getpid()}")
            self.held = True
            return True
        return False

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()
