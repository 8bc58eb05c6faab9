"""``spanline bench``: caller-path overhead, throughput, drain, CPU and memory, against MLflow, in one run.

    spanline bench [--quick] [--json PATH] [--scenarios S1,S2,...]
    python -m spanline.bench --quick

Method. Patching is process-global, so every configuration of a comparison runs in its own process:
``untraced``, ``spanline``, ``mlflow_async`` (``mlflow.anthropic.autolog()``, MLflow's default async
export) and ``mlflow_sync`` (the same with ``MLFLOW_ENABLE_ASYNC_TRACE_LOGGING=false``). For each
scenario the configurations alternate, round after round (A B C D, then D C B A, ...), so drift on a
noisy machine hits them alike; results are medians over the pooled per-call samples of all rounds, and
overheads are differences and ratios against ``untraced`` from the same interleaved run, never a lone
absolute time. Processes are forked from one interpreter that has imported anthropic, mlflow and spanline
(and nothing else: no patch, no store, no tracer), so a round costs no interpreter start-up; ``--spawn``
starts a fresh interpreter per process instead. Every process talks to the in-process fake Anthropic
API (``spanline.fake_anthropic``, else a small built-in one) and writes to its own copy of a sqlite
MLflow store in a temp dir.

Scenarios: S1 sequential sync ``messages.create``; S2 ``AsyncAnthropic``, 100 concurrent calls through
``asyncio.gather``, repeated; S3 streaming (``stream=True``), per stream event; S4 the seed's tool agent
(AGENT, two CHAT_MODEL, TOOL), three agents at a time through ``asyncio.gather``; S5 a burst of calls,
then a flush: drain time and traces stored versus traces made. TW: worker throughput into sqlite (and a
real local ``mlflow server`` in a full run) by batch size, next to the raw ``log_spans`` ceiling measured
with pre-built spans. MEM: many calls while the store is stalled: peak RSS against the queue bound, and
the drops counted by ``stats()``.

Figures are printed as a markdown table with the versions and the machine, and targets as met / not
met; they are facts of this run, not assertions.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import platform
import resource
import select
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spanline.demo import MODEL, TOOLS  # the seed's tool, and a current model (the SDK warns about old ones)

CONFIGS = ("untraced", "spanline", "mlflow_async", "mlflow_sync")
# A diagnostic configuration for S1: spanline whose worker does everything but the store's write (it
# still converts every span to MLflow's), to tell the worker's own share from the store's.
NOSTORE = "spanline_nostore"
S1_CONFIGS = ("untraced", "spanline", NOSTORE, "mlflow_async", "mlflow_sync")
SCENARIOS = ("S1", "S2", "S3", "S4", "S5", "TW", "MEM")

CONCURRENCY = 100  # S2: calls per asyncio.gather
AGENTS_PER_GATHER = 3  # S4: the seed asks about three cities at once
SPANS_PER_AGENT = 4  # AGENT, CHAT_MODEL, TOOL, CHAT_MODEL
CITIES = ("Tokyo", "Paris", "Sydney")
FLUSH_TIMEOUT = 900.0
EXPERIMENT = "spanline-bench"
SERVER_STARTUP_TIMEOUT = 90.0

# S1 / S5: a realistic small chat request.
CHAT_KWARGS: dict[str, Any] = {
    "model": MODEL,
    "max_tokens": 1024,
    "system": "You are a concise assistant. Answer in one short paragraph.",
    "messages": [{"role": "user", "content": "Hello, Claude. What is a good name for a small boat?"}],
    "metadata": {"user_id": "bench-user"},
}

# S3: a conversation whose answer streams as ~40 events (the fake echoes the tool result in pieces).
_TOOL_RESULT = (
    "Tokyo is sunny with a light breeze from the south-east, twenty-one degrees at noon, falling to "
    "sixteen after sunset. Humidity stays near fifty percent, visibility is excellent, and no rain is "
    "expected before the weekend, when a weak front may bring scattered showers in the late afternoon."
)
STREAM_KWARGS: dict[str, Any] = {
    "model": MODEL,
    "max_tokens": 1024,
    "tools": TOOLS,
    "messages": [
        {"role": "user", "content": "What's the weather like in Tokyo today?"},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "I'll check that."},
                {
                    "type": "tool_use",
                    "id": "toolu_bench_1",
                    "name": "get_weather",
                    "input": {"city": "Tokyo"},
                },
            ],
        },
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": "toolu_bench_1", "content": _TOOL_RESULT}],
        },
    ],
}


# ---------------------------------------------------------------------------------------------------
# Run sizes
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sizes:
    """How much each scenario does per process, by configuration, and how many rounds it runs.

    MLflow's paths cost milliseconds of CPU per trace (its synchronous export ~26 ms per call), so their
    counts are capped to keep a run bounded; medians and per-call figures do not depend on the count.
    """

    name: str
    rounds: int
    warmup: int
    s1: dict[str, int]
    s2_gathers: dict[str, int]
    s3: dict[str, int]
    s4_gathers: dict[str, int]
    s5: dict[str, int]
    s5_rounds: int
    tw_traces: int
    tw_batches: tuple[int, ...]
    tw_rounds: int
    tw_server: bool
    mem_calls: int
    mem_queue: int
    paired_blocks: int
    paired_block_calls: int


QUICK = Sizes(
    name="quick",
    rounds=2,
    warmup=30,
    s1={"untraced": 1000, "spanline": 1000, NOSTORE: 1000, "mlflow_async": 150, "mlflow_sync": 40},
    s2_gathers={"untraced": 5, "spanline": 5, "mlflow_async": 2, "mlflow_sync": 1},
    s3={"untraced": 200, "spanline": 200, "mlflow_async": 100, "mlflow_sync": 30},
    s4_gathers={"untraced": 40, "spanline": 40, "mlflow_async": 10, "mlflow_sync": 3},
    s5={"untraced": 2000, "spanline": 2000, "mlflow_async": 2000, "mlflow_sync": 60},
    s5_rounds=1,
    tw_traces=300,
    tw_batches=(10, 100),
    tw_rounds=2,
    tw_server=False,
    mem_calls=10_000,
    mem_queue=2_000,
    paired_blocks=40,
    paired_block_calls=100,
)

FULL = Sizes(
    name="full",
    rounds=5,
    warmup=50,
    s1={"untraced": 4000, "spanline": 4000, NOSTORE: 4000, "mlflow_async": 400, "mlflow_sync": 150},
    s2_gathers={"untraced": 20, "spanline": 20, "mlflow_async": 4, "mlflow_sync": 1},
    s3={"untraced": 1000, "spanline": 1000, "mlflow_async": 300, "mlflow_sync": 100},
    s4_gathers={"untraced": 200, "spanline": 200, "mlflow_async": 30, "mlflow_sync": 8},
    s5={"untraced": 10_000, "spanline": 10_000, "mlflow_async": 10_000, "mlflow_sync": 200},
    s5_rounds=2,
    tw_traces=1000,
    tw_batches=(1, 10, 100, 500),
    tw_rounds=3,
    tw_server=True,
    mem_calls=100_000,
    mem_queue=10_000,
    paired_blocks=100,
    paired_block_calls=200,
)


# ---------------------------------------------------------------------------------------------------
# The fake Anthropic backend
# ---------------------------------------------------------------------------------------------------


def _fallback_message(body: dict[str, Any], counter: Iterator[int]) -> dict[str, Any]:
    """A full Message for ``body``: a tool call when tools are offered and no tool result came back."""
    last = body["messages"][-1]
    content = last.get("content")
    blocks_in = content if isinstance(content, list) else []
    results = [b for b in blocks_in if isinstance(b, dict) and b.get("type") == "tool_result"]
    n = next(counter)
    if body.get("tools") and not results:
        tool = body["tools"][0]
        blocks: list[dict[str, Any]] = [
            {"type": "text", "text": "I'll check that.", "citations": None},
            {"type": "tool_use", "id": f"toolu_fb_{n:06d}", "name": tool["name"], "input": {"city": "Tokyo"}},
        ]
        stop = "tool_use"
    elif results:
        text = results[0].get("content")
        blocks = [{"type": "text", "text": f"The result is: {text}", "citations": None}]
        stop = "end_turn"
    else:
        blocks = [{"type": "text", "text": f"Hello! You said: {str(content)[:40]}", "citations": None}]
        stop = "end_turn"
    return {
        "id": f"msg_fb_{n:06d}",
        "type": "message",
        "role": "assistant",
        "model": body.get("model", MODEL),
        "content": blocks,
        "stop_reason": stop,
        "stop_sequence": None,
        "usage": {
            "input_tokens": 20,
            "output_tokens": 12,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            "service_tier": "standard",
        },
    }


def _fallback_sse(message: dict[str, Any]) -> bytes:
    def sse(event: dict[str, Any]) -> bytes:
        return b"event: " + event["type"].encode() + b"\ndata: " + json.dumps(event).encode() + b"\n\n"

    out = [sse({"type": "message_start", "message": {**message, "content": [], "stop_reason": None}})]
    for i, block in enumerate(message["content"]):
        if block["type"] == "text":
            words = block["text"].split(" ")
            out.append(
                sse({"type": "content_block_start", "index": i, "content_block": {**block, "text": ""}})
            )
            for j in range(0, len(words), 3):
                piece = " ".join(words[j : j + 3]) + (" " if j + 3 < len(words) else "")
                delta = {"type": "text_delta", "text": piece}
                out.append(sse({"type": "content_block_delta", "index": i, "delta": delta}))
        else:
            out.append(
                sse({"type": "content_block_start", "index": i, "content_block": {**block, "input": {}}})
            )
            delta = {"type": "input_json_delta", "partial_json": json.dumps(block["input"])}
            out.append(sse({"type": "content_block_delta", "index": i, "delta": delta}))
        out.append(sse({"type": "content_block_stop", "index": i}))
    usage = {"output_tokens": message["usage"]["output_tokens"]}
    delta = {"stop_reason": message["stop_reason"], "stop_sequence": None}
    out.append(sse({"type": "message_delta", "delta": delta, "usage": usage}))
    out.append(sse({"type": "message_stop"}))
    return b"".join(out)


def _fallback_transport() -> Any:
    """An ``httpx2.MockTransport`` answering ``POST /v1/messages`` like the real API (JSON or SSE)."""
    import itertools

    import httpx2

    counter = itertools.count(1)

    def handler(request: Any) -> Any:
        body = json.loads(request.content)
        message = _fallback_message(body, counter)
        headers = {"request-id": f"req_fb_{message['id'][7:]}"}
        if body.get("stream"):
            headers["content-type"] = "text/event-stream"
            return httpx2.Response(200, headers=headers, content=_fallback_sse(message))
        return httpx2.Response(200, headers=headers, json=message)

    return httpx2.MockTransport(handler)


def fake_clients() -> tuple[Any, Any, str]:
    """(sync client, async client, which fake) on ``spanline.fake_anthropic`` when importable, else on
    the small built-in transport above. Both clients use ``max_retries=0`` and a fake key."""
    try:
        from spanline.fake_anthropic import FakeAnthropicAPI
    except ImportError:
        import anthropic
        import httpx2

        transport = _fallback_transport()
        common = {"api_key": "sk-ant-bench", "base_url": "http://fake-anthropic.local", "max_retries": 0}
        return (
            anthropic.Anthropic(http_client=httpx2.Client(transport=transport), **common),
            anthropic.AsyncAnthropic(http_client=httpx2.AsyncClient(transport=transport), **common),
            "built-in fallback (httpx2.MockTransport)",
        )
    # The fake keeps the last 10,000 requests for tests to inspect (tens of MB, and an O(n) trim per
    # request once full). The bench inspects none, and must not count that memory or time as anyone's.
    api = FakeAnthropicAPI(record_requests=False)
    return api.client(), api.async_client(), "spanline.fake_anthropic (httpx2.MockTransport, in-process)"


# ---------------------------------------------------------------------------------------------------
# One configuration inside one process
# ---------------------------------------------------------------------------------------------------


class Tracing:
    """What a configuration provides to a scenario: a decorator for agent and tool functions, and the
    call that waits until everything recorded so far is stored."""

    def __init__(self, config: str, spanline_options: dict[str, Any] | None = None) -> None:
        self.config = config
        if config == "untraced":
            return
        if config in ("spanline", NOSTORE):
            import spanline

            if config == NOSTORE:
                from spanline import _runtime

                _runtime.pipeline.set_sink(_convert_only)
            spanline.autolog(silent=True, **(spanline_options or {}))
            return
        if config not in ("mlflow_async", "mlflow_sync"):
            raise ValueError(f"unknown configuration {config!r}; known: {', '.join(CONFIGS)}")
        # Read by MLflow when it builds its span exporter, at the first trace of the process.
        os.environ["MLFLOW_ENABLE_ASYNC_TRACE_LOGGING"] = "true" if config == "mlflow_async" else "false"
        import mlflow
        import mlflow.anthropic

        mlflow.anthropic.autolog(silent=True)

    def decorate(self, span_type: str) -> Callable[[Callable], Callable]:
        if self.config.startswith("spanline"):
            import spanline

            return spanline.trace(span_type=span_type)
        if self.config.startswith("mlflow"):
            import mlflow

            return mlflow.trace(span_type=span_type)
        return lambda func: func

    def flush(self) -> bool:
        if self.config.startswith("spanline"):
            import spanline

            return spanline.flush(FLUSH_TIMEOUT)
        if self.config == "mlflow_async":
            import mlflow

            mlflow.flush_trace_async_logging()
        return True


def _convert_only(units: Sequence[Any]) -> None:
    """A stand-in store for ``spanline_nostore``: build MLflow's spans, write nothing."""
    from spanline.pipeline.sink import to_mlflow_span

    for unit in units:
        for rec in unit.spans:
            to_mlflow_span(rec)


