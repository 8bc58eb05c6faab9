"""The writer's requests to a real ``mlflow server``: gzip-compressed span requests, and the bench that compares
traces per request, store writer threads and compression (``spanline bench --server URL --requests``).

MLflow is a real server (tests/mlflow_server.py); the traces are the seed's agent recorded by spanline on the
in-process fake Anthropic API, written through the writer's own fan-out and sink.
"""

from __future__ import annotations

import json
import logging
import threading
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from mlflow import MlflowClient
from mlflow.tracking._tracking_service.utils import _get_store
from spanline.pipeline.writer import fanout, otlpgzip

import spanline
from spanline.bench.storepaths import _agent_units, _fresh
from spanline.testing import FakeAnthropicAPI


@pytest.fixture(scope="module")
def template() -> Iterator[list]:
    """Three of the seed agent's traces (4 spans each), assembled as the writer gets them."""
    spanline.autolog(silent=True)
    try:
        yield _agent_units(FakeAnthropicAPI(record_requests=False).client(), 3)
    finally:
        spanline.autolog(disable=True)


def _shape(url: str, trace_id: str) -> list[tuple]:
    """A stored trace's spans as comparable tuples (names, types, parents by name, inputs, outputs)."""
    trace = MlflowClient(url).get_trace(trace_id)
    names = {s.span_id: s.name for s in trace.data.spans}
    return sorted((s.name, s.span_type, names.get(s.parent_id), json.dumps(s.inputs, sort_keys=True),
                   json.dumps(s.outputs, sort_keys=True), s.status.status_code) for s in trace.data.spans)


def test_gzip_compressed_spans_are_stored_as_mlflow_sends_them(mlflow_server_uri, template, monkeypatch):
    """The writer with ``SPANLINE_OTLP_GZIP=1`` sends every span request gzip-compressed, and the server stores
    the same traces as from MLflow's own uncompressed request."""
    url, experiment = mlflow_server_uri
    plain, packed = _fresh(template, url, experiment), _fresh(template, url, experiment)
    store = _get_store(url)
    fanout.FanOut()(plain)  # the default: MLflow's own log_spans
    assert not getattr(store.log_spans, "spanline_gzip", False)
    monkeypatch.setenv(otlpgzip.ENV, "1")
    before = otlpgzip.counters()
    writer = fanout.FanOut(writers=2)  # two store writer threads, as the writer runs for a server
    try:
        writer(packed)
    finally:
        writer.close()
        otlpgzip.uncompress(store)
    after = otlpgzip.counters()
    sent = after["requests"] - before["requests"]
    assert 1 <= sent <= 2  # one request per store writer that got traces
    raw, compressed = after["raw_bytes"] - before["raw_bytes"], after["sent_bytes"] - before["sent_bytes"]
    assert 0 < compressed < raw / 2, (raw, compressed)
    for a, b in zip(plain, packed, strict=True):
        assert len(_shape(url, b.trace_id)) == 4
        assert _shape(url, a.trace_id) == _shape(url, b.trace_id)


class _RefusesGzip(BaseHTTPRequestHandler):
    """A server from before MLflow decompressed OTLP bodies: 400 for a compressed body, the rest passed on."""

    upstream = ""
    refused = 0

    def do_GET(self) -> None:
        self._forward(None)

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.headers.get("Content-Encoding"):
            type(self).refused += 1
            self.send_response(400)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b'{"detail": "Invalid OpenTelemetry format"}')
            return
        self._forward(body)

    def _forward(self, body: bytes | None) -> None:
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
        request = urllib.request.Request(self.upstream + self.path, data=body, headers=headers, method=self.command)
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                status, data, kind = response.status, response.read(), response.headers.get("Content-Type", "")
        except urllib.error.HTTPError as exc:
            status, data, kind = exc.code, exc.read(), exc.headers.get("Content-Type", "")
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


def test_a_server_that_refuses_gzip_gets_the_spans_uncompressed(mlflow_server_uri, template, caplog):
    """A 400 for a compressed body: the same spans again as MLflow sends them, and uncompressed from then on."""
    url, experiment = mlflow_server_uri
    handler = type("Handler", (_RefusesGzip,), {"upstream": url, "refused": 0})
    proxy = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    proxy_url = f"http://127.0.0.1:{proxy.server_address[1]}"
    try:
        store = _get_store(proxy_url)
        otlpgzip.compress(store)
        first, second = _fresh(template[:1], proxy_url, experiment), _fresh(template[1:], proxy_url, experiment)
        before = otlpgzip.counters()["requests"]
        with caplog.at_level(logging.WARNING, logger="spanline.writer"):
            fanout.FanOut()(first)
            fanout.FanOut()(second)
        assert handler.refused == 1  # asked once, then remembered
        assert otlpgzip.counters()["requests"] == before
        assert "refused a gzip-compressed OTLP request" in caplog.text
        for unit in first + second:
            assert len(_shape(url, unit.trace_id)) == 4
    finally:
        otlpgzip.uncompress(_get_store(proxy_url))
        proxy.shutdown()
        proxy.server_close()

