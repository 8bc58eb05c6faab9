"""``install_all``: every SDK surface patched, in the one order that works.

In: a call from ``spanline.autolog()`` (under its lock, on the thread that calls it). Out: the SDK's functions
replaced through the patch registry (``patches/__init__.py``), which ``unpatch_all`` undoes. Surfaces never
install (or import) each other: the order lives here.
"""

from __future__ import annotations

from . import (
    batches,
    count_tokens,
    http_capture,
    install_surface,
    messages,
    mlflow_context,
    mlflow_export,
    raw_response,
    streaming,
    tool_runner,
)


def install_all() -> None:
    """Patch every surface. The seam that hands a call its HTTP exchange and the plain ``messages`` calls come
    first and must exist (an SDK without them is not one spanline supports: the error propagates); each later
    surface is skipped, and named once in the log, where the installed SDK lacks it. MLflow's runtime context is
    hooked last, once the SDK is patched, and then MLflow's exporter is given spanline's log."""
    http_capture.install()
    messages.install()
    install_surface("raw responses (with_raw_response / with_streaming_response)", raw_response.install)
    install_surface("messages.count_tokens", count_tokens.install)
    install_surface("messages.batches", batches.install)
    install_surface("beta.messages.tool_runner", tool_runner.install)
    install_surface("messages.stream", streaming.install)
    mlflow_context.install()
    mlflow_export.install()
