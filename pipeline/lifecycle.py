"""The process's tracing pipeline: start, configure, flush, shutdown, fork and exit; and ``stats()``.

In: calls from user threads (``spanline.autolog``/``configure``/``flush``/``shutdown``/``stats``, the
``atexit`` handler, ``os.fork``), and events from the caller's path through ``emit`` (the queue's
``EventQueue.emit``, bound here so the caller pays no extra call). Out: the ``spanline-worker`` thread
(pipeline/worker.py) started and stopped; ``flush()`` means "stored": its marker is released by the worker
once everything before it is appended, with the log position, and this thread then waits for the writer to
answer that its checkpoint covers that position (pipeline/flushing.py). Runs on the calling user thread.

After ``fork`` the child gets a fresh queue, its own worker and its own segment; the parent's stay the
parent's.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
import time

from .flushing import EVENT_TYPES, FlushMarker, PolicyMarker, flush_mlflow_exports, wait_for_writer
from .inprocess import Sink
from .options import Options
from .queue import EventQueue
from .stats import Counters, DropReason, Stats, report_internal_error, store_path
from .worker import Worker

__all__ = ["Pipeline"]


class Pipeline:
    """The process's tracing pipeline: queue, worker thread, and the log (or the in-process store).

    ``thread`` is the worker thread, or None when none runs: the caller's path reads it (one attribute
    read) and calls ``start()`` only when it is None."""

    def __init__(self, options: Options) -> None:
        self.options = options
        self.counters = Counters()
        self.queue = EventQueue(self.counters, options.queue_size, options.batch_size, options.on_full == "block")
        self.emit = self.queue.emit
        self.worker = Worker(options, self.counters, self.queue)
        self.thread: threading.Thread | None = None
        self._reset_state()
        self._start_lock = threading.Lock()
        self._configure_lock = threading.Lock()
        self._atexit_registered = False
        os.register_at_fork(after_in_child=self._after_fork_in_child)

    def _reset_state(self) -> None:
        # The options of the last PolicyMarker put on the queue (or the start's): what configure() compares
        # against. Not the worker's applied ones: it may not have drained the markers posted before this yet.
        self._posted = self.options
        self._joins_flushed = 0

    @property
    def sink(self) -> Sink | None:
        """The in-process store's sink (None until the pipeline first starts)."""
        return self.worker.store.sink

    def set_sink(self, sink: Sink) -> None:
        self.worker.store.sink = sink

    def configure(self, options: Options) -> None:
        with self._configure_lock:  # two threads' calls post their markers in the order they set the options
            self._configure(options)

    def _configure(self, options: Options) -> None:
        worker = self.worker
        self.options = worker.options = options
        if options.durability == "memory":
            worker.mode = "in_process"
        elif worker.mode == "in_process" and not self.counters.log_fallbacks:
            worker.mode = "log"
        if worker.log is not None:
            # The open segment follows the option from the next append on (the worker reads it per append).
            worker.log.fsync = options.durability == "fsync"
        self.queue.configure(options.queue_size, options.batch_size, options.on_full == "block")
        posted = self._posted
        if options.policy != posted.policy or options.experiment_id != posted.experiment_id:
            # In order with the events: calls made before this keep the policy they were made under.
            self._posted = options
            self.queue.put_marker(PolicyMarker(options))

    def start(self) -> None:
        """Start the worker if it is not running. Cheap when it is; never called on the caller's path."""
        if self.thread is not None and self.thread.is_alive():
            return
        with self._start_lock:
            if self.thread is not None and self.thread.is_alive():
                return
            self.worker.store.ensure_sink()  # imports mlflow: done here, on a user thread, once
            self.worker.stopping = False
            self.thread = threading.Thread(target=self._run, name="spanline-worker", daemon=True)
            self.thread.start()
            if not self._atexit_registered:
                # Registered after mlflow is imported, so it runs before MLflow's own exit handlers.
                atexit.register(self.at_exit)
                self._atexit_registered = True

    def _run(self) -> None:
        self.worker.run()
        # A shutdown that gave up waiting (its deadline passed) left this thread set: clear it, so the next
        # event restarts the worker (the caller's path starts one only when there is none).
        if self.thread is threading.current_thread():
            self.thread = None

    def _has_events(self) -> bool:
        return any(type(item) in EVENT_TYPES for item in self.queue.items) or bool(self.worker.store.pending)

    def flush(self, timeout: float | None = None, wait_for_store: bool = True) -> bool:
        """Block until everything emitted before this call is stored (``wait_for_store=False``: appended to
        the log). False on timeout, or when some of it could not be stored (counted in ``stats().dropped``)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        # Where MLflow exports its own spans (option mlflow_spans="mlflow", or a tracer spanline does not take),
        # its queue holds part of "everything emitted before this call".
        mlflow_exports = self.counters.mlflow_spans.startswith("mlflow")
        if self.thread is None or not self.thread.is_alive():
            if not self._has_events() and self.worker.log is None:
                return flush_mlflow_exports(self.counters) if mlflow_exports else True
            self.start()
        marker = FlushMarker(self.counters.dropped_total())
        self.queue.put_marker(marker)
        if not marker.done.wait(None if deadline is None else max(0.0, deadline - time.monotonic())):
            return False
        ok = not marker.lost
        # spanline's spans under MLflow's: only where MLflow stores its part of the trace is there more to wait for.
        if mlflow_exports or (marker.joins > self._joins_flushed and self.counters.mlflow_spans != "log"):
            self._joins_flushed = marker.joins
            ok = flush_mlflow_exports(self.counters) and ok
        if marker.position is not None and wait_for_store:
            ok = wait_for_writer(marker.position, deadline, self.options.writer_autostart, self.counters,
                                 self.worker.status) and ok
        return ok

    def shutdown(self, timeout: float | None = None, wait_for_store: bool = True) -> bool:
        """Flush within ``timeout`` (default: the ``shutdown_timeout`` option), then stop the worker.
        ``wait_for_store=False``: only until everything is appended to the log (the writer stores it after).
        Whatever could not be stored (or appended) in time is counted as dropped (reason ``shutdown``)."""
        if timeout is None:
            timeout = self.options.shutdown_timeout
        thread = self.thread
        if thread is None or not thread.is_alive():
            self._account_leftovers()
            return True
        deadline = time.monotonic() + timeout
        # In-process, nothing else will ever store what is left: the store is always waited for. With the log,
        # the worker appends everything and stops first; then this producer's end is waited for (exitwait.py).
        in_log = self.worker.mode == "log"
        flushed = self.flush(timeout, wait_for_store=not in_log)
        self.worker.stopping = True
        self.queue.wake.set()
        thread.join(max(0.0, deadline - time.monotonic()))
        if thread.is_alive():
            # The store is stuck past the deadline: give up on it rather than hang the process at exit.
            self._account_leftovers()
            return False
        self.thread = None
        self._account_leftovers()
        if in_log and wait_for_store and self.worker.mode == "log":
            flushed = self._store_own_log(deadline, timeout) and flushed
        return flushed

    def _store_own_log(self, deadline: float, timeout: float) -> bool:
        """After the worker stopped: close this producer's segment and wait, until ``deadline``, for a writer
        (a running one, else one in this process) to store it; one line says what is left if it cannot."""
        from . import exitwait

        log, directory = self.worker.log, self.worker.log_dir
        if log is None or directory is None or log.fd < 0:
            return True
        segment, offset = os.path.basename(log.path), log.offset
        log.close()  # its lock is free: to a writer, this producer is finished (the next append opens anew)
        try:
            ok = exitwait.wait_for_store(directory, segment, offset, deadline, self.options.writer_autostart)
            if not ok:
                exitwait.report_left(directory, segment, timeout)
        except Exception as exc:
            report_internal_error(self.counters, "exit wait", exc)
            return False
        return ok

    def at_exit(self) -> None:
        """The ``atexit`` handler (and a multiprocessing child's last finalizer)."""
        # Where apps run, nothing outlives the process for sure (a container's end kills a detached writer, and
        # its disk goes too): by default the exit waits, bounded, until the store has this process's traces.
        self.shutdown(wait_for_store=self.options.exit_wait == "store")

    def _account_leftovers(self) -> None:
        left = sum(1 for item in self.queue.items if type(item) in EVENT_TYPES)
        if left:
            self.counters.drop(DropReason.SHUTDOWN, left)
            self.queue.items.clear()

    def _after_fork_in_child(self) -> None:
        # The parent's worker owns what is queued; the child starts clean, with its own segment and worker.
        was_running = self.thread is not None
        if self.worker.log is not None:
            self.worker.log.abandon_after_fork()
        self.queue.items.clear()
        self.queue.wake = threading.Event()
        self.counters = self.queue.counters = Counters()
        self.worker.reset(self.counters)
        self._reset_state()
        self.thread = None
        self._start_lock = threading.Lock()
        self._configure_lock = threading.Lock()
        mp_util = sys.modules.get("multiprocessing.util")
        if mp_util is not None:
            # A multiprocessing worker ends with os._exit, skipping atexit but running multiprocessing's
            # finalizers: its last events go to the log there. The child clears the finalizers it inherited
            # right after this hook, then runs its after-fork callbacks: register from one of those.
            mp_util.register_after_fork(self, Pipeline._finalize_in_multiprocessing_child)
        if was_running:
            self.start()

    def _finalize_in_multiprocessing_child(self) -> None:
        sys.modules["multiprocessing.util"].Finalize(None, self.at_exit, exitpriority=100)

    def stats(self) -> Stats:
        c = self.counters
        worker = self.worker
        depth = len(self.queue.items)
        dropped = c.dropped()
        stored = {"spans_stored": c.spans_stored, "traces_stored": c.traces_stored, "batches": c.batches,
                  "retries": c.retries}
        log = {"mode": worker.mode, "log_dir": worker.log_dir, "log_fallbacks": c.log_fallbacks,
               "log_syncs": worker.log.syncs if worker.log is not None else 0}
        if worker.log is not None and worker.log_dir is not None:
            log.update(worker.status.merge(worker.log_dir, worker.log.producer_id, stored, dropped))
        if not log.get("store_path"):  # no writer has said yet: this process's own store writes (in-process mode,
            # or a flush that stored what no writer was there to store)
            log["store_path"] = (store_path() or {}).get("path")
        return Stats(
            events_emitted=c.events_processed + depth + dropped.get(DropReason.QUEUE_FULL, 0),
            events_processed=c.events_processed,
            dropped=dropped,
            queue_depth=depth,
            queue_peak=max(c.queue_peak, depth),
            open_spans=worker.store.assembler.open_spans,
            internal_errors=c.internal_error_count(),
            last_error=c.last_error,
            deferred_to_mlflow=c.deferred_count(),
            mlflow_spans=c.mlflow_spans,
            worker_alive=self.thread is not None and self.thread.is_alive(),
            **stored,
            **log,
        )
