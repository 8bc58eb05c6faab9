"""The writer process: turns a log directory's segments into MLflow traces.

In: segment files (pipeline/eventlog.py) of any number of producer processes, and flush requests on the
directory's UNIX socket. Out: ``MlflowSink.write`` calls (``log_spans``), checkpoints, deleted segments, the
status file, and answers to flush requests. One thread runs everything, in one loop (``Writer.run``).

Each producer (a process that appended to the log) gets its own ``Assembler`` with the producer's metadata,
trace-id prefix and content policy from its segments, so traces are what the producer would have stored
itself. A round reads new records of every producer, assembles, writes the complete units in batches, and
only then checkpoints: a crash anywhere replays from the last checkpoint, and since ``log_spans`` is
idempotent (DESIGN §7) the replay leaves no duplicate. The checkpoint is the earliest record of a trace that
is not stored yet, so an open span's start survives a restart too.

A producer is alive while it holds the lock on its newest segment. Once it is gone and its segments are
read, its open spans are closed as unfinished (like ``Assembler.close_all`` at shutdown), stored, and its
segments deleted. Store failures are retried with backoff and jitter, forever, while the log is within
``max_log_bytes``; past it the oldest segments are dropped and counted. Where a unit goes: its own tracking
URI and experiment when its events carry them (the store and experiment active when the trace began), else
those the producer resolved when it opened its segment (in the segment header).
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import json
import logging
import os
import random
import selectors
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import deadletter, eventlog, events, logdir, safefs
from .assembler import Assembler, Unit
from .policy import ContentPolicy
from .stats import Counters, DropReason

logger = logging.getLogger("spanline.writer")

_BATCH_UNITS = 200  # units per log_spans round trip
_READ_BYTES = 8 * 1024 * 1024  # per producer per round, so a round (and its memory) stays bounded
_STATUS_EVERY = 0.5
# The longest wait between store retries. A failing attempt is cheap (a refused connection, a failed SQL
# connect), so retrying every ~2 s costs the store nothing and stores the backlog soon after it is back.
_BACKOFF_CAP = 2.0
# An automatic writer retrying a failing store with no producer alive exits after this long (the log is kept).
_ORPHANED_EXIT = 300.0
_DIR_CHECK_EVERY = 1.0


@dataclass
class Segment:
    path: str
    seq: int
    fd: int = -1
    header: eventlog.Header | None = None
    offset: int = 0  # next record to read
    sealed: bool = False
    partial: bool = False


@dataclass
class Producer:
    pid: str
    segments: list[Segment] = field(default_factory=list)
    assembler: Assembler | None = None
    header: dict[str, Any] = field(default_factory=dict)
    policy: dict[str, Any] = field(default_factory=dict)
    first_pos: dict[int, tuple[int, int]] = field(default_factory=dict)  # root span -> its earliest record
    done: tuple[int, int] = (-1, 0)  # (seq, offset): everything before is stored (or dropped, counted)
    dead: bool = False
    counters: dict[str, Any] = field(default_factory=lambda: {"traces_stored": 0, "spans_stored": 0, "dropped": {}})
    oldest_tick_ns: int = 0  # append time of the oldest record read since the last commit

    def drop(self, reason: str, n: int) -> None:
        if n:
            self.counters["dropped"][reason] = self.counters["dropped"].get(reason, 0) + n

    def content_policy(self) -> ContentPolicy:
        return ContentPolicy(
            self.policy.get("capture_content", "full"), None, self.policy.get("max_content_bytes", 4 * 1024 * 1024)
        )


class Writer:
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
    ) -> None:
        self.directory = directory
        self.once = once
        self.exit_when_idle = exit_when_idle
        self.idle_exit = idle_exit
        self.poll = poll
        self._sink = sink
        self.max_log_bytes = max_log_bytes
        self.writers = writers  # store writers in parallel (pipeline/fanout.py); None: the store kind's default
        self.producers: dict[str, Producer] = {}
        self.counters = Counters()  # for the assemblers' own drop and error accounting
        self.unwritten: list[Unit] = []
        self.uncommitted: set[str] = set()  # producers read this round, whose checkpoints move at commit
        self.retry_at = 0.0
        self.backoff = 0.1
        self.waiters: list[tuple[socket.socket, dict[str, Any]]] = []
        self.totals = {"traces_stored": 0, "spans_stored": 0, "batches": 0, "retries": 0, "corrupt_records": 0}
        self.dropped: dict[str, int] = {}
        self.bad_segments: dict[str, str] = {}
        self.last_error: str | None = None
        self.lags: collections.deque[float] = collections.deque(maxlen=2000)
        self.started = time.time()
        self._status_at = 0.0
        self._idle_since = time.monotonic()
        self._progressed = False  # whether the last round read or wrote anything
        self.state = "starting"
        self._owner: dict[int, Producer] = {}  # id(unit) -> its producer, while the unit is unwritten
        self.finished_producers: dict[str, dict[str, Any]] = {}  # their counters, for late flush answers
        self.dir_fd = -1  # the log directory, opened (and checked) by run()
        self._dir_checked = 0.0
        self.file_errors: dict[str, str] = {}  # what of its own the writer cannot write now (a full disk)
        self.dead_letter_errors: dict[str, int] = {}  # error -> units set aside for it

    # --- the loop ----------------------------------------------------------------------------------------

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
        path = logdir.socket_address(self.directory, self.dir_fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(logdir.SOCK, dir_fd=self.dir_fd)
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind(path)
        os.chmod(logdir.SOCK, 0o600, dir_fd=self.dir_fd)
        server.listen(128)
        server.setblocking(False)
        self.selector = selectors.DefaultSelector()
        self.selector.register(server, selectors.EVENT_READ, None)
        if self._sink is None:
            from .fanout import FanOut  # imports mlflow once writing: after the socket is up, so flushes can queue

            self._sink = FanOut(self.writers)
        self.state = "running"
        try:
            while True:
                self._serve_requests(server, self._next_wait())
                progressed = self._progressed = self.round()
                self._write_status()
                if self._should_exit(progressed) or self._directory_gone():
                    return 0
        finally:
            self.state = "stopped"
            self._write_status(force=True)
            for sock, _ in self.waiters:
                sock.close()
            if hasattr(self._sink, "close"):
                self._sink.close()  # the fan-out's store writers (threads, processes)
            server.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(logdir.SOCK, dir_fd=self.dir_fd)

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
        self.state = "directory gone"
        return True

    def _next_wait(self) -> float:
        if self.unwritten:
            return max(0.0, min(self.poll, self.retry_at - time.monotonic()))
        if self.once or self._progressed:
            # More may be waiting (a round reads at most _READ_BYTES per producer), and --once never idles:
            # only look at the socket. An idle writer waits for the next poll (or a flush request).
            return 0.0
        return self.poll

    def _should_exit(self, progressed: bool) -> bool:
        drain = getattr(self, "drain", None)  # pipeline/drain.py: set by ``spanline writer``
        if drain is not None and drain.requested:
            self.state = "draining"
            return drain.should_exit(self, progressed)
        now = time.monotonic()
        if self._retrying_orphaned(now):
            return True
        if progressed or self.unwritten or self.waiters:
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
        if not (self.exit_when_idle and self.unwritten and self.state == "retrying") or any(
            not p.dead for p in self.producers.values()
        ):
            self._orphaned_since = None
            return False
        if getattr(self, "_orphaned_since", None) is None:
            self._orphaned_since = now
            return False
        if now - self._orphaned_since < _ORPHANED_EXIT:
            return False
        self.last_error = (f"{self.last_error}; no producer alive for {_ORPHANED_EXIT:.0f} s: exiting, the log "
                           f"is kept for the next writer")
        logger.warning("spanline writer: %s", self.last_error)
        return True

    def _serve_requests(self, server: socket.socket, timeout: float) -> None:
        for key, _ in self.selector.select(timeout):
            if key.data is None:
                while True:
                    try:
                        conn, _ = server.accept()
                    except BlockingIOError:
                        break
                    conn.setblocking(False)
                    self.selector.register(conn, selectors.EVENT_READ, bytearray())
            else:
                conn, buf = key.fileobj, key.data
                try:
                    chunk = conn.recv(4096)
                except (BlockingIOError, ConnectionError):
                    chunk = b""
                if not chunk:
                    self.selector.unregister(conn)
                    conn.close()
                    continue
                buf.extend(chunk)
                if b"\n" in buf:
                    self.selector.unregister(conn)
                    try:
                        request = json.loads(bytes(buf).split(b"\n", 1)[0])
                    except ValueError:
                        conn.close()
                        continue
                    conn.setblocking(True)
                    self.waiters.append((conn, request))

    # --- one round: scan, read, assemble, write, checkpoint --------------------------------------------

    def round(self) -> bool:
        """Returns whether anything was read or written."""
        if self.unwritten:
            if time.monotonic() < self.retry_at or not self._write_unwritten():
                self._enforce_bound()
                return True
            self._commit()
            return True
        self._scan()
        self._enforce_bound()
        read_any = False
        for producer in list(self.producers.values()):
            read_any |= self._read(producer)
        for producer in self.producers.values():
            if producer.assembler is not None:
                self.unwritten.extend(self._place(producer, u) for u in producer.assembler.take())
        units = self.unwritten
        if units and not self._write_unwritten():
            return True
        self._commit()
        self._answer_waiters(drained=not read_any and not units)
        return read_any or bool(units)

    def _scan(self) -> None:
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return
        for name in sorted(names):
            parsed = eventlog.parse_name(name)
            if parsed is None or name in self.bad_segments:
                continue
            pid, seq = parsed
            producer = self.producers.get(pid)
            if producer is None:
                producer = self.producers[pid] = Producer(pid)
            if any(s.seq == seq for s in producer.segments):
                continue
            if producer.segments and seq < producer.segments[0].seq:
                continue  # an old one we already finished (deleted meanwhile) — never re-read
            producer.segments.append(Segment(os.path.join(self.directory, name), seq))
            producer.segments.sort(key=lambda s: s.seq)
        for producer in list(self.producers.values()):
            self._resume(producer)
            current = self._current(producer)
            if current is not None:
                self._open(producer, current)  # its header: the producer's metadata and bound

    def _open(self, producer: Producer, seg: Segment) -> bool:
        """Open a segment and read its header; False if it cannot be read (yet, or ever)."""
        if seg.header is not None:
            return True
        try:
            if seg.fd < 0:
                seg.fd = self._open_segment(seg.path)
            header = eventlog.read_header(seg.fd)
        except FileNotFoundError:
            return False
        except OSError as exc:  # a link (ELOOP), another user's file, a FIFO: never read
            self._bad(producer, seg, f"not read: {exc.strerror or exc}")
            return False
        except eventlog.NewerFormatError as exc:
            self._bad(producer, seg, str(exc))
            return False
        except eventlog.BadSegmentError as exc:
            self._quarantine(producer, seg, str(exc))
            return False
        if header is None:
            if self._abandoned(seg):
                self._quarantine(producer, seg, "segment header incomplete and its producer gone")
            return False
        seg.header = header
        seg.offset = header.size
        producer.header = header.fields
        if producer.assembler is None:
            producer.assembler = Assembler(
                self.counters, producer.content_policy, producer=header.fields.get("producer") or {}
            )
        return True

    def _abandoned(self, seg: Segment) -> bool:
        """A segment whose header is incomplete and whose lock nobody holds: its producer died while making it
        (or it is not a producer's). Seconds of grace: a producer locks its file just after creating it."""
        try:
            fcntl.flock(seg.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        fcntl.flock(seg.fd, fcntl.LOCK_UN)
        try:
            st = os.fstat(seg.fd)
        except OSError:
            return False
        return time.time() - st.st_mtime > 5.0

    def _quarantine(self, producer: Producer, seg: Segment, message: str) -> None:
        """A file with a segment's name that is no segment: renamed aside (``<name>.bad``, a name no writer
        reads), counted, and not a producer that could still be alive (an --exit-when-idle writer exits)."""
        name = os.path.basename(seg.path)
        try:
            if self.dir_fd >= 0:
                os.rename(name, name + ".bad", src_dir_fd=self.dir_fd, dst_dir_fd=self.dir_fd)
            else:
                os.rename(seg.path, seg.path + ".bad")
            where = f"renamed to {name + '.bad'!r}"
        except OSError as exc:
            where = f"left in place ({exc.strerror})"
        self.totals["quarantined"] = self.totals.get("quarantined", 0) + 1
        self._bad(producer, seg, f"{message}: quarantined, {where}")

    def _open_segment(self, path: str) -> int:
        if self.dir_fd < 0:  # a Writer driven directly (tests), not through run()
            return safefs.open_in_path(path, os.O_RDONLY)
        return safefs.open_in(self.dir_fd, os.path.basename(path), os.O_RDONLY)

    def _bad(self, producer: Producer, seg: Segment, message: str) -> None:
        name = os.path.basename(seg.path)
        self.bad_segments[name] = message
        self.last_error = f"{name}: {message}"
        logger.error("spanline writer: %r left in place: %s", name, message)
        if seg.fd >= 0:
            os.close(seg.fd)
            seg.fd = -1
        producer.segments.remove(seg)
        if not producer.segments and producer.assembler is None:
            # Nothing of it was ever readable: not a producer that could still be alive (an --exit-when-idle
            # writer would otherwise wait for it forever).
            self.producers.pop(producer.pid, None)

    def _resume(self, producer: Producer) -> None:
        """On first sight of a producer: continue from its checkpoint, skipping what is stored."""
        if producer.done != (-1, 0) or not producer.segments:
            return
        dfd = self._dfd()
        checkpointed = [s for s in producer.segments if eventlog.read_checkpoint(s.path, dfd) is not None]
        if not checkpointed:
            first = producer.segments[0]
            producer.done = (first.seq, 0)
            return
        start = checkpointed[-1]
        for seg in [s for s in producer.segments if s.seq < start.seq]:
            eventlog.remove_segment(seg.path)  # stored before a crash that came before their deletion
            producer.segments.remove(seg)
        if not self._open(producer, start):
            return
        offset = eventlog.read_checkpoint(start.path, dfd) or start.offset
        assert start.header is not None
        if not eventlog.valid_checkpoint(start.fd, start.header, offset):
            # A hint that does not fit its segment (past its end, inside the header, not on a record): read
            # the segment from the start instead; what is stored already is stored again, once (idempotent).
            name = os.path.basename(start.path)
            self.totals["bad_checkpoints"] = self.totals.get("bad_checkpoints", 0) + 1
            self.last_error = f"{name!r}: checkpoint {offset} does not fit the segment; read from its start"
            logger.warning("spanline writer: %s", self.last_error)
            offset = start.offset
        # The policy in force at the checkpoint: the segment's policy records before it.
        result = eventlog.read_records(start.fd, start.offset, max(0, offset - start.offset))
        for _, kind, payload in result.records:
            if kind == eventlog.POLICY:
                producer.policy = _policy(payload, producer.policy)
        start.offset = max(start.offset, offset)
        producer.done = (start.seq, start.offset)

    def _read(self, producer: Producer) -> bool:
        read_any = False
        budget = _READ_BYTES
        while producer.segments and budget > 0:
            seg = self._current(producer)
            if seg is None or not self._open(producer, seg):
                return read_any
            result = eventlog.read_records(seg.fd, seg.offset, min(budget, _READ_BYTES))
            if result.corrupt:
                # Bytes that are no record: whose they were is unknown (the producer's own records, or bytes
                # someone else appended), so they are reported as what they are, with the segment, and not
                # charged to the producer's drops: a loss of its own shows as its spans' loss (an end without
                # its start is dropped as orphaned, a start without its end stored unfinished).
                self.totals["corrupt_records"] += result.corrupt
                producer.counters["corrupt_records"] = producer.counters.get("corrupt_records", 0) + result.corrupt
                self.last_error = (f"{os.path.basename(seg.path)!r}: {result.corrupt} corrupt record(s) skipped "
                                   f"(bytes that are no record of producer {producer.pid}'s: not counted as its loss)")
            self._fold(producer, seg, result.records)
            budget -= result.end - seg.offset
            read_any |= result.end > seg.offset
            seg.offset = result.end
            seg.partial = result.partial
            if seg.sealed:
                continue  # next segment of this producer
            if result.records:
                continue  # maybe more
            newest = seg is producer.segments[-1]
            if newest:
                self._check_alive(producer, seg)
            elif result.partial or not result.records:
                # Not the newest, not sealed, nothing more: its producer died mid-append and a later
                # segment exists (a crash during rotation). Its tail is torn; go on with the next.
                if result.partial:
                    self._drop(producer, DropReason.TORN_TAIL, 1)
                seg.sealed = True
                continue
            return read_any
        return read_any

    def _current(self, producer: Producer) -> Segment | None:
        """The first segment of ``producer`` not fully read."""
        for seg in producer.segments:
            if not seg.sealed:
                return seg
        return None

    def _check_alive(self, producer: Producer, seg: Segment) -> None:
        if producer.dead:
            return
        try:
            fcntl.flock(seg.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return  # its producer holds it: alive
        fcntl.flock(seg.fd, fcntl.LOCK_UN)
        # The producer is gone. Read once more (it may have appended just before dying), then close it.
        result = eventlog.read_records(seg.fd, seg.offset)
        self._fold(producer, seg, result.records)
        seg.offset = result.end
        if result.partial:
            self._drop(producer, DropReason.TORN_TAIL, 1)
            self.last_error = f"{os.path.basename(seg.path)!r}: torn tail skipped (its producer died mid-append)"
            # Final: nobody will complete it. What came before is stored, and the segment deleted once it is
            # (a record claiming 200 MiB with 12 present was otherwise re-read every round, for ever).
            seg.offset = max(seg.offset, _size(seg))
            seg.sealed = True
        producer.dead = True
        if producer.assembler is not None:
            producer.assembler.close_all()

    def _fold(self, producer: Producer, seg: Segment, records: list[tuple[int, int, bytes]]) -> None:
        assembler = producer.assembler
        assert assembler is not None
        first_pos = producer.first_pos
        decode = events.decode
        for offset, kind, payload in records:
            if kind == eventlog.EVENT:
                try:
                    event = decode(payload)
                except Exception:
                    self._drop(producer, DropReason.DECODE_ERROR, 1)
                    continue
                root = getattr(event, "root", None)
                if root is not None and root not in first_pos:
                    first_pos[root] = (seg.seq, offset)
                try:
                    assembler.add(event)
                except Exception as exc:
                    self._drop(producer, DropReason.DECODE_ERROR, 1)
                    self.last_error = f"assembler: {type(exc).__name__}: {exc}"
            elif kind == eventlog.POLICY:
                # Units completed so far go where the policy in force until now sends them.
                self.unwritten.extend(self._place(producer, u) for u in assembler.take())
                producer.policy = _policy(payload, producer.policy)
            elif kind == eventlog.TICK and not producer.oldest_tick_ns:
                producer.oldest_tick_ns = int.from_bytes(payload, "little", signed=True)
            elif kind == eventlog.SEAL:
                seg.sealed = True
        self.uncommitted.add(producer.pid)

    def _place(self, producer: Producer, unit: Unit) -> Unit:
        """Where the unit goes: its own store and experiment if its events named them, else the producer's."""
        header = producer.header
        uri = unit.tracking_uri or header.get("tracking_uri", "")
        unit.tracking_uri = logdir.absolute_uri(uri, header.get("cwd")) if uri else ""
        if not (unit.experiment and unit.spans[0].in_mlflow_trace):
            # The header's experiment is an id of the header's store: never sent to another store (a process
            # that switched its tracking URI mid-run), where it names nothing, or some other experiment.
            own = header.get("tracking_uri", "")
            same_store = not own or unit.tracking_uri == logdir.absolute_uri(own, header.get("cwd"))
            unit.experiment = (producer.policy.get("experiment_id") or unit.experiment
                               or (header.get("experiment", "") if same_store else ""))
        self._owner[id(unit)] = producer
        return unit

    def _write_unwritten(self) -> bool:
        assert self._sink is not None
        while self.unwritten:
            batch = self.unwritten[: getattr(self._sink, "batch_units", _BATCH_UNITS)]  # fan-out: one per writer
            try:
                # A permanent refusal is narrowed down to the units refused alone; they are set aside, and
                # the rest of the batch is stored: one poison trace holds nothing else up.
                refused = deadletter.bisect(self._sink, batch)
            except Exception as exc:
                from .storeerrors import describe

                self.last_error = f"store: {_brief_text(describe(getattr(batch[0], 'tracking_uri', '') or '', exc))}"
                self.totals["retries"] += 1
                if self.state != "retrying":  # once per outage, not at every retry (~2 s apart at most)
                    logger.warning("spanline writer: store write failed (will retry): %s", self.last_error)
                self.state = "retrying"
                # Exponential backoff with jitter, capped: a store back after an outage of minutes is retried
                # within ``_BACKOFF_CAP`` seconds, and many writers do not hammer it in step; a server that
                # said how long to wait (429 Retry-After) is waited for that long.
                wait = random.uniform(0.5, 1.0) * self.backoff
                asked = deadletter.retry_after(exc)
                self.retry_at = time.monotonic() + (max(wait, asked) if asked is not None else wait)
                self.backoff = min(self.backoff * 2, _BACKOFF_CAP)
                return False
            if refused:
                self._set_aside(refused)
            if self.state == "retrying":
                retries = self.totals["retries"]
                logger.warning("spanline writer: the store takes batches again (%d retries in all)", retries)
            self.state = "running"
            self.backoff = 0.1
            self.totals["batches"] += 1
            refused_ids = {id(u) for u, _ in refused}
            for unit in batch:
                if id(unit) in refused_ids:
                    continue
                producer = self._owner.pop(id(unit), None)
                spans = len(unit.spans)
                traces = sum(1 for s in unit.spans if s.is_trace_root)
                self.totals["spans_stored"] += spans
                self.totals["traces_stored"] += traces
                if producer is not None:
                    producer.counters["spans_stored"] += spans
                    producer.counters["traces_stored"] += traces
            del self.unwritten[: len(batch)]
        return True

    def _set_aside(self, refused: list[tuple[Unit, str]]) -> None:
        """Units the store refused for good: into the dead-letter file, counted for their producer (its
        flush() reports the loss) and in the status, logged once per distinct error."""
        try:
            if self.dir_fd >= 0:
                deadletter.append(self.dir_fd, refused)
            else:
                with safefs.opened_dir(self.directory) as dir_fd:
                    deadletter.append(dir_fd, refused)
            reason = DropReason.DEAD_LETTER
        except OSError as exc:  # a full disk: counted as lost, never retried forever
            self._file_failed("dead letters", exc)
            reason = DropReason.SINK_ERROR
        for unit, error in refused:
            producer = self._owner.pop(id(unit), None)
            self.totals["dead_letters"] = self.totals.get("dead_letters", 0) + 1
            if producer is not None:
                self._drop(producer, reason, unit.event_count)
            else:
                self.dropped[reason] = self.dropped.get(reason, 0) + unit.event_count
            if error not in self.dead_letter_errors:
                logger.error("spanline writer: the store refused trace %s for good (set aside in %s; "
                             "`spanline replay-dead-letters` stores it once fixed): %s",
                             unit.trace_id, deadletter.FILE, error)
            self.dead_letter_errors[error] = self.dead_letter_errors.get(error, 0) + 1
            self.last_error = f"dead letter {unit.trace_id}: {error}"

    def _commit(self) -> None:
        """Everything read this round is stored: move checkpoints, delete finished segments."""
        now_ns = time.time_ns()
        for pid in self.uncommitted:
            producer = self.producers.get(pid)
            if producer is None or not producer.segments:
                continue
            # The read position, but never past the first record of a trace still open in the assembler.
            asm = producer.assembler
            alive = set(asm.waiting) | {r.root for r in asm.open.values()} if asm is not None else set()
            producer.first_pos = {r: p for r, p in producer.first_pos.items() if r in alive}
            seg = self._current(producer) or producer.segments[-1]
            read_pos = (seg.seq, seg.offset)
            producer.done = read_pos
            checkpoint = min(producer.first_pos.values(), default=read_pos)
            self._checkpoint(producer, checkpoint)
            if producer.oldest_tick_ns:
                # Lag: from the append of the oldest record of this round to now, when it is stored.
                self.lags.append(max(0.0, (now_ns - producer.oldest_tick_ns) / 1e9))
                producer.oldest_tick_ns = 0
        self.uncommitted = set()
        for pid, producer in list(self.producers.items()):
            if producer.dead and not producer.first_pos and not any(
                not s.sealed and s.offset < _size(s) for s in producer.segments
            ):
                self._finish(producer)
                del self.producers[pid]

    def _dfd(self) -> int | None:
        return self.dir_fd if self.dir_fd >= 0 else None

    def _checkpoint(self, producer: Producer, pos: tuple[int, int]) -> None:
        seq, offset = pos
        for seg in list(producer.segments):
            if seg.seq < seq:
                self._delete(producer, seg)  # everything in it is stored
            elif seg.seq == seq:
                try:
                    eventlog.write_checkpoint(seg.path, offset, self._dfd())
                    self._file_ok("checkpoint")
                except FileNotFoundError:
                    pass
                except OSError as exc:
                    # A full disk (ENOSPC), EIO: the checkpoint is only a hint (a restart replays more, once,
                    # idempotent). Storing goes on; the next commit writes it again.
                    self._file_failed("checkpoint", exc)

    def _delete(self, producer: Producer, seg: Segment) -> None:
        if seg.fd >= 0:
            os.close(seg.fd)
            seg.fd = -1
        eventlog.remove_segment(seg.path)
        producer.segments.remove(seg)

    def _finish(self, producer: Producer) -> None:
        for seg in list(producer.segments):
            self._delete(producer, seg)
        self.finished_producers[producer.pid] = producer.counters

    def _enforce_bound(self) -> None:
        limit = self.max_log_bytes
        if limit is None:
            limits = [p.header.get("max_log_bytes") for p in self.producers.values() if p.header.get("max_log_bytes")]
            limit = max(limits) if limits else None
        if not limit:
            return
        segments = []
        for producer in self.producers.values():
            for seg in producer.segments:
                size = _size(seg)
                segments.append((os.path.basename(seg.path), producer, seg, size))
        total = sum(s[3] for s in segments)
        if total <= limit:
            return
        # Oldest first (names sort by producer start, then sequence); never a live producer's open segment.
        for _, producer, seg, size in sorted(segments, key=lambda s: (_mtime(s[2]), s[0])):
            if total <= limit:
                break
            if seg is producer.segments[-1] and not producer.dead:
                continue
            lost = _count_events(seg)
            self._drop(producer, DropReason.LOG_FULL, lost)
            self.last_error = f"log over max_log_bytes ({limit}): dropped {os.path.basename(seg.path)}"
            logger.warning("spanline writer: %s", self.last_error)
            self._delete(producer, seg)
            total -= size
            # What was assembled from it is discarded with it; the producer continues at its next segment.
            producer.assembler = None
            producer.first_pos = {}
            self.unwritten = [u for u in self.unwritten if self._owner.get(id(u)) is not producer]
            nxt = self._current(producer)
            if nxt is not None:
                nxt.header = None
                self._open(producer, nxt)

    def _answer_waiters(self, drained: bool) -> None:
        still = []
        for sock, request in self.waiters:
            reply = self._answer(request, drained)
            if reply is None:
                if _hung_up(sock):
                    sock.close()  # its asker is gone (a killed app, a --once timed out): nobody to answer
                else:
                    still.append((sock, request))
                continue
            with contextlib.suppress(OSError):
                sock.sendall((json.dumps(reply) + "\n").encode())
            sock.close()
        self.waiters = still

    def _answer(self, request: dict[str, Any], drained: bool) -> dict[str, Any] | None:
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

    # --- status --------------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        lags = sorted(self.lags)
        producers = {}
        for pid, p in self.producers.items():
            producers[pid] = {
                "pid": p.header.get("pid"),
                "alive": not p.dead,
                "segments": len(p.segments),
                "bytes_pending": sum(max(0, _size(s) - s.offset) for s in p.segments),
                "open_spans": p.assembler.open_spans if p.assembler else 0,
                **p.counters,
            }
        return {
            "pid": os.getpid(),
            "state": self.state,
            "started": self.started,
            "updated": time.time(),
            "directory": self.directory,
            **self.totals,
            "dropped": self.dropped_totals(),
            "bad_segments": self.bad_segments,
            "file_errors": dict(self.file_errors),
            "dead_letter_file": deadletter.FILE,
            "dead_letter_errors": dict(list(self.dead_letter_errors.items())[-20:]),
            "last_error": self.last_error,
            "lag_p50_s": lags[len(lags) // 2] if lags else None,
            "lag_p99_s": lags[min(len(lags) - 1, int(len(lags) * 0.99))] if lags else None,
            "producers": producers,
            "finished_producers": dict(list(self.finished_producers.items())[-50:]),
        }

    def _drop(self, producer: Producer, reason: str, n: int) -> None:
        """Count ``n`` events of ``producer`` lost for ``reason``: for it (answered to its flushes) and in all."""
        producer.drop(reason, n)
        if n:
            self.dropped[reason] = self.dropped.get(reason, 0) + n

    def dropped_totals(self) -> dict[str, int]:
        out: dict[str, int] = dict(self.counters.dropped())
        for k, v in self.dropped.items():
            out[k] = out.get(k, 0) + v
        return out

    def _write_status(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._status_at < _STATUS_EVERY:
            return
        self._status_at = now
        data = json.dumps(self.status()).encode()
        try:
            if self.dir_fd >= 0:
                safefs.write_replace(self.dir_fd, logdir.STATUS, data)
            else:
                with safefs.opened_dir(self.directory) as dir_fd:
                    safefs.write_replace(dir_fd, logdir.STATUS, data)
            self._file_ok("status")
        except OSError as exc:
            # The status stays in memory and on the socket ({"status": true}); the file is written again
            # at the next interval.
            self._file_failed("status", exc)

    def _file_failed(self, what: str, exc: OSError) -> None:
        """A file of the writer's own could not be written: reported (status, once in the log), not fatal."""
        message = f"{what}: {type(exc).__name__}: {exc.strerror or exc}"
        if self.file_errors.get(what) != message:
            logger.warning("spanline writer: cannot write the %s (%s); storing goes on", what, message)
        self.file_errors[what] = message
        self.last_error = message

    def _file_ok(self, what: str) -> None:
        if self.file_errors.pop(what, None) is not None:
            logger.warning("spanline writer: the %s is written again", what)


def _size(seg: Segment) -> int:
    try:
        return os.fstat(seg.fd).st_size if seg.fd >= 0 else os.stat(seg.path).st_size
    except OSError:
        return 0


def _mtime(seg: Segment) -> float:
    try:
        return os.stat(seg.path).st_mtime
    except OSError:
        return 0.0


def _count_events(seg: Segment) -> int:
    try:
        _, result = eventlog.scan(seg.path)
    except Exception:
        return 0
    return sum(1 for off, kind, _ in result.records if kind == eventlog.EVENT and off >= seg.offset)


_ERROR_CHARS = 1000  # a SQL error repeats every row of its batch: tens of KB per message


def _brief(exc: BaseException) -> str:
    """An exception as one bounded line for the status and the log."""
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= _ERROR_CHARS else f"{text[:_ERROR_CHARS]}… ({len(text) - _ERROR_CHARS} chars more)"


def _brief_text(text: str) -> str:
    return text if len(text) <= _ERROR_CHARS else f"{text[:_ERROR_CHARS]}… ({len(text) - _ERROR_CHARS} chars more)"


def _hung_up(sock: socket.socket) -> bool:
    """Whether the other end of a waiter's connection has closed. A waiter left behind would keep an
    ``--exit-when-idle`` writer alive forever: the bench's writers outlived their deleted log directories."""
    try:
        return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


class OneLineFormatter(logging.Formatter):
    """Log lines whose text cannot start a line of its own: a file name or an error message with a newline in
    it (another user's file name, a store's error) is escaped, and a traceback's lines are indented."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record).replace("\r", "\\r")
        if record.exc_info or record.stack_info:
            message = record.getMessage().replace("\r", "\\r")
            text = text.replace(message, message.replace("\n", "\\n"), 1)
            return text.replace("\n", "\n    | ")  # the traceback's own lines, marked as its continuation
        return text.replace("\n", "\\n")


_POLICY_TYPES = {"capture_content": str, "max_content_bytes": int, "experiment_id": str}


def _policy(payload: bytes, current: dict[str, Any]) -> dict[str, Any]:
    """A policy record's content, with only the keys and types a producer writes; a record that is not one
    (damage that kept its checksum, or bytes of someone's making) leaves the policy in force unchanged."""
    try:
        value = json.loads(payload)
    except ValueError:
        return current
    if not isinstance(value, dict):
        return current
    return {k: v for k, v in value.items() if k in _POLICY_TYPES and isinstance(v, _POLICY_TYPES[k])
            and not isinstance(v, bool)}
