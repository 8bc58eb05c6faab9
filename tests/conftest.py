"""Shared fixtures: a real sqlite MLflow store, the fake Anthropic backend, spanline on and off.

MLflow is real (a sqlite file in a tmp dir, read back with mlflow.search_traces / get_trace); the
Anthropic SDK is real; only its network is fake (spanline.testing).
"""

from __future__ import annotations

import gc
import os
import shutil
import tempfile
import uuid

# Offline, MLflow fetches a model price catalog on its first LLM span and stalls ~7 s per process.
os.environ.setdefault("MLFLOW_MODEL_CATALOG_URI", "")
os.environ.setdefault("MLFLOW_ENABLE_ASYNC_TRACE_LOGGING", "true")

# The event logs of this session (one per tracking store, under $XDG_CACHE_HOME/spanline) live in a temp dir
# of their own, not in the user's cache; the writers started by the tests are stopped with it (logwriters.py).
os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="spanline-test-cache-")

import mlflow
import pytest

import spanline
from spanline.testing import FakeAnthropicAPI

pytest_plugins = ["mlflow_server", "logwriters", "postgres"]
_CACHE = os.environ["XDG_CACHE_HOME"]


def pytest_configure(config: pytest.Config) -> None:
    """A run stopped with SIGTERM (a CI job's timeout, ``kill``) ends as Ctrl-C does: pytest then still tears
    down every fixture, so the servers, PostgreSQL and writers the tests started stop with it. (By default
    SIGTERM ends the process at once, fixtures and all, and leaves them running.)"""
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():

        def interrupt(signum: int, frame: object) -> None:
            raise KeyboardInterrupt(f"signal {signum}")

        signal.signal(signal.SIGTERM, interrupt)


def pytest_unconfigure(config: pytest.Config) -> None:
    from logwriters import stop_writers_under

    spanline.shutdown(10, wait_for_store=False)  # this process's last events on disk before the log goes
    stop_writers_under(_CACHE)
    shutil.rmtree(_CACHE, ignore_errors=True)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """In a matrix session (noxfile.py), each parametrised compat test runs once per seam, to fit CI's budget.

    The asyncio run of an async test covers the SDK's async seams (trio's runs are the main suite's), and a test
    marked ``compat(only=<id part>)`` runs only that parameter there (the rest are the same seam again).
    """
    if not os.environ.get("SPANLINE_COMPAT_SESSION"):
        return
    keep, drop = [], []
    for item in items:
        callspec = getattr(item, "callspec", None)
        marker = item.get_closest_marker("compat")
        only = marker.kwargs.get("only") if marker else None
        if callspec is not None and marker is not None and (
            "trio" in (callspec.params.get("anyio_backend"), callspec.params.get("loop"))
            or (only is not None and only not in callspec.id.split("-"))
        ):
            drop.append(item)
        else:
            keep.append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


@pytest.fixture(scope="session")
def tracking_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    # One store per session: creating a sqlite store runs MLflow's migrations (~1 s); each test gets
    # its own experiment instead.
    path = tmp_path_factory.mktemp("mlflow") / "mlflow.db"
    return f"sqlite:///{path}"


@pytest.fixture
def experiment(tracking_uri: str) -> str:
    """A fresh experiment in the session's sqlite store, set as the active one."""
    mlflow.set_tracking_uri(tracking_uri)
    exp = mlflow.set_experiment(f"test-{uuid.uuid4().hex[:12]}")
    return exp.experiment_id


@pytest.fixture
def fake() -> FakeAnthropicAPI:
    return FakeAnthropicAPI()


@pytest.fixture
def traced(experiment: str):
    """spanline recording into ``experiment``; un-patched afterwards, with nothing left in flight."""
    mlflow.anthropic.autolog(disable=True)
    spanline.autolog()
    yield experiment
    gc.collect()  # a stream the test left in a reference cycle ends now, in this test, not in a later one
    assert spanline.flush(60)
    spanline.autolog(disable=True)


@pytest.fixture
def restore_options():
    """Whatever options a test configures, the next test starts from the ones in force before it."""
    from spanline import _runtime

    saved = _runtime.options
    yield
    _runtime.set_options(saved)


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(autouse=True)
def _no_internal_errors(request: pytest.FixtureRequest):
    """Fail loudly: an internal error is swallowed for users, never for tests (unless a test provokes one)."""
    before = spanline.stats().internal_errors
    yield
    if request.node.get_closest_marker("provokes_internal_errors"):
        return
    after = spanline.stats()
    assert after.internal_errors == before, f"spanline internal error: {after.last_error}"


@pytest.fixture(autouse=True)
def _no_leaked_experiment():
    """``mlflow.set_experiment`` in a test also sets ``MLFLOW_EXPERIMENT_ID`` in this process's environment, which
    every app a later test starts would inherit: its traces would name an experiment of another test's store
    (refused there for good, so dead-lettered). Each test ends without one."""
    yield
    for name in ("MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME"):
        os.environ.pop(name, None)
