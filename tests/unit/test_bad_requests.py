"""The bad-request catalogue (oneranker_perf.bad_requests) without a server: what it covers, how
it encodes malformed requests for each protocol, how it judges an answer, and docs/bad_input.md."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from oneranker_client import contract
from oneranker_perf import bad_requests as br

ROOT = Path(__file__).resolve().parents[2]


def cases():
    return br.bad_cases(br.SAMPLE_REQUEST, br.Limits())


def by_name(name: str) -> br.Case:
    return next(c for c in cases() if c.name == name)


def test_catalogue_covers_the_issue_over_both_protocols():
    all_cases = cases()
    assert len({c.name for c in all_cases}) == len(all_cases)
    both = [c for c in all_cases if c.grpc is not None and c.http is not None]
    assert len(both) >= 25
    kinds = {c.kind for c in all_cases}
    assert {
        "dtype",
        "rank",
        "shape vs data",
        "dims",
        "NaN/Inf",
        "ids",
        "history",
        "inputs",
        "outputs",
        "options",
    } <= kinds
    assert {c.model for c in all_cases} >= {contract.PUBLIC_MODEL, contract.FUSED_MODEL}
    for c in all_cases:
        for expect in (c.grpc, c.http):
            if expect is not None:
                assert expect.layer in (br.TRITON, br.MODEL) and expect.pattern, c.name
        assert c.grpc is None or c.grpc.status in ("INVALID_ARGUMENT", "NOT_FOUND", "INTERNAL"), c.name
        assert c.http is None or c.http.status in (400, 404, 500), c.name
    # what contract v4 serves is not in it
    assert not any("unknown item" in c.name or "too long" in c.name for c in all_cases)


def test_requests_are_encoded_exactly_as_written():
    neg = by_name("negative dim [1, -5]")
    request = neg.grpc_request()
    item_ids = next(i for i in request.inputs if i.name == "item_ids")
    assert list(item_ids.shape) == [1, -5] and len(request.raw_input_contents) == len(request.inputs)
    body, headers = neg.http_request()
    doc = json.loads(body)
    assert next(i for i in doc["inputs"] if i["name"] == "item_ids")["shape"] == [1, -5]
    assert headers["Content-Type"] == "application/json"

    dup = by_name("duplicated input").grpc_request()
    assert [i.name for i in dup.inputs].count("item_ids") == 2

    body, _ = by_name("NaN timestamps (JSON NaN in INT64)").http_request()
    assert b"NaN" in body  # not valid JSON on purpose

    huge = by_name("huge dim [1, 2**40] (binary HTTP; JSON: see CRASHES)")
    body, headers = huge.http_request()
    header = json.loads(body[: int(headers["Inference-Header-Content-Length"])])
    entry = next(i for i in header["inputs"] if i["name"] == "item_ids")
    assert entry["shape"] == [1, 2**40] and entry["parameters"]["binary_data_size"] == 8 * 6

    typed = by_name("FP32 contents for an INT64 input").grpc_request()
    assert not typed.raw_input_contents
    ts = next(i for i in typed.inputs if i.name == "timestamps")
    assert ts.datatype == "INT64" and np.isnan(ts.contents.fp32_contents).all()
    assert isinstance(by_name("undecodable protobuf").grpc_request(), bytes)


def test_answers_are_judged_by_status_words_and_layer():
    case = by_name("negative top_k")
    ours = "in ensemble 'oneranker', top_k=-3 is out of range [1, 256]"
    assert br.check_answer(case, "grpc", "INVALID_ARGUMENT", ours) is None
    assert br.check_answer(case, "http", 400, ours) is None
    assert "expected 400" in br.check_answer(case, "http", 500, ours)
    assert "other layer" in br.check_answer(case, "grpc", "INVALID_ARGUMENT", "top_k=-3 is out of range")
    assert "lacks" in br.check_answer(case, "grpc", "INVALID_ARGUMENT", "in ensemble 'oneranker', nope")
    assert "no message" in br.check_answer(case, "grpc", "INVALID_ARGUMENT", "")
    triton = by_name("unknown input")
    assert br.check_answer(triton, "grpc", "INVALID_ARGUMENT", "unexpected inference input 'bogus' for model") is None
    assert "other layer" in br.check_answer(
        triton, "grpc", "INVALID_ARGUMENT", "in ensemble 'oneranker', unexpected inference input 'bogus'"
    )


def test_crashes_stay_out_of_the_catalogue():
    names = {c.name for c in cases()}
    for crash in br.crashes(br.SAMPLE_REQUEST):
        assert crash.case.name not in names and crash.protocol in ("grpc", "http")
    overflow = br.crashes(br.SAMPLE_REQUEST)[0].case.grpc_request()
    item_ids = next(i for i in overflow.inputs if i.name == "item_ids")
    assert list(item_ids.shape) == [1, 2**61] and overflow.raw_input_contents[1] == b""


def test_docs_table_is_the_catalogue():
    text = (ROOT / "docs" / "bad_input.md").read_text()
    assert br.TABLE_START + br.markdown_table(cases()) + br.TABLE_END in text
