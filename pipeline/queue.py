"""The bounded, lock-free hand-off between the caller's path and the worker.

In: encoded events (``bytes``, or deferred ones: ``events.encode_deferred``) from any thread, via ``emit``; flush
markers from ``flush()``.
Out: items popped by the single worker thread, in order.

``collections.deque.append`` and ``popleft`` are atomic under the GIL, so neither side takes a lock.
The bound is checked before appending: a full queue drops the *newest* event and counts it (or, with
``on_full="block"``, waits for room), so memory never grows without bound and no drop is silent. Every
256 queued events, and on each append above half full, the caller first yields the GIL (``sleep(0)``), so
a worker starved by a CPU-bound caller catches up before anything is dropped; otherwise the append is a
length check and ``deque.append``.
Several threads racing past the check can overshoot the bound by at most one event each.
"""

from __future__ import annotations

import threading
import time
from collections import deque

from .stats import Counters

# How long on_full="block" waits for room before dropping the event. A module constant, read at each
# wait, so a test can shorten it.
BLOCK_TIMEOUT = 30.0


class EventQueue:
    def __init__(self, counters: Counters, capacity: int, batch_size: int, block: bool) -> None:
        self.items: deque[object] = deque()
        self.wake = threading.Event()
        self.counters = counters
        self.configure(capacity, batch_size, block)

    def configure(self, capacity: int, batch_size: int, block: bool) -> None:
        self.capacity = max(1, capacity)
        self.high_water = max(1, self.capacity // 2)
        self.batch_size = max(1, min(batch_size, self.capacity))
        self.block = block

    def emit(self, event: bytes | tuple) -> None:
        """Append one encoded event. The caller's path: no lock, no I/O, no syscall in the common case."""
        items = self.items
        n = len(items)
        if n >= self.high_water or n & 255 == 255:
            if n >= self.capacity and not (self.block and self._wait_for_room()):
                next(self.counters.queue_full)
                return
            # Events are piling up. A CPU-bound caller can starve the worker of the GIL: an SDK call
            # releases it about once, too briefly for a waiting thread to win it. So every 256 queued
            # events, and on every append above half full, hand the GIL over.
            time.sleep(0)
        items.append(event)
        if n + 1 == self.high_water:
            # The worker ticks every flush interval; the caller wakes it early only when half full.
            self.wake.set()

    def _wait_for_room(self) -> bool:
        # on_full="block": the user chose back-pressure over drops. Poll rather than lock, and give up
        # (counting a drop) if the worker makes no room for BLOCK_TIMEOUT seconds, e.g. a dead store.
        deadline = time.monotonic() + BLOCK_TIMEOUT
        self.wake.set()
        while len(self.items) >= self.capacity:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.0005)
        return True

    def put_marker(self, marker: object) -> None:
        """Append a non-event item (a flush marker); never dropped, never counted against the bound."""
        self.items.append(marker)
        self.wake.set()

    def __len__(self) -> int:
        return len(self.items)
