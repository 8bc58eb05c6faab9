"""The writer's status: its state, last error, lag, the errors of its own files, and the status file.

In: what the loop, the segment reading and the store step report (``state``, ``last_error``, lags, a file of
its own that could not be written), and the producers and tally at the time of a snapshot. Out: the status
dict (``spanline status``, a ``{"status": true}`` request), the status file ``<log dir>/status.json``
rewritten at most every ``STATUS_EVERY`` seconds, and the log lines of the writer process
(``OneLineFormatter``). Runs in the writer process, on its one thread.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import time
from typing import Any

from .. import logdir, safefs
from ..stats import store_path
from . import deadletter
from .segments import Producer, size
from .tally import Tally

logger = logging.getLogger("spanline.writer")

STATUS_EVERY = 0.5


class Report:
    """What the writer says about itself; the status file is rewritten from it."""

    def __init__(self) -> None:
        self.state = "starting"
        self.last_error: str | None = None
        self.file_errors: dict[str, str] = {}  # what of its own the writer cannot write now (a full disk)
        self.lags: collections.deque[float] = collections.deque(maxlen=2000)
        self.started = time.time()
        self.written_at = 0.0

    def snapshot(self, directory: str, tally: Tally, producers: dict[str, Producer], bad_segments: dict[str, str],
                 dead_letter_errors: dict[str, int], finished: dict[str, dict[str, Any]]) -> dict[str, Any]:
        lags = sorted(self.lags)
        by_producer = {}
        for pid, p in producers.items():
            by_producer[pid] = {
                "pid": p.header.get("pid"),
                "alive": not p.dead,
                "segments": len(p.segments),
                "bytes_pending": sum(max(0, size(s) - s.offset) for s in p.segments),
                "open_spans": p.assembler.open_spans if p.assembler else 0,
                **p.counters,
            }
        return {
            "pid": os.getpid(),
            "state": self.state,
            "started": self.started,
            "updated": time.time(),
            "directory": directory,
            **tally.totals,
            "dropped": tally.dropped_totals(),
            "bad_segments": bad_segments,
            "file_errors": dict(self.file_errors),
            "dead_letter_file": deadletter.FILE,
            "dead_letter_errors": dict(list(dead_letter_errors.items())[-20:]),
            "last_error": self.last_error,
            "lag_p50_s": lags[len(lags) // 2] if lags else None,
            "lag_p99_s": lags[min(len(lags) - 1, int(len(lags) * 0.99))] if lags else None,
            "producers": by_producer,
            "store": store_path(),
            "finished_producers": dict(list(finished.items())[-50:]),
        }

    def due(self, force: bool) -> bool:
        """Whether the status file is to be written now (every ``STATUS_EVERY`` seconds, or forced)."""
        now = time.monotonic()
        if not force and now - self.written_at < STATUS_EVERY:
            return False
        self.written_at = now
        return True

    def write_file(self, directory: str, dir_fd: int, status: dict[str, Any]) -> None:
        data = json.dumps(status).encode()
        try:
            if dir_fd >= 0:
                safefs.write_replace(dir_fd, logdir.STATUS, data)
            else:
                with safefs.opened_dir(directory) as opened:
                    safefs.write_replace(opened, logdir.STATUS, data)
            self.file_ok("status")
        except OSError as exc:
            # The status stays in memory and on the socket ({"status": true}); the file is written again
            # at the next interval.
            self.file_failed("status", exc)

    def file_failed(self, what: str, exc: OSError) -> None:
        """A file of the writer's own could not be written: reported (status, once in the log), not fatal."""
        message = f"{what}: {type(exc).__name__}: {exc.strerror or exc}"
        if self.file_errors.get(what) != message:
            logger.warning("spanline writer: cannot write the %s (%s); storing goes on", what, message)
        self.file_errors[what] = message
        self.last_error = message

    def file_ok(self, what: str) -> None:
        if self.file_errors.pop(what, None) is not None:
            logger.warning("spanline writer: the %s is written again", what)


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
