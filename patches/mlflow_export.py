"""MLflow's own spans through spanline's event log: ``@mlflow.trace``, ``mlflow.start_span`` and the spans of
MLflow's other autologs, while spanline is on (option ``mlflow_spans="log"``, the default).

In: MLflow's span processor and exporter (mlflow/tracing/processor/base_mlflow.py, export/mlflow_v3.py): the
current tracer provider's at ``install``, and each one MLflow makes later (``provider._get_mlflow_span_processor``
is wrapped). Out: each span's start and end queued as events (``MlflowSpanStart``, ``MlflowSpanEnd``), and for
each trace MLflow roots, its info (``MlflowTraceEnd``) once its last span ended. The writer stores such a trace
whole, with the spanline spans in it (pipeline/assembler.py, pipeline/sink.py). MLflow's exporter stores nothing
of those traces in this process: no export threads, no in-memory queues, no ``atexit`` drain.

The seam is the exporter, not the processor: MLflow's processor still does everything it does on the span's
thread (the trace manager, the trace's info at its root, ``mlflow.get_last_active_trace_id()``, a root held back
until spans on other threads end). Only the exporter's two store paths are replaced: ``export`` (a span's
``log_spans``) and ``_do_export_trace`` (the trace's ``start_trace``). The batch processor MLflow puts in front
of the exporter is retired, so ``export`` runs on the span's own thread, where it queues a tuple per span: the
events are encoded on spanline's worker thread (``events.encode_deferred``), from spans that no longer change.

The seam is checked once (``_seam_problem``). Where it differs (another MLflow), MLflow exports its own spans as
before and one warning says why; ``stats().mlflow_spans`` says which path is in use. Spans made under
``mlflow.genai.evaluate`` go MLflow's own way: its harness reads each trace back as soon as it ends.
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
import types
import weakref
from collections.abc import Callable, Sequence
from typing import Any

from spanline.pipeline import context
from spanline.pipeline.events import MlflowSpanEnd, MlflowSpanStart, MlflowTraceEnd, encode
from spanline.pipeline.stats import report_internal_error

from spanline import _runtime

logger = logging.getLogger("spanline")

_seam: types.SimpleNamespace | None = None
_adopted: weakref.WeakSet[Any] = weakref.WeakSet()  # MLflow processors whose exporter is spanline's now
_original_factory: Callable[[str], Any] | None = None
_warned = False


def _report(where: str, exc: Exception) -> None:
    report_internal_error(_runtime.pipeline.counters, where, exc)


def _set_path(path: str) -> None:
    _runtime.pipeline.counters.mlflow_spans = path


def install() -> None:
    """Send MLflow's spans through the log (or, with ``mlflow_spans="mlflow"``, give them back to MLflow's own
    exporter). Idempotent. Nothing when MLflow's tracing is not importable."""
    global _original_factory, _warned
    if _runtime.options.mlflow_spans != "log":
        release()
        _set_path("mlflow (option mlflow_spans='mlflow')")
        return
    seam = _load_seam()
    if seam is None:
        return
    problem = _seam_problem(seam)
    if problem is not None:
        _set_path(f"mlflow (this MLflow's tracer differs: {problem})")
        if not _warned:
            _warned = True
            logger.warning(
                "spanline: MLflow %s exports its own spans (@mlflow.trace) itself, as without spanline: its "
                "tracer differs from the one spanline sends through its log (%s).", seam.version, problem)
        return
    if _original_factory is None:
        _original_factory = seam.provider._get_mlflow_span_processor

        @functools.wraps(_original_factory)
        def make_processor(tracking_uri: str) -> Any:
            processor = _original_factory(tracking_uri)
            _adopt(processor)
            return processor

        seam.provider._get_mlflow_span_processor = make_processor
    current = seam.provider._get_span_processor()  # None until MLflow made its tracer (it is made lazily)
    if current is not None:
        _adopt(current)
    _set_path("log")


def release() -> None:
    """Give every adopted processor back to MLflow, as MLflow made it (its batch processor included)."""
    global _original_factory
    _set_path("none")
    seam = _seam
    if seam is None:
        return
    if _original_factory is not None:
        seam.provider._get_mlflow_span_processor = _original_factory
        _original_factory = None
    for processor in list(_adopted):
        exporter = processor.span_exporter
        for name in ("export", "_do_export_trace"):
            exporter.__dict__.pop(name, None)
        processor.__dict__.pop("on_start", None)
        if seam.batching.get() and exporter._is_async_enabled:
            processor._batch_delegate = seam.base._create_batch_span_processor(exporter)
            with seam.base._batch_processor_registry_lock:
                seam.base._batch_processor_registry.add(processor)
    _adopted.clear()


