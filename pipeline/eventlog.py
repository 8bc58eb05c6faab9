"""The event log's format on disk, and reading it: segment files of checksummed records, one producer per file.

In: segment files (or their bytes) in a log directory. Out: headers (``read_header``), ``(offset, kind, payload)``
records (``read_records``, ``parse``, ``scan``), the frames a producer appends (``frame``, ``event_frame``, ...),
and checkpoints (``read_checkpoint`` / ``write_checkpoint``). Read by the writer process, ``spanline status`` and
the exit wait; the frames are built on the application's worker thread, which appends them (``appender``).

A segment is ``<producer>.<seq>.seg`` in the log directory, where ``<producer>`` is ``<start time>-<pid>``
(so names sort by age). It opens with a header, then records::

    header:  MAGIC(8) | version u16 | length u32 | crc32 u32 | JSON object (pid, start_ns, producer, ...)
    record:  length u32 | crc32(kind + payload) u32 | kind u8 | payload

Kinds: ``E`` an event (msgpack bytes, opaque here), ``P`` the content policy in force from here on (JSON),
``T`` the wall time of an append (8 bytes, for the writer's lag), ``Z`` the seal at rotation (the segment is
complete). The producer holds an exclusive ``flock`` on its open segment for as long as it lives, so a free
lock on an unsealed segment means its producer died. Files are 0600 in a 0700 directory: they hold prompts.

A reader stops at an incomplete record at the end (the producer is mid-append, or died mid-append: a torn
tail), skips a record whose checksum does not match (counted), and refuses a segment of a newer format
version with ``NewerFormatError``, leaving the file in place.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import struct
import time
import zlib
from dataclasses import dataclass, field
from typing import Any

from . import safefs

FORMAT_VERSION = 1
MAGIC = b"SPNLOG\r\n"
_HEADER = struct.Struct("<8sHII")
_RECORD = struct.Struct("<IIB")
MAX_RECORD = 256 * 1024 * 1024  # larger lengths can only be corruption
_MAX_HEADER = 1024 * 1024  # a header is a few hundred bytes of JSON

EVENT, POLICY, TICK, SEAL = b"E"[0], b"P"[0], b"T"[0], b"Z"[0]
_KINDS = (EVENT, POLICY, TICK, SEAL)
_KIND_CRC = {k: zlib.crc32(bytes([k])) for k in _KINDS}
SUFFIX = ".seg"
CHECKPOINT_SUFFIX = ".ckpt"


class NewerFormatError(Exception):
    """A segment written by a newer spanline: left in place for a writer that understands it."""


class BadSegmentError(Exception):
    """A file that is not a segment (bad magic or a corrupt header)."""


def whole_records(data: bytes | memoryview, upto: int) -> tuple[int, int]:
    """(bytes, events) of the whole records at the start of ``data`` that end at or before ``upto``."""
    pos = events = 0
    while pos + _RECORD.size <= upto:
        length, _, kind = _RECORD.unpack_from(data, pos)
        end = pos + _RECORD.size + length
        if end > upto:
            break
        events += kind == EVENT
        pos = end
    return pos, events


def frame(kind: int, payload: bytes) -> bytes:
    """One record: length, checksum, kind, payload."""
    return _RECORD.pack(len(payload), zlib.crc32(payload, _KIND_CRC[kind]), kind) + payload


def event_frame(payload: bytes, _pack=_RECORD.pack, _crc=zlib.crc32, _seed=_KIND_CRC[EVENT]) -> bytes:
    """``frame(EVENT, payload)``, without the dict look-up: run once per event on the worker."""
    return _pack(len(payload), _crc(payload, _seed), EVENT) + payload


def tick_frame() -> bytes:
    return frame(TICK, struct.pack("<q", time.time_ns()))


def policy_frame(policy: dict[str, Any]) -> bytes:
    return frame(POLICY, json.dumps(policy, sort_keys=True).encode())


def segment_name(producer_id: str, seq: int) -> str:
    return f"{producer_id}.{seq:06d}{SUFFIX}"


# Exactly what ``segment_name`` writes (``<start ns hex>-<pid>.<seq>.seg``): any other name in the directory
# (a file name with a newline, a look-alike) is never opened, and so never logged either.
_NAME = re.compile(r"([0-9a-f]{1,32}-[0-9]{1,10})\.([0-9]{6,12})\.seg")


def parse_name(name: str) -> tuple[str, int] | None:
    """``(producer_id, seq)`` of a segment file name, or None for any other file."""
    match = _NAME.fullmatch(name)
    if match is None:
        return None
    return match.group(1), int(match.group(2))


def ensure_dir(path: str) -> None:
    """Create the log directory, private to this user (0700); raise if it cannot be written, or if another
    user owns it or could write to it (``safefs.UnsafeDirectoryError``, a ``PermissionError``)."""
    safefs.make_private_dirs(path)
    if not os.access(path, os.W_OK | os.X_OK):
        raise PermissionError(f"log directory {path} is not writable")


@dataclass
class Header:
    version: int
    fields: dict[str, Any]
    size: int  # bytes before the first record

    @property
    def producer_id(self) -> str:
        return self.fields["producer_id"]


def encode_header(fields: dict[str, Any]) -> bytes:
    body = json.dumps(fields, sort_keys=True).encode()
    return _HEADER.pack(MAGIC, FORMAT_VERSION, len(body), zlib.crc32(body)) + body


def read_header(fd: int) -> Header | None:
    """The header of an open segment; None while it is still being written (a just-created file)."""
    head = os.pread(fd, _HEADER.size, 0)
    if len(head) < _HEADER.size:
        return None
    magic, version, length, crc = _HEADER.unpack(head)
    if magic != MAGIC:
        raise BadSegmentError("not a spanline segment (bad magic)")
    if version > FORMAT_VERSION:
        raise NewerFormatError(
            f"segment format version {version} is newer than this spanline's ({FORMAT_VERSION}): "
            "upgrade spanline to store it; the file is left in place"
        )
    if length > _MAX_HEADER:
        raise BadSegmentError(f"segment header claims {length} bytes")
    body = os.pread(fd, length, _HEADER.size)
    if len(body) < length:
        return None
    if zlib.crc32(body) != crc:
        raise BadSegmentError("segment header checksum mismatch")
    try:
        fields = json.loads(body)
    except ValueError:
        raise BadSegmentError("segment header is not JSON") from None
    if not isinstance(fields, dict):
        raise BadSegmentError("segment header is not a JSON object")
    return Header(version, _typed_header(fields), _HEADER.size + length)


_HEADER_TYPES: dict[str, type | tuple[type, ...]] = {
    "pid": int, "start_ns": int, "host": str, "producer": dict, "tracking_uri": str, "cwd": str,
    "experiment": str, "max_log_bytes": int, "producer_id": str, "seq": int,
}


def _typed_header(fields: dict[str, Any]) -> dict[str, Any]:
    """The header's known fields of the types a producer writes (others dropped): a header that passes its
    checksum but was made by someone else cannot make the writer fail on a field's type."""
    out = {}
    for key, value in fields.items():
        kind = _HEADER_TYPES.get(key)
        if kind is not None and isinstance(value, kind) and not isinstance(value, bool):
            if key == "producer":
                value = {str(k): v for k, v in value.items() if isinstance(v, str)}
            out[key] = value
    return out


