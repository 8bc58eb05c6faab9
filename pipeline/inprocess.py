"""The in-process store mode: assemble the drained events into spans and write them to MLflow from this process.

Used with ``durability="memory"``, or when the event log cannot be written (counted in
``stats().log_fallbacks``). In: decoded events, handed over one by one by the worker thread as it drains the
queue (into ``assembler``). Out: complete traces written with ``MlflowSink.write`` in batches of ``batch_size``, each
retried with backoff; what still fails is counted as dropped (reason ``sink_error``): in-process there is
nowhere else to keep it. Runs on the worker thread.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from .assembler import Assembler, Unit
from .policy import ContentPolicy
from .stats import Counters, DropReason, report_internal_error

__all__ = ["InProcessStore", "Sink"]

Sink = Callable[[list[Unit]], None]

_WRITE_ATTEMPTS = 5


class InProcessStore:
    """Assembler, pending traces and the sink; the sink (replaceable by ``Pipeline.set_sink``) survives
    ``reset``, which a forked child calls to start clean."""

    def __init__(self, counters: Counters, policy: Callable[[], ContentPolicy],
                 experiment_id: Callable[[], str | None]) -> None:
        self._policy = policy
        self._experiment_id = experiment_id
        self.sink: Sink | None = None
        self.reset(counters)

    def reset(self, counters: Counters) -> None:
        self.counters = counters
        # The policy is the call-time one: the worker's applied options, read as each event is assembled.
        self.assembler = Assembler(counters, self._policy)
        self.pending: list[Unit] = []

    def ensure_sink(self) -> None:
        """Make the MLflow sink if none is set. Imports mlflow: done on a user thread at start when it can be."""
        if self.sink is None:
            from .sink import MlflowSink

            self.sink = MlflowSink(self._experiment_id).write

    def settle(self, close_all: bool, batch_size: int, timeout: float, stopping: Callable[[], bool]) -> None:
        """Write every complete trace (with ``close_all``: every open one too, as unfinished)."""
        if close_all:
            self.assembler.close_all()
        self.pending.extend(self.assembler.take())
        if self.pending:
            self._write_pending(batch_size, timeout, stopping)

    def _write_pending(self, batch_size: int, timeout: float, stopping: Callable[[], bool]) -> None:
        pending, self.pending = self.pending, []
        for i in range(0, len(pending), batch_size):
            self._write(pending[i : i + batch_size], timeout, stopping)

    def _write(self, units: list[Unit], timeout: float, stopping: Callable[[], bool]) -> None:
        assert self.sink is not None
        deadline = time.monotonic() + max(timeout, 1.0)
        delay = 0.05
        for attempt in range(_WRITE_ATTEMPTS):
            try:
                self.sink(units)
            except Exception as exc:
                report_internal_error(self.counters, "store", exc)
                if attempt + 1 == _WRITE_ATTEMPTS or stopping() or time.monotonic() + delay > deadline:
                    break
                self.counters.retries += 1
                time.sleep(delay)
                delay = min(delay * 2, 2.0)
                continue
            self.counters.batches += 1
            self.counters.spans_stored += sum(len(u.spans) for u in units)
            self.counters.traces_stored += sum(1 for u in units if any(s.is_trace_root for s in u.spans))
            return
        self.counters.drop(DropReason.SINK_ERROR, sum(u.event_count for u in units))
