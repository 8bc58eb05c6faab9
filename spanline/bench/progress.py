"""The progress line on stderr while the bench runs."""

from __future__ import annotations

import sys
import time


class Progress:
    """A one-line progress bar on stderr (a line per step when stderr is not a terminal)."""

    def __init__(self, total: int, enabled: bool = True) -> None:
        self.total = max(1, total)
        self.done = 0
        self.t0 = time.monotonic()
        self.enabled = enabled
        self.tty = sys.stderr.isatty()

    def step(self, label: str) -> None:
        if not self.enabled:
            return
        width = 28
        filled = int(width * self.done / self.total)
        elapsed = time.monotonic() - self.t0
        bar = "#" * filled + "-" * (width - filled)
        text = f"[{bar}] {self.done}/{self.total} {elapsed:5.0f}s  {label}"
        if self.tty:
            sys.stderr.write("\r\033[K" + text)
        else:
            sys.stderr.write(text + "\n")
        sys.stderr.flush()

    def advance(self) -> None:
        self.done += 1

    def finish(self) -> None:
        if self.enabled:
            self.step("done")
            sys.stderr.write("\n")
            sys.stderr.flush()
