"""The trace metadata MLflow's own tracer writes, for traces spanline writes with ``log_spans`` alone.

In: on the thread that runs the sink (the worker, or the writer process), the MLflow spans of units the sink
has just stored, and the producer's environment (``Unit.producer``). Out: rows in the store's trace metadata.

``log_spans`` writes no trace metadata and ``start_trace`` is the costliest store call, so:

- A trace spanline roots gets, once its root is stored, what MLflow's processor and exporter write for the
  same trace (``BaseMlflowSpanProcessor._get_basic_trace_metadata`` / ``_update_trace_info`` and
  ``add_size_stats_to_trace_metadata``): the producer's ``mlflow.source.*`` / ``mlflow.user`` /
  ``mlflow.source.git.*``, ``mlflow.trace_schema.version``, ``mlflow.traceInputs`` / ``traceOutputs``,
  ``mlflow.trace.sizeBytes`` / ``sizeStats`` and ``mlflow.trace.infoFinalized``.
- A trace someone else roots (``@mlflow.trace``) and spanline adds spans to: once MLflow has finalized it
  (its ``start_trace`` wrote ``infoFinalized`` and size figures that count MLflow's spans only), its size
  figures are recomputed over every stored span. Until then the trace waits in ``Refresher.pending``.

On a SQL store the rows go straight into MLflow's ``trace_request_metadata`` table, one delete and one
insert per batch; through a server, whose REST API has no call for trace metadata alone and no batch call,
one EndTrace request per trace (see ``_write_one_rest``), sent from a thread of its own (``wait_idle``).
"""

from __future__ import annotations

import collections
import logging
import os
import threading
import time
from collections.abc import Iterable, Sequence
from typing import Any

from mlflow.entities import Span, Trace, TraceData, TraceInfo, TraceLocation, TraceLocationType, TraceState
from mlflow.tracing.constant import (
    MAX_CHARS_IN_TRACE_INFO_METADATA,
    TRACE_SCHEMA_VERSION,
    TRACE_SCHEMA_VERSION_KEY,
    TRUNCATION_SUFFIX,
    SpanAttributeKey,
    TraceMetadataKey,
)
from mlflow.tracing.utils import add_size_stats_to_trace_metadata
from spanline.pipeline.compat import INFO_FINALIZED, mlflow_wrote_trace_info
from spanline.pipeline.events import MlflowTraceEnd

logger = logging.getLogger("spanline")

SIZE_KEYS = (TraceMetadataKey.SIZE_STATS, TraceMetadataKey.SIZE_BYTES)
_PENDING_FOR_S = 600.0  # how long a trace MLflow has not finalized yet is looked at again


def _truncated(value: str | None) -> str:
    # BaseMlflowSpanProcessor._truncate_metadata
    if not value:
        return ""
    if len(value) > MAX_CHARS_IN_TRACE_INFO_METADATA:
        return value[: MAX_CHARS_IN_TRACE_INFO_METADATA - len(TRUNCATION_SUFFIX)] + TRUNCATION_SUFFIX
    return value


def _root(spans: Sequence[Span]) -> Span | None:
    return next((s for s in spans if s.parent_id is None), None)


class _Info(TraceInfo):
    """A ``TraceInfo`` whose ``to_dict`` builds directly the dict MLflow's builds through protobuf
    (``MessageToDict(self.to_proto())``). ``add_size_stats_to_trace_metadata`` serialises each trace's info
    once to size it, and the protobuf round trip cost ~250 µs of the writer's ~6 ms per trace on sqlite,
    none of it the store's. Same dict for what ``trace_info_for`` builds (an experiment location; no
    previews, client request id or assessments; tests/test_interop.py compares them); anything else goes
    to MLflow's own ``to_dict``."""

    def to_dict(self) -> dict[str, Any]:
        location = self.trace_location
        if (
            self.request_preview is not None
            or self.response_preview is not None
            or self.client_request_id is not None
            or self.assessments
            or location.type != TraceLocationType.MLFLOW_EXPERIMENT
            or location.mlflow_experiment is None
        ):
            return super().to_dict()
        out: dict[str, Any] = {
            "trace_id": self.trace_id,
            "trace_location": {
                "type": "MLFLOW_EXPERIMENT",
                "mlflow_experiment": {"experiment_id": location.mlflow_experiment.experiment_id},
            },
            "request_time": _rfc3339_ms(self.request_time),
            "state": TraceState(self.state).value,
        }
        if self.trace_metadata:  # protobuf leaves empty maps out
            out["trace_metadata"] = dict(self.trace_metadata)
        if self.tags:
            out["tags"] = dict(self.tags)
        if self.execution_duration is not None:
            out["execution_duration_ms"] = self.execution_duration
        return out


