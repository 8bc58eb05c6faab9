"""The caller-path budget of #2: what spanline adds to a non-streaming ``messages.create``, in one process.

A traced client is compared with its untraced twin (``spanline.bench.untraced_twin``: the SDK's own
functions on subclasses, spanline's patches left in place), in blocks of calls interleaved ABBA, with the
worker idle. Nothing is patched or unpatched during the run: rewriting a class attribute resets CPython's
specialised bytecode, which made toggled comparisons swing by several µs.

One pytest-benchmark round is one pair of blocks, so the table's times are per pair; the answer is in
``extra_info`` (``--benchmark-json``) and printed with ``-s``: per-call medians of both clients, their
difference, and the median of the block-pair differences.

``test_floor`` puts the cheapest capture that can be written in Python at the same two places
(``spanline.bench.floor_client``: a wrapper on ``Messages.create`` and one on ``_process_response`` that
keeps the response, two clock reads, one id, and one msgpack-encoded tuple of the two bodies appended to a
deque). No checks, no context, no sampling, no failure handling, wrong under threads and tasks: it is not
spanline, it shows where the floor is. ``spanline bench`` measures the same three clients in one run.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterator
from typing import Any

import pytest
from _fake import CHAT_KWARGS

BLOCKS = 60
CALLS = 100


@pytest.fixture
def traced_and_twin() -> Iterator[tuple[Any, Any]]:
    import spanline
    from spanline.bench import fake_clients, untraced_twin

    spanline.autolog(silent=True, queue_size=10**7, batch_size=10**7, flush_interval=3600.0)
    yield fake_clients()[0], untraced_twin(fake_clients()[0])
    assert spanline.flush(timeout=300), "spanline.flush timed out after the benchmark"
    spanline.autolog(disable=True, silent=True)


def _measure(benchmark: Any, name: str, traced: Any, untraced: Any) -> None:
    from spanline.bench import interleaved_overhead

    for _ in range(50):
        traced.messages.create(**CHAT_KWARGS)
        untraced.messages.create(**CHAT_KWARGS)
    pairs: list[dict[str, Any]] = []
    benchmark.group = "S1 caller's path: one pair of interleaved blocks (see extra_info)"
    benchmark.pedantic(lambda: pairs.append(interleaved_overhead(traced, untraced, 1, CALLS)), rounds=BLOCKS)
    # Pool the blocks of all rounds, with the same medians interleaved_overhead takes of its own.
    on = statistics.median(x for p in pairs for x in p["samples_ns"][True])
    off = statistics.median(x for p in pairs for x in p["samples_ns"][False])
    info = {
        "traced_median_us": on / 1e3,
        "untraced_median_us": off / 1e3,
        "overhead_us": (on - off) / 1e3,
        "paired_overhead_us": statistics.median(d for p in pairs for d in p["diff_ns"]) / 1e3,
        "blocks": BLOCKS,
        "calls_per_block": CALLS,
    }
    benchmark.extra_info.update(info)
    print(f"\n{name}: " + ", ".join(f"{k} {v:,.2f}" for k, v in info.items()))


def test_spanline(benchmark: Any, traced_and_twin: tuple[Any, Any]) -> None:
    """spanline's ``messages.create`` against the SDK as shipped."""
    _measure(benchmark, "spanline", *traced_and_twin)


def test_floor(benchmark: Any) -> None:
    """The floor: the least any Python-level capture of both bodies could add (see the module docstring)."""
    from spanline.bench import fake_clients, floor_client

    floor, items = floor_client(fake_clients()[0])
    _measure(benchmark, "floor", floor, fake_clients()[0])
    assert len(items) > BLOCKS * CALLS
