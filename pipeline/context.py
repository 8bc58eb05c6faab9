"""Where a new span hangs: the current-span ContextVar, id allocation, and joining MLflow's own spans.

In: the caller's thread, at every span start. Out: a ``Parent`` (or None for a new trace) and fresh ids.

One ContextVar holds the current spanline span, so nesting follows ``await``, tasks (asyncio and trio
copy the context into each task), and threads given ``contextvars.copy_context()``. Span ids are random
64-bit numbers from a per-process generator seeded from the OS at import and again in a forked child, so
allocating one is a C call and never a syscall. A trace is numbered by its root span's id.
"""

from __future__ import annotations

import functools
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
    """Seed this process's id generator from the OS: at import, and again in a forked child.

    Span ids are 64 random bits from a private ``random.Random`` (MLflow's isolated id generator does the
    same), so taking one is a C call and never a syscall, and a ``random.seed()`` in user code cannot make
    ids repeat. A trace is numbered by its root span's id, so every trace gets fresh random bits too.
    A child after ``fork`` reseeds, so it never repeats its parent's sequence. Callers read
    ``context.new_span_id`` at call time, so the rebinding reaches them. (An id of 0, which means "no
    parent", has odds of 2**-64 per span; not worth a check on the caller's path.)
    """
    global new_span_id
    _rng.seed()  # os.urandom
    new_span_id = functools.partial(_rng.getrandbits, 64)


_rng = random.Random()
new_span_id: Callable[[], int]
_reset_ids()
os.register_at_fork(after_in_child=_reset_ids)

# Odd, so multiplying by it is a bijection on 64 bits: the low half of a trace id differs whenever the
# high half does (the golden-ratio constant of splitmix64).
_SPREAD = 0x9E3779B97F4A7C15


def otel_trace_id(trace_number: int) -> int:
    """The 128-bit OpenTelemetry trace id of a spanline-owned trace, a function of its 64-bit number alone.

    Events carry only the number, so the id must be derivable from an event (the event log is replayed by
    another process). The low 64 bits are the number itself; the high 64 bits, whose first hex digits
    MLflow's UI shows, are the number spread by an odd multiplier, so they differ from trace to trace.
    """
    trace_number &= _MASK64
    return (((trace_number * _SPREAD) & _MASK64) << 64) | trace_number


def mlflow_trace_id(trace_number: int) -> str:
    """MLflow's trace id for a spanline-owned trace: ``tr-`` and the 128-bit OTel trace id in hex."""
    return f"tr-{otel_trace_id(trace_number):032x}"


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