@dataclass
class ReadResult:
    records: list[tuple[int, int, bytes]] = field(default_factory=list)  # (offset, kind, payload)
    end: int = 0  # offset just past the last whole record read
    corrupt: int = 0  # records skipped for a checksum mismatch (or unreadable framing)
    partial: bool = False  # an incomplete record follows ``end`` (mid-append, or a torn tail)


def _valid_at(buf: memoryview, pos: int) -> int:
    """Length of a whole, valid record at ``pos`` in ``buf``, or -1 (invalid) or 0 (incomplete)."""
    if pos + _RECORD.size > len(buf):
        return 0
    length, crc, kind = _RECORD.unpack_from(buf, pos)
    if kind not in _KIND_CRC or length > MAX_RECORD:
        return -1
    end = pos + _RECORD.size + length
    if end > len(buf):
        return 0
    if zlib.crc32(buf[pos + _RECORD.size : end], _KIND_CRC[kind]) != crc:
        return -1
    return end - pos


_CANDIDATE = re.compile(rb"(?s)(?=.{8}[EPTZ])")  # where a record could start: its kind byte is 9th


def _next_valid(view: memoryview, buf: bytes, start: int) -> int:
    """The first offset >= ``start`` where a whole, valid record starts, or -1."""
    for match in _CANDIDATE.finditer(buf, start):
        if _valid_at(view, match.start()) > 0:
            return match.start()
    return -1


def parse(buf: bytes, base: int) -> ReadResult:
    """Every whole record in ``buf`` (which starts at file offset ``base``).

    An incomplete record is the end of what can be read now (an append in progress, or a torn tail) unless
    a valid record follows it: then it was damage (say, a flipped length byte), skipped and counted like a
    checksum mismatch, and reading resumes at that next valid record.
    """
    view = memoryview(buf)
    out = ReadResult(end=base)
    pos = 0
    size = len(buf)
    while pos < size:
        n = _valid_at(view, pos)
        if n > 0:
            kind = view[pos + 8]
            out.records.append((base + pos, kind, bytes(view[pos + _RECORD.size : pos + n])))
            pos += n
            out.end = base + pos
            continue
        nxt = _next_valid(view, buf, pos + 1)
        if nxt < 0:
            if n == 0:
                out.partial = True
                break
            nxt = size  # garbage to the end: skipped
        out.corrupt += 1
        pos = nxt
        out.end = base + pos
    return out