def _load_seam() -> types.SimpleNamespace | None:
    global _seam
    if _seam is not None:
        return _seam
    try:
        import mlflow
        import mlflow.tracing.processor.base_mlflow as base
        import mlflow.tracing.provider as provider
        from mlflow.environment_variables import MLFLOW_USE_BATCH_SPAN_PROCESSOR
        from mlflow.tracing.export.mlflow_v3 import MlflowV3SpanExporter
        from mlflow.tracing.processor.mlflow_v3 import MlflowV3SpanProcessor
        from mlflow.tracing.trace_manager import InMemoryTraceManager
        from mlflow.tracing.utils import maybe_get_request_id
    except ImportError:
        return None
    _seam = types.SimpleNamespace(
        version=mlflow.__version__, base=base, provider=provider, batching=MLFLOW_USE_BATCH_SPAN_PROCESSOR,
        exporter_type=MlflowV3SpanExporter, processor_type=MlflowV3SpanProcessor,
        manager=InMemoryTraceManager.get_instance(), evaluating=maybe_get_request_id,
    )
    return _seam


def _seam_problem(seam: types.SimpleNamespace) -> str | None:
    """What of the seam this MLflow lacks, or None. The names and call shapes replaced or called here are
    MLflow 3.17's; a release that renames or reshapes one of them takes MLflow's own path."""
    wanted: list[tuple[object, str, tuple[str, ...]]] = [
        (seam.provider, "_get_mlflow_span_processor", ("tracking_uri",)),
        (seam.provider, "_get_span_processor", ()),
        (seam.exporter_type, "export", ("self", "spans")),
        (seam.exporter_type, "_export_traces", ("self", "spans")),
        (seam.exporter_type, "_do_export_trace", ("self", "manager", "span")),
        (seam.processor_type, "on_start", ("self", "span", "parent_context")),
        (seam.base, "_create_batch_span_processor", ("exporter",)),
        (type(seam.manager), "pop_trace", ("self", "otel_trace_id")),
    ]
    for owner, name, params in wanted:
        found = getattr(owner, name, None)
        try:
            shape = tuple(inspect.signature(found).parameters) if callable(found) else None
        except (TypeError, ValueError):
            shape = None
        if shape != params:
            return f"{getattr(owner, '__name__', owner)}.{name}({', '.join(params)}) is not there"
    for name in ("_otel_id_to_mlflow_trace_id", "_traces"):
        if not callable(getattr(getattr(seam.manager, name, None), "get", None)):
            return f"InMemoryTraceManager.{name} is not there"
    if not hasattr(seam.base, "_batch_processor_registry"):
        return "base_mlflow._batch_processor_registry is not there"
    return None


def _adopt(processor: Any) -> None:
    """Make ``processor``'s exporter send its spans to the log. MLflow's plain V3 processor and exporter only:
    the Unity Catalog, inference-table and OTLP ones keep their own paths."""
    seam = _seam
    try:
        exporter = getattr(processor, "span_exporter", None)
        if (seam is None or processor in _adopted or type(processor) is not seam.processor_type
                or type(exporter) is not seam.exporter_type):
            return
        delegate, processor._batch_delegate = processor._batch_delegate, None
        if delegate is not None:
            # Spans MLflow queued before now leave its way (the exporter is still MLflow's here).
            delegate.force_flush()
            delegate.shutdown()
            with seam.base._batch_processor_registry_lock:
                seam.base._batch_processor_registry.discard(processor)
        original_on_start = processor.on_start
        tracking_uri = exporter._client.tracking_uri or ""

        def on_start(span: Any, parent_context: Any = None) -> None:
            original_on_start(span, parent_context)
            _started(span, tracking_uri)

        processor.on_start = on_start
        exporter.export = functools.partial(_export, exporter, exporter.export, tracking_uri)
        exporter._do_export_trace = functools.partial(_export_trace, exporter, tracking_uri)
        _adopted.add(processor)
    except Exception as exc:  # MLflow keeps exporting as it did
        _report("adopting MLflow's exporter", exc)


# --- the span's thread: queue what MLflow made, encode nothing ------------------------------------------


def _emit(item: tuple) -> None:
    pipeline = _runtime.pipeline
    if pipeline.thread is None:
        pipeline.start()
    pipeline.emit(item)


def _started(span: Any, tracking_uri: str) -> None:
    """MLflow's processor registered ``span``: queue its start, to be encoded on the worker."""
    try:
        if not _runtime.recording:
            return
        manager = _seam.manager  # type: ignore[union-attr]
        otel_trace = span.context.trace_id
        trace_id = manager._otel_id_to_mlflow_trace_id.get(otel_trace)
        if trace_id is None:
            return  # MLflow did not take it (a halted trace)
        parent = span.parent.span_id if span.parent is not None else 0
        experiment, tags = "", None
        if parent == 0:
            trace = manager._traces.get(trace_id)
            if trace is not None:
                experiment, tags = _experiment_of(trace.info), dict(trace.info.tags)
        _emit((_encode_start, span, trace_id, parent, context.joined.get(otel_trace, 0), experiment, tracking_uri,
               tags))
    except Exception as exc:
        _report("recording an MLflow span's start", exc)


