"""``beta.messages.tool_runner``: the run as an ``AGENT`` span, its model turns and tool calls under it.

The SDK's runner is a generator (``__run__``) that the application drives, one ``next()`` per reply, and
whose every step sends the turn (``beta.messages.create``, traced as ``CHAT_MODEL``) and runs the tools the
last reply asked for (``BetaFunctionTool.call``, traced here as ``TOOL``). The wrapper makes the run's span
current only while the runner's own code runs, as ``@spanline.trace`` does for a generator, so each turn and
tool nests under it and the application's code between iterations keeps its own context.

Unlike an SDK call, a run's inputs (its params: model, messages, tools) and output (its last reply) are
Python objects with no bytes behind them, so they are encoded once per run, at its start and end, as
``@spanline.trace`` encodes a function's arguments and result; each turn's request and reply are recorded as
bytes by the turn's own span.
"""

from __future__ import annotations

import functools
from typing import Any

from spanline.pipeline.stats import report_internal_error

from spanline import _runtime
from spanline.tracing import Span, _resume, _suspend

from . import patch


def install() -> None:
    from anthropic.lib.tools._beta_functions import BetaAsyncFunctionTool, BetaFunctionTool
    from anthropic.lib.tools._beta_runner import BaseAsyncToolRunner, BaseSyncToolRunner

    patch(BaseSyncToolRunner, "__run__", _wrap_run)
    patch(BaseAsyncToolRunner, "__run__", _wrap_arun)
    patch(BetaFunctionTool, "call", _wrap_call)
    patch(BetaAsyncFunctionTool, "call", _wrap_acall)


def _open_run(runner: Any, asynchronous: bool) -> Span | None:
    """The run's AGENT span, opened under the current span; None if spanline fails (the run goes on)."""
    try:
        params = runner._params
        inputs = {k: v for k, v in params.items() if k not in ("extra_headers", "extra_query", "extra_body")}
        name = "beta.AsyncMessages.tool_runner" if asynchronous else "beta.Messages.tool_runner"
        span = Span(name, "AGENT", inputs, {"anthropic.tool_runner": type(runner).__name__})
        span._open()
        _suspend(span)
        return span
    except Exception as internal:
        report_internal_error(_runtime.pipeline.counters, "tool_runner", internal)
        return None


def _close_run(span: Span | None, runner: Any, exc: BaseException | None) -> None:
    if span is None:
        return
    try:
        last = runner._last_message
        if exc is None and last is not None:
            # A streaming runner keeps a function that would finish reading the reply: calling it could read
            # the network on the caller's behalf, so a streamed run's last reply is left to its turn's span.
            span._outputs = None if callable(last) else last
    except Exception as internal:  # the run's own state: never worth failing the run for
        report_internal_error(_runtime.pipeline.counters, "tool_runner", internal)
    span._close(exc)


def _wrap_run(original: Any) -> Any:
    @functools.wraps(original)
    def __run__(self: Any) -> Any:
        if not _runtime.recording:
            return (yield from original(self))
        span = _open_run(self, asynchronous=False)
        steps = original(self)
        try:
            while True:
                if span is not None:
                    _resume(span)
                try:
                    item = next(steps)
                except StopIteration:
                    break
                finally:
                    if span is not None:
                        _suspend(span)
                yield item
        except GeneratorExit:  # closed early by the application: the run ends here, as it was
            steps.close()
            _close_run(span, self, None)
            raise
        except BaseException as exc:
            _close_run(span, self, exc)
            raise
        _close_run(span, self, None)

    return __run__


def _wrap_arun(original: Any) -> Any:
    @functools.wraps(original)
    async def __run__(self: Any) -> Any:
        steps = original(self)
        span = _open_run(self, asynchronous=True) if _runtime.recording else None
        try:
            while True:
                if span is not None:
                    _resume(span)
                try:
                    item = await steps.__anext__()
                except StopAsyncIteration:
                    break
                finally:
                    if span is not None:
                        _suspend(span)
                yield item
        except GeneratorExit:
            await steps.aclose()
            _close_run(span, self, None)
            raise
        except BaseException as exc:
            _close_run(span, self, exc)
            raise
        _close_run(span, self, None)

    return __run__


def _tool_span(tool: Any, input: Any) -> Span | None:
    try:
        span = Span(str(getattr(tool, "name", "tool")), "TOOL", input)
        span._open()
        return span
    except Exception as internal:
        report_internal_error(_runtime.pipeline.counters, "tool call", internal)
        return None


def _wrap_call(original: Any) -> Any:
    @functools.wraps(original)
    def call(self: Any, input: Any) -> Any:
        if not _runtime.recording:
            return original(self, input)
        span = _tool_span(self, input)
        try:
            result = original(self, input)
        except BaseException as exc:
            if span is not None:
                span._close(exc)
            raise
        if span is not None:
            span._outputs = result
            span._close(None)
        return result

    return call


def _wrap_acall(original: Any) -> Any:
    @functools.wraps(original)
    async def call(self: Any, input: Any) -> Any:
        if not _runtime.recording:
            return await original(self, input)
        span = _tool_span(self, input)
        try:
            result = await original(self, input)
        except BaseException as exc:
            if span is not None:
                span._close(exc)
            raise
        if span is not None:
            span._outputs = result
            span._close(None)
        return result

    return call
