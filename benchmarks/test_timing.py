"""Wall-clock checks moved out of ``tests/``: how soon things happen, on this machine.

``tests/`` checks the behaviour (the fake applies its latency and does not block the loop; a busy
program's traces are stored while it runs and after it stops, without a flush); these check the speed,
which a loaded machine can stretch. Run: ``python -m pytest benchmarks/test_timing.py --benchmark-only -q``.
"""

from __future__ import annotations

import time
import uuid
from typing import Any


def test_fake_async_latency_overlaps(benchmark: Any) -> None:
    """Six concurrent calls (five at 0.2 s, one at 0.3 s) take ~0.3 s, not the 1.3 s of serial sleeps."""
    import anyio

    from spanline.testing import FakeAnthropicAPI

    benchmark.group = "fake API latency"
    fake = FakeAnthropicAPI(latency=0.2, model_latency={"slow": 0.3}, record_requests=False)

    async def main() -> None:
        async with fake.async_client() as client, anyio.create_task_group() as tg:
            for model in ["claude-fake-1"] * 5 + ["slow"]:
                tg.start_soon(lambda m=model: client.messages.create(
                    model=m, max_tokens=5, messages=[{"role": "user", "content": "hi"}]))

    def run() -> float:
        start = time.perf_counter()
        anyio.run(main)
        return time.perf_counter() - start

    elapsed = benchmark.pedantic(run, rounds=3, iterations=1, warmup_rounds=1)  # warm-up: SDK imports
    assert 0.3 <= elapsed < 0.9


def test_fake_sync_latency_per_model(benchmark: Any) -> None:
    from spanline.testing import FakeAnthropicAPI

    benchmark.group = "fake API latency"
    client = FakeAnthropicAPI(model_latency={"slow": 0.1}, record_requests=False).client()

    def timed(model: str) -> float:
        start = time.perf_counter()
        client.messages.create(model=model, max_tokens=5, messages=[{"role": "user", "content": "hi"}])
        return time.perf_counter() - start

    fast = benchmark.pedantic(timed, args=("claude-fake-1",), rounds=5, iterations=1)
    assert fast < 0.1 <= timed("slow")


def test_busy_program_store_lag(benchmark: Any, tracking_store: str) -> None:
    """Under a steady load (a call every few ms, ``flush_interval=0.05``, ``batch_size=1``) the first traces
    are stored within 2 s and the rest within 10 s of the load stopping, without a flush. Nothing defers
    storage while the program is busy: the worker appends to the log every tick and the writer process
    tails it (with ``durability="memory"`` the worker stores every tick itself); this measures that lag."""
    import mlflow

    import spanline
    from spanline.testing import FakeAnthropicAPI

    benchmark.group = "steady load: append-to-stored lag"
    mlflow.set_experiment(f"steady-{uuid.uuid4().hex[:8]}")
    spanline.autolog(silent=True, flush_interval=0.05, batch_size=1)
    client = FakeAnthropicAPI(latency=0.002, record_requests=False).client()
    # A writer up and serving first (a flush starts it): this measures the steady lag, not a writer's start
    # (a process spawn and an mlflow import, seconds on a loaded machine).
    client.messages.create(model="claude-fake-1", max_tokens=8, messages=[{"role": "user", "content": "warm"}])
    assert spanline.flush(120)
    result: dict[str, float] = {}

    def run() -> None:
        before = spanline.stats().traces_stored
        calls, first_stored = 0, None
        start = time.monotonic()
        while time.monotonic() - start < 2.0:
            client.messages.create(model="claude-fake-1", max_tokens=8, messages=[{"role": "user", "content": "s"}])
            calls += 1
            if first_stored is None and spanline.stats().traces_stored > before:
                first_stored = time.monotonic() - start
        stopped = time.monotonic()
        while spanline.stats().traces_stored - before < calls and time.monotonic() - stopped < 10.0:
            time.sleep(0.02)
        result.update(first_stored=first_stored if first_stored is not None else float("inf"),
                      settled=time.monotonic() - stopped,
                      stored=spanline.stats().traces_stored - before, calls=calls)

    try:
        benchmark.pedantic(run, rounds=1, iterations=1)
        benchmark.extra_info.update(result)
        assert result["first_stored"] < 2.0, f"a steady load postponed storage past 2 s: {result}"
        assert result["stored"] == result["calls"], f"not all stored within 10 s of the load stopping: {result}"
    finally:
        assert spanline.flush(60)
        spanline.configure(flush_interval=0.5, batch_size=100)
        spanline.autolog(disable=True, silent=True)