def _db_path(uri: str) -> str | None:
    return uri[len("sqlite:///") :] if uri.startswith("sqlite:///") else None


def count_stored(uri: str) -> tuple[int, int]:
    """(traces, spans) in the store. For sqlite the rows are counted directly (fast for 10,000 traces,
    and safe while another thread writes); for a server, through ``mlflow.search_traces``."""
    path = _db_path(uri)
    if path is not None:
        with contextlib.closing(sqlite3.connect(path, timeout=60)) as conn:
            traces = conn.execute("SELECT COUNT(*) FROM trace_info").fetchone()[0]
            spans = conn.execute("SELECT COUNT(*) FROM spans").fetchone()[0]
        return int(traces), int(spans)
    import mlflow

    exp = mlflow.get_experiment_by_name(EXPERIMENT)
    ids = [exp.experiment_id] if exp else ["0"]
    return len(mlflow.search_traces(locations=ids, return_type="list", include_spans=False)), -1


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _spanline_stats() -> dict[str, Any]:
    import dataclasses

    import spanline

    return dataclasses.asdict(spanline.stats())


# ---------------------------------------------------------------------------------------------------
# Scenarios (run inside the configuration's process)
# ---------------------------------------------------------------------------------------------------


@dataclass
class Measured:
    samples_ns: list[int]  # the caller-path figure, one per call (per event, per agent run...)
    made: int  # traces the scenario made (after warm-up)
    spans_per_trace: int
    cpu_s: float  # process CPU, all threads, from the first timed call until flush returned
    calls_s: float  # wall time of the timed calls
    flush_s: float  # wall time of the flush after them
    stored_before: tuple[int, int]  # (traces, spans) in the store after the warm-up was flushed
    extra: dict[str, Any] = field(default_factory=dict)


def _settle(tracing: Tracing, uri: str) -> tuple[int, int]:
    """After the warm-up: flush it and count what is stored, so only the timed part is counted."""
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
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for i in range(n):
        t = clock()
        create(**CHAT_KWARGS)
        samples[i] = clock() - t
    calls_s = time.perf_counter() - wall0
    flush_s, ok = _timed_flush(tracing)
    cpu = time.process_time() - cpu0
    return Measured(samples, n, 1, cpu, calls_s, flush_s, before, {"flushed": ok})


