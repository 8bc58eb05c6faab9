"""Reading a log directory's segments, producer by producer, into their assemblers.

In: the segment files (pipeline/eventlog.py) of every producer process in the log directory, and their
checkpoints. Out: events folded into each producer's ``Assembler`` (units it completes go to the store step,
``Writer.place``), ``Producer.done`` moved forward, unreadable files set aside (``bad_segments``; files with a
segment's name that are no segment renamed ``<name>.bad``), torn tails and corrupt records counted. Runs in
the writer process, on its one thread (``Writer.run``).

A producer is alive while it holds the lock on its newest segment. Once it is gone and its segments are read,
its open spans are closed as unfinished (``Assembler.close_all``), so the store step stores them and the
commit deletes its segments.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .. import eventlog, events, safefs
from ..assembler import Assembler
from ..policy import ContentPolicy
from ..stats import DropReason

logger = logging.getLogger("spanline.writer")

READ_BYTES = 8 * 1024 * 1024  # per producer per round, so a round (and its memory) stays bounded


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
    """An app process that appended to the log, as the writer follows it (not pipeline/producer.py's metadata)."""

    pid: str  # the producer id of its segments' names (not an OS pid: that is ``header["pid"]``)
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


class SegmentReading:
    """The segment-reading half of ``Writer`` (a mixin: it shares the writer's state).

    Uses ``directory``, ``dir_fd``, ``producers``, ``bad_segments``, ``uncommitted``, ``unwritten``, ``tally``
    (pipeline/writer/tally.py), ``report`` (pipeline/writer/status.py) and ``place`` (pipeline/writer/store.py).
    """

    directory: str
    dir_fd: int
    producers: dict[str, Producer]
    bad_segments: dict[str, str]
    uncommitted: set[str]
    unwritten: list[Any]
    tally: Any
    report: Any
    place: Callable[[Producer, Any], Any]

    def scan(self) -> None:
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
            current = self.current(producer)
            if current is not None:
                self.open_header(producer, current)  # its header: the producer's metadata and bound

    def open_header(self, producer: Producer, seg: Segment) -> bool:
        """Open a segment and read its header; False if it cannot be read (yet, or ever)."""
        if seg.header is not None:
            return True
        try:
            if seg.fd < 0:
                seg.fd = _open_segment(self.dir_fd, seg.path)
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
            if _abandoned(seg):
                self._quarantine(producer, seg, "segment header incomplete and its producer gone")
            return False
        seg.header = header
        seg.offset = header.size
        producer.header = header.fields
        if producer.assembler is None:
            producer.assembler = Assembler(
                self.tally.assembly, producer.content_policy, producer=header.fields.get("producer") or {}
            )
        return True

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
        self.tally.add("quarantined")
        self._bad(producer, seg, f"{message}: quarantined, {where}")

    def _bad(self, producer: Producer, seg: Segment, message: str) -> None:
        name = os.path.basename(seg.path)
        self.bad_segments[name] = message
        self.report.last_error = f"{name}: {message}"
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
        dfd = self.dfd()
        checkpointed = [s for s in producer.segments if eventlog.read_checkpoint(s.path, dfd) is not None]
        if not checkpointed:
            first = producer.segments[0]
            producer.done = (first.seq, 0)
            return
        start = checkpointed[-1]
        for seg in [s for s in producer.segments if s.seq < start.seq]:
            eventlog.remove_segment(seg.path)  # stored before a crash that came before their deletion
            producer.segments.remove(seg)
        if not self.open_header(producer, start):
            return
        offset = eventlog.read_checkpoint(start.path, dfd) or start.offset
        assert start.header is not None
        if not eventlog.valid_checkpoint(start.fd, start.header, offset):
            # A hint that does not fit its segment (past its end, inside the header, not on a record): read
            # the segment from the start instead; what is stored already is stored again, once (idempotent).
            name = os.path.basename(start.path)
            self.tally.add("bad_checkpoints")
            self.report.last_error = f"{name!r}: checkpoint {offset} does not fit the segment; read from its start"
            logger.warning("spanline writer: %s", self.report.last_error)
            offset = start.offset
        # The policy in force at the checkpoint: the segment's policy records before it.
        result = eventlog.read_records(start.fd, start.offset, max(0, offset - start.offset))
        for _, kind, payload in result.records:
            if kind == eventlog.POLICY:
                producer.policy = parse_policy(payload, producer.policy)
        start.offset = max(start.offset, offset)
        producer.done = (start.seq, start.offset)

    def read(self, producer: Producer) -> bool:
        """Read (at most ``READ_BYTES`` of) ``producer``'s new records; whether anything was read."""
        read_any = False
        budget = READ_BYTES
        while producer.segments and budget > 0:
            seg = self.current(producer)
            if seg is None or not self.open_header(producer, seg):
                return read_any
            result = eventlog.read_records(seg.fd, seg.offset, min(budget, READ_BYTES))
            if result.corrupt:
                # Bytes that are no record: whose they were is unknown (the producer's own records, or bytes
                # someone else appended), so they are reported as what they are, with the segment, and not
                # charged to the producer's drops: a loss of its own shows as its spans' loss (an end without
                # its start is dropped as orphaned, a start without its end stored unfinished).
                self.tally.add("corrupt_records", result.corrupt)
                producer.counters["corrupt_records"] = producer.counters.get("corrupt_records", 0) + result.corrupt
                self.report.last_error = (
                    f"{os.path.basename(seg.path)!r}: {result.corrupt} corrupt record(s) skipped "
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
                    self.tally.drop(producer, DropReason.TORN_TAIL, 1)
                seg.sealed = True
                continue
            return read_any
        return read_any

    def current(self, producer: Producer) -> Segment | None:
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
            self.tally.drop(producer, DropReason.TORN_TAIL, 1)
            self.report.last_error = f"{os.path.basename(seg.path)!r}: torn tail skipped (its producer died mid-append)"
            # Final: nobody will complete it. What came before is stored, and the segment deleted once it is
            # (a record claiming 200 MiB with 12 present was otherwise re-read every round, for ever).
            seg.offset = max(seg.offset, size(seg))
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
                    self.tally.drop(producer, DropReason.DECODE_ERROR, 1)
                    continue
                root = getattr(event, "root", None)
                if root is not None and root not in first_pos:
                    first_pos[root] = (seg.seq, offset)
                try:
                    assembler.add(event)
                except Exception as exc:
                    self.tally.drop(producer, DropReason.DECODE_ERROR, 1)
                    self.report.last_error = f"assembler: {type(exc).__name__}: {exc}"
            elif kind == eventlog.POLICY:
                # Units completed so far go where the policy in force until now sends them.
                self.unwritten.extend(self.place(producer, u) for u in assembler.take())
                producer.policy = parse_policy(payload, producer.policy)
            elif kind == eventlog.TICK and not producer.oldest_tick_ns:
                producer.oldest_tick_ns = int.from_bytes(payload, "little", signed=True)
            elif kind == eventlog.SEAL:
                seg.sealed = True
        self.uncommitted.add(producer.pid)

    def dfd(self) -> int | None:
        """The log directory's descriptor, or None for a Writer driven directly (tests), not through run()."""
        return self.dir_fd if self.dir_fd >= 0 else None


def _abandoned(seg: Segment) -> bool:
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


def _open_segment(dir_fd: int, path: str) -> int:
    if dir_fd < 0:  # a Writer driven directly (tests), not through run()
        return safefs.open_in_path(path, os.O_RDONLY)
    return safefs.open_in(dir_fd, os.path.basename(path), os.O_RDONLY)


def size(seg: Segment) -> int:
    try:
        return os.fstat(seg.fd).st_size if seg.fd >= 0 else os.stat(seg.path).st_size
    except OSError:
        return 0


def mtime(seg: Segment) -> float:
    try:
        return os.stat(seg.path).st_mtime
    except OSError:
        return 0.0


def count_events(seg: Segment) -> int:
    """The events of ``seg`` not read yet (what dropping it loses)."""
    try:
        _, result = eventlog.scan(seg.path)
    except Exception:
        return 0
    return sum(1 for off, kind, _ in result.records if kind == eventlog.EVENT and off >= seg.offset)


_POLICY_TYPES = {"capture_content": str, "max_content_bytes": int, "experiment_id": str}


def parse_policy(payload: bytes, current: dict[str, Any]) -> dict[str, Any]:
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
