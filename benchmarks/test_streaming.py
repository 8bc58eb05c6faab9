"""The streaming budget of #10: what spanline adds per SSE event, and to a streamed call's start and end.

A traced client is compared with its untraced twin (``spanline.bench.untraced_twin``: the SDK's own functions,
spanline's patches left in place), in blocks of calls interleaved ABBA, with the worker idle, as
``test_caller_path.py`` does for non-streaming calls. Each call is ``create(stream=True)`` read to the end.

The backend serves a pre-encoded SSE body, one network chunk per event (as the API flushes them), with
``SHORT`` or ``LONG`` text deltas. Per event, the added cost is the slope between the two lengths; a streamed
call's start and end cost is the short stream's added cost minus its events' share. The non-streaming
call's added cost is measured in the same run for the comparison. Run with ``-s`` to see the figures:

    python -m pytest benchmarks/test_streaming.py --benchmark-only -q -s
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterator
from typing import Any

import pytest
from _fake import CHAT_KWARGS, MODEL

SHORT, LONG = 1, 400  # text deltas per stream
STREAM_KWARGS = {"model": MODEL, "max_tokens": 4096, "stream": True,
                 "messages": [{"role": "user", "content": "Tell me a long story."}]}
BLOCKS = 20
CALLS = {SHORT: 60, LONG: 8}


def _sse_client(deltas: int) -> Any:
    """A real ``anthropic.Anthropic`` whose every response is one SSE body with ``deltas`` text deltas."""
    import httpx2

    from spanline.testing import FakeAnthropicAPI, wire

    api = FakeAnthropicAPI(record_requests=False)
    message = api.build_message({**STREAM_KWARGS, "stream": False})
    message["content"] = [{"citations": None, "text": "lorem ipsum dolor " * deltas, "type": "text"}]
    body = list(wire.stream_events(message))
    headers = {"request-id": "req_bench", "content-type": "text/event-stream; charset=utf-8"}

    def handle(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, headers=headers, stream=wire.SSEStream(lambda: iter(body)))

    return api.client(http_client=httpx2.Client(transport=httpx2.MockTransport(handle))), len(body)


def _read(client: Any) -> None:
    for _ in client.messages.create(**STREAM_KWARGS):
        pass


def _read_bytes(client: Any) -> None:
    # The body's bytes only, through the same recorder, without the SDK's ~30 µs parse of each event, whose
    # noise would otherwise drown a fraction of a µs.
    for _ in client.messages.create(**STREAM_KWARGS).response.iter_bytes():
        pass


def _chat(client: Any) -> None:
    client.messages.create(**CHAT_KWARGS)


def _interleaved(traced: Any, untraced: Any, call: Any, calls: int, blocks: int) -> dict[str, float]:
    """Blocks of ``calls`` calls on each client, ABBA; per-call medians and the median block-pair difference.
    Times are the calling thread's CPU time: the machine is shared, and the worker sleeps meanwhile."""
    clock = time.thread_time_ns
    samples: dict[bool, list[int]] = {True: [], False: []}
    diffs = []
    for b in range(blocks):
        order = ((True, traced), (False, untraced)) if b % 2 == 0 else ((False, untraced), (True, traced))
        medians = {}
        for is_traced, client in order:
            block = []
            for _ in range(calls):
                t = clock()
                call(client)
                block.append(clock() - t)
            samples[is_traced] += block
            medians[is_traced] = statistics.median(block)
        diffs.append(medians[True] - medians[False])
    return {
        "traced_us": statistics.median(samples[True]) / 1e3,
        "untraced_us": statistics.median(samples[False]) / 1e3,
        "added_us": statistics.median(diffs) / 1e3,
    }


@pytest.fixture
def spanline_idle() -> Iterator[None]:
    import spanline

    spanline.autolog(silent=True, queue_size=10**7, batch_size=10**7, flush_interval=3600.0)
    yield
    assert spanline.flush(timeout=600), "spanline.flush timed out after the benchmark"
    spanline.autolog(disable=True, silent=True)


