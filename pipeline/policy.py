"""The content policy: what spanline may store of the inputs and outputs it records.

In: the options ``capture_content``, ``redact`` and ``max_content_bytes`` (``options.Options.policy``, or a
segment's policy record in the writer process). Out: a frozen ``ContentPolicy``, and ``apply_policy`` for one
parsed value. Pure data and functions: run on whichever thread converts (the application's worker thread, or
the writer process); ``rewrite`` applies the policy to events before the log, ``convert`` to span attributes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

__all__ = ["ContentPolicy", "apply_policy", "needed"]


@dataclasses.dataclass(frozen=True)
class ContentPolicy:
    """What the worker may store of inputs and outputs (options ``capture_content``, ``redact``,
    ``max_content_bytes``)."""

    capture_content: str = "full"
    redact: Callable[[Any], Any] | None = None
    max_content_bytes: int | None = 4 * 1024 * 1024


def needed(policy: ContentPolicy) -> bool:
    """Whether events must be rewritten before the log under ``policy``."""
    return policy.redact is not None or policy.capture_content == "metadata"


def apply_policy(value: Any, policy: ContentPolicy, metadata_keys: tuple[str, ...]) -> Any:
    """Apply ``capture_content`` then ``redact`` to one parsed input or output."""
    if policy.capture_content == "metadata":
        if isinstance(value, dict):
            value = {k: v for k, v in value.items() if k == "model" or k in metadata_keys}
        else:
            value = None
    if policy.redact is not None and value is not None:
        value = policy.redact(value)
    return value
