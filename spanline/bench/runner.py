"""The process runner: every job runs in a fresh process, forked from a preloaded interpreter (a fork
server reading jobs on stdin) or spawned (``--spawn``); plus a local ``mlflow server`` for TW."""

from __future__ import annotations

import contextlib
import gc
import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .jobs import child_main

SERVER_STARTUP_TIMEOUT = 90.0

PRELOAD = (
    "anthropic",
    "httpx2",
    "mlflow",
    "mlflow.anthropic",
    "mlflow.store.tracking.sqlalchemy_store",
    "mlflow.tracing",
    "spanline",
    "spanline.pipeline.sink",
    "spanline.testing",
)


def _preload() -> None:
    """What every job's process has imported before it starts (in the fork server)."""
    import importlib

    for name in PRELOAD:
        importlib.import_module(name)


def _wait_child(pid: int, timeout: float) -> int | None:
    """The child's wait status, or None after ``timeout`` seconds (the child is then killed)."""
    deadline = time.monotonic() + timeout
    pidfd = None
    with contextlib.suppress(AttributeError, OSError):
        pidfd = os.pidfd_open(pid)
    try:
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                return status
            left = deadline - time.monotonic()
            if left <= 0:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                return None
            if pidfd is not None:
                select.select([pidfd], [], [], left)
            else:
                time.sleep(min(0.05, left))
    finally:
        if pidfd is not None:
            os.close(pidfd)


def fork_server_main() -> int:
    """Read jobs (JSON lines) on stdin; fork a child per job; answer one JSON line per job on stdout."""
    _preload()
    gc.collect()
    gc.freeze()  # children touch fewer inherited pages (copy-on-write), so they start alike
    out = sys.stdout
    out.write(json.dumps({"ready": True}) + "\n")
    out.flush()
    for line in sys.stdin:
        job = json.loads(line)
        log = os.open(job["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        pid = os.fork()
        if pid == 0:
            os.dup2(log, 1)
            os.dup2(log, 2)
            os.close(log)
            child_main(job)
        os.close(log)
        status = _wait_child(pid, job["timeout"])
        reply = {"pid": pid, "timed_out": status is None}
        if status is not None:
            reply["exit"] = os.waitstatus_to_exitcode(status)
        out.write(json.dumps(reply) + "\n")
        out.flush()
    return 0


def _bench_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SPANLINE_", "MLFLOW_"))}
    env["MLFLOW_MODEL_CATALOG_URI"] = ""
    env["PYTHONHASHSEED"] = "0"
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("PYTHONWARNINGS", None)
    return env


class Runner:
    """Runs jobs in fresh processes: forked from a preloaded server, or spawned (``--spawn``)."""

    def __init__(self, workdir: str, spawn: bool) -> None:
        self.workdir = workdir
        self.spawn = spawn
        self.proc: subprocess.Popen[str] | None = None
        self._count = 0
        self._server_log = open(os.path.join(workdir, "fork-server.log"), "w")  # noqa: SIM115
        if not spawn:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "spanline.bench", "--fork-server"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=self._server_log,
                env=_bench_env(),
                text=True,
                bufsize=1,
            )
            ready = self.proc.stdout.readline() if self.proc.stdout else ""
            if not ready:
                self.close()
                raise RuntimeError(f"the bench fork server did not start; see {self._server_log.name}")

    def run(self, job: dict[str, Any], timeout: float = 1800.0) -> dict[str, Any]:
        self._count += 1
        stem = os.path.join(self.workdir, f"job{self._count:03d}-{job['kind']}")
        job = {**job, "out": stem + ".json", "log": stem + ".log", "timeout": timeout}
        if self.spawn:
            with open(job["log"], "w") as log:
                try:
                    subprocess.run(
                        [sys.executable, "-m", "spanline.bench", "--job", json.dumps(job)],
                        stdout=log,
                        stderr=log,
                        env=_bench_env(),
                        timeout=timeout,
                        check=False,
                    )
                    reply: dict[str, Any] = {"timed_out": False}
                except subprocess.TimeoutExpired:
                    reply = {"timed_out": True}
        else:
            assert self.proc is not None and self.proc.stdin is not None and self.proc.stdout is not None
            self.proc.stdin.write(json.dumps(job) + "\n")
            self.proc.stdin.flush()
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"the bench fork server died; see {self._server_log.name}")
            reply = json.loads(line)
        if reply.get("timed_out"):
            return {"ok": False, "error": f"timed out after {timeout:.0f} s (log: {job['log']})"}
        try:
            with open(job["out"]) as f:
                return json.load(f)
        except (OSError, ValueError):
            return {
                "ok": False,
                "error": f"the job's process failed (log: {job['log']}):\n{_tail(job['log'])}",
            }

    def close(self) -> None:
        if self.proc is not None:
            with contextlib.suppress(OSError, ValueError):
                if self.proc.stdin:
                    self.proc.stdin.close()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None
        self._server_log.close()


def _tail(path: str, limit: int = 2000) -> str:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return ""
    return data[-limit:].decode("utf-8", "replace")


# ---------------------------------------------------------------------------------------------------
# A real local mlflow server (for TW in a full run)


@contextlib.contextmanager
def mlflow_server(workdir: str) -> Iterator[str]:
    """A local ``mlflow server`` (``spanline.mlflow_server``) for the TW scenario; yields its URL."""
    from spanline.mlflow_server import run_mlflow_server

    with run_mlflow_server(Path(workdir), timeout=SERVER_STARTUP_TIMEOUT) as server:
        yield server.url
