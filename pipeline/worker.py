"""The one background thread: drain the queue, fold events into units, write them in batches.

In: the ``EventQueue`` (encoded events and flush markers). Out: ``MlflowSink.write`` calls, counters.

It ticks every ``flush_interval``, and wakes early when ``flush()`` posts a marker or the queue is half
full; while the program emits fast it defers (see ``_defer``), because it shares the GIL. A marker is
honoured only after everything queued before it has been written (or accounted for), so ``flush()`` means
"stored". Store errors are retried with backoff; what still fails is counted as dropped with its reason,
never silently lost. After ``fork`` the child gets a fresh queue and its own worker; the parent's pending
events stay the parent's.
"""

from __future__ import annotations

import atexit
import os
import threading
import time
from collections.abc import Callable

from . import events
from .assembler import Assembler, Unit
from .options import Options
from .queue import EventQueue
from .stats import Counters, DropReason, Stats, report_internal_error

_MAX_DRAIN = 5_000  # events per round, so a marker is never starved by a producer that never pauses
_WRITE_ATTEMPTS = 5
_MAX_DEFERRALS = 10  # flush intervals a busy program can postpone the worker's writes


class FlushMarker:
    """Posted by ``flush()``; released by the worker once everything before it is written or dropped.
    ``lost`` tells the waiter whether anything was dropped meanwhile (then flush returns False)."""

    __slots__ = ("done", "dropped_before", "lost")

    def __init__(self, dropped_before: int) -> None:
        self.done = threading.Event()
        self.dropped_before = dropped_before
        self.lost = False


