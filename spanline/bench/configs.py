"""One configuration inside one job's process: untraced, spanline, or MLflow's own autolog (async or
sync export), set up as a user would, with the decorator and the flush each provides to a scenario."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Sequence
from typing import Any

from .workload import FLUSH_TIMEOUT

CONFIGS = ("untraced", "spanline", "mlflow_async", "mlflow_sync")
# A diagnostic configuration for S1: spanline whose worker does everything but the store's write (it
# still converts every span to MLflow's), to tell the worker's own share from the store's.
NOSTORE = "spanline_nostore"
S1_CONFIGS = ("untraced", "spanline", NOSTORE, "mlflow_async", "mlflow_sync")
# S6, the seed's agent with its AGENT and TOOL under @mlflow.trace (MLflow's own tracer): its LLM calls untraced,
# traced by spanline (MLflow's spans through spanline's log, the default; or exported by MLflow itself), or by
# MLflow's autolog; and, as a diagnostic, MLflow's tracer alone with its export stubbed: what making MLflow's spans
# costs the application whoever stores them.
MLFLOW_TRACER_ONLY = "mlflow_tracer_only"
SPANLINE_MLFLOW_EXPORT = "spanline_mlflow_export"
S6_CONFIGS = ("untraced", MLFLOW_TRACER_ONLY, "spanline", SPANLINE_MLFLOW_EXPORT, "mlflow_async")
ALL_CONFIGS = (*S1_CONFIGS, MLFLOW_TRACER_ONLY, SPANLINE_MLFLOW_EXPORT)

CONFIG_LABELS = {
    "untraced": "untraced",
    "spanline": "spanline",
    NOSTORE: "spanline, store write stubbed (diagnostic)",
    "mlflow_async": "MLflow autolog (async export)",
    "mlflow_sync": "MLflow autolog (sync export)",
    MLFLOW_TRACER_ONLY: "MLflow's tracer only, its export stubbed (diagnostic)",
    SPANLINE_MLFLOW_EXPORT: "spanline, mlflow_spans='mlflow' (MLflow exports its own spans)",
}


class Tracing:
    """What a configuration provides to a scenario: a decorator for agent and tool functions, and the
    call that waits until everything recorded so far is stored."""

    def __init__(self, config: str, spanline_options: dict[str, Any] | None = None,
                 decorator: str | None = None) -> None:
        self.config = config
        self.decorator = decorator  # "mlflow": agents and tools under @mlflow.trace whatever traces the calls
        if config == "untraced":
            return
        if config == MLFLOW_TRACER_ONLY:
            _stub_mlflow_export()
            return
        if config in ("spanline", NOSTORE, SPANLINE_MLFLOW_EXPORT):
            import spanline

            options = dict(spanline_options or {})
            if config == SPANLINE_MLFLOW_EXPORT:
                options["mlflow_spans"] = "mlflow"
            if config == NOSTORE:
                from spanline import _runtime

                # The stub replaces the in-process store write; with the event log the worker has none to replace.
                options.setdefault("durability", "memory")
                _runtime.pipeline.set_sink(_convert_only)
            spanline.autolog(silent=True, **options)
            return
        if config not in ("mlflow_async", "mlflow_sync"):
            raise ValueError(f"unknown configuration {config!r}; known: {', '.join(CONFIGS)}")
        # Read by MLflow when it builds its span exporter, at the first trace of the process.
        os.environ["MLFLOW_ENABLE_ASYNC_TRACE_LOGGING"] = "true" if config == "mlflow_async" else "false"
        import mlflow
        import mlflow.anthropic

        mlflow.anthropic.autolog(silent=True)

    def decorate(self, span_type: str) -> Callable[[Callable], Callable]:
        if self.decorator == "mlflow" and self.config != "untraced":
            import mlflow

            return mlflow.trace(span_type=span_type)
        if self.config.startswith("spanline"):
            import spanline

            return spanline.trace(span_type=span_type)
        if self.config.startswith("mlflow"):
            import mlflow

            return mlflow.trace(span_type=span_type)
        return lambda func: func

    def writer_pid(self) -> int | None:
        """The pid of the writer process storing this process's event log, if one runs (spanline's default
        configuration once a flush has started it); None for the others. Each job has its own tracking URI,
        so its own log directory and its own writer: a pid no other job shares."""
        if self.config not in ("spanline", SPANLINE_MLFLOW_EXPORT):
            return None
        import spanline
        from spanline.pipeline import logdir

        directory = spanline.stats().log_dir
        if not directory or not logdir.writer_running(directory):
            return None
        return logdir.writer_pid(directory)

    def stop_writer(self) -> None:
        """SIGTERM this job's writer (it would exit by itself a few seconds after this process), so it takes
        no CPU from the next job."""
        import signal

        pid = self.writer_pid()
        if pid:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGTERM)

    def flush(self) -> bool:
        if self.config.startswith("spanline"):
            import spanline

            return spanline.flush(FLUSH_TIMEOUT)
        if self.config == "mlflow_async":
            import mlflow

            mlflow.flush_trace_async_logging()
        return True


def _convert_only(units: Sequence[Any]) -> None:
    """A stand-in store for ``spanline_nostore``: build MLflow's spans, write nothing."""
    from spanline.pipeline.sink import to_mlflow_span

    for unit in units:
        for rec in unit.spans:
            to_mlflow_span(rec)


def _stub_mlflow_export() -> None:
    """MLflow's tracer as it is, its exporter writing nothing: each span is made and processed as always (the
    trace manager, the trace's info at its root), and each trace popped from memory when it ends."""
    import mlflow.tracing.provider as provider

    provider.provider.get_or_init_tracer("spanline.bench")
    processor = provider._get_span_processor()
    delegate, processor._batch_delegate = processor._batch_delegate, None
    if delegate is not None:
        delegate.shutdown()
    exporter = processor.span_exporter
    exporter.export = exporter._export_traces
    exporter._do_export_trace = lambda manager, span: manager.pop_trace(span.context.trace_id)
