"""The resumable study without training: run files (format, atomic write, locks), the intervals a
report built from fabricated run files carries, the protocol check, the budget's cut order and
the summary.json schema."""

from __future__ import annotations

import json
import math
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from oneranker.study import runfiles as rf
from oneranker.study.aggregate import summarize
from oneranker.study.build import build_report, summary_from_files
from oneranker.study.collect import collect
from oneranker.study.protocol import (
    CUTS,
    StudySpec,
    build_protocol,
    check_protocol,
    load_protocol,
    plan,
    planned_units,
    protocol_hash,
    write_protocol,
)
from oneranker.study.stats import paired_seed_user_interval, seed_user_interval

U, N = 240, 30
SPEC = StudySpec(preset="tiny", seeds=(0, 1, 2), sources=("synthetic",), steps=20, n_boot=400)


def _codes(rng, catalogue: bool) -> dict[str, np.ndarray]:
    codes = {
        "rank": rng.integers(0, N, U).astype(np.uint8),
        "auc2": rng.integers(0, 2 * (N - 1) + 1, U).astype(np.uint8),
        "vndcg": rng.random((U, 4)).astype(np.float16),
        "value5": rng.gamma(2.0, 1.0, (U, 2)).astype(np.float32),
    }
    if catalogue:
        codes["gen_pos"] = rng.integers(-1, 60, U).astype(np.int16)
        codes["slate_hit"] = np.packbits(rng.random(U) < 0.3)
        codes["slate_value"] = rng.gamma(4.0, 2.0, (U, 2)).astype(np.float32)
    return codes


def _write(out: Path, unit: str, seed, rows: dict[str, dict], digest: str) -> Path:
    meta = {
        "format": rf.FORMAT,
        "source": "synthetic",
        "unit": unit,
        "seed": seed,
        "rows": list(rows),
        "test_key": "fabricated",
        "test_users": U,
        "info": {
            "dataset": "fabricated",
            "label_sources": {"click": "simulated"},
            "label_notes": {},
            "num_users": U,
            "num_ads": 200,
            "num_contents": 0,
            "num_events": 0,
            "num_candidates": N,
            "samples": {"test": U},
            "has_ground_truth": True,
            "real_price": False,
        },
        "pooled_auc": {r: 0.7 for r in rows},
        "trained": {},
        "history_terms": {},
        "train_seconds": 1.0,
        "eval_seconds": 0.5,
        "machine": "test machine",
        "protocol_hash": digest,
    }
    arrays = {f"{row}/{k}": v for row, codes in rows.items() for k, v in codes.items()}
    return rf.write_unit(rf.unit_path(out, "synthetic", unit, seed), meta, arrays)


@pytest.fixture()
def fabricated(tmp_path):
    """A study folder whose `full` and `cascade` units have IDENTICAL codes for seeds 0, 1, 2
    (zero seed variance) and a popularity file; every other unit is missing."""
    out = tmp_path / "study"
    protocol = build_protocol(SPEC)
    write_protocol(out, protocol)
    digest = protocol_hash(load_protocol(out))
    rng = np.random.default_rng(0)
    full = _codes(rng, True)
    casc = {"s2": _codes(rng, True), "s3_only": _codes(rng, False), "cascade": _codes(rng, True)}
    for seed in SPEC.seeds:
        _write(out, "full", seed, {"full": full}, digest)
        _write(out, "cascade", seed, casc, digest)
    _write(out, "popularity", None, {"popularity": _codes(rng, True)}, digest)
    return out


def test_codes_decode_to_the_metrics():
    rng = np.random.default_rng(1)
    codes = _codes(rng, True)
    price = rng.gamma(2.0, 5.0, U).astype(np.float32)
    m = rf.decode_row(codes, N, price)
    rank = codes["rank"].astype(int)
    np.testing.assert_array_equal(m["HR@5"], rank < 5)
    np.testing.assert_allclose(m["NDCG@10"], (rank < 10) / np.log2(rank + 2))
    np.testing.assert_allclose(m["GAUC"], codes["auc2"] / 58.0)
    np.testing.assert_array_equal(m["gen_R@10"], (codes["gen_pos"] >= 0) & (codes["gen_pos"] < 10))
    hit = np.unpackbits(codes["slate_hit"], count=U).astype(bool)
    np.testing.assert_array_equal(m["slate_HR@10"], hit)
    np.testing.assert_allclose(m["slate_rGMV@10"], price * hit, rtol=1e-6)
    np.testing.assert_allclose(m["slate_eGMV@10"], codes["slate_value"][:, 1], rtol=1e-6)


