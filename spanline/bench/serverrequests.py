"""The writer's requests to a server: ``spanline bench --server URL --requests``.

What the writer can still choose when the tracking URI is an ``mlflow server`` (which runs ``log_spans``
itself): how many traces go in one ``POST /v1/traces`` (``--batches``), how many store writer threads send at
once, each batch on a fresh connection so that batches spread over the server's workers (``--threads``), and
whether the body is gzip-compressed (``--encodings``). Each setting writes the same traces (the seed's agent:
AGENT, CHAT_MODEL, TOOL, CHAT_MODEL, recorded once on the in-process fake API, given fresh trace ids per write)
into a fresh experiment on the server, through the writer's own fan-out (``FanOut``) and sink
(``MlflowSink.write``); the settings are alternated every round (A B C, then C B A).

Per setting (medians over the rounds): traces/s until the spans are stored, the writer's CPU per trace (this
process, every thread), the server's CPU per trace (every process of the server's process group: the
``mlflow server`` command, uvicorn and its workers, from ``/proc/<pid>/stat``), a local PostgreSQL's CPU per
trace with ``--server-store`` (its processes, as ``--paths`` finds them), and the request body's bytes per
trace as sent. The trace metadata the writer sends after the spans (one request per trace, on a thread of
its own: ``trace_metadata``) is held back while the spans are timed; with ``--metadata`` it is sent afterwards
and its rate and server CPU per trace are reported apart (no setting here changes it), without it it is not
sent. Every trace is checked in the store afterwards.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import os
import statistics
import sys
import time
import uuid
from dataclasses import dataclass
from typing import Any

from .storepaths import _fresh, _safe, process_cpu, recorded_agents


@dataclass(frozen=True)
class Setting:
    batch: int  # traces per request (per sink call)
    threads: int  # store writer threads (1: the writer's inline store writer, keep-alive)
    encoding: str  # "none" or "gzip"

    @property
    def label(self) -> str:
        return f"{self.batch} per request, {self.threads} thread{'s' if self.threads > 1 else ''}, {self.encoding}"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("server requests (with --server URL --requests: instead of the scale scenarios)")
    group.add_argument("--requests", action="store_true",
                       help="with --server: compare traces per request, store writer threads and compression, "
                       "alternated per round")
    group.add_argument("--batches", default="1,10,50,200",
                       help="--requests: traces per request to compare, 1 thread, uncompressed (default: %(default)s)")
    group.add_argument("--threads", default="1,2,4",
                       help="--requests: store writer threads to compare, at the largest batch (default: %(default)s)")
    group.add_argument("--encodings", default="none,gzip",
                       help="--requests: request bodies to compare, at the largest batch, 1 thread "
                       "(default: %(default)s)")
    group.add_argument("--metadata", action="store_true",
                       help="--requests: also send the trace metadata after each setting and report its server CPU "
                       "(one request per trace: slow; without it the bench's traces are stored without it)")
    group.add_argument("--server-store", metavar="URI",
                       help="--requests: the server's backend store, if a local PostgreSQL: its CPU per trace too")


def settings(args: argparse.Namespace) -> list[Setting]:
    """Each batch size alone (1 thread, uncompressed); the largest batch with each thread count and each encoding."""
    batches = [int(b) for b in str(args.batches).split(",") if b.strip()]
    threads = [int(t) for t in str(args.threads).split(",") if t.strip()]
    encodings = [e.strip() for e in str(args.encodings).split(",") if e.strip()]
    unknown = [e for e in encodings if e not in ("none", "gzip")]
    if unknown or not batches or min(batches) < 1 or (threads and min(threads) < 1):
        raise SystemExit(f"spanline bench: bad --batches/--threads/--encodings ({', '.join(unknown) or 'a count < 1'})")
    top = max(batches)
    out = [Setting(b, 1, "none") for b in batches]
    out += [Setting(top, t, "none") for t in threads]
    out += [Setting(top, 1, e) for e in encodings]
    return list(dict.fromkeys(out))


def run(args: argparse.Namespace) -> int:
    os.environ["MLFLOW_MODEL_CATALOG_URI"] = ""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # as the writer process (spanline/cli.py)
    import mlflow

    url, rounds = args.server.rstrip("/"), args.rounds or 2
    chosen = settings(args)
    mlflow.set_tracking_uri(url)
    template = recorded_agents(args.traces)
    load = [os.getloadavg()]
    _write(url, _fresh(template, url, _experiment()), Setting(max(s.batch for s in chosen), 1, "none"), None)  # warm-up
    samples: dict[Setting, list[dict[str, float]]] = {s: [] for s in chosen}
    for r in range(rounds):
        for setting in chosen if r % 2 == 0 else chosen[::-1]:
            units = _fresh(template, url, _experiment())
            gc.collect()  # the garbage of the last write is not this one's
            sample = _write(url, units, setting, args.server_store, args.metadata)
            samples[setting].append(sample)
            print(f"round {r + 1} {setting.label}: {sample['traces_per_s']:.0f} traces/s, writer "
                  f"{sample['cpu_ms']:.2f} ms, server {sample['server_cpu_ms']:.2f} ms"
                  + (f", PostgreSQL {sample['pg_cpu_ms']:.2f} ms" if args.server_store else "") + " per trace"
                  + (f" (metadata after: server {sample['metadata_server_cpu_ms']:.2f} ms)" if args.metadata else ""),
                  file=sys.stderr, flush=True)
    load.append(os.getloadavg())
    print(render(url, samples, args, load))
    if getattr(args, "json", None):
        with open(args.json, "w") as f:
            json.dump({"target": _safe(url), "load": load,
                       "samples": [{"setting": s.__dict__, "rounds": v} for s, v in samples.items()]}, f, indent=1)
    return 0


def _experiment() -> str:
    import mlflow

    return mlflow.create_experiment(f"spanline-requests-{uuid.uuid4().hex[:10]}")


class _Held:
    """Stands in for ``trace_metadata``'s sender while the spans are timed: keeps the metadata requests."""

    def __init__(self) -> None:
        self.items: list[tuple[Any, Any, Any]] = []

    def submit(self, store: Any, info: Any, metadata: Any) -> None:
        self.items.append((store, info, metadata))