def test_streaming_budget(benchmark: Any, spanline_idle: None) -> None:
    from spanline.bench import fake_clients, untraced_twin

    (short, short_events), (long, long_events) = _sse_client(SHORT), _sse_client(LONG)
    short_twin, long_twin = untraced_twin(_sse_client(SHORT)[0]), untraced_twin(_sse_client(LONG)[0])
    pairs = {
        "short": (short, short_twin, _read, CALLS[SHORT]),
        "long": (long, long_twin, _read, CALLS[LONG]),
        "short_bytes": (short, short_twin, _read_bytes, CALLS[SHORT]),
        "long_bytes": (long, long_twin, _read_bytes, CALLS[SHORT]),
        "chat": (fake_clients()[0], untraced_twin(fake_clients()[0]), _chat, CALLS[SHORT]),
    }
    for traced, untraced, call, _ in pairs.values():  # warm up
        for _ in range(20):
            call(traced)
            call(untraced)
    results: dict[str, list[dict[str, float]]] = {name: [] for name in pairs}

    def one_round() -> None:
        for name, (traced, untraced, call, calls) in pairs.items():
            results[name].append(_interleaved(traced, untraced, call, calls, 2))

    benchmark.group = "streaming: one round of ABBA blocks (short, long, non-streaming); see extra_info"
    benchmark.pedantic(one_round, rounds=BLOCKS)
    med = {name: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for name, rs in results.items()}
    span = long_events - short_events
    per_event_us = (med["long_bytes"]["added_us"] - med["short_bytes"]["added_us"]) / span
    per_event_sdk_us = (med["long"]["added_us"] - med["short"]["added_us"]) / span
    start_end_us = med["short"]["added_us"] - per_event_us * short_events
    info = {
        "events_short": short_events,
        "events_long": long_events,
        **{f"{name}_{k}": v for name, m in med.items() for k, v in m.items()},
        "per_event_added_us": per_event_us,
        "per_event_added_us_through_the_sdk": per_event_sdk_us,
        "stream_start_end_added_us": start_end_us,
        "non_streaming_added_us": med["chat"]["added_us"],
        "start_end_vs_non_streaming": start_end_us / med["chat"]["added_us"],
    }
    benchmark.extra_info.update(info)
    print("\n" + "\n".join(f"  {k}: {v:,.3f}" for k, v in info.items()))


def test_worker_assembly(benchmark: Any) -> None:
    """The worker's side, for the record: folding a long stream's bytes into its message (µs per event)."""
    from spanline.pipeline.streams import StreamState

    from spanline.testing import FakeAnthropicAPI, wire

    api = FakeAnthropicAPI(record_requests=False)
    message = api.build_message({**STREAM_KWARGS, "stream": False})
    message["content"] = [{"citations": None, "text": "lorem ipsum dolor " * LONG, "type": "text"}]
    body = list(wire.stream_events(message))
    times = list(range(len(body)))

    def fold() -> None:
        state = StreamState(b"{}", "req", "", 0)
        state.feed(body, times)
        state.finish()
        state.attributes("completed", False, _policy())

    benchmark.group = "streaming: worker"
    benchmark(fold)
    benchmark.extra_info["us_per_event"] = benchmark.stats.stats.median * 1e6 / len(body)
    print(f"\n  worker assembly: {benchmark.extra_info['us_per_event']:.2f} µs per SSE event ({len(body)} events)")


def _policy() -> Any:
    from spanline.pipeline.policy import ContentPolicy

    return ContentPolicy()


# --- the same work in a tight loop: start and end of a streamed call against a non-streaming call's record ---
# The queue hands the GIL over (``time.sleep(0)``) on every 256th event; on a loaded machine that yield costs
# milliseconds and would dominate both figures, so each round empties the queue before it gets there.

LOOP = 100  # calls per round; the queue is emptied after each, so it never reaches its every-256th-event yield
ROUNDS = 300


@pytest.fixture
def recorded_calls(spanline_idle: None) -> Iterator[dict[str, Any]]:
    """A finished non-streaming call and a streamed one, each with what spanline's recording reads of it."""
    from spanline.bench import fake_clients

    chat = fake_clients()[0]
    slot: list[Any] = []
    original = type(chat)._process_response

    def keep(self: Any, *args: Any, **kwargs: Any) -> Any:
        slot.append(kwargs["response"])
        return original(self, *args, **kwargs)

    type(chat)._process_response = keep  # the capture seam, as http_capture's (spanline's is bypassed below)
    try:
        message = chat.messages.with_raw_response.create(**CHAT_KWARGS).parse()
        client = _sse_client(SHORT)[0]
        stream = client.messages.create(**STREAM_KWARGS)
    finally:
        type(chat)._process_response = original
    chunks = list(stream.response.iter_bytes())
    yield {"chat": chat, "message": message, "chat_slot": [slot[0]], "stream": stream, "chunks": chunks,
           "stream_resource": client.messages}


