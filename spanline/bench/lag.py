"""Lag at a steady load: how long after a call returns its trace is in the store, at a rate the writer sustains.

In: a call to make (traced), a rate, a duration, and a function counting the traces in the store; run in the
job's process (the bench) or a benchmark's. Out: one lag in seconds per call.

The calls are paced at ``rate`` (call ``i`` is due at ``start + i / rate``; a late one goes at once) for
``seconds``, while a thread counts the store's traces every ``poll`` seconds. Traces reach the store in the
order of their calls (one producer appends them to its log in order, the writer stores the log in order), so
the n-th trace counted is the n-th call's, and its lag is when the count first covered it minus when its
call returned: the polling adds up to ``poll`` to each figure. After the load, ``flush`` and the count
catching up to every call end the measurement. This is the method of
``benchmarks/test_eventlog.py::test_lag_at_half_the_ceiling``, which uses this function.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

POLL_S = 0.02


def steady_lag(
    call: Callable[[int], object],
    rate: float,
    seconds: float,
    count: Callable[[], int],
    flush: Callable[[], object],
    poll: float = POLL_S,
    settle_timeout: float = 60.0,
) -> tuple[list[float], int]:
    """(lags in seconds in call order, calls made) of ``rate`` calls per second for ``seconds``; see the
    module docstring. Calls whose trace was not counted within ``settle_timeout`` after the load have no
    lag (fewer lags than calls says so)."""
    base = count()
    ended: list[float] = []
    visible: list[float] = []
    stop = threading.Event()

    def poller() -> None:
        while not stop.is_set():
            n = count() - base
            now = time.monotonic()
            while len(visible) < n:
                visible.append(now)
            time.sleep(poll)

    thread = threading.Thread(target=poller, name="bench-lag-poller", daemon=True)
    thread.start()
    try:
        start = time.monotonic()
        i = 0
        while time.monotonic() - start < seconds:
            due = start + i / rate
            wait = due - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            call(i)
            ended.append(time.monotonic())
            i += 1
        flush()
        deadline = time.monotonic() + settle_timeout
        while len(visible) < len(ended) and time.monotonic() < deadline:
            time.sleep(poll)
    finally:
        stop.set()
        thread.join()
    return [v - e for v, e in zip(visible, ended, strict=False)], len(ended)
