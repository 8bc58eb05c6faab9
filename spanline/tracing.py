"""User spans: ``@spanline.trace`` and ``spanline.start_span``, on the caller's thread.

Each span emits a start event when it opens and an end event when it closes; the current span lives in
one ContextVar (``spanline.pipeline.context.current``), set on entry and reset in ``finally``, so nesting
follows threads (with ``copy_context``), asyncio and trio tasks. Inputs and outputs are encoded to JSON
here, once, because the caller may mutate them as soon as we return.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import random
import time
from collections.abc import Callable
from typing import Any, TypeVar, overload

from spanline import _runtime
from spanline._failure import failure
from spanline.pipeline import context
from spanline.pipeline.context import Parent, current
from spanline.pipeline.convert import to_json_bytes
from spanline.pipeline.events import Event, SpanEnd, SpanStart, encode
from spanline.pipeline.stats import report_internal_error

F = TypeVar("F", bound=Callable[..., Any])
_MAX_GENERATOR_ITEMS = 1_000


def resolve_parent() -> Parent | None:
    """The span a new span nests under: the innermost open span, whichever tracer opened it.

    ``current`` is spanline's span unless an MLflow span was made current inside it, which clears
    ``current`` until it ends (``patches/mlflow_context.py``); then MLflow's active span is the parent."""
    parent = current.get()
    if parent is None:
        parent = context.mlflow_parent()
    return parent


# NamedTuple's own __new__ is a Python function (~250 ns); building the tuple directly is a C call.
_new_parent = tuple.__new__

# (trace, span, parent span, root, sampled, ext_trace, experiment, tracking_uri)
Placement = tuple[int, int, int, int, bool, str, str, str]


def placement(parent: Parent | None) -> Placement:
    """Where a new span goes, as a flat tuple the caller's path unpacks in one step.

    A new trace is numbered by its root span's id (unique in the process, so one counter serves both),
    is sampled now, and is bound now to MLflow's active experiment and store, as MLflow's own tracer does.
    Under an MLflow span (``root`` 0) the new span roots a unit inside MLflow's trace; any other child
    goes where its root goes, even if it outlives the root and is stored on its own.
    """
    span = context.new_span_id()
    if parent is None:
        span = context.trace_number(span, time.time_ns())
        rate = _runtime.sample_rate
        sampled = _runtime.log_traces and (rate >= 1.0 or random.random() < rate)
        experiment, tracking_uri = context.destination()
        return span, span, 0, span, sampled, "", experiment, tracking_uri
    trace, parent_span, root, sampled, ext_trace, experiment, tracking_uri = parent
    return trace, span, parent_span, root or span, sampled, ext_trace, experiment, tracking_uri


def child_of(parent: Parent | None) -> tuple[Parent, int]:
    """A new span's context (to become the current span) and its parent's span id (0 for a new trace)."""
    trace, span, parent_span, root, sampled, ext_trace, experiment, tracking_uri = placement(parent)
    return _new_parent(Parent, (trace, span, root, sampled, ext_trace, experiment, tracking_uri)), parent_span


def emit(event: Event) -> None:
    """Encode one event and append it to the queue (starting the worker on the first)."""
    pipeline = _runtime.pipeline
    if pipeline.thread is None:
        pipeline.start()
    pipeline.emit(encode(event))