class Pipeline:
    """The process's tracing pipeline: queue, worker thread, assembler and sink."""

    def __init__(self, options: Options) -> None:
        self.options = options
        self.counters = Counters()
        self.queue = EventQueue(self.counters, options.queue_size, options.batch_size, options.on_full == "block")
        self.emit = self.queue.emit
        self.assembler = Assembler(self.counters, lambda: self.options.policy)
        self._sink: Callable[[list[Unit]], None] | None = None
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._start_lock = threading.Lock()
        self._pending: list[Unit] = []
        self._seen_depth = 0
        self._deferring_since = 0.0
        self._flush_requests = 0  # flushes waiting: the worker never defers while one is
        self._atexit_registered = False
        os.register_at_fork(after_in_child=self._after_fork_in_child)

    # --- lifecycle (user threads) --------------------------------------------------------------------

    def configure(self, options: Options) -> None:
        self.options = options
        self.queue.configure(options.queue_size, options.batch_size, options.on_full == "block")

    def set_sink(self, sink: Callable[[list[Unit]], None]) -> None:
        self._sink = sink

    def start(self) -> None:
        """Start the worker if it is not running. Cheap when it is; never called on the caller's path."""
        if self._thread is not None and self._thread.is_alive():
            return
        with self._start_lock:
            if self._thread is not None and self._thread.is_alive():
                return
            if self._sink is None:
                from .sink import MlflowSink  # imports mlflow: done here, on a user thread, once

                self._sink = MlflowSink(lambda: self.options.experiment_id).write
            self._stopping = False
            self._thread = threading.Thread(target=self._run, name="spanline-worker", daemon=True)
            self._thread.start()
            if not self._atexit_registered:
                # Registered after mlflow is imported, so it runs before MLflow's own exit handlers.
                atexit.register(self.shutdown)
                self._atexit_registered = True

    def flush(self, timeout: float | None = None) -> bool:
        """Block until everything emitted before this call is stored. False on timeout, or when some of it
        could not be stored (it is counted in ``stats().dropped``)."""
        if self._thread is None or not self._thread.is_alive():
            if not self.queue.items and not self._pending:
                return True
            self.start()
        marker = FlushMarker(self.counters.dropped_total())
        with self._start_lock:
            self._flush_requests += 1
        try:
            self.queue.put_marker(marker)
            return marker.done.wait(timeout) and not marker.lost
        finally:
            with self._start_lock:
                self._flush_requests -= 1

    def shutdown(self, timeout: float | None = None) -> bool:
        """Flush within ``timeout`` (default: the ``shutdown_timeout`` option), then stop the worker.
        Whatever could not be stored in time is counted as dropped (reason ``shutdown``)."""
        if timeout is None:
            timeout = self.options.shutdown_timeout
        thread = self._thread
        if thread is None or not thread.is_alive():
            self._account_leftovers()
            return True
        deadline = time.monotonic() + timeout
        flushed = self.flush(timeout)
        self._stopping = True
        self.queue.wake.set()
        thread.join(max(0.0, deadline - time.monotonic()))
        if thread.is_alive():
            # The store is stuck past the deadline: give up on it rather than hang the process at exit.
            self._account_leftovers()
            return False
        self._thread = None
        self._account_leftovers()
        return flushed

    def _account_leftovers(self) -> None:
        left = sum(1 for item in self.queue.items if type(item) is bytes)
        if left:
            self.counters.drop(DropReason.SHUTDOWN, left)
            self.queue.items.clear()

    def _after_fork_in_child(self) -> None:
        # The parent's worker owns what is queued; the child starts clean and restarts its own worker.
        was_running = self._thread is not None
        self.queue.items.clear()
        self.queue.wake = threading.Event()
        self.counters = self.queue.counters = Counters()
        self.assembler = Assembler(self.counters, lambda: self.options.policy)
        self._pending = []
        self._thread = None
        self._start_lock = threading.Lock()
        if was_running:
            self.start()

    def stats(self) -> Stats:
        c = self.counters
        depth = len(self.queue.items)
        dropped = c.dropped()
        return Stats(
            events_emitted=c.events_processed + depth + dropped.get(DropReason.QUEUE_FULL, 0),
            events_processed=c.events_processed,
            spans_stored=c.spans_stored,
            traces_stored=c.traces_stored,
            batches=c.batches,
            retries=c.retries,
            dropped=dropped,
            spooled=c.spooled,
            replayed=c.replayed,
            queue_depth=depth,
            queue_peak=max(c.queue_peak, depth),
            open_spans=self.assembler.open_spans,
            internal_errors=c.internal_error_count(),
            last_error=c.last_error,
            deferred_to_mlflow=c.deferred_count(),
            worker_alive=self._thread is not None and self._thread.is_alive(),
        )

    # --- the worker thread ---------------------------------------------------------------------------

    def _run(self) -> None:
        wake = self.queue.wake
        while True:
            wake.wait(self.options.flush_interval)
            wake.clear()
            stopping = self._stopping
            if not stopping and self._defer():
                continue
            try:
                self._round(final=stopping)
            except Exception as exc:  # the worker must survive anything; count it and go on
                report_internal_error(self.counters, "worker", exc)
            if stopping and not self.queue.items:
                return

    def _defer(self) -> bool:
        """Whether to leave the queue for now because the program is busy emitting.

        The worker shares the GIL: every millisecond it spends in the store (and every time it merely
        wakes) is taken from the program's own threads. So while events arrive fast (a batch or more per
        flush interval) it leaves them queued and looks again an interval later, unless ``flush()`` asked,
        the queue is half full, or it has waited ``_MAX_DEFERRALS`` intervals already. A burst is stored
        within an interval or two of its end; a steady load at least every ``_MAX_DEFERRALS`` intervals.
        """
        depth = len(self.queue.items)
        busy = depth - self._seen_depth >= self.queue.batch_size
        self._seen_depth = depth
        now = time.monotonic()
        if not busy or self._flush_requests or depth * 2 >= self.queue.capacity:
            self._deferring_since = 0.0
            return False
        if not self._deferring_since:
            self._deferring_since = now
        if now - self._deferring_since >= _MAX_DEFERRALS * self.options.flush_interval:
            self._deferring_since = 0.0
            return False
        return True

    def _round(self, final: bool) -> None:
        """Drain everything queued now (in slices), assemble, write what is complete, release markers."""
        items = self.queue.items
        self.counters.queue_peak = max(self.counters.queue_peak, len(items))
        while True:
            markers = self._drain(items)
            if final and not items:
                self.assembler.close_all()
            self._pending.extend(self.assembler.take())
            if self._pending:
                self._write_pending()
            if markers:
                dropped = self.counters.dropped_total()
                for marker in markers:
                    marker.lost = dropped != marker.dropped_before
                    marker.done.set()
            if not items:
                self._seen_depth = 0
                return

    def _drain(self, items) -> list[FlushMarker]:
        markers: list[FlushMarker] = []
        add = self.assembler.add
        decode = events.decode
        counters = self.counters
        for _ in range(_MAX_DRAIN):
            if not items:
                break
            item = items.popleft()
            if type(item) is not bytes:
                markers.append(item)  # type: ignore[arg-type]
                break  # write what came before the marker, then honour it
            counters.events_processed += 1  # counted as it leaves the queue, so stats() never misses it
            try:
                add(decode(item))
            except Exception as exc:
                counters.drop(DropReason.DECODE_ERROR)
                report_internal_error(counters, "assembler", exc)
        return markers

    def _write_pending(self) -> None:
        pending, self._pending = self._pending, []
        size = self.options.batch_size
        for i in range(0, len(pending), size):
            self._write(pending[i : i + size])

    def _write(self, units: list[Unit]) -> None:
        assert self._sink is not None
        deadline = time.monotonic() + max(self.options.shutdown_timeout, 1.0)
        delay = 0.05
        for attempt in range(_WRITE_ATTEMPTS):
            try:
                self._sink(units)
            except Exception as exc:
                report_internal_error(self.counters, "store", exc)
                if attempt + 1 == _WRITE_ATTEMPTS or self._stopping or time.monotonic() + delay > deadline:
                    break
                self.counters.retries += 1
                time.sleep(delay)
                delay = min(delay * 2, 2.0)
                continue
            self.counters.batches += 1
            self.counters.spans_stored += sum(len(u.spans) for u in units)
            self.counters.traces_stored += sum(1 for u in units if any(s.is_trace_root for s in u.spans))
            return
        # The spool (spool_dir) is where these will go; until then they are counted, not hidden.
        self.counters.drop(DropReason.SINK_ERROR, sum(u.event_count for u in units))
