"""The fake Anthropic backend for the benchmarks: ``spanline.testing``'s in-process transport, through
``spanline.bench.fake_clients``, so ``spanline bench`` and this suite measure the same backend.
"""

from __future__ import annotations

from typing import Any

from spanline.bench import CHAT_KWARGS, MODEL, STREAM_KWARGS, TOOLS
from spanline.bench import fake_clients as _fake_clients

__all__ = ["CHAT_KWARGS", "MODEL", "STREAM_KWARGS", "TOOLS", "fake_clients"]


def fake_clients() -> tuple[Any, Any, str]:
    """(sync client, async client, a description of the backend)."""
    return _fake_clients()
