"""The caller's path alone, in one process: what spanline adds to a ``messages.create`` the caller waits for.

Three clients on the same fake API, in one process, called in blocks interleaved ABC / CBA with the worker
idle: the *untraced twin* (the SDK's own functions on subclasses, spanline's patches left in place), the
*floor* (the cheapest capture of both bodies a Python-level patch can do) and spanline's traced client.
The twin is the baseline; the floor says how much of spanline's figure any Python patch would cost anyway.
Nothing is patched or unpatched mid-run: rewriting a class attribute resets CPython's specialised bytecode
at every call site that reads it, which made toggled comparisons swing by several µs either way.
"""

from __future__ import annotations

import statistics
import time
from collections import deque
from typing import Any

from .workload import CHAT_KWARGS, fake_clients


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


def floor_client(client: Any) -> tuple[Any, deque[bytes]]:
    """``client`` turned into the *floor*: the least any Python-level capture of both bodies could add.

    A wrapper on ``Messages.create`` and one on ``_process_response`` that keeps the response, two clock
    reads, one id, and one msgpack-encoded tuple of the two bodies appended to a deque (returned, so a
    caller can check it grew). No checks, no context, no sampling, no failure handling, wrong under
    threads and tasks: it is not a tracer, it shows where the floor is. Like the twin, it sits on
    subclasses of the SDK's own functions, so spanline's patches can stay in place beside it.
    """
    import msgspec
    from anthropic._base_client import SyncAPIClient
    from anthropic.resources.messages import Messages

    from spanline.patches import original

    items: deque[bytes] = deque()
    encode = msgspec.msgpack.Encoder().encode
    ids = iter(range(1, 10**12)).__next__
    last: list[Any] = [None]
    create = original(Messages, "create")
    process_response = original(SyncAPIClient, "_process_response")

    def floor_process_response(self: Any, *args: Any, **kwargs: Any) -> Any:
        last[0] = kwargs["response"]
        return process_response(self, *args, **kwargs)

    def floor_create(self: Any, *args: Any, **kwargs: Any) -> Any:
        start = time.time_ns()
        result = create(self, *args, **kwargs)
        end = time.time_ns()
        span = ids()
        response = last[0]
        items.append(encode(("c", span, span, 0, span, "Messages.create", "messages", start, end,
                             response.request.content, response.content, result._request_id)))
        return result

    client.__class__ = type(
        f"Floor{type(client).__name__}", (type(client),), {"_process_response": floor_process_response}
    )
    client.messages.__class__ = type("FloorMessages", (Messages,), {"create": floor_create})
    return client, items


def interleaved_blocks(clients: dict[str, Any], blocks: int, calls: int) -> dict[str, dict[str, list[int]]]:
    """Blocks of ``calls`` sequential ``messages.create`` on each client in turn, the order reversed every
    other block (A B C, then C B A), so each client's average position in time is the same.

    Returns ``samples_ns`` (every call's wall time, by client) and ``block_medians_ns`` (each block's
    median, by client: block ``i`` of two clients are adjacent in time, so their difference cancels slow
    drifts of a shared machine)."""
    clock = time.perf_counter_ns
    names = list(clients)
    samples: dict[str, list[int]] = {name: [] for name in names}
    medians: dict[str, list[int]] = {name: [] for name in names}
    for b in range(blocks):
        for name in names if b % 2 == 0 else reversed(names):
            create = clients[name].messages.create
            block = [0] * calls
            for i in range(calls):
                t = clock()
                create(**CHAT_KWARGS)
                block[i] = clock() - t
            samples[name] += block
            medians[name].append(statistics.median(block))
    return {"samples_ns": samples, "block_medians_ns": medians}


def interleaved_overhead(traced: Any, untraced: Any, blocks: int, calls: int) -> dict[str, Any]:
    """Blocks of ``calls`` sequential ``messages.create`` on a traced client and on its untraced twin,
    alternating which goes first (ABBA). Per-call medians over all blocks, and each block pair's
    difference of medians (adjacent in time, so slow drifts of a shared machine cancel)."""
    run = interleaved_blocks({"traced": traced, "untraced": untraced}, blocks, calls)
    samples, medians = run["samples_ns"], run["block_medians_ns"]
    diffs = [a - b for a, b in zip(medians["traced"], medians["untraced"], strict=True)]
    on, off = statistics.median(samples["traced"]), statistics.median(samples["untraced"])
    return {
        "on_median_ns": on,
        "off_median_ns": off,
        "overhead_ns": on - off,
        "diff_ns": diffs,
        "paired_overhead_ns": statistics.median(diffs),
        "samples_ns": {True: samples["traced"], False: samples["untraced"]},
    }


def run_paired_job(job: dict[str, Any]) -> dict[str, Any]:
    """The caller's path alone, in one process: spanline's traced client and the floor against the untraced
    twin, interleaved, with the worker idle (no batch threshold is reached and its interval is long), so
    the differences are what the wrappers add to the caller and nothing the worker takes from it."""
    import spanline

    spanline.autolog(silent=True, queue_size=10**7, batch_size=10**7, flush_interval=3600.0)
    clients = {
        "untraced": untraced_twin(fake_clients()[0]),
        "floor": floor_client(fake_clients()[0])[0],
        "spanline": fake_clients()[0],
    }
    # A longer warm-up than the scenarios': a forked child pays copy-on-write faults on the pages it
    # first writes, and those fall unevenly on the clients until all have run a while.
    for _ in range(10 * job["warmup"]):
        for client in clients.values():
            client.messages.create(**CHAT_KWARGS)
    run = interleaved_blocks(clients, job["blocks"], job["n"])
    samples, medians = run["samples_ns"], run["block_medians_ns"]
    median = {name: statistics.median(samples[name]) for name in clients}
    result: dict[str, Any] = {"median_ns": median, "blocks": job["blocks"], "calls_per_block": job["n"]}
    for name in ("floor", "spanline"):
        diffs = [a - b for a, b in zip(medians[name], medians["untraced"], strict=True)]
        result[name] = {
            "overhead_ns": median[name] - median["untraced"],
            "paired_overhead_ns": statistics.median(diffs),
            "diff_range_ns": [min(diffs), max(diffs)],
        }
    result["samples_ns_by_client"] = samples  # for the picture; the JSON keeps a summary only
    result["block_medians_ns"] = medians
    result["events_queued"] = spanline.stats().queue_depth
    return result