def read_records(fd: int, offset: int, limit: int = 32 * 1024 * 1024) -> ReadResult:
    """Whole records from ``offset`` on (at most about ``limit`` bytes of them)."""
    buf = os.pread(fd, limit, offset)
    result = parse(buf, offset)
    if not result.records and result.partial and len(buf) == limit:
        # One record larger than ``limit``: read exactly it.
        length = _RECORD.unpack_from(buf, 0)[0]
        return parse(os.pread(fd, _RECORD.size + length, offset), offset)
    return result


def scan(path: str) -> tuple[Header, ReadResult]:
    """Header and every record of a whole segment file (tests, ``spanline status``, drop accounting)."""
    with safefs.opened_dir(os.path.dirname(path) or ".") as dir_fd:
        fd = safefs.open_in(dir_fd, os.path.basename(path), os.O_RDONLY)
    try:
        header = read_header(fd)
        if header is None:
            raise BadSegmentError("segment header incomplete")
        size = os.fstat(fd).st_size
        return header, parse(os.pread(fd, size - header.size, header.size), header.size)
    finally:
        os.close(fd)


def _checkpoint_text(offset: int) -> bytes:
    return f"{offset} {zlib.crc32(str(offset).encode()):08x}".encode()


def parse_checkpoint(data: bytes | None) -> int | None:
    """The offset a checkpoint file holds: ``<offset> <crc32 of it>`` (or a bare offset, written before
    the checksum existed); None if it is absent or damaged. Only a hint: see ``valid_checkpoint``."""
    if not data:
        return None
    try:
        parts = data.decode("ascii").split()
        if not 1 <= len(parts) <= 2 or not parts[0].isdigit() or len(parts[0]) > 20:
            return None
        if len(parts) == 2 and int(parts[1], 16) != zlib.crc32(parts[0].encode()):
            return None
        return int(parts[0])
    except (UnicodeDecodeError, ValueError):
        return None


def valid_checkpoint(fd: int, header: Header, offset: int) -> bool:
    """Whether ``offset`` can be where reading resumes in the open segment ``fd``: within the file, past its
    header, and either its end or the start of a whole, valid record. A checkpoint that fails this is
    damage (or a file of someone's making), and reading starts over from the header: at-least-once."""
    size = os.fstat(fd).st_size
    if not header.size <= offset <= size:
        return False
    if offset == size or offset == header.size:
        return True
    head = os.pread(fd, _RECORD.size, offset)
    if len(head) < _RECORD.size:
        return False
    length = _RECORD.unpack(head)[0]
    if length > MAX_RECORD or offset + _RECORD.size + length > size:
        return False
    return _valid_at(memoryview(os.pread(fd, _RECORD.size + length, offset)), 0) > 0


def read_checkpoint(segment_path: str, dir_fd: int | None = None) -> int | None:
    name = os.path.basename(segment_path) + CHECKPOINT_SUFFIX
    if dir_fd is None:
        try:
            with safefs.opened_dir(os.path.dirname(segment_path) or ".") as fd:
                return parse_checkpoint(safefs.read_small(fd, name, 64))
        except OSError:
            return None
    return parse_checkpoint(safefs.read_small(dir_fd, name, 64))


def write_checkpoint(segment_path: str, offset: int, dir_fd: int | None = None) -> None:
    """Record that everything before ``offset`` in this segment is stored (atomic replace, no link followed)."""
    name = os.path.basename(segment_path) + CHECKPOINT_SUFFIX
    if dir_fd is None:
        with safefs.opened_dir(os.path.dirname(segment_path) or ".") as fd:
            safefs.write_replace(fd, name, _checkpoint_text(offset))
        return
    safefs.write_replace(dir_fd, name, _checkpoint_text(offset))


def remove_segment(path: str) -> None:
    for p in (path, path + CHECKPOINT_SUFFIX):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(p)


def total_bytes(directory: str) -> tuple[int, int]:
    """(segment count, bytes) in a log directory."""
    count = size = 0
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return 0, 0
    for entry in entries:
        if parse_name(entry.name) is not None:
            try:
                size += entry.stat(follow_symlinks=False).st_size
                count += 1
            except FileNotFoundError:
                pass
    return count, size
