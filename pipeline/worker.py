"""The one background thread: drain the queue and append the events to the log (or store them in-process).

In: the ``EventQueue`` (encoded events, policy markers from ``configure()``, flush markers from ``flush()``).
Out: records appended to this process's segment of the event log (pipeline/eventlog.py), every
``flush_interval``; the writer process (pipeline/writer/) stores them. With ``durability="memory"``, or
when the log directory cannot be written (counted in ``stats().log_fallbacks``, logged once), it stores them
itself as before: assembler, ``MlflowSink.write`` in batches, retries with backoff, drops counted.

Events are appended as the same bytes the caller encoded; a deferred event (``events.encoded``: a streamed
call's start and end) is encoded here first, into the bytes the caller would have made. Only when ``redact`` or
``capture_content="metadata"`` is in force does the worker decode an event, apply the policy and re-encode it
(pipeline/policy.py), so the prompt that must not be stored never reaches the disk. The policy applied is the
one in force when the call was made: ``configure()`` posts it into the queue, in order with the events.

``flush()`` means "stored": its marker is released once everything before it is appended, with the log
position; the flushing thread then waits for the writer to answer that its checkpoint covers that position.
After ``fork`` the child gets a fresh queue, its own worker and its own segment; the parent's stay the
parent's.
"""

from __future__ import annotations

import atexit
import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Callable

from . import eventlog, events, logdir, policy
from .assembler import Assembler, Unit
from .options import Options
from .queue import EventQueue
from .stats import Counters, DropReason, Stats, report_internal_error

logger = logging.getLogger("spanline")

_MAX_DRAIN = 5_000  # events per round, so a marker is never starved by a producer that never pauses
_WRITE_ATTEMPTS = 5
# An event under a span of MLflow's own tracer carries that trace's id ("tr-" and 32 hex digits) as a
# msgpack str8 of 35 bytes. JSON payloads are UTF-8 and cannot contain byte 0xd9 followed by "#": no false hit.
_JOINED_MLFLOW = b"\xd9#tr-"
_EVENT_TYPES = (bytes, events.Deferred)  # queue items that are events (the rest are markers)
encoded = events.encoded
_WRITER_CHECK_EVERY = 2.0  # seconds between checks that a writer holds the log (a lost writer is restarted)
_WARN_EVERY = 60.0  # the store's trouble is logged at most once a minute while it lasts


class FlushMarker:
    """Posted by ``flush()``; released by the worker once everything before it is appended (log mode) or
    written or dropped (in-process). ``lost`` tells the waiter whether anything was dropped meanwhile."""

    __slots__ = ("done", "dropped_before", "joins", "lost", "position")

    def __init__(self, dropped_before: int) -> None:
        self.done = threading.Event()
        self.dropped_before = dropped_before
        self.lost = False
        self.position: tuple[str, str, int] | None = None  # (log dir, segment file, end offset)
        self.joins = 0  # events under MLflow's own spans processed so far


class PolicyMarker:
    """Posted by ``configure()``: the options in force for every event queued after it."""

    __slots__ = ("options",)

    def __init__(self, options: Options) -> None:
        self.options = options


