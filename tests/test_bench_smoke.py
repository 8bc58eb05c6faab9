"""`spanline bench` runs end to end (one small scenario), so the benchmark cannot rot unnoticed."""

from __future__ import annotations

import os
import subprocess
import sys


def test_bench_worker_throughput_scenario_runs():
    env = {**os.environ, "MLFLOW_MODEL_CATALOG_URI": ""}
    done = subprocess.run(
        [sys.executable, "-m", "spanline.bench", "--quick", "--scenarios", "TW", "--rounds", "1", "--no-progress"],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    table = done.stdout
    assert "## Worker throughput" in table
    assert "error" not in table.lower(), table
    assert "| sqlite (in-process) | 100 |" in table
