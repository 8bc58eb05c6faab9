"""Writes a batch of new traces into MLflow's SQL store as the rows its ``log_spans`` would write, in bulk.

In: on the sink's thread (the writer process's store threads, or the in-process worker), the spans of one
group (one store, one experiment) by trace id, and the trace metadata spanline's sink adds to traces it roots
(``trace_metadata``). Out: rows in ``trace_info``, ``trace_tags``, ``trace_request_metadata`` and ``spans``, one
``executemany`` INSERT per table, in one transaction per batch; and the trace ids it did not write, which the
sink then gives to ``log_spans``.

Why: ``SqlAlchemyStore.log_spans`` issues ~5 statements per trace (an ORM insert and flush of ``trace_info``,
a tag insert, a ``session.merge`` of the ``spansLocation`` tag, a per-trace UPDATE): ~0.7 of its CPU. For a
trace that does not exist yet, every one of those statements has a known outcome, so the rows can be built
in Python (with MLflow's own helpers, imported from the module ``log_spans`` lives in) and inserted at once.

``log_spans`` stays the reference. This path is taken only where a conformance test
(tests/test_bulk_conformance.py) showed the rows equal to what ``log_spans`` writes: the exact
(MLflow version, alembic head) pairs in ``VERIFIED``, MLflow's plain ``SqlAlchemyStore`` (no workspace-aware
subclass) on sqlite or PostgreSQL, SQL trace rollups off. Per batch, anything else goes to ``log_spans``: a
trace id the store already holds (spans joining an ``@mlflow.trace`` parent's trace, a trace written in parts,
a replay), spans carrying an OTel resource, a row that cannot be built, an integrity error (another writer
created one of the traces meanwhile: the whole transaction is rolled back first). The gate is decided once per
store object: MLflow makes a new one for a new URI, and the sink asks again for each. ``SPANLINE_BULK_STORE=0``
turns the path off.
"""

from __future__ import annotations

import collections
import functools
import json
import operator
import os
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import mlflow
from mlflow.entities import Span
from mlflow.store.tracking import sqlalchemy_store as _mstore
from mlflow.store.tracking.dbmodels.models import SqlSpan, SqlTraceInfo, SqlTraceMetadata, SqlTraceTag

from . import sanitize

# (mlflow.__version__, alembic head of the store's database): the pairs the conformance test passed on.
# A pair enters only by passing it (see the module doc); the noxfile's matrix runs it for every version.
VERIFIED: frozenset[tuple[str, str]] = frozenset({
    ("3.17.2", "dc11669786a5"),
    ("3.18.0", "f4a9b2c7d1e6"),
})

ENV = "SPANLINE_BULK_STORE"
_DIALECTS = ("sqlite", "postgresql")


@dataclass(frozen=True)
class Gate:
    """Whether a store takes the bulk path, and why (as ``stats()`` and ``spanline status`` say it)."""

    bulk: bool
    reason: str


def enabled_by_env(environ: Mapping[str, str] = os.environ) -> bool:
    return environ.get(ENV, "1").strip().lower() not in ("0", "false", "no", "off")


_gates: weakref.WeakKeyDictionary[object, Gate] = weakref.WeakKeyDictionary()


def gate(store: object) -> Gate:
    """The path for ``store``: checked once per store object (a reconnect makes a new one), the switches per call."""
    if not enabled_by_env():
        return Gate(False, f"log_spans: turned off ({ENV}=0)")
    found = _gates.get(store)
    if found is None:
        found = _check(store)
        _gates[store] = found
    if found.bulk and _mstore.rollups_enabled():
        return Gate(False, "log_spans: MLflow's SQL trace rollups are on (not covered)")
    return found


def _check(store: object) -> Gate:
    if type(store) is not _mstore.SqlAlchemyStore:  # REST, or a workspace-aware subclass: not covered
        return Gate(False, f"log_spans: {type(store).__name__} is not MLflow's plain SqlAlchemyStore")
    db_type = getattr(store, "db_type", None)
    if db_type not in _DIALECTS:
        return Gate(False, f"log_spans: {db_type} database not covered")
    try:
        from mlflow.store.db.utils import _get_schema_version

        head = _get_schema_version(store.engine)
    except Exception as exc:  # the revision is the gate's key: without it, the reference path
        return Gate(False, f"log_spans: alembic revision unreadable ({type(exc).__name__})")
    pair = (mlflow.__version__, head)
    if pair not in VERIFIED:
        return Gate(False, f"log_spans: mlflow {pair[0]} with alembic {head} is not a verified pair")
    sanitize.install()  # this version's sanitize_attributes restated, if its translation runs one (sanitize.py)
    return Gate(True, f"bulk (mlflow {pair[0]}, alembic {head})")


