"""Memory with a stalled store: the queue bound holds RSS flat, and every drop is counted in ``stats()``;
and ``flush(timeout)`` returns False when the store cannot keep its deadline.

These are correctness checks as much as benchmarks: ``.ci/run`` runs the quick ones with timing off,
``python -m pytest benchmarks/test_memory.py --benchmark-disable -k quick``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from _fake import CHAT_KWARGS


def _rss_mb() -> float:
    import os

    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


@pytest.fixture
def stalled_store(tracking_store: str) -> Iterator[threading.Event]:
    """spanline on a store whose first write blocks until the yielded event is set; afterwards what was
    queued is discarded (this measures memory, not the store) and the real store is put back."""
    import spanline
    from spanline import _runtime

    pipeline = _runtime.pipeline
    assert spanline.flush(timeout=300)
    spanline.shutdown(timeout=60)  # restart the worker on a store that blocks
    release = threading.Event()
    real_sink = pipeline.sink
    pipeline.set_sink(lambda units: release.wait(300))
    try:
        yield release
    finally:
        pipeline.set_sink(lambda units: None)
        release.set()
        spanline.shutdown(timeout=60)
        pipeline.set_sink(real_sink)
        spanline.configure(queue_size=100_000, on_full="drop")
        spanline.autolog(disable=True, silent=True, durability="page_cache")


def test_flush_returns_false_on_timeout_quick(clients: tuple[Any, Any], stalled_store: threading.Event) -> None:
    import spanline

    # In-process (durability="memory"): with the log, a stalled store never reaches the application.
    spanline.autolog(silent=True, durability="memory")
    clients[0].messages.create(**CHAT_KWARGS)
    assert spanline.flush(timeout=0.5) is False, "the store is stuck: flush must give up at its deadline"
    stalled_store.set()
    assert spanline.flush(timeout=120) is True, "once the store answers, the same event is stored"


@pytest.mark.parametrize(("calls", "queue"), [pytest.param(2_400, 400, id="quick"),
                                              pytest.param(6_000, 1_000, id="full")])
def test_stalled_store_bounded(benchmark: Any, clients: tuple[Any, Any], stalled_store: threading.Event,
                               calls: int, queue: int) -> None:
    import spanline

    benchmark.group = f"MEM {calls:,} calls, store stalled, queue_size {queue:,}"
    spanline.autolog(silent=True, queue_size=queue, on_full="drop", durability="memory")
    create = clients[0].messages.create
    create(**CHAT_KWARGS)
    # The store blocks from its first write: flush() gives up, and the worker stays stuck in that write.
    assert not spanline.flush(timeout=1.0)
    before = spanline.stats()
    rss: list[float] = []
    step = calls // 12

    def run() -> None:
        for i in range(calls):
            create(**CHAT_KWARGS)
            if i % step == step - 1:
                rss.append(_rss_mb())

    benchmark.pedantic(run, rounds=1, iterations=1)
    after = spanline.stats()
    dropped = after.dropped.get("queue_full", 0) - before.dropped.get("queue_full", 0)
    benchmark.extra_info.update(rss_mb=[round(x, 1) for x in rss], dropped_queue_full=dropped)
    # Every call is held (at most the queue) or counted as dropped: nothing vanishes.
    assert dropped >= calls - queue
    assert after.queue_depth <= queue + 1
    # Once the queue is full (a sixth of the run), RSS stays flat: the last half adds (almost) nothing.
    assert rss[-1] - rss[len(rss) // 2] < 5
