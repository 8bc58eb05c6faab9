"""The writer process's loop: turns a log directory's segments into MLflow traces.

In: segment files (pipeline/eventlog.py) of any number of producer processes, and flush requests on the
directory's UNIX socket. Out: traces stored (``log_spans``), checkpoints, deleted segments, the status file,
and answers to flush requests. One thread runs everything, in one loop (``Writer.run``); this module only
orchestrates: segments.py reads, store.py stores and checkpoints, server.py holds the socket, status.py says
how it goes, tally.py counts.

Each producer (a process that appended to the log) gets its own ``Assembler`` with the producer's metadata
and content policy from its segments, so traces are what the producer would have stored itself. Where a unit
goes: its own tracking URI and experiment when its events carry them (the store and experiment active when
the trace began), else those the producer resolved when it opened its segment (in the segment header).
"""

from __future__ import annotations

import gc
import logging
import os
import time
from collections.abc import Callable
from typing import Any

from .. import eventlog, logdir, safefs
from ..assembler import Unit
from .drain import Drain
from .segments import Producer, SegmentReading
from .server import FlushServer
from .status import Report
from .store import StoreStep
from .tally import Tally

logger = logging.getLogger("spanline.writer")

# An automatic writer retrying a failing store with no producer alive exits after this long (the log is kept).
_ORPHANED_EXIT = 300.0
_DIR_CHECK_EVERY = 1.0