# --- what stats() and `spanline status` say ---------------------------------------------------------------

_lock = threading.Lock()
_state: dict[str, Any] = {"path": None, "bulk_traces": 0, "log_spans_traces": collections.Counter()}
_paths: dict[str, str] = {}  # tracking URI -> the path its last write took


def note(gate_: Gate, bulk_traces: int, fallbacks: Mapping[str, int], tracking_uri: str | None = None) -> None:
    """Record one write: the path decided for it, traces stored in bulk, traces left to log_spans by reason."""
    with _lock:
        _state["path"] = gate_.reason
        if tracking_uri:
            _paths[tracking_uri] = gate_.reason
        _state["bulk_traces"] += bulk_traces
        _state["log_spans_traces"].update({k: v for k, v in fallbacks.items() if v})


def describe(tracking_uri: str | None = None) -> dict[str, Any]:
    """``{"path": "bulk (...)" | "log_spans: <why>" | None, "bulk_traces": n, "log_spans_traces": {why: n}}``.
    ``path``: that of the last write to ``tracking_uri`` if given and written to (a process may write to more than
    one store: a leftover of another's being retried must not rename the path of the store in use), else the last.
    """
    with _lock:
        path = _paths.get(tracking_uri, _state["path"]) if tracking_uri else _state["path"]
        return {"path": path, "bulk_traces": _state["bulk_traces"],
                "log_spans_traces": dict(_state["log_spans_traces"])}


# --- the rows ------------------------------------------------------------------------------------------------


class Fallback(Exception):
    """This batch goes to ``log_spans``; the message says why."""


@dataclass
class _Trace:
    info: dict[str, Any]
    tags: dict[str, str]
    metadata: dict[str, str]
    spans: list[dict[str, Any]]


def _build(store: Any, experiment_id: str, trace_id: str, spans: Sequence[Span], artifact_uri: str) -> _Trace:
    """The rows ``_log_spans_once`` leaves for a trace it creates (MLflow 3.17.2, 3.18.0: its pre-computation, phase 2's
    insert, phase 5's update, the payload generation bump and the tag merges, folded into final values)."""
    m = _mstore
    key = m.SpanAttributeKey
    usage_nodes, cost_nodes, span_rows = [], [], []
    session_id = user_id = root_dict = None
    root_tags: dict[str, str] = {}
    ensure_ascii = store.db_type == m.MSSQL
    for span in spans:
        if getattr(span._span, "resource", None) is not None and span._span.resource.attributes:
            raise Fallback("spans carry an OTel resource")
        span_dict = m.translate_span_when_storing(span)
        attributes = span_dict.get("attributes", {})
        usage_nodes.append(m._span_aggregation_node(span.span_id, span.parent_id, attributes, key.CHAT_USAGE))
        cost_nodes.append(m._span_aggregation_node(span.span_id, span.parent_id, attributes, key.LLM_COST))
        span_cost = None
        if attributes:
            if session_id is None and (
                found := attributes.get(key.SESSION_ID) or attributes.get(m.GenAiSemconvKey.CONVERSATION_ID)
            ):
                session_id = m.validate_session_id(m._try_parse_json_string(found))
            if user_id is None and (found := attributes.get("user.id")):
                user_id = m._try_parse_json_string(found)
            span_cost = attributes.get(key.LLM_COST)
        cost_values = {}
        if span_cost:
            try:
                cost_values = json.loads(span_cost)
            except (TypeError, ValueError):
                cost_values = {}
        span_rows.append({
            "trace_id": span.trace_id,
            "experiment_id": experiment_id,
            "span_id": span.span_id,
            "parent_span_id": span.parent_id,
            "name": span.name,
            "type": span.span_type,
            "status": span.status.status_code,
            "start_time_unix_nano": span.start_time_ns,
            "end_time_unix_nano": span.end_time_ns,
            "content": json.dumps(span_dict, cls=m.TraceJSONEncoder, ensure_ascii=ensure_ascii),
            "input_cost": m.finite_float_or_none(cost_values.get("input_cost")),
            "output_cost": m.finite_float_or_none(cost_values.get("output_cost")),
            "total_cost": m.finite_float_or_none(cost_values.get("total_cost")),
            "model_name": m.bounded_model_dimension(m._try_parse_json_string(attributes.get(key.MODEL))),
            "model_provider": m.bounded_model_dimension(
                m._try_parse_json_string(attributes.get(key.MODEL_PROVIDER))
            ),
        })
        if span.parent_id is None:
            root_dict = span_dict
            prefix = key.TRACE_TAG_PREFIX
            for attr_key, attr_value in attributes.items():
                if attr_key.startswith(prefix):
                    try:
                        tag_key, tag_value = m._validate_trace_tag(
                            attr_key[len(prefix):], str(m._try_parse_json_string(attr_value))
                        )
                    except Exception:  # log_spans skips such a tag too
                        continue
                    if tag_key == m.TraceTagKey.TRACE_NAME:
                        tag_value = m.validate_trace_name(tag_value)
                    root_tags[tag_key] = tag_value

    start_ms = min(s.start_time_ns for s in spans) // 1_000_000
    ends = [s.end_time_ns for s in spans if s.end_time_ns is not None]
    end_ms = max(ends) // 1_000_000 if ends else None
    status = store._get_trace_status_from_root_span(spans)
    info: dict[str, Any] = dict.fromkeys(_info_columns())
    info.update(
        request_id=trace_id,
        experiment_id=experiment_id,
        timestamp_ms=start_ms,
        # phase 5's CASE update leaves a created trace's duration at max end - min start
        execution_time_ms=(end_ms - start_ms) if end_ms is not None else None,
        status=status or m.TraceState.IN_PROGRESS.value,
        db_payload_generation=1,  # 0 on insert, + 1 by _advance_db_payload_generations_for_db_span_writes
        session_id=session_id,
        trace_name=root_tags.get(m.TraceTagKey.TRACE_NAME),
    )
    if root_dict is not None:
        blank = _Blank()
        for column, value in store._update_trace_info_attributes(blank, root_dict).items():
            info[column.key] = value
    if usage := m.aggregate_usage_from_span_nodes(usage_nodes):
        for usage_key, column in m.TOKEN_COLUMN_BY_KEY.items():
            if (value := m.token_count_or_none(usage.get(usage_key))) is not None:
                info[column] = value
    if cost := m.aggregate_cost_from_span_nodes(cost_nodes):
        for cost_key, column in m.COST_COLUMN_BY_KEY.items():
            if (value := m.finite_float_or_none(cost.get(cost_key))) is not None:
                info[column] = value
    # the artifact location inserted with the trace, then the merges: spansLocation, then the root's tags
    tags = {
        m.MLFLOW_ARTIFACT_LOCATION: artifact_uri,
        m.TraceTagKey.SPANS_LOCATION: m.SpansLocation.TRACKING_STORE.value,
    }
    tags.update({k: v for k, v in root_tags.items() if k != m.TraceTagKey.TRACE_NAME})
    metadata = {m.TraceMetadataKey.TRACE_USER: user_id} if user_id else {}
    return _Trace(info, tags, metadata, span_rows)


