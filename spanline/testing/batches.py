"""The Message Batches endpoints: create, list, retrieve, cancel, delete, and the results as JSONL.

In: a batch route (from :func:`spanline.testing.routes.route`), the request and its parsed body.
Out: the ``httpx2.Response`` the real API would send. A batch is processed when it is created (``ended`` at once),
each request answered as ``/v1/messages`` would; its results wait at its ``results_url``. The store is guarded
by a lock, since the loopback server answers on several threads.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from spanline.testing.routes import BATCH_PATH, forced_status, validate_messages_body
from spanline.testing.wire import error_body, error_response, json_bytes, json_response

from .http import httpx2

__all__ = ["Batches"]


def _iso(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


class Batches:
    """The batches one fake API holds: ``next_id(prefix)`` numbers them as the API numbers everything,
    ``build_message(body)`` answers each request of a batch."""

    def __init__(self, next_id: Callable[[str], str], build_message: Callable[[dict[str, Any]], dict[str, Any]]):
        self._next_id = next_id
        self._build_message = build_message
        self._lock = threading.Lock()
        self._store: dict[str, dict[str, Any]] = {}  # batch id -> {"batch": MessageBatch JSON, "results": [...]}

    def handle(self, route: str, request: httpx2.Request, body: Any, request_id: str) -> httpx2.Response:
        """Answer one request to a batch route."""
        match = BATCH_PATH.search(request.url.path)
        batch_id = match["id"] if match is not None else None
        if route == "batch_create":
            return self._create(request, body, request_id)
        if route == "batch_list":
            with self._lock:
                data = [entry["batch"] for entry in reversed(self._store.values())]
            page = {"data": data, "has_more": False, "first_id": data[0]["id"] if data else None,
                    "last_id": data[-1]["id"] if data else None}
            return json_response(page, request_id)
        with self._lock:
            entry = self._store.get(batch_id or "")
        if entry is None:
            return error_response(404, request_id, f"Message batch {batch_id} not found")
        if route == "batch_retrieve":
            return json_response(entry["batch"], request_id)
        if route == "batch_cancel":
            entry["batch"] = {**entry["batch"], "cancel_initiated_at": _iso(time.time())}
            return json_response(entry["batch"], request_id)
        if route == "batch_delete":
            with self._lock:
                self._store.pop(batch_id or "", None)
            return json_response({"id": batch_id, "type": "message_batch_deleted"}, request_id)
        lines = b"".join(json_bytes(line) + b"\n" for line in entry["results"])
        headers = {"request-id": request_id, "content-type": "application/binary"}
        return httpx2.Response(200, headers=headers, content=lines)

    def _create(self, request: httpx2.Request, body: Any, request_id: str) -> httpx2.Response:
        requests = body.get("requests") if isinstance(body, dict) else None
        if not isinstance(requests, list) or not requests:
            return error_response(400, request_id, "requests: at least one request is required")
        results: list[dict[str, Any]] = []
        counts = {"canceled": 0, "errored": 0, "expired": 0, "processing": 0, "succeeded": 0}
        for i, item in enumerate(requests):
            if not isinstance(item, dict) or not isinstance(item.get("custom_id"), str):
                return error_response(400, request_id, f"requests.{i}.custom_id: Field required")
            params = item.get("params")
            problem = validate_messages_body(params, need_max_tokens=True)
            forced = forced_status(params["model"]) if problem is None else None
            if problem is not None or forced is not None:
                error = error_body(forced or 400, self._next_id("req"), problem)
                results.append({"custom_id": item["custom_id"], "result": {"type": "errored", "error": error}})
                counts["errored"] += 1
                continue
            message = self._build_message({k: v for k, v in params.items() if k != "stream"})
            results.append({"custom_id": item["custom_id"], "result": {"type": "succeeded", "message": message}})
            counts["succeeded"] += 1
        batch_id = self._next_id("msgbatch")
        now = time.time()
        base = str(request.url.copy_with(query=None)).split("/v1/messages/batches")[0]
        batch = {
            "id": batch_id,
            "archived_at": None,
            "cancel_initiated_at": None,
            "created_at": _iso(now),
            "ended_at": _iso(now),
            "expires_at": _iso(now + 86400),
            "processing_status": "ended",
            "request_counts": counts,
            "results_url": f"{base}/v1/messages/batches/{batch_id}/results",
            "type": "message_batch",
        }
        with self._lock:
            self._store[batch_id] = {"batch": batch, "results": results}
        return json_response(batch, request_id)