def _write(url: str, units: list, setting: Setting, server_store: str | None, metadata: bool = False
           ) -> dict[str, float]:
    from mlflow.tracking._tracking_service.utils import _get_store

    from spanline.pipeline import trace_metadata
    from spanline.pipeline.writer import fanout, otlpgzip

    store = _get_store(url)
    sender, held = trace_metadata._sender, _Held()
    fan = fanout.FanOut(writers=setting.threads, kind="thread")
    per_call = setting.batch * setting.threads  # the writer hands each store writer a batch per call
    if setting.encoding == "gzip":
        otlpgzip.compress(store)
    gzipped = otlpgzip.counters()["requests"]
    trace_metadata._sender = held
    try:
        pids = server_pids(url)
        server0, pg0 = process_cpu(pids), _pg_cpu(server_store)
        cpu0, t0 = time.process_time(), time.perf_counter()
        for i in range(0, len(units), per_call):
            fan(units[i : i + per_call])
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        server1, pg1 = process_cpu(pids), _pg_cpu(server_store)
    finally:
        trace_metadata._sender = sender
        otlpgzip.uncompress(store)
        fan.close()
    gzipped = otlpgzip.counters()["requests"] - gzipped
    if gzipped != (-(-len(units) // setting.batch) if setting.encoding == "gzip" else 0):
        raise RuntimeError(f"{setting.label}: {gzipped} compressed request(s) sent")
    t1 = time.perf_counter()
    for item in held.items if metadata else ():  # the metadata requests the writer would have sent, sent now
        sender.submit(*item)
    if not sender.wait_idle(600):
        raise RuntimeError("trace metadata not sent within 600 s")
    server2, pg2, metadata_wall = process_cpu(pids), _pg_cpu(server_store), time.perf_counter() - t1
    stored = _stored(url, units)
    if stored != len(units):
        raise RuntimeError(f"{setting.label}: {stored} of {len(units)} traces stored")
    n = len(units)
    return {
        "traces_per_s": n / wall,
        "cpu_ms": cpu / n * 1e3,
        "server_cpu_ms": (server1 - server0) / n * 1e3,
        "pg_cpu_ms": (pg1 - pg0) / n * 1e3 if pg0 is not None and pg1 is not None else 0.0,
        "metadata_server_cpu_ms": (server2 - server1) / n * 1e3 if metadata else 0.0,
        "metadata_pg_cpu_ms": (pg2 - pg1) / n * 1e3 if metadata and pg1 is not None and pg2 is not None else 0.0,
        "metadata_traces_per_s": n / metadata_wall if metadata else 0.0,
        "bytes_per_trace": _bytes(units, setting) / n,
        "requests": -(-n // setting.batch),
        "experiment": units[0].experiment,
    }


def _bytes(units: list, setting: Setting) -> int:
    """The request bodies' bytes for ``units`` in batches of ``setting.batch``, as sent with its encoding."""
    import gzip

    from spanline.pipeline.sink import to_mlflow_span
    from spanline.pipeline.writer import otlpgzip

    total = 0
    for i in range(0, len(units), setting.batch):
        spans = [to_mlflow_span(rec) for unit in units[i : i + setting.batch] for rec in unit.spans]
        raw = otlpgzip._request(spans).SerializeToString()
        total += len(gzip.compress(raw, compresslevel=otlpgzip.LEVEL)) if setting.encoding == "gzip" else len(raw)
    return total


def _stored(url: str, units: list) -> int:
    """How many of ``units``' traces the server returns from their experiment."""
    from mlflow import MlflowClient

    wanted, found, token = {u.trace_id for u in units}, set(), None
    while True:  # pages of 500, the server's largest
        page = MlflowClient(url).search_traces(locations=[units[0].experiment], max_results=500,
                                               include_spans=False, page_token=token)
        found.update(t.info.trace_id for t in page)
        token = page.token
        if not token:
            return len(wanted & found)


def server_pids(url: str) -> list[int]:
    """The processes of the local server listening on ``url``'s port: every process in the process group of
    a process that holds the listening socket (``mlflow server``, uvicorn or gunicorn, and their workers)."""
    from urllib.parse import urlparse

    port = urlparse(url).port or (443 if url.startswith("https") else 80)
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    fields = line.split()
                    if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "0A":  # LISTEN
                        inodes.add(fields[9])
        except OSError:
            continue
    groups = set()
    for pid in _pids():
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:[") and link[8:-1] in inodes:
                groups.add(os.getpgid(pid))
                break
    if not groups:
        raise RuntimeError(f"no local process listens on port {port}: the server's CPU cannot be read")
    out = []
    for pid in _pids():
        try:
            if os.getpgid(pid) in groups:
                out.append(pid)
        except OSError:
            continue
    return out


def _pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def _pg_cpu(uri: str | None) -> float | None:
    if not uri:
        return None
    from .storepaths import _server_cpu

    return _server_cpu(uri)


def render(url: str, samples: dict[Setting, list[dict[str, float]]], args: argparse.Namespace,
           load: list[tuple[float, float, float]]) -> str:
    def med(values: list[dict[str, float]], key: str) -> float:
        return statistics.median(v[key] for v in values)

    rounds = len(next(iter(samples.values())))
    pg = any(v["pg_cpu_ms"] for v in itertools.chain.from_iterable(samples.values()))
    meta = bool(getattr(args, "metadata", False))
    out = [
        f"### Requests to a server: {args.traces} traces per setting × {rounds} rounds into {_safe(url)}",
        "",
        "| traces per request | store writer threads | body | traces/s | writer CPU per trace | server CPU per "
        "trace" + (" | PostgreSQL CPU per trace" if pg else "") + " | bytes sent per trace |"
        + (" metadata after: traces/s, server (+ PostgreSQL) CPU per trace |" if meta else ""),
        "| --- | --- | --- | --- | --- | --- |" + (" --- |" if pg else "") + " --- |" + (" --- |" if meta else ""),
    ]
    for setting, values in samples.items():
        out.append(
            f"| {setting.batch} | {setting.threads} | {setting.encoding} | {med(values, 'traces_per_s'):.0f} | "
            f"{med(values, 'cpu_ms'):.2f} ms | {med(values, 'server_cpu_ms'):.2f} ms | "
            + (f"{med(values, 'pg_cpu_ms'):.2f} ms | " if pg else "")
            + f"{med(values, 'bytes_per_trace'):,.0f} |"
            + (f" {med(values, 'metadata_traces_per_s'):.0f}, {med(values, 'metadata_server_cpu_ms'):.2f} ms"
               + (f" (+ {med(values, 'metadata_pg_cpu_ms'):.2f} ms)" if pg else "") + " |" if meta else "")
        )
    (a1, a5, a15), (b1, b5, b15) = load[0], load[-1]
    out += [
        "",
        "Through the writer's fan-out and sink; the seed's agent (4 spans); the settings alternated per round; "
        "medians. 1 thread is the writer's inline store writer (keep-alive); 2 or more are threads that "
        "close their connection after each batch. Server CPU: the server's process group, from /proc. "
        + ("The trace metadata (one request per trace) is sent after the spans are timed. " if meta else
           "The trace metadata (one request per trace) is not sent (`--metadata` measures it). ")
        + "Load average (1, 5, 15 min) "
        f"{a1:.2f} {a5:.2f} {a15:.2f} at the start, {b1:.2f} {b5:.2f} {b15:.2f} at the end.",
        "",
        f"Command: `spanline bench --server <URL> --requests --traces {args.traces} --batches {args.batches} "
        f"--threads {args.threads} --encodings {args.encodings} --rounds {rounds}"
        + (" --metadata`" if meta else "`"),
    ]
    return "\n".join(out)
