"""The writer's requests to a real ``mlflow server``: gzip-compressed span requests, and the bench that compares
traces per request, store writer threads and compression (``spanline bench --server URL --requests``).

MLflow is a real server (tests/mlflow_server.py); the traces are the seed's agent recorded by spanline on the
in-process fake Anthropic API, written through the writer's own fan-out and sink.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import mlflow
import pytest
from mlflow import MlflowClient
from mlflow.tracking._tracking_service.utils import _get_store
from spanline.pipeline import trace_metadata
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
        # The traces' metadata requests go through the proxy too: sent before it closes, so that no later test
        # waits on requests to a closed port.
        assert trace_metadata.wait_idle(120)
    finally:
        otlpgzip.uncompress(_get_store(proxy_url))
        proxy.shutdown()
        proxy.server_close()


def test_bench_requests_compares_every_setting_against_a_real_server(mlflow_server, tmp_path):
    """``spanline bench --server URL --requests`` (tiny counts): every setting in the table, alternated per round,
    every trace stored whole in its setting's experiment."""
    env = {**os.environ, "MLFLOW_MODEL_CATALOG_URI": "", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    out = tmp_path / "requests.json"
    done = subprocess.run(
        [sys.executable, "-m", "spanline.bench", "--server", mlflow_server.url, "--requests", "--traces", "6",
         "--batches", "1,3", "--threads", "1,2", "--encodings", "none,gzip", "--rounds", "2", "--metadata",
         "--json", str(out)],
        env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [line for line in done.stdout.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert [row.split(" | ")[:3] for row in rows] == [
        ["| 1", "1", "none"], ["| 3", "1", "none"], ["| 3", "2", "none"], ["| 3", "1", "gzip"]
    ]
    assert "Load average" in done.stdout and "--requests --traces 6" in done.stdout
    labels = [line.split(":")[0] for line in done.stderr.splitlines() if line.startswith("round ")]
    assert labels[:4] == [f"round 1 {s}" for s in ("1 per request, 1 thread, none", "3 per request, 1 thread, none",
                                                   "3 per request, 2 threads, none", "3 per request, 1 thread, gzip")]
    assert labels[4:] == [f"round 2{label[7:]}" for label in reversed(labels[:4])]
    found = json.loads(out.read_text())
    gzip_rows = [s for s in found["samples"] if s["setting"]["encoding"] == "gzip"]
    assert gzip_rows[0]["rounds"][0]["bytes_per_trace"] < found["samples"][1]["rounds"][0]["bytes_per_trace"] / 2
    mlflow.set_tracking_uri(mlflow_server.url)
    for sample in found["samples"]:
        assert len(sample["rounds"]) == 2
        for r in sample["rounds"]:
            assert r["cpu_ms"] > 0 and r["traces_per_s"] > 0
            traces = MlflowClient(mlflow_server.url).search_traces(locations=[r["experiment"]], max_results=50)
            assert len(traces) == 6, sample["setting"]
            assert all(len(t.data.spans) == 4 for t in traces)


def test_trace_metadata_for_a_server_waits_for_room_instead_of_dropping(mlflow_server_uri, template, monkeypatch):
    """A server takes one request per trace for its metadata (~13 ms of its CPU each), slower than the spans
    arrive under load. A full queue of those requests makes the store step wait for the server instead of
    dropping metadata: 30 traces through a queue of 2 all get their size figures, and nothing is counted
    dropped."""
    from spanline.pipeline.sink import MlflowSink

    url, experiment = mlflow_server_uri
    monkeypatch.setattr(trace_metadata._sender, "MAX_QUEUED", 2)
    dropped = trace_metadata._sender.dropped
    units = [unit for _ in range(10) for unit in _fresh(template, url, experiment)]
    MlflowSink(lambda: experiment).write(units)
    assert trace_metadata.wait_idle(120)
    assert trace_metadata._sender.dropped == dropped
    client = MlflowClient(url)
    for unit in units:
        metadata = client.get_trace(unit.trace_id).info.trace_metadata
        assert set(trace_metadata.SIZE_KEYS) <= set(metadata), (unit.trace_id, metadata)
