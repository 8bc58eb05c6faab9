"""Worker throughput against the raw ``log_spans`` ceiling, and the caller's encode-and-append step.

``worker``: a ready backlog of the seed agent's events (4 spans per trace) is put on spanline's queue
and ``flush()`` returns once the worker has decoded, assembled and stored it. ``raw``: the same kind of
traces, folded into MLflow spans beforehand, written with the store's ``log_spans`` (the ceiling).
Compare the two members of a group: ``spanline bench`` prints the ratio (target: ≥ 80%).
"""

from __future__ import annotations

import time
from typing import Any

import pytest

TRACES = 200


@pytest.fixture
def recording(tracking_store: str) -> Any:
    import spanline

    # The in-process worker (durability="memory"); the writer process is measured in test_eventlog.py.
    spanline.autolog(silent=True, durability="memory")
    yield
    spanline.flush(timeout=300)
    spanline.autolog(disable=True, silent=True, durability="page_cache")


@pytest.mark.parametrize("batch", [10, 100])
def test_worker_drain(benchmark: Any, clients: tuple[Any, Any], recording: None, batch: int) -> None:
    import spanline
    from spanline import _runtime
    from spanline.bench import capture_agent_events

    benchmark.group = f"worker throughput, sqlite, batch {batch} ({TRACES} traces)"
    spanline.configure(batch_size=batch)
    queue = _runtime.pipeline.queue

    def setup() -> tuple[tuple, dict]:
        events = capture_agent_events(clients[0], TRACES)
        return (events,), {}

    def drain(events: list[bytes]) -> None:
        queue.items.extend(events)
        queue.wake.set()
        assert spanline.flush(timeout=300)

    before = spanline.stats().spans_stored
    benchmark.pedantic(drain, setup=setup, rounds=3, iterations=1)
    benchmark.extra_info["spans_per_round"] = (spanline.stats().spans_stored - before) // 3
    spanline.configure(batch_size=100)


@pytest.mark.parametrize("batch", [10, 100])
def test_raw_log_spans(benchmark: Any, clients: tuple[Any, Any], recording: None, batch: int) -> None:
    from mlflow.tracking._tracking_service.utils import _get_store

    from spanline.bench import capture_agent_events, prebuilt_batches

    benchmark.group = f"worker throughput, sqlite, batch {batch} ({TRACES} traces)"
    store = _get_store()

    def setup() -> tuple[tuple, dict]:
        return (prebuilt_batches(capture_agent_events(clients[0], TRACES), batch),), {}

    def write(batches: list[tuple[str, list[Any]]]) -> None:
        for experiment, spans in batches:
            store.log_spans(experiment, spans)

    benchmark.pedantic(write, setup=setup, rounds=3, iterations=1)
    benchmark.extra_info["spans_per_round"] = TRACES * 4


def test_caller_encode_and_append(benchmark: Any) -> None:
    """The fixed part of a traced call's path: build the ``ApiCall`` event, encode it, append it."""
    from collections import deque

    from spanline.pipeline.events import ApiCall, encode

    benchmark.group = "caller's path: event build + encode + append"
    request = b'{"model":"claude-sonnet-4-6","max_tokens":1024,"messages":[]}' * 4
    response = b'{"id":"msg_1","type":"message","content":[{"type":"text","text":"hi"}]}' * 8
    items: deque[bytes] = deque(maxlen=10_000)
    append = items.append

    def step() -> None:
        append(
            encode(
                ApiCall(
                    1, 2, 0, 2, "Messages.create", "messages", 1, time.time_ns(), request, response, "req_1"
                )
            )
        )

    benchmark(step)
