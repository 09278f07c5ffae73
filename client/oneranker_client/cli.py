"""`oneranker-client`: query the served OneRanker model over gRPC (torch-free).

    oneranker-client health
    oneranker-client example > request.json         # a valid request for the served release
    oneranker-client recommend --json request.json  # or: oneranker-client example | oneranker-client recommend --json -
    oneranker-client recommend --user-features 3,1,5,22 --item-ids 900012,100007,100042 --actions 1,2,3 \\
        --timestamps 1700000000,1700000100,1700000200 --request-time 1700000300 --top-k 5
    oneranker-client batch --input requests.jsonl --concurrency 4 --output results.jsonl

The ids above are those of the quickstart model (synthetic marketplace, `small` preset): ad ids
start at 100000, content ids at 900000; `--user-features` holds 3 profile values in [0, 8), then
the UTC hour of `--request-time` (22 for 1700000300); action 1 is a content view, 2 an ad
impression, 3 an ad click, 4 an ad conversion; timestamps are unix seconds, oldest first, none
after the request time. Another model: `oneranker-client example` prints a request it accepts.

Common options (before or after the subcommand): --url HOST:PORT, --model, --timeout S (the
deadline of each call, retries included; default 1.0 s), --retries N (UNAVAILABLE only,
full-jitter backoff, within the deadline and the client's retry budget), --format json|table.

`example` reads the served model's config, a restricted API on a server started with an admin
key: set ONERANKER_ADMIN_KEY to that key.

Exit codes: 0 success; 1 the server (or the connection) reported an error, printed as
`error: <message>` on stderr (batch: at least one request failed); 2 usage error.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from . import contract
from .client import DEFAULT_TIMEOUT_S, EXAMPLE_REQUEST_PARAMETER, OneRankerClient, is_healthy
from .defaults import DEFAULT_BACKOFF_S, DEFAULT_GRPC_URL, DEFAULT_RETRIES
from .messages import Recommendation, RecommendRequest
from .restricted_api import ADMIN_KEY_ENV
from .retries import OneRankerError

# Request fields settable from flags: list-valued ones take "1,2,3", scalar ones an int.
_HISTORY_FIELDS = ("user_features", "item_ids", "actions", "timestamps", "request_time")
_OPTION_FIELDS = tuple(s.name for s in contract.PUBLIC.inputs if s.optional)


class UsageError(Exception):
    """Bad command line or bad input file: exit code 2."""


def int_list(text: str) -> list[int]:
    """argparse type: "1,2,3" (spaces allowed) -> [1, 2, 3]; "" -> []."""
    text = text.strip()
    if not text:
        return []
    try:
        return [int(x) for x in text.replace(" ", "").split(",") if x != ""]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _add_common(p: argparse.ArgumentParser, suppress: bool) -> None:
    """The connection/output options. On subparsers their default is SUPPRESS so that a value
    given before the subcommand is not overwritten by the subparser's default."""

    def d(value):
        return argparse.SUPPRESS if suppress else value

    p.add_argument("--url", default=d(DEFAULT_GRPC_URL), help=f"gRPC endpoint host:port (default {DEFAULT_GRPC_URL})")
    p.add_argument("--model", default=d(contract.PUBLIC_MODEL), help=f"model name (default {contract.PUBLIC_MODEL})")
    p.add_argument(
        "--timeout",
        type=float,
        default=d(DEFAULT_TIMEOUT_S),
        metavar="S",
        help=f"deadline of each call in seconds, retries included (default {DEFAULT_TIMEOUT_S:g})",
    )
    p.add_argument(
        "--retries",
        type=int,
        default=d(DEFAULT_RETRIES),
        metavar="N",
        help=f"retries on UNAVAILABLE, full-jitter backoff within the deadline (default {DEFAULT_RETRIES})",
    )
    p.add_argument("--format", choices=("json", "table"), default=d("table"), help="output format (default table)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="oneranker-client", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    _add_common(parser, suppress=False)
    sub = parser.add_subparsers(dest="command", required=True, metavar="{health,example,recommend,batch}")

    p = sub.add_parser("health", help="server live/ready, model ready, metadata vs the contract")
    _add_common(p, suppress=True)

    p = sub.add_parser(
        "example",
        help="print a valid request for the served model (JSON, the format of recommend --json)",
        description=f"Print the request the served release of --model carries as its config parameter "
        f"{EXAMPLE_REQUEST_PARAMETER!r}, as one JSON object (the format of `recommend --json`). The "
        f"model-config API may be restricted: the admin key is sent when {ADMIN_KEY_ENV} is set.",
    )
    _add_common(p, suppress=True)

    p = sub.add_parser("recommend", help="top-k for one request (flags or --json)")
    _add_common(p, suppress=True)
    p.add_argument(
        "--json",
        dest="json_file",
        metavar="FILE",
        help="one request as a JSON object (FILE or - for stdin); option flags override it",
    )
    specs = {s.name: s for s in contract.PUBLIC.inputs}
    for name in _HISTORY_FIELDS + _OPTION_FIELDS:
        scalar = tuple(specs[name].dims) == (1,)
        extra = {"type": int, "metavar": "N"} if scalar else {"type": int_list, "metavar": "A,B,..."}
        hint = " (default: now)" if name == "request_time" else ""
        p.add_argument(_flag(name), dest=name, default=None, help=specs[name].meaning + hint, **extra)

    p = sub.add_parser("batch", help="many requests from a JSONL file, concurrently")
    _add_common(p, suppress=True)
    p.add_argument("--input", required=True, metavar="JSONL", help="one request object per line (- for stdin)")
    p.add_argument("--output", metavar="JSONL", help="results, one line per request (default stdout)")
    p.add_argument("--concurrency", type=int, default=4, help="requests in flight (default 4)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


# ---------------------------------------------------------------------------------------------
# Request assembly
# ---------------------------------------------------------------------------------------------
def _read_text(path: str) -> str:
    if path == "-":
        return sys.stdin.read()
    try:
        return Path(path).read_text()
    except OSError as e:
        raise UsageError(f"cannot read {path}: {e.strerror or e}") from None


def request_from_args(args: argparse.Namespace) -> RecommendRequest:
    """The request of `recommend`: --json, or the history flags; option flags override."""
    given = {n: getattr(args, n) for n in _HISTORY_FIELDS + _OPTION_FIELDS if getattr(args, n, None) is not None}
    if args.json_file:
        clash = [_flag(n) for n in _HISTORY_FIELDS if n in given]
        if clash:
            raise UsageError(f"--json cannot be combined with {', '.join(clash)}")
        text = _read_text(args.json_file)
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise UsageError(f"{args.json_file}: invalid JSON ({e})") from None
        if not isinstance(data, dict):
            raise UsageError(f"{args.json_file}: expected one JSON object")
        data.update(given)
    else:
        missing = [_flag(n) for n in _HISTORY_FIELDS if n not in given and n != "request_time"]
        if missing:
            raise UsageError(f"missing {', '.join(missing)} (or give the whole request with --json)")
        data = dict(given)
        data.setdefault("request_time", int(time.time()))
    try:
        return RecommendRequest.from_json(data)
    except ValueError as e:
        raise UsageError(str(e)) from None


def read_jsonl(path: str) -> list[dict]:
    """Request objects of a JSONL file (blank lines skipped); an optional "id" key is kept apart."""
    rows = []
    for lineno, line in enumerate(_read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise UsageError(f"{path} line {lineno}: invalid JSON ({e.msg})") from None
        if not isinstance(obj, dict):
            raise UsageError(f"{path} line {lineno}: expected a JSON object")
        rid = obj.pop("id", None)
        try:
            req = RecommendRequest.from_json(obj)
        except ValueError as e:
            raise UsageError(f"{path} line {lineno}: {e}") from None
        rows.append({"id": rid, "request": req})
    if not rows:
        raise UsageError(f"{path}: no requests")
    return rows


# ---------------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------------
def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def format_recommendation(rec: Recommendation, fmt: str) -> str:
    if fmt == "json":
        return json.dumps(rec.to_json())
    rows = [
        (i + 1, int(item), f"{float(s):.6f}", f"{float(lp):.4f}", int(h))
        for i, (item, s, lp, h) in enumerate(zip(rec.item_ids, rec.scores, rec.gen_logp, rec.source_head))
    ]
    return (
        _table(("rank", "item_id", "score", "gen_logp", "head"), rows)
        + f"\n{len(rows)} items in {rec.latency_ms:.1f} ms from model version {rec.model_version}"
        + f"\nhistory: {rec.history_unknown} unknown item ids (served as the OOV token), "
        + f"{rec.history_dropped} oldest events dropped (beyond max_history)"
    )


def format_health(h: dict, fmt: str) -> str:
    if fmt == "json":
        return json.dumps(h, indent=2)
    server = h.get("server") or {}
    lines = [
        f"url            {h['url']}",
        f"server         {server.get('name')} {server.get('version')}",
        f"server live    {h['server_live']}",
        f"server ready   {h['server_ready']}",
        f"model          {h['model']} (versions {', '.join(map(str, h['model_versions'])) or '-'})",
        f"model ready    {h['model_ready']}",
    ]
    md = h.get("metadata") or {}
    for kind in ("inputs", "outputs"):
        for t in md.get(kind, []):
            shape = "[" + ", ".join(str(s) for s in t.get("shape", [])) + "]"
            lines.append(f"  {kind[:-1]:6s} {t.get('name'):18s} {t.get('datatype'):6s} {shape}")
    mism = h.get("contract_mismatches") or []
    lines.append("contract       " + ("matches" if not mism else "MISMATCH: " + "; ".join(mism)))
    return "\n".join(lines)


def latency_summary(latencies_ms: Sequence[float]) -> dict:
    lat = np.asarray(latencies_ms, dtype=np.float64)
    if lat.size == 0:
        return {"p50_ms": None, "p90_ms": None, "p99_ms": None, "mean_ms": None, "max_ms": None}
    p50, p90, p99 = np.percentile(lat, [50, 90, 99])
    return {
        "p50_ms": round(float(p50), 3),
        "p90_ms": round(float(p90), 3),
        "p99_ms": round(float(p99), 3),
        "mean_ms": round(float(lat.mean()), 3),
        "max_ms": round(float(lat.max()), 3),
    }


def format_summary(s: dict, fmt: str) -> str:
    if fmt == "json":
        return json.dumps(s)

    def ms(v):
        return "-" if v is None else f"{v:.1f} ms"

    return (
        f"batch: {s['requests']} requests, {s['ok']} ok, {s['errors']} errors, concurrency {s['concurrency']}, "
        f"{s['throughput_rps']:.1f} req/s over {s['wall_s']:.2f} s; latency p50 {ms(s['p50_ms'])}, "
        f"p90 {ms(s['p90_ms'])}, p99 {ms(s['p99_ms'])}, max {ms(s['max_ms'])}"
    )


# ---------------------------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------------------------
def _client(args, admin_key: str | None = None) -> OneRankerClient:
    if not args.timeout > 0:
        raise UsageError(f"--timeout must be > 0 seconds, got {args.timeout:g}")
    if args.retries < 0:
        raise UsageError(f"--retries must be >= 0, got {args.retries}")
    return OneRankerClient(
        args.url,
        model=args.model,
        timeout_s=args.timeout,
        retries=args.retries,
        backoff_s=DEFAULT_BACKOFF_S,
        admin_key=admin_key,
    )


def cmd_health(args) -> int:
    with _client(args) as client:
        h = client.health()
    print(format_health(h, args.format))
    if not is_healthy(h):
        what = (
            "server is not live"
            if not h["server_live"]
            else ("server is not ready" if not h["server_ready"] else f"model {h['model']} is not ready")
        )
        print(f"error: {what}", file=sys.stderr)
        return 1
    return 0


def cmd_example(args) -> int:
    key = os.environ.get(ADMIN_KEY_ENV, "").strip() or None
    with _client(args, admin_key=key) as client:
        try:
            req = client.example_request()
        except OneRankerError as e:
            if not e.restricted:
                raise
            if key:
                why = f"refused the admin key in {ADMIN_KEY_ENV}: check that it is the server's key"
            else:
                why = f"needs the admin key: set {ADMIN_KEY_ENV} to the server's admin key and run again"
            raise OneRankerError(
                f"the model-config API of {args.url} is restricted and {why} (server: {e.message})", e.status
            ) from None
    print(json.dumps(req.to_json()))
    return 0


def cmd_recommend(args) -> int:
    req = request_from_args(args)
    with _client(args) as client:
        rec = client.recommend(req)
    print(format_recommendation(rec, args.format))
    return 0


def cmd_batch(args) -> int:
    if args.concurrency < 1:
        raise UsageError("--concurrency must be >= 1")
    rows = read_jsonl(args.input)
    out = open(args.output, "w") if args.output else sys.stdout
    try:
        with _client(args) as client:
            t0 = time.perf_counter()
            results = client.recommend_many(
                [r["request"] for r in rows], concurrency=args.concurrency, progress=not args.no_progress
            )
            wall = time.perf_counter() - t0
        latencies, errors = [], 0
        for i, (row, res) in enumerate(zip(rows, results)):
            line: dict[str, Any] = {"index": i}
            if row["id"] is not None:
                line["id"] = row["id"]
            if isinstance(res, OneRankerError):
                errors += 1
                line.update(res.to_json())
            else:
                latencies.append(res.latency_ms)
                line.update(res.to_json())
            out.write(json.dumps(line) + "\n")
        out.flush()
    finally:
        if out is not sys.stdout:
            out.close()
    summary = {
        "requests": len(rows),
        "ok": len(rows) - errors,
        "errors": errors,
        "concurrency": args.concurrency,
        "wall_s": round(wall, 3),
        "throughput_rps": round(len(rows) / wall, 3) if wall > 0 else 0.0,
        **latency_summary(latencies),
    }
    # The summary goes to stderr when the results go to stdout, so stdout stays valid JSONL.
    print(format_summary(summary, args.format), file=sys.stdout if args.output else sys.stderr)
    if errors:
        first = next(r for r in results if isinstance(r, OneRankerError))
        print(f"error: {errors} of {len(rows)} requests failed; first: {first.message}", file=sys.stderr)
        return 1
    return 0


COMMANDS = {"health": cmd_health, "example": cmd_example, "recommend": cmd_recommend, "batch": cmd_batch}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)  # exits 2 on a usage error
    try:
        return COMMANDS[args.command](args)
    except UsageError as e:
        parser.print_usage(sys.stderr)
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OneRankerError as e:
        print(f"error: {e.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `oneranker-client health | head`
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