class Writer(SegmentReading, StoreStep):
    """The writer of one log directory: one process per directory (it holds the directory's lock).

    ``run`` serves the directory until it is idle (``once``, ``exit_when_idle``), drained (``drain``, set by
    ``spanline writer``), or gone. Each ``round`` reads every producer's new records (``SegmentReading``),
    stores what they complete and only then checkpoints (``StoreStep``), and answers the flush requests
    (``FlushServer``) that the stored records satisfy. ``sink`` replaces the store (tests); by default it is a
    ``FanOut`` of ``writers`` store writers.
    """

    def __init__(
        self,
        directory: str,
        *,
        once: bool = False,
        exit_when_idle: bool = False,
        idle_exit: float = 5.0,
        poll: float = 0.2,
        sink: Callable[[list[Unit]], None] | None = None,
        max_log_bytes: int | None = None,
        writers: int | None = None,
        freeze_gc: bool = False,
    ) -> None:
        self.directory = directory
        self.once = once
        self.exit_when_idle = exit_when_idle
        self.idle_exit = idle_exit
        self.poll = poll
        self.sink = sink
        self.max_log_bytes = max_log_bytes
        self.writers = writers  # store writers in parallel (fanout.py); None: the store kind's default
        self.drain: Drain | None = None  # SIGTERM's drain (drain.py), set by ``spanline writer``
        self.producers: dict[str, Producer] = {}
        self.tally = Tally()
        self.report = Report()
        self.server = FlushServer()
        self.unwritten: list[Unit] = []
        self.uncommitted: set[str] = set()  # producers read this round, whose checkpoints move at commit
        self.owner: dict[int, Producer] = {}  # id(unit) -> its producer, while the unit is unwritten
        self.retry_at = 0.0
        self.backoff = 0.1
        self.bad_segments: dict[str, str] = {}
        self.finished_producers: dict[str, dict[str, Any]] = {}  # their counters, for late flush answers
        self.dead_letter_errors: dict[str, int] = {}  # error -> units set aside for it
        self.dir_fd = -1  # the log directory, opened (and checked) by run()
        self._dir_checked = 0.0
        self._idle_since = time.monotonic()
        self._orphaned_since: float | None = None
        self._progressed = False  # whether the last round read or wrote anything
        # ``freeze_gc``: only in the writer's own process (``spanline writer``), whose start-up objects then leave
        # the GC's way after the first batch (``_serve``); never in a process that runs a Writer among others.
        self._frozen = not freeze_gc

    def run(self) -> int:
        eventlog.ensure_dir(self.directory)
        # Every file of the directory is opened relative to this descriptor, never through a link: the
        # directory checked (owned by us, writable by no one else) is the one used for the writer's life.
        self.dir_fd = safefs.open_dir(self.directory)
        try:
            with logdir.held_lock(self.directory) as held:
                if not held:
                    return self._run_as_client()
                return self._serve()
        finally:
            os.close(self.dir_fd)
            self.dir_fd = -1

    def _run_as_client(self) -> int:
        if not self.once:
            logger.info("spanline writer: another writer holds %s; exiting", self.directory)
            return 0
        # --once while a writer runs: ask it to drain, and wait for it.
        reply = logdir.ask_writer(self.directory, {"drain": True}, None)
        return 0 if reply and reply.get("ok") else 1

    def _serve(self) -> int:
        self.server.listen(self.directory, self.dir_fd)
        if self.sink is None:
            from .fanout import FanOut  # imports mlflow once writing: after the socket is up, so flushes can queue

            self.sink = FanOut(self.writers)
        self.report.state = "running"
        try:
            while True:
                self.server.read_requests(self._next_wait())
                progressed = self._progressed = self.round()
                if progressed and not self._frozen:
                    # Every object alive now (mlflow's and SQLAlchemy's modules, the store: ~270,000), imported by
                    # the first batch, goes out of the cyclic GC's reach: each full collection walked them all,
                    # ~140 ms once per few thousand traces, as a batch's rows outlive two young collections.
                    gc.freeze()
                    self._frozen = True
                self.write_status()
                if self._should_exit(progressed) or self._directory_gone():
                    return 0
        finally:
            self.report.state = "stopped"
            self.write_status(force=True)
            self.server.close_waiters()
            if hasattr(self.sink, "close"):
                self.sink.close()  # the fan-out's store writers (threads, processes)
            self.server.close(self.dir_fd)

    def _directory_gone(self) -> bool:
        """Whether the log directory was deleted or replaced under the writer (checked about once a second):
        then nothing it holds is anyone's any more, and a writer left running would hold deleted files and
        the store open for ever (a bench's writers outlived their directories by hours)."""
        now = time.monotonic()
        if self.dir_fd < 0 or now - self._dir_checked < _DIR_CHECK_EVERY:
            return False
        self._dir_checked = now
        if safefs.same_dir(self.dir_fd, self.directory):
            return False
        logger.warning("spanline writer: the log directory %r was deleted or replaced; exiting", self.directory)
        self.report.state = "directory gone"
        return True

    def _next_wait(self) -> float:
        if self.unwritten:
            return max(0.0, min(self.poll, self.retry_at - time.monotonic()))
        if self.once or self._progressed:
            # More may be waiting (a round reads at most READ_BYTES per producer), and --once never idles:
            # only look at the socket. An idle writer waits for the next poll (or a flush request).
            return 0.0
        return self.poll

    def _should_exit(self, progressed: bool) -> bool:
        if self.drain is not None and self.drain.requested:
            self.report.state = "draining"
            return self.drain.should_exit(self, progressed)
        now = time.monotonic()
        if self._retrying_orphaned(now):
            return True
        if progressed or self.unwritten or self.server.waiters:
            self._idle_since = now
            return False
        if self.once:
            return True
        if not self.exit_when_idle:
            return False
        if any(not p.dead for p in self.producers.values()):
            self._idle_since = now
            return False
        return now - self._idle_since >= self.idle_exit

    def _retrying_orphaned(self, now: float) -> bool:
        """An automatic writer whose store has failed with no producer alive for ``_ORPHANED_EXIT`` seconds
        says so and exits; the log keeps everything, and the next traced process starts a writer again."""
        if not (self.exit_when_idle and self.unwritten and self.report.state == "retrying") or any(
            not p.dead for p in self.producers.values()
        ):
            self._orphaned_since = None
            return False
        if self._orphaned_since is None:
            self._orphaned_since = now
            return False
        if now - self._orphaned_since < _ORPHANED_EXIT:
            return False
        self.report.last_error = (f"{self.report.last_error}; no producer alive for {_ORPHANED_EXIT:.0f} s: "
                                  f"exiting, the log is kept for the next writer")
        logger.warning("spanline writer: %s", self.report.last_error)
        return True

    def round(self) -> bool:
        """One round: scan, read, assemble, store, checkpoint. Returns whether anything was read or written."""
        if self.unwritten:
            if time.monotonic() < self.retry_at or not self.write_unwritten():
                self.enforce_bound()
                return True
            self.commit()
            return True
        self.scan()
        self.enforce_bound()
        read_any = False
        for producer in list(self.producers.values()):
            read_any |= self.read(producer)
        for producer in self.producers.values():
            if producer.assembler is not None:
                self.unwritten.extend(self.place(producer, u) for u in producer.assembler.take())
        units = self.unwritten
        if units and not self.write_unwritten():
            return True
        self.commit()
        self.answer_waiters(drained=not read_any and not units)
        return read_any or bool(units)

    def answer_waiters(self, drained: bool) -> None:
        self.server.answer_waiters(lambda request: self.answer(request, drained))

    def answer(self, request: dict[str, Any], drained: bool) -> dict[str, Any] | None:
        """The answer to a flush request, or None while it cannot be given yet."""
        if request.get("status"):
            return self.status()  # also when the status file cannot be written (a full disk)
        if request.get("drain"):
            return {"ok": True} if drained and not self.unwritten else None
        segment = request.get("segment", "")
        parsed = eventlog.parse_name(segment)
        if parsed is None:
            return {"ok": False, "error": "bad request"}
        pid, seq = parsed
        if segment in self.bad_segments:
            return {"ok": False, "error": self.bad_segments[segment]}
        producer = self.producers.get(pid)
        counters = producer.counters if producer else self.finished_producers.get(pid)
        if producer is None:
            if counters is not None or not os.path.exists(os.path.join(self.directory, segment)):
                return {"ok": True, **(counters or {})}  # finished, or dropped (counted)
            return None  # not scanned yet
        if request.get("final"):
            return None  # an exiting producer: answered once it is finished (open spans stored as unfinished)
        if producer.done >= (seq, int(request.get("offset", 0))) or (
            producer.segments and producer.segments[0].seq > seq
        ):
            return {"ok": True, **producer.counters}
        return None

    def status(self) -> dict[str, Any]:
        return self.report.snapshot(self.directory, self.tally, self.producers, self.bad_segments,
                                    self.dead_letter_errors, self.finished_producers)

    def write_status(self, force: bool = False) -> None:
        if self.report.due(force):
            self.report.write_file(self.directory, self.dir_fd, self.status())