def scenario_s2(client: Any, tracing: Tracing, gathers: int, warmup: int, uri: str) -> Measured:
    """``AsyncAnthropic``: ``CONCURRENCY`` calls through ``asyncio.gather``, ``gathers`` times; one sample
    per gather (its wall time divided by the calls), and calls per second over all of them."""

    async def run() -> tuple[list[int], float, float, bool, float]:
        create = client.messages.create
        await asyncio.gather(*(create(**CHAT_KWARGS) for _ in range(max(warmup, CONCURRENCY))))
        before[:] = _settle(tracing, uri)
        samples = []
        cpu0, wall0 = time.process_time(), time.perf_counter()
        for _ in range(gathers):
            t = time.perf_counter_ns()
            await asyncio.gather(*(create(**CHAT_KWARGS) for _ in range(CONCURRENCY)))
            samples.append((time.perf_counter_ns() - t) // CONCURRENCY)
        calls_s = time.perf_counter() - wall0
        flush_s, ok = _timed_flush(tracing)
        return samples, calls_s, flush_s, ok, cpu0

    before = [0, 0]
    samples, calls_s, flush_s, ok, cpu0 = asyncio.run(run())
    cpu = time.process_time() - cpu0
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
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for i in range(n):
        t = clock()
        events = consume()
        samples[i] = (clock() - t) // events
    calls_s = time.perf_counter() - wall0
    flush_s, ok = _timed_flush(tracing)
    cpu = time.process_time() - cpu0
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
        cpu0, wall0 = time.process_time(), time.perf_counter()
        for _ in range(gathers):
            t = time.perf_counter_ns()
            await asyncio.gather(*(agent(q) for q in questions))
            samples.append((time.perf_counter_ns() - t) // AGENTS_PER_GATHER)
        calls_s = time.perf_counter() - wall0
        flush_s, ok = _timed_flush(tracing)
        return samples, calls_s, flush_s, ok, cpu0

    before = [0, 0]
    samples, calls_s, flush_s, ok, cpu0 = asyncio.run(run())
    cpu = time.process_time() - cpu0
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
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for i in range(n):
        t = clock()
        create(**CHAT_KWARGS)
        samples[i] = clock() - t
    burst_end = time.perf_counter()
    stored_at_burst_end = count_stored(uri)[0] - before[0] if tracing.config != "untraced" else 0
    ok = tracing.flush()
    drained = time.perf_counter()
    cpu = time.process_time() - cpu0
    extra = {"flushed": ok, "stored_at_burst_end": stored_at_burst_end, "drain_s": drained - burst_end}
    return Measured(samples, n, 1, cpu, burst_end - wall0, drained - burst_end, before, extra)


SCENARIO_FUNCS: dict[str, Callable[..., Measured]] = {
    "S1": scenario_s1,
    "S2": scenario_s2,
    "S3": scenario_s3,
    "S4": scenario_s4,
    "S5": scenario_s5,
}


def _percentile(sorted_values: Sequence[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    k = (len(sorted_values) - 1) * q
    lo = int(k)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (k - lo)


def run_scenario_job(job: dict[str, Any]) -> dict[str, Any]:
    config, scenario, uri = job["config"], job["scenario"], job["uri"]
    rss0 = _rss_mb()
    client, aclient, fake = fake_clients()
    tracing = Tracing(config)
    func = SCENARIO_FUNCS[scenario]
    use_async = scenario in ("S2", "S4")
    m = func(aclient if use_async else client, tracing, job["n"], job["warmup"], uri)
    stored_traces, stored_spans = count_stored(uri) if config != "untraced" else (0, 0)
    result: dict[str, Any] = {
        "samples_ns": m.samples_ns,
        "made": m.made,
        "spans_per_trace": m.spans_per_trace,
        "cpu_s": m.cpu_s,
        "calls_s": m.calls_s,
        "flush_s": m.flush_s,
        "peak_rss_mb": _peak_rss_mb(),
        "start_rss_mb": rss0,
        "fake": fake,
        **m.extra,
    }
    if config != "untraced":
        result["stored_total"] = stored_traces - m.stored_before[0]
        result["spans_stored_total"] = stored_spans - m.stored_before[1]
    if config.startswith("spanline"):
        result["stats"] = _spanline_stats()
    return result


def untraced_twin(client: Any) -> Any:
    """``client`` turned into an untraced twin while spanline's patches stay in place.

    Its class, and its ``messages`` resource's class, become subclasses holding the SDK's own functions
    that spanline replaced, so a call on the twin runs exactly the SDK as shipped. Comparing a traced
    client with its twin needs no patching and unpatching mid-run: rewriting a class attribute resets
    CPython's specialised bytecode for every call site that reads it, which shifted earlier toggled
    figures by several µs (in both directions).
    """
    from anthropic._base_client import SyncAPIClient
    from anthropic.resources.messages import Messages

    from spanline.patches import original

    client.__class__ = type(
        f"Untraced{type(client).__name__}",
        (type(client),),
        {"_process_response": original(SyncAPIClient, "_process_response")},
    )
    client.messages.__class__ = type("UntracedMessages", (Messages,), {"create": original(Messages, "create")})
    return client


def interleaved_overhead(traced: Any, untraced: Any, blocks: int, calls: int) -> dict[str, Any]:
    """Blocks of ``calls`` sequential ``messages.create`` on a traced client and on its untraced twin,
    alternating which goes first (ABBA). Per-call medians over all blocks, and each block pair's
    difference of medians (adjacent in time, so slow drifts of a shared machine cancel)."""
    clock = time.perf_counter_ns
    samples: dict[bool, list[int]] = {True: [], False: []}
    diffs = []
    for b in range(blocks):
        order = ((True, traced), (False, untraced)) if b % 2 == 0 else ((False, untraced), (True, traced))
        medians = {}
        for is_traced, client in order:
            create = client.messages.create
            block = [0] * calls
            for i in range(calls):
                t = clock()
                create(**CHAT_KWARGS)
                block[i] = clock() - t
            samples[is_traced] += block
            medians[is_traced] = statistics.median(block)
        diffs.append(medians[True] - medians[False])
    on, off = statistics.median(samples[True]), statistics.median(samples[False])
    return {
        "on_median_ns": on,
        "off_median_ns": off,
        "overhead_ns": on - off,
        "diff_ns": diffs,
        "paired_overhead_ns": statistics.median(diffs),
        "samples_ns": samples,
    }


def run_paired_job(job: dict[str, Any]) -> dict[str, Any]:
    """The caller's path alone, in one process: a traced client against its untraced twin, interleaved,
    with the worker idle (no batch threshold is reached and its interval is long), so the difference is
    what spanline's wrappers add to the caller and nothing the worker takes from it."""
    import spanline

    spanline.autolog(silent=True, queue_size=10**7, batch_size=10**7, flush_interval=3600.0)
    traced = fake_clients()[0]
    untraced = untraced_twin(fake_clients()[0])
    # A longer warm-up than the scenarios': a forked child pays copy-on-write faults on the pages it
    # first writes, and those fall unevenly on the two clients until both have run a while.
    for _ in range(10 * job["warmup"]):
        traced.messages.create(**CHAT_KWARGS)
        untraced.messages.create(**CHAT_KWARGS)
    result = interleaved_overhead(traced, untraced, job["blocks"], job["n"])
    del result["samples_ns"]
    result["events_queued"] = spanline.stats().queue_depth
    return result


# ---------------------------------------------------------------------------------------------------
# Worker throughput (TW) and memory under a stalled store (MEM)
# ---------------------------------------------------------------------------------------------------


def capture_agent_events(client: Any, traces: int) -> list[bytes]:
    """Run the seed's agent (sync flavour) ``traces`` times under spanline and keep the encoded events
    instead of queueing them, so a store can later be fed a ready-made backlog."""
    import spanline
    from spanline import _runtime

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

    pipeline = _runtime.pipeline
    captured: list[bytes] = []
    emit = pipeline.emit
    pipeline.emit = captured.append  # type: ignore[method-assign]
    try:
        for i in range(traces):
            agent(f"What's the weather like in {CITIES[i % len(CITIES)]} today?")
    finally:
        pipeline.emit = emit  # type: ignore[method-assign]
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
        extra = {"flushed": ok, "stats": _spanline_stats()}
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
    rss_start = _rss_mb()
    checkpoints = []
    step = max(1, n // 10)
    t0 = time.perf_counter()
    queue_full_at_rss = None
    for i in range(1, n + 1):
        create(**CHAT_KWARGS)
        if i % step == 0:
            point = {"calls": i, "rss_mb": round(_rss_mb(), 1)}
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
        "rss_end_mb": _rss_mb(),
        "peak_rss_mb": _peak_rss_mb(),
        "checkpoints": checkpoints,
        "rss_at_first_drop_mb": queue_full_at_rss,
        "store_stalled": stalled,
    }
    if config == "spanline":
        result["stats"] = _spanline_stats()
    release.set()
    return result


def run_init_db_job(job: dict[str, Any]) -> dict[str, Any]:
    """Create the template sqlite store (MLflow's migrations run once per bench, not per process), with
    the experiment every process then sets as its active one."""
    from mlflow.tracking import MlflowClient

    MlflowClient(job["uri"]).create_experiment(EXPERIMENT)
    return {"ok": True}


JOB_KINDS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "scenario": run_scenario_job,
    "paired": run_paired_job,
    "throughput": run_throughput_job,
    "memory": run_memory_job,
    "init_db": run_init_db_job,
}


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    """Run one job in this process (a fresh child) and return its results (never raises)."""
    os.environ["MLFLOW_TRACKING_URI"] = job["uri"]
    os.environ["MLFLOW_MODEL_CATALOG_URI"] = ""
    t0 = time.perf_counter()
    try:
        if job["kind"] != "init_db":
            # As a user would (DESIGN.md 1.), for every configuration alike, before anything is timed.
            import mlflow

            mlflow.set_experiment(EXPERIMENT)
        result = JOB_KINDS[job["kind"]](job)
        result["ok"] = True
    except BaseException as exc:  # report it to the orchestrator, which prints it in the table
        import traceback

        result = {"ok": False, "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
    result["job_wall_s"] = time.perf_counter() - t0
    return result


def _child_main(job: dict[str, Any]) -> None:
    """In the job's process: run it, write its result file, and leave without exit handlers (the
    process's tracing state is thrown away; everything measured was flushed already)."""
    code = 0
    try:
        result = run_job(job)
        with open(job["out"], "w") as f:
            json.dump(result, f)
    except BaseException:
        code = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


# ---------------------------------------------------------------------------------------------------
# Process management: a fork server (default) or a fresh interpreter per job
# ---------------------------------------------------------------------------------------------------


PRELOAD = (
    "anthropic",
    "httpx2",
    "mlflow",
    "mlflow.anthropic",
    "mlflow.store.tracking.sqlalchemy_store",
    "mlflow.tracing",
    "spanline",
    "spanline.pipeline.sink",
)


def _preload() -> None:
    """What every job's process has imported before it starts (in the fork server)."""
    import importlib

    for name in PRELOAD:
        importlib.import_module(name)
    with contextlib.suppress(ImportError):
        importlib.import_module("spanline.fake_anthropic")


def _wait_child(pid: int, timeout: float) -> int | None:
    """The child's wait status, or None after ``timeout`` seconds (the child is then killed)."""
    deadline = time.monotonic() + timeout
    pidfd = None
    with contextlib.suppress(AttributeError, OSError):
        pidfd = os.pidfd_open(pid)
    try:
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                return status
            left = deadline - time.monotonic()
            if left <= 0:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                return None
            if pidfd is not None:
                select.select([pidfd], [], [], left)
            else:
                time.sleep(min(0.05, left))
    finally:
        if pidfd is not None:
            os.close(pidfd)


def _fork_server_main() -> int:
    """Read jobs (JSON lines) on stdin; fork a child per job; answer one JSON line per job on stdout."""
    _preload()
    gc.collect()
    gc.freeze()  # children touch fewer inherited pages (copy-on-write), so they start alike
    out = sys.stdout
    out.write(json.dumps({"ready": True}) + "\n")
    out.flush()
    for line in sys.stdin:
        job = json.loads(line)
        log = os.open(job["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        pid = os.fork()
        if pid == 0:
            os.dup2(log, 1)
            os.dup2(log, 2)
            os.close(log)
            _child_main(job)
        os.close(log)
        status = _wait_child(pid, job["timeout"])
        reply = {"pid": pid, "timed_out": status is None}
        if status is not None:
            reply["exit"] = os.waitstatus_to_exitcode(status)
        out.write(json.dumps(reply) + "\n")
        out.flush()
    return 0


def _bench_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SPANLINE_", "MLFLOW_"))}
    env["MLFLOW_MODEL_CATALOG_URI"] = ""
    env["PYTHONHASHSEED"] = "0"
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("PYTHONWARNINGS", None)
    return env


class Runner:
    """Runs jobs in fresh processes: forked from a preloaded server, or spawned (``--spawn``)."""

    def __init__(self, workdir: str, spawn: bool) -> None:
        self.workdir = workdir
        self.spawn = spawn
        self.proc: subprocess.Popen[str] | None = None
        self._count = 0
        self._server_log = open(os.path.join(workdir, "fork-server.log"), "w")  # noqa: SIM115
        if not spawn:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "spanline.bench", "--fork-server"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=self._server_log,
                env=_bench_env(),
                text=True,
                bufsize=1,
            )
            ready = self.proc.stdout.readline() if self.proc.stdout else ""
            if not ready:
                self.close()
                raise RuntimeError(f"the bench fork server did not start; see {self._server_log.name}")

    def run(self, job: dict[str, Any], timeout: float = 1800.0) -> dict[str, Any]:
        self._count += 1
        stem = os.path.join(self.workdir, f"job{self._count:03d}-{job['kind']}")
        job = {**job, "out": stem + ".json", "log": stem + ".log", "timeout": timeout}
        if self.spawn:
            with open(job["log"], "w") as log:
                try:
                    subprocess.run(
                        [sys.executable, "-m", "spanline.bench", "--job", json.dumps(job)],
                        stdout=log,
                        stderr=log,
                        env=_bench_env(),
                        timeout=timeout,
                        check=False,
                    )
                    reply: dict[str, Any] = {"timed_out": False}
                except subprocess.TimeoutExpired:
                    reply = {"timed_out": True}
        else:
            assert self.proc is not None and self.proc.stdin is not None and self.proc.stdout is not None
            self.proc.stdin.write(json.dumps(job) + "\n")
            self.proc.stdin.flush()
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"the bench fork server died; see {self._server_log.name}")
            reply = json.loads(line)
        if reply.get("timed_out"):
            return {"ok": False, "error": f"timed out after {timeout:.0f} s (log: {job['log']})"}
        try:
            with open(job["out"]) as f:
                return json.load(f)
        except (OSError, ValueError):
            return {
                "ok": False,
                "error": f"the job's process failed (log: {job['log']}):\n{_tail(job['log'])}",
            }

    def close(self) -> None:
        if self.proc is not None:
            with contextlib.suppress(OSError, ValueError):
                if self.proc.stdin:
                    self.proc.stdin.close()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None
        self._server_log.close()


def _tail(path: str, limit: int = 2000) -> str:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return ""
    return data[-limit:].decode("utf-8", "replace")


# ---------------------------------------------------------------------------------------------------
# A real local mlflow server (for TW in a full run)
# ---------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def mlflow_server(workdir: str) -> Iterator[str]:
    """A local ``mlflow server`` (``spanline.mlflow_server``) for the TW scenario; yields its URL."""
    from spanline.mlflow_server import run_mlflow_server

    with run_mlflow_server(Path(workdir), timeout=SERVER_STARTUP_TIMEOUT) as server:
        yield server.url


# ---------------------------------------------------------------------------------------------------
# The orchestrator: plan, run interleaved, aggregate, print
# ---------------------------------------------------------------------------------------------------


class Progress:
    """A one-line progress bar on stderr (a line per step when stderr is not a terminal)."""

    def __init__(self, total: int, enabled: bool = True) -> None:
        self.total = max(1, total)
        self.done = 0
        self.t0 = time.monotonic()
        self.enabled = enabled
        self.tty = sys.stderr.isatty()

    def step(self, label: str) -> None:
        if not self.enabled:
            return
        width = 28
        filled = int(width * self.done / self.total)
        elapsed = time.monotonic() - self.t0
        bar = "#" * filled + "-" * (width - filled)
        text = f"[{bar}] {self.done}/{self.total} {elapsed:5.0f}s  {label}"
        if self.tty:
            sys.stderr.write("\r\033[K" + text)
        else:
            sys.stderr.write(text + "\n")
        sys.stderr.flush()

    def advance(self) -> None:
        self.done += 1

    def finish(self) -> None:
        if self.enabled:
            self.step("done")
            sys.stderr.write("\n")
            sys.stderr.flush()


def _round_order(configs: Sequence[str], r: int) -> list[str]:
    """A B C D, then D C B A: each configuration's average position is the same (ABBA)."""
    return list(configs) if r % 2 == 0 else list(reversed(configs))


@dataclass
class Plan:
    sizes: Sizes
    scenarios: list[str]
    jobs: list[dict[str, Any]] = field(default_factory=list)

    def build(self, server: bool) -> None:
        s = self.sizes
        per = {"S1": s.s1, "S2": s.s2_gathers, "S3": s.s3, "S4": s.s4_gathers, "S5": s.s5}
        for scenario in self.scenarios:
            if scenario in per:
                rounds = s.s5_rounds if scenario == "S5" else s.rounds
                for r in range(rounds):
                    configs = S1_CONFIGS if scenario == "S1" else CONFIGS
                    for config in _round_order(configs, r):
                        self.jobs.append(
                            {
                                "kind": "scenario",
                                "scenario": scenario,
                                "config": config,
                                "round": r,
                                "n": per[scenario][config],
                                "warmup": s.warmup,
                            }
                        )
                if scenario == "S1":
                    self.jobs.append(
                        {
                            "kind": "paired",
                            "scenario": "S1",
                            "config": "spanline",
                            "round": 0,
                            "n": s.paired_block_calls,
                            "blocks": s.paired_blocks,
                            "warmup": s.warmup,
                        }
                    )
            elif scenario == "TW":
                targets = ["sqlite", "server"] if (server and s.tw_server) else ["sqlite"]
                for target in targets:
                    for batch in s.tw_batches:
                        for r in range(s.tw_rounds):
                            for mode in _round_order(("worker", "raw"), r):
                                self.jobs.append(
                                    {
                                        "kind": "throughput",
                                        "scenario": "TW",
                                        "config": "spanline",
                                        "target": target,
                                        "batch": batch,
                                        "mode": mode,
                                        "round": r,
                                        "n": s.tw_traces,
                                    }
                                )
            elif scenario == "MEM":
                for config in ("untraced", "spanline"):
                    self.jobs.append(
                        {
                            "kind": "memory",
                            "scenario": "MEM",
                            "config": config,
                            "round": 0,
                            "n": s.mem_calls,
                            "queue": s.mem_queue,
                            "warmup": s.warmup,
                        }
                    )


def _job_label(job: dict[str, Any]) -> str:
    if job["kind"] == "throughput":
        return f"TW {job['target']} batch {job['batch']} {job['mode']} r{job['round'] + 1}"
    if job["kind"] == "paired":
        return "S1 caller's path (traced client vs its untraced twin, in one process)"
    return f"{job['scenario']} {job['config']} r{job['round'] + 1}"


# --- aggregation ------------------------------------------------------------------------------------


def _median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


@dataclass
class Row:
    scenario: str
    config: str
    runs: list[dict[str, Any]]

    @property
    def ok_runs(self) -> list[dict[str, Any]]:
        return [r for r in self.runs if r.get("ok")]

    def errors(self) -> list[str]:
        return [r.get("error", "?") for r in self.runs if not r.get("ok")]

    def pooled(self) -> list[int]:
        return sorted(x for r in self.ok_runs for x in r["samples_ns"])

    def median_us(self) -> float:
        return _percentile(self.pooled(), 0.5) / 1e3

    def p99_us(self) -> float:
        return _percentile(self.pooled(), 0.99) / 1e3

    def round_medians_us(self) -> list[float]:
        return [statistics.median(r["samples_ns"]) / 1e3 for r in self.ok_runs]

    def cpu_per_trace_us(self) -> float:
        return _median([r["cpu_s"] / r["made"] * 1e6 for r in self.ok_runs])

    def peak_rss(self) -> float:
        return _median([r["peak_rss_mb"] for r in self.ok_runs])

    def rss_growth(self) -> float:
        return _median([r["peak_rss_mb"] - r["start_rss_mb"] for r in self.ok_runs])

    def sum_of(self, key: str) -> int:
        return sum(int(r.get(key, 0)) for r in self.ok_runs)

    def n_desc(self) -> str:
        ns = sorted({r["made"] for r in self.ok_runs})
        return f"{'/'.join(map(str, ns)) or '-'}×{len(self.ok_runs)}"


def _fmt(value: float | None, digits: int = 1, unit: str = "") -> str:
    if value is None or value != value:  # None or NaN
        return "–"
    return f"{value:,.{digits}f}{unit}"


def _fmt_ratio(value: float | None) -> str:
    return "–" if value is None or value != value else f"{value:.3f}×"


SCENARIO_TITLES = {
    "S1": ("S1 sequential sync `messages.create`", "per call"),
    "S2": (
        f"S2 `AsyncAnthropic`, {CONCURRENCY} concurrent calls via `asyncio.gather`",
        "per call (gather wall / calls)",
    ),
    "S3": ("S3 streaming `create(stream=True)`, consumed fully", "per stream event"),
    "S4": (
        "S4 the seed's tool agent (AGENT, 2 CHAT_MODEL, TOOL), 3 agents via `asyncio.gather`",
        "per agent run",
    ),
    "S5": ("S5 burst of calls, then flush", "per call during the burst"),
}

CONFIG_LABELS = {
    "untraced": "untraced",
    "spanline": "spanline",
    NOSTORE: "spanline, store write stubbed (diagnostic)",
    "mlflow_async": "MLflow autolog (async export)",
    "mlflow_sync": "MLflow autolog (sync export)",
}


@dataclass
class Target:
    name: str
    value: str
    status: str  # "met", "not met", or an explanation


class Report:
    def __init__(
        self, sizes: Sizes, results: list[tuple[dict[str, Any], dict[str, Any]]], meta: dict[str, Any]
    ):
        self.sizes = sizes
        self.results = results
        self.meta = meta
        self.targets: list[Target] = []
        self.summary: dict[str, Any] = {}

    def rows(self, scenario: str) -> dict[str, Row]:
        out: dict[str, Row] = {}
        for job, result in self.results:
            if job["kind"] == "scenario" and job["scenario"] == scenario:
                out.setdefault(job["config"], Row(scenario, job["config"], [])).runs.append(result)
        return out

    def _of(self, kind: str) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        return [(j, r) for j, r in self.results if j["kind"] == kind]

    # --- sections -----------------------------------------------------------------------------------

    def render(self) -> str:
        lines: list[str] = []
        m = self.meta
        lines.append(f"# spanline bench ({self.sizes.name})")
        lines.append("")
        lines.append(
            f"- versions: Python {m['python']}, mlflow {m['mlflow']}, anthropic {m['anthropic']}, "
            f"spanline {m['spanline']}, msgspec {m['msgspec']}, httpx2 {m['httpx2']}"
        )
        lines.append(f"- machine: {m['cpu']}, nproc {m['nproc']}, {m['platform']}")
        lines.append(
            f"- fake API: {m.get('fake', '?')}; store: sqlite file per process (a copy of one template)"
        )
        lines.append(
            f"- method: each configuration in its own {m['processes']}, alternated ABCD/DCBA for "
            f"{self.sizes.rounds} rounds (S5: {self.sizes.s5_rounds}); medians and p99 over all rounds' "
            "samples; overhead = median(config) − median(untraced) of the same run; CPU = process CPU "
            "(all threads) from the first timed call until flush returned, per trace made"
        )
        lines.append(f"- wall time of this bench: {m['wall_s']:.0f} s")
        lines.append("")
        for scenario in ("S1", "S2", "S3", "S4", "S5"):
            rows = self.rows(scenario)
            if rows:
                lines += self._scenario_section(scenario, rows)
        if self._of("throughput"):
            lines += self._throughput_section()
        if self._of("memory"):
            lines += self._memory_section()
        lines += self._targets_section()
        return "\n".join(lines) + "\n"

    def _scenario_section(self, scenario: str, rows: dict[str, Row]) -> list[str]:
        title, unit = SCENARIO_TITLES[scenario]
        base = rows.get("untraced")
        base_med = base.median_us() if base and base.ok_runs else None
        out = [f"## {title}", ""]
        header = (
            f"| configuration | n×rounds | median µs ({unit}) | p99 µs | round medians µs | overhead µs | "
            "ratio | CPU µs per trace | peak RSS MB (+growth) |"
        )
        extra_cols = ""
        if scenario == "S2":
            extra_cols = " calls/s | vs untraced |"
        if scenario == "S5":
            extra_cols = " burst s | drain s | stored/made | drain rate traces/s |"
        if scenario in ("S1", "S2", "S3", "S4"):
            extra_cols += " stored/made |"
        out.append(header + extra_cols)
        out.append("|" + "---|" * (header.count("|") - 1 + extra_cols.count("|")))
        self.summary[scenario] = {}
        for config in S1_CONFIGS:
            row = rows.get(config)
            if row is None:
                continue
            if not row.ok_runs:
                out.append(f"| {CONFIG_LABELS[config]} | error: {'; '.join(row.errors())[:300]} |")
                continue
            med, p99 = row.median_us(), row.p99_us()
            over = med - base_med if base_med is not None and config != "untraced" else None
            ratio = med / base_med if base_med and config != "untraced" else None
            cpu = row.cpu_per_trace_us()
            rmeds = row.round_medians_us()
            cells = [
                CONFIG_LABELS[config],
                row.n_desc(),
                _fmt(med),
                _fmt(p99),
                f"{min(rmeds):,.1f}–{max(rmeds):,.1f}",
                _fmt(over, 2) if over is not None else "–",
                _fmt_ratio(ratio),
                _fmt(cpu, 0),
                f"{row.peak_rss():.0f} (+{row.rss_growth():.0f})",
            ]
            summ: dict[str, Any] = {
                "median_us": med,
                "p99_us": p99,
                "round_medians_us": rmeds,
                "overhead_us": over,
                "ratio": ratio,
                "cpu_per_trace_us": cpu,
                "peak_rss_mb": row.peak_rss(),
                "rss_growth_mb": row.rss_growth(),
                "n": [r["made"] for r in row.ok_runs],
            }
            made = row.sum_of("made")
            stored = row.sum_of("stored_total") if config != "untraced" else None
            if scenario == "S2":
                cps = _median([r["calls_per_s"] for r in row.ok_runs])
                base_cps = (
                    _median([r["calls_per_s"] for r in base.ok_runs]) if base and base.ok_runs else None
                )
                summ["calls_per_s"] = cps
                cells += [_fmt(cps, 0), _fmt_ratio(cps / base_cps) if base_cps else "–"]
            if scenario == "S5":
                drain = _median([r["drain_s"] for r in row.ok_runs])
                rates = [
                    (r.get("stored_total", 0) - r.get("stored_at_burst_end", 0)) / r["drain_s"]
                    for r in row.ok_runs
                    if r["drain_s"] > 0 and config != "untraced"
                ]
                rate = _median(rates) if rates else None
                burst = _median([r["calls_s"] for r in row.ok_runs])
                summ.update(drain_s=drain, drain_rate=rate, burst_s=burst, stored=stored, made=made)
                cells += [
                    _fmt(burst, 2),
                    _fmt(drain, 2),
                    f"{stored:,}/{made:,}" if stored is not None else "–",
                    _fmt(rate, 0) if rate is not None else "–",
                ]
            elif config != "untraced":
                summ.update(stored=stored, made=made)
            if scenario in ("S1", "S2", "S3", "S4"):
                if config == "untraced":
                    cells.append("–")
                elif config == NOSTORE:
                    cells.append("– (nothing written)")
                elif scenario == "S3" and config == "spanline":
                    cells.append(f"{stored:,}/{made:,} (not traced yet: passes through)")
                else:
                    cells.append(f"{stored:,}/{made:,}")
            self.summary[scenario][config] = summ
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
        out += self._scenario_notes(scenario, rows)
        return out

    def _scenario_notes(self, scenario: str, rows: dict[str, Row]) -> list[str]:
        notes = []
        if scenario == "S1":
            paired = [r for j, r in self._of("paired") if r.get("ok")]
            if paired:
                p = paired[0]
                over = p["overhead_ns"] / 1e3
                diffs = p["diff_ns"]
                notes.append(
                    f"- caller's path, in one process: a traced client and its untraced twin (the SDK's own "
                    f"functions, patches left in place), {len(diffs)} blocks of {self.sizes.paired_block_calls} "
                    f"calls interleaved ABBA, worker idle: {p['on_median_ns'] / 1e3:,.1f} µs vs "
                    f"{p['off_median_ns'] / 1e3:,.1f} µs per call, overhead {over:,.2f} µs "
                    f"(median of block differences {p['paired_overhead_ns'] / 1e3:,.2f} µs, range "
                    f"{min(diffs) / 1e3:,.1f}…{max(diffs) / 1e3:,.1f} µs). The rows above compare separate "
                    "processes, whose baselines differ by a few µs from layout alone, and carry the worker's "
                    "GIL share while it stores."
                )
                self.summary.setdefault("S1", {})["spanline_caller_path_us"] = over
                self.summary["S1"]["spanline_caller_path_paired_us"] = p["paired_overhead_ns"] / 1e3
        if scenario == "S3":
            notes.append(
                "- spanline does not trace streams yet: `stream=True` passes through untouched, so its "
                "figure is the cost of an inert patch, not of tracing a stream."
            )
            evs = sorted({r.get("events_per_stream") for row in rows.values() for r in row.ok_runs})
            notes.append(f"- events per stream: {', '.join(map(str, evs))}")
        if scenario == "S5":
            ms = rows.get("mlflow_sync")
            if ms and ms.ok_runs:
                notes.append(
                    f"- MLflow sync export: burst reduced to {ms.ok_runs[0]['made']} calls (~26 ms or more "
                    "per call, synchronous); its drain is 0 by construction."
                )
            notes.append(
                "- drain = wall time from the last call's return until flush returned "
                "(MLflow: `mlflow.flush_trace_async_logging()`); drain rate = traces stored during the "
                "drain / drain s."
            )
            per_stored = []
            for config in ("spanline", "mlflow_async"):
                row = rows.get(config)
                if row and row.ok_runs and row.sum_of("stored_total"):
                    cpu = sum(r["cpu_s"] for r in row.ok_runs) / row.sum_of("stored_total") * 1e6
                    per_stored.append(f"{CONFIG_LABELS[config]} {cpu:,.0f} µs")
            if per_stored:
                notes.append(f"- CPU per trace stored (burst + drain): {'; '.join(per_stored)}")
            sp = rows.get("spanline")
            if sp and sp.ok_runs and "stats" in sp.ok_runs[0]:
                st = sp.ok_runs[-1]["stats"]
                notes.append(
                    f"- spanline stats() after the burst: events {st['events_emitted']:,}, traces stored "
                    f"{st['traces_stored']:,}, batches {st['batches']:,}, dropped {st['dropped'] or 0}, "
                    f"queue peak {st['queue_peak']:,}, internal errors {st['internal_errors']}"
                )
        for config, row in rows.items():
            for r in row.ok_runs:
                if not r.get("flushed", True):
                    notes.append(f"- {CONFIG_LABELS[config]}: flush timed out in one round")
                    break
            if row.errors():
                notes.append(
                    f"- {CONFIG_LABELS[config]}: {len(row.errors())} run(s) failed: {row.errors()[0][:400]}"
                )
        return [*notes, ""] if notes else []

    def _throughput_section(self) -> list[str]:
        out = [
            "## Worker throughput (the seed agent's 4-span traces, a ready backlog, then `flush()`)",
            "",
            "| store | batch (traces per `log_spans`) | worker spans/s | raw `log_spans` spans/s (ceiling) | "
            "worker / ceiling | worker CPU µs per span | raw CPU µs per span |",
            "|---|---|---|---|---|---|---|",
        ]
        groups: dict[tuple[str, int], dict[str, list[dict[str, Any]]]] = {}
        for job, result in self._of("throughput"):
            g = groups.setdefault((job["target"], job["batch"]), {"worker": [], "raw": []})
            g[job["mode"]].append(result)
        self.summary["TW"] = {}
        for (target, batch), g in groups.items():
            w = [r for r in g["worker"] if r.get("ok")]
            raw = [r for r in g["raw"] if r.get("ok")]
            if not w or not raw:
                errs = [r.get("error", "?") for r in g["worker"] + g["raw"] if not r.get("ok")]
                out.append(f"| {target} | {batch} | error: {'; '.join(errs)[:300]} |")
                continue
            ws, rs = _median([r["spans_per_s"] for r in w]), _median([r["spans_per_s"] for r in raw])
            wc = _median([r["cpu_s"] / r["spans"] * 1e6 for r in w])
            rc = _median([r["cpu_s"] / r["spans"] * 1e6 for r in raw])
            label = "sqlite (in-process)" if target == "sqlite" else "`mlflow server` (local, 1 worker)"
            out.append(
                f"| {label} | {batch} | {ws:,.0f} | {rs:,.0f} | {ws / rs:.2f} | {wc:,.0f} | {rc:,.0f} |"
            )
            self.summary["TW"][f"{target}/{batch}"] = {"worker": ws, "raw": rs, "ratio": ws / rs}
        out.append("")
        out.append(
            "- worker: spanline's worker thread decodes the queued events, assembles spans and writes them "
            "with `log_spans`; raw: the same traces, folded into MLflow spans beforehand, written with "
            "`log_spans` directly (what the store alone can take)."
        )
        out.append("")
        return out

    def _memory_section(self) -> list[str]:
        out = [
            "## Memory: calls while the store is stalled (a store that blocks)",
            "",
            "| configuration | calls | queue_size | peak RSS MB | RSS growth MB "
            "| RSS at first drop → end MB | events emitted | processed | queued | dropped (queue_full) "
            "| every event accounted |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        self.summary["MEM"] = {}
        for job, r in self._of("memory"):
            config = job["config"]
            if not r.get("ok"):
                out.append(f"| {config} | error: {r.get('error', '?')[:300]} |")
                continue
            growth = r["peak_rss_mb"] - r["rss_start_mb"]
            cells = [
                CONFIG_LABELS[config],
                f"{r['calls']:,}",
                f"{job['queue']:,}" if config == "spanline" else "–",
            ]
            cells += [f"{r['peak_rss_mb']:.0f}", f"{growth:.1f}"]
            if config == "spanline":
                st = r["stats"]
                first = r["rss_at_first_drop_mb"]
                dropped = st["dropped"].get("queue_full", 0)
                made = r["calls"] + r["warmup"]
                accounted = st["events_processed"] + st["queue_depth"] + sum(st["dropped"].values())
                cells += [
                    f"{first:.0f} → {r['rss_end_mb']:.0f}" if first is not None else "no drop",
                    f"{made:,}",
                    f"{st['events_processed']:,}",
                    f"{st['queue_depth']:,}",
                    f"{dropped:,}",
                    "yes" if accounted == made else f"no ({accounted:,} of {made:,})",
                ]
                self.summary["MEM"]["spanline"] = {
                    "peak_rss_mb": r["peak_rss_mb"],
                    "growth_mb": growth,
                    "rss_at_first_drop_mb": first,
                    "rss_end_mb": r["rss_end_mb"],
                    "dropped": dropped,
                    "accounted": accounted == made,
                    "queue": job["queue"],
                }
            else:
                cells += ["–"] * 6
                self.summary["MEM"]["untraced"] = {"peak_rss_mb": r["peak_rss_mb"], "growth_mb": growth}
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
        sp = next((r for j, r in self._of("memory") if j["config"] == "spanline" and r.get("ok")), None)
        if sp:
            pts = ", ".join(f"{p['calls']:,}: {p['rss_mb']:.0f}" for p in sp["checkpoints"])
            out.append(f"- spanline RSS MB by calls made: {pts}")
            queue = next(j["queue"] for j, _ in self._of("memory") if j["config"] == "spanline")
            if sp["rss_at_first_drop_mb"] is not None:
                per_event = (sp["rss_at_first_drop_mb"] - sp["rss_start_mb"]) * 2**20 / queue
                out.append(
                    f"- ≈ {per_event:,.0f} bytes of RSS per queued event "
                    "(RSS at the first drop − RSS at the start, / queue_size)"
                )
            out.append(
                "- the store blocks from its first write (the warm-up's `flush()` times out: "
                f"{'yes' if sp.get('store_stalled') else 'no'}), so the queue is all that can grow."
            )
            out.append("")
        return out

    # --- targets ------------------------------------------------------------------------------------

    def _targets_section(self) -> list[str]:
        t = self.targets
        s = self.summary

        def get(scenario: str, config: str, key: str) -> Any:
            return s.get(scenario, {}).get(config, {}).get(key)

        def status(ok: bool | None) -> str:
            return "–" if ok is None else ("met" if ok else "not met")

        alone = s.get("S1", {}).get("spanline_caller_path_us")
        if alone is not None:
            t.append(
                Target("S1 caller-path overhead median ≤ 5 µs (one process, interleaved)", f"{alone:,.2f} µs",
                       status(alone <= 5))
            )
        over = get("S1", "spanline", "overhead_us")
        if over is not None:
            t.append(Target("  (S1 overhead across processes, worker storing, for reference)", f"{over:,.2f} µs", "–"))
        over3 = get("S3", "spanline", "overhead_us")
        if over3 is not None:
            t.append(
                Target(
                    "S3 overhead ≤ 0.5 µs per stream event",
                    f"{over3:,.3f} µs",
                    "not traced yet (passes through)",
                )
            )
        cps, base_cps = get("S2", "spanline", "calls_per_s"), get("S2", "untraced", "calls_per_s")
        if cps and base_cps:
            t.append(
                Target(
                    "S2 calls/s ≥ 0.97 × untraced",
                    f"{cps / base_cps:.3f}× ({cps:,.0f} vs {base_cps:,.0f})",
                    status(cps / base_cps >= 0.97),
                )
            )
        stored, made = get("S5", "spanline", "stored"), get("S5", "spanline", "made")
        if made:
            t.append(Target("S5 stored == made (spanline)", f"{stored:,}/{made:,}", status(stored == made)))
        rate, mrate = get("S5", "spanline", "drain_rate"), get("S5", "mlflow_async", "drain_rate")
        if rate and mrate:
            t.append(
                Target(
                    "S5 drain ≥ 10× faster than MLflow async export (traces/s while draining)",
                    f"{rate / mrate:,.1f}× ({rate:,.0f} vs {mrate:,.0f} traces/s; drain "
                    f"{get('S5', 'spanline', 'drain_s'):.2f} s vs "
                    f"{get('S5', 'mlflow_async', 'drain_s'):.2f} s)",
                    status(rate / mrate >= 10),
                )
            )
        m_stored, m_made = get("S5", "mlflow_async", "stored"), get("S5", "mlflow_async", "made")
        if m_made:
            t.append(
                Target("  (S5 MLflow async stored/made, for reference)", f"{m_stored:,}/{m_made:,}", "–")
            )
        # S5 is left out: MLflow's async export drops traces there, so its CPU per trace *made* is not
        # comparable (the S5 notes give CPU per trace stored).
        for scenario in ("S1", "S2", "S4"):
            c, mc = (
                get(scenario, "spanline", "cpu_per_trace_us"),
                get(scenario, "mlflow_async", "cpu_per_trace_us"),
            )
            if c and mc:
                t.append(
                    Target(
                        f"{scenario} total CPU per traced call ≤ 1/10 of MLflow async autolog",
                        f"{c / mc:.3f} ({c:,.0f} vs {mc:,.0f} µs)",
                        status(c / mc <= 0.1),
                    )
                )
        for key, v in s.get("TW", {}).items():
            store, batch = key.split("/")
            t.append(
                Target(
                    f"worker throughput ≥ 80% of raw `log_spans` ({store}, batch {batch})",
                    f"{v['ratio']:.0%} ({v['worker']:,.0f} vs {v['raw']:,.0f} spans/s)",
                    status(v["ratio"] >= 0.8),
                )
            )
        mem = s.get("MEM", {}).get("spanline")
        if mem:
            first = mem["rss_at_first_drop_mb"]
            bounded = first is not None and mem["rss_end_mb"] - first <= 5
            t.append(
                Target(
                    f"MEM: RSS flat once the queue ({mem['queue']:,}) is full (≤ 5 MB more until the end)",
                    f"{first:.0f} → {mem['rss_end_mb']:.0f} MB"
                    if first is not None
                    else "queue never filled",
                    status(bounded if first is not None else None),
                )
            )
            t.append(
                Target(
                    "MEM: drops counted in stats() (processed + queued + dropped == emitted)",
                    f"{mem['dropped']:,} dropped (queue_full)",
                    status(mem["accounted"]),
                )
            )
        out = ["## Targets (facts of this run, not test assertions)", "", "| target | this run | status |"]
        out.append("|---|---|---|")
        out += [f"| {x.name} | {x.value} | {x.status} |" for x in t]
        out.append("")
        return out


# --- meta -------------------------------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in ("mlflow", "anthropic", "spanline", "msgspec", "httpx2"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "?"
    return out


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Target):
        return obj.__dict__
    return str(obj)


def _strip_samples(result: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in result.items() if k != "samples_ns"}
    samples = sorted(result.get("samples_ns") or [])
    if samples:
        out["samples"] = {
            "n": len(samples),
            "median_ns": _percentile(samples, 0.5),
            "p90_ns": _percentile(samples, 0.9),
            "p99_ns": _percentile(samples, 0.99),
            "min_ns": samples[0],
            "max_ns": samples[-1],
        }
    return out


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="spanline bench",
        description="Benchmark spanline against MLflow's own Anthropic autolog (interleaved, one process per "
        "configuration) and print a markdown table.",
    )
    parser.add_argument("--quick", action="store_true", help="small counts, 2 rounds (about 3 minutes)")
    parser.add_argument("--json", metavar="PATH", help="also write every figure (and per-run summaries) here")
    parser.add_argument(
        "--scenarios",
        default=",".join(SCENARIOS),
        help=f"comma-separated subset of {','.join(SCENARIOS)} (default: all)",
    )
    parser.add_argument("--rounds", type=int, default=None, help="override the number of rounds")
    parser.add_argument("--no-server", action="store_true", help="skip the real `mlflow server` part of TW")
    parser.add_argument(
        "--spawn", action="store_true", help="start a fresh interpreter per process instead of forking"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (stores and logs)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    # Internal: the per-process runners.
    parser.add_argument("--fork-server", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--job", help=argparse.SUPPRESS)
    parser.add_argument("--save-raw", metavar="PATH", help=argparse.SUPPRESS)  # every sample, for --render
    parser.add_argument("--render", metavar="PATH", help=argparse.SUPPRESS)  # print a --save-raw run again
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """``spanline bench``: run the plan, print the markdown table; the exit code is 0 unless a run failed."""
    args = _parse_args(argv)
    if args.fork_server:
        return _fork_server_main()
    if args.job:
        _child_main(json.loads(args.job))
        return 0  # not reached: the child leaves through os._exit
    if args.render:
        return _render_saved(args.render, args.json)

    os.environ["MLFLOW_MODEL_CATALOG_URI"] = ""
    sizes = QUICK if args.quick else FULL
    if args.rounds:
        sizes = Sizes(**{**sizes.__dict__, "rounds": args.rounds})
    scenarios = [s.strip().upper() for s in args.scenarios.split(",") if s.strip()]
    unknown = [s for s in scenarios if s not in SCENARIOS]
    if unknown:
        print(
            f"spanline bench: unknown scenario(s) {', '.join(unknown)}; known: {', '.join(SCENARIOS)}",
            file=sys.stderr,
        )
        return 2
    plan = Plan(sizes, scenarios)
    plan.build(server=not args.no_server)

    started = time.monotonic()
    workdir = tempfile.mkdtemp(prefix="spanline-bench-")
    results: list[tuple[dict[str, Any], dict[str, Any]]] = []
    progress = Progress(len(plan.jobs) + 1, enabled=not args.no_progress)
    runner = Runner(workdir, spawn=args.spawn)
    failed = False
    try:
        template = os.path.join(workdir, "template.db")
        progress.step("creating the template sqlite store")
        init = runner.run({"kind": "init_db", "uri": f"sqlite:///{template}"}, timeout=300)
        progress.advance()
        if not init.get("ok"):
            raise RuntimeError(f"could not create the template store: {init.get('error')}")
        server_jobs = [j for j in plan.jobs if j.get("target") == "server"]
        server_ctx = mlflow_server(workdir) if server_jobs else contextlib.nullcontext(None)
        with server_ctx as server_url:
            for i, job in enumerate(plan.jobs):
                progress.step(_job_label(job))
                if job.get("target") == "server":
                    job["uri"] = server_url
                else:
                    db = os.path.join(workdir, f"store{i:03d}.db")
                    shutil.copyfile(template, db)
                    job["uri"] = f"sqlite:///{db}"
                result = runner.run(job)
                failed |= not result.get("ok")
                results.append((job, result))
                progress.advance()
                if job["kind"] == "scenario" and result.get("ok"):
                    with contextlib.suppress(OSError):
                        os.remove(job["uri"][len("sqlite:///") :])
    finally:
        runner.close()
        progress.finish()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)

    fake = next((r.get("fake") for _, r in results if r.get("fake")), "?")
    meta = {
        **_versions(),
        "cpu": _cpu_model(),
        "nproc": os.cpu_count(),
        "platform": f"{platform.system()} {platform.release()}",
        "processes": "process (spawned)" if args.spawn else "process (forked from a preloaded interpreter)",
        "wall_s": time.monotonic() - started,
        "fake": fake,
        "mode": sizes.name,
        "workdir": workdir if args.keep else None,
    }
    if args.save_raw:
        with open(args.save_raw, "w") as f:
            json.dump({"meta": meta, "sizes": sizes.__dict__, "results": results}, f)
    return _print_report(sizes, results, meta, args.json, failed)


def _print_report(
    sizes: Sizes,
    results: list[tuple[dict[str, Any], dict[str, Any]]],
    meta: dict[str, Any],
    json_path: str | None,
    failed: bool,
) -> int:
    report = Report(sizes, results, meta)
    print(report.render())
    if json_path:
        payload = {
            "meta": meta,
            "sizes": sizes.__dict__,
            "summary": report.summary,
            "targets": report.targets,
            "runs": [{"job": j, "result": _strip_samples(r)} for j, r in results],
        }
        with open(json_path, "w") as f:
            json.dump(payload, f, indent=1, default=_json_default)
    return 1 if failed else 0


def _render_saved(path: str, json_path: str | None) -> int:
    """Print the report of a run saved with ``--save-raw`` (re-rendering without re-running)."""
    with open(path) as f:
        saved = json.load(f)
    sizes = Sizes(**{k: tuple(v) if k == "tw_batches" else v for k, v in saved["sizes"].items()})
    results = [(j, r) for j, r in saved["results"]]
    failed = any(not r.get("ok") for _, r in results)
    return _print_report(sizes, results, saved["meta"], json_path, failed)


if __name__ == "__main__":
    sys.exit(main())
