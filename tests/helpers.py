"""Reading back what MLflow stored, for assertions."""

from __future__ import annotations

import json
from typing import Any

import mlflow


def traces_in(experiment_id: str) -> list:
    """Every trace stored in an experiment, oldest first, with its spans (MLflow's async export flushed)."""
    mlflow.flush_trace_async_logging()
    found = mlflow.search_traces(
        experiment_ids=[experiment_id], return_type="list", order_by=["timestamp_ms ASC"]
    )
    return [mlflow.get_trace(t.info.trace_id) for t in found]


def root_of(trace) -> Any:
    roots = [s for s in trace.data.spans if s.parent_id is None]
    assert len(roots) == 1, [s.name for s in roots]
    return roots[0]


def children_of(trace, span) -> list:
    return sorted((s for s in trace.data.spans if s.parent_id == span.span_id), key=lambda s: s.start_time_ns)


def attr_json(span, key: str) -> Any:
    """A span attribute as MLflow stored it (JSON text), parsed."""
    raw = span.to_dict()["attributes"].get(key)
    return None if raw is None else json.loads(raw)


def token_usage(trace) -> dict | None:
    raw = trace.info.trace_metadata.get("mlflow.trace.tokenUsage")
    return None if raw is None else json.loads(raw)
