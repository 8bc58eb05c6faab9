"""The store paths: ``log_spans`` against the bulk path (pipeline/bulkstore.py), through spanline's sink.

Each round writes a fresh copy (new trace ids, a new experiment) of 200 of the seed agent's traces (4 spans
each) with ``MlflowSink.write``, 200 per call as the writer does, into the session's sqlite store; with
``SPANLINE_BENCH_STORE=<URI>`` into that store instead (e.g. a PostgreSQL). Compare the two members of the
group. pytest-benchmark runs one member's rounds after the other's; for the paths alternated round by round,
with CPU per trace (and a local PostgreSQL's), run ``spanline bench --store URI --paths``.
"""

from __future__ import annotations

import gc
import os
from typing import Any

import pytest

TRACES = 200


@pytest.fixture(scope="module")
def agent_units(clients: tuple[Any, Any]) -> list:
    import spanline
    from spanline.bench.storepaths import _agent_units

    spanline.autolog(silent=True, durability="memory")
    try:
        return _agent_units(clients[0], TRACES)
    finally:
        spanline.autolog(disable=True, silent=True, durability="page_cache")


@pytest.mark.parametrize("path", ["log_spans", "bulk"])
def test_store_path(benchmark: Any, tracking_store: str, agent_units: list, path: str) -> None:
    import mlflow

    from spanline.bench.storepaths import _experiment, _fresh, _write

    uri = os.environ.get("SPANLINE_BENCH_STORE", tracking_store)
    mlflow.set_tracking_uri(uri)
    benchmark.group = f"store path, {uri.split(':', 1)[0]} ({TRACES} traces of 4 spans, 200 per sink call)"
    samples: list[dict[str, float]] = []

    def setup() -> tuple[tuple, dict]:
        units = _fresh(agent_units, uri, _experiment())
        gc.collect()
        return (units,), {}

    benchmark.pedantic(lambda units: samples.append(_write(uri, units, 200, path)), setup=setup, rounds=3,
                       iterations=1, warmup_rounds=1)
    benchmark.extra_info["cpu_ms_per_trace"] = sorted(s["cpu_ms"] for s in samples)[len(samples) // 2]
    mlflow.set_tracking_uri(tracking_store)
