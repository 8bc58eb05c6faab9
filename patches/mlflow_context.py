"""Hooks on MLflow's runtime context (``get_current`` / ``attach`` / ``detach``) that make spanline's and MLflow's
current spans one stack.

In: at install, MLflow's runtime context (``pipeline/context.py``'s ``enable_mlflow_join`` finds it and resolves
MLflow's tracer state). Out: the three hooks set on it as instance attributes, through the patch registry, so
``autolog(disable=True)`` gives MLflow back its own methods. The hooks run on whatever thread MLflow opens or
closes a span on (the caller's).

MLflow picks a new span's parent from the OpenTelemetry context it reads (``get_current``), and spanline's SDK
patches from ``context.current`` first. Three hooks keep the two in step, with nothing added to spanline's own
paths:

- ``attach`` (MLflow makes its span current): if a spanline span is current, ``current`` is set to None until
  MLflow's span is detached, so spanline's next span or SDK call falls through to ``mlflow_parent()`` and hangs
  under MLflow's span.
- ``detach``: restores spanline's current span.
- ``get_current`` (MLflow looks for a parent): if a spanline span is current, it is innermost (any later MLflow
  span would have cleared ``current``), so MLflow sees it as a non-recording span with spanline's trace and span
  ids, and MLflow's span joins spanline's trace. A spanline-owned trace is registered in MLflow's trace manager
  first, as MLflow's own distributed tracing registers a remote trace
  (``set_tracing_context_from_http_request_headers``), so MLflow's processor accepts the child and its exporter
  writes it with ``log_spans`` into the trace id spanline writes too.
"""

from __future__ import annotations

import contextlib
from typing import Any

from spanline.pipeline import context
from spanline.pipeline.context import current
from spanline.pipeline.stats import report_internal_error

from spanline import _runtime

from . import patch_instance


def _report(where: str, exc: Exception) -> None:
    report_internal_error(_runtime.pipeline.counters, where, exc)


class _JoinToken:
    """What the hooked ``attach`` returns when an MLflow span becomes current inside a spanline span:
    MLflow's own token, and ours to restore spanline's current span when MLflow's is detached."""

    __slots__ = ("inner", "ours")

    def __init__(self, inner: object, ours: object) -> None:
        self.inner = inner
        self.ours = ours


def install() -> None:
    """Resolve MLflow's tracer state and hook its runtime context; idempotent. Nothing when MLflow's tracing is
    not importable (spanline still records its own spans)."""
    runtime = context.enable_mlflow_join(_report)
    if runtime is None or getattr(runtime, context.ORIGINAL_GET_CURRENT, None) is not None:
        return
    from opentelemetry.trace import get_current_span

    original_get_current: Any = runtime.get_current
    original_attach: Any = runtime.attach
    original_detach: Any = runtime.detach
    with_spanline_span, mlflow_stores = context.with_spanline_span, context.mlflow_stores

    def get_current() -> object:
        ctx = original_get_current()
        parent = current.get()
        if parent is None or not parent.sampled:
            return ctx  # MLflow's own span is innermost (or spanline records nothing here)
        return with_spanline_span(ctx, parent)

    def attach(ctx: object) -> object:
        token = original_attach(ctx)
        if current.get() is None:
            return token
        if not mlflow_stores(get_current_span(ctx)):
            return token  # another instrumentation's span (global mode), or not a recording one
        return _JoinToken(token, current.set(None))

    def detach(token: object) -> None:
        if type(token) is not _JoinToken:
            return original_detach(token)
        try:
            original_detach(token.inner)
        finally:
            with contextlib.suppress(ValueError):  # detached in another context (a generator finished elsewhere)
                current.reset(token.ours)

    patch_instance(runtime, "get_current", get_current)
    patch_instance(runtime, "attach", attach)
    patch_instance(runtime, "detach", detach)
    patch_instance(runtime, context.ORIGINAL_GET_CURRENT, original_get_current)
