"""The event log's vocabulary: what the caller's path emits and the worker folds into spans.

In: nothing (this module only defines types and the codecs).
Out: ``encode(event) -> bytes`` on the caller's thread; ``encode_deferred(item) -> bytes`` on the application's
worker thread; ``decode(bytes) -> Event`` on the thread that assembles (the worker, or the writer process).

Every event is a small tagged, array-like msgspec Struct, encoded to MessagePack bytes. The bytes are
the unit of the queue and of the event log on disk (``eventlog``): spans are a projection of this log. Payloads
that are already JSON text (a request body as the SDK sent it, a response body as it arrived, inputs
encoded once) travel as opaque ``bytes`` fields, so encoding an event is a memcpy for them, never a
re-serialisation.

Ids: ``span`` is a per-process span number and ``trace`` the span number of the trace's root (both fit
in 64 bits); the worker turns them into MLflow's 128-bit trace id and 64-bit span id. ``root`` names the
span whose end completes a unit of spans (the outermost spanline span of the tree); ``ext_trace`` is
set when the unit hangs under a span that MLflow's own tracer opened, whose trace MLflow owns.
``experiment`` and ``tracking_uri`` are MLflow's active ones when the trace began, as MLflow's own tracer
fixes them: a trace stays where it started even if the program switches experiment before it is written.

Deferred events. The caller's path encodes an event to snapshot what the application may change right after
(the arguments it mutates). An event whose every field is already immutable (ints, strings, the SDK's bytes, a
list nobody appends to any more) may instead be queued as a tuple ``(make, *fields)``: the worker calls
``make(*fields)`` (``encode_deferred``) and gets the very bytes the caller would have made, off the caller's path.
A streamed call's start and end are queued so (``patches/streaming.py``): they must cost the caller no more
than one non-streaming call's event. The log holds only encoded events, so its format does not change.
"""

from __future__ import annotations

from typing import Any

import msgspec

_STRUCT = {"tag_field": "k", "array_like": True, "omit_defaults": True, "gc": False}


class SpanStart(msgspec.Struct, tag="s", **_STRUCT):
    trace: int
    span: int
    parent: int
    root: int
    name: str
    span_type: str
    start_ns: int
    inputs: bytes = b""  # JSON text, empty when the span has no inputs
    attributes: bytes = b""  # JSON object of user attributes
    ext_trace: str = ""  # MLflow trace id ("tr-...") when the parent span is MLflow's own
    # Where the unit goes, read when its root opened (empty: resolve when writing). Set on roots only.
    experiment: str = ""
    tracking_uri: str = ""


class Failure(msgspec.Struct, **_STRUCT):
    """An exception, reduced on the caller's thread to what MLflow's ``exception`` event holds."""

    type: str
    message: str
    stacktrace: str
    time_ns: int


class SpanEnd(msgspec.Struct, tag="e", **_STRUCT):
    trace: int
    span: int
    root: int
    end_ns: int
    outputs: bytes = b""  # JSON text, empty when the span returned nothing recordable
    error: Failure | None = None
    attributes: bytes = b""  # JSON object merged into the start's attributes
    inputs: bytes = b""  # inputs set after the start (``span.set_inputs``), replacing the start's


class ApiCall(msgspec.Struct, tag="c", **_STRUCT):
    """One complete SDK call (a leaf span), emitted once when the call returns or raises.

    An SDK call has no children, so one event carries both ends: the request body exactly as the SDK
    serialised it, and the response body exactly as it arrived. Both are immutable bytes that the SDK
    already paid for, which is why recording them costs the caller nothing but a memcpy.
    """

    trace: int
    span: int
    parent: int
    root: int
    name: str  # e.g. "Messages.create"
    surface: str  # which converter the worker applies, e.g. "messages"
    start_ns: int
    end_ns: int
    request: bytes = b""  # request body JSON as sent
    response: bytes = b""  # response body JSON as received (or the error body)
    request_id: str = ""
    error: Failure | None = None
    ext_trace: str = ""
    experiment: str = ""
    tracking_uri: str = ""


class StreamStart(msgspec.Struct, tag="o", **_STRUCT):
    """A streamed SDK call whose response headers arrived: the span opens, its body is yet to come.

    Fields as ``ApiCall``'s, without the end and the response body, which follow as ``StreamChunk``s and a
    ``StreamEnd``. ``encoding`` is the response's ``content-encoding``: the chunks are the body's bytes as
    they came off the wire, so the worker decodes them (``""`` or ``identity`` for none).
    """

    trace: int
    span: int
    parent: int
    root: int
    name: str  # e.g. "Messages.create", "AsyncMessages.stream"
    surface: str  # which converter the worker applies, e.g. "messages"
    start_ns: int
    request: bytes = b""  # request body JSON as sent
    request_id: str = ""
    encoding: str = ""
    ext_trace: str = ""
    experiment: str = ""
    tracking_uri: str = ""


