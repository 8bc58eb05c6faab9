"""Where a new span hangs: the current-span ContextVar, id allocation, and joining MLflow's own spans.

In: the caller's thread, at every span start. Out: a ``Parent`` (or None for a new trace) and fresh ids.

One ContextVar holds the current spanline span, so nesting follows ``await``, tasks (asyncio and trio
copy the context into each task), and threads given ``contextvars.copy_context()``. Span ids come from a
per-process counter with a random base drawn at import and again in a forked child, so allocating one is a
``next()`` and never a syscall. A trace is numbered by its root span's id.
"""

from __future__ import annotations

import itertools
import os
import random
from collections.abc import Callable
from contextvars import ContextVar
from typing import NamedTuple

_MASK64 = (1 << 64) - 1


class Parent(NamedTuple):
    """The span that new spans nest under. ``span`` is 0 for "no spanline parent" (an external root)."""

    trace: int
    span: int
    root: int
    sampled: bool
    ext_trace: str = ""
    experiment: str = ""
    tracking_uri: str = ""


current: ContextVar[Parent | None] = ContextVar("spanline_current_span", default=None)


def _reset_ids() -> None:
    """Draw this process's id space: at import, and again in a forked child.

    Span ids count up from a random 62-bit base, so they are non-zero, fit in 64 bits and do not repeat
    across processes in practice; the counter is an ``itertools.count``, so taking an id is one C call.
    A trace's number is its root span's id; a random per-process prefix makes the 128-bit trace ids of
    different processes distinct. Callers read ``context.new_span_id`` at call time, so the rebinding
    after a fork reaches them.
    """
    global trace_prefix, new_span_id
    rng = random.SystemRandom()
    trace_prefix = rng.getrandbits(64) | 1
    new_span_id = itertools.count(rng.getrandbits(62) + 1).__next__


trace_prefix: int
new_span_id: Callable[[], int]
_reset_ids()
os.register_at_fork(after_in_child=_reset_ids)


def mlflow_trace_id(trace_number: int, prefix: int | None = None) -> str:
    """MLflow's trace id for a spanline-owned trace: ``tr-`` and the 128-bit OTel trace id in hex.
    ``prefix``: another process's ``trace_prefix`` (the writer assembles events of other processes)."""
    return f"tr-{trace_prefix if prefix is None else prefix:016x}{trace_number & _MASK64:016x}"


# --- joining MLflow's own spans, and MLflow's destination ----------------------------------------------
# Filled by ``enable_mlflow_join()`` once MLflow's tracing is importable; until then no lookup is made.
_otel_current_span = None
_mlflow_traces = None
_fluent = None  # mlflow.tracking.fluent: its _active_experiment_id is set by mlflow.set_experiment
_tracking = None  # mlflow.tracking._tracking_service.utils: its _tracking_uri by mlflow.set_tracking_uri


def destination() -> tuple[str, str]:
    """MLflow's active experiment id and tracking URI, as set in this process (empty when not set: the
    worker then resolves MLflow's defaults). Two module-global reads, so a root span can afford it."""
    if _fluent is None:
        return "", ""
    return _fluent._active_experiment_id or "", _tracking._tracking_uri or ""


def enable_mlflow_join() -> None:
    """Resolve MLflow's tracer state once, so the per-call check is two attribute reads."""
    global _otel_current_span, _mlflow_traces, _fluent, _tracking
    try:
        import mlflow.tracking._tracking_service.utils as tracking
        import mlflow.tracking.fluent as fluent
        from mlflow.environment_variables import MLFLOW_USE_DEFAULT_TRACER_PROVIDER
        from mlflow.tracing.provider import mlflow_runtime_context
        from mlflow.tracing.trace_manager import InMemoryTraceManager
        from opentelemetry.trace import get_current_span
    except ImportError:  # mlflow-tracing absent: spanline still records its own spans
        return
    if MLFLOW_USE_DEFAULT_TRACER_PROVIDER.get():
        # MLflow keeps its spans in a runtime context of its own (mlflow/tracing/provider.py), not in
        # OpenTelemetry's global one; the mode is an environment setting, so it is read once here.
        read_context = mlflow_runtime_context.get_current
        _otel_current_span = lambda: get_current_span(read_context())  # noqa: E731
    else:
        _otel_current_span = get_current_span
    _mlflow_traces = InMemoryTraceManager.get_instance()
    _fluent, _tracking = fluent, tracking


def mlflow_parent() -> Parent | None:
    """The active ``@mlflow.trace`` / ``mlflow.start_span`` span as a parent, or None.

    Only spans of traces that MLflow's trace manager holds count: another OpenTelemetry instrumentation's
    span (the Anthropic SDK ships its own) must not pull spanline's spans into a trace no store will see.
    """
    manager = _mlflow_traces
    if manager is None or not manager._otel_id_to_mlflow_trace_id:
        return None  # no MLflow trace is open anywhere: the common case costs one dict check
    ctx = _otel_current_span().get_span_context()
    if not ctx.is_valid:
        return None
    trace_id = manager._otel_id_to_mlflow_trace_id.get(ctx.trace_id)
    if trace_id is None:
        return None
    live = manager._traces.get(trace_id)
    experiment = ""
    if live is not None:
        location = live.info.trace_location
        mlflow_experiment = getattr(location, "mlflow_experiment", None)
        experiment = getattr(mlflow_experiment, "experiment_id", "") or ""
    return Parent(0, ctx.span_id, 0, True, trace_id, experiment, _tracking._tracking_uri or "")
