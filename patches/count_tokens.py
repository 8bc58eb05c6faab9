"""``messages.count_tokens`` (and ``beta.messages.count_tokens``) as one short span each.

In: the SDK's resource classes, at install. Out: ``count_tokens`` replaced by the one-request wrappers
(``patches/call.py``) with their own surface, ``count_tokens``: the worker stores the request and the count
(``pipeline/surfaces.py``), and no token usage, since counting consumes none. Runs at install; the wrappers
then run on the caller's thread.
"""

from __future__ import annotations

import functools

from . import call, patch, resources


def install() -> None:
    for sync_cls, async_cls in resources.message_classes():
        if "count_tokens" in sync_cls.__dict__:
            patch(sync_cls, "count_tokens", functools.partial(call.one_request_sync, surface="count_tokens"))
        if "count_tokens" in async_cls.__dict__:
            patch(async_cls, "count_tokens", functools.partial(call.one_request_async, surface="count_tokens"))
