"""A throwaway ``mlflow server`` on this machine, for spanline's tests and ``spanline bench``.

It runs on 127.0.0.1 on a free port, one worker, a sqlite backend in the given folder (or as asked), with job
execution off (its job consumers would saturate a small machine) and an empty model catalog URI (offline, the first
span with a model would otherwise stall ~7 s on a price-catalog fetch). It is started in its own process
group and killed with that group on exit, and also when startup fails, so no process outlives its user.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

STARTUP_TIMEOUT = 60.0
_LOG_TAIL_BYTES = 8_000


@dataclass(frozen=True)
class MlflowServer:
    url: str
    pid: int
    log_path: Path

    def log_tail(self, limit: int = _LOG_TAIL_BYTES) -> str:
        return _tail(self.log_path, limit)


def _tail(path: Path, limit: int = _LOG_TAIL_BYTES) -> str:
    try:
        data = path.read_bytes()
    except OSError as exc:
        return f"<no log: {exc}>"
    return data[-limit:].decode("utf-8", "replace")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _mlflow_executable() -> list[str]:
    # The mlflow script next to this interpreter (the venv's), else the module through this interpreter.
    script = Path(sys.executable).with_name("mlflow")
    return [str(script)] if script.exists() else [sys.executable, "-m", "mlflow"]


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _kill(proc: subprocess.Popen) -> None:
    """Kill the server's whole process group (gunicorn/uvicorn workers included), then reap it."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)
    # Whatever is left in the group (a worker that ignored SIGTERM, or outlived its parent) goes too.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)


@contextlib.contextmanager
def run_mlflow_server(
    tmp: Path,
    timeout: float = STARTUP_TIMEOUT,
    port: int | None = None,
    *,
    backend_store_uri: str | None = None,
    workers: int = 1,
    serve_artifacts: bool = False,
) -> Iterator[MlflowServer]:
    """Start ``mlflow server`` in ``tmp``, wait for ``/health``, yield it, and kill it afterwards.
    ``port``: a given one (a server restarted on the same address, same store), else a free one.
    ``backend_store_uri``: e.g. PostgreSQL (default: a sqlite file in ``tmp``); ``workers``: its worker
    processes; ``serve_artifacts``: artifacts through the server's proxy, stored in ``tmp/artifacts``."""
    port = port or _free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = tmp / "server.log"
    env = dict(os.environ)
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
    env["MLFLOW_MODEL_CATALOG_URI"] = ""
    cmd = [
        *_mlflow_executable(),
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        str(workers),
        "--backend-store-uri",
        backend_store_uri or f"sqlite:///{tmp / 'server.db'}",
        *(
            ["--artifacts-destination", str(tmp / "artifacts"), "--serve-artifacts"]
            if serve_artifacts
            else ["--default-artifact-root", (tmp / "artifacts").as_uri()]
        ),
    ]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            cmd,
            cwd=tmp,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + timeout
        while not _healthy(url):
            if proc.poll() is not None:
                raise RuntimeError(
                    f"mlflow server exited with code {proc.returncode} before answering /health; "
                    f"log {log_path}:\n{_tail(log_path)}"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"mlflow server did not answer {url}/health within {timeout:.0f} s; "
                    f"log {log_path}:\n{_tail(log_path)}"
                )
            time.sleep(0.2)
        yield MlflowServer(url=url, pid=proc.pid, log_path=log_path)
    finally:
        _kill(proc)
