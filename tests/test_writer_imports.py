"""The writer's process does no repeated work per trace that MLflow's store would: MLflow's cost lookup tries
``import litellm`` for every chat span it stores, and without litellm installed Python searches ``sys.path``
again each time (a failed import is not remembered). The writer marks it missing once (``compat.
remember_missing_modules``); the traces and their cost are stored as before (MLflow's own price table)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest
from helpers import APP, app_env, run_script, stored_traces

# The writer run in an interpreter that counts the import system's searches for litellm, then prints them.
COUNTING_WRITER = """
import json, sys
searches = []

class Count:
    def find_spec(self, name, path=None, target=None):
        if name == "litellm":
            searches.append(name)
        return None

sys.meta_path.insert(0, Count())
from spanline.cli import main
code = main(["writer", "--once", "--log-dir", sys.argv[1]])
print(json.dumps({"code": code, "searches": len(searches)}))
"""


@pytest.mark.skipif(importlib.util.find_spec("litellm") is not None, reason="litellm is installed here")
def test_the_writer_looks_for_a_missing_litellm_once_not_per_chat_span(tmp_path):
    uri, n = f"sqlite:///{tmp_path}/store.db", 20
    # A model in MLflow's price table, so the store computes each trace's cost (where litellm is looked for).
    result = _app_then_writer(tmp_path, uri, "imports", n, APP.replace("claude-fake-1", "claude-sonnet-4-5"),
                              COUNTING_WRITER)
    traces = stored_traces(uri, "imports")
    assert len(traces) == n
    # Cost is still computed (MLflow's own table), from the same usage.
    assert all(json.loads(t.info.trace_metadata["mlflow.trace.cost"])["total_cost"] > 0 for t in traces)
    assert result["searches"] <= 1, f"{result['searches']} searches for litellm for {n} chat spans"


# The writer run in an interpreter that prints how many objects its cyclic GC no longer walks, once it is done.
FREEZE_WRITER = """
import gc, json, sys
from spanline.cli import main
code = main(["writer", "--once", "--log-dir", sys.argv[1]])
print(json.dumps({"code": code, "frozen": gc.get_freeze_count()}))
"""


def test_the_writer_takes_its_startup_objects_out_of_the_gc_s_way_and_stores_everything(tmp_path):
    """Each full collection walked every object of mlflow's and SQLAlchemy's modules (~270,000: ~140 ms, once per
    few thousand traces). The writer process freezes them after its first batch; its traces are stored whole."""
    uri, n = f"sqlite:///{tmp_path}/store.db", 20
    result = _app_then_writer(tmp_path, uri, "frozen", n, APP, FREEZE_WRITER)
    assert result["frozen"] > 50_000, result
    assert len(stored_traces(uri, "frozen")) == n


def _app_then_writer(tmp_path, uri: str, experiment: str, n: int, app_code: str, writer_code: str) -> dict:
    """The app makes ``n`` calls and only appends (no writer started, its exit waits for the disk); then
    ``writer_code`` runs the writer over the log in a fresh interpreter and prints a JSON line, returned here."""
    log_dir = str(tmp_path / "log")
    env = app_env(uri, experiment, n, SPANLINE_LOG_DIR=log_dir, SPANLINE_WRITER_AUTOSTART="0",
                  SPANLINE_EXIT_WAIT="disk")
    app = run_script(app_code, env=env)
    assert app.returncode == 0, app.stderr[-3000:]
    done = subprocess.run([sys.executable, "-c", writer_code, log_dir], capture_output=True, text=True,
                          env={**os.environ, "MLFLOW_TRACKING_URI": uri, "MLFLOW_MODEL_CATALOG_URI": ""}, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["code"] == 0
    return result
