"""Writes complete units of spans to MLflow's tracking store, many traces per store call.

In: ``Unit``s from an assembler: in the writer process, on its store threads (pipeline/fanout.py); in the
in-process mode, on the application's worker thread (pipeline/inprocess.py). Out: rows in the tracking store,
through its ``log_spans`` (SQL stores write them directly; the REST store sends OTLP to the server's
``/v1/traces``).

No ``start_trace``: ``log_spans`` alone creates each trace row from its spans (previews from the root's
inputs and outputs, state, duration, token usage and cost aggregated over the tree, the trace name from
the root's ``mlflow.traceTag.mlflow.traceName``), and merges spans into a trace that already exists, which
is how spans under an ``@mlflow.trace`` parent join MLflow's own trace. The trace metadata MLflow's own
tracer writes (which ``log_spans`` does not) follows each write, from ``trace_metadata``. On MLflow's SQL
store, traces new to it take ``bulkstore`` instead, where its gate allows: the same rows, metadata included,
in one transaction per batch. This module and the ones it calls are the only ones that import mlflow.
"""

from __future__ import annotations

import functools
import logging
import re
from collections import defaultdict
from collections.abc import Callable, Sequence

from mlflow.entities import Span, SpanStatus
from mlflow.tracking._tracking_service.utils import _get_store
from mlflow.tracking.fluent import _get_experiment_id
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event as OTelEvent
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanContext, Status, StatusCode

from . import attachments, bulkstore, compat, environment, trace_metadata
from .assembler import SpanRecord, Unit
from .events import MlflowTraceEnd

logger = logging.getLogger("spanline")
_EMPTY_RESOURCE = Resource.get_empty()
_OK = Status(StatusCode.OK)


# A NUL character is text no PostgreSQL column holds: MLflow copies a span's name, its inputs' and outputs'
# previews and its trace tags into text columns, and the store refused the whole trace. Stored instead as
# U+FFFD, the character that stands for one that cannot be shown, in every store alike: a trace reads the
# same wherever it is. Attribute values are JSON text, where a NUL is the escape \u0000 (not \\u0000, an
# escaped backslash before the letters "u0000").
_NUL_STAND_IN = trace_metadata.NUL_STAND_IN
_NUL_ESCAPE = re.compile(r"(?<!\\)((?:\\\\)*)\\u0000")


def _without_nul(value: str) -> str:
    return _NUL_ESCAPE.sub(r"\1\\ufffd", value) if "\\u0000" in value else value


def _otel_trace_id(trace_id: str) -> int:
    return int(trace_id[3:], 16)


def to_mlflow_span(rec: SpanRecord) -> Span:
    trace_int = _otel_trace_id(rec.trace_id)
    attributes = rec.attributes
    if attachments.PENDING_KEY in attributes:  # payloads on their way to the artifact store, not attributes
        attributes = {k: v for k, v in attributes.items() if k != attachments.PENDING_KEY}
    name = rec.name
    if "\x00" in name:
        name = name.replace("\x00", _NUL_STAND_IN)
    if any("\\u0000" in v for v in attributes.values() if type(v) is str):
        attributes = {k: _without_nul(v) if type(v) is str else v for k, v in attributes.items()}
    otel = ReadableSpan(
        name=name,
        context=SpanContext(trace_id=trace_int, span_id=rec.span, is_remote=False),
        parent=SpanContext(trace_id=trace_int, span_id=rec.parent, is_remote=False) if rec.parent else None,
        resource=_EMPTY_RESOURCE,
        attributes=attributes,
        events=[OTelEvent(e["name"], e["attributes"], e["time_ns"]) for e in rec.events],
        status=_status(rec),
        start_time=rec.start_ns,
        end_time=rec.end_ns,
    )
    return _StoredSpan(otel)


class _StoredSpan(Span):
    """A span on its way to the store: it no longer changes, so its dict, which MLflow's translation and the
    trace's size figures each ask for (~15 µs a span), is made once."""

    def to_dict(self) -> dict:
        made = self.__dict__.get("_spanline_dict")
        if made is None:
            made = self._spanline_dict = super().to_dict()
        return {**made}  # a dict of its own: MLflow's translation replaces the "attributes" entry of its copy

    @property
    def status(self) -> SpanStatus:
        # MLflow builds a new SpanStatus from the OTel status at each read, and a stored span's is read five
        # times (its dict, its trace's state, the trace's info, the bulk path's row): ~4 µs a span, once here.
        made = self.__dict__.get("_spanline_status")
        if made is None:
            made = self._spanline_status = super().status
        return made


def _status(rec: SpanRecord) -> Status:
    if rec.status >= 0:  # MLflow's own span: its status as its tracer set it
        code = StatusCode(rec.status)
        return Status(code, rec.error or None) if code is StatusCode.ERROR else Status(code)
    return Status(StatusCode.ERROR, rec.error) if rec.error else _OK


