"""A pytest plugin: a real ``mlflow server`` for the session, and a fresh experiment on it per test.

Load it with ``pytest_plugins = ["mlflow_server"]`` (or ``-p mlflow_server`` with tests/ on the path). The
server itself (free port, sqlite, job execution off, killed with its process group) is
``spanline.mlflow_server.run_mlflow_server``, which ``spanline bench`` uses too.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

from spanline.mlflow_server import MlflowServer, run_mlflow_server


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """A real ``mlflow server`` for the whole session: ``.url``, ``.pid``, ``.log_path``."""
    with run_mlflow_server(tmp_path_factory.mktemp("mlflow_server")) as server:
        yield server


@pytest.fixture
def mlflow_server_uri(mlflow_server: MlflowServer) -> Iterator[tuple[str, str]]:
    """The server as the tracking URI and a fresh experiment on it as the active one.

    Yields ``(url, experiment_id)``. Afterwards the previous tracking URI is restored exactly (unset stays
    unset), and so is the previously active experiment, which belongs to that store, not to the server.
    """
    import mlflow
    from mlflow.tracking import fluent
    from mlflow.tracking._tracking_service import utils as tracking_utils

    previous_uri = tracking_utils._tracking_uri
    previous_uri_env = os.environ.get("MLFLOW_TRACKING_URI")
    previous_experiment = fluent._active_experiment_id
    previous_experiment_env = os.environ.get("MLFLOW_EXPERIMENT_ID")
    mlflow.set_tracking_uri(mlflow_server.url)
    try:
        experiment = mlflow.set_experiment(f"rest-{uuid.uuid4().hex[:12]}")
        yield mlflow_server.url, experiment.experiment_id
    finally:
        mlflow.set_tracking_uri(previous_uri)
        _restore_env("MLFLOW_TRACKING_URI", previous_uri_env)
        fluent._active_experiment_id = previous_experiment
        _restore_env("MLFLOW_EXPERIMENT_ID", previous_experiment_env)


def _restore_env(name: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value
