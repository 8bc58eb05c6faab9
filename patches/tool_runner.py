"""``beta.messages.tool_runner``: the run as an ``AGENT`` span, its model turns and tool calls under it.

The SDK's runner is a generator (``__run__``) that the application drives, one ``next()`` per reply, and
whose every step sends the turn (``beta.messages.create`` / ``stream``, traced as ``CHAT_MODEL``) and runs the
tools the last reply asked for (the runner's ``_run_tool`` and ``_run_toolset_member``, traced here as
``TOOL``, whatever kind of tool it is). The wrapper makes the run's span current only while the runner's own
code runs, as ``@spanline.trace`` does for a generator, so each turn nests under it and the application's
code between iterations keeps its own context; a tool is put under the run's span explicitly, because a
streaming runner may run it from the application's context.

Unlike an SDK call, a run's inputs (its params: model, messages, tools) and output (its last reply) are
Python objects with no bytes behind them, so they are encoded once per run, at its start and end, as
``@spanline.trace`` encodes a function's arguments and result; each turn's request and reply are recorded as
bytes by the turn's own span.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any

from spanline.pipeline.context import current
from spanline.pipeline.stats import report_internal_error

from spanline import _runtime
from spanline.tracing import Span, close_span, context_of, open_span, resume, suspend

from . import patch


def install() -> None:
    from anthropic.lib.tools._beta_runner import BaseAsyncToolRunner, BaseSyncToolRunner

    patch(BaseSyncToolRunner, "__run__", _wrap_run)
    patch(BaseAsyncToolRunner, "__run__", _wrap_arun)
    patch(BaseSyncToolRunner, "_run_tool", _wrap_run_tool)
    patch(BaseAsyncToolRunner, "_run_tool", _wrap_arun_tool)
    patch(BaseSyncToolRunner, "_run_toolset_member", _wrap_run_member)
    patch(BaseAsyncToolRunner, "_run_toolset_member", _wrap_arun_member)


def _open_run(runner: Any, asynchronous: bool) -> Span | None:
    """The run's AGENT span, opened under the current span; None if spanline fails (the run goes on)."""
    try:
        params = runner._params
        inputs = {k: v for k, v in params.items() if k not in ("extra_headers", "extra_query", "extra_body")}
        name = "beta.AsyncMessages.tool_runner" if asynchronous else "beta.Messages.tool_runner"
        # The message format tells MLflow's UI to draw the run as chat: its params' messages as the User's
        # turn, its last reply as the Assistant's (as it draws the turns' CHAT_MODEL spans).
        span = Span(name, "AGENT", inputs, {"anthropic.tool_runner": type(runner).__name__,
                                            "mlflow.message.format": "anthropic"})
        open_span(span)
        suspend(span)
        runner._spanline_run = span  # the parent of its tools, wherever they run (see _open_tool)
        return span
    except Exception as internal:
        report_internal_error(_runtime.pipeline.counters, "tool_runner", internal)
        return None


def _close_run(span: Span | None, runner: Any, exc: BaseException | None) -> None:
    if span is None:
        return
    try:
        last = runner._last_message
        if callable(last):
            last = _read_reply(last)
        if exc is None and last is not None:
            span.set_outputs(_as_reply(last))
    except Exception as internal:  # the run's own state: never worth failing the run for
        report_internal_error(_runtime.pipeline.counters, "tool_runner", internal)
    close_span(span, exc)


def _read_reply(get_final_message: Any) -> Any:
    """A streaming runner's last reply, if its stream was read to its end; else None.

    The runner keeps ``stream.get_final_message``, which would finish reading the reply: calling it could
    read the network on the caller's behalf. The stream's own snapshot is read instead (private to the SDK,
    so anything unexpected gives None: the reply is on its turn's span anyway)."""
    stream = getattr(get_final_message, "__self__", None)
    for cls in type(stream).__mro__:
        snapshot = getattr(stream, f"_{cls.__name__}__final_message_snapshot", None)
        if snapshot is not None:
            # A stop reason arrives with the reply's last event (message_delta): the reply is whole.
            return snapshot if getattr(snapshot, "stop_reason", None) is not None else None
    return None


def _as_reply(message: Any) -> Any:
    """The reply as the API sent it, without the fields the SDK's model fills with None (``container: null``,
    ``context_management: null``, ...), which MLflow's UI would show as raw fields of the run's output."""
    model_dump = getattr(message, "model_dump", None)
    if not callable(model_dump):
        return message
    return model_dump(mode="json", exclude_none=True)


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
                    resume(span)
                try:
                    item = next(steps)
                except StopIteration:
                    break
                finally:
                    if span is not None:
                        suspend(span)
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
                    resume(span)
                try:
                    item = await steps.__anext__()
                except StopAsyncIteration:
                    break
                finally:
                    if span is not None:
                        suspend(span)
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


# --- the tools a runner runs ------------------------------------------------------------------------------
#
# Every tool a runner runs goes through one of two runner methods: ``_run_tool(tool, tool_use)`` for a tool
# that has a ``call`` (``@beta_tool`` functions, the tools the MCP helper makes, built-in tools such as the
# memory tool that override ``call``) and ``_run_toolset_member(tool_use)`` for a member of a toolset. Both
# return the ``tool_result`` block the runner sends back, and neither raises for a tool that fails: the SDK
# turns the exception into an ``is_error`` result. So the TOOL span sits there, once per tool run, whatever
# the tool's class; a call to a tool the runner does not have runs nothing and gets no span.
#
# A runner with ``run_tools_eagerly`` runs a tool while the application reads a streamed reply, that is
# from the application's context, where the run's span is not current; so a tool span is always opened
# under its runner's span, not under whatever is current.


