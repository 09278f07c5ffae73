"""The client, its CLI and the perf tools against a REAL tritonserver serving the tiny model.

Uses the session fixture ``served_repository`` (tests/conftest.py): ``.grpc_url``, ``.run_dir``
(the trained tiny run) and ``.requests`` (raw request dicts of its test split).
"""

from __future__ import annotations

import asyncio
import csv
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from oneranker_client import AsyncOneRankerClient, OneRankerClient, OneRankerError, RecommendRequest, cli
from oneranker_client.client import EXAMPLE_REQUEST_PARAMETER, is_healthy

pytestmark = pytest.mark.triton

ROOT = Path(__file__).resolve().parents[2]


def _env() -> dict:
    env = dict(os.environ)
    paths = [str(ROOT / p) for p in ("training", "build", "client", "perf")]
    env["PYTHONPATH"] = os.pathsep.join(paths + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env.setdefault("OMP_NUM_THREADS", "2")
    return env


def _requests(served, n: int) -> list[dict]:
    reqs = list(served.requests)
    assert reqs, "served_repository gave no requests"
    return [dict(reqs[i % len(reqs)]) for i in range(n)]


def _unknown_item_request(served) -> dict:
    req = dict(served.requests[0])
    ids = list(req["item_ids"])
    ids[-1] = 10**15 + 7  # in no catalogue: served as the OOV token (policy "token", the default)
    req["item_ids"] = ids
    return req


def _bad_request(served) -> dict:
    req = dict(served.requests[0])
    req["actions"] = [7] + list(req["actions"])[1:]  # no such action code: INVALID_ARGUMENT
    return req


def _write_jsonl(path: Path, reqs) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in reqs))
    return path


def _require_perf_analyzer():
    from oneranker_perf.perf_analyzer_bin import perf_analyzer_command

    try:
        perf_analyzer_command()
    except RuntimeError as e:
        if os.environ.get("ONERANKER_REQUIRE_TRITON") == "1":
            raise
        pytest.skip(str(e))


@pytest.fixture(scope="module")
def run_requests(served_repository, tmp_path_factory):
    """8 requests built by make_inputs.requests_from_run from the served run, + their files."""
    from oneranker_perf import make_inputs

    reqs = make_inputs.requests_from_run(served_repository.run_dir, 8, split="test")
    out = tmp_path_factory.mktemp("perf_inputs")
    jsonl = make_inputs.write_requests_jsonl(reqs, out / "requests.jsonl")
    data = make_inputs.write_perf_data(reqs, out / "perf_data.json")
    return reqs, jsonl, data


def test_health(served_repository, capsys):
    with OneRankerClient(served_repository.grpc_url, timeout_s=30) as client:
        h = client.health()
    assert is_healthy(h), h
    assert h["server"]["name"] == "triton"
    assert h["contract_mismatches"] == [], h["contract_mismatches"]
    assert cli.main(["health", "--url", served_repository.grpc_url]) == 0
    out = capsys.readouterr().out
    assert "model ready    True" in out and "contract       matches" in out


def test_recommend_returns_top_k_best_first(served_repository):
    k = 5
    with OneRankerClient(served_repository.grpc_url, timeout_s=60) as client:
        rec = client.recommend(RecommendRequest.from_json(dict(served_repository.requests[0], top_k=k)))
        assert len(rec) == k
        assert rec.item_ids.dtype == np.int64 and rec.scores.dtype == np.float32
        assert rec.gen_logp.dtype == np.float32 and rec.source_head.dtype == np.int32
        assert len(set(rec.item_ids.tolist())) == k
        assert np.all(np.diff(rec.scores) <= 1e-6), rec.scores  # descending value score
        assert np.all(np.isfinite(rec.scores)) and rec.latency_ms > 0
        # excluded ids never come back
        again = client.recommend(
            dict(served_repository.requests[0], top_k=k, exclude_item_ids=rec.item_ids[:2].tolist())
        )
        assert not set(rec.item_ids[:2].tolist()) & set(again.item_ids.tolist())


