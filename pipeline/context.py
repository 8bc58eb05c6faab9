"""Where a new span hangs: the current-span ContextVar, id allocation, and joining MLflow's own spans.

In: the caller's thread, at every span start. Out: a ``Parent`` (or None for a new trace) and fresh ids.

One ContextVar holds the current spanline span, so nesting follows ``await``, tasks (asyncio and trio
copy the context into each task), and threads given ``contextvars.copy_context()``. Span ids are random
64-bit numbers from a per-process generator seeded from the OS at import and again in a forked child, so
allocating one is a C call and never a syscall. A trace is numbered by its root span's id, which leads with
its start time's second (``trace_number``).
"""

from __future__ import annotations

import collections
import functools
import os
import random
import time
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
# A new trace's number leads with ~1 s of its start time, in 12 bits (wrapping every ~73 min): the traces
# stored in one batch then sort together in every index of MLflow's that is keyed by trace id (the trace's
# row, its tags, metadata and spans), where 128 random bits put each in its own page. sqlite's CPU for the
# rows of a batch fell to about a third, and the writer's per trace by 13% on a fresh store and 30% on one
# of 10,000 traces. The other 52 bits stay random, and the first 8 hex digits, which MLflow's trace list
# shows, keep 20 of them: traces made in the same second still look different there.
SLOT_SHIFT = 30
NUMBER_BITS = 52
RANDOM_MASK = (1 << NUMBER_BITS) - 1
SLOT_MASK = (1 << (64 - NUMBER_BITS)) - 1


def trace_number(span_id: int, start_ns: int) -> int:
    """A new trace's number from its root span's fresh random id and its start time: the id's low 52 bits
    after 12 bits of the time (``patches/record.py`` and ``patches/stream_recorder.py`` inline this)."""
    return ((start_ns >> SLOT_SHIFT) & SLOT_MASK) << NUMBER_BITS | (span_id & RANDOM_MASK)


def otel_trace_id(trace_number: int) -> int:
    """The 128-bit OpenTelemetry trace id of a spanline-owned trace, a function of its 64-bit number alone.

    Events carry only the number, so the id must be derivable from an event (the event log is replayed by
    another process). The high 64 bits are the number itself (leading with its time slot: see
    ``trace_number``); the low 64 bits are the number spread by an odd multiplier.
    """
    trace_number &= _MASK64
    return (trace_number << 64) | ((trace_number * _SPREAD) & _MASK64)


def mlflow_trace_id(trace_number: int) -> str:
    """MLflow's trace id for a spanline-owned trace: ``tr-`` and the 128-bit OTel trace id in hex."""
    return f"tr-{otel_trace_id(trace_number):032x}"


# --- joining MLflow's own spans, and MLflow's destination ----------------------------------------------
# Filled by ``enable_mlflow_join()`` once MLflow's tracing is importable; until then no lookup is made.
# The hooks on MLflow's runtime context that use these live in ``patches/mlflow_context.py``.
_otel_current_span = None
_mlflow_traces = None
_fluent = None  # mlflow.tracking.fluent: its _active_experiment_id is set by mlflow.set_experiment
_tracking = None  # mlflow.tracking._tracking_service.utils: its _tracking_uri by mlflow.set_tracking_uri
_otel = None  # OpenTelemetry and MLflow names joining needs, in a namespace (see ``_load_otel``)
# Where MLflow's runtime context keeps its own get_current while spanline's hook is in place.
ORIGINAL_GET_CURRENT = "_spanline_original_get_current"

# Spanline-owned traces made visible to MLflow's trace manager (OTel trace id -> root span id), and when
# to forget them: MLflow's batch exporter reads the manager some seconds after a span ends.
joined: dict[int, int] = {}
_forget: collections.deque[tuple[float, int]] = collections.deque()
_FORGET_AFTER_S = 60.0


def _report(where: str, exc: Exception) -> None:
    """Replaced by ``enable_mlflow_join``'s ``report``; until then nothing is joined, so nothing to report."""


def destination() -> tuple[str, str]:
    """MLflow's active experiment id and tracking URI, as set in this process (empty when not set: the
    worker then resolves MLflow's defaults). Two module-global reads, so a root span can afford it."""
    if _fluent is None:
        return "", ""
    return _fluent._active_experiment_id or "", _tracking._tracking_uri or ""


def enable_mlflow_join(report: Callable[[str, Exception], None]) -> object | None:
    """Resolve MLflow's tracer state once, so the per-call check is two attribute reads. Returns MLflow's runtime
    context (for ``patches/mlflow_context.py`` to hook), or None when MLflow's tracing is not importable.

    ``report(where, exc)`` counts a failure of spanline's own in the pipeline's stats; the caller
    (``patches/mlflow_context.py``) passes it in, as this module never imports above ``pipeline/``."""
    global _otel_current_span, _mlflow_traces, _fluent, _tracking, _report
    try:
        import mlflow.tracking._tracking_service.utils as tracking
        import mlflow.tracking.fluent as fluent
        import opentelemetry.context as otel_context
        from mlflow.environment_variables import MLFLOW_USE_DEFAULT_TRACER_PROVIDER
        from mlflow.tracing.provider import mlflow_runtime_context
        from mlflow.tracing.trace_manager import InMemoryTraceManager
        from opentelemetry.trace import get_current_span
    except ImportError:  # mlflow-tracing absent: spanline still records its own spans
        return None
    _report = report
    # MLflow keeps its spans in a runtime context of its own (mlflow/tracing/provider.py), or, with
    # MLFLOW_USE_DEFAULT_TRACER_PROVIDER=false, in OpenTelemetry's global one; the mode is an environment
    # setting, so it is read once here.
    if MLFLOW_USE_DEFAULT_TRACER_PROVIDER.get():
        runtime = mlflow_runtime_context
    else:
        runtime = otel_context._RUNTIME_CONTEXT
    # MLflow's own current span, read past spanline's hooks (set in this order: each global is in place
    # before anything that reads it).
    original_get_current = getattr(runtime, ORIGINAL_GET_CURRENT, runtime.get_current)
    _otel_current_span = lambda: get_current_span(original_get_current())  # noqa: E731
    _fluent, _tracking = fluent, tracking
    _mlflow_traces = InMemoryTraceManager.get_instance()
    _load_otel()
    return runtime


