"""The worker thread: drain the queue and append the events to the log (or hand them to the in-process store).

In: the ``EventQueue`` (encoded events from the caller's path, policy markers from ``configure()``, flush
markers from ``flush()``). Out: records appended to this process's segment of the event log
(pipeline/eventlog.py), every ``flush_interval``; the writer process (pipeline/writer/) stores them. With
``durability="memory"``, or when the log directory cannot be written (counted in ``stats().log_fallbacks``,
logged once), the events go to the in-process store instead (pipeline/inprocess.py). Runs on the one
``spanline-worker`` thread, started by ``Pipeline`` (pipeline/lifecycle.py).

Events are appended as the same bytes the caller encoded; a deferred event (``events.encode_deferred``: a streamed
call's start and end) is encoded here first, into the bytes the caller would have made. Only when ``redact`` or
``capture_content="metadata"`` is in force does the worker decode an event, apply the policy and re-encode it
(pipeline/rewrite.py), so the prompt that must not be stored never reaches the disk. The policy applied is the
one in force when the call was made: ``configure()`` posts it into the queue, in order with the events.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections import deque

from . import eventlog, events, logdir, policy, rewrite
from .appender import Appender, PartialAppend
from .flushing import FlushMarker, PolicyMarker
from .inprocess import InProcessStore
from .options import Options
from .queue import EventQueue
from .stats import Counters, DropReason, report_internal_error
from .writer_status import WRITER_CHECK_EVERY, WriterStatus

__all__ = ["Worker"]

logger = logging.getLogger("spanline")

_MAX_DRAIN = 5_000  # events per round, so a marker is never starved by a producer that never pauses
# An event under a span of MLflow's own tracer carries that trace's id ("tr-" and 32 hex digits) as a
# msgpack str8 of 35 bytes. JSON payloads are UTF-8 and cannot contain byte 0xd9 followed by "#": no false hit.
_JOINED_MLFLOW = b"\xd9#tr-"
encoded = events.encode_deferred


class Worker:
    """The worker thread's state and rounds: the call-time policy, the log (or the in-process store), and
    the writer watch. ``Pipeline`` owns the thread; ``run`` is its body."""

    def __init__(self, options: Options, counters: Counters, queue: EventQueue) -> None:
        self.options = options  # kept current by Pipeline.configure
        self.queue = queue
        self.stopping = False  # set by Pipeline.shutdown: the next round is the last
        self.store = InProcessStore(counters, lambda: self.applied.policy, lambda: self.applied.experiment_id)
        self.reset(counters)

    def reset(self, counters: Counters) -> None:
        """Start clean (a new pipeline, or a forked child): no log open, nothing pending; the sink stays."""
        self.counters = counters
        # The options whose content policy applies to the events drained so far (the call-time policy).
        self.applied = self.options
        self._rewrite = policy.needed(self.options.policy)
        self.store.reset(counters)
        self.log: Appender | None = None
        self.log_dir: str | None = None
        self.mode = "in_process" if self.options.durability == "memory" else "log"
        self._writer_checked = 0.0
        self.status = WriterStatus()
        self.joins = 0  # events under MLflow's own spans processed so far

    def run(self) -> None:
        """The thread's body: a round every ``flush_interval`` or when woken; returns once stopping and empty."""
        wake = self.queue.wake
        while True:
            wake.wait(self.options.flush_interval)
            wake.clear()
            stopping = self.stopping
            try:
                if self.mode == "log":
                    self._append_round()
                    self.status.watch(self.log_dir, self.counters)
                if self.mode != "log":
                    self._store_round(final=stopping)
            except Exception as exc:  # the worker must survive anything; count it and go on
                report_internal_error(self.counters, "worker", exc)
            if stopping and not self.queue.items:
                return

    def _set_applied(self, options: Options) -> None:
        self.applied = options
        self._rewrite = policy.needed(options.policy)

    def _policy_record(self) -> dict:
        # What the writer applies itself: everything but ``redact``, which ran here already.
        opts = self.applied
        return {"capture_content": opts.capture_content, "max_content_bytes": opts.max_content_bytes,
                "experiment_id": opts.experiment_id}

    # --- log mode -------------------------------------------------------------------------------------

    def _open_log(self) -> bool:
        """Open this process's segment; on failure fall back to storing in-process (counted, logged once)."""
        from . import environment

        directory = None
        try:
            uri = logdir.resolved_tracking_uri()
            directory = self.options.log_dir or logdir.default_dir(uri)
            eventlog.ensure_dir(directory)
            header = {
                "pid": os.getpid(),
                "start_ns": time.time_ns(),
                "host": socket.gethostname(),
                "producer": environment.describe(),
                "tracking_uri": uri,
                "cwd": os.getcwd(),
                "experiment": _default_experiment(),
                "max_log_bytes": self.options.max_log_bytes,
            }
            appender = Appender(directory, header, self.options.segment_bytes,
                                         self.options.durability == "fsync", self._policy_record())
        except OSError as exc:
            self._fall_back(directory, exc)
            return False
        self.log, self.log_dir = appender, directory
        # The first writer is started a check interval after the first append, not at it: a short script
        # stores at its exit in-process (exitwait.py) instead of paying a second interpreter's start-up.
        self._writer_checked = time.monotonic()
        return True

    def _fall_back(self, directory: str | None, exc: BaseException) -> None:
        self.mode = "in_process"
        self.counters.log_fallbacks += 1
        self.counters.last_error = f"log: {type(exc).__name__}: {exc}"
        logger.warning(
            "spanline: the event log at %s cannot be written (%s); this process stores its traces itself",
            directory, exc,
        )

    def _check_writer(self) -> None:
        now = time.monotonic()
        if not self.options.writer_autostart or now - self._writer_checked < WRITER_CHECK_EVERY:
            return
        self._writer_checked = now
        try:
            logdir.ensure_writer(self.log_dir)
        except Exception as exc:  # the log still fills; a later check (or a flush) starts a writer
            report_internal_error(self.counters, "writer start", exc)

    def _append_round(self) -> None:
        """Append everything queued now (in slices) to the log; release flush markers with the position."""
        items = self.queue.items
        counters = self.counters
        counters.queue_peak = max(counters.queue_peak, len(items))
        if not items:
            return
        if (self.log is None or self.log.fd < 0) and not self._open_log():
            return  # now in-process: ``run`` hands the queue to the in-process store
        log, directory = self.log, self.log_dir
        assert log is not None and directory is not None
        frame = eventlog.event_frame
        apply = rewrite.apply
        while True:
            frames = [eventlog.tick_frame()]
            n = size = 0
            marker: FlushMarker | None = None
            for _ in range(_MAX_DRAIN):
                if not items:
                    break
                item = items.popleft()
                kind = type(item)
                if kind is tuple:  # a deferred event (events.encode_deferred): encoded here, off the caller's path
                    try:
                        item, kind = encoded(item), bytes
                    except Exception as exc:
                        counters.events_processed += 1
                        counters.drop(DropReason.DECODE_ERROR)
                        report_internal_error(counters, "deferred event", exc)
                        continue
                if kind is bytes:
                    counters.events_processed += 1
                    if self._rewrite or rewrite.holding():  # a stream begun under a policy keeps it
                        try:
                            item = apply(item, self.applied.policy)
                        except Exception as exc:  # a redact that raises, an undecodable event: counted
                            counters.drop(DropReason.DECODE_ERROR)
                            report_internal_error(counters, "content policy", exc)
                            continue
                        if item is None:
                            continue  # a stream's chunks, held until its end
                    if _JOINED_MLFLOW in item:
                        self.joins += 1
                    data = frame(item)
                    frames.append(data)
                    n += 1
                    size += len(data)
                    if size >= log.segment_bytes:
                        break  # one append per segment's worth: a segment rotates between appends
                elif type(item) is PolicyMarker:
                    self._set_applied(item.options)
                    frames.append(log.set_policy(self._policy_record()))
                elif type(item) is FlushMarker:
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
                written = exc.events_written if isinstance(exc, PartialAppend) else 0
                counters.drop(DropReason.LOG_ERROR, n - written)
                report_internal_error(counters, "log append", exc)
                segment, offset = os.path.basename(log.path), log.offset
            if marker is not None:
                marker.release(self.joins, counters.dropped_total(), (directory, segment, offset))
            if not items:
                break
        self._check_writer()

    # --- in-process mode (durability="memory", or no writable log) -------------------------------------

    def _store_round(self, final: bool) -> None:
        """Drain everything queued now (in slices), assemble, write what is complete, release markers."""
        store = self.store
        store.ensure_sink()
        items = self.queue.items
        self.counters.queue_peak = max(self.counters.queue_peak, len(items))
        while True:
            markers = self._drain(items)
            opts = self.options
            store.settle(final and not items, opts.batch_size, opts.shutdown_timeout, lambda: self.stopping)
            if markers:
                dropped = self.counters.dropped_total()
                for marker in markers:
                    marker.release(self.joins, dropped)
            if not items:
                return

    def _drain(self, items: deque[object]) -> list[FlushMarker]:
        """Hand the queued events, decoded, to the assembler, up to the first flush marker (returned)."""
        markers: list[FlushMarker] = []
        add = self.store.assembler.add
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
            if type(item) is FlushMarker:
                markers.append(item)
                break  # write what came before the marker, then honour it
            counters.events_processed += 1  # counted as it leaves the queue, so stats() never misses it
            try:
                item = encoded(item)  # a deferred event is encoded here
                if _JOINED_MLFLOW in item:
                    self.joins += 1
                add(decode(item))
            except Exception as exc:
                counters.drop(DropReason.DECODE_ERROR)
                report_internal_error(counters, "assembler", exc)
        return markers


def _default_experiment() -> str:
    """MLflow's experiment for traces that name none, resolved in this process (its environment)."""
    try:
        from mlflow.tracking.fluent import _get_experiment_id

        return _get_experiment_id() or ""
    except Exception:
        return ""
