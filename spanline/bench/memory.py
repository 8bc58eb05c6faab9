"""MEM: many calls while the store blocks: RSS against the queue bound, and the drops ``stats()`` counts."""

from __future__ import annotations

import threading
import time
from typing import Any

from .measure import peak_rss_mb, rss_mb, spanline_stats
from .workload import CHAT_KWARGS, FLUSH_TIMEOUT, fake_clients


def run_memory_job(job: dict[str, Any]) -> dict[str, Any]:
    """``n`` calls while the store blocks: RSS along the way, and spanline's counters at the end."""
    config, n, queue = job["config"], job["n"], job["queue"]
    client, _, _ = fake_clients()
    release = threading.Event()
    if config == "spanline":
        import spanline
        from spanline import _runtime

        def stalled_store(units: Any) -> None:
            release.wait(FLUSH_TIMEOUT)  # a store that never answers while the calls run

        _runtime.pipeline.set_sink(stalled_store)
        spanline.autolog(silent=True, queue_size=queue, on_full="drop")
    create = client.messages.create
    for _ in range(job["warmup"]):
        create(**CHAT_KWARGS)
    stalled = None
    if config == "spanline":
        # Hand the warm-up to the store, which blocks: from here on the worker is stuck in a write, as
        # with a store that stops answering, and everything emitted waits in (or is dropped from) the queue.
        stalled = not spanline.flush(timeout=1.0)
    rss_start = rss_mb()
    checkpoints = []
    step = max(1, n // 10)
    t0 = time.perf_counter()
    queue_full_at_rss = None
    for i in range(1, n + 1):
        create(**CHAT_KWARGS)
        if i % step == 0:
            point = {"calls": i, "rss_mb": round(rss_mb(), 1)}
            if config == "spanline":
                st = spanline.stats()
                point["queue_depth"] = st.queue_depth
                point["dropped"] = st.events_dropped
                if queue_full_at_rss is None and st.events_dropped:
                    queue_full_at_rss = point["rss_mb"]
            checkpoints.append(point)
    result: dict[str, Any] = {
        "calls": n,
        "warmup": job["warmup"],
        "wall_s": time.perf_counter() - t0,
        "rss_start_mb": rss_start,
        "rss_end_mb": rss_mb(),
        "peak_rss_mb": peak_rss_mb(),
        "checkpoints": checkpoints,
        "rss_at_first_drop_mb": queue_full_at_rss,
        "store_stalled": stalled,
    }
    if config == "spanline":
        result["stats"] = spanline_stats()
    release.set()
    return result
