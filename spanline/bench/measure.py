"""What a job's process measures about itself: CPU (the process's and the calling thread's), traces and
spans in its store, RSS, spanline's counters, and percentiles of its samples."""

from __future__ import annotations

import contextlib
import os
import resource
import sqlite3
import time
from collections.abc import Sequence
from typing import Any, NamedTuple

from .workload import EXPERIMENT


def db_path(uri: str) -> str | None:
    return uri[len("sqlite:///") :] if uri.startswith("sqlite:///") else None


def count_stored(uri: str) -> tuple[int, int]:
    """(traces, spans) in the store. For sqlite the rows are counted directly (fast for 10,000 traces,
    and safe while another thread writes); for a server, through ``mlflow.search_traces``."""
    path = db_path(uri)
    if path is not None:
        with contextlib.closing(sqlite3.connect(path, timeout=60)) as conn:
            traces = conn.execute("SELECT COUNT(*) FROM trace_info").fetchone()[0]
            spans = conn.execute("SELECT COUNT(*) FROM spans").fetchone()[0]
        return int(traces), int(spans)
    import mlflow

    exp = mlflow.get_experiment_by_name(EXPERIMENT)
    ids = [exp.experiment_id] if exp else ["0"]
    return len(mlflow.search_traces(locations=ids, return_type="list", include_spans=False)), -1


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def spanline_stats() -> dict[str, Any]:
    import dataclasses

    import spanline

    return dataclasses.asdict(spanline.stats())


class Cpu(NamedTuple):
    """CPU seconds over a timed section: the whole process's (all threads), and the calling thread's alone.
    The difference is what background threads took (spanline's worker, MLflow's export threads)."""

    process: float
    caller: float


class CpuClock:
    """Started on creation; ``read()`` gives the :class:`Cpu` used since, from the thread that created it."""

    def __init__(self) -> None:
        self._process, self._caller = time.process_time(), time.thread_time()

    def read(self) -> Cpu:
        return Cpu(time.process_time() - self._process, time.thread_time() - self._caller)


def percentile(sorted_values: Sequence[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    k = (len(sorted_values) - 1) * q
    lo = int(k)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (k - lo)
