"""``Messages.create`` / ``parse`` and their beta twins, sync and async, as one ``ApiCall`` event each.

In: the SDK's resource classes, at install. Out: their ``create`` and ``parse`` replaced by the one-request
wrappers (``patches/call.py``: the call skeleton, recorded by ``patches/record.py``; ``stream=True`` calls by
``patches/stream_recorder.py``). Runs once, on the thread that calls ``spanline.autolog()``; the wrappers then
run on the caller's thread.
"""

from __future__ import annotations

from . import call, patch, resources


def install() -> None:
    from anthropic.resources.messages import AsyncMessages, Messages

    call.find_mlflow_autolog()
    patch(Messages, "create", call.one_request_sync)
    patch(AsyncMessages, "create", call.one_request_async)
    # The same wrappers serve every resource class whose method sends one Messages request and returns one
    # Message: ``messages.parse``, ``beta.messages.create`` / ``parse`` (and the provider clients' own beta
    # classes, which copy the first-party functions at import, so they are patched where they live).
    for sync_cls, async_cls in resources.message_classes():
        for method in ("create", "parse"):
            if method in sync_cls.__dict__:
                patch(sync_cls, method, call.one_request_sync)
            if method in async_cls.__dict__:
                patch(async_cls, method, call.one_request_async)
