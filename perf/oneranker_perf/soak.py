"""Soak: mixed good and malformed traffic over gRPC and HTTP for a while (default 10 minutes),
with the server's memory sampled throughout.

    python -m oneranker_perf.soak --repository artifacts/model_repository/small/onnxruntime \\
        --requests artifacts/perf/requests.jsonl --out perf/results/soak [--duration 600]
    python -m oneranker_perf.soak --grpc-url H:P --http-url H:P --server-pid PID \\
        --repository DIR --requests FILE --out DIR          # against a server already started

1. starts tritonserver on the repository (or takes the given one) and records the expected
   answer of every request of the JSONL over gRPC (HTTP must agree on the first ones);
2. runs headless locust (``perf/soak_locustfile.py``, ``--users`` users, no think time) for
   ``--duration`` seconds: each call is a good request or, with probability ``--bad-share``, the
   next case of the bad-request catalogue (``oneranker_perf.bad_requests``), over gRPC or HTTP;
   a good call fails unless its answer equals the expected one, a bad call fails unless it gets
   its recorded refusal;
3. meanwhile samples every ``--rss-every`` seconds the resident memory of the tritonserver
   process and of its Python-backend stubs (``triton_python_backend_stub`` children) from /proc
   (RSS, and PSS, which counts the stubs' shared memory once);
4. afterwards: the server must be ready, every stub still alive, and every request answered as
   before over both protocols.

Writes OUT/report.md, OUT/summary.json (``summary_file``), OUT/rss.png, OUT/rss.csv,
OUT/locust_stats.json and OUT/locust.log. Exit code 0 when no good call failed, every bad call
got its refusal, the checks after the load passed and requests were made; 1 otherwise.
``--sabotage expected|bad-as-good|good-as-bad`` makes failures on purpose (the harness must count
them: a corrupted expected answer, a malformed request sent as a good one, a good request sent as
a malformed one).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from oneranker_client import contract

from . import bad_requests as br
from .summary_file import git_commit, write_summary

LOCUSTFILE = Path(__file__).resolve().parents[1] / "soak_locustfile.py"
STUB = "triton_python_backend_stub"
MIB = 1024.0


# ------------------------------------------------------------------ memory from /proc


def _status_kb(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _pss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return out


def stub_pids(server_pid: int) -> list[int]:
    stubs = []
    for child in children(server_pid):
        try:
            if STUB in Path(f"/proc/{child}/cmdline").read_bytes().decode(errors="replace"):
                stubs.append(child)
        except OSError:
            continue
    return stubs


def memory_sample(server_pid: int) -> dict:
    """RSS and PSS (MiB) of tritonserver and of its Python stubs, summed, and the stub count."""
    stubs = stub_pids(server_pid)
    rss, pss = [], []
    for pid in stubs:
        try:
            rss.append(_status_kb(pid, "VmRSS"))
            pss.append(_pss_kb(pid))
        except OSError:  # a stub that just exited
            continue
    server_rss = _status_kb(server_pid, "VmRSS")
    return {
        "server_rss_mib": server_rss / MIB,
        "stubs_rss_mib": sum(rss) / MIB,
        "total_rss_mib": (server_rss + sum(rss)) / MIB,
        "total_pss_mib": (_pss_kb(server_pid) + sum(pss)) / MIB,
        "stubs": len(rss),
    }


class MemorySampler(threading.Thread):
    def __init__(self, server_pid: int, every_s: float):
        super().__init__(daemon=True)
        self.server_pid, self.every_s = server_pid, every_s
        self.samples: list[dict] = []
        self.stop_event = threading.Event()
        self.t0 = time.monotonic()

    def sample(self) -> None:
        try:
            self.samples.append({"t_s": time.monotonic() - self.t0, **memory_sample(self.server_pid)})
        except OSError:  # the server is gone: the checks afterwards say so
            pass

    def run(self) -> None:
        while not self.stop_event.is_set():
            self.sample()
            self.stop_event.wait(self.every_s)

    def stop(self) -> list[dict]:
        self.stop_event.set()
        self.join()
        self.sample()
        return self.samples


def memory_figures(samples: list[dict], warmup_s: float = 60.0) -> dict:
    """Start / end / max of total RSS and PSS, growth over the run and after `warmup_s`, and the
    slope of a line fitted to the second half of the run (MiB per minute)."""
    if not samples:
        return {}
    first, last = samples[0], samples[-1]
    warm = next((s for s in samples if s["t_s"] >= warmup_s), first)
    half = [s for s in samples if s["t_s"] >= last["t_s"] / 2]
    slope = 0.0
    if len(half) >= 3:
        slope = float(np.polyfit([s["t_s"] / 60 for s in half], [s["total_rss_mib"] for s in half], 1)[0])
    out = {}
    for key in ("total_rss_mib", "total_pss_mib", "server_rss_mib", "stubs_rss_mib"):
        out[key.replace("_mib", "_start_mib")] = round(first[key], 1)
        out[key.replace("_mib", "_end_mib")] = round(last[key], 1)
    out.update(
        {
            "total_rss_max_mib": round(max(s["total_rss_mib"] for s in samples), 1),
            "total_rss_growth_mib": round(last["total_rss_mib"] - first["total_rss_mib"], 1),
            "total_rss_growth_pct": round(100 * (last["total_rss_mib"] / first["total_rss_mib"] - 1), 2),
            "total_rss_growth_after_warmup_mib": round(last["total_rss_mib"] - warm["total_rss_mib"], 1),
            "total_pss_growth_mib": round(last["total_pss_mib"] - first["total_pss_mib"], 1),
            "server_rss_growth_mib": round(last["server_rss_mib"] - first["server_rss_mib"], 1),
            "total_rss_slope_second_half_mib_per_min": round(slope, 3),
            "warmup_s": warmup_s,
            "stubs_start": first["stubs"],
            "stubs_end": last["stubs"],
            "samples": len(samples),
        }
    )
    return out


# ------------------------------------------------------------------ expected answers, checks


def read_requests(path: Path) -> list[dict]:
    lines = Path(path).read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "id"} for line in lines if line.strip()]


def answer(protocol: str, grpc_url: str, http_url: str, req: dict, model: str = contract.PUBLIC_MODEL):
    """-> (rec_item_ids, rec_scores) of one good request, or raises RuntimeError."""
    tensors = br.good_tensors(req)
    if protocol == "grpc":
        channel, stub = br.grpc_stub(grpc_url)
        try:
            status, out = br.send_grpc(channel, stub, br.grpc_request(model, tensors))
        finally:
            channel.close()
        ok = status == br.GRPC_OK
    else:
        status, out = br.send_http(http_url, model, *br.http_request(tensors))
        ok = status == 200
    if not ok:
        raise RuntimeError(f"{protocol} {model}: {status} {out}")
    return out["rec_item_ids"][0], out["rec_scores"][0]


def same(a, b, atol: float = 1e-5) -> bool:
    return a[0].tolist() == b[0].tolist() and bool(np.allclose(a[1], b[1], atol=atol))


def expected_answers(requests: list[dict], grpc_url: str, http_url: str, check_http: int = 4) -> list[dict]:
    expected = [answer("grpc", grpc_url, http_url, r) for r in requests]
    for i, r in enumerate(requests[:check_http]):
        if not same(answer("http", grpc_url, http_url, r), expected[i]):
            raise RuntimeError(f"request {i}: HTTP and gRPC answers differ before the soak")
    return [{"rec_item_ids": ids.tolist(), "rec_scores": scores.tolist()} for ids, scores in expected]


def after_checks(requests, expected, grpc_url: str, http_url: str, server_pid: int, stubs_before: int) -> dict:
    """Ready, every stub alive, every request answered as before over both protocols, and each
    model answering a burst of sequential requests (a dead stub fails about every other one)."""
    from oneranker_client.http_v2 import HttpV2Client

    problems = []
    ready = HttpV2Client(http_url, timeout=10).ready()
    if not ready:
        problems.append("server not ready")
    try:
        stubs_after = len(stub_pids(server_pid))
    except OSError:
        stubs_after = 0
    if stubs_after != stubs_before:
        problems.append(f"{stubs_before} Python stubs before, {stubs_after} after")
    want = [(np.asarray(e["rec_item_ids"]), np.asarray(e["rec_scores"])) for e in expected]
    for protocol in ("grpc", "http"):
        for i, r in enumerate(requests):
            try:
                if not same(answer(protocol, grpc_url, http_url, r), want[i]):
                    problems.append(f"request {i} over {protocol}: answer changed")
            except RuntimeError as err:
                problems.append(f"request {i} over {protocol}: {err}")
    for model in (contract.PUBLIC_MODEL, contract.FUSED_MODEL):
        for _ in range(6):
            try:
                answer("grpc", grpc_url, http_url, requests[0], model)
            except RuntimeError as err:
                problems.append(str(err))
    return {"ready": ready, "stubs_after": stubs_after, "problems": problems}


# ------------------------------------------------------------------ locust


def locust_command(args, grpc_url: str) -> list[str]:
    timeout = shutil.which("timeout")
    limit = int(args.duration) + int(args.users) + 60
    prefix = [timeout, "-k", "5", str(limit)] if timeout else []
    return prefix + [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(LOCUSTFILE),
        "--headless",
        "--host",
        grpc_url,
        "--users",
        str(args.users),
        "--spawn-rate",
        str(args.users),
        "--run-time",
        f"{int(args.duration)}s",
        "--stop-timeout",
        "5",
        "--only-summary",
    ]


def run_locust(args, grpc_url: str, http_url: str, expected_path: Path, limits: br.Limits, out: Path):
    stats_path = out / "locust_stats.json"
    stats_path.unlink(missing_ok=True)
    env = dict(os.environ)
    env.update(
        {
            "ONERANKER_REQUESTS": str(Path(args.requests).resolve()),
            "ONERANKER_SOAK_EXPECTED": str(expected_path),
            "ONERANKER_SOAK_STATS": str(stats_path),
            "ONERANKER_SOAK_HTTP": http_url,
            "ONERANKER_SOAK_LIMITS": json.dumps(limits.__dict__),
            "ONERANKER_SOAK_BAD_SHARE": str(args.bad_share),
            "ONERANKER_SOAK_SABOTAGE": ",".join(args.sabotage or []),
        }
    )
    cmd = locust_command(args, grpc_url)
    proc = subprocess.run(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL
    )
    (out / "locust.log").write_text(shlex.join(cmd) + "\n\n" + (proc.stdout or ""))
    stats = json.loads(stats_path.read_text()) if stats_path.exists() else None
    return proc.returncode, stats


def traffic_figures(stats: dict | None) -> dict:
    rows = (stats or {}).get("rows", [])

    def total(traffic: str, key: str, protocol: str | None = None) -> int:
        return sum(r[key] for r in rows if r["traffic"] == traffic and protocol in (None, r["protocol"]))

    out = {
        "requests": sum(r["requests"] for r in rows),
        "good_requests": total("good", "requests"),
        "bad_requests": total("bad", "requests"),
        "good_failures": total("good", "failures"),
        "bad_not_refused_as_recorded": total("bad", "failures"),
    }
    for protocol in ("grpc", "http"):
        for traffic in ("good", "bad"):
            out[f"{traffic}_{protocol}_requests"] = total(traffic, "requests", protocol)
    span = (stats or {}).get("last_request_time") or 0
    start = (stats or {}).get("start_time") or 0
    out["load_s"] = round(span - start, 1) if span and start else None
    out["rps"] = round(out["requests"] / out["load_s"], 1) if out["load_s"] else None
    return out


# ------------------------------------------------------------------ report


def plot(samples: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [s["t_s"] / 60 for s in samples]
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for key, label in (
        ("total_rss_mib", "server + stubs, RSS"),
        ("stubs_rss_mib", "Python stubs, RSS"),
        ("server_rss_mib", "tritonserver, RSS"),
    ):
        axes[0].plot(t, [s[key] for s in samples], label=label)
    axes[0].set_xlabel("minutes")
    axes[0].set_ylabel("MiB")
    axes[0].set_title("resident memory")
    axes[0].legend(fontsize=8)
    axes[1].plot(t, [s["total_pss_mib"] for s in samples], color="#76b900")
    axes[1].set_xlabel("minutes")
    axes[1].set_ylabel("MiB")
    axes[1].set_title("server + stubs, PSS (shared memory counted once)")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(out: Path, summary: dict, stats: dict | None, samples: list[dict], cases: list, command: str) -> None:
    m, tr = summary["memory"], summary["traffic"]
    lines = [
        f"# Soak: {summary['duration_s']} s of mixed good and malformed traffic, gRPC and HTTP",
        "",
        f"Machine: {summary['machine']}; {summary['users']} locust users (one process, gevent, no think time) "
        f"on the same cores as the server; {summary['bad_share']:.0%} of the calls malformed, half of all calls "
        f"over gRPC, half over KServe v2 HTTP/JSON; repository `{summary['repository']}`, "
        f"{summary['good_request_pool']} good requests from `{summary['requests_file']}`, "
        f"{len(cases)} malformed kinds (`oneranker_perf.bad_requests`, docs/bad_input.md). Commit {summary['commit']}.",
        "",
        f"**Verdict: {'PASS' if summary['passed'] else 'FAIL'}.** Good calls failed: {tr['good_failures']} of "
        f"{tr['good_requests']}; malformed calls not refused as recorded: {tr['bad_not_refused_as_recorded']} of "
        f"{tr['bad_requests']}; after the load: ready {summary['after']['ready']}, "
        f"{summary['after']['stubs_after']} of {m.get('stubs_start')} Python stubs alive, "
        f"{len(summary['after']['problems'])} problems.",
        "",
        "| protocol | traffic | requests | failures | avg ms | p50 ms | p90 ms | p99 ms | max ms |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in (stats or {}).get("rows", []):
        cells = [r["requests"], r["failures"]] + [
            f"{r[k]:.1f}" if r[k] is not None else "-" for k in ("avg_ms", "p50_ms", "p90_ms", "p99_ms", "max_ms")
        ]
        lines.append(f"| {r['protocol']} | {r['traffic']} | " + " | ".join(str(c) for c in cells) + " |")
    lines += [
        "",
        f"{tr['requests']} calls in {tr['load_s']} s ({tr['rps']} calls/s).",
        "",
        "## Memory (tritonserver + its Python-backend stubs, /proc every "
        f"{summary['rss_every_s']:g} s, {m.get('samples')} samples)",
        "",
        "| | start MiB | end MiB | growth MiB |",
        "|---|---:|---:|---:|",
        f"| RSS, server + stubs | {m['total_rss_start_mib']} | {m['total_rss_end_mib']} | "
        f"{m['total_rss_growth_mib']} ({m['total_rss_growth_pct']:+.2f} %) |",
        f"| PSS, server + stubs | {m['total_pss_start_mib']} | {m['total_pss_end_mib']} | "
        f"{m['total_pss_growth_mib']} |",
        f"| RSS, tritonserver | {m['server_rss_start_mib']} | {m['server_rss_end_mib']} | "
        f"{m['server_rss_growth_mib']} |",
        f"| RSS, {m['stubs_start']} Python stubs | {m['stubs_rss_start_mib']} | {m['stubs_rss_end_mib']} | "
        f"{round(m['stubs_rss_end_mib'] - m['stubs_rss_start_mib'], 1)} |",
        "",
        f"Peak RSS {m['total_rss_max_mib']} MiB; growth after the first {m['warmup_s']:g} s "
        f"{m['total_rss_growth_after_warmup_mib']} MiB; slope of the second half "
        f"{m['total_rss_slope_second_half_mib_per_min']} MiB/min. RSS counts the stubs' shared-memory "
        "region once per stub; PSS splits it among them. ![memory](rss.png)",
        "",
    ]
    errors = (stats or {}).get("errors", [])
    if errors or summary["after"]["problems"]:
        lines += ["## Failures", ""]
        lines += [f"- {e['occurrences']} x {e['protocol']} {e['traffic']}: {e['error'][:300]}" for e in errors[:20]]
        lines += [f"- after the load: {p}" for p in summary["after"]["problems"][:20]]
        lines.append("")
    lines += [
        "Not sent: the two malformed shapes tritonserver 2.51 does not survive (docs/bad_input.md).",
        "",
        "Command:",
        "",
        "```",
        command,
        "```",
        "",
    ]
    (out / "report.md").write_text("\n".join(lines))


# ------------------------------------------------------------------ main


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m oneranker_perf.soak", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--repository", type=Path, required=True, help="served repository (its limits; started here)")
    ap.add_argument("--requests", type=Path, required=True, help="good requests, JSONL (oneranker_perf.make_inputs)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--duration", type=float, default=600.0, help="seconds of load (default 600)")
    ap.add_argument("--users", type=int, default=4)
    ap.add_argument("--bad-share", type=float, default=0.3, help="share of malformed calls (default 0.3)")
    ap.add_argument("--rss-every", type=float, default=5.0, help="seconds between memory samples")
    ap.add_argument("--grpc-url", help="a started server's gRPC host:port (then also --http-url, --server-pid)")
    ap.add_argument("--http-url")
    ap.add_argument("--server-pid", type=int, help="pid of that tritonserver process")
    ap.add_argument(
        "--sabotage", action="append", choices=("expected", "bad-as-good", "good-as-bad"), help="fail on purpose"
    )
    return ap


RUN_FIELDS = (
    "commit",
    "machine",
    "command",
    "duration_s",
    "users",
    "bad_share",
    "rss_every_s",
    "repository",
    "requests_file",
    "good_request_pool",
    "sabotage",
    "locust_exit_code",
    "passed",
    "after",
)


def read_rss_csv(path: Path) -> list[dict]:
    """rss.csv -> the memory samples it was written from (t_s and MiB as floats, stubs as int)."""
    lines = Path(path).read_text().splitlines()
    keys = lines[0].split(",")
    return [
        {k: (int(v) if k == "stubs" else float(v)) for k, v in zip(keys, line.split(","))} for line in lines[1:] if line
    ]


def rebuild_summary(folder: Path) -> dict:
    """A soak folder's summary from its committed files: the run's parameters and verdict from
    summary.json, the traffic figures from locust_stats.json and the memory figures from rss.csv
    (the two results the figures come from, recomputed)."""
    folder = Path(folder)
    written = json.loads((folder / "summary.json").read_text())
    return {
        **{k: written[k] for k in RUN_FIELDS if k in written},
        "traffic": traffic_figures(json.loads((folder / "locust_stats.json").read_text())),
        "memory": memory_figures(read_rss_csv(folder / "rss.csv")),
    }


def main(argv=None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    given = (args.grpc_url, args.http_url, args.server_pid)
    if any(given) and not all(given):
        ap.error("--grpc-url, --http-url and --server-pid go together")
    if not 0 <= args.bad_share <= 1 or args.users < 1 or args.duration <= 0:
        ap.error("--bad-share in [0, 1], --users >= 1, --duration > 0")
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    command = "python -m oneranker_perf.soak " + shlex.join(sys.argv[1:] if argv is None else list(argv))
    server = None
    if args.grpc_url:
        grpc_url, http_url, pid = given
    else:
        from oneranker_serving.local_server import TritonServer

        server = TritonServer(args.repository, log_file=out / "tritonserver.log")
        server.start()
        server.wait_ready(300)
        grpc_url, http_url, pid = server.grpc_url, server.http_url, server.pid
    try:
        requests = read_requests(args.requests)
        limits = br.Limits.from_repository(args.repository)
        expected = expected_answers(requests, grpc_url, http_url)
        expected_path = out / "expected.json"
        expected_path.write_text(json.dumps(expected) + "\n")
        sampler = MemorySampler(pid, args.rss_every)
        stubs_before = memory_sample(pid)["stubs"]
        print(
            f"[soak] {args.duration:g} s, {args.users} users, {args.bad_share:.0%} malformed, against {grpc_url} / "
            f"{http_url} (pid {pid}, {stubs_before} stubs)",
            flush=True,
        )
        sampler.start()
        try:
            rc, stats = run_locust(args, grpc_url, http_url, expected_path, limits, out)
        finally:
            samples = sampler.stop()
        after = after_checks(requests, expected, grpc_url, http_url, pid, stubs_before)
    finally:
        if server is not None:
            server.stop()
    expected_path.unlink(missing_ok=True)

    traffic = traffic_figures(stats)
    memory = memory_figures(samples)
    passed = bool(
        stats is not None
        and traffic["good_requests"] > 0
        and traffic["bad_requests"] > 0
        and traffic["good_failures"] == 0
        and traffic["bad_not_refused_as_recorded"] == 0
        and not after["problems"]
    )
    summary = {
        "commit": git_commit(),
        "machine": f"{os.cpu_count()} cores, Python {platform.python_version()}",
        "command": command,
        "duration_s": args.duration,
        "users": args.users,
        "bad_share": args.bad_share,
        "rss_every_s": args.rss_every,
        "repository": str(args.repository),
        "requests_file": str(args.requests),
        "good_request_pool": len(requests),
        "sabotage": args.sabotage or [],
        "locust_exit_code": rc,
        "passed": passed,
        "traffic": traffic,
        "memory": memory,
        "after": after,
    }
    write_summary(out, summary)
    with open(out / "rss.csv", "w") as f:
        keys = list(samples[0]) if samples else []
        f.write(",".join(keys) + "\n")
        for s in samples:
            f.write(",".join(f"{s[k]:.3f}" if isinstance(s[k], float) else str(s[k]) for k in keys) + "\n")
    cases = br.bad_cases(requests[0], limits)
    write_report(out, summary, stats, samples, cases, command)
    if samples:
        plot(samples, out / "rss.png", f"soak {args.duration:g} s, {traffic['requests']} calls")
    print(
        f"[soak] {'PASS' if passed else 'FAIL'}: {traffic['good_failures']} of {traffic['good_requests']} good calls "
        f"failed, {traffic['bad_not_refused_as_recorded']} of {traffic['bad_requests']} malformed calls not refused "
        f"as recorded; RSS {memory.get('total_rss_start_mib')} -> {memory.get('total_rss_end_mib')} MiB; "
        f"report {out / 'report.md'}",
        flush=True,
    )
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
