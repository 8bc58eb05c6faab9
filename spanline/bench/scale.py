"""The scale scenarios: ``spanline bench --store URI`` / ``--server URL``.

Producers flat out into one writer, for each number of store writers asked (``--writers 1,2``): P producer
processes (``--producers``, default 4) make C traced calls each (``--calls``; the seed's agent, AGENT + 2
CHAT_MODEL + TOOL, and a plain ``messages.create``, turn about) against the in-process fake Anthropic API,
appending to one log directory; one ``spanline writer --writers N`` stores it in the given store (a tracking
URI: sqlite, PostgreSQL...) or ``mlflow server``. Reported per run: traces/s the writer sustained (stored
traces over the time from its first stored trace to the last, read from its status file every 0.2 s), its
lag p50/p99 (from its status: the age of a producer's newest record when it was stored; under full load
this is the backlog's age), and traces stored versus made (counted in the store, by experiment).

The store or server must exist and be reachable; each run writes to a fresh experiment in it. Nothing else
of the benchmark package is used: the producers are plain processes, so the figures are the writer's.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from typing import Any

from spanline.pipeline import logdir

WARMUP_CALLS = 4

PRODUCER = """
import asyncio, os
import mlflow, spanline
from spanline.demo import make_tool_agent
from spanline.testing import FakeAnthropicAPI

mlflow.set_experiment(os.environ["BENCH_EXPERIMENT"])
spanline.autolog(silent=True)
api = FakeAnthropicAPI(record_requests=False)
client, aclient = api.client(), api.async_client()
agent = make_tool_agent(aclient, spanline.trace(span_type="TOOL"), spanline.trace(span_type="AGENT"))

async def main():
    for i in range(0, int(os.environ["BENCH_CALLS"]), 2):
        await agent("What's the weather like in Tokyo today?")
        client.messages.create(model="claude-sonnet-4-5", max_tokens=8,
                               messages=[{"role": "user", "content": f"plain call {i}"}])

asyncio.run(main())
assert spanline.flush(3600), spanline.stats()
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The scale scenarios' options, on ``spanline bench``'s parser."""
    group = parser.add_argument_group("scale scenarios (run instead of the others when --store or --server is given)")
    group.add_argument("--store", metavar="URI", help="a tracking store URI, e.g. postgresql://user@host/db")
    group.add_argument("--server", metavar="URL", help="a running mlflow server, e.g. http://127.0.0.1:5000")
    group.add_argument("--writers", default="1,2", help="store writer counts to compare (default: %(default)s)")
    group.add_argument("--producers", type=int, default=4, help="producer processes (default: %(default)s)")
    group.add_argument("--calls", type=int, default=500, help="traced calls per producer (default: %(default)s)")


def run(args: argparse.Namespace) -> int:
    """Run the scale scenarios for ``args.store`` / ``args.server``; print a table; 1 if a trace was lost."""
    target = args.server or args.store
    counts = [int(w) for w in str(args.writers).split(",") if w.strip()]
    rows = []
    for writers in counts:
        row = run_one(target, writers, args.producers, args.calls)
        rows.append(row)
        print(_line(row), file=sys.stderr, flush=True)
    print(render(target, rows, args))
    if getattr(args, "json", None):
        with open(args.json, "w") as f:
            json.dump({"target": _safe(target), "rows": rows}, f, indent=1)
    return 0 if all(r["stored"] == r["made"] for r in rows) else 1


def run_one(target: str, writers: int, producers: int, calls: int) -> dict[str, Any]:
    """One writer with ``writers`` store writers, ``producers`` × ``calls`` traced calls, flat out (after a
    warm-up producer of ``WARMUP_CALLS`` calls, whose traces are not counted)."""
    import mlflow

    os.environ["MLFLOW_MODEL_CATALOG_URI"] = ""
    mlflow.set_tracking_uri(target)
    experiment = f"spanline-scale-{writers}w-{uuid.uuid4().hex[:8]}"
    experiment_id = mlflow.create_experiment(experiment)
    with tempfile.TemporaryDirectory(prefix="spanline-scale-") as tmp:
        log = os.path.join(tmp, "log")
        env = {**os.environ, "MLFLOW_TRACKING_URI": target, "MLFLOW_MODEL_CATALOG_URI": "",
               "SPANLINE_LOG_DIR": log, "SPANLINE_WRITER_AUTOSTART": "0", "BENCH_EXPERIMENT": experiment,
               "BENCH_CALLS": str(calls)}
        procs: list[subprocess.Popen] = []
        series: list[tuple[float, int]] = []
        status: dict[str, Any] = {}
        try:
            with open(os.path.join(tmp, "writer.log"), "wb") as writer_log:
                writer = subprocess.Popen(
                    [sys.executable, "-m", "spanline", "writer", "--log-dir", log, "--writers", str(writers)],
                    env=env, stdout=subprocess.DEVNULL, stderr=writer_log, start_new_session=True)
            procs.append(writer)
            # Warm-up, not counted in the rate: the writer's imports, its store writers, the store's first write.
            warm = subprocess.run([sys.executable, "-c", PRODUCER], env={**env, "BENCH_CALLS": str(WARMUP_CALLS)},
                                  capture_output=True, timeout=900)
            if warm.returncode:
                raise RuntimeError(f"the warm-up producer failed: {warm.stderr.decode()[-2000:]}")
            baseline = int(logdir.read_status(log).get("traces_stored", 0))
            started = time.monotonic()
            producer_procs = [
                subprocess.Popen([sys.executable, "-c", PRODUCER], env=env, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.PIPE, start_new_session=True)
                for _ in range(producers)
            ]
            procs += producer_procs
            status = _watch(log, producer_procs, series, baseline)
            failed = [p.stderr.read().decode()[-2000:] for p in producer_procs if p.returncode]
            if failed:
                raise RuntimeError(f"a producer failed: {failed[0]}")
            wall = time.monotonic() - started
        finally:
            for proc in procs:
                _stop(proc)
        writer_said = _read(os.path.join(tmp, "writer.log"))
    mlflow.set_tracking_uri(target)
    stored = len(mlflow.search_traces(locations=[experiment_id], return_type="list", max_results=1_000_000,
                                      include_spans=False)) - WARMUP_CALLS
    return {
        "writers_asked": writers,
        "store_writers": _store_writers(writer_said),
        "producers": producers,
        "made": producers * calls,
        "stored": stored,
        "traces_per_s": _sustained(series),
        "lag_p50_s": status.get("lag_p50_s"),
        "lag_p99_s": status.get("lag_p99_s"),
        "wall_s": wall,
        "retries": status.get("retries"),
        "dropped": status.get("dropped"),
    }


def _watch(
    log: str, producers: list[subprocess.Popen], series: list[tuple[float, int]], baseline: int
) -> dict[str, Any]:
    """Poll the writer's status until every producer has exited (each flushes: all stored by then)."""
    status: dict[str, Any] = {}
    while True:
        done = all(p.poll() is not None for p in producers)
        status = logdir.read_status(log) or status
        if status:
            series.append((time.monotonic(), int(status.get("traces_stored", 0)) - baseline))
        if done:
            return status
        time.sleep(0.2)


