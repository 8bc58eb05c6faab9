"""Units the store refuses for good: told apart from passing failures, set aside, replayed on demand.

In: a store failure (an exception, or the text a store writer in another thread or process reported), and
the units of a batch that failed. Out: whether to retry (``transient``) or to set the unit aside; the
dead-letter file ``dead-letters.jsonl`` in the log directory (one JSON line per unit: when, why, the unit),
private like the log; ``replay`` to store them again once the cause is fixed (``spanline replay-dead-letters``).
Runs in the writer process's loop thread (store.py), and in the ``spanline`` command (``count``, ``replay``).

A trace the store refuses forever (an experiment that does not exist in that store, a schema it does not
take) must not hold every other trace of the directory behind it (issue 25). Anything not known to be
permanent is transient and retried forever: a wrong guess that way only delays, the other way loses.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import os
import re
import time
from collections.abc import Callable, Sequence
from typing import Any

import msgspec

from .. import safefs
from ..assembler import Unit

FILE = "dead-letters.jsonl"
_REPLAYING = "dead-letters.replaying"

# Failures that pass: the network, a server that is down or busy, a database locked by another writer.
_TRANSIENT = re.compile(
    r"(?i)connection|timed? ?out|timeout|temporar|unavailable|database is locked|database is busy|"
    r"too many requests|max retries|broken pipe|reset by peer|refused|server version|"
    r"\b(?:429|500|502|503|504)\b|disk i/o error|no space left|could not connect|eof occurred|"
    r"remote end closed|partialwrite|disk is full|disk full"
)
# Failures that will fail the same way each time for the same unit.
_PERMANENT = re.compile(
    r"(?i)no experiment with id|resource_does_not_exist|invalid_parameter_value|bad_request|"
    r"permission_denied|unauthenticated|does not exist|not found|integrityerror|no such table|no such column|"
    r"schema|invalid|validation|unprocessable|\b(?:400|401|403|404|409|413|422)\b|malformed|"
    r"deleted experiment|lifecycle_stage|must be|cannot be|unsupported|already exists in another experiment"
)
_RETRY_AFTER = re.compile(r"(?i)retry[- ]after[\"':= ]+(\d+(?:\.\d+)?)")
# A fault in the code that prepares a unit (spanline's, or MLflow's translation of its spans): the same unit
# fails the same way at every retry. ``OSError`` (a ``ConnectionError``, a disk) is no such fault.
_PROGRAM_ERRORS = (TypeError, KeyError, IndexError, AttributeError, ValueError, RecursionError, AssertionError,
                   ArithmeticError, NameError)
_PROGRAM_ERROR_TEXT = re.compile(  # the same, as a store writer in another process reports it ("Type: message")
    r"^(?:TypeError|KeyError|IndexError|AttributeError|ValueError|Unicode(?:En|De)codeError|RecursionError|"
    r"AssertionError|ZeroDivisionError|OverflowError|NameError|UnboundLocalError):"
)
# The database driver's own error class, as SQLAlchemy names it at the head of its message:
# "(psycopg.DataError) ...", "(psycopg.errors.StringDataRightTruncation) ...", "(pymysql.err.DataError) ...".
_DRIVER_ERROR = re.compile(r"\((?:psycopg2?|pymysql|MySQLdb|sqlite3|pg8000)(?:\.\w+)*\.(\w+)\)")


def classify(error: BaseException | str) -> str:
    """``"transient"`` or ``"permanent"``. An exception is judged by its type and text, the text of a store
    writer elsewhere (``"Type: message"``) by the same rules; when both kinds of words appear (a 404 page
    behind a proxy that times out), the transient one wins: retried, never set aside by mistake.

    Except for the database refusing the data itself (the driver's ``DataError``: a NUL in a text column on
    PostgreSQL, a value too long for its column): that is the unit's for good, whatever else the message
    says, and SQLAlchemy's message echoes the statement's parameters, the unit's own text, where any word
    may appear. Such a unit was retried for ever, and every later trace of the directory waited behind it.
    So was a unit that makes the code preparing it fail (a ``KeyError``, a ``TypeError``): a fault that
    repeats for that unit; unless the message also reads as transient, it is set aside, and replayed once
    the code is fixed."""
    if isinstance(error, BaseException):
        if isinstance(error, (ConnectionError, TimeoutError)):
            return "transient"
        parts = getattr(error, "errors", None)  # fanout.PartialWrite: one message per failed part
        if parts:
            return "permanent" if all(classify(p) == "permanent" for p in parts) else "transient"
        code = getattr(error, "error_code", "") or ""
        text = f"{type(error).__name__}: {code} {error}"
        program_error = isinstance(error, _PROGRAM_ERRORS)
    else:
        text = error
        program_error = _PROGRAM_ERROR_TEXT.match(text) is not None
    text = text[:4000]
    if _is_data_error(text):
        return "permanent"
    if _TRANSIENT.search(text):
        return "transient"
    return "permanent" if program_error or _PERMANENT.search(text) else "transient"


def _is_data_error(text: str) -> bool:
    match = _DRIVER_ERROR.search(text[:1000])  # the head of the message: the statement and parameters follow
    return match is not None and (match.group(1) == "DataError" or _names_data_error(match.group(1)))


@functools.lru_cache(maxsize=64)  # bounded: the name comes from a message, which may quote user text
def _names_data_error(name: str) -> bool:
    """Whether ``name`` is a subclass of ``DataError`` that the driver names by its SQLSTATE
    ("StringDataRightTruncation"): psycopg (3, or 2) knows its classes, and both use the same names. Asked
    once per name: a driver that is not installed is not imported again at every failing write."""
    for driver in ("psycopg", "psycopg2"):
        try:
            module = importlib.import_module(driver)
        except ImportError:
            continue
        found = getattr(module.errors, name, None)
        if isinstance(found, type) and issubclass(found, module.DataError):
            return True
    return False


def retry_after(error: BaseException | str) -> float | None:
    """Seconds a server asked to wait (a 429's ``Retry-After``), when the failure says so."""
    response = getattr(error, "response", None)
    headers = getattr(response, "headers", None)
    if headers is not None:
        with contextlib.suppress(TypeError, ValueError):
            value = headers.get("Retry-After")
            if value is not None:
                return min(float(value), 300.0)
    match = _RETRY_AFTER.search(str(error))
    return min(float(match.group(1)), 300.0) if match else None


def bisect(write: Callable[[list[Unit]], None], batch: list[Unit]) -> list[tuple[Unit, str]]:
    """Write ``batch``; a permanent failure is narrowed down by halves to the units that fail alone, which
    are returned with their error (everything else is stored). A transient failure is raised: the caller
    retries, and the halves stored meanwhile are stored again then, once (``log_spans`` is idempotent)."""
    try:
        write(batch)
        return []
    except Exception as exc:
        if classify(exc) == "transient":
            raise
        if len(batch) == 1:
            return [(batch[0], _brief(exc))]
    mid = len(batch) // 2
    return bisect(write, batch[:mid]) + bisect(write, batch[mid:])


def _brief(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= 1000 else text[:1000] + "…"


class _Letter(msgspec.Struct):
    time: float
    error: str
    unit: Unit


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(_Letter)


def append(dir_fd: int, letters: Sequence[tuple[Unit, str]], limit: int | None = None) -> int:
    """Set ``letters`` aside in the directory's dead-letter file (appended, never through a link), in order,
    while the file stays within ``limit`` bytes. Returns how many were set aside.

    The bound is the log's own (``max_log_bytes``): a store that refuses every trace (its experiment deleted,
    an MLflow it cannot take) would otherwise grow the file at the service's trace rate until the pod's disk
    is full. The first letters are kept, as the first failures say most about the cause."""
    lines = [_encoder.encode(_Letter(time.time(), error, unit)) + b"\n" for unit, error in letters]
    fd = safefs.open_in(dir_fd, FILE, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        if limit is not None:
            room, kept = limit - os.fstat(fd).st_size, 0
            while kept < len(lines) and len(lines[kept]) <= room:
                room -= len(lines[kept])
                kept += 1
            lines = lines[:kept]
        if lines:
            safefs.write_all(fd, b"".join(lines))
    finally:
        os.close(fd)
    return len(lines)


def count(directory: str) -> tuple[int, str | None]:
    """(units set aside, the last one's error) in a log directory's dead-letter file."""
    try:
        with safefs.opened_dir(directory) as dir_fd:
            lines = _read(dir_fd, FILE)
    except OSError:
        return 0, None
    last = None
    if lines:
        with contextlib.suppress(msgspec.DecodeError, msgspec.ValidationError):
            last = _decoder.decode(lines[-1]).error
    return len(lines), last


def _read(dir_fd: int, name: str) -> list[bytes]:
    try:
        fd = safefs.open_in(dir_fd, name, os.O_RDONLY)
    except FileNotFoundError:
        return []
    try:
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
    finally:
        os.close(fd)
    return [line for line in b"".join(chunks).splitlines() if line.strip()]


def replay(directory: str, write: Callable[[list[Unit]], None]) -> dict[str, Any]:
    """Store the dead letters again, one unit at a time; those refused again go back to the file (with the
    new error). The file is moved aside first, so a writer setting new letters aside meanwhile loses none."""
    with safefs.opened_dir(directory) as dir_fd:
        with contextlib.suppress(FileNotFoundError):
            os.rename(FILE, _REPLAYING, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        lines = _read(dir_fd, _REPLAYING)
        stored, again, unreadable = 0, [], 0
        for line in lines:
            try:
                letter = _decoder.decode(line)
            except (msgspec.DecodeError, msgspec.ValidationError):
                unreadable += 1
                continue
            try:
                write([letter.unit])
                stored += 1
            except Exception as exc:
                again.append((letter.unit, _brief(exc)))
        if again:
            append(dir_fd, again)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(_REPLAYING, dir_fd=dir_fd)
    return {"stored": stored, "refused": len(again), "unreadable": unreadable}