class Span:
    """A span opened by ``start_span`` (or a traced function): set its inputs, outputs and attributes."""

    __slots__ = ("_attributes", "_ctx", "_ended", "_inputs", "_late_inputs", "_outputs", "_token", "name",
                 "span_type")

    def __init__(self, name: str, span_type: str, inputs: Any = None, attributes: dict | None = None) -> None:
        self.name = name
        self.span_type = str(span_type)
        self._inputs: Any = inputs
        self._outputs: Any = None
        self._attributes: dict[str, Any] = {}
        self._ctx: Parent | None = None
        self._token: Any = None
        self._ended = False
        self._late_inputs = False
        if attributes:
            self._attributes.update(attributes)

    # The names follow mlflow.entities.LiveSpan, so code written against MLflow's span keeps working.
    def set_inputs(self, inputs: Any) -> None:
        self._inputs = inputs
        self._late_inputs = True

    def set_outputs(self, outputs: Any) -> None:
        self._outputs = outputs

    def set_attribute(self, key: str, value: Any) -> None:
        self._attributes[key] = value

    def set_attributes(self, attributes: dict[str, Any]) -> None:
        self._attributes.update(attributes)

    @property
    def span_id(self) -> str:
        return f"{self._ctx.span:016x}" if self._ctx else ""

    @property
    def trace_id(self) -> str:
        ctx = self._ctx
        if ctx is None:
            return ""
        return ctx.ext_trace or context.mlflow_trace_id(ctx.trace)

    def _open(self, static_attributes: bytes = b"") -> None:
        try:
            ctx, parent_id = child_of(resolve_parent())
            self._ctx = ctx
            if ctx.sampled:
                attrs = static_attributes or (to_json_bytes(self._attributes) if self._attributes else b"")
                self._attributes.clear()
                emit(
                    SpanStart(
                        ctx.trace,
                        ctx.span,
                        parent_id,
                        ctx.root,
                        self.name,
                        self.span_type,
                        time.time_ns(),
                        b"" if self._inputs is None else to_json_bytes(self._inputs),
                        attrs,
                        ctx.ext_trace,
                        ctx.experiment,
                        ctx.tracking_uri,
                    )
                )
            self._inputs = None
        except Exception as exc:
            report_internal_error(_runtime.pipeline.counters, "span start", exc)
            self._ctx = None
            return
        self._token = current.set(ctx)

    def _close(
        self, exc: BaseException | None, record_outputs: bool = True, outputs_on_error: bool = False
    ) -> None:
        """End the span: its outputs (unless ``exc``, or with it if ``outputs_on_error``: a tool's error result
        is both what the model read and a failure), and ``exc`` as its ``exception`` event."""
        if self._token is not None:
            with contextlib.suppress(ValueError):  # closed in another context (a generator finalised elsewhere)
                current.reset(self._token)
            self._token = None
        if self._ended or self._ctx is None:
            return
        self._ended = True
        ctx = self._ctx
        if context.joined and ctx.span == ctx.root:
            context.release(ctx)  # MLflow's spans joined this trace: let MLflow forget it in time
        if not ctx.sampled:
            return
        try:
            emit(
                SpanEnd(
                    ctx.trace,
                    ctx.span,
                    ctx.root,
                    time.time_ns(),
                    to_json_bytes(self._outputs) if record_outputs and (exc is None or outputs_on_error) else b"",
                    failure(exc) if exc is not None else None,
                    to_json_bytes(self._attributes) if self._attributes else b"",
                    to_json_bytes(self._inputs) if self._late_inputs else b"",
                )
            )
        except Exception as internal:
            report_internal_error(_runtime.pipeline.counters, "span end", internal)

    # Context manager, sync and async.
    def __enter__(self) -> Span:
        self._open()
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        self._close(exc, record_outputs=self._outputs is not None)

    async def __aenter__(self) -> Span:
        return self.__enter__()

    async def __aexit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        self.__exit__(exc_type, exc, tb)


def start_span(
    name: str = "span",
    span_type: str = "UNKNOWN",
    inputs: Any = None,
    attributes: dict[str, Any] | None = None,
) -> Span:
    """A span around a block, like ``mlflow.start_span``: ``with`` or ``async with``; yields a ``Span``."""
    return Span(name, span_type, inputs, attributes)


def _bind_inputs(signature: inspect.Signature | None, args: tuple, kwargs: dict) -> dict[str, Any] | None:
    # As mlflow.trace does: bound arguments with defaults applied, without self / cls.
    if signature is None:
        return None
    try:
        bound = signature.bind(*args, **kwargs)
    except TypeError:
        return None  # the call itself will raise the same TypeError, unchanged
    bound.apply_defaults()
    arguments = bound.arguments
    if arguments.get("self") is not None:
        arguments = dict(arguments)
        del arguments["self"]
    elif arguments and next(iter(arguments)) == "cls" and isinstance(arguments["cls"], type):
        arguments = dict(arguments)
        del arguments["cls"]
    return arguments