def test_async_client(served_repository):
    async def go():
        async with AsyncOneRankerClient(served_repository.grpc_url, timeout_s=60) as client:
            h = await client.health()
            recs = await client.recommend_many(
                [dict(r, top_k=3) for r in _requests(served_repository, 4)]
                + [_bad_request(served_repository), _unknown_item_request(served_repository)],
                concurrency=2,
            )
            return h, recs

    h, recs = asyncio.run(go())
    assert is_healthy(h)
    assert all(len(r) == 3 and r.history_unknown == 0 for r in recs[:4])
    assert isinstance(recs[4], OneRankerError) and recs[4].status == "INVALID_ARGUMENT" and recs[4].attempts == 1
    assert not isinstance(recs[5], OneRankerError) and recs[5].history_unknown == 1


def test_batch_cli_eight_requests_concurrency_2(served_repository, tmp_path, capsys):
    src = _write_jsonl(
        tmp_path / "in.jsonl", [dict(r, id=f"r{i}") for i, r in enumerate(_requests(served_repository, 8))]
    )
    out = tmp_path / "out.jsonl"
    rc = cli.main(
        [
            "batch",
            "--url",
            served_repository.grpc_url,
            "--input",
            str(src),
            "--concurrency",
            "2",
            "--output",
            str(out),
            "--format",
            "json",
            "--timeout",
            "60",
        ]
    )
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [ln["index"] for ln in lines] == list(range(8)) and [ln["id"] for ln in lines] == [f"r{i}" for i in range(8)]
    assert all("error" not in ln and ln["item_ids"] for ln in lines), lines
    summary = json.loads(captured.out.strip().splitlines()[-1])
    assert summary["requests"] == 8 and summary["errors"] == 0 and summary["p99_ms"] >= summary["p50_ms"] > 0


def test_bad_request_prints_server_message_and_exits_1(served_repository, tmp_path):
    bad = _bad_request(served_repository)
    with OneRankerClient(served_repository.grpc_url, timeout_s=60, retries=3) as client:
        with pytest.raises(OneRankerError) as err:
            client.recommend(bad)
        assert client.retry_budget.tokens == 10  # not retried: no token spent
    assert err.value.status == "INVALID_ARGUMENT" and err.value.attempts == 1
    assert "unknown action code 7" in err.value.message
    f = _write_jsonl(tmp_path / "bad.json", [bad])
    # through the console entry point, as a user runs it
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "oneranker_client.cli",
            "recommend",
            "--url",
            served_repository.grpc_url,
            "--json",
            str(f),
        ],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert proc.stderr.startswith("error: ") and "unknown action code 7" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    # the server is still fine afterwards
    with OneRankerClient(served_repository.grpc_url, timeout_s=60) as client:
        assert len(client.recommend(served_repository.requests[0])) > 0


