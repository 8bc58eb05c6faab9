"""An exception as MLflow's ``exception`` span event records it: type, message, stack trace, time.

In: an exception, on the caller's thread, as the call or span it ended is recorded (``spanline.tracing``,
``patches/record.py``, ``patches/stream_recorder.py``). Out: a ``Failure`` event field, captured now, since
the traceback dies with the frame.
"""

from __future__ import annotations

import time
import traceback

from spanline.pipeline.events import Failure

_MAX_STACKTRACE = 16_384


def failure(exc: BaseException) -> Failure:
    """What MLflow's ``exception`` span event holds, captured now (the traceback dies with the frame)."""
    try:
        stack = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    except Exception:
        stack = ""
    if len(stack) > _MAX_STACKTRACE:
        stack = "...(truncated)\n" + stack[-_MAX_STACKTRACE:]
    try:
        message = str(exc)
    except Exception:
        message = f"<{type(exc).__name__} with unprintable message>"
    return Failure(type(exc).__name__, message, stack, time.time_ns())