def test_start_end_vs_record(benchmark: Any, recorded_calls: dict[str, Any]) -> None:
    """The budget "a streamed call's start and end cost no more than a non-streaming call's", in one run.

    Non-streaming: what spanline does after the call returns (``record.record``: one ``ApiCall``, encoded).
    Streamed: what it does after the call returns (``stream_recorder.opened``: the deferred ``StreamStart``, the
    recorder on the response's body) and after the last chunk: ``completed`` (the end of the body, then the SDK's
    ``close()``), or ``closed`` (the application closes the stream: ``close()`` alone), and the recorder's
    release with the response. ``close()`` is measured without closing the wrapped body, which the untraced call
    closes too. The chunks' appends are per-chunk costs (``test_recorder_per_chunk``): none here.
    Rounds of LOOP calls of each, interleaved; the minimum per call.
    Also reported: what the worker then spends encoding the deferred start and end (off the caller's path).
    """
    from spanline.patches import record as recording
    from spanline.patches import stream_recorder
    from spanline.pipeline import events

    from spanline import _runtime

    chat, message, chat_slot = recorded_calls["chat"], recorded_calls["message"], recorded_calls["chat_slot"]
    stream, chunks = recorded_calls["stream"], recorded_calls["chunks"]
    response, times = stream.response, list(range(len(chunks)))
    body = response.stream
    chat_kwargs, stream_kwargs = dict(CHAT_KWARGS), dict(STREAM_KWARGS)
    record, opened = recording.record, stream_recorder.opened
    names, surfaces = recording.span_names, recording.surfaces_by_client
    chat_resource, stream_resource = chat.messages, recorded_calls["stream_resource"]
    stream_slot = [response]
    items = _runtime.pipeline.queue.items

    def non_streaming() -> None:
        for _ in range(LOOP):
            record(chat_resource, chat_kwargs, None, 0, chat_slot, message)

    def streamed(completed: bool) -> None:
        for _ in range(LOOP):
            opened(stream_resource, stream_kwargs, None, 0, stream_slot, stream, names, surfaces)
            recorder = response.stream
            if completed:
                recorder._end("completed")  # what the end of the body does
            if not recorder.ended:  # what ``close()`` does besides closing the body (the SDK's cost, untraced too)
                recorder._end(None)
            response.stream = body  # the recorder is released, as with the response

    runs = {"record": non_streaming, "completed": lambda: streamed(True), "closed": lambda: streamed(False)}
    best = dict.fromkeys(runs, float("inf"))

    def one_round() -> None:
        for name, run in runs.items():
            t = time.perf_counter_ns()
            run()
            # Emptied before the queue's every-256th-event yield (see above), and timed: what the calls queued is
            # freed here, as the worker frees it once done. A streamed call's deferred end holds its recorder, so
            # the recorder's release (its ``__del__``) is counted whichever thread lets go of it last.
            items.clear()
            best[name] = min(best[name], (time.perf_counter_ns() - t) / LOOP)

    benchmark.group = f"streaming: start+end vs record, x{LOOP} each"
    benchmark.pedantic(one_round, rounds=ROUNDS)
    # The worker's side of the deferred events: encoding one stream's start and end.
    opened(stream_resource, stream_kwargs, None, 0, stream_slot, stream, names, surfaces)
    recorder = response.stream
    recorder.chunks.extend(chunks)
    recorder.times.extend(times)
    recorder._end("completed")
    response.stream = body
    deferred = list(items)
    items.clear()
    worker = float("inf")
    for _ in range(ROUNDS):
        t = time.perf_counter_ns()
        for _ in range(LOOP):
            for item in deferred:
                events.encode_deferred(item)
        worker = min(worker, (time.perf_counter_ns() - t) / LOOP)
    info = {
        "record_ns": best["record"],
        "start_end_completed_ns": best["completed"],
        "start_end_closed_ns": best["closed"],
        "ratio_completed": best["completed"] / best["record"],
        "ratio_closed": best["closed"] / best["record"],
        "worker_encodes_start_end_ns": worker,
    }
    benchmark.extra_info.update(info)
    print("\n" + "\n".join(f"  {k}: {v:,.2f}" for k, v in info.items()))


def test_recorder_per_chunk(benchmark: Any) -> None:
    """The recorder alone, per network chunk: iterating a body through it against iterating the body itself,
    interleaved, in the calling thread's CPU time (the StreamChunk batches encoded, the queue stubbed)."""
    from spanline.patches.stream_recorder import SyncRecorder

    from spanline import _runtime

    chunks = [b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0}\n\n'] * 1000

    class Body:
        def __iter__(self) -> Iterator[bytes]:
            return iter(chunks)

        def close(self) -> None:
            pass

    def plain() -> None:
        for _ in Body():
            pass

    def recorded() -> None:
        recorder = SyncRecorder(Body(), 1, 1)
        for _ in recorder:
            pass

    samples: dict[str, list[float]] = {"plain": [], "recorded": []}

    def one_round() -> None:
        for name, run in (("plain", plain), ("recorded", recorded), ("recorded", recorded), ("plain", plain)):
            t = time.thread_time_ns()
            run()
            samples[name].append((time.thread_time_ns() - t) / len(chunks))

    emit = _runtime.pipeline.emit
    _runtime.pipeline.emit = lambda event: None
    try:
        benchmark.group = "streaming: recorder, 1000 chunks"
        benchmark.pedantic(one_round, rounds=200)
    finally:
        _runtime.pipeline.emit = emit
    added = statistics.median(samples["recorded"]) - statistics.median(samples["plain"])
    benchmark.extra_info["added_ns_per_chunk"] = added
    print(f"\n  recorder: {added:.0f} ns added per chunk")