class _Blank:
    """A trace_info row as phase 2 creates it, for ``_update_trace_info_attributes`` (previews still unset)."""

    request_preview = None
    response_preview = None


def write(
    store: Any, experiment_id: str, by_trace: Mapping[str, Sequence[Span]], metadata: Mapping[str, Mapping[str, str]]
) -> tuple[set[str], dict[str, int]]:
    """Store the traces of ``by_trace`` the store does not hold yet, with ``metadata`` (spanline's trace metadata,
    upserted over what ``log_spans`` would write, as ``trace_metadata.write`` does after it).

    Returns the trace ids stored, and the count of the others by why they are left to ``log_spans``.
    """
    from sqlalchemy.exc import IntegrityError

    trace_ids = list(by_trace)
    try:  # pure Python, outside the transaction: any failure here is the reference path's to meet
        artifact_uri = _artifact_uris_of(store, experiment_id)
        built = {
            trace_id: _build(store, experiment_id, trace_id, spans, artifact_uri(trace_id))
            for trace_id, spans in by_trace.items()
        }
    except Fallback as why:
        return set(), {str(why): len(trace_ids)}
    except Exception as exc:
        return set(), {f"rows not built ({type(exc).__name__})": len(trace_ids)}
    try:
        with store.ManagedSessionMaker(read_only=False) as session:
            existing = _existing(session, trace_ids)
            new = [t for t in trace_ids if t not in existing]
            if new:
                infos, tags, rows_md, spans = [], [], [], []
                for trace_id in new:
                    t = built[trace_id]
                    infos.append(t.info)
                    tags.extend({"request_id": trace_id, "key": k, "value": v} for k, v in t.tags.items())
                    md = {**t.metadata, **metadata.get(trace_id, {})}
                    rows_md.extend({"request_id": trace_id, "key": k, "value": v} for k, v in md.items())
                    spans.extend(t.spans)
                _insert(session, SqlTraceInfo.__table__, infos)
                _insert(session, SqlTraceTag.__table__, tags)
                if rows_md:
                    _insert(session, SqlTraceMetadata.__table__, rows_md)
                _insert(session, SqlSpan.__table__, spans)
    except Exception as exc:
        if isinstance(exc, IntegrityError) or isinstance(exc.__cause__, IntegrityError):
            return set(), {"integrity error (another writer)": len(trace_ids)}
        raise
    return set(new), ({"trace exists in the store": len(existing)} if existing else {})