def test_write_is_atomic_and_a_failed_write_leaves_nothing(tmp_path, monkeypatch):
    path = rf.unit_path(tmp_path, "synthetic", "full", 0)

    def broken(f, **arrays):
        f.write(b"PK partial")
        raise KeyboardInterrupt  # the process is interrupted while writing

    monkeypatch.setattr(np, "savez_compressed", broken)
    with pytest.raises(KeyboardInterrupt):
        rf.write_unit(path, {"format": rf.FORMAT}, {"x": np.zeros(3)})
    assert not path.exists() and not list(path.parent.iterdir())
    assert rf.existing_units(tmp_path) == {}


def test_temporaries_of_dead_writers_are_ignored_and_cleaned(tmp_path):
    folder = tmp_path / "runs" / "synthetic"
    folder.mkdir(parents=True)
    dead = subprocess.Popen(["true"])
    dead.wait()
    tmp = folder / f".full-seed0.npz.{dead.pid}.tmp"
    tmp.write_bytes(b"partial")
    assert rf.existing_units(tmp_path) == {}
    assert rf.clean_temporaries(tmp_path) == [tmp] and not tmp.exists()


def test_unit_lock_excludes_a_live_holder_and_takes_over_a_dead_one(tmp_path):
    path = tmp_path / "runs" / "synthetic" / "full-seed0.npz"
    first, second = rf.UnitLock(path), rf.UnitLock(path)
    assert first.acquire()
    assert not second.acquire()  # this process is alive: the lock holds
    first.release()
    dead = subprocess.Popen(["true"])
    dead.wait()
    first.path.write_text(f"{os.uname().nodename} {dead.pid}")
    assert second.acquire()  # stale: its process is gone
    second.release()
    assert not second.path.exists()


def test_zero_seed_variance_gives_the_user_only_width(fabricated):
    protocol = load_protocol(fabricated)
    data, done, missing = collect(fabricated, protocol)
    d = data["synthetic"]
    assert d.seeds("full") == [0, 1, 2] and d.seeds("popularity") == [None]
    s = summarize(d, SPEC.n_boot)
    one_seed = d.values("full", "HR@5")[:1]
    expected = seed_user_interval(one_seed, n_boot=SPEC.n_boot)
    got = s["rows"]["full"]["HR@5"]
    assert [got["mean"], got["lo"], got["hi"]] == pytest.approx(expected, abs=1e-12)
    diff = next(c for c in s["comparisons"] if (c["a"], c["b"], c["metric"]) == ("full", "cascade", "slate_eGMV@10"))
    a, b = d.values("full", "slate_eGMV@10")[:1], d.values("cascade", "slate_eGMV@10")[:1]
    assert [diff["delta"], diff["lo"], diff["hi"]] == pytest.approx(
        paired_seed_user_interval(a, b, n_boot=SPEC.n_boot), abs=1e-12
    )
    power = s["power"]
    assert power["seed_half_width"] == pytest.approx(0.0, abs=1e-12)
    assert power["half_width"] == pytest.approx((diff["hi"] - diff["lo"]) / 2)
    assert power["half_width_pct"] == pytest.approx(100 * power["half_width"] / power["full_mean"])


def test_seed_variance_widens_the_interval_and_sizes_the_seed_count(fabricated):
    """Shift the full model's slate values per seed: the row interval must be wider than the
    user-only one by the t part, and the seed count for the power target follows from the seed SD."""
    protocol = load_protocol(fabricated)
    digest = protocol_hash(protocol)
    for seed, shift in zip(SPEC.seeds, (0.0, 0.2, 0.4)):
        meta, arrays = rf.read_unit(rf.unit_path(fabricated, "synthetic", "full", seed))
        arrays["full/slate_value"] = arrays["full/slate_value"] + np.float32(shift)
        _write(fabricated, "full", seed, {"full": rf.row_codes(arrays, "full")}, digest)
    d = collect(fabricated, protocol)[0]["synthetic"]
    s = summarize(d, SPEC.n_boot)
    cell = s["rows"]["full"]["slate_eGMV@10"]
    user_only = seed_user_interval(d.values("full", "slate_eGMV@10").mean(0)[None], n_boot=SPEC.n_boot)
    t = 4.302653  # t(0.975, 2)
    h_seed = t * np.std([0.0, 0.2, 0.4], ddof=1) / math.sqrt(3)
    half_user = (user_only[2] - user_only[1]) / 2
    assert (cell["hi"] - cell["lo"]) / 2 == pytest.approx(math.hypot(h_seed, half_user), rel=1e-3)
    power = s["power"]
    assert power["seed_half_width"] == pytest.approx(h_seed, rel=1e-3)
    from oneranker.study.stats import t_quantile

    # a seed SD of ~0.2 on a mean of ~8 is far above 1.5%: not met; the seed count is the smallest
    # whose t half-width meets the target, and the user part (independent gamma draws) is wider
    # than the target on its own, so no seed count reaches it with the users
    target = power["target_pct"] / 100 * power["full_mean"]
    assert not power["met"] and power["seeds_needed"] is None
    k = power["seeds_needed_seed_part_only"]
    assert t_quantile(0.975, k - 1) * power["seed_sd"] / math.sqrt(k) <= target
    assert t_quantile(0.975, k - 2) * power["seed_sd"] / math.sqrt(k - 1) > target


