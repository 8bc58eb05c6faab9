"""What the exit wait costs (issue 24): a program's exit, from its last call's return to the end of the process,
with 1, 300 and 3,000 traces pending, spanline (``exit_wait="store"``, the default) against
``mlflow.anthropic.autolog()`` exiting with the same; and a one-call script's wall time from start to exit.

Each round runs both, one after the other, as fresh processes on fresh sqlite stores (a writer the spanline app
started is stopped by its pid afterwards). One pytest-benchmark round is one pair; the answer is in
``extra_info`` and printed with ``-s``: medians, their ratio, and what each stored.

Run: ``python -m pytest benchmarks/test_exit.py --benchmark-only -s -q`` (``-k "one_call or exit_wait and 300"``
for the quick part; 3,000 pending takes minutes, MLflow's exit most of them).
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

import pytest

APP = """
import sys, time, mlflow
from spanline.testing import FakeAnthropicAPI
mlflow.set_experiment("exit")
kind, n = sys.argv[1], int(sys.argv[2])
if kind == "spanline":
    import spanline; spanline.autolog()
else:
    mlflow.anthropic.autolog()
client = FakeAnthropicAPI().client()
for i in range(n):
    client.messages.create(model="claude-fake-1", max_tokens=8, messages=[{"role": "user", "content": f"q{i}"}])
print("CALLS_DONE", time.time(), flush=True)
"""
KINDS = ("spanline", "mlflow")


def _run(kind: str, n: int) -> dict[str, Any]:
    """One program run: its wall time, its exit's share, and how many traces the store holds afterwards."""
    import mlflow

    d = tempfile.mkdtemp(prefix="spanline-exit-")
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{d}/s.db", "MLFLOW_MODEL_CATALOG_URI": "",
           "XDG_CACHE_HOME": d, "SPANLINE_SHUTDOWN_TIMEOUT": "600"}
    try:
        start = time.time()
        done = subprocess.run([sys.executable, "-c", APP, kind, str(n)], env=env, capture_output=True, text=True,
                              timeout=1800)
        end = time.time()
        assert done.returncode == 0, done.stderr[-3000:]
        calls_done = float(next(line for line in done.stdout.splitlines() if line.startswith("CALLS_DONE")).split()[1])
        mlflow.set_tracking_uri(f"sqlite:///{d}/s.db")
        exp = mlflow.get_experiment_by_name("exit")
        stored = len(mlflow.search_traces(locations=[exp.experiment_id], return_type="list",
                                          max_results=50_000)) if exp else 0
        return {"wall_s": end - start, "exit_s": end - calls_done, "stored": stored}
    finally:
        for lock in glob.glob(f"{d}/spanline/*/writer.lock"):  # a writer the app started: stopped by its pid
            try:
                with open(lock) as f:
                    pid = int(f.read().strip() or 0)
                for _ in range(2):  # the second SIGTERM ends its drain at once
                    os.kill(pid, signal.SIGTERM)
                    time.sleep(0.3)
            except (ValueError, OSError):
                pass
        shutil.rmtree(d, ignore_errors=True)


def _pairs(benchmark: Any, n: int, rounds: int, figure: str) -> dict[str, list[dict[str, Any]]]:
    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in KINDS}

    def pair() -> None:
        for kind in KINDS:
            runs[kind].append(_run(kind, n))

    benchmark.pedantic(pair, rounds=rounds, iterations=1)
    medians = {k: statistics.median(r[figure] for r in runs[k]) for k in KINDS}
    benchmark.extra_info.update({f"{k}_{figure}_median": round(v, 3) for k, v in medians.items()})
    benchmark.extra_info["ratio_spanline_to_mlflow"] = round(medians["spanline"] / medians["mlflow"], 3)
    benchmark.extra_info["stored"] = {k: [r["stored"] for r in runs[k]] for k in KINDS}
    print(f"\n{benchmark.name}: {benchmark.extra_info}")
    return runs


def test_one_call_script(benchmark: Any) -> None:
    """A one-call script from start to exit: it must not pay a writer's start-up (budget 1.2x MLflow's)."""
    benchmark.group = "exit: a one-call script, start to exit (per pair)"
    runs = _pairs(benchmark, 1, rounds=3, figure="wall_s")
    assert all(r["stored"] == 1 for r in runs["spanline"])


@pytest.mark.parametrize("pending", [1, 300, 3000])
def test_exit_wait(benchmark: Any, pending: int) -> None:
    """From the last call's return to the process's end, with ``pending`` traces not yet stored."""
    benchmark.group = f"exit: {pending} traces pending (per pair)"
    runs = _pairs(benchmark, pending, rounds=1 if pending >= 3000 else 3, figure="exit_s")
    assert all(r["stored"] == pending for r in runs["spanline"]), "spanline's exit stores every trace"