class MlflowSink:
    """Groups units by store and experiment, and writes each group with one ``log_spans`` call; then the
    trace metadata MLflow's tracer would have written (``trace_metadata``)."""

    def __init__(self, experiment_id: Callable[[], str | None]) -> None:
        self._configured_experiment = experiment_id
        self._refresher = trace_metadata.Refresher()

    def experiment_for(self, unit: Unit, fallback: Callable[[], str]) -> str:
        if unit.experiment and unit.in_mlflow_trace:
            return unit.experiment  # part of a trace MLflow owns: it lives in that trace's experiment
        return self._configured_experiment() or unit.experiment or fallback()

    def write(self, units: Sequence[Unit]) -> None:
        """Store ``units``; raises if the store fails (the worker retries and accounts for them: every step
        here can be repeated, ``log_spans`` and the metadata upserts alike)."""
        groups: dict[tuple[str, str], _Group] = defaultdict(_Group)
        # MLflow's default-experiment lookup costs ~150 µs (it probes for notebook contexts): once per write.
        fallback = functools.cache(lambda: _get_experiment_id() or "0")
        for unit in units:
            group = groups[(unit.tracking_uri, self.experiment_for(unit, fallback))]
            for rec in unit.spans:
                if attachments.PENDING_KEY in rec.attributes:
                    group.attachments[unit.trace_id].extend(attachments.resolve(rec.attributes, unit.trace_id))
            spans = [to_mlflow_span(rec) for rec in unit.spans]
            if spans:  # (a trace of MLflow's whose spans all came before spanline took them has its info alone)
                group.spans.extend(spans)
                group.by_trace[unit.trace_id].extend(spans)
            if unit.mlflow_info is not None:
                group.mlflow_infos[unit.trace_id] = unit.mlflow_info
            elif any(rec.is_trace_root for rec in unit.spans):
                # The producing process's environment travels with the unit. An empty one means the unit
                # never left the process that made it (the in-process worker), so resolving it here is right.
                group.producers[unit.trace_id] = unit.producer or environment.describe()
        for (tracking_uri, experiment), group in groups.items():
            store = _get_store(tracking_uri or None)
            # Traces MLflow's tracer rooted: their info first, as its exporter would send it (start_trace), so
            # that the store creates each trace from it; log_spans then adds the spans and leaves the fields
            # start_trace made final. (After log_spans, start_trace would find the trace there and merge into
            # it row by row: the same trace for ~4× the store's CPU on sqlite.) The bulk path takes no trace the
            # store already has, so these take log_spans.
            for trace_id, info in group.mlflow_infos.items():
                store.start_trace(trace_metadata.for_mlflow_root(info, group.by_trace.get(trace_id, [])))
            rows = {
                trace_id: trace_metadata.for_spanline_root(trace_id, experiment, group.by_trace[trace_id], producer)
                for trace_id, producer in group.producers.items()
            }
            gate = bulkstore.gate(store)
            stored: set[str] = set()
            fallbacks = {gate.reason: len(group.by_trace)}
            if gate.bulk:  # the traces new to the store, with their metadata, in one transaction
                stored, fallbacks = bulkstore.write(
                    store, experiment, group.by_trace, {t: metadata for t, (_, metadata) in rows.items()}
                )
            rest = group.by_trace if not stored else {t: s for t, s in group.by_trace.items() if t not in stored}
            if rest:
                spans = group.spans if rest is group.by_trace else [s for part in rest.values() for s in part]
                try:
                    for call in compat.log_spans_calls(store, rest, spans):
                        store.log_spans(experiment, call)
                except NotImplementedError:
                    _forget_server_version(store)
                    raise
                trace_metadata.write(store, {t: row for t, row in rows.items() if t in rest})
            bulkstore.note(gate, len(stored), fallbacks, tracking_uri)
            for trace_id, info in group.mlflow_infos.items():
                if info.prompts:
                    _link_prompts(store, trace_id, info.prompts)
            # After log_spans: it created each trace with the artifact location the uploads go to.
            for trace_id, found in group.attachments.items():
                attachments.upload(store, tracking_uri or None, trace_id, found)
            # Parts of traces rooted elsewhere (or written before their root): their size figures are
            # recomputed over every stored span once the trace is finalized.
            self._refresher.add(
                tracking_uri, [t for t in group.by_trace if t not in group.producers and t not in group.mlflow_infos]
            )
        self.refresh()

    def refresh(self) -> None:
        """Recompute the size figures of traces finalized since they were last looked at."""
        self._refresher.run(_get_store)


class _Group:
    """What one ``log_spans`` call writes: spans, the same by trace, and the producers of traces rooted here."""

    __slots__ = ("attachments", "by_trace", "mlflow_infos", "producers", "spans")

    def __init__(self) -> None:
        self.spans: list[Span] = []
        self.attachments: dict[str, list[attachments.Attachment]] = defaultdict(list)
        self.by_trace: dict[str, list[Span]] = defaultdict(list)
        self.producers: dict[str, dict[str, str]] = {}
        self.mlflow_infos: dict[str, MlflowTraceEnd] = {}  # traces MLflow's tracer rooted, whole


def _link_prompts(store: object, trace_id: str, prompts: list[tuple[str, int]]) -> None:
    """The prompt versions a trace used (``mlflow.genai.load_prompt`` in it), linked as MLflow's exporter links
    them once the trace is stored: the association rows (the trace's ``mlflow.linkedPrompts`` tag came with its
    info). Idempotent: the store skips links it has."""
    from mlflow.entities.model_registry import PromptVersion

    try:
        store.link_prompts_to_trace(trace_id, [PromptVersion(name, version, template="") for name, version in prompts])
    except Exception as exc:  # as MLflow's exporter: a link that fails costs the trace nothing (said once)
        if type(exc).__name__ not in _link_failures:
            _link_failures.add(type(exc).__name__)
            logger.warning("spanline: prompt versions not linked to trace %s: %r", trace_id, exc)


_link_failures: set[str] = set()


def _forget_server_version(store: object) -> None:
    """MLflow's REST store caches the server's version per host (``lru_cache``), a failed look-up included:
    a first ``log_spans`` during an outage would fail with "could not identify MLflow server version" for the
    rest of the process's life. Forget it, so the retry after the outage asks again."""
    cache_clear = getattr(getattr(type(store), "_get_server_version", None), "cache_clear", None)
    if cache_clear is not None:
        cache_clear()