def _rfc3339_ms(ms: int) -> str:
    """A ``google.protobuf.Timestamp`` of ``ms`` milliseconds as ``MessageToDict`` writes it."""
    seconds, millis = divmod(ms, 1000)
    text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    return f"{text}.{millis:03d}Z" if millis else f"{text}Z"


def _whole(spans: Sequence[Span]) -> bool:
    """A root is stored and every span's parent is: no part of the trace is still on its way."""
    ids = {s.span_id for s in spans}
    return _root(spans) is not None and all(s.parent_id is None or s.parent_id in ids for s in spans)


def trace_info_for(trace_id: str, experiment_id: str, spans: Sequence[Span], metadata: dict[str, str]) -> TraceInfo:
    """The trace info MLflow's tracer would hold for these spans when it exports the trace."""
    root = _root(spans)
    start = min(s.start_time_ns for s in spans)
    end = max(s.end_time_ns or start for s in spans)
    if root is not None:
        start, end = root.start_time_ns, root.end_time_ns or end
    state = TraceState.ERROR if root is not None and root.status.status_code == "ERROR" else TraceState.OK
    return _Info(
        trace_id=trace_id,
        trace_location=TraceLocation.from_experiment_id(experiment_id),
        request_time=start // 1_000_000,
        execution_duration=(end - start) // 1_000_000,
        state=state,
        trace_metadata=metadata,
        tags={},
    )


def for_spanline_root(
    trace_id: str, experiment_id: str, spans: Sequence[Span], producer: dict[str, str]
) -> tuple[TraceInfo, dict[str, str]]:
    """Metadata of a trace spanline roots, and its trace info: ``spans`` are its stored spans, root included."""
    root = _root(spans)
    attributes = root._span.attributes if root is not None else {}
    metadata = dict(producer)
    metadata[TRACE_SCHEMA_VERSION_KEY] = str(TRACE_SCHEMA_VERSION)
    metadata[TraceMetadataKey.INPUTS] = _truncated(attributes.get(SpanAttributeKey.INPUTS))
    metadata[TraceMetadataKey.OUTPUTS] = _truncated(attributes.get(SpanAttributeKey.OUTPUTS))
    info = trace_info_for(trace_id, experiment_id, spans, metadata)
    add_size_stats_to_trace_metadata(Trace(info, TraceData(spans=list(spans))))
    metadata.update({k: info.trace_metadata[k] for k in SIZE_KEYS if k in info.trace_metadata})
    if INFO_FINALIZED is not None:  # older MLflow writes no such key (compat.py)
        metadata[INFO_FINALIZED] = "true"
    return info, metadata


def for_mlflow_root(info: MlflowTraceEnd, spans: Sequence[Span]) -> TraceInfo:
    """The info of a trace MLflow's tracer roots, as its exporter sends it with ``start_trace``: what its
    tracer left (``info``, patches/mlflow_export.py) and the size figures, here over every span of the trace
    (MLflow's counts the spans of its own tracer only; spanline's are in the same trace)."""
    trace_info = TraceInfo(
        trace_id=info.trace_id,
        trace_location=TraceLocation.from_experiment_id(info.experiment),
        request_time=info.request_time,
        execution_duration=info.execution_duration,
        state=TraceState(info.state),
        trace_metadata=_without_nul_chars(info.trace_metadata),
        tags=_without_nul_chars(info.tags),
        client_request_id=info.client_request_id and info.client_request_id.replace("\x00", NUL_STAND_IN),
    )
    add_size_stats_to_trace_metadata(Trace(trace_info, TraceData(spans=list(spans))))
    return trace_info


# A NUL character is text no PostgreSQL column holds, and the store refuses the whole trace for one. The sink
# stores each as U+FFFD in span names and attributes; the tags and metadata of a trace MLflow's tracer roots
# (its name, ``update_current_trace``) come here instead, and get the same stand-in.
NUL_STAND_IN = "\ufffd"