def _load_otel() -> None:
    """The OpenTelemetry and MLflow names that joining needs, in one namespace; once."""
    global _otel
    if _otel is not None:
        return
    import types

    from mlflow.entities.trace_info import TraceInfo
    from mlflow.entities.trace_location import TraceLocation
    from mlflow.entities.trace_state import TraceState
    from mlflow.tracing.constant import SpansLocation, TraceTagKey
    from opentelemetry import trace as otel_trace

    _otel = types.SimpleNamespace(
        SpanContext=otel_trace.SpanContext,
        NonRecordingSpan=otel_trace.NonRecordingSpan,
        sampled=otel_trace.TraceFlags(otel_trace.TraceFlags.SAMPLED),
        set_span_in_context=otel_trace.set_span_in_context,
        get_current_span=otel_trace.get_current_span,
        TraceInfo=TraceInfo,
        TraceLocation=TraceLocation,
        in_progress=TraceState.IN_PROGRESS,
        spans_location_key=TraceTagKey.SPANS_LOCATION,
        spans_in_store=SpansLocation.TRACKING_STORE,
    )


def mlflow_stores(otel_span: object) -> bool:
    """Whether ``otel_span`` (an OpenTelemetry span being made current) is a live span of a trace MLflow's trace
    manager holds: not another instrumentation's span (global mode), nor a non-recording one."""
    manager = _mlflow_traces
    if manager is None or not otel_span.is_recording():
        return False
    return otel_span.get_span_context().trace_id in manager._otel_id_to_mlflow_trace_id


def with_spanline_span(ctx: object, parent: Parent) -> object:
    """``ctx`` (an OpenTelemetry context) with spanline's current span ``parent`` as the active span, registered
    in MLflow's trace manager first when spanline owns the trace, so MLflow's spans can join it."""
    try:
        return _with_spanline_span(ctx, parent)
    except Exception as exc:  # never break MLflow's tracing: its span just starts its own trace
        _report("joining MLflow's span", exc)
        return ctx


def _with_spanline_span(ctx: object, parent: Parent) -> object:
    """``ctx`` with spanline's current span as the active OpenTelemetry span."""
    if parent.ext_trace:
        otel_id = int(parent.ext_trace[3:], 16)  # a trace MLflow already holds (its own, or joined)
    else:
        otel_id = otel_trace_id(parent.trace)
        if otel_id not in _mlflow_traces._otel_id_to_mlflow_trace_id:
            _register(otel_id, parent)
    span = _otel.NonRecordingSpan(_otel.SpanContext(otel_id, parent.span, False, _otel.sampled))
    return _otel.set_span_in_context(span, ctx)


def _register(otel_id: int, parent: Parent) -> None:
    """Tell MLflow's trace manager about a spanline-owned trace, so MLflow's spans can join it."""
    manager = _mlflow_traces
    experiment = parent.experiment or _fluent._get_experiment_id() or "0"
    info = _otel.TraceInfo(
        trace_id=mlflow_trace_id(parent.trace),
        trace_location=_otel.TraceLocation.from_experiment_id(experiment),
        request_time=None,
        state=_otel.in_progress,
        # While MLflow holds this stand-in, ``mlflow.get_trace`` reads the trace's info from it: the tag
        # sends it to the tracking store for the spans, where both tracers write them.
        tags={_otel.spans_location_key: _otel.spans_in_store},
    )
    with manager._lock:
        if otel_id in manager._otel_id_to_mlflow_trace_id:
            return
        manager.register_trace(otel_id, info, is_remote_trace=True)
        joined[otel_id] = parent.root
    _forget_expired()


def release(ctx: Parent) -> None:
    """A spanline span ended: if it roots a trace MLflow's spans joined, forget that trace later.

    Not now: MLflow's batch exporter looks the trace up when it exports the spans, seconds afterwards.
    """
    if ctx.ext_trace:
        return
    otel_id = otel_trace_id(ctx.trace)
    if joined.get(otel_id) == ctx.span:
        _forget.append((time.monotonic() + _FORGET_AFTER_S, otel_id))
    _forget_expired()


def forget_released() -> None:
    """Forget now every joined trace whose spanline root has ended. For a flush, once MLflow's own export
    is flushed (``mlflow.flush_trace_async_logging()``): then nothing of MLflow's still needs them."""
    _forget_expired(float("inf"))


def _forget_expired(now: float | None = None) -> None:
    if now is None:
        now = time.monotonic()
    while _forget and _forget[0][0] <= now:
        try:
            _, otel_id = _forget.popleft()
        except IndexError:  # another thread took the last one
            return
        if joined.pop(otel_id, None) is not None and _mlflow_traces is not None:
            _mlflow_traces.pop_trace(otel_id)


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
