"""Who made a trace: the environment metadata MLflow's tracer writes into every trace it stores.

In: nothing but this process's environment (main file, user, git checkout), read once, on the worker thread.
Out: ``describe() -> dict[str, str]``: ``mlflow.source.name``, ``mlflow.source.type``, ``mlflow.user`` and
``mlflow.source.git.*`` where known, exactly as ``mlflow.tracing.utils.environment.resolve_env_metadata``
resolves them.

It must be resolved in the process that made the calls (its main file, its user, its checkout), never in a
writer that stores them later: the event log carries it beside the events, and each assembled ``Unit``
holds the producer's copy (``Unit.producer``).
"""

from __future__ import annotations

import functools
import logging

logger = logging.getLogger("spanline")


@functools.lru_cache(maxsize=1)
def describe() -> dict[str, str]:
    """This process's MLflow environment metadata, resolved once (git look-ups cost milliseconds)."""
    try:
        from mlflow.tracing.utils.environment import resolve_env_metadata

        return {str(k): str(v) for k, v in resolve_env_metadata().items() if v is not None}
    except Exception as exc:  # mlflow-tracing without the tracking extras, or an odd environment
        logger.debug("spanline: no environment metadata (%r)", exc)
        return {}