def _sustained(series: list[tuple[float, int]]) -> float | None:
    """Traces per second from the first stored trace seen to the last."""
    moving = [(t, n) for t, n in series if n > 0]
    if len(moving) < 2:
        return None
    last = max(n for _, n in moving)
    t_last = next(t for t, n in moving if n == last)
    (t0, n0) = moving[0]
    return (last - n0) / (t_last - t0) if t_last > t0 else None


def _store_writers(text: str) -> str:
    for line in text.splitlines():
        if "store writer(s)" in line:
            return line.split("spanline writer: ", 1)[-1].split(" for ", 1)[0]
    return "?"


def _stop(proc: subprocess.Popen) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if proc.poll() is not None:
            break
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)
    with contextlib.suppress(ProcessLookupError):  # the writer's store writer processes, if any are left
        os.killpg(proc.pid, signal.SIGKILL)


def _read(path: str) -> str:
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def _safe(uri: str) -> str:
    from spanline.pipeline.writer.fanout import safe_uri as safe

    return safe(uri)


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _line(row: dict[str, Any]) -> str:
    return (f"writers {row['writers_asked']} ({row['store_writers']}): {_fmt(row['traces_per_s'], '.0f')} traces/s, "
            f"lag p50 {_fmt(row['lag_p50_s'], '.2f')} s p99 {_fmt(row['lag_p99_s'], '.2f')} s, "
            f"stored {row['stored']} of {row['made']}")


def render(target: str, rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    base = rows[0]["traces_per_s"] if rows and rows[0]["traces_per_s"] else None
    out = [
        f"### Scale: {args.producers} producers × {args.calls} calls into {_safe(target)}",
        "",
        "| --writers | store writers | traces/s sustained | × first | lag p50 | lag p99 | stored / made |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        ratio = f"{r['traces_per_s'] / base:.2f}×" if base and r["traces_per_s"] else "-"
        out.append(
            f"| {r['writers_asked']} | {r['store_writers']} | {_fmt(r['traces_per_s'], '.0f')} | {ratio} | "
            f"{_fmt(r['lag_p50_s'], '.2f')} s | {_fmt(r['lag_p99_s'], '.2f')} s | {r['stored']} / {r['made']} |"
        )
    out += ["", "Half the calls are the seed's agent (4 spans), half plain calls (1 span); lag is measured under "
            "full load (producers flat out), so it is the age of the backlog."]
    return "\n".join(out)
