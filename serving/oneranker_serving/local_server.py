"""Run the CPU ``tritonserver`` shipped in the ``nvidia-pytriton`` wheel (no Docker needed).

:class:`TritonServer` takes the binary, the Python backend folder and the environment from
:mod:`oneranker_serving.triton_install` (which locates them in the installed wheel, or under a
``triton_root`` laid out like it) and runs the server as a child process:

* the backend folder holds ``backends/python`` plus the stub of the *running* Python, and the
  server starts with this virtualenv's ``bin`` first on ``PATH`` (triton_install explains why);
* it listens on 127.0.0.1 only, on the ports asked for or on free ones (:func:`find_free_port`);
* everything it prints goes to one log file, whose error lines (harmless CPU-only noise left out)
  and tail make the message of a failed start;
* with an admin key (``admin_key=``, CLI ``--admin-key-env``) the control plane is closed: the
  APIs of ``restricted_api.RESTRICTED_APIS`` answer only requests carrying the key (the same flags
  as docker-compose.yml; see ``oneranker_client.restricted_api``).

The locating functions of triton_install are importable from here too.

Torch-free on purpose: importable from thin client/perf environments.

CLI::

    python -m oneranker_serving.local_server --model-repository DIR \\
        [--grpc-port 8001 --http-port 8000 --metrics-port 8002 --log-file F] \\
        [--admin-key-env ONERANKER_ADMIN_KEY [--restricted-apis model-repository,...]]
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path

from oneranker_client import restricted_api

from .triton_install import (
    BOOTSTRAP_HINT,
    find_tritonserver,
    prepare_backend_dir,
    pytriton_libs_dir,
    server_env,
    stub_versions,
)

# tritonserver flags of a repository whose configs set instance priorities
# (oneranker_build.render.instance_group_block: one preferred instance per engine model). The rate
# limiter makes those priorities count; it has no resource limits here, so no batch waits for a
# resource. A repository without priorities (the TensorRT one: native plans and a plain
# preprocess) is served without it. deploy/triton-start.sh applies the same rule in the images.
SCHEDULING_FLAGS = ("--rate-limit=execution_count",)
PRIORITY_MARK = "rate_limiter"  # in a config.pbtxt: the model sets instance priorities


def scheduling_flags(model_repository: str | os.PathLike) -> tuple[str, ...]:
    """SCHEDULING_FLAGS when a model config of the repository sets a rate limiter block, else ()."""
    configs = Path(model_repository).glob("*/config.pbtxt")
    return SCHEDULING_FLAGS if any(PRIORITY_MARK in c.read_text() for c in configs) else ()


__all__ = [
    "BOOTSTRAP_HINT",
    "SCHEDULING_FLAGS",
    "TritonServer",
    "scheduling_flags",
    "find_free_port",
    "find_tritonserver",
    "prepare_backend_dir",
    "pytriton_libs_dir",
    "server_env",
    "stub_versions",
    "main",
]

_MODEL_CONTROL_MODES = ("none", "explicit", "poll")
# Health checks go to 127.0.0.1: never through an http_proxy from the environment.
_NO_PROXY_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _http_status(url: str, headers: dict, timeout: float) -> int:
    """GET `url` (no proxy) -> its HTTP status, or -1 when nothing answers."""
    try:
        with _NO_PROXY_OPENER.open(urllib.request.Request(url, headers=headers), timeout=timeout) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except (TimeoutError, urllib.error.URLError, ConnectionError, OSError):
        return -1


def find_free_port(exclude: Sequence[int] = ()) -> int:
    """A TCP port free on 127.0.0.1 right now (the usual small race applies)."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in exclude:
            return port
    raise RuntimeError("could not find a free TCP port")


def _tail(path: Path | None, n: int = 60) -> str:
    if path is None or not Path(path).exists():
        return "(no log)"
    with open(path, errors="replace") as f:
        return "".join(deque(f, maxlen=n))


