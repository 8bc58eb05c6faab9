"""Base64 images and documents in requests, stored as MLflow trace attachments (issue #10, section 3).

A real sqlite store (artifacts in a tmp dir) and a real ``mlflow server`` (artifacts through its proxy); the
bytes are fetched back as MLflow's UI fetches them.
"""

from __future__ import annotations

import base64
import json
import urllib.parse
import urllib.request
import uuid

import mlflow
import pytest
from helpers import image_block, png, traces_in

import spanline
from spanline.testing import FakeAnthropicAPI

MODEL = "claude-sonnet-4-5"


PDF = (
    b"%PDF-1.4\n1 0 obj<</Type/Catalog/Pages 2 0 R>>endobj 2 0 obj<</Type/Pages/Kids[3 0 R]/Count 1>>endobj "
    b"3 0 obj<</Type/Page/Parent 2 0 R/MediaBox[0 0 200 200]>>endobj\ntrailer<</Root 1 0 R>>\n%%EOF\n"
)


def document_block(data: bytes) -> dict:
    return {"type": "document", "source": {"type": "base64", "media_type": "application/pdf",
                                          "data": base64.b64encode(data).decode()}}


def _ask_with(client, block: dict):
    return client.messages.create(
        model=MODEL, max_tokens=64,
        messages=[{"role": "user", "content": [block, {"type": "text", "text": "What is in this?"}]}],
    )


def parse_reference(ref: str) -> dict:
    parsed = urllib.parse.urlparse(ref)
    assert parsed.scheme == "mlflow-attachment", ref
    query = {k: v[0] for k, v in urllib.parse.parse_qs(parsed.query).items()}
    assert set(query) == {"content_type", "trace_id", "size"}, ref
    return {"id": parsed.hostname, **query}


def fetch_attachment(trace, attachment_id: str, server_url: str | None) -> bytes:
    """The attachment's bytes, as MLflow's UI (server) or its artifact repository (sqlite) reads them."""
    if server_url:
        query = urllib.parse.urlencode({"request_id": trace.info.trace_id, "path": attachment_id})
        with urllib.request.urlopen(f"{server_url}/ajax-api/2.0/mlflow/get-trace-artifact?{query}", timeout=30) as r:
            return r.read()
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    repository = get_artifact_repository(trace.info.tags["mlflow.artifactLocation"])
    return repository.download_trace_attachment(attachment_id)


@pytest.fixture(params=["sqlite", "server"])
def store(request, tracking_uri, tmp_path):
    """Spanline on, recording into a fresh experiment on sqlite (artifacts in tmp) or on a real server.
    Yields (experiment id, server url or None)."""
    if request.param == "sqlite":
        mlflow.set_tracking_uri(tracking_uri)
        experiment = mlflow.create_experiment(f"att-{uuid.uuid4().hex[:10]}", artifact_location=str(tmp_path))
        mlflow.set_experiment(experiment_id=experiment)
        server_url = None
    else:
        server_url, experiment = request.getfixturevalue("mlflow_server_uri")
    mlflow.anthropic.autolog(disable=True)
    spanline.autolog()
    try:
        yield experiment, server_url
        assert spanline.flush(60)
    finally:
        spanline.autolog(disable=True)


@pytest.mark.parametrize(
    ("block", "payload", "content_type"),
    [(image_block(png()), png(), "image/png"), (document_block(PDF), PDF, "application/pdf")],
    ids=["png", "pdf"],
)
def test_payload_is_stored_as_an_attachment(store, block, payload, content_type):
    experiment, server_url = store
    _ask_with(FakeAnthropicAPI().client(), block)
    assert spanline.flush(60)
    (trace,) = traces_in(experiment)
    stored_block = trace.data.spans[0].inputs["messages"][0]["content"][0]
    assert stored_block["type"] == block["type"]
    source = stored_block["source"]
    assert source["type"] == "base64" and source["media_type"] == content_type
    ref = parse_reference(source["data"])
    assert str(uuid.UUID(ref["id"])) == ref["id"]
    assert ref["trace_id"] == trace.info.trace_id
    assert ref["content_type"] == content_type
    assert int(ref["size"]) == len(payload)
    assert fetch_attachment(trace, ref["id"], server_url) == payload
    # The text around it is untouched.
    assert trace.data.spans[0].inputs["messages"][0]["content"][1] == {"type": "text", "text": "What is in this?"}


