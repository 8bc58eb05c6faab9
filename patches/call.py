"""The call skeleton every traced SDK call runs through, sync and async, built once per patched function.

In: at patch time, the SDK's function and the two recording functions of its surface (one for a call that
returned, one for a call that raised), the span names and surfaces. Out: the wrapper that replaces the SDK's
function. Runs on the caller's thread (or task), around the SDK's own call.

The skeleton: read the parent span, open a slot for the SDK's HTTP exchange (``http_capture.inflight``), read
the clock, call the SDK, close the slot, then hand everything to ``record`` or ``record_failure``. It is a
closure over its parameters rather than a function the wrapper calls, because each Python call on the caller's
path costs ~0.2 µs (see ``record.record``): the wrapper of a plain ``messages.create`` makes exactly the calls
it made when each surface wrote the skeleton out itself.

Also here: the wrappers of every SDK method that sends one request and gets one JSON body back
(``one_request_sync`` / ``one_request_async``: ``messages.create`` / ``parse``, ``beta.messages.create`` /
``parse``, ``count_tokens``, the batch calls), whose ``stream=True`` calls take the streamed recorder, and the
check that steps aside while MLflow's own Anthropic autolog records the same calls.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from time import time_ns
from typing import Any

from spanline.pipeline.context import current, mlflow_parent

from spanline import _runtime

from . import logger, resources
from .http_capture import inflight
from .record import record, record_failure
from .stream_recorder import opened, opened_async

# Record a call that returned: (resource, kwargs, parent, start, slot, result, names, surfaces) -> None.
Record = Callable[..., None]
# Record a call that raised: (resource, kwargs, parent, start, slot, exception, names, surfaces) -> None.
RecordFailure = Callable[..., None]

# MLflow's own anthropic autolog, when enabled, records these calls itself; spanline then steps aside
# so each call is traced once. Filled by ``find_mlflow_autolog`` with MLflow's integration registry.
mlflow_integrations: dict[str, Any] = {}
_warned_mlflow = False


def find_mlflow_autolog() -> None:
    """Read MLflow's autolog registry once (at install), if MLflow is importable."""
    global mlflow_integrations
    try:
        from mlflow.utils.autologging_utils import AUTOLOGGING_INTEGRATIONS
    except ImportError:
        return
    mlflow_integrations = AUTOLOGGING_INTEGRATIONS


def mlflow_records_it() -> bool:
    """Whether MLflow's anthropic autolog is on (then the call is left to it, and counted as deferred)."""
    config = mlflow_integrations.get("anthropic")
    if config is None or config.get("disable", True) or not config.get("log_traces", True):
        return False
    global _warned_mlflow
    if not _warned_mlflow:
        _warned_mlflow = True
        logger.warning(
            "spanline: mlflow.anthropic.autolog() is enabled too; MLflow records Anthropic calls "
            "itself while it is, and spanline steps aside so each call is traced once. Call "
            "mlflow.anthropic.autolog(disable=True) to let spanline record them."
        )
    next(_runtime.pipeline.counters.deferred)
    return True


def sync_skeleton(original: Any, record: Record, record_failure: RecordFailure, names: dict[type, str],
              surfaces: dict[type, str], *, guarded: bool = True, mlflow_too: bool = False,
              streamed: Callable[..., Any] | None = None, with_args: bool = False) -> Any:
    """The traced version of the sync SDK function ``original``.

    ``guarded``: call the SDK untraced while recording is off or another traced call is in flight (unguarded
    wrappers are reached only from a guarded one, or a caller that checked). ``mlflow_too``: MLflow's autolog
    patches this function too, so step aside while it is on. ``streamed``: the wrapper for ``stream=True``.
    ``with_args``: ``record`` also takes the call's positional arguments (a batch's id), after ``surfaces``."""

    @functools.wraps(original)
    def call(self: Any, *args: Any, **kwargs: Any) -> Any:
        if guarded and (not _runtime.recording or inflight.get() is not None
                        or (mlflow_too and "anthropic" in mlflow_integrations and mlflow_records_it())):
            return original(self, *args, **kwargs)
        if kwargs.get("stream") is True and streamed is not None:
            return streamed(self, *args, **kwargs)
        parent = current.get() or mlflow_parent()
        slot: list[Any] = []
        token = inflight.set(slot)
        start = time_ns()
        try:
            result = original(self, *args, **kwargs)
        except BaseException as exc:
            inflight.reset(token)
            record_failure(self, kwargs, parent, start, slot, exc, names, surfaces)
            raise
        inflight.reset(token)
        if with_args:
            record(self, kwargs, parent, start, slot, result, names, surfaces, args)
        else:
            record(self, kwargs, parent, start, slot, result, names, surfaces)
        return result

    return call


def async_skeleton(original: Any, record: Record, record_failure: RecordFailure, names: dict[type, str],
               surfaces: dict[type, str], *, guarded: bool = True, mlflow_too: bool = False,
               streamed: Callable[..., Any] | None = None, with_args: bool = False) -> Any:
    """``sync_skeleton`` for an async SDK function: ``original(...)`` returns the awaitable to await."""

    @functools.wraps(original)
    async def call(self: Any, *args: Any, **kwargs: Any) -> Any:
        if guarded and (not _runtime.recording or inflight.get() is not None
                        or (mlflow_too and "anthropic" in mlflow_integrations and mlflow_records_it())):
            return await original(self, *args, **kwargs)
        if kwargs.get("stream") is True and streamed is not None:
            return await streamed(self, *args, **kwargs)
        parent = current.get() or mlflow_parent()
        slot: list[Any] = []
        token = inflight.set(slot)
        start = time_ns()
        try:
            result = await original(self, *args, **kwargs)
        except BaseException as exc:
            inflight.reset(token)
            record_failure(self, kwargs, parent, start, slot, exc, names, surfaces)
            raise
        inflight.reset(token)
        if with_args:
            record(self, kwargs, parent, start, slot, result, names, surfaces, args)
        else:
            record(self, kwargs, parent, start, slot, result, names, surfaces)
        return result

    return call


def one_request_sync(original: Any, surface: str = "messages") -> Any:
    """The traced version of a sync SDK method that sends one request and gets one JSON body back (or, with
    ``stream=True``, a stream): the span name comes from the resource class and the method, the event's
    ``surface`` from ``surface`` and the client's provider (``patches/resources.py``)."""
    names, surfaces = resources.SpanNames(original.__name__), resources.Surfaces(surface)
    streamed = sync_skeleton(original, opened, record_failure, names, surfaces, guarded=False)
    # Only MLflow's own autolog targets make spanline step aside.
    return sync_skeleton(original, record, record_failure, names, surfaces,
                         mlflow_too=resources.mlflow_traces(original), streamed=streamed)


def one_request_async(original: Any, surface: str = "messages") -> Any:
    """``one_request_sync`` for an async SDK method."""
    names, surfaces = resources.SpanNames(original.__name__), resources.Surfaces(surface)
    streamed = async_skeleton(original, opened_async, record_failure, names, surfaces, guarded=False)
    return async_skeleton(original, record, record_failure, names, surfaces,
                          mlflow_too=resources.mlflow_traces(original), streamed=streamed)