def _without_nul_chars(texts: dict[str, str]) -> dict[str, str]:
    if not any("\x00" in k or "\x00" in v for k, v in texts.items()):
        return dict(texts)
    return {k.replace("\x00", NUL_STAND_IN): v.replace("\x00", NUL_STAND_IN) for k, v in texts.items()}


def size_figures(trace: Trace) -> dict[str, str]:
    """``sizeStats`` and ``sizeBytes`` of a stored trace, over all its spans, as MLflow's exporter computes them."""
    info = TraceInfo.from_dict(trace.info.to_dict())
    info.trace_metadata = {k: v for k, v in info.trace_metadata.items() if k not in SIZE_KEYS}
    add_size_stats_to_trace_metadata(Trace(info, trace.data))
    return {k: info.trace_metadata[k] for k in SIZE_KEYS if k in info.trace_metadata}


# --- writing ------------------------------------------------------------------------------------------


def write(store: object, rows: dict[str, tuple[TraceInfo, dict[str, str]]]) -> None:
    """Store ``metadata`` for each trace id (upserted key by key); ``TraceInfo`` is for stores that need it."""
    if not rows:
        return
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    if isinstance(store, SqlAlchemyStore):
        _write_sql(store, {trace_id: metadata for trace_id, (_, metadata) in rows.items()})
        return
    # One request per trace (the server has no batch call for metadata) costs a server ~50-70 ms here, four
    # times its log_spans per trace: sent from a thread of their own, so that writing spans never waits
    # for them. ``wait_idle`` waits until they are sent.
    for info, metadata in rows.values():
        _sender.submit(store, info, metadata)


def wait_idle(timeout: float | None = None) -> bool:
    """Block until every metadata request for a server has been sent; False on timeout."""
    return _sender.wait_idle(timeout)


class _RestSender:
    """Daemon threads sending queued metadata requests to servers, bounded, retried, failures logged.

    A server spends ~13 ms of CPU on each request (one per trace: it has no batch call), three times its
    ``log_spans`` per trace, so one thread sent ~54 traces/s to ``mlflow server --workers 2`` (docs/scaling.md).
    ``SENDERS`` threads keep the server's workers busy (the writer's store requests each take a fresh
    connection, so they spread over them). A full queue makes ``submit`` wait instead of dropping: the store
    step, and with it the writer, goes at the server's pace, and what is not stored yet stays in the log.
    Only a queue that stays full for ``FULL_WAIT`` seconds (a server that answers nothing) drops, counted.
    """

    MAX_QUEUED = 10_000
    SENDERS = 4
    ATTEMPTS = 3
    FULL_WAIT = 300.0

    def __init__(self) -> None:
        self._reset()
        os.register_at_fork(after_in_child=self._reset)

    def _reset(self) -> None:
        self.items: collections.deque[tuple[object, TraceInfo, dict[str, str]]] = collections.deque()
        self.cv = threading.Condition()
        self.unfinished = 0
        self.dropped = 0
        self.threads: list[threading.Thread] = []

    def submit(self, store: object, info: TraceInfo, metadata: dict[str, str]) -> None:
        with self.cv:
            self._start_threads()
            if not self.cv.wait_for(lambda: len(self.items) < self.MAX_QUEUED, self.FULL_WAIT):
                self.dropped += 1
                logger.warning("spanline: trace metadata queue full for %.0f s; metadata of %s not sent",
                               self.FULL_WAIT, info.trace_id)
                return
            self.items.append((store, info, metadata))
            self.unfinished += 1
            self.cv.notify_all()

    def _start_threads(self) -> None:
        self.threads = [t for t in self.threads if t.is_alive()]
        while len(self.threads) < self.SENDERS:
            thread = threading.Thread(target=self._run, name=f"spanline-metadata-{len(self.threads)}", daemon=True)
            thread.start()
            self.threads.append(thread)

    def wait_idle(self, timeout: float | None) -> bool:
        with self.cv:
            return self.cv.wait_for(lambda: self.unfinished == 0, timeout)

    def _run(self) -> None:
        while True:
            with self.cv:
                self.cv.wait_for(lambda: bool(self.items))
                store, info, metadata = self.items.popleft()
                self.cv.notify_all()  # room in the queue: a waiting submit goes on
            try:
                for attempt in range(self.ATTEMPTS):
                    try:
                        _write_one_rest(store, info, metadata)
                        break
                    except Exception as exc:
                        if attempt + 1 == self.ATTEMPTS:
                            from .stats import report_internal_error

                            report_internal_error(None, "trace metadata", exc)
                        else:
                            time.sleep(0.2 * (attempt + 1))
            finally:
                with self.cv:
                    self.unfinished -= 1
                    self.cv.notify_all()


