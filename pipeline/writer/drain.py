"""The writer's end on SIGTERM / SIGINT: drain within a grace period, as Kubernetes' sidecars are stopped.

In: the signals, and ``Writer``'s loop asking ``should_exit`` after each round. Out: the writer's exit once
every producer is gone and everything complete is stored (their open spans closed as unfinished, by the
writer's own "producer gone" path), exit code 0; at the deadline, or on a second signal, an exit with the
rest left in the log and said in the last status (exit code 3). Runs in the writer process: the signal
handler and ``should_exit`` on its one thread (``Writer.run``).

Kubernetes stops a pod's containers with SIGTERM and kills them ``terminationGracePeriodSeconds`` (30 s by
default) later; a native sidecar (an init container with ``restartPolicy: Always``) is stopped after the app.
A writer that exited at once on SIGTERM left what it had not stored on a volume deleted with the pod.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from typing import Any

logger = logging.getLogger("spanline.writer")

DEFAULT_GRACE = 25.0  # under Kubernetes' default 30 s grace period
LEFT_ON_DISK = 3  # exit code when the drain ended with records left in the log


def grace_from_env() -> float:
    text = os.environ.get("SPANLINE_WRITER_GRACE", "")
    try:
        return float(text) if text.strip() else DEFAULT_GRACE
    except ValueError:
        raise SystemExit(f"SPANLINE_WRITER_GRACE must be a number of seconds, got {text!r}") from None


class Drain:
    """Installed in the writer process; the loop reads ``requested`` and asks ``should_exit``."""

    def __init__(self, grace: float) -> None:
        self.grace = grace
        self.requested = False
        self.deadline = 0.0
        self.left = False  # the drain ended with records still in the log

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self.requested:
            # A second signal: leave now, through the loop's cleanup (its last status counts what is left).
            self.left = True
            raise SystemExit(LEFT_ON_DISK)
        self.requested = True
        self.deadline = time.monotonic() + self.grace
        logger.info("spanline writer: %s: draining (at most %.0f s): storing what producers appended until "
                    "every one is gone", signal.Signals(signum).name, self.grace)

    def should_exit(self, writer: Any, progressed: bool) -> bool:
        """Once draining: whether the writer is done (nothing left) or out of time."""
        if any(not p.dead for p in writer.producers.values()):
            done = False
        else:
            done = not progressed and not writer.unwritten and not any(p.segments for p in writer.producers.values())
        if done:
            logger.info("spanline writer: drained: every producer is gone and its traces stored")
            return True
        if time.monotonic() >= self.deadline:
            self.left = True
            pending = sum(len(p.segments) for p in writer.producers.values())
            writer.report.last_error = (f"drain: grace period ({self.grace:.0f} s) over with {pending} segment(s) of "
                                 f"{len(writer.producers)} producer(s) left in the log")
            logger.warning("spanline writer: %s", writer.report.last_error)
            return True
        return False

    def exit_code(self, code: int) -> int:
        return LEFT_ON_DISK if self.left else code
