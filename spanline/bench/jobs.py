"""What runs inside a job's process: dispatch on the job's kind, catch any failure, write the result file
and leave without exit handlers."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any

from .caller_path import run_paired_job
from .memory import run_memory_job
from .scenarios import run_scenario_job
from .storepaths import run_store_path_job
from .throughput import run_throughput_job
from .workload import EXPERIMENT


def run_init_db_job(job: dict[str, Any]) -> dict[str, Any]:
    """Create the template sqlite store (MLflow's migrations run once per bench, not per process), with
    the experiment every process then sets as its active one. Its artifacts (MLflow's own export uploads
    each trace's data there) go to the bench's temp dir, not to ``./mlruns`` in the user's directory."""
    from mlflow.tracking import MlflowClient

    MlflowClient(job["uri"]).create_experiment(EXPERIMENT, artifact_location=job["artifacts"])
    return {"ok": True}


JOB_KINDS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "scenario": run_scenario_job,
    "paired": run_paired_job,
    "throughput": run_throughput_job,
    "memory": run_memory_job,
    "store_path": run_store_path_job,
    "init_db": run_init_db_job,
}


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    """Run one job in this process (a fresh child) and return its results (never raises)."""
    os.environ["MLFLOW_TRACKING_URI"] = job["uri"]
    os.environ["MLFLOW_MODEL_CATALOG_URI"] = ""
    if job.get("cache"):
        # spanline's event log (and its writer's files) in the bench's temp dir, not the user's cache; one
        # directory per tracking URI, so one writer per job.
        os.environ["XDG_CACHE_HOME"] = job["cache"]
    t0 = time.perf_counter()
    try:
        if job["kind"] != "init_db":
            # As a user would (DESIGN.md 1.), for every configuration alike, before anything is timed.
            import mlflow

            mlflow.set_experiment(EXPERIMENT)
        result = JOB_KINDS[job["kind"]](job)
        result["ok"] = True
    except BaseException as exc:  # report it to the orchestrator, which prints it in the table
        import traceback

        result = {"ok": False, "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
    result["job_wall_s"] = time.perf_counter() - t0
    return result


def child_main(job: dict[str, Any]) -> None:
    """In the job's process: run it, write its result file, and leave without exit handlers (the
    process's tracing state is thrown away; everything measured was flushed already)."""
    code = 0
    try:
        result = run_job(job)
        with open(job["out"], "w") as f:
            json.dump(result, f)
    except BaseException:
        code = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
