"""The producer's side of the event log: one open, locked segment at a time, appended to and rotated by size.

In: whole records (``eventlog.event_frame`` / ``tick_frame`` / ``policy_frame`` bytes), from the application's
worker thread only. Out: segment files in the log directory (``eventlog`` describes their format), and
``(segment file name, end offset)`` per append; a failed append raises ``PartialAppend`` saying how many of its
events were written whole.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from typing import Any

from .eventlog import SEAL, encode_header, frame, policy_frame, segment_name, whole_records

__all__ = ["Appender", "PartialAppend"]


class PartialAppend(OSError):
    """An append that failed (a full disk, EIO) after ``events_written`` of its events were written whole;
    the bytes of the record cut in the middle are cut off the file again, so the segment stays readable."""

    def __init__(self, cause: OSError, events_written: int) -> None:
        super().__init__(cause.errno, cause.strerror)
        self.events_written = events_written


class Appender:
    """The producer's side: one open segment at a time, rotated by size. Run by the worker thread only."""

    def __init__(
        self, directory: str, header: dict[str, Any], segment_bytes: int, fsync: bool, policy: dict[str, Any]
    ) -> None:
        self.directory = directory
        self.header = dict(header)
        self.producer_id = f"{time.time_ns():x}-{os.getpid()}"
        self.segment_bytes = segment_bytes
        self.fsync = fsync
        self.policy = policy
        self.seq = -1
        self.fd = -1
        self.path = ""
        self.offset = 0
        self.records = 0
        self.syncs = 0  # fdatasync calls made (``stats().log_syncs``): with fsync, one per append
        self._open_next()

    def _open_next(self) -> None:
        old_fd = self.fd
        seq = self.seq + 1
        path = os.path.join(self.directory, segment_name(self.producer_id, seq))
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_NOFOLLOW, 0o600)
        # Held for the producer's life: the writer reads a free lock on an unsealed segment as "it died".
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        head = encode_header({**self.header, "producer_id": self.producer_id, "seq": seq})
        first = head + (policy_frame(self.policy) if self.policy else b"")
        try:
            if os.write(fd, first) != len(first):
                raise OSError(28, "No space left on device (segment header cut short)")
        except OSError:
            # A full disk: no half-made segment left behind (locked by us, it would look like ours for good);
            # the current one stays open and the next append tries again.
            with contextlib.suppress(OSError):
                os.unlink(path)
            os.close(fd)
            raise
        self.seq, self.path = seq, path
        if old_fd >= 0:
            # Sealed only once its successor exists and is locked: the newest segment of a live producer is
            # always locked, so the writer never mistakes a rotation for a death.
            try:
                os.write(old_fd, frame(SEAL, json.dumps({"records": self.records}).encode()))
                if self.fsync:
                    os.fdatasync(old_fd)
                    self.syncs += 1
            except OSError:
                pass  # unsealed: the writer reads it as cut by a rotation once the next one exists
            os.close(old_fd)
        self.fd, self.offset, self.records = fd, len(first), 0

    def set_policy(self, policy: dict[str, Any]) -> bytes:
        """The record announcing ``policy``; also repeated at the top of every later segment."""
        self.policy = policy
        return policy_frame(policy)

    def append(self, data: bytes, records: int) -> tuple[str, int]:
        """Write ``data`` (whole records) at the end; returns ``(segment file name, end offset)``."""
        if self.offset + len(data) > self.segment_bytes and self.records:
            self.rotate()
        view = memoryview(data)
        written = 0
        try:
            while written < len(data):
                written += os.write(self.fd, view[written:])
        except OSError as exc:
            self._cut_after_failure(data, written, exc)
        self.offset += len(data)
        self.records += records
        if self.fsync:
            try:
                os.fdatasync(self.fd)  # on disk before the tick that appended it completes
            except OSError as exc:  # written (in the page cache) all the same: nothing counted lost
                raise PartialAppend(exc, records) from exc
            self.syncs += 1
        return os.path.basename(self.path), self.offset

    def _cut_after_failure(self, data: bytes, written: int, exc: OSError) -> None:
        """After a failed write: keep the whole records written, cut the partial one, raise ``PartialAppend``
        saying how many events made it (only the others are lost)."""
        keep, events = whole_records(data, written)
        if keep < written:
            try:
                os.ftruncate(self.fd, self.offset + keep)  # shrinking needs no space
            except OSError:
                keep, events = written, whole_records(data, written)[1]  # the reader skips the cut record
        self.offset += keep
        self.records += events
        raise PartialAppend(exc, events) from exc

    def rotate(self) -> None:
        self._open_next()

    def close(self) -> None:
        """Close without sealing: the segment stays 'live' until the writer sees the lock freed."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def abandon_after_fork(self) -> None:
        # A forked child shares the parent's open file (and its lock); it must not write to it or keep
        # the parent looking alive, so it only drops its descriptor.
        self.close()