# Error lines that every CPU-only start prints: not the reason anything failed.
_HARMLESS = ("CudaDriverHelper", "unable to create stream", "NVML", "DCGM", "CUDA driver version")


def _error_lines(path: Path | None, limit: int = 15, width: int = 600) -> list[str]:
    """glog error lines (``E1125 ...``) and stub failures from the log, harmless CPU noise out."""
    if path is None or not Path(path).exists():
        return []
    found: list[str] = []
    with open(path, errors="replace") as f:
        for line in f:
            if (line[:1] == "E" and line[1:5].isdigit()) or "Failed to initialize" in line:
                if not any(h in line for h in _HARMLESS):
                    line = line.rstrip("\n")
                    found.append(line if len(line) <= width else line[:width] + " ...")
    return found[-limit:]


def _failure_report(path: Path | None, n: int = 60) -> str:
    errors = _error_lines(path)
    head = ("errors in the log:\n" + "\n".join(errors) + "\n") if errors else ""
    return f"{head}last {n} lines of {path}:\n{_tail(path, n)}"


# ---------------------------------------------------------------------------------------------
# The server
# ---------------------------------------------------------------------------------------------
class TritonServer:
    """A ``tritonserver`` child process; usable as a context manager (start + wait_ready / stop).

    Ports given as 0 are picked free at ``start()``. Everything the server prints (stdout and
    stderr, including the Python stubs' output) goes to ``log_file`` (a temporary file when
    None). ``triton_root``: take the binary, libraries, backend and stubs from there instead of
    the installed wheel (see :mod:`.triton_install`). ``admin_key``: close ``restricted_apis``
    (default ``restricted_api.RESTRICTED_APIS``) over HTTP and gRPC behind that key.
    ``scheduling_flags``: by default those the repository needs (``scheduling_flags()``).
    """

    def __init__(
        self,
        model_repository: str | os.PathLike,
        *,
        grpc_port: int = 0,
        http_port: int = 0,
        metrics_port: int = 0,
        log_file: str | os.PathLike | None = None,
        model_control_mode: str = "none",
        load_models: Sequence[str] = (),
        extra_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        backend_dir: str | os.PathLike | None = None,
        log_verbose: int = 0,
        ready_timeout: float = 60.0,
        cpus: Sequence[int] | None = None,
        triton_root: str | os.PathLike | None = None,
        admin_key: str | None = None,
        restricted_apis: Sequence[str] = restricted_api.RESTRICTED_APIS,
        scheduling_flags: Sequence[str] | None = None,
    ) -> None:
        if model_control_mode not in _MODEL_CONTROL_MODES:
            raise ValueError(f"model_control_mode must be one of {_MODEL_CONTROL_MODES}")
        self.model_repository = Path(model_repository).resolve()
        self._req_ports = (int(grpc_port), int(http_port), int(metrics_port))
        self.grpc_port, self.http_port, self.metrics_port = self._req_ports
        self.log_file = Path(log_file).resolve() if log_file is not None else None
        self.model_control_mode = model_control_mode
        self.load_models = list(load_models)
        self.extra_args = list(extra_args)
        self.env_overrides = dict(env or {})
        self.backend_dir = Path(backend_dir).resolve() if backend_dir is not None else None
        self.log_verbose = int(log_verbose)
        self.ready_timeout = float(ready_timeout)
        self.cpus = sorted(set(cpus)) if cpus else None  # CPU affinity of the server and its stubs
        self.triton_root = Path(triton_root).resolve() if triton_root is not None else None
        self.admin_key = admin_key or None
        self.restricted_apis = tuple(restricted_apis)
        self._scheduling_flags = None if scheduling_flags is None else tuple(scheduling_flags)
        if self.admin_key:  # a malformed key fails here, not in the server's argument parser
            restricted_api.restricted_api_flags(self.admin_key, self.restricted_apis)
        self.process: subprocess.Popen | None = None
        self._tmpdir: tempfile.TemporaryDirectory | None = None
        self._log_handle = None

    # -- addresses -----------------------------------------------------------------------------
    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    @property
    def admin_http_headers(self) -> dict[str, str]:
        """What an HTTP client sends to reach the restricted APIs ({} when they are open)."""
        return restricted_api.http_headers(self.admin_key) if self.admin_key else {}

    @property
    def admin_grpc_headers(self) -> dict[str, str]:
        """The same for gRPC (tritonclient.grpc ``headers=``)."""
        return restricted_api.grpc_headers(self.admin_key) if self.admin_key else {}

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    @property
    def returncode(self) -> int | None:
        return self.process.poll() if self.process else None

    def is_running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_tail(self, n: int = 60) -> str:
        return _tail(self.log_file, n)

    def failure_report(self, n: int = 60) -> str:
        """Error lines of the log (harmless CPU-only noise left out) + its last ``n`` lines."""
        return _failure_report(self.log_file, n)

    # -- command line and environment ------------------------------------------------------------
    @property
    def scheduling_flags(self) -> tuple[str, ...]:
        """The ones given, else those the repository needs (`scheduling_flags(repository)`)."""
        if self._scheduling_flags is not None:
            return self._scheduling_flags
        return scheduling_flags(self.model_repository)

    def build_env(self) -> dict[str, str]:
        env = server_env(self.triton_root)
        env.update(self.env_overrides)
        return env

    def build_command(self) -> list[str]:
        assert self.backend_dir is not None
        cmd = [
            str(find_tritonserver(self.triton_root)),
            f"--model-repository={self.model_repository}",
            f"--backend-directory={self.backend_dir}",
            f"--model-control-mode={self.model_control_mode}",
            "--grpc-address=127.0.0.1",
            f"--grpc-port={self.grpc_port}",
            "--http-address=127.0.0.1",
            f"--http-port={self.http_port}",
            "--metrics-address=127.0.0.1",
            f"--metrics-port={self.metrics_port}",
            "--allow-gpu-metrics=false",
            f"--log-verbose={self.log_verbose}",
            *self.scheduling_flags,
        ]
        cmd += [f"--load-model={m}" for m in self.load_models]
        if self.admin_key:
            cmd += restricted_api.restricted_api_flags(self.admin_key, self.restricted_apis)
        cmd += self.extra_args
        return cmd

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> TritonServer:
        if self.is_running():
            raise RuntimeError(f"tritonserver already running (pid {self.pid})")
        if not self.model_repository.is_dir():
            raise RuntimeError(f"model repository {self.model_repository} is not a directory")
        if (self.backend_dir is None or self.log_file is None) and self._tmpdir is None:
            self._tmpdir = tempfile.TemporaryDirectory(prefix="oneranker-triton-")
        if self.backend_dir is None:
            self.backend_dir = Path(self._tmpdir.name) / "backends"
        prepare_backend_dir(self.backend_dir, self.triton_root)
        if self.log_file is None:
            self.log_file = Path(self._tmpdir.name) / "tritonserver.log"
        self.log_file.parent.mkdir(parents=True, exist_ok=True)

        used: list[int] = [p for p in self._req_ports if p]
        ports = []
        for p in self._req_ports:
            if not p:
                p = find_free_port(exclude=used)
                used.append(p)
            ports.append(p)
        self.grpc_port, self.http_port, self.metrics_port = ports

        cmd = self.build_command()
        self._log_handle = open(self.log_file, "ab", buffering=0)
        self._log_handle.write(f"# {restricted_api.redact(' '.join(cmd), self.admin_key)}\n".encode())
        cpus = self.cpus
        self.process = subprocess.Popen(
            cmd,
            preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None,
            stdin=subprocess.DEVNULL,
            stdout=self._log_handle,
            stderr=subprocess.STDOUT,
            env=self.build_env(),
            cwd=str(self.model_repository),
            # Own process group: a terminal's Ctrl-C does not hit it directly (we stop it
            # gracefully), and a final SIGKILL can take the stub processes along.
            start_new_session=True,
        )
        return self

    def _check_alive(self, what: str) -> None:
        assert self.process is not None
        rc = self.process.poll()
        if rc is not None:
            raise RuntimeError(
                f"tritonserver exited with code {rc} while waiting for {what}; {self.failure_report(60)}"
            )

    def _get(self, path: str, timeout: float = 2.0) -> int:
        return _http_status(f"http://{self.http_url}{path}", self.admin_http_headers, timeout)

    def _metrics_status(self) -> int:
        return _http_status(self.metrics_url, {}, 2.0)

    def _wait(self, path: str, what: str, timeout: float, probe=None) -> None:
        """Poll until GET `path` on the HTTP port answers 200 (and `probe()`, when given, does)."""
        if self.process is None:
            raise RuntimeError("tritonserver not started")
        deadline = time.monotonic() + timeout
        while True:
            self._check_alive(what)
            if self._get(path) == 200 and (probe is None or probe() == 200):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"tritonserver not {what} after {timeout:.0f} s (pid {self.pid}); {self.failure_report(60)}"
                )
            time.sleep(0.1)

    def wait_ready(self, timeout: float | None = None) -> TritonServer:
        """Poll ``/v2/health/ready`` and the metrics endpoint, which tritonserver starts tens of
        milliseconds after reporting ready; RuntimeError (with the log tail) if the process dies."""
        timeout = self.ready_timeout if timeout is None else timeout
        self._wait("/v2/health/ready", "ready", timeout, probe=self._metrics_status)
        return self

    def wait_model_ready(
        self, name: str, timeout: float | None = None, version: str | int | None = None
    ) -> TritonServer:
        path = f"/v2/models/{name}" + (f"/versions/{version}" if version is not None else "")
        self._wait(
            f"{path}/ready",
            f"ready to serve model {name!r}",
            self.ready_timeout if timeout is None else timeout,
        )
        return self

    def is_live(self) -> bool:
        return self.is_running() and self._get("/v2/health/live") == 200

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM, then SIGKILL (whole process group) after ``timeout`` s. Returns exit code."""
        proc = self.process
        rc = None
        if proc is not None:
            if proc.poll() is None:
                try:
                    proc.send_signal(signal.SIGTERM)
                except ProcessLookupError:
                    pass
                try:
                    proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    try:  # the group holds the Python-backend stubs too
                        os.killpg(proc.pid, signal.SIGKILL)
                    except (ProcessLookupError, PermissionError):
                        proc.kill()
                    proc.wait(timeout=10)
            rc = proc.returncode
        if self._log_handle is not None:
            self._log_handle.close()
            self._log_handle = None
        return rc

    def close(self) -> None:
        """stop() and delete the temporary folder (temporary backend copy and log, if any)."""
        self.stop()
        if self._tmpdir is not None:
            tmp = self._tmpdir.name
            if self.backend_dir is not None and str(self.backend_dir).startswith(tmp):
                self.backend_dir = None
            if self.log_file is not None and str(self.log_file).startswith(tmp):
                self.log_file = None
            self._tmpdir.cleanup()
            self._tmpdir = None

    def __enter__(self) -> TritonServer:
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "running" if self.is_running() else f"stopped rc={self.returncode}"
        return f"TritonServer(pid={self.pid}, grpc={self.grpc_url}, http={self.http_url}, {state})"


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m oneranker_serving.local_server",
        description="Run the CPU tritonserver from the nvidia-pytriton wheel in the foreground.",
    )
    ap.add_argument("--model-repository", required=True, type=Path)
    ap.add_argument("--grpc-port", type=int, default=8001, help="0 = pick a free port")
    ap.add_argument("--http-port", type=int, default=8000, help="0 = pick a free port")
    ap.add_argument("--metrics-port", type=int, default=8002, help="0 = pick a free port")
    ap.add_argument(
        "--log-file", type=Path, default=None, help="server log (default: a new file in the temp dir, printed at start)"
    )
    ap.add_argument("--model-control-mode", choices=_MODEL_CONTROL_MODES, default="none")
    ap.add_argument(
        "--load-model", action="append", default=[], help="model to load at start-up (explicit mode); repeatable"
    )
    ap.add_argument(
        "--backend-dir", type=Path, default=None, help="where to prepare the Python backend (default: temporary)"
    )
    ap.add_argument("--log-verbose", type=int, default=0)
    ap.add_argument("--ready-timeout", type=float, default=120.0)
    ap.add_argument(
        "--admin-key-env",
        metavar="NAME",
        default=None,
        help="close the control plane: the restricted APIs need the key held by environment variable NAME "
        f"(e.g. {restricted_api.ADMIN_KEY_ENV}; never put the key itself on a command line)",
    )
    ap.add_argument(
        "--restricted-apis",
        default=",".join(restricted_api.RESTRICTED_APIS),
        help="with --admin-key-env: the API categories to close (default: %(default)s)",
    )
    ap.add_argument("extra", nargs="*", help="extra tritonserver arguments (after --)")
    args = ap.parse_args(argv)
    admin_key = None
    if args.admin_key_env:
        admin_key = restricted_api.admin_key_from_env(args.admin_key_env)
        if admin_key is None:
            ap.error(f"--admin-key-env {args.admin_key_env}: that environment variable holds no key")
    restricted = [c.strip() for c in args.restricted_apis.split(",") if c.strip()]
    if admin_key:
        try:
            restricted_api.restricted_api_flags(admin_key, restricted)
        except ValueError as e:
            ap.error(str(e))

    stop_event = threading.Event()
    received: list[int] = []

    def _on_signal(signum, _frame):
        received.append(signum)
        stop_event.set()

    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)

    log_file = args.log_file
    if log_file is None:
        fd, name = tempfile.mkstemp(prefix="tritonserver-", suffix=".log")
        os.close(fd)
        log_file = Path(name)

    server = TritonServer(
        args.model_repository,
        grpc_port=args.grpc_port,
        http_port=args.http_port,
        metrics_port=args.metrics_port,
        log_file=log_file,
        model_control_mode=args.model_control_mode,
        load_models=args.load_model,
        extra_args=args.extra,
        backend_dir=args.backend_dir,
        log_verbose=args.log_verbose,
        ready_timeout=args.ready_timeout,
        admin_key=admin_key,
        restricted_apis=restricted,
    )
    try:
        server.start()
        print(f"tritonserver pid {server.pid}, log {server.log_file}", flush=True)
        deadline = time.monotonic() + args.ready_timeout
        while not stop_event.is_set():
            server._check_alive("ready")
            if server._get("/v2/health/ready") == 200:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"tritonserver not ready after {args.ready_timeout:.0f} s; {server.failure_report(60)}"
                )
            stop_event.wait(0.1)
        if stop_event.is_set():
            print("interrupted before ready; stopping", flush=True)
            return 130
        print(f"ready  grpc={server.grpc_url}  http={server.http_url}  metrics={server.metrics_url}", flush=True)
        if admin_key:
            print(f"restricted ({','.join(server.restricted_apis)}): key from ${args.admin_key_env}", flush=True)
        while not stop_event.wait(0.5):
            if not server.is_running():
                print(
                    f"tritonserver exited with code {server.returncode}; {server.failure_report(60)}",
                    file=sys.stderr,
                    flush=True,
                )
                return 1
        print(f"signal {received[0]}: stopping tritonserver", flush=True)
        rc = server.stop()
        print(f"tritonserver stopped (exit code {rc})", flush=True)
        return 0
    except (RuntimeError, TimeoutError) as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 1
    finally:
        server.close()  # the log file is kept: it is not inside the temporary folder


if __name__ == "__main__":
    sys.exit(main())