class ToolResultError(Exception):
    """The runner sent a tool's result back as an error (``is_error``) and no exception came out of the tool
    itself (a toolset member's failure, which its toolset turns into a result): the span's exception event
    holds the result's text, which is what the model reads."""


class _WatchedTool:
    """The tool as ``_run_tool`` sees it, but keeping the exception its ``call`` raises, which the SDK
    catches and turns into an error result (the TOOL span's exception event wants the exception itself)."""

    __slots__ = ("_tool", "raised")

    def __init__(self, tool: Any) -> None:
        self._tool = tool
        self.raised: BaseException | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tool, name)

    def call(self, input: Any) -> Any:
        try:
            return self._tool.call(input)
        except BaseException as exc:
            self.raised = exc
            raise


class _WatchedAsyncTool(_WatchedTool):
    __slots__ = ()

    async def call(self, input: Any) -> Any:
        try:
            return await self._tool.call(input)
        except BaseException as exc:
            self.raised = exc
            raise


def _open_tool(runner: Any, tool_use: Any) -> tuple[Span, Any] | None:
    """A TOOL span for ``tool_use``, opened under the runner's span; with the token that puts the context
    back as it was. None if spanline fails (the tool runs anyway)."""
    try:
        attributes = {"anthropic.tool_use_id": tool_use.id}
        if tool_use.toolset_name:
            attributes["anthropic.toolset_name"] = tool_use.toolset_name
        span = Span(str(tool_use.name), "TOOL", tool_use.input, attributes)
        run = getattr(runner, "_spanline_run", None)
    except Exception as internal:
        report_internal_error(_runtime.pipeline.counters, "tool call", internal)
        return None
    parent = context_of(run) if run is not None else None
    token = current.set(parent) if parent is not None else None
    open_span(span)  # never raises: a failure is counted, and the tool runs without its span
    return span, token


def _close_tool(opened: tuple[Span, Any] | None, result: Any, raised: BaseException | None) -> None:
    """End the TOOL span: the result block's content as output, an error if the tool raised or its result
    is an error. ``result`` is None when the runner itself raised (``raised`` is then that exception)."""
    if opened is None:
        return
    span, token = opened
    try:
        error = raised
        if isinstance(result, dict):
            span.set_outputs(result.get("content"))
            if error is None and result.get("is_error"):
                error = ToolResultError(_text_of(result.get("content")))
        close_span(span, error, record_outputs=isinstance(result, dict), outputs_on_error=True)
    except Exception as internal:
        report_internal_error(_runtime.pipeline.counters, "tool call", internal)
    finally:
        if token is not None:
            with contextlib.suppress(ValueError):  # ended in another context: nothing of ours is set there
                current.reset(token)


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(b["text"] for b in content if isinstance(b, dict) and isinstance(b.get("text"), str))
    return ""


def _wrap_run_tool(original: Any) -> Any:
    @functools.wraps(original)
    def _run_tool(self: Any, tool: Any, tool_use: Any) -> Any:
        if not _runtime.recording:
            return original(self, tool, tool_use)
        watched = _WatchedTool(tool)
        opened = _open_tool(self, tool_use)
        try:
            result = original(self, watched, tool_use)
        except BaseException as exc:  # what the SDK lets through (a cancellation, a KeyboardInterrupt)
            _close_tool(opened, None, exc)
            raise
        _close_tool(opened, result, watched.raised)
        return result

    return _run_tool


def _wrap_arun_tool(original: Any) -> Any:
    @functools.wraps(original)
    async def _run_tool(self: Any, tool: Any, tool_use: Any) -> Any:
        if not _runtime.recording:
            return await original(self, tool, tool_use)
        watched = _WatchedAsyncTool(tool)
        opened = _open_tool(self, tool_use)
        try:
            result = await original(self, watched, tool_use)
        except BaseException as exc:
            _close_tool(opened, None, exc)
            raise
        _close_tool(opened, result, watched.raised)
        return result

    return _run_tool


def _runs_member(runner: Any, tool_use: Any) -> bool:
    """Whether the runner has the toolset of ``tool_use`` (otherwise it answers "not found" and runs nothing)."""
    try:
        return _runtime.recording and tool_use.toolset_name in runner._toolsets_by_family
    except Exception as internal:
        report_internal_error(_runtime.pipeline.counters, "tool call", internal)
        return False


def _wrap_run_member(original: Any) -> Any:
    @functools.wraps(original)
    def _run_toolset_member(self: Any, tool_use: Any) -> Any:
        if not _runs_member(self, tool_use):
            return original(self, tool_use)
        opened = _open_tool(self, tool_use)
        try:
            result = original(self, tool_use)
        except BaseException as exc:  # a ToolsetUsageError: the SDK lets it end the run
            _close_tool(opened, None, exc)
            raise
        _close_tool(opened, result, None)
        return result

    return _run_toolset_member


def _wrap_arun_member(original: Any) -> Any:
    @functools.wraps(original)
    async def _run_toolset_member(self: Any, tool_use: Any) -> Any:
        if not _runs_member(self, tool_use):
            return await original(self, tool_use)
        opened = _open_tool(self, tool_use)
        try:
            result = await original(self, tool_use)
        except BaseException as exc:
            _close_tool(opened, None, exc)
            raise
        _close_tool(opened, result, None)
        return result

    return _run_toolset_member
