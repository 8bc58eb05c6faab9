"""TW: spans per second into the store through spanline's worker (a ready backlog, then ``flush()``),
next to raw ``log_spans`` with pre-built spans (the ceiling), by batch size."""

from __future__ import annotations

import contextlib
import gc
import time
from collections.abc import Iterator
from typing import Any

from .measure import spanline_stats
from .workload import CITIES, FLUSH_TIMEOUT, MODEL, TOOLS, fake_clients


@contextlib.contextmanager
def captured_events() -> Iterator[list[Any]]:
    """While inside, the events spanline's patches emit are kept in the list given, not queued (an item is
    encoded bytes, or a deferred tuple: ``events.encode_deferred`` makes bytes of either)."""
    from spanline import _runtime

    pipeline = _runtime.pipeline
    captured: list[Any] = []
    emit = pipeline.emit
    pipeline.emit = captured.append  # type: ignore[method-assign]
    try:
        yield captured
    finally:
        pipeline.emit = emit  # type: ignore[method-assign]


def capture_agent_events(client: Any, traces: int) -> list[bytes]:
    """Run the seed's agent (sync flavour) ``traces`` times under spanline and keep the encoded events
    instead of queueing them, so a store can later be fed a ready-made backlog."""
    import spanline

    @spanline.trace(span_type="TOOL")
    def get_weather(city: str) -> str:
        return {"Tokyo": "sunny", "Paris": "rainy"}.get(city, "unknown")

    @spanline.trace(span_type="AGENT")
    def agent(question: str) -> str:
        messages: list[dict[str, Any]] = [{"role": "user", "content": question}]
        ai_msg = client.messages.create(model=MODEL, messages=messages, tools=TOOLS, max_tokens=2048)
        messages.append({"role": "assistant", "content": ai_msg.content})
        for call in [c for c in ai_msg.content if c.type == "tool_use"]:
            result = get_weather(**call.input)
            messages.append(
                {
                    "role": "user",
                    "content": [{"type": "tool_result", "tool_use_id": call.id, "content": result}],
                }
            )
        return client.messages.create(model=MODEL, messages=messages, max_tokens=2048).content[-1].text

    with captured_events() as captured:
        for i in range(traces):
            agent(f"What's the weather like in {CITIES[i % len(CITIES)]} today?")
    return captured


def _default_experiment() -> str:
    from mlflow.tracking.fluent import _get_experiment_id

    return _get_experiment_id() or "0"


def prebuilt_batches(captured: list[bytes], batch: int) -> list[tuple[str, list[Any]]]:
    """The captured events folded into MLflow spans ahead of time: (experiment, spans) per store call."""
    from spanline import _runtime
    from spanline.pipeline import events
    from spanline.pipeline.assembler import Assembler
    from spanline.pipeline.sink import MlflowSink, to_mlflow_span
    from spanline.pipeline.stats import Counters

    assembler = Assembler(Counters(), lambda: _runtime.options.policy)
    for item in captured:
        assembler.add(events.decode(item))
    units = assembler.take()
    sink = MlflowSink(lambda: None)
    default = _default_experiment()
    out = []
    for i in range(0, len(units), batch):
        chunk = units[i : i + batch]
        experiment = sink.experiment_for(chunk[0], lambda: default)
        out.append((experiment, [to_mlflow_span(r) for u in chunk for r in u.spans]))
    return out


def run_throughput_job(job: dict[str, Any]) -> dict[str, Any]:
    """Spans per second into the store: through spanline's worker (a ready backlog, then ``flush()``),
    or raw ``log_spans`` calls with pre-built spans (the ceiling), ``batch`` traces per store call."""
    import spanline
    from spanline import _runtime

    batch, mode, traces = job["batch"], job["mode"], job["n"]
    client, _, _ = fake_clients()
    spanline.autolog(silent=True, batch_size=batch, queue_size=10**7)
    # Warm-up: the store's first writes (connection, caches) are not part of the rate.
    warm = capture_agent_events(client, 10)
    pipeline = _runtime.pipeline
    pipeline.queue.items.extend(warm)
    spanline.flush(FLUSH_TIMEOUT)
    captured = capture_agent_events(client, traces)
    spans = 0
    gc.collect()
    if mode == "worker":
        before = spanline.stats().spans_stored
        cpu0, t0 = time.process_time(), time.perf_counter()
        pipeline.queue.items.extend(captured)
        pipeline.queue.wake.set()
        ok = spanline.flush(FLUSH_TIMEOUT)
        wall = time.perf_counter() - t0
        cpu = time.process_time() - cpu0
        spans = spanline.stats().spans_stored - before
        extra = {"flushed": ok, "stats": spanline_stats()}
    else:
        from mlflow.tracking._tracking_service.utils import _get_store

        batches = prebuilt_batches(captured, batch)
        store = _get_store()
        cpu0, t0 = time.process_time(), time.perf_counter()
        for experiment, chunk in batches:
            store.log_spans(experiment, chunk)
            spans += len(chunk)
        wall = time.perf_counter() - t0
        cpu = time.process_time() - cpu0
        extra = {}
    return {"spans": spans, "wall_s": wall, "cpu_s": cpu, "spans_per_s": spans / wall, **extra}