def test_report_lists_exactly_the_missing_units_and_the_summary_schema(fabricated):
    payload = build_report(fabricated, command="python -m oneranker.study report --out x")
    planned = {f"{s}/{rf.unit_name(u, seed)}" for s, u, seed in planned_units(SPEC)}
    present = {"synthetic/popularity"} | {f"synthetic/{u}-seed{s}" for u in ("full", "cascade") for s in SPEC.seeds}
    assert set(payload["runs_done"]) == present
    assert set(payload["runs_missing"]) == planned - present
    summary = json.loads((fabricated / "summary.json").read_text())
    assert {"preset", "seeds", "data_seed", "protocol_hash", "protocol_commit", "runs_done", "runs_missing"} <= set(
        summary
    )
    src = summary["sources"]["synthetic"]
    assert {"test_users", "split", "headroom_pct", "rows", "diffs", "paper_pairs"} <= set(src)
    assert src["headroom_pct"] is None and src["test_users"] == U
    assert set(src["rows"]) == {"full", "s2", "s3_only", "cascade", "popularity"}
    assert set(src["rows"]["full"]) == {"hr@5", "ndcg@5", "vndcg@5", "gauc", "slate_egmv@10", "gen_recall@50"}
    assert set(src["diffs"]) == {"full-cascade", "full-s2"}  # no HSTU run yet
    for mean, lo, hi in src["diffs"]["full-cascade"].values():
        assert lo <= mean <= hi
    assert set(src["paper_pairs"]) == {"hr@5", "vndcg@5"}
    assert set(src["paper_pairs"]["hr@5"]) == {"reproduced", "ns_same", "ns_opposite", "reversed"}
    assert summary["protocol_hash"] == protocol_hash(load_protocol(fabricated))
    report = (fabricated / "report.md").read_text()
    for name in payload["runs_missing"]:
        assert f"`{name}`" in report
    # the perf rebuild (oneranker_perf.summaries) reads the same files and gets the same figures
    from oneranker_perf import summaries

    def figures(x):
        return {k: v for k, v in x.items() if k not in ("commit", "note")}

    assert figures(summary_from_files(fabricated, summary["command"])) == figures(summary)
    assert figures(summaries.summarize_folder(fabricated)) == figures(summary)


# ------------------------------------------------------------------ protocol


def test_protocol_check_reports_a_changed_default(tmp_path, monkeypatch):
    write_protocol(tmp_path, build_protocol(SPEC))
    check = check_protocol(tmp_path)
    assert check.differences == [] and not check.unchanged  # equal, but not committed
    assert "not committed" in check.sentence() and "unchanged since" not in check.sentence()

    import oneranker.config as config

    original = config.preset

    def changed(name):  # a copy of the config with one default changed
        cfg = original(name)
        cfg.train.lr = cfg.train.lr * 2
        return cfg

    monkeypatch.setattr(config, "preset", changed)
    check = check_protocol(tmp_path)
    assert any(d.startswith("sources.synthetic.base_config.train.lr") for d in check.differences), check.differences
    assert "difference" in check.sentence()


def test_protocol_file_edited_changes_hash_and_is_reported(tmp_path):
    path = write_protocol(tmp_path, build_protocol(SPEC))
    before = check_protocol(tmp_path).hash
    raw = json.loads(path.read_text())
    raw["resolved"]["sources"]["synthetic"]["stopping"]["patience"] = 99
    path.write_text(json.dumps(raw))
    check = check_protocol(tmp_path)
    assert check.hash != before
    assert any("stopping.patience" in d for d in check.differences)


