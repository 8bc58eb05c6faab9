"""The writer's tally: what it stored, retried, set aside and dropped, in all.

In: counts from the segment reading, the store step and the assemblers (their own drop and error
accounting). Out: the totals and drops of the status (``Writer.status``, the status file). Runs in the
writer process, on its one thread. A producer's own counts (answered to its flushes) live on its
``Producer``; ``drop`` counts both.
"""

from __future__ import annotations

from typing import Any

from ..stats import Counters


class Tally:
    """Every count of the writer in all, in one place."""

    def __init__(self) -> None:
        self.assembly = Counters()  # handed to every Assembler: its own drop and error accounting
        self.totals: dict[str, int] = {
            "traces_stored": 0, "spans_stored": 0, "batches": 0, "retries": 0, "corrupt_records": 0,
        }
        self.dropped: dict[str, int] = {}  # events lost, by reason (the assemblers' own in ``assembly``)

    def add(self, key: str, n: int = 1) -> None:
        self.totals[key] = self.totals.get(key, 0) + n

    def drop(self, producer: Any, reason: str, n: int) -> None:
        """Count ``n`` events of ``producer`` (a ``Producer``) lost for ``reason``: for it (answered to its
        flushes) and in all."""
        producer.drop(reason, n)
        if n:
            self.dropped[reason] = self.dropped.get(reason, 0) + n

    def dropped_totals(self) -> dict[str, int]:
        out: dict[str, int] = dict(self.assembly.dropped())
        for k, v in self.dropped.items():
            out[k] = out.get(k, 0) + v
        return out
