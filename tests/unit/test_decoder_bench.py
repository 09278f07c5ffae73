"""The decoder benchmark's report and its declared decision rule, on hand-built run files: the
default follows the margin, waits for every seed, and the summary holds the issue's schema."""

from __future__ import annotations

import json

import numpy as np
import pytest

from oneranker_perf import decoder_bench as db

USERS = 400


def write_run(out, source, decoder, seed, val_rate, test_rate=0.2):
    rng = np.random.default_rng(seed * 10 + len(source) + len(decoder))

    def hits(rate):  # exactly round(rate * USERS) hits, in random positions
        h = np.zeros(USERS, bool)
        h[rng.permutation(USERS)[: round(rate * USERS)]] = True
        return h

    record = {
        "source": source,
        "decoder": decoder,
        "seed": seed,
        "train_minutes": 1.0,
        "epochs": 3,
        "best_epoch": 2,
        "stopped_by": "patience",
        "users": USERS,
        "hits": {
            "val_recall@50": db.pack_hits(hits(val_rate)),
            "test_recall@50": db.pack_hits(hits(test_rate)),
            "test_hr@5": db.pack_hits(hits(test_rate / 2)),
        },
    }
    path = db.run_path(out, source, decoder, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record))


@pytest.mark.parametrize(
    ("conditioned", "factorized", "expected"),
    [(0.30, 0.305, "conditioned"), (0.30, 0.32, "factorized"), (0.35, 0.30, "conditioned")],
)
def test_the_default_follows_the_declared_margin(tmp_path, conditioned, factorized, expected):
    for seed in db.SEEDS:
        write_run(tmp_path, "ml1m", "conditioned", seed, conditioned)
        write_run(tmp_path, "ml1m", "factorized", seed, factorized)
    summary = db.report(tmp_path)
    assert summary["decision"]["default"] == expected
    diff = summary["decision"]["val_recall@50_conditioned_minus_factorized"]
    assert diff == pytest.approx(conditioned - factorized, abs=1e-9)
    cell = summary["small"]["ml1m"]["conditioned"]["val_recall@50"]
    assert cell[0] == pytest.approx(conditioned, abs=1e-5) and cell[1] <= cell[0] <= cell[2]
    assert set(summary["small"]["ml1m"]["factorized"]) >= {"val_recall@50", "test_recall@50", "test_hr@5"}
    assert (tmp_path / "results.md").read_text().count("| ml1m |") == 2


def test_the_decision_waits_for_every_seed_and_lists_what_is_missing(tmp_path):
    for seed in db.SEEDS:
        write_run(tmp_path, "ml1m", "factorized", seed, 0.3)
    write_run(tmp_path, "ml1m", "conditioned", 0, 0.1)
    summary = db.report(tmp_path)
    assert summary["decision"]["default"] == "pending"
    assert "ml1m-conditioned-seed1" in summary["runs_missing"]
    assert "synthetic-factorized-seed0" in summary["runs_missing"]
    assert "ml1m-factorized-seed0" not in summary["runs_missing"]


def test_hits_survive_packing():
    hits = np.random.default_rng(0).random(1001) < 0.3
    np.testing.assert_array_equal(db.unpack_hits(db.pack_hits(hits), hits.size), hits.astype(float))
