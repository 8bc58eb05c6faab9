"""Base64 images and documents in a request, stored as MLflow trace attachments instead of inline text.

In: a parsed request body on the worker thread (``convert.messages_attributes``), then, in the sink, the
span records it produced and the store they were written to. Out: the request with each base64 ``data``
replaced by a reference, and the decoded bytes uploaded beside the trace.

MLflow 3.17 does the same for images when its own span sets its inputs (``LiveSpan._extract_attachments``,
``mlflow/tracing/attachments.py``): the reference is
``mlflow-attachment://<uuid4>?content_type=<type>&trace_id=<trace id>&size=<bytes>`` and the bytes go to
``<artifact location>/traces/<trace id>/artifacts/attachments/<uuid4>`` through the trace's artifact
repository's ``upload_attachment``; its UI draws the picture from there. spanline also does it for base64
documents (PDFs), which MLflow leaves inline. URL and file sources are left as they are.

Two steps, because the request is converted before the trace id and the store are at hand:

1. ``extract`` (worker, in the assembler's conversion): swap each payload for a reference whose trace id is
   a placeholder, and hand the bytes on in the span's attributes under ``PENDING_KEY``.
2. ``resolve`` then ``upload`` (sink): put the trace id into the references, and once ``log_spans`` has
   created the trace (with its ``mlflow.artifactLocation`` tag) upload the bytes through its artifact
   repository; through an ``mlflow server`` that is its artifact proxy (``mlflow-artifacts:`` URIs).

Both steps can be repeated (the worker retries a failed write): the records keep their pending bytes until
they are dropped with their unit, and an upload to the same id overwrites the same file.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import uuid
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlencode

PENDING_KEY = "spanline.pendingAttachments"  # a record attribute the sink never stores
_TRACE_PLACEHOLDER = "spanline-trace-id-placeholder"
_BLOCK_TYPES = frozenset({"image", "document"})


@dataclasses.dataclass(frozen=True, slots=True)
class Attachment:
    id: str  # a canonical uuid4, as MLflow's artifact repositories require
    content_type: str
    data: bytes


def reference(attachment: Attachment, trace_id: str) -> str:
    """MLflow's reference for an attachment (``mlflow.tracing.attachments.Attachment.ref``)."""
    size = str(len(attachment.data))
    query = urlencode({"content_type": attachment.content_type, "trace_id": trace_id, "size": size})
    return f"mlflow-attachment://{attachment.id}?{query}"


def might_hold_payloads(raw: bytes) -> bool:
    """A cheap test on the request's JSON text before any walk: no ``"base64"`` source, nothing to do."""
    return b'"base64"' in raw


def extract(value: Any) -> tuple[Any, list[Attachment]]:
    """``value`` with every base64 image or document block's ``data`` replaced by a reference (its trace id a
    placeholder until ``resolve``), and the decoded payloads. Blocks whose data is not valid base64 stay."""
    found: list[Attachment] = []
    return _walk(value, found), found


def _walk(value: Any, found: list[Attachment]) -> Any:
    if isinstance(value, list):
        return [_walk(item, found) for item in value]
    if not isinstance(value, dict):
        return value
    source = value.get("source")
    if value.get("type") in _BLOCK_TYPES and isinstance(source, dict) and source.get("type") == "base64":
        data = source.get("data")
        if isinstance(data, str) and data and not data.startswith("mlflow-attachment://"):
            try:
                payload = base64.b64decode(data, validate=True)
            except (binascii.Error, ValueError):
                payload = b""
            if payload:
                default = "image/png" if value.get("type") == "image" else "application/pdf"
                attachment = Attachment(str(uuid.uuid4()), str(source.get("media_type") or default), payload)
                found.append(attachment)
                return {**value, "source": {**source, "data": reference(attachment, _TRACE_PLACEHOLDER)}}
    return {key: _walk(item, found) for key, item in value.items()}


def resolve(attributes: dict[str, Any], trace_id: str) -> list[Attachment]:
    """Put ``trace_id`` into the references of a record's inputs; return its pending attachments."""
    pending = attributes.get(PENDING_KEY)
    if not pending:
        return []
    for key in ("mlflow.spanInputs", "mlflow.spanOutputs"):
        text = attributes.get(key)
        if isinstance(text, str) and _TRACE_PLACEHOLDER in text:
            attributes[key] = text.replace(_TRACE_PLACEHOLDER, trace_id)
    return list(pending)


def upload(store: Any, tracking_uri: str | None, trace_id: str, attachments: Sequence[Attachment]) -> None:
    """Upload ``attachments`` of a stored trace to its artifact location (raises if the store fails)."""
    if not attachments:
        return
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
    from mlflow.tracing.utils.artifact_utils import get_artifact_uri_for_trace

    info = store.get_trace_info(trace_id)
    repository = get_artifact_repository(get_artifact_uri_for_trace(info), tracking_uri=tracking_uri)
    for attachment in attachments:
        repository.upload_attachment(attachment.id, attachment.data)
