"""Folds events into spans and spans into units that are ready to store.

In: decoded events, in emission order per thread (``add``), on the application's worker thread or in the
writer process (one assembler per producer). Out: ``Unit``s from ``take()``: the spans of one subtree whose
outermost spanline span has ended. It owns the spans and their units: ``surfaces`` and ``streams`` say what an
SDK call's span holds, ``convert`` turns payloads into attributes; neither calls back here.

A unit is complete when its root ends; children always end before their parent in well-nested code, so
that is when the subtree is whole. A unit usually is a whole trace. Two cases make it a part of one:
the unit hangs under a span of MLflow's own tracer (MLflow writes that trace; the store merges our
spans into it), or a child outlives its root (a task left running). The store's ``log_spans`` merges
spans into an existing trace and re-aggregates it, so a late part is written on its own.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import attachments, context, convert, streams, surfaces
from .events import (
    ApiCall,
    Event,
    Failure,
    MlflowSpanEnd,
    MlflowSpanStart,
    MlflowTraceEnd,
    SpanEnd,
    SpanStart,
    StreamChunk,
    StreamEnd,
    StreamStart,
)
from .policy import ContentPolicy
from .stats import Counters, DropReason

MAX_OPEN_SPANS = 100_000
# Traces MLflow's tracer roots, held until their info arrives: past this many (their info events lost to a full
# queue, say), the oldest is stored as far as it is, without its info, rather than held forever.
MAX_HELD_TRACES = 10_000

# A trace tag, set (through its root span's ``mlflow.traceTag.`` attribute, which ``log_spans`` turns into a
# tag) on a trace in which a reply was cut short: a stream closed or dropped before its end (``closed``,
# ``abandoned``), one whose body failed (``failed``), or a run the process ended before it finished
# (``unfinished``). MLflow's trace list shows tags, and they can be searched (``tags.`spanline.cut_short` =
# 'abandoned'``); without it such a trace reads as a successful call with a short or empty reply. Why a tag:
# docs/streaming.md.
CUT_SHORT_TAG = "spanline.cut_short"


@dataclass(slots=True)
class SpanRecord:
    trace_id: str  # MLflow trace id, "tr-" + 32 hex digits
    span: int
    parent: int
    root: int
    name: str
    span_type: str
    start_ns: int
    end_ns: int = 0
    attributes: dict[str, str] = field(default_factory=dict)
    events: list[dict] = field(default_factory=list)
    error: str = ""  # status message; non-empty means status ERROR
    experiment: str = ""  # MLflow's active experiment when the trace began ("" = resolve when writing)
    tracking_uri: str = ""
    in_mlflow_trace: bool = False  # hangs under a span of MLflow's own tracer
    event_count: int = 1  # how many queue events built this span (for drop accounting)
    is_trace_root: bool = False
    status: int = -1  # a span of MLflow's own tracer: its OpenTelemetry status code (-1: spanline's, see error)


@dataclass(slots=True)
class Unit:
    trace_id: str
    experiment: str
    tracking_uri: str
    spans: list[SpanRecord]
    # The producing process's environment metadata (``environment.describe()``), shared by all its units.
    producer: dict[str, str] = field(default_factory=dict)
    # A whole trace rooted by MLflow's own tracer: its info, as MLflow's exporter would send it (``start_trace``).
    mlflow_info: MlflowTraceEnd | None = None

    @property
    def event_count(self) -> int:
        return sum(s.event_count for s in self.spans)

    @property
    def in_mlflow_trace(self) -> bool:
        """Part of a trace MLflow's tracer roots: its spans, or its info alone (its spans all came before
        spanline took MLflow's spans). Such a unit lives in that trace's experiment."""
        return self.mlflow_info is not None or (bool(self.spans) and self.spans[0].in_mlflow_trace)


class Assembler:
    def __init__(
        self,
        counters: Counters,
        policy: Callable[[], ContentPolicy],
        producer: dict[str, str] | None = None,
    ) -> None:
        self.counters = counters
        self.policy = policy
        self.producer = producer if producer is not None else {}
        self.open: dict[int, SpanRecord] = {}
        self.waiting: dict[int, list[SpanRecord]] = {}  # root span -> its ended descendants
        self.streams: dict[int, streams.StreamState] = {}  # span -> the open stream's body so far
        self.cut_short: dict[int, str] = {}  # root span -> how a reply under it was cut short (CUT_SHORT_TAG)
        # Traces MLflow's own tracer roots whose root is open: their ended spans, MLflow's and spanline's, held
        # until the trace's info arrives (MlflowTraceEnd), so the writer stores each such trace whole.
        self.mlflow_traces: dict[str, _HeldTrace] = {}
        self.ready: list[Unit] = []
        self._fold: dict[type, Callable[[Any], None]] = {
            ApiCall: self._api_call, SpanStart: self._start, SpanEnd: self._end,
            StreamStart: self._stream_event, StreamChunk: self._stream_event, StreamEnd: self._stream_event,
            MlflowSpanStart: self._mlflow_start, MlflowSpanEnd: self._mlflow_end,
            MlflowTraceEnd: self._mlflow_trace_end,
        }

    def add(self, event: Event) -> None:
        """Fold one event: a span opens, grows or ends; a unit whose root ended becomes ready (``take``)."""
        self._fold[type(event)](event)

    def take(self) -> list[Unit]:
        """The units made ready since the last call."""
        ready, self.ready = self.ready, []
        return ready

    # --- folding ------------------------------------------------------------------------------------

    @staticmethod
    def _record(ev: SpanStart | ApiCall | StreamStart, span_type: str) -> SpanRecord:
        """A span from the fields both kinds of opening event carry; MLflow's first two attributes set."""
        trace_id = ev.ext_trace or context.mlflow_trace_id(ev.trace)
        return SpanRecord(
            trace_id=trace_id,
            span=ev.span,
            parent=ev.parent,
            root=ev.root,
            name=ev.name,
            span_type=span_type,
            start_ns=ev.start_ns,
            attributes={"mlflow.traceRequestId": convert.dumps(trace_id), "mlflow.spanType": convert.dumps(span_type)},
            experiment=ev.experiment,
            tracking_uri=ev.tracking_uri,
            in_mlflow_trace=bool(ev.ext_trace),
            is_trace_root=ev.parent == 0,
        )

    @staticmethod
    def _merge_attributes(rec: SpanRecord, raw: bytes) -> None:
        # User attributes arrive as one JSON object; MLflow stores each value as JSON text.
        for key, value in convert.load(raw).items():
            rec.attributes[key] = convert.dumps(value)

    def _start(self, ev: SpanStart) -> None:
        rec = self._record(ev, ev.span_type)
        if ev.attributes:
            self._merge_attributes(rec, ev.attributes)
        if ev.inputs:
            self._set_payload(rec, "mlflow.spanInputs", ev.inputs)
        self._open(rec)
        if ev.root == ev.span:
            self.waiting[ev.span] = []

    def _open(self, rec: SpanRecord) -> None:
        if len(self.open) >= MAX_OPEN_SPANS:
            # A span that never ends (an abandoned generator, a leaked context) must not hold memory
            # forever: the oldest open span goes, counted.
            evicted = self.open.pop(next(iter(self.open)))
            self.streams.pop(evicted.span, None)
            if evicted.status >= 0 and evicted.is_trace_root:
                self.mlflow_traces.pop(evicted.trace_id, None)
            self.counters.drop(DropReason.ORPHANED)
        self.open[rec.span] = rec

    def _end(self, ev: SpanEnd) -> None:
        rec = self.open.pop(ev.span, None)
        if rec is None:
            # Its start was dropped (full queue) or evicted: the end alone cannot make a span.
            self.counters.drop(DropReason.ORPHANED)
            return
        rec.end_ns = ev.end_ns
        rec.event_count = 2
        if ev.attributes:
            self._merge_attributes(rec, ev.attributes)
        if ev.inputs:
            self._set_payload(rec, "mlflow.spanInputs", ev.inputs)
        if ev.outputs:
            self._set_payload(rec, "mlflow.spanOutputs", ev.outputs)
        self._set_outcome(rec, ev.error)
        self._finish(rec, ev.root)

    def _set_payload(self, rec: SpanRecord, key: str, raw: bytes) -> None:
        """Store user inputs or outputs (JSON text) under the content policy."""
        policy = self.policy()
        if policy.capture_content == "metadata":
            return  # user spans' inputs and outputs are all content
        if policy.redact is None:
            text = convert.reformat(raw)  # the common case: no parse into Python objects at all
        else:
            text = convert.dumps(policy.redact(convert.load(raw)))
        rec.attributes[key] = convert.bounded(text, policy.max_content_bytes)

    def _api_call(self, ev: ApiCall) -> None:
        """A complete SDK call: ``surfaces`` says what span it is (and what spans hang under it: a batch's
        results); here they get their ids and join their unit."""
        shape, children = surfaces.call_spans(ev, self.policy())
        rec = self._record(ev, shape.span_type)
        rec.end_ns = ev.end_ns
        rec.attributes.update(shape.attributes)
        self._set_outcome(rec, shape.error)
        if children and ev.span == ev.root and ev.root not in self.waiting:
            self.waiting[ev.root] = []  # the call's span roots its trace: its children wait for it
        for child in children:
            sub = self._record(ev, child.span_type)
            sub.span = context.new_span_id()
            sub.parent = ev.span
            sub.is_trace_root = False
            sub.name = child.name
            sub.end_ns = ev.end_ns
            sub.attributes.update(child.attributes)
            self._set_outcome(sub, child.error)
            self._finish(sub, ev.root)
        self._finish(rec, ev.root)

    def _stream_event(self, ev: StreamStart | StreamChunk | StreamEnd) -> None:
        """A streamed call: its span opens at ``StreamStart``, its body's bytes are folded into the message
        as they come (``streams.StreamState``), and it ends at ``StreamEnd``."""
        if type(ev) is StreamStart:
            rec = self._record(ev, "CHAT_MODEL")
            self._open(rec)
            provider = ev.surface.partition("@")[2]
            self.streams[ev.span] = streams.StreamState(ev.request, ev.request_id, ev.encoding, ev.start_ns, provider)
            return
        rec, state = self.open.get(ev.span), self.streams.get(ev.span)
        if rec is None or state is None:
            self.counters.drop(DropReason.ORPHANED)  # its start was dropped or evicted
            return
        rec.event_count += 1
        state.feed(ev.chunks, ev.times_ns)
        if type(ev) is StreamChunk:
            return
        del self.open[ev.span], self.streams[ev.span]
        rec.end_ns = ev.end_ns
        state.finish()
        error = ev.error
        if error is None and state.error_body is not None:
            # An SSE error event the caller's side did not see raised (the SDK raises APIStatusError with
            # the event's parsed body as its message).
            error = Failure("APIStatusError", str(convert.load(state.error_body.encode())), "", ev.end_ns)
        rec.attributes.update(state.attributes(ev.how, error is not None, self.policy()))
        if (ev.how != "completed" or error is not None) and (ev.root == ev.span or ev.root in self.waiting):
            # (A root that already ended is stored without it: a part of a trace carries no trace tag.)
            self.cut_short.setdefault(ev.root, ev.how if ev.how != "completed" else "failed")
        self._set_outcome(rec, error)
        self._finish(rec, ev.root)

    def _set_outcome(self, rec: SpanRecord, error: Failure | None) -> None:
        if error is not None:
            rec.error = f"{error.type}: {error.message}"
            rec.events.append(
                {
                    "name": "exception",
                    "time_ns": error.time_ns,
                    "attributes": {
                        "exception.message": error.message,
                        "exception.type": error.type,
                        "exception.stacktrace": error.stacktrace,
                    },
                }
            )
        rec.attributes["mlflow.spanLogLevel"] = str(convert.default_log_level(rec.span_type, bool(rec.error)))
        if rec.is_trace_root:
            # Without start_trace, the store names the trace from this root-span attribute.
            rec.attributes["mlflow.traceTag.mlflow.traceName"] = convert.dumps(rec.name)

    def _finish(self, rec: SpanRecord, root: int) -> None:
        if rec.span == root:
            how = self.cut_short.pop(root, None) if self.cut_short else None
            if how is not None and rec.is_trace_root:
                rec.attributes["mlflow.traceTag." + CUT_SHORT_TAG] = convert.dumps(how)
            spans = self.waiting.pop(root, [])
            spans.append(rec)
            self._complete(Unit(rec.trace_id, rec.experiment, rec.tracking_uri, spans, self.producer))
            return
        siblings = self.waiting.get(root)
        if siblings is None:
            # The root already ended: this span outlived it. Store it on its own; the store merges it.
            self._complete(Unit(rec.trace_id, rec.experiment, rec.tracking_uri, [rec], self.producer))
        else:
            siblings.append(rec)

    def _complete(self, unit: Unit) -> None:
        """A unit is whole: ready to store, unless it hangs in a trace of MLflow's whose root is still open."""
        if self.mlflow_traces and unit.spans[0].in_mlflow_trace:
            held = self.mlflow_traces.get(unit.trace_id)
            if held is not None:
                held.spans.extend(unit.spans)
                return
        self.ready.append(unit)

    # --- spans of MLflow's own tracer (patches/mlflow_export.py) ------------------------------------------

    @staticmethod
    def _mlflow_record(ev: MlflowSpanStart | MlflowSpanEnd) -> SpanRecord:
        span_type = ev.attributes.get("mlflow.spanType")
        return SpanRecord(
            trace_id=ev.trace_id,
            span=ev.span,
            parent=ev.parent,
            root=ev.root,
            name=ev.name,
            span_type=convert.load(span_type.encode()) if isinstance(span_type, str) else "UNKNOWN",
            start_ns=ev.start_ns,
            attributes=dict(ev.attributes),
            experiment=getattr(ev, "experiment", ""),
            tracking_uri=ev.tracking_uri,
            in_mlflow_trace=not ev.root,  # in a trace MLflow roots (else in spanline's unit ``root``)
            is_trace_root=ev.parent == 0,
            status=0,
        )

    def _mlflow_start(self, ev: MlflowSpanStart) -> None:
        rec = self._mlflow_record(ev)
        self._open(rec)
        if rec.is_trace_root and not ev.root:
            if len(self.mlflow_traces) >= MAX_HELD_TRACES:
                oldest = next(iter(self.mlflow_traces))
                held = self.mlflow_traces.pop(oldest)
                if held.spans:
                    self.ready.append(Unit(oldest, held.experiment, held.tracking_uri, held.spans, self.producer))
            self.mlflow_traces.setdefault(ev.trace_id, _HeldTrace(ev.experiment, ev.tracking_uri, ev.trace_tags))

    def _mlflow_end(self, ev: MlflowSpanEnd) -> None:
        rec = self.open.pop(ev.span, None)
        unseen_start = rec is None or rec.trace_id != ev.trace_id
        if unseen_start:
            rec = self._mlflow_record(ev)  # its start came before spanline took MLflow's spans: the end is whole
        else:
            rec.event_count = 2
        rec.name = ev.name
        rec.end_ns = ev.end_ns
        rec.attributes = dict(ev.attributes)
        rec.events = [{"name": name, "time_ns": time_ns, "attributes": attrs} for name, time_ns, attrs in ev.events]
        rec.status = ev.status
        rec.error = ev.status_message if ev.status == 2 else ""
        if ev.attachments:  # uploaded by the sink once the trace is stored, as spanline's own (attachments.py)
            rec.attributes[attachments.PENDING_KEY] = [attachments.Attachment(*a) for a in ev.attachments]
        self._finish_mlflow(rec, wait_for_info=unseen_start and not rec.experiment)

    def _finish_mlflow(self, rec: SpanRecord, wait_for_info: bool = False) -> None:
        if rec.root:
            self._finish(rec, rec.root)  # an MLflow span in spanline's trace: it joins spanline's unit
            return
        held = self.mlflow_traces.get(rec.trace_id)
        if held is None and wait_for_info:
            # Its start came before spanline took MLflow's spans, and its end could not name the trace's
            # experiment: it waits for the trace's info, which does (else the producer's would be guessed).
            held = self.mlflow_traces[rec.trace_id] = _HeldTrace("", rec.tracking_uri, {})
        if held is not None:
            held.spans.append(rec)
        else:  # its trace's info came already, or its start before spanline took MLflow's spans: the store merges it
            self.ready.append(Unit(rec.trace_id, rec.experiment, rec.tracking_uri, [rec], self.producer))

    def _mlflow_trace_end(self, ev: MlflowTraceEnd) -> None:
        held = self.mlflow_traces.pop(ev.trace_id, None)
        spans = held.spans if held is not None else []
        self.ready.append(Unit(ev.trace_id, ev.experiment, ev.tracking_uri, spans, self.producer, ev))

    def close_all(self) -> None:
        """At shutdown: end every open span now, marked unfinished, so what was recorded is not lost."""
        now = time.time_ns()
        open_spans, self.open = self.open, {}
        # Descendants first, so each root's unit collects its unfinished children before it closes.
        for rec in sorted(open_spans.values(), key=lambda r: r.span == r.root):
            rec.end_ns = now
            rec.event_count = 1
            rec.attributes["spanline.unfinished"] = "true"
            if rec.status >= 0:  # MLflow's span: stored as far as it got, as spanline's are
                rec.status = 1
                if rec.root:
                    self.cut_short[rec.root] = "unfinished"
                self._finish_mlflow(rec)
                continue
            self.cut_short[rec.root] = "unfinished"  # whatever else was cut short, the run itself was
            state = self.streams.pop(rec.span, None)
            if state is not None:  # a stream whose end never came: store the message as far as it arrived
                state.finish()
                rec.attributes.update(state.attributes("unfinished", False, self.policy()))
            self._set_outcome(rec, None)
            self._finish(rec, rec.root)
        # MLflow's traces whose info never came: stored as spanline's unfinished runs are, with the tags
        # MLflow's tracer gave them at their start.
        held_traces, self.mlflow_traces = self.mlflow_traces, {}
        for trace_id, held in held_traces.items():
            root = next((r for r in held.spans if r.is_trace_root), None)
            if root is not None:
                for key, value in held.tags.items():
                    root.attributes.setdefault("mlflow.traceTag." + key, convert.dumps(value))
                root.attributes["mlflow.traceTag." + CUT_SHORT_TAG] = convert.dumps("unfinished")
            if held.spans:
                self.ready.append(Unit(trace_id, held.experiment, held.tracking_uri, held.spans, self.producer))

    @property
    def open_spans(self) -> int:
        return len(self.open)


class _HeldTrace:
    """A trace MLflow's tracer roots, while its root is open: where it goes, its tags at the start, its spans."""

    __slots__ = ("experiment", "spans", "tags", "tracking_uri")

    def __init__(self, experiment: str, tracking_uri: str, tags: dict[str, str]) -> None:
        # From the root's start; a trace whose start was not seen is held for its info with none known yet.
        self.experiment = experiment
        self.tracking_uri = tracking_uri
        self.tags = tags
        self.spans: list[SpanRecord] = []