def test_url_sources_stay_as_they_are(traced, fake):
    block = {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.png"}}
    _ask_with(fake.client(), block)
    assert spanline.flush(30)
    (trace,) = traces_in(traced)
    assert trace.data.spans[0].inputs["messages"][0]["content"][0] == block


def test_a_huge_image_is_never_stored_inline(traced, fake, tmp_path):
    experiment = mlflow.create_experiment(f"huge-{uuid.uuid4().hex[:10]}", artifact_location=str(tmp_path))
    mlflow.set_experiment(experiment_id=experiment)
    payload = png(1200, 1200) + bytes(range(256)) * 20_000  # ~5 MB, over the 4 MB field bound
    _ask_with(fake.client(), image_block(payload))
    assert spanline.flush(60)
    (trace,) = traces_in(experiment)
    span = trace.data.spans[0]
    stored = span.to_dict()["attributes"]["mlflow.spanInputs"]
    assert len(stored) < 2_000, "the request is stored without its payload"
    assert "__spanline_truncated__" not in stored
    ref = parse_reference(json.loads(stored)["messages"][0]["content"][0]["source"]["data"])
    assert fetch_attachment(trace, ref["id"], None) == payload


def test_invalid_base64_is_left_inline(traced, fake):
    block = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "not base64!"}}
    _ask_with(fake.client(), block)
    assert spanline.flush(30)
    (trace,) = traces_in(traced)
    assert trace.data.spans[0].inputs["messages"][0]["content"][0] == block


@pytest.mark.compat  # MLflow's own attachment API and spanline's seam in its exporter
@pytest.mark.parametrize("store", ["sqlite"], indirect=True)
def test_the_attachments_of_mlflow_s_own_spans_are_uploaded(store):
    """``@mlflow.trace`` takes a base64 data URI out of its inputs and an ``Attachment`` out of its outputs, and
    leaves references in the span; its exporter would upload the bytes with the trace. Through spanline's log
    the bytes travel with the span's end and are uploaded by the writer, beside the LLM call spanline traced."""
    from mlflow.tracing.attachments import Attachment

    experiment, server_url = store
    client = FakeAnthropicAPI().client()
    image = png()

    @mlflow.trace(span_type="AGENT")
    def agent(picture: str) -> dict:
        client.messages.create(model=MODEL, max_tokens=16, messages=[{"role": "user", "content": "describe"}])
        return {"report": Attachment(content_type="application/pdf", content_bytes=PDF)}

    agent(f"data:image/png;base64,{base64.b64encode(image).decode()}")
    assert spanline.flush(60)
    assert spanline.stats().mlflow_spans == "log"
    (trace,) = traces_in(experiment)
    root = next(s for s in trace.data.spans if s.parent_id is None)
    assert len(trace.data.spans) == 2
    stored = {}
    for ref in (root.inputs["picture"], root.outputs["report"]):
        found = parse_reference(ref)
        assert found["trace_id"] == trace.info.trace_id
        stored[found["content_type"]] = fetch_attachment(trace, found["id"], server_url)
    assert stored == {"image/png": image, "application/pdf": PDF}


@pytest.mark.provokes_internal_errors
@pytest.mark.parametrize("store", ["sqlite"], indirect=True)
def test_an_mlflow_span_whose_attachments_cannot_be_read_is_stored_without_them(store, monkeypatch):
    """MLflow's trace manager not answering as spanline expects: the span is stored all the same (its reference
    left as MLflow made it), the failure counted, and the user's call never sees it."""
    import types

    from spanline.patches import mlflow_export

    experiment, _ = store

    class Unreadable:
        @property
        def _otel_id_to_mlflow_trace_id(self):
            raise RuntimeError("not the trace manager spanline knows")

    errors = spanline.stats().internal_errors

    @mlflow.trace
    def step(picture: str) -> str:
        return "seen"

    seam = mlflow_export._seam
    monkeypatch.setattr(mlflow_export, "_seam", types.SimpleNamespace(**{**vars(seam), "manager": Unreadable()}))
    picture = f"data:image/png;base64,{base64.b64encode(png()).decode()}"
    assert step(picture) == "seen"
    monkeypatch.undo()
    assert spanline.flush(60)
    (trace,) = traces_in(experiment)
    (span,) = trace.data.spans
    assert span.outputs == "seen" and span.inputs["picture"].startswith("mlflow-attachment://")
    assert spanline.stats().internal_errors > errors
