"""The caller's path alone, in one process: a traced client against its untraced twin (the SDK's own
functions on subclasses, spanline's patches left in place), blocks of calls interleaved ABBA, worker idle."""

from __future__ import annotations

import statistics
import time
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