class StreamChunk(msgspec.Struct, tag="b", **_STRUCT):
    """Body bytes of an open stream, in arrival order, with each chunk's arrival time (a batch of many
    network chunks, so the caller appends to a list per chunk and encodes once per batch)."""

    span: int
    root: int
    chunks: list[bytes]
    times_ns: list[int]


class StreamEnd(msgspec.Struct, tag="z", **_STRUCT):
    """The stream was read to its end (``completed``), closed by the application or the SDK (``closed``),
    dropped unread or half read (``abandoned``), or its body failed (``failed``, with ``error``). It carries
    the chunks that arrived since the last ``StreamChunk``."""

    span: int
    root: int
    end_ns: int
    how: str
    chunks: list[bytes] = []
    times_ns: list[int] = []
    error: Failure | None = None


class _MlflowSpan(msgspec.Struct, array_like=True, omit_defaults=True, gc=False):
    """What both ends of a span of MLflow's own tracer carry (``@mlflow.trace``, ``mlflow.start_span``, another
    MLflow autolog; ``patches/mlflow_export.py``).

    Ids are MLflow's: ``trace_id`` its ``tr-...`` id, ``span`` and ``parent`` OpenTelemetry's 64-bit span ids.
    ``root`` is the spanline span whose unit the span belongs to when the trace is spanline's (an MLflow span
    under a spanline span); 0 when MLflow owns the trace. ``attributes`` are the span's as MLflow set them
    (its values JSON text).
    """

    trace_id: str
    span: int
    parent: int
    root: int
    name: str
    start_ns: int
    attributes: dict[str, Any]


class MlflowSpanStart(_MlflowSpan, tag="m", **_STRUCT):
    """A span of MLflow's opened. Kept so that a span still open when its process dies is stored as far as it
    got. Encoded on the worker from the live span, which by then holds the type and inputs MLflow sets just
    after opening it. A trace's root carries the trace's tags as MLflow's tracer set them (stored with the
    trace if its process dies before the trace's info comes)."""

    experiment: str = ""
    tracking_uri: str = ""
    trace_tags: dict[str, str] = {}


class MlflowSpanEnd(_MlflowSpan, tag="x", **_STRUCT):
    """A span of MLflow's ended: the whole span, as MLflow's exporter would have written it (so the end alone
    makes the span when its start was not seen). ``status`` is OpenTelemetry's code (0 unset, 1 ok, 2 error);
    ``events`` are (name, time_ns, attributes). ``attachments`` are the payloads MLflow took out of the span's
    inputs and outputs (``mlflow.Attachment``, base64 data URIs): (id, content type, bytes), the span's
    ``mlflow-attachment://`` references naming them; MLflow's exporter would upload them with the trace."""

    end_ns: int
    events: list[tuple[str, int, dict[str, Any]]] = []
    status: int = 0
    status_message: str = ""
    tracking_uri: str = ""
    attachments: list[tuple[str, str, bytes]] = []  # these two last: a log without them still decodes, and the
    # other way. The experiment of the span's trace, for an end whose start was not seen (MLflow opened the span
    # before spanline took its spans): without it, that span was placed in the producer's first experiment.
    experiment: str = ""


class MlflowTraceEnd(msgspec.Struct, tag="t", **_STRUCT):
    """A trace MLflow's tracer roots ended (its root and every span of MLflow's under it): its info as MLflow's
    exporter would have sent it with ``start_trace`` (tags and metadata as ``mlflow.update_current_trace`` left
    them, token usage, state, previews' source). The writer stores the trace whole when this arrives."""

    trace_id: str
    experiment: str
    request_time: int
    execution_duration: int | None
    state: str
    trace_metadata: dict[str, str]
    tags: dict[str, str]
    client_request_id: str | None = None
    tracking_uri: str = ""
    prompts: list[tuple[str, int]] = []  # prompt versions (name, version) the trace used, linked once it is stored


Event = (
    SpanStart | SpanEnd | ApiCall | StreamStart | StreamChunk | StreamEnd | MlflowSpanStart | MlflowSpanEnd
    | MlflowTraceEnd
)

encode = msgspec.msgpack.Encoder().encode
decode = msgspec.msgpack.Decoder(Event).decode

Deferred = tuple  # (make, *fields): ``make(*fields)`` returns the encoded event


def encode_deferred(item: bytes | Deferred) -> bytes:
    """A queued event as bytes: an encoded one as it is, a deferred one encoded now (on the worker)."""
    return item if type(item) is bytes else item[0](*item[1:])
