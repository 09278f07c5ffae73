"""The soak harness (oneranker_perf.soak) against the session's tritonserver: a short run that
must count the failures it is made to have, and the 10-minute soak itself (slow)."""

from __future__ import annotations

import json
import os

import pytest

from oneranker_perf import bad_requests as br
from oneranker_perf import soak

pytestmark = pytest.mark.triton


def run_soak(served, tmp_path, seconds: float, *extra: str) -> tuple[int, dict, str]:
    requests = tmp_path / "requests.jsonl"
    requests.write_text("".join(json.dumps(r) + "\n" for r in served.requests))
    out = tmp_path / "soak"
    rc = soak.main(
        [
            "--repository", str(served.repository),
            "--requests", str(requests),
            "--out", str(out),
            "--duration", str(seconds),
            "--rss-every", "2",
            "--grpc-url", served.grpc_url,
            "--http-url", served.http_url,
            "--server-pid", str(served.server.pid),
            *extra,
        ]
    )  # fmt: skip
    return rc, json.loads((out / "summary.json").read_text()), (out / "report.md").read_text()


def test_soak_counts_the_failures_it_is_made_to_have(served_repository, tmp_path):
    """20 s with two sabotages: the expected answer of request 0 is wrong (its good calls must
    fail) and the first bad case of each protocol is replaced by a good request (those calls
    must fail as "not refused"). Everything else must pass: the harness counts exactly these."""
    rc, summary, report = run_soak(
        served_repository, tmp_path, 20, "--sabotage", "expected", "--sabotage", "good-as-bad"
    )
    traffic = summary["traffic"]
    assert rc == 1 and not summary["passed"] and "Verdict: FAIL" in report
    assert 0 < traffic["good_failures"] < traffic["good_requests"]
    assert 0 < traffic["bad_not_refused_as_recorded"] < traffic["bad_requests"]
    errors = json.loads((tmp_path / "soak" / "locust_stats.json").read_text())["errors"]
    first_case = br.bad_cases(served_repository.requests[0], br.Limits.from_repository(served_repository.repository))[0]
    for e in errors:  # only the sabotaged calls failed
        if e["traffic"] == "good":
            assert e["error"].startswith("request 0: answer changed"), e
        else:
            assert e["error"].startswith(f"{first_case.name} over {e['protocol']}: expected"), e
    assert summary["after"] == {"ready": True, "stubs_after": summary["memory"]["stubs_start"], "problems": []}
    assert summary["memory"]["samples"] >= 5 and summary["memory"]["total_rss_start_mib"] > 0
    assert (tmp_path / "soak" / "rss.png").stat().st_size > 0


@pytest.mark.slow
def test_soak_ten_minutes_of_mixed_traffic(served_repository, tmp_path):
    seconds = float(os.environ.get("ONERANKER_SOAK_S", "600"))
    rc, summary, report = run_soak(served_repository, tmp_path, seconds)
    assert rc == 0 and summary["passed"], report
    assert summary["traffic"]["good_failures"] == 0 and summary["traffic"]["bad_not_refused_as_recorded"] == 0