def _insert(session: Any, table: Any, rows: list[dict[str, Any]]) -> None:
    """One multi-row INSERT of ``rows`` (all with the same keys) into MLflow's ``table``, in the session's
    transaction. On sqlite the statement SQLAlchemy compiles for the table goes to the driver's
    ``executemany`` with the values in its parameter order: SQLAlchemy's per-row parameter processing was
    ~a tenth of the writer's CPU per trace, and the values are already what sqlite stores (str, int, float,
    None; its only processor here, Float's, turns a Decimal into a float). Elsewhere SQLAlchemy's own
    ``executemany``, which psycopg batches into multi-row VALUES."""
    from sqlalchemy import insert

    connection = session.connection()
    if connection.dialect.name != "sqlite":
        connection.execute(insert(table), rows)
        return
    sql, values = _sqlite_insert(table, tuple(rows[0]))
    connection.exec_driver_sql(sql, list(map(values, rows)))


@functools.cache
def _sqlite_insert(table: Any, keys: tuple[str, ...]) -> tuple[str, Callable[[Mapping[str, Any]], tuple[Any, ...]]]:
    """The INSERT SQLAlchemy compiles for ``table`` and these keys, and a function giving a row's values in the
    statement's parameter order."""
    from sqlalchemy import insert
    from sqlalchemy.dialects import sqlite

    compiled = insert(table).compile(dialect=sqlite.dialect(), column_keys=list(keys))
    order = tuple(compiled.positiontup or ())
    if len(order) == 1:  # itemgetter of one key gives the value itself, not a 1-tuple
        return compiled.string, lambda row: (row[order[0]],)
    return compiled.string, operator.itemgetter(*order)


@functools.cache
def _info_columns() -> tuple[str, ...]:
    return tuple(column.name for column in SqlTraceInfo.__table__.columns)


def _existing(session: Any, trace_ids: list[str]) -> set[str]:
    """The trace ids the store holds already (their spans join them through ``log_spans``)."""
    query = session.query(SqlTraceInfo.request_id).filter(SqlTraceInfo.request_id.in_(trace_ids))
    return {row[0] for row in query}


# MLflow fixes an experiment's artifact location when it creates the experiment. log_spans reads the experiment for
# every call (~1.5 ms on sqlite: ~8 µs a trace in batches of 200); here it is read again after this long, so an
# experiment id reused after a hard delete (``mlflow gc``) is seen within seconds. Its rows would meet the foreign
# key on ``experiments`` first, and roll back to log_spans.
_ARTIFACT_LOCATION_TTL = 10.0
_artifact_locations: weakref.WeakKeyDictionary[object, dict[str, tuple[float, Callable[[str], str]]]] = (
    weakref.WeakKeyDictionary()
)


def _artifact_uris_of(store: Any, experiment_id: str) -> Callable[[str], str]:
    known = _artifact_locations.setdefault(store, {})
    now = time.monotonic()
    found = known.get(experiment_id)
    if found is None or now - found[0] > _ARTIFACT_LOCATION_TTL:
        found = known[experiment_id] = (now, _artifact_uris(store.get_experiment(experiment_id)))
    return found[1]


def _artifact_uris(experiment: Any) -> Callable[[str], str]:
    """``_get_trace_artifact_location_tag``'s value for a trace id of ``experiment``: the URI joined once per batch
    around a placeholder (a trace id is hex digits and a dash: joining it changes nothing else)."""
    placeholder = f"SPANLINE{uuid.uuid4().hex}"
    joined = _mstore.append_to_uri_path(
        experiment.artifact_location,
        _mstore.SqlAlchemyStore.TRACE_FOLDER_NAME,
        placeholder,
        _mstore.SqlAlchemyStore.ARTIFACTS_FOLDER_NAME,
    )
    head, found, tail = joined.partition(placeholder)
    if not found or placeholder in tail:  # an artifact location the template cannot stand for: per trace
        return lambda trace_id: _mstore.append_to_uri_path(
            experiment.artifact_location, _mstore.SqlAlchemyStore.TRACE_FOLDER_NAME, trace_id,
            _mstore.SqlAlchemyStore.ARTIFACTS_FOLDER_NAME)
    return lambda trace_id: head + trace_id + tail