_sender = _RestSender()


def _write_one_rest(store: object, info: TraceInfo, metadata: dict[str, str]) -> None:
    """Through a server: its EndTrace call (v2, kept by MLflow 3 for older clients) merges metadata into an
    existing trace and costs a fraction of StartTrace on one that exists (which fails its insert, rolls back,
    locks and merges the whole trace info). Where EndTrace is gone, StartTrace."""
    end_trace = getattr(store, "deprecated_end_trace_v2", None)
    if end_trace is not None:
        from mlflow.entities.trace_status import TraceStatus

        try:
            end_trace(
                info.trace_id,
                info.request_time + (info.execution_duration or 0),
                TraceStatus.ERROR if info.state == TraceState.ERROR else TraceStatus.OK,
                metadata,
                {},
            )
            return
        except Exception as exc:  # an endpoint this server no longer has: use the one it must have
            if "ENDPOINT_NOT_FOUND" not in str(exc) and "404" not in str(exc):
                raise
    info.trace_metadata = {**info.trace_metadata, **metadata}
    store.start_trace(info)  # a server merges it into the trace log_spans created


def _write_sql(store: object, rows: dict[str, dict[str, str]]) -> None:
    from mlflow.store.tracking.dbmodels.models import SqlTraceMetadata
    from sqlalchemy import insert

    keys = sorted({key for metadata in rows.values() for key in metadata})
    values = [
        {"request_id": trace_id, "key": key, "value": value}
        for trace_id, metadata in sorted(rows.items())
        for key, value in sorted(metadata.items())
    ]
    with store.ManagedSessionMaker() as session:
        session.query(SqlTraceMetadata).filter(
            SqlTraceMetadata.request_id.in_(list(rows)), SqlTraceMetadata.key.in_(keys)
        ).delete(synchronize_session=False)
        session.execute(insert(SqlTraceMetadata), values)


class Refresher:
    """Size figures of traces other tracers finalize, recomputed once they have (see the module doc)."""

    def __init__(self) -> None:
        # (tracking uri, trace id) -> when to stop looking
        self.pending: dict[tuple[str, str], float] = {}

    def add(self, tracking_uri: str, trace_ids: Iterable[str]) -> None:
        deadline = time.monotonic() + _PENDING_FOR_S
        for trace_id in trace_ids:
            self.pending[(tracking_uri, trace_id)] = deadline

    def run(self, get_store) -> None:
        """Look at every pending trace once: recompute those MLflow has finalized, forget expired ones."""
        if not self.pending:
            return
        now = time.monotonic()
        by_store: dict[str, list[str]] = {}
        for (tracking_uri, trace_id), deadline in list(self.pending.items()):
            if deadline < now:
                del self.pending[(tracking_uri, trace_id)]
                logger.debug("spanline: trace %s was never finalized; its size figures stay MLflow's", trace_id)
                continue
            by_store.setdefault(tracking_uri, []).append(trace_id)
        for tracking_uri, trace_ids in by_store.items():
            store = get_store(tracking_uri or None)
            rows: dict[str, tuple[TraceInfo, dict[str, str]]] = {}
            for trace in store.batch_get_traces(trace_ids):
                metadata = trace.info.trace_metadata
                if not mlflow_wrote_trace_info(metadata):
                    continue  # MLflow has not written its trace info yet: its start_trace would overwrite ours
                if not _whole(trace.data.spans):
                    continue  # MLflow's info is in but not all its spans yet (its export is still running)
                figures = size_figures(trace)
                if all(metadata.get(k) == v for k, v in figures.items()):
                    self.pending.pop((tracking_uri, trace.info.trace_id), None)
                    continue
                rows[trace.info.trace_id] = (trace.info, figures)
            write(store, rows)
            for trace_id in rows:
                self.pending.pop((tracking_uri, trace_id), None)
