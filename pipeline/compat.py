"""MLflow names and seams that exist in some of the supported versions only (README, "Supported versions").

Looked up once here, so the code that uses them reads one name and the version differences stay in one place.
"""

from __future__ import annotations

from collections.abc import Mapping

from mlflow.tracing.constant import TraceMetadataKey

# ``mlflow.trace.infoFinalized``: newer MLflow's exporter marks a trace whose info it has written (with
# ``start_trace``). MLflow 3.9 and 3.10 (at least) write no such key; there the size figures, which its exporter
# adds to the trace info just before ``start_trace`` (and ``log_spans`` never writes), mark the same moment.
INFO_FINALIZED: str | None = getattr(TraceMetadataKey, "TRACE_INFO_FINALIZED", None)


def mlflow_wrote_trace_info(metadata: Mapping[str, str]) -> bool:
    """Whether MLflow's exporter has written a trace's info (so its ``start_trace`` will not overwrite ours)."""
    if INFO_FINALIZED is not None:
        return metadata.get(INFO_FINALIZED) == "true"
    return TraceMetadataKey.SIZE_STATS in metadata

