"""MLflow names and seams that exist in some of the supported versions only (README, "Supported versions").

Looked up once here, so the code that uses them reads one name and the version differences stay in one place.
"""

from __future__ import annotations

import functools
import importlib.util
import sys
from collections.abc import Callable, Mapping
from types import NotImplementedType, SimpleNamespace
from typing import TypeVar

from mlflow.tracing.constant import TraceMetadataKey

# ``mlflow.trace.infoFinalized``: newer MLflow's exporter marks a trace whose info it has written (with
# ``start_trace``). MLflow 3.9 and 3.10 (at least) write no such key; there the size figures, which its exporter
# adds to the trace info just before ``start_trace`` (and ``log_spans`` never writes), mark the same moment.
T = TypeVar("T")

INFO_FINALIZED: str | None = getattr(TraceMetadataKey, "TRACE_INFO_FINALIZED", None)


def mlflow_wrote_trace_info(metadata: Mapping[str, str]) -> bool:
    """Whether MLflow's exporter has written a trace's info (so its ``start_trace`` will not overwrite ours)."""
    if INFO_FINALIZED is not None:
        return metadata.get(INFO_FINALIZED) == "true"
    return TraceMetadataKey.SIZE_STATS in metadata



def mlflow_token_usage(usage: Mapping[str, object]) -> dict[str, int] | NotImplementedType | None:
    """``mlflow.chat.tokenUsage`` as the installed MLflow's Anthropic autolog computes it from ``usage``.

    The fields differ by release: 3.9 writes input/output/total only, 3.11 adds the cache reads and writes,
    3.17 also the 1-hour cache writes and folds the cache into the input count. Asking MLflow's own parser keeps
    spanline's record equal to autolog's on each. ``NotImplemented`` where that parser is not there (the caller
    then uses its own copy of the newest rules).
    """
    parse = _mlflow_parse_usage()
    if parse is None:
        return NotImplemented
    fields = dict(usage)
    details = fields.get("cache_creation")
    if isinstance(details, Mapping):
        fields["cache_creation"] = SimpleNamespace(**details)
    return parse(SimpleNamespace(usage=SimpleNamespace(**fields)))


@functools.cache
def _mlflow_parse_usage() -> Callable[[object], dict[str, int] | None] | None:
    try:
        from mlflow.anthropic.autolog import _parse_usage
    except ImportError:
        return None
    return _parse_usage


def log_spans_calls(store: object, by_trace: Mapping[str, list[T]], spans: list[T]) -> list[list[T]]:
    """The ``log_spans`` calls that store ``spans`` (``by_trace``: the same, by trace id) in ``store``.

    One call for all where the store takes spans of many traces (MLflow 3.17 groups them by trace itself);
    one call per trace where it refuses them ("All spans must belong to the same trace": 3.9, 3.11). The
    store's ``log_spans`` docstring states which: it is the contract, and the release that changed it is
    not known here.
    """
    if len(by_trace) > 1 and _one_trace_per_call(type(store)):
        return [list(group) for group in by_trace.values()]
    return [spans]


@functools.cache
def _one_trace_per_call(store_type: type) -> bool:
    return "must belong to the same trace" in (getattr(store_type.log_spans, "__doc__", None) or "")


def remember_missing_modules(names: tuple[str, ...] = ("litellm",)) -> list[str]:
    """Make a later ``import`` of each of ``names`` that is not installed fail at once; the names marked.

    MLflow's cost calculation (``mlflow.tracing.utils.calculate_cost_by_model_and_token_usage``) tries
    ``import litellm`` for every chat span it stores, and Python does not remember a failed import: without
    litellm, each try searches ``sys.path`` again (~30 µs, twice per agent trace). A ``None`` entry in
    ``sys.modules`` is Python's own way to say "not importable": the import raises ``ModuleNotFoundError`` as
    before, and MLflow falls back to its own price table as before. For a process of spanline's own (the
    writer), which installs no package while it runs; never done in the application's process.
    """
    marked = []
    for name in names:
        if name not in sys.modules and importlib.util.find_spec(name) is None:
            sys.modules[name] = None  # type: ignore[assignment]
            marked.append(name)
    return marked
