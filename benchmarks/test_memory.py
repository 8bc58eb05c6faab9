"""Memory with a stalled store: the queue bound holds RSS flat, and every drop is counted in ``stats()``."""

from __future__ import annotations

import threading
from typing import Any

from _fake import CHAT_KWARGS

CALLS = 6_000
QUEUE = 1_000


def _rss_mb() -> float:
    import os

    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def test_stalled_store_bounded(benchmark: Any, clients: tuple[Any, Any], tracking_store: str) -> None:
    import spanline
    from spanline import _runtime

    benchmark.group = f"MEM {CALLS:,} calls, store stalled, queue_size {QUEUE:,}"
    pipeline = _runtime.pipeline
    assert spanline.flush(timeout=300)
    spanline.shutdown(timeout=60)  # restart the worker on a store that blocks
    release = threading.Event()
    real_sink = pipeline._sink
    pipeline.set_sink(lambda units: release.wait(300))
    # In-process (durability="memory"): with the log, a stalled store never reaches the application.
    spanline.autolog(silent=True, queue_size=QUEUE, on_full="drop", durability="memory")
    create = clients[0].messages.create
    create(**CHAT_KWARGS)
    # The store blocks from its first write: flush() gives up, and the worker stays stuck in that write.
    assert not spanline.flush(timeout=1.0)
    before = spanline.stats()
    rss: list[float] = []

    def run() -> None:
        for i in range(CALLS):
            create(**CHAT_KWARGS)
            if i % 500 == 499:
                rss.append(_rss_mb())

    try:
        benchmark.pedantic(run, rounds=1, iterations=1)
        after = spanline.stats()
        dropped = after.dropped.get("queue_full", 0) - before.dropped.get("queue_full", 0)
        benchmark.extra_info.update(rss_mb=[round(x, 1) for x in rss], dropped_queue_full=dropped)
        assert dropped > 0
        # Once the queue is full, RSS stays flat: the last half of the run adds (almost) nothing.
        assert rss[-1] - rss[len(rss) // 2] < 5
    finally:
        release.set()
        spanline.shutdown(timeout=60)
        pipeline.set_sink(real_sink)
        spanline.configure(queue_size=100_000)
        spanline.autolog(disable=True, silent=True, durability="page_cache")