def test_help_example_is_served_with_every_id_known(served_repository, capsys):
    """The `recommend` example of `oneranker-client --help`, as a user types it, against the real
    server: answered, with no unknown history id and nothing dropped (unit tests check the ids
    against the synthetic catalogue; this checks the server agrees)."""
    doc = cli.build_parser().format_help().replace("\\\n", " ")
    line = next(ln.strip() for ln in doc.splitlines() if ln.strip().startswith("oneranker-client recommend --user"))
    argv = shlex.split(line.split("#", 1)[0])[1:]
    rc = cli.main(argv + ["--url", served_repository.grpc_url, "--format", "json", "--timeout", "60"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    out = json.loads(captured.out)
    assert len(out["item_ids"]) == 5 and out["history_unknown"] == 0 and out["history_dropped"] == 0, out
    assert out["model_version"] >= 1
    rc = cli.main(argv + ["--url", served_repository.grpc_url, "--timeout", "60"])  # the table
    table = capsys.readouterr().out
    assert rc == 0 and f"model version {out['model_version']}" in table and "0 unknown item ids" in table, table


def test_deadline_surfaces_as_deadline_exceeded(served_repository):
    """A deadline the server cannot meet: DEADLINE_EXCEEDED after one attempt (never retried),
    and the server keeps serving."""
    with OneRankerClient(served_repository.grpc_url, timeout_s=1e-4, retries=3) as client:
        with pytest.raises(OneRankerError) as err:
            client.recommend(served_repository.requests[0])
    assert err.value.status == "DEADLINE_EXCEEDED" and err.value.attempts == 1, err.value
    with OneRankerClient(served_repository.grpc_url, timeout_s=60) as client:
        assert len(client.recommend(served_repository.requests[0])) > 0


def test_example_command_against_the_server(served_repository, capsys):
    """`example` on the real server (model-config API open here). Until the build renders the
    `example_request` parameter, the command must say so (exit 1); once it does, the printed
    request must be served with every id known."""
    with OneRankerClient(served_repository.grpc_url, timeout_s=60) as client:
        config = client.model_config()
    assert config["name"] == "oneranker"
    rc = cli.main(["example", "--url", served_repository.grpc_url, "--timeout", "60"])
    captured = capsys.readouterr()
    if EXAMPLE_REQUEST_PARAMETER not in (config.get("parameters") or {}):
        assert rc == 1 and "has no parameter 'example_request'" in captured.err, captured.err
        pytest.skip("the served repository has no example_request parameter yet")
    assert rc == 0, captured.err
    req = RecommendRequest.from_json(json.loads(captured.out))
    with OneRankerClient(served_repository.grpc_url, timeout_s=60) as client:
        rec = client.recommend(req)
    assert len(rec) > 0 and rec.history_unknown == 0


def test_requests_from_run_are_served(served_repository, run_requests):
    reqs, jsonl, data = run_requests
    assert len(reqs) == 8 and len(jsonl.read_text().splitlines()) == 8
    doc = json.loads(data.read_text())
    assert len(doc["data"]) == 8
    with OneRankerClient(served_repository.grpc_url, timeout_s=60) as client:
        results = client.recommend_many(reqs, concurrency=2, progress=False)
    errors = [r for r in results if isinstance(r, OneRankerError)]
    assert not errors, errors


def test_perf_analyzer_suite_short_run(served_repository, run_requests, tmp_path):
    _require_perf_analyzer()
    _, _, data = run_requests
    out = tmp_path / "pa"
    client_cpu = str(sorted(os.sched_getaffinity(0))[-1])
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "oneranker_perf.perf_analyzer_suite",
            "--url",
            served_repository.grpc_url,
            "--model",
            "oneranker",
            "--input-data",
            str(data),
            "--concurrency",
            "1",
            "--out",
            str(out),
            "--measurement-interval",
            "1000",
            "--stability-percentage",
            "50",
            "--max-trials",
            "5",
            "--retry-unstable",
            "2",
            "--client-cpus",
            client_cpu,
            "--note",
            "Compute floor: test line.",
        ],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert len(rows) == 1, rows
    assert float(rows[0]["throughput_infer_s"]) > 0 and int(rows[0]["errors"]) == 0 and rows[0]["status"] == "ok"
    assert float(rows[0]["p99_ms"]) >= float(rows[0]["p50_ms"]) > 0
    md = (out / "results.md").read_text()
    assert "| concurrency |" in md and "cores" in md
    assert f"perf_analyzer on core(s) {client_cpu}" in md and "Compute floor: test line." in md
    assert (out / "results.png").stat().st_size > 0


def test_locust_short_run(served_repository, run_requests, tmp_path):
    _, jsonl, _ = run_requests
    out = tmp_path / "locust"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "oneranker_perf.locust_run",
            "--host",
            served_repository.grpc_url,
            "--users",
            "2",
            "--spawn-rate",
            "2",
            "--run-time",
            "5s",
            "--requests",
            str(jsonl),
            "--out",
            str(out),
        ],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    from oneranker_perf.locust_run import read_stats

    stats = read_stats(out / "locust")
    assert stats.requests > 0 and stats.failed == 0
    assert [r["name"] for r in stats.rows] == ["oneranker.recommend"]
    assert (out / "locust.html").exists()
    md = (out / "results.md").read_text()
    assert "oneranker.recommend" in md and f"Failures: 0 of {stats.requests} requests" in md
    assert (out / "results.png").stat().st_size > 0
