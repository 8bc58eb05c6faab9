"""What a job's process measures about itself: CPU (the process's, the calling thread's, and its writer
process's), traces and spans in its store, RSS, spanline's counters, and percentiles of its samples."""

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


class StoredCounter:
    """``count()``: traces in the store now, cheap enough to call every 20 ms (one sqlite connection kept
    open; through a server, ``count_stored``). Used from one thread."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        path = db_path(uri)
        self._conn = sqlite3.connect(path, timeout=60, check_same_thread=False) if path else None

    def count(self) -> int:
        if self._conn is None:
            return count_stored(self.uri)[0]
        return int(self._conn.execute("SELECT COUNT(*) FROM trace_info").fetchone()[0])

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def spanline_stats() -> dict[str, Any]:
    import dataclasses

    import spanline

    return dataclasses.asdict(spanline.stats())


def process_cpu_s(pid: int) -> float | None:
    """CPU seconds (user + system, all threads) process ``pid`` has used so far, from ``/proc/<pid>/stat``
    (in clock ticks: 10 ms); None if it is gone. For a process that is not this one: spanline's writer."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Cpu(NamedTuple):
    """CPU seconds over a timed section: the whole process's (all threads), and the calling thread's alone.
    The difference is what background threads took (spanline's worker, MLflow's export threads). ``writer``:
    the writer process's over the same section, when the configuration has one (spanline's event log)."""

    process: float
    caller: float
    writer: float | None = None
    writer_before: float | None = None  # the writer's CPU before the section: its start and the warm-up


class CpuClock:
    """Started on creation; ``read()`` gives the :class:`Cpu` used since, from the thread that created it.
    With ``writer_pid``, the writer process's CPU over the same span too (None if it exited meanwhile: its
    figure would miss its last part)."""

    def __init__(self, writer_pid: int | None = None) -> None:
        self._writer_pid = writer_pid
        self._writer = process_cpu_s(writer_pid) if writer_pid else None
        self._process, self._caller = time.process_time(), time.thread_time()

    def read(self) -> Cpu:
        process, caller = time.process_time() - self._process, time.thread_time() - self._caller
        writer = None
        if self._writer_pid and self._writer is not None:
            now = process_cpu_s(self._writer_pid)
            writer = now - self._writer if now is not None else None
        return Cpu(process, caller, writer, self._writer)


def percentile(sorted_values: Sequence[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    k = (len(sorted_values) - 1) * q
    lo = int(k)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (k - lo)
