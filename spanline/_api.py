"""The public functions behind ``spanline``: autolog, configure, flush, aflush, shutdown, stats."""

from __future__ import annotations

import logging
import threading
from typing import Any

from spanline import _runtime
from spanline.pipeline import options as _options
from spanline.pipeline.stats import Stats

logger = logging.getLogger("spanline")
_autolog_lock = threading.Lock()


def configure(**options: Any) -> None:
    """Change options without re-patching. Unknown or invalid options raise ``TypeError``/``ValueError``.

    Options: ``sample_rate``, ``capture_content``, ``redact``, ``max_content_bytes``, ``queue_size``,
    ``on_full``, ``batch_size``, ``flush_interval``, ``experiment_id``, ``shutdown_timeout``, ``log_dir``,
    ``durability``, ``max_log_bytes``, ``segment_bytes``, ``writer_autostart``, ``exit_wait``, ``mlflow_spans``;
    each also reads ``SPANLINE_<NAME>`` from the environment at import (``redact`` excepted). Content options
    apply to calls made after this returns.
    """
    before = _runtime.options.mlflow_spans
    _runtime.set_options(_options.build(_runtime.options, options))
    if _runtime.options.mlflow_spans != before and _runtime.pipeline.counters.mlflow_spans != "none":
        from spanline.patches import mlflow_export

        mlflow_export.install()  # autolog() has run: MLflow's spans change hands now


def autolog(disable: bool = False, log_traces: bool = True, silent: bool = False, **options: Any) -> None:
    """Trace every Anthropic SDK call into MLflow. Idempotent: a second call changes options only.

    Args:
        disable: remove every patch, leaving the SDK's functions exactly as they were.
        log_traces: keep the patches but record nothing (SDK calls nor user spans) while False.
        silent: log nothing of spanline's own (warnings included).
        options: see ``configure``.
    """
    from spanline import patches

    logger.disabled = bool(silent)
    with _autolog_lock:
        _check_environment()
        if options:
            configure(**options)
        if disable:
            _runtime.recording = False
            _runtime.log_traces = True  # user spans record again, as before autolog was called
            from spanline.patches import mlflow_export

            mlflow_export.release()
            left = patches.unpatch_all()
            if left:
                logger.warning(
                    "spanline: %s were wrapped again by another library after spanline patched them; "
                    "they stay in place but record nothing.",
                    ", ".join(left),
                )
            return
        from spanline.patches.install import install_all

        install_all()
        _runtime.recording = _runtime.log_traces = bool(log_traces)
        if log_traces:
            _runtime.pipeline.start()


_env_checked = False


def _check_environment() -> None:
    """A bad ``SPANLINE_*`` value raises here, naming the variable (``import spanline`` skipped it); an unknown
    one is warned about once, with the closest known name."""
    global _env_checked
    _options.from_env(strict=True)
    if not _env_checked:
        _env_checked = True
        for line in _options.unknown_env():
            logger.warning(line)


def flush(timeout: float | None = None) -> bool:
    """Block until every event emitted before this call is stored in MLflow; ``False`` on timeout, or when
    some of it was dropped (see ``stats().dropped``).

    The worker appends what it holds to the event log, then this waits for the writer process to answer
    that its checkpoint covers it (starting a writer if none runs). ``@mlflow.trace`` spans go through the same
    log; where MLflow exports them itself (``mlflow_spans="mlflow"``), MLflow's asynchronous export is drained
    too. Safe from any thread. Inside a running event loop it works too, but blocks the loop: prefer
    ``await spanline.aflush()`` there.
    """
    return _runtime.pipeline.flush(timeout)


async def aflush(timeout: float | None = None) -> bool:
    """``flush`` for async code (asyncio or trio): waits in a worker thread, the event loop keeps running."""
    import anyio.to_thread

    return await anyio.to_thread.run_sync(_runtime.pipeline.flush, timeout)


def shutdown(timeout: float | None = None, wait_for_store: bool = True) -> bool:
    """Flush (within ``timeout``, default the ``shutdown_timeout`` option), then stop the worker.

    ``wait_for_store=True`` (the default): return once everything is stored, by the running writer or, when
    none runs, by this process (pipeline/exitwait.py). ``False``: once it is in the event log on disk
    (milliseconds); a writer stores it afterwards. The ``atexit`` handler follows the ``exit_wait`` option.
    Idempotent. Events that could not be handled in time are counted in ``stats().dropped["shutdown"]``.
    Tracing restarts the worker if spans are emitted afterwards.
    """
    return _runtime.pipeline.shutdown(timeout, wait_for_store=wait_for_store)


def stats() -> Stats:
    """Counters, cheap to read: emitted, stored, batches, retries, drops by reason, queue depth and peak."""
    return _runtime.pipeline.stats()
