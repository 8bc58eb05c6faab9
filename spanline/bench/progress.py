"""The progress bar on stderr while the bench runs: tqdm's when it is installed (``pip install spanline[bench]``),
else one plain line per job, so a log file or a terminal without tqdm still shows where the run is."""

from __future__ import annotations

import sys
import time
from typing import Any


class Progress:
    """``step(label)`` names the job about to run, ``advance()`` counts it done, ``finish()`` ends the bar."""

    def __init__(self, total: int, enabled: bool = True) -> None:
        self.total = max(1, total)
        self.done = 0
        self.enabled = enabled
        self.t0 = time.monotonic()
        self._bar: Any = None
        if enabled:
            try:
                from tqdm import tqdm
            except ImportError:
                pass
            else:
                self._bar = tqdm(total=self.total, unit="job", file=sys.stderr, dynamic_ncols=True, leave=True)

    def step(self, label: str) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.set_description_str(label, refresh=True)
            return
        elapsed = time.monotonic() - self.t0
        sys.stderr.write(f"[{self.done + 1}/{self.total} {elapsed:5.0f}s] {label}\n")
        sys.stderr.flush()

    def advance(self) -> None:
        self.done += 1
        if self._bar is not None:
            self._bar.update(1)

    def finish(self) -> None:
        if self._bar is not None:
            self._bar.set_description_str("done")
            self._bar.close()
        elif self.enabled:
            sys.stderr.write(f"[{self.done}/{self.total} {time.monotonic() - self.t0:5.0f}s] done\n")
            sys.stderr.flush()
