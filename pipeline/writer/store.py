"""The store-and-checkpoint step: complete units into the store, then checkpoints and deletions.

In: units the producers' assemblers completed (``place`` says where each goes), the sink (pipeline/writer/
fanout.py's ``FanOut``, or a test's callable), and the producers' read positions. Out: ``log_spans`` calls
in batches; units the store refuses for good set aside in the dead-letter file; on a failing store, retries
with backoff and jitter (forever, while the log is within ``max_log_bytes``); once everything read is
stored, checkpoints moved and finished segments deleted; past ``max_log_bytes``, the oldest segments dropped
and counted. Runs in the writer process, on its one thread (``Writer.round``).

Checkpoints move only after the store took a round's units: a crash anywhere replays from the last
checkpoint, and since ``log_spans`` is idempotent the replay leaves no duplicate. The checkpoint is the
earliest record of a trace not stored yet, so an open span's start survives a restart too.
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Callable
from typing import Any

from .. import eventlog, logdir, safefs
from ..assembler import Unit
from ..options import Options
from ..stats import DropReason
from . import deadletter
from .segments import Producer, Segment, count_events, mtime, size
from .storeerrors import describe

logger = logging.getLogger("spanline.writer")

BATCH_UNITS = 200  # units per log_spans round trip
# The longest wait between store retries. A failing attempt is cheap (a refused connection, a failed SQL
# connect), so retrying every ~2 s costs the store nothing and stores the backlog soon after it is back.
BACKOFF_CAP = 2.0
_ERROR_CHARS = 1000  # a SQL error repeats every row of its batch: tens of KB per message


class StoreStep:
    """The store-and-checkpoint half of ``Writer`` (a mixin: it shares the writer's state).

    Uses ``directory``, ``dir_fd``, ``producers``, ``unwritten``, ``uncommitted``, ``owner``, ``sink``,
    ``max_log_bytes``, ``tally``, ``report``, and the segment reading's ``current``, ``open_header`` and ``dfd``.
    """

    directory: str
    dir_fd: int
    producers: dict[str, Producer]
    unwritten: list[Unit]
    uncommitted: set[str]
    owner: dict[int, Producer]  # id(unit) -> its producer, while the unit is unwritten
    sink: Callable[[list[Unit]], None] | None
    max_log_bytes: int | None
    retry_at: float
    backoff: float
    dead_letter_errors: dict[str, int]
    _dead_letters_full: bool = False  # said once, until the dead-letter file has room again
    finished_producers: dict[str, dict[str, Any]]
    tally: Any
    report: Any
    current: Callable[[Producer], Segment | None]
    open_header: Callable[[Producer, Segment], bool]
    dfd: Callable[[], int | None]

    def place(self, producer: Producer, unit: Unit) -> Unit:
        """Where the unit goes: its own store and experiment if its events named them, else the producer's."""
        header = producer.header
        uri = unit.tracking_uri or header.get("tracking_uri", "")
        unit.tracking_uri = logdir.absolute_uri(uri, header.get("cwd")) if uri else ""
        if not (unit.experiment and unit.in_mlflow_trace):
            # The header's experiment is an id of the header's store: never sent to another store (a process
            # that switched its tracking URI mid-run), where it names nothing, or some other experiment.
            own = header.get("tracking_uri", "")
            same_store = not own or unit.tracking_uri == logdir.absolute_uri(own, header.get("cwd"))
            unit.experiment = (producer.policy.get("experiment_id") or unit.experiment
                               or (header.get("experiment", "") if same_store else ""))
        self.owner[id(unit)] = producer
        return unit

    def write_unwritten(self) -> bool:
        """Store ``unwritten`` in batches; False (a retry scheduled at ``retry_at``) if the store fails."""
        assert self.sink is not None
        while self.unwritten:
            batch = self.unwritten[: getattr(self.sink, "batch_units", BATCH_UNITS)]  # fan-out: one per writer
            try:
                # A permanent refusal is narrowed down to the units refused alone; they are set aside, and
                # the rest of the batch is stored: one poison trace holds nothing else up.
                refused = deadletter.bisect(self.sink, batch)
            except Exception as exc:
                uri = getattr(batch[0], "tracking_uri", "") or ""
                self.report.last_error = f"store: {_brief_text(describe(uri, exc))}"
                self.tally.add("retries")
                if self.report.state != "retrying":  # once per outage, not at every retry (~2 s apart at most)
                    logger.warning("spanline writer: store write failed (will retry): %s", self.report.last_error)
                self.report.state = "retrying"
                # Exponential backoff with jitter, capped: a store back after an outage of minutes is retried
                # within ``BACKOFF_CAP`` seconds, and many writers do not hammer it in step; a server that
                # said how long to wait (429 Retry-After) is waited for that long.
                wait = random.uniform(0.5, 1.0) * self.backoff
                asked = deadletter.retry_after(exc)
                self.retry_at = time.monotonic() + (max(wait, asked) if asked is not None else wait)
                self.backoff = min(self.backoff * 2, BACKOFF_CAP)
                return False
            if refused:
                self._set_aside(refused)
            if self.report.state == "retrying":
                retries = self.tally.totals["retries"]
                logger.warning("spanline writer: the store takes batches again (%d retries in all)", retries)
            self.report.state = "running"
            self.backoff = 0.1
            self.tally.add("batches")
            refused_ids = {id(u) for u, _ in refused}
            for unit in batch:
                if id(unit) in refused_ids:
                    continue
                producer = self.owner.pop(id(unit), None)
                spans = len(unit.spans)
                traces = sum(1 for s in unit.spans if s.is_trace_root)
                self.tally.add("spans_stored", spans)
                self.tally.add("traces_stored", traces)
                if producer is not None:
                    producer.counters["spans_stored"] += spans
                    producer.counters["traces_stored"] += traces
            del self.unwritten[: len(batch)]
        return True

    def _set_aside(self, refused: list[tuple[Unit, str]]) -> None:
        """Units the store refused for good: into the dead-letter file, counted for their producer (its
        flush() reports the loss) and in the status, logged once per distinct error."""
        # the producers' bound, or the default one once they are gone: never an unbounded file
        limit = self._log_limit() or Options.max_log_bytes
        try:
            if self.dir_fd >= 0:
                kept = deadletter.append(self.dir_fd, refused, limit)
            else:
                with safefs.opened_dir(self.directory) as dir_fd:
                    kept = deadletter.append(dir_fd, refused, limit)
            reason = DropReason.DEAD_LETTER
        except OSError as exc:  # a full disk: counted as lost, never retried forever
            self.report.file_failed("dead letters", exc)
            kept, reason = len(refused), DropReason.SINK_ERROR
        for index, (unit, error) in enumerate(refused):
            producer = self.owner.pop(id(unit), None)
            self.tally.add("dead_letters")
            lost = reason if index < kept else DropReason.LOG_FULL
            if producer is not None:
                self.tally.drop(producer, lost, unit.event_count)
            else:
                self.tally.dropped[lost] = self.tally.dropped.get(lost, 0) + unit.event_count
            if error not in self.dead_letter_errors and index < kept:  # (the rest: the warning below)
                logger.error("spanline writer: the store refused trace %s for good (set aside in %s; "
                             "`spanline replay-dead-letters` stores it once fixed): %s",
                             unit.trace_id, deadletter.FILE, error)
            self.dead_letter_errors[error] = self.dead_letter_errors.get(error, 0) + 1
            self.report.last_error = f"dead letter {unit.trace_id}: {error}"
        over = len(refused) - kept
        if over:
            self.report.last_error = (f"dead letters over max_log_bytes ({limit}): {over} trace(s) the store "
                                      f"refused were dropped, not set aside")
            if not self._dead_letters_full:  # once until the file has room again
                logger.warning("spanline writer: %s; `spanline replay-dead-letters` makes room", self.report.last_error)
        self._dead_letters_full = over > 0

    def commit(self) -> None:
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
            seg = self.current(producer) or producer.segments[-1]
            read_pos = (seg.seq, seg.offset)
            producer.done = read_pos
            checkpoint = min(producer.first_pos.values(), default=read_pos)
            self._checkpoint(producer, checkpoint)
            if producer.oldest_tick_ns:
                # Lag: from the append of the oldest record of this round to now, when it is stored.
                self.report.lags.append(max(0.0, (now_ns - producer.oldest_tick_ns) / 1e9))
                producer.oldest_tick_ns = 0
        self.uncommitted = set()
        for pid, producer in list(self.producers.items()):
            if producer.dead and not producer.first_pos and not any(
                not s.sealed and s.offset < size(s) for s in producer.segments
            ):
                self._finish(producer)
                del self.producers[pid]

    def _checkpoint(self, producer: Producer, pos: tuple[int, int]) -> None:
        seq, offset = pos
        for seg in list(producer.segments):
            if seg.seq < seq:
                self._delete(producer, seg)  # everything in it is stored
            elif seg.seq == seq:
                try:
                    eventlog.write_checkpoint(seg.path, offset, self.dfd())
                    self.report.file_ok("checkpoint")
                except FileNotFoundError:
                    pass
                except OSError as exc:
                    # A full disk (ENOSPC), EIO: the checkpoint is only a hint (a restart replays more, once,
                    # idempotent). Storing goes on; the next commit writes it again.
                    self.report.file_failed("checkpoint", exc)

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

    def _log_limit(self) -> int | None:
        """``max_log_bytes``: the writer's, else the largest a producer asked for."""
        if self.max_log_bytes is not None:
            return self.max_log_bytes
        limits = [p.header.get("max_log_bytes") for p in self.producers.values() if p.header.get("max_log_bytes")]
        return max(limits) if limits else None

    def enforce_bound(self) -> None:
        """Past ``max_log_bytes`` (the writer's, else the largest a producer asked for): drop the oldest
        segments, counted as lost for their producers."""
        limit = self._log_limit()
        if not limit:
            return
        segments = []
        for producer in self.producers.values():
            for seg in producer.segments:
                segments.append((os.path.basename(seg.path), producer, seg, size(seg)))
        total = sum(s[3] for s in segments)
        if total <= limit:
            return
        # Oldest first (names sort by producer start, then sequence); never a live producer's open segment.
        for _, producer, seg, seg_size in sorted(segments, key=lambda s: (mtime(s[2]), s[0])):
            if total <= limit:
                break
            if seg is producer.segments[-1] and not producer.dead:
                continue
            lost = count_events(seg)
            self.tally.drop(producer, DropReason.LOG_FULL, lost)
            self.report.last_error = f"log over max_log_bytes ({limit}): dropped {os.path.basename(seg.path)}"
            logger.warning("spanline writer: %s", self.report.last_error)
            self._delete(producer, seg)
            total -= seg_size
            # What was assembled from it is discarded with it; the producer continues at its next segment.
            producer.assembler = None
            producer.first_pos = {}
            self.unwritten = [u for u in self.unwritten if self.owner.get(id(u)) is not producer]
            nxt = self.current(producer)
            if nxt is not None:
                nxt.header = None
                self.open_header(producer, nxt)


def _brief_text(text: str) -> str:
    """A store's error as one bounded line for the status and the log."""
    return text if len(text) <= _ERROR_CHARS else f"{text[:_ERROR_CHARS]}… ({len(text) - _ERROR_CHARS} chars more)"
