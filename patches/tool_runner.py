"""``beta.messages.tool_runner``: placeholder until the runner is traced."""

from __future__ import annotations


def install() -> None:
    return None
