"""The ``.stream(...)`` helpers (``messages.stream``, ``beta.messages.stream``), sync and async, as one span per call.

In: the SDK's ``stream`` functions, at patch time; at call time, the stream manager the SDK returns. Out: the
same manager, whose request (made when the application enters it) now runs through the call skeleton
(``patches/call.py``) with the streamed call's recorder (``patches/stream_recorder.py``). Runs on the caller's
thread (or task). ``create(stream=True)`` takes the same recorder through the one-request wrappers
(``patches/call.py``).

Span names are MLflow's ``{resource class}.{method}``: ``Messages.stream`` / ``AsyncMessages.stream`` (beta's
resource classes are named ``Messages`` and ``AsyncMessages`` too).
"""

from __future__ import annotations

import functools
from typing import Any

from spanline.pipeline.stats import report_internal_error

from spanline import _runtime

from . import call, patch, resources
from .record import record_failure
from .stream_recorder import opened, opened_async


def install() -> None:
    """Patch the ``.stream(...)`` helpers; ``create(stream=True)`` goes through ``messages``' wrappers."""
    for sync_cls, async_cls in resources.message_classes():
        if "stream" in sync_cls.__dict__:
            patch(sync_cls, "stream", _wrap_stream_sync)
        if "stream" in async_cls.__dict__:
            patch(async_cls, "stream", _wrap_stream_async)



# --- the .stream(...) helpers -----------------------------------------------------------------------------

# Span names ("Messages.stream", "beta.Messages.stream") by resource class; surfaces by client class.
_stream_names = resources.SpanNames("stream")
_stream_surfaces = resources.Surfaces("messages")


def _enter(self: Any, api_request: Any, /, **kwargs: Any) -> Any:
    # The manager's own request, made through the skeleton: ``self`` and ``kwargs`` are the ``.stream()`` call's,
    # for the span's name and the request recorded if the SDK sends none. Async: the coroutine to await.
    return api_request()


def _enter_async(self: Any, api_request: Any, /, **kwargs: Any) -> Any:
    return api_request


# Built once: the skeleton around a manager's request (the ``.stream()`` wrapper checked recording already).
_request_sync = call.sync_skeleton(_enter, opened, record_failure, _stream_names, _stream_surfaces, guarded=False)
_request_async = call.async_skeleton(_enter_async, opened_async, record_failure, _stream_names, _stream_surfaces,
                                     guarded=False)


def _request_attribute(manager: Any) -> str:
    # The manager keeps the request to make on entry in a name-mangled attribute
    # (``_MessageStreamManager__api_request``, ``_BetaMessageStreamManager__api_request``, ...).
    return next(key for key in vars(manager) if key.endswith("__api_request"))


def _should_record() -> bool:
    # MLflow's autolog never traces ``.stream()`` (it calls ``_post``, not ``create``): no stepping aside here.
    return _runtime.recording


def _wrap_stream_sync(original: Any) -> Any:
    @functools.wraps(original)
    def stream(self: Any, *args: Any, **kwargs: Any) -> Any:
        manager = original(self, *args, **kwargs)
        if not _should_record():
            return manager
        try:
            attribute = _request_attribute(manager)
            api_request = getattr(manager, attribute)
            # The request is made when the manager is entered: trace it then.
            setattr(manager, attribute, functools.partial(_request_sync, self, api_request, **kwargs))
        except Exception as internal:
            report_internal_error(_runtime.pipeline.counters, "messages.stream", internal)
        return manager

    return stream


def _wrap_stream_async(original: Any) -> Any:
    @functools.wraps(original)
    def stream(self: Any, *args: Any, **kwargs: Any) -> Any:
        manager = original(self, *args, **kwargs)
        if not _should_record():
            return manager
        try:
            attribute = _request_attribute(manager)
            api_request = getattr(manager, attribute)  # a coroutine, awaited when the manager is entered
            setattr(manager, attribute, _request_async(self, api_request, **kwargs))
        except Exception as internal:
            report_internal_error(_runtime.pipeline.counters, "messages.stream", internal)
        return manager

    return stream