@overload
def trace(func: F) -> F: ...
@overload
def trace(
    func: None = None,
    *,
    name: str | None = None,
    span_type: str = "UNKNOWN",
    attributes: dict[str, Any] | None = None,
) -> Callable[[F], F]: ...
def trace(
    func: Callable[..., Any] | None = None,
    *,
    name: str | None = None,
    span_type: str = "UNKNOWN",
    attributes: dict[str, Any] | None = None,
) -> Any:
    """Trace a function as a span, with ``mlflow.trace``'s signature and behaviour.

    Works on sync and async functions, sync and async generators, and methods. Records the bound
    arguments as inputs, the return value (or the yielded items) as outputs, and an exception as an
    ``exception`` event with status ERROR; the exception propagates unchanged.
    """
    if func is None:
        return functools.partial(trace, name=name, span_type=span_type, attributes=attributes)

    span_name = name or getattr(func, "__name__", "span")
    try:
        signature: inspect.Signature | None = inspect.signature(func)
    except (TypeError, ValueError):
        signature = None
    # Encoded once here, not per call.
    static = to_json_bytes({**(attributes or {}), "mlflow.spanFunctionName": getattr(func, "__name__", span_name)})
    kind = str(span_type)

    def open_span(args: tuple, kwargs: dict) -> Span:
        span = Span(span_name, kind, _bind_inputs(signature, args, kwargs))
        span._open(static)
        return span

    if inspect.isasyncgenfunction(func):

        @functools.wraps(func)
        async def async_gen_wrapper(*args: Any, **kwargs: Any) -> Any:
            span = open_span(args, kwargs)
            items: list[Any] = []
            agen = func(*args, **kwargs)
            suspend(span)
            try:
                sent: Any = None
                while True:
                    resume(span)
                    try:
                        item = await agen.asend(sent)
                    except StopAsyncIteration:
                        break
                    finally:
                        suspend(span)
                    if len(items) < _MAX_GENERATOR_ITEMS:
                        items.append(item)
                    sent = yield item
            except BaseException as exc:
                if isinstance(exc, GeneratorExit):
                    await agen.aclose()
                    _finish(span, None, items)
                else:
                    _finish(span, exc, items)
                raise
            _finish(span, None, items)

        return async_gen_wrapper

    if inspect.isgeneratorfunction(func):

        @functools.wraps(func)
        def gen_wrapper(*args: Any, **kwargs: Any) -> Any:
            span = open_span(args, kwargs)
            items: list[Any] = []
            gen = func(*args, **kwargs)
            suspend(span)
            try:
                sent: Any = None
                while True:
                    resume(span)
                    try:
                        item = gen.send(sent)
                    except StopIteration as stop:
                        if stop.value is not None:
                            items.append(stop.value)
                        break
                    finally:
                        suspend(span)
                    if len(items) < _MAX_GENERATOR_ITEMS:
                        items.append(item)
                    sent = yield item
            except BaseException as exc:
                if isinstance(exc, GeneratorExit):
                    gen.close()
                    _finish(span, None, items)
                else:
                    _finish(span, exc, items)
                raise
            _finish(span, None, items)

        return gen_wrapper

    if inspect.iscoroutinefunction(func):

        @functools.wraps(func)
        async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
            span = open_span(args, kwargs)
            try:
                result = await func(*args, **kwargs)
            except BaseException as exc:
                span._close(exc)
                raise
            span._outputs = result
            span._close(None)
            return result

        return async_wrapper

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        span = open_span(args, kwargs)
        try:
            result = func(*args, **kwargs)
        except BaseException as exc:
            span._close(exc)
            raise
        span._outputs = result
        span._close(None)
        return result

    return wrapper


# A generator's span is current only while the generator's own code runs, never while its consumer does.
def suspend(span: Span) -> None:
    if span._token is not None:
        with contextlib.suppress(ValueError):
            current.reset(span._token)
        span._token = None


def resume(span: Span) -> None:
    if span._ctx is not None:
        span._token = current.set(span._ctx)


# The SDK patches' own spans (``patches/tool_runner.py``): opened, closed, and nested under, as user spans are.
def open_span(span: Span) -> None:
    span._open()


def close_span(span: Span, exc: BaseException | None, record_outputs: bool = True,
               outputs_on_error: bool = False) -> None:
    span._close(exc, record_outputs, outputs_on_error)


def context_of(span: Span) -> Parent | None:
    """What to make current for a span to nest under ``span``; None until it is opened."""
    return span._ctx


def _finish(span: Span, exc: BaseException | None, items: list[Any]) -> None:
    span._outputs = items
    span._close(exc)
