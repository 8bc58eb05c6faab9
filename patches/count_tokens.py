"""``messages.count_tokens`` (and ``beta.messages.count_tokens``) as one short span each.

The call is one request and one small response, like ``create``, so it goes through the same wrappers
(``patches/messages.py``) with its own surface, ``count_tokens``: the worker stores the request and the
count (``pipeline/surfaces.py``), and no token usage, since counting consumes none.
"""

from __future__ import annotations

import functools

from . import messages, patch, resources


def install() -> None:
    for sync_cls, async_cls in resources.message_classes():
        if "count_tokens" in sync_cls.__dict__:
            patch(sync_cls, "count_tokens", functools.partial(messages._wrap_sync, surface="count_tokens"))
        if "count_tokens" in async_cls.__dict__:
            patch(async_cls, "count_tokens", functools.partial(messages._wrap_async, surface="count_tokens"))