def _export(exporter: Any, original: Callable[[Sequence[Any]], Any], tracking_uri: str, spans: Sequence[Any]) -> Any:
    """The exporter's ``export``: queue each ended span, then MLflow's own ``_export_traces`` (a root waits there
    for spans still open on other threads; then ``_export_trace`` below)."""
    if not _runtime.recording or _seam.evaluating(is_evaluate=True):  # type: ignore[union-attr]
        return original(spans)
    try:
        joined = context.joined
        for span in spans:
            parent = span.parent
            trace, live = _trace_and_span(span)
            _emit((_encode_end, span, parent.span_id if parent is not None else 0,
                   joined.get(span.context.trace_id, 0), tracking_uri,
                   getattr(live, "_attachments", None) or None, getattr(trace, "info", None)))
    except Exception as exc:
        _report("recording an MLflow span", exc)
    exporter._export_traces(spans)
    return None


def _trace_and_span(span: Any) -> tuple[Any, Any]:
    """MLflow's in-memory trace of the ended ``span`` and its live span, or None: read now, as MLflow pops the
    trace once it is exported. The live span holds the payloads MLflow took out of its inputs and outputs; the
    trace's info, its experiment. Plain dict reads, as in ``_started``: no lock here."""
    try:
        manager = _seam.manager  # type: ignore[union-attr]
        trace_id = manager._otel_id_to_mlflow_trace_id.get(span.context.trace_id)
        trace = manager._traces.get(trace_id) if trace_id is not None else None
        return trace, (trace.span_dict.get(f"{span.context.span_id:016x}") if trace is not None else None)
    except Exception as exc:  # the span goes on without them: never lost for their sake
        _report("reading an MLflow span's trace", exc)
        return None, None


def _export_trace(exporter: Any, tracking_uri: str, manager: Any, span: Any) -> None:
    """The exporter's ``_do_export_trace``: the trace's root ended and no span of it is open; MLflow would send
    its info with ``start_trace`` now. Queue it; MLflow's other duties at this point stay here."""
    manager_trace = manager.pop_trace(span.context.trace_id)
    if manager_trace is None:
        return
    trace = manager_trace.trace
    try:
        # The prompt versions the trace used are linked by the writer, once the trace is in the store.
        prompts = [(p.name, int(p.version)) for p in manager_trace.prompts]
        _emit((_encode_trace, trace.info, tracking_uri, prompts))
    except Exception as exc:
        _report("recording an MLflow trace", exc)
    try:
        exporter._display_handler.display_traces([trace])  # notebooks only
    except Exception as exc:
        _report("MLflow's trace display", exc)


# --- the worker thread: encode ---------------------------------------------------------------------------


def _experiment_of(info: Any) -> str:
    location = getattr(info, "trace_location", None)
    experiment = getattr(location, "mlflow_experiment", None)
    return getattr(experiment, "experiment_id", None) or ""


def _attributes(span: Any) -> dict[str, Any]:
    """A copy of a span's attributes (a live span's may change meanwhile, on its thread: copy again then)."""
    for _ in range(3):
        try:
            return dict(span.attributes)
        except (RuntimeError, KeyError):
            continue
    return dict(span.attributes)


def _encode_start(span: Any, trace_id: str, parent: int, root: int, experiment: str, tracking_uri: str,
                  tags: dict[str, str] | None) -> bytes:
    return encode(MlflowSpanStart(
        trace_id, span.context.span_id, parent, root, span.name, span.start_time or 0, _attributes(span),
        experiment, tracking_uri, tags or {},
    ))


def _encode_end(span: Any, parent: int, root: int, tracking_uri: str, attachments: dict[str, Any] | None,
                info: Any) -> bytes:
    attributes = dict(span.attributes)
    status = span.status
    return encode(MlflowSpanEnd(
        json.loads(attributes["mlflow.traceRequestId"]), span.context.span_id, parent, root, span.name,
        span.start_time or 0, attributes, end_ns=span.end_time or 0,
        events=[(e.name, e.timestamp, dict(e.attributes or {})) for e in span.events],
        status=status.status_code.value, status_message=status.description or "", tracking_uri=tracking_uri,
        attachments=[(a.id, a.content_type, a.content_bytes) for a in attachments.values()] if attachments else [],
        experiment=_experiment_of(info) if info is not None else "",
    ))


def _encode_trace(info: Any, tracking_uri: str, prompts: list[tuple[str, int]]) -> bytes:
    return encode(MlflowTraceEnd(
        info.trace_id, _experiment_of(info), info.request_time, info.execution_duration, info.state.value,
        dict(info.trace_metadata), dict(info.tags), info.client_request_id, tracking_uri, prompts,
    ))
