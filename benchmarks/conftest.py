"""pytest-benchmark suite: the ``spanline bench`` scenarios in one process, via the ``benchmark`` fixture.

Run: ``python -m pytest benchmarks/ --benchmark-only -q`` (never collected by the normal test run, whose
testpaths is ``tests``). Patching is process-global, so the configurations here are toggled in place:
``untraced`` is ``spanline.autolog(disable=True)`` (the SDK exactly as shipped), ``inert`` keeps the
patches but records nothing (``log_traces=False``), ``spanline`` records into a sqlite store in a temp
dir. Each comparison shares one pytest-benchmark group. For the interleaved one-process-per-configuration
comparison against MLflow's own autolog, with medians, ratios and targets, run ``spanline bench``.
"""

from __future__ import annotations

import os

# Before anything imports mlflow: offline, its first LLM span would stall ~7 s fetching a price catalog.
os.environ["MLFLOW_MODEL_CATALOG_URI"] = ""
os.environ.pop("MLFLOW_ENABLE_ASYNC_TRACE_LOGGING", None)

from collections.abc import Iterator
from typing import Any

import pytest
from _fake import fake_clients

MODES = ("untraced", "inert", "spanline")


@pytest.fixture(scope="session", autouse=True)
def tracking_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One sqlite store for the session (MLflow's migrations run once); spanline shut down at the end."""
    import mlflow

    import spanline

    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'bench.db'}"
    os.environ["MLFLOW_TRACKING_URI"] = uri
    mlflow.set_tracking_uri(uri)
    yield uri
    spanline.autolog(disable=True, silent=True)
    spanline.shutdown(timeout=120)


@pytest.fixture(scope="session")
def clients() -> tuple[Any, Any]:
    """(sync, async) Anthropic clients on the in-process fake API."""
    sync, async_, _ = fake_clients()
    return sync, async_


@pytest.fixture(params=MODES)
def mode(request: pytest.FixtureRequest) -> Iterator[str]:
    """Put spanline in one of ``MODES`` for the test; afterwards store what it recorded and un-patch."""
    import spanline

    name = request.param
    if name == "untraced":
        spanline.autolog(disable=True, silent=True)
    else:
        spanline.autolog(log_traces=name == "spanline", silent=True)
    yield name
    if name == "spanline":
        assert spanline.flush(timeout=300), "spanline.flush timed out after the benchmark"
    spanline.autolog(disable=True, silent=True)