class Pipeline:
    """The process's tracing pipeline: queue, worker thread, and the log (or the in-process store)."""

    def __init__(self, options: Options) -> None:
        self.options = options
        self.counters = Counters()
        self.queue = EventQueue(self.counters, options.queue_size, options.batch_size, options.on_full == "block")
        self.emit = self.queue.emit
        self._reset_state()
        self._sink: Callable[[list[Unit]], None] | None = None
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._start_lock = threading.Lock()
        self._configure_lock = threading.Lock()
        self._flush_requests = 0
        self._atexit_registered = False
        os.register_at_fork(after_in_child=self._after_fork_in_child)

    def _reset_state(self) -> None:
        # The options whose content policy applies to the events drained so far (the call-time policy).
        self._applied = self.options
        # The options of the last PolicyMarker put on the queue (or the start's): what configure() compares
        # against. Not ``_applied``: the worker may not have drained the markers posted before this one yet.
        self._posted = self.options
        self._rewrite = policy.needed(self.options.policy)
        self.assembler = Assembler(self.counters, lambda: self._applied.policy)
        self._pending: list[Unit] = []
        self._log: eventlog.Appender | None = None
        self._log_dir: str | None = None
        self._mode = "in_process" if self.options.durability == "memory" else "log"
        self._writer_checked = 0.0
        self._watched = 0.0
        self._warned = -_WARN_EVERY
        self._writer_counters: dict = {}  # this producer's counters, as the writer last reported them
        self._joins = 0
        self._joins_flushed = 0

    # --- lifecycle (user threads) --------------------------------------------------------------------

    def configure(self, options: Options) -> None:
        with self._configure_lock:  # two threads' calls post their markers in the order they set the options
            self._configure(options)

    def _configure(self, options: Options) -> None:
        self.options = options
        if options.durability == "memory":
            self._mode = "in_process"
        elif self._mode == "in_process" and not self.counters.log_fallbacks:
            self._mode = "log"
        if self._log is not None:
            # The open segment follows the option from the next append on (the worker reads it per append).
            self._log.fsync = options.durability == "fsync"
        self.queue.configure(options.queue_size, options.batch_size, options.on_full == "block")
        posted = self._posted
        if options.policy != posted.policy or options.experiment_id != posted.experiment_id:
            # In order with the events: calls made before this keep the policy they were made under.
            self._posted = options
            self.queue.put_marker(PolicyMarker(options))

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

                self._sink = MlflowSink(lambda: self._applied.experiment_id).write
            self._stopping = False
            self._thread = threading.Thread(target=self._run, name="spanline-worker", daemon=True)
            self._thread.start()
            if not self._atexit_registered:
                # Registered after mlflow is imported, so it runs before MLflow's own exit handlers.
                atexit.register(self._at_exit)
                self._atexit_registered = True

    def _has_events(self) -> bool:
        return any(type(item) in _EVENT_TYPES for item in self.queue.items) or bool(self._pending)

    def flush(self, timeout: float | None = None, wait_for_store: bool = True) -> bool:
        """Block until everything emitted before this call is stored (``wait_for_store=False``: appended to
        the log). False on timeout, or when some of it could not be stored (counted in ``stats().dropped``)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        if self._thread is None or not self._thread.is_alive():
            if not self._has_events() and self._log is None:
                return self._drain_mlflow()
            self.start()
        marker = FlushMarker(self.counters.dropped_total())
        with self._start_lock:
            self._flush_requests += 1
        try:
            self.queue.put_marker(marker)
            if not marker.done.wait(None if deadline is None else max(0.0, deadline - time.monotonic())):
                return False
        finally:
            with self._start_lock:
                self._flush_requests -= 1
        ok = not marker.lost
        if marker.joins > self._joins_flushed:
            # Spans under @mlflow.trace: MLflow exports its own part of those traces asynchronously.
            self._joins_flushed = marker.joins
            ok = self._drain_mlflow(force=True) and ok
        if marker.position is not None and wait_for_store:
            ok = self._wait_for_writer(marker.position, deadline) and ok
        return ok

    def _drain_mlflow(self, force: bool = False) -> bool:
        if not force:
            return True
        try:
            import mlflow

            mlflow.flush_trace_async_logging()
        except Exception as exc:
            report_internal_error(self.counters, "mlflow flush", exc)
        return True

    def _wait_for_writer(self, position: tuple[str, str, int], deadline: float | None) -> bool:
        directory, segment, offset = position
        before = sum(self._writer_counters.get("dropped", {}).values())
        try:
            reply = logdir.ask_writer(directory, {"segment": segment, "offset": offset}, deadline,
                                      autostart=self.options.writer_autostart)
        except Exception as exc:
            report_internal_error(self.counters, "flush", exc)
            return False
        if reply is None:
            return False
        if not reply.get("ok"):
            self.counters.last_error = f"writer: {reply.get('error')}"
            return False
        self._writer_counters = reply
        return sum(reply.get("dropped", {}).values()) == before

    def shutdown(self, timeout: float | None = None, wait_for_store: bool = True) -> bool:
        """Flush within ``timeout`` (default: the ``shutdown_timeout`` option), then stop the worker.
        ``wait_for_store=False``: only until everything is appended to the log (the writer stores it after).
        Whatever could not be stored (or appended) in time is counted as dropped (reason ``shutdown``)."""
        if timeout is None:
            timeout = self.options.shutdown_timeout
        thread = self._thread
        if thread is None or not thread.is_alive():
            self._account_leftovers()
            return True
        deadline = time.monotonic() + timeout
        # In-process, nothing else will ever store what is left: the store is always waited for. With the log,
        # the worker appends everything and stops first; then this producer's end is waited for (exitwait.py).
        in_log = self._mode == "log"
        flushed = self.flush(timeout, wait_for_store=not in_log)
        self._stopping = True
        self.queue.wake.set()
        thread.join(max(0.0, deadline - time.monotonic()))
        if thread.is_alive():
            # The store is stuck past the deadline: give up on it rather than hang the process at exit.
            self._account_leftovers()
            return False
        self._thread = None
        self._account_leftovers()
        if in_log and wait_for_store and self._mode == "log":
            flushed = self._store_own_log(deadline, timeout) and flushed
        return flushed

    def _store_own_log(self, deadline: float, timeout: float) -> bool:
        """After the worker stopped: close this producer's segment and wait, until ``deadline``, for a writer
        (a running one, else one in this process) to store it; one line says what is left if it cannot."""
        from . import exitwait

        log, directory = self._log, self._log_dir
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

    def _at_exit(self) -> None:
        # Where apps run, nothing outlives the process for sure (a container's end kills a detached writer, and
        # its disk goes too): by default the exit waits, bounded, until the store has this process's traces.
        self.shutdown(wait_for_store=self.options.exit_wait == "store")

    def _account_leftovers(self) -> None:
        left = sum(1 for item in self.queue.items if type(item) in _EVENT_TYPES)
        if left:
            self.counters.drop(DropReason.SHUTDOWN, left)
            self.queue.items.clear()

    def _after_fork_in_child(self) -> None:
        # The parent's worker owns what is queued; the child starts clean, with its own segment and worker.
        was_running = self._thread is not None
        if self._log is not None:
            self._log.abandon_after_fork()
        self.queue.items.clear()
        self.queue.wake = threading.Event()
        self.counters = self.queue.counters = Counters()
        self._reset_state()
        self._thread = None
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
        sys.modules["multiprocessing.util"].Finalize(None, self._at_exit, exitpriority=100)

    def stats(self) -> Stats:
        c = self.counters
        depth = len(self.queue.items)
        dropped = c.dropped()
        stored = {"spans_stored": c.spans_stored, "traces_stored": c.traces_stored, "batches": c.batches,
                  "retries": c.retries}
        log = {"mode": self._mode, "log_dir": self._log_dir, "log_fallbacks": c.log_fallbacks,
               "log_syncs": self._log.syncs if self._log is not None else 0}
        if self._log is not None and self._log_dir is not None:
            log.update(self._log_stats(stored, dropped))
        return Stats(
            events_emitted=c.events_processed + depth + dropped.get(DropReason.QUEUE_FULL, 0),
            events_processed=c.events_processed,
            dropped=dropped,
            queue_depth=depth,
            queue_peak=max(c.queue_peak, depth),
            open_spans=self.assembler.open_spans,
            internal_errors=c.internal_error_count(),
            last_error=c.last_error,
            deferred_to_mlflow=c.deferred_count(),
            worker_alive=self._thread is not None and self._thread.is_alive(),
            **stored,
            **log,
        )

    def _log_stats(self, stored: dict, dropped: dict) -> dict:
        """The log's part of ``stats()``: the directory, and the writer's status file (written twice a
        second) merged with its last answer to a flush of ours."""
        assert self._log is not None and self._log_dir is not None
        segments, size = eventlog.total_bytes(self._log_dir)
        status = logdir.read_status(self._log_dir)
        mine = dict(self._writer_counters)
        reported = (status.get("producers") or {}).get(self._log.producer_id) or (
            status.get("finished_producers") or {}
        ).get(self._log.producer_id)
        if reported and reported.get("traces_stored", 0) >= mine.get("traces_stored", 0):
            mine = reported
        stored["spans_stored"] += mine.get("spans_stored", 0)
        stored["traces_stored"] += mine.get("traces_stored", 0)
        stored["batches"] += status.get("batches", 0)
        stored["retries"] += status.get("retries", 0)
        for reason, n in (mine.get("dropped") or {}).items():
            dropped[reason] = dropped.get(reason, 0) + n
        pid = status.get("pid")
        state = status.get("state", "none")
        if state != "stopped" and not _alive(pid):
            state = "none"
        return {
            "log_segments": segments,
            "log_bytes": size,
            "log_lag_s": status.get("lag_p99_s"),
            "writer_pid": pid if state != "none" else None,
            "writer_state": state,
        }

    # --- the worker thread ---------------------------------------------------------------------------

    def _run(self) -> None:
        wake = self.queue.wake
        while True:
            wake.wait(self.options.flush_interval)
            wake.clear()
            stopping = self._stopping
            try:
                if self._mode == "log":
                    self._append_round()
                    self._watch_writer()
                if self._mode != "log":
                    self._store_round(final=stopping)
            except Exception as exc:  # the worker must survive anything; count it and go on
                report_internal_error(self.counters, "worker", exc)
            if stopping and not self.queue.items:
                # A shutdown that gave up waiting (its deadline passed) left this thread set: clear it, so the
                # next event restarts the worker (the caller's path starts one only when there is none).
                if self._thread is threading.current_thread():
                    self._thread = None
                return

    def _set_applied(self, options: Options) -> None:
        self._applied = options
        self._rewrite = policy.needed(options.policy)

    def _policy_record(self) -> dict:
        # What the writer applies itself: everything but ``redact``, which ran here already.
        opts = self._applied
        return {"capture_content": opts.capture_content, "max_content_bytes": opts.max_content_bytes,
                "experiment_id": opts.experiment_id}

    # --- log mode -------------------------------------------------------------------------------------

    def _open_log(self) -> bool:
        """Open this process's segment; on failure fall back to storing in-process (counted, logged once)."""
        from . import producer

        directory = None
        try:
            uri = logdir.resolved_tracking_uri()
            directory = self.options.log_dir or logdir.default_dir(uri)
            eventlog.ensure_dir(directory)
            header = {
                "pid": os.getpid(),
                "start_ns": time.time_ns(),
                "host": socket.gethostname(),
                "producer": producer.describe(),
                "tracking_uri": uri,
                "cwd": os.getcwd(),
                "experiment": _default_experiment(),
                "max_log_bytes": self.options.max_log_bytes,
            }
            appender = eventlog.Appender(directory, header, self.options.segment_bytes,
                                         self.options.durability == "fsync", self._policy_record())
        except OSError as exc:
            self._fall_back(directory, exc)
            return False
        self._log, self._log_dir = appender, directory
        # The first writer is started a check interval after the first append, not at it: a short script
        # stores at its exit in-process (exitwait.py) instead of paying a second interpreter's start-up.
        self._writer_checked = time.monotonic()
        return True

    def _fall_back(self, directory: str | None, exc: BaseException) -> None:
        self._mode = "in_process"
        self.counters.log_fallbacks += 1
        self.counters.last_error = f"log: {type(exc).__name__}: {exc}"
        logger.warning(
            "spanline: the event log at %s cannot be written (%s); this process stores its traces itself",
            directory, exc,
        )

    def _watch_writer(self) -> None:
        """The writer's trouble reaches the application: while its status says it cannot store, ``last_error``
        says what failed and where, and the ``spanline`` logger says it once a minute at most."""
        now = time.monotonic()
        if self._log_dir is None or now - self._watched < _WRITER_CHECK_EVERY:
            return
        self._watched = now
        status = logdir.read_status(self._log_dir)
        if status.get("state") != "retrying" or not status.get("last_error"):
            return
        error = f"writer (pid {status.get('pid')}, log {self._log_dir}): {status['last_error']}"
        self.counters.last_error = error
        if now - self._warned >= _WARN_EVERY:
            self._warned = now
            logger.warning("spanline: traces are not being stored: %s; they wait in the log", error)

    def _check_writer(self, force: bool = False) -> None:
        now = time.monotonic()
        if not self.options.writer_autostart or (not force and now - self._writer_checked < _WRITER_CHECK_EVERY):
            return
        self._writer_checked = now
        try:
            logdir.ensure_writer(self._log_dir)
        except Exception as exc:  # the log still fills; a later check (or a flush) starts a writer
            report_internal_error(self.counters, "writer start", exc)

    def _append_round(self) -> None:
        """Append everything queued now (in slices) to the log; release flush markers with the position."""
        items = self.queue.items
        counters = self.counters
        counters.queue_peak = max(counters.queue_peak, len(items))
        if not items:
            return
        if (self._log is None or self._log.fd < 0) and not self._open_log():
            return  # now in-process; the caller's _run stores the queue
        log = self._log
        assert log is not None
        frame = eventlog.event_frame
        apply = policy.apply
        while True:
            frames = [eventlog.tick_frame()]
            n = size = 0
            marker = None
            for _ in range(_MAX_DRAIN):
                if not items:
                    break
                item = items.popleft()
                kind = type(item)
                if kind is tuple:  # a deferred event (events.encoded): encoded here, off the caller's path
                    try:
                        item, kind = encoded(item), bytes
                    except Exception as exc:
                        counters.events_processed += 1
                        counters.drop(DropReason.DECODE_ERROR)
                        report_internal_error(counters, "deferred event", exc)
                        continue
                if kind is bytes:
                    counters.events_processed += 1
                    if self._rewrite or policy.holding():  # a stream begun under a policy keeps it
                        try:
                            item = apply(item, self._applied.policy)
                        except Exception as exc:  # a redact that raises, an undecodable event: counted
                            counters.drop(DropReason.DECODE_ERROR)
                            report_internal_error(counters, "content policy", exc)
                            continue
                        if item is None:
                            continue  # a stream's chunks, held until its end
                    if _JOINED_MLFLOW in item:
                        self._joins += 1
                    data = frame(item)
                    frames.append(data)
                    n += 1
                    size += len(data)
                    if size >= log.segment_bytes:
                        break  # one append per segment's worth: a segment rotates between appends
                elif kind is PolicyMarker:
                    self._set_applied(item.options)  # type: ignore[attr-defined]
                    frames.append(log.set_policy(self._policy_record()))
                else:
                    marker = item
                    break
            try:
                if len(frames) > 1:
                    segment, offset = log.append(b"".join(frames), n)
                else:
                    segment, offset = os.path.basename(log.path), log.offset
            except OSError as exc:
                # A full disk: only the events not written whole are lost (a partial append keeps its whole
                # records, and the writer stores them).
                written = exc.events_written if isinstance(exc, eventlog.PartialAppend) else 0
                counters.drop(DropReason.LOG_ERROR, n - written)
                report_internal_error(counters, "log append", exc)
                segment, offset = os.path.basename(log.path), log.offset
            if marker is not None:
                marker.position = (self._log_dir, segment, offset)  # type: ignore[attr-defined]
                marker.joins = self._joins  # type: ignore[attr-defined]
                marker.lost = counters.dropped_total() != marker.dropped_before  # type: ignore[attr-defined]
                marker.done.set()  # type: ignore[attr-defined]
            if not items:
                break
        self._check_writer()

    # --- in-process mode (durability="memory", or no writable log) -------------------------------------

    def _store_round(self, final: bool) -> None:
        """Drain everything queued now (in slices), assemble, write what is complete, release markers."""
        if self._sink is None:
            from .sink import MlflowSink

            self._sink = MlflowSink(lambda: self._applied.experiment_id).write
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
            if type(item) is PolicyMarker:
                # Events are assembled (and the policy applied) as they are drained: in call order.
                self._set_applied(item.options)
                continue
            if type(item) not in _EVENT_TYPES:
                item.joins = self._joins  # type: ignore[attr-defined]
                markers.append(item)  # type: ignore[arg-type]
                break  # write what came before the marker, then honour it
            counters.events_processed += 1  # counted as it leaves the queue, so stats() never misses it
            try:
                item = encoded(item)  # a deferred event is encoded here
                if _JOINED_MLFLOW in item:
                    self._joins += 1
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
        # In-process there is nowhere else to keep them: counted, not hidden.
        self.counters.drop(DropReason.SINK_ERROR, sum(u.event_count for u in units))


def _alive(pid: object) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _default_experiment() -> str:
    """MLflow's experiment for traces that name none, resolved in this process (its environment)."""
    try:
        from mlflow.tracking.fluent import _get_experiment_id

        return _get_experiment_id() or ""
    except Exception:
        return ""