def test_protocol_unchanged_since_its_commit_only_while_it_is(tmp_path):
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
    subprocess.run([*git, "init", "-q", str(tmp_path)], check=True)
    write_protocol(tmp_path, build_protocol(SPEC))
    subprocess.run([*git, "add", "protocol.json"], cwd=tmp_path, check=True)
    subprocess.run([*git, "commit", "-qm", "protocol"], cwd=tmp_path, check=True)
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=tmp_path, capture_output=True, text=True)
    check = check_protocol(tmp_path)
    assert check.unchanged and check.commit == head.stdout.strip()
    assert f"unchanged since `{check.commit}`" in check.sentence()
    (tmp_path / "protocol.json").write_text((tmp_path / "protocol.json").read_text() + " ")
    assert not check_protocol(tmp_path).unchanged  # working tree differs
    subprocess.run([*git, "commit", "-qam", "edit"], cwd=tmp_path, check=True)
    check = check_protocol(tmp_path)
    assert not check.unchanged and "changed after" in check.sentence()


def test_protocol_records_configs_seeds_and_pending_fields():
    protocol = build_protocol(StudySpec())
    src = protocol["resolved"]["sources"]["synthetic"]
    assert src["base_config"]["train.seed"] == "<seed>" and src["base_config"]["data.seed"] == 0
    assert src["runs"]["wo_dc"]["wo_dc"] == {"model.use_dc_loss": False}
    assert src["runs"]["cascade"]["s3_only"] == {"model.use_generation": False}
    assert src["runs"]["hstu"]["hstu"]["hstu.d_model"] == src["base_config"]["model.d_model"]
    assert src["runs"]["hstu"]["hstu"]["hstu.seed"] == "<seed>"
    assert src["plan"]["full"] == [0, 1, 2, 3, 4] and src["plan"]["popularity"] == [None]
    assert src["stopping"]["eval_every"] == 50 and src["stopping"]["patience"] == 5
    assert src["pending"] == {"data.world": "v2"} or "data.world" in src["base_config"]


# ------------------------------------------------------------------ budget


def test_budget_cuts_in_the_declared_order():
    from oneranker.study.budget import plan_budget

    spec = StudySpec(sessions=1, session_minutes=100, parallel=1)
    minutes = {s: {u: 1.0 for u in plan(spec)[s]} for s in spec.sources}
    # full plan: synthetic 9 x 5 + 1, each of the 3 real sources 9 x 5 + 1 -> 184 unit-minutes
    assert plan_budget(spec, minutes)["cut_level"] == 1  # 46 + 3 x (3 x 5 + 1) = 94 fits 100
    tight = StudySpec(sessions=1, session_minutes=80, parallel=1)
    b = plan_budget(tight, minutes)
    assert b["cut_level"] == 2 and b["fits"]  # 46 + 3 x (3 x 3 + 1) = 76
    assert b["plan"]["synthetic"]["full"]["seeds"] == 5 and b["plan"]["tafeng"]["full"]["seeds"] == 3
    assert "wo_dc" in b["plan"]["synthetic"] and "wo_dc" not in b["plan"]["tafeng"]
    none_fit = plan_budget(StudySpec(sessions=1, session_minutes=10, parallel=1), minutes)
    assert not none_fit["fits"] and none_fit["cut_level"] == len(CUTS) - 1


def test_study_sources_resolve_to_the_declared_data():
    """Synthetic: world v2 at >= 5,000 users and >= 10,000 ads outside the smoke preset;
    tafeng_time: Ta-Feng's data under the global time cutoff; tafeng keeps leave-last-out."""
    from oneranker.study.rows import source_config

    syn = source_config("small", "synthetic", 0, None, 1, None)
    assert syn.data.world == "v2" and syn.data.num_users >= 5000 and syn.data.num_ads >= 10000
    assert source_config("tiny", "synthetic", 0, None, 1, None).data.num_users < 5000  # the smoke stays small
    timed = source_config("small", "tafeng_time", 0, None, 1, None)
    plain = source_config("small", "tafeng", 0, None, 1, None)
    assert timed.data.source == plain.data.source == "tafeng"
    assert timed.data.split == "time_cutoff" and plain.data.split == "leave_last_out"


def test_slate_value_reads_the_request_context_on_world_v2():
    """World v2's click probability depends on the hour x category: the study's slate value (what
    the run files store) must change when only the requests' hours change."""
    import copy

    from oneranker.config import preset
    from oneranker.pipeline import prepare
    from oneranker.study.catalogue import slate_value

    cfg = preset("tiny")
    cfg.data.world = "v2"
    prep = prepare(cfg.validate())
    test = prep.splits["test"]
    slate = np.tile(np.arange(10), (len(test.user), 1))
    ecpm, gmv = slate_value(slate, prep)
    shifted = copy.copy(prep)
    shifted.splits = dict(prep.splits)
    shifted.splits["test"] = copy.copy(test)
    shifted.splits["test"].context = (test.context + 12) % cfg.data.context_cardinality
    ecpm2, gmv2 = slate_value(slate, shifted)
    assert not np.allclose(ecpm, ecpm2) and not np.allclose(gmv, gmv2)
