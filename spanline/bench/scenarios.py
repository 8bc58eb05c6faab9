"""S1–S5, each run inside one configuration's process: the timed calls, a flush, and what was stored.

S1 sequential sync ``messages.create``; S2 ``AsyncAnthropic``, 100 concurrent calls through ``asyncio.gather``,
repeated; S3 streaming (``stream=True``), per stream event; S4 the seed's tool agent (AGENT, two CHAT_MODEL,
TOOL), three agents at a time through ``asyncio.gather``; S5 a burst of calls, then a flush: drain time and
traces stored versus traces made; S6 S4's agent with its AGENT and TOOL under ``@mlflow.trace`` (MLflow's own
tracer), whoever traces its calls.

With spanline (its event log and writer process), the S1 and S5 jobs then measure the lag at a steady load
(``lag``): calls paced at half the writer's rate in this job (traces per second of its CPU over the timed
part), for ``lag_seconds``, after everything above was counted."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from spanline.demo import MODEL

from .configs import Tracing
from .lag import steady_lag
from .measure import Cpu, CpuClock, StoredCounter, count_stored, peak_rss_mb, rss_mb, spanline_stats
from .workload import AGENTS_PER_GATHER, CHAT_KWARGS, CITIES, CONCURRENCY, SPANS_PER_AGENT, STREAM_KWARGS, fake_clients


@dataclass
class Measured:
    samples_ns: list[int]  # the caller-path figure, one per call (per event, per agent run...)
    made: int  # traces the scenario made (after warm-up)
    spans_per_trace: int
    cpu: Cpu  # CPU from the first timed call until flush returned: the process's, the calling thread's, the writer's
    calls_s: float  # wall time of the timed calls
    flush_s: float  # wall time of the flush after them
    stored_before: tuple[int, int]  # (traces, spans) in the store after the warm-up was flushed
    extra: dict[str, Any] = field(default_factory=dict)


def _settle(tracing: Tracing, uri: str) -> tuple[int, int]:
    """After the warm-up: flush it and count what is stored, so only the timed part is counted. For spanline
    the flush also starts the job's writer process and waits until it has stored the warm-up: its start (a
    process spawn, an interpreter, the mlflow import, the store's engine) happens here, before the timed part,
    and is reported apart (``writer_start_cpu_s``)."""
    tracing.flush()
    return count_stored(uri) if tracing.config != "untraced" else (0, 0)


def _timed_flush(tracing: Tracing) -> tuple[float, bool]:
    t0 = time.perf_counter()
    ok = tracing.flush()
    return time.perf_counter() - t0, ok


def scenario_s1(client: Any, tracing: Tracing, n: int, warmup: int, uri: str) -> Measured:
    """Sequential sync ``messages.create``; one sample per call."""
    create = client.messages.create
    for _ in range(warmup):
        create(**CHAT_KWARGS)
    before = _settle(tracing, uri)
    samples = [0] * n
    clock = time.perf_counter_ns
    cpu0, wall0 = CpuClock(tracing.writer_pid()), time.perf_counter()
    for i in range(n):
        t = clock()
        create(**CHAT_KWARGS)
        samples[i] = clock() - t
    calls_s = time.perf_counter() - wall0
    flush_s, ok = _timed_flush(tracing)
    cpu = cpu0.read()
    return Measured(samples, n, 1, cpu, calls_s, flush_s, before, {"flushed": ok})


def scenario_s2(client: Any, tracing: Tracing, gathers: int, warmup: int, uri: str) -> Measured:
    """``AsyncAnthropic``: ``CONCURRENCY`` calls through ``asyncio.gather``, ``gathers`` times; one sample
    per gather (its wall time divided by the calls), and calls per second over all of them."""

    async def run() -> tuple[list[int], float, float, bool, float]:
        create = client.messages.create
        await asyncio.gather(*(create(**CHAT_KWARGS) for _ in range(max(warmup, CONCURRENCY))))
        before[:] = _settle(tracing, uri)
        samples = []
        cpu0, wall0 = CpuClock(tracing.writer_pid()), time.perf_counter()
        for _ in range(gathers):
            t = time.perf_counter_ns()
            await asyncio.gather(*(create(**CHAT_KWARGS) for _ in range(CONCURRENCY)))
            samples.append((time.perf_counter_ns() - t) // CONCURRENCY)
        calls_s = time.perf_counter() - wall0
        flush_s, ok = _timed_flush(tracing)
        return samples, calls_s, flush_s, ok, cpu0

    before = [0, 0]
    samples, calls_s, flush_s, ok, cpu0 = asyncio.run(run())
    cpu = cpu0.read()
    made = gathers * CONCURRENCY
    extra = {"flushed": ok, "calls_per_s": made / calls_s}
    return Measured(samples, made, 1, cpu, calls_s, flush_s, (before[0], before[1]), extra)


def scenario_s3(client: Any, tracing: Tracing, n: int, warmup: int, uri: str) -> Measured:
    """Streaming ``create(stream=True)`` consumed fully; one sample per stream: its wall time per event."""
    create = client.messages.create

    def consume() -> int:
        events = 0
        for _ in create(stream=True, **STREAM_KWARGS):
            events += 1
        return events

    for _ in range(warmup):
        consume()
    before = _settle(tracing, uri)
    samples = [0] * n
    clock = time.perf_counter_ns
    events = 0
    cpu0, wall0 = CpuClock(tracing.writer_pid()), time.perf_counter()
    for i in range(n):
        t = clock()
        events = consume()
        samples[i] = (clock() - t) // events
    calls_s = time.perf_counter() - wall0
    flush_s, ok = _timed_flush(tracing)
    cpu = cpu0.read()
    return Measured(
        samples, n, 1, cpu, calls_s, flush_s, before, {"flushed": ok, "events_per_stream": events}
    )


def _make_agent(client: Any, tracing: Tracing) -> Callable[[str], Any]:
    """The seed's tool-calling agent (the demo's), decorated per configuration."""
    from spanline.demo import make_tool_agent

    return make_tool_agent(client, tracing.decorate("TOOL"), tracing.decorate("AGENT"), model=MODEL)


def scenario_s4(client: Any, tracing: Tracing, gathers: int, warmup: int, uri: str) -> Measured:
    """The seed's agent, three questions at a time through ``asyncio.gather``; one sample per gather
    (its wall time per agent run)."""
    agent = _make_agent(client, tracing)
    questions = [f"What's the weather like in {city} today?" for city in CITIES]

    async def run() -> tuple[list[int], float, float, bool, float]:
        for _ in range(max(1, warmup // AGENTS_PER_GATHER)):
            await asyncio.gather(*(agent(q) for q in questions))
        before[:] = _settle(tracing, uri)
        samples = []
        cpu0, wall0 = CpuClock(tracing.writer_pid()), time.perf_counter()
        for _ in range(gathers):
            t = time.perf_counter_ns()
            await asyncio.gather(*(agent(q) for q in questions))
            samples.append((time.perf_counter_ns() - t) // AGENTS_PER_GATHER)
        calls_s = time.perf_counter() - wall0
        flush_s, ok = _timed_flush(tracing)
        return samples, calls_s, flush_s, ok, cpu0

    before = [0, 0]
    samples, calls_s, flush_s, ok, cpu0 = asyncio.run(run())
    cpu = cpu0.read()
    made = gathers * AGENTS_PER_GATHER
    return Measured(
        samples, made, SPANS_PER_AGENT, cpu, calls_s, flush_s, (before[0], before[1]), {"flushed": ok}
    )


def scenario_s5(client: Any, tracing: Tracing, n: int, warmup: int, uri: str) -> Measured:
    """A burst of ``n`` sequential calls, then a flush: how long the store takes to catch up (drain),
    and how many of the traces made are stored."""
    create = client.messages.create
    for _ in range(warmup):
        create(**CHAT_KWARGS)
    before = _settle(tracing, uri)
    samples = [0] * n
    clock = time.perf_counter_ns
    cpu0, wall0 = CpuClock(tracing.writer_pid()), time.perf_counter()
    for i in range(n):
        t = clock()
        create(**CHAT_KWARGS)
        samples[i] = clock() - t
    burst_end = time.perf_counter()
    stored_at_burst_end = count_stored(uri)[0] - before[0] if tracing.config != "untraced" else 0
    ok = tracing.flush()
    drained = time.perf_counter()
    cpu = cpu0.read()
    extra = {"flushed": ok, "stored_at_burst_end": stored_at_burst_end, "drain_s": drained - burst_end}
    return Measured(samples, n, 1, cpu, burst_end - wall0, drained - burst_end, before, extra)


SCENARIO_FUNCS: dict[str, Callable[..., Measured]] = {
    "S1": scenario_s1,
    "S2": scenario_s2,
    "S3": scenario_s3,
    "S4": scenario_s4,
    "S6": scenario_s4,  # the same agent, its AGENT and TOOL under @mlflow.trace (configs.Tracing's decorator)
    "S5": scenario_s5,
}


def run_scenario_job(job: dict[str, Any]) -> dict[str, Any]:
    config, scenario, uri = job["config"], job["scenario"], job["uri"]
    rss0 = rss_mb()
    client, aclient, fake = fake_clients()
    tracing = Tracing(config, decorator="mlflow" if scenario == "S6" else None)
    func = SCENARIO_FUNCS[scenario]
    use_async = scenario in ("S2", "S4", "S6")
    m = func(aclient if use_async else client, tracing, job["n"], job["warmup"], uri)
    stored_traces, stored_spans = count_stored(uri) if config != "untraced" else (0, 0)
    result: dict[str, Any] = {
        "samples_ns": m.samples_ns,
        "made": m.made,
        "spans_per_trace": m.spans_per_trace,
        "cpu_s": m.cpu.process,
        "caller_cpu_s": m.cpu.caller,
        "calls_s": m.calls_s,
        "flush_s": m.flush_s,
        "peak_rss_mb": peak_rss_mb(),
        "start_rss_mb": rss0,
        "fake": fake,
        **m.extra,
    }
    if config != "untraced":
        result["stored_total"] = stored_traces - m.stored_before[0]
        result["spans_stored_total"] = stored_spans - m.stored_before[1]
    if m.cpu.writer is not None:
        result["writer_cpu_s"] = m.cpu.writer  # from the first timed call until flush returned
        result["writer_start_cpu_s"] = m.cpu.writer_before  # spawn, imports, warm-up: before the timed part
    if config.startswith("spanline"):
        result["stats"] = spanline_stats()
    if config == "spanline" and scenario in LAG_SCENARIOS and job.get("lag_seconds") and m.cpu.writer is not None:
        result.update(_steady_lag(client, tracing, uri, m, job))
    tracing.stop_writer()
    return result


LAG_SCENARIOS = ("S1", "S5")
MAX_LAG_RATE = 500.0  # calls per second: beyond this the calling thread, not the rate, would set the pace


def _steady_lag(client: Any, tracing: Tracing, uri: str, m: Measured, job: dict[str, Any]) -> dict[str, Any]:
    """The lag from a call's end to its trace stored, at half the rate the writer sustained in this job."""
    assert m.cpu.writer is not None
    rate = job.get("lag_rate") or min(MAX_LAG_RATE, 0.5 * m.made / max(m.cpu.writer, 0.01))  # 0.01: a clock tick
    counter = StoredCounter(uri)
    create = client.messages.create
    try:
        lags, calls = steady_lag(
            lambda i: create(**CHAT_KWARGS), rate, job["lag_seconds"], counter.count, tracing.flush
        )
    finally:
        counter.close()
    return {"lag_s": lags, "lag_rate": rate, "lag_calls": calls}
