"""The store paths: ``spanline bench --store URI --paths``.

What one writer core sustains on each store path (pipeline/bulkstore.py): the same traces written through
spanline's sink (``MlflowSink.write``, the writer's store step) once with ``log_spans`` (``SPANLINE_BULK_STORE=0``)
and once in bulk, ``--batch`` traces per sink call (the writer's own part size), into a fresh experiment of the
given store per (round, path), the two paths alternated every round (A B, then B A). The traces: the seed's
agent (AGENT, CHAT_MODEL, TOOL, CHAT_MODEL) recorded by spanline on the in-process fake API once, assembled,
then given fresh trace ids for every write.

Reported per path (medians over the rounds): traces/s, the writing process's CPU per trace, and for a local
PostgreSQL the server's CPU per trace too (its processes' ``/proc/<pid>/stat``, found from a backend's parent);
then the bulk path's figures as a ratio of ``log_spans``' from the same rounds. The stored count is checked
in the store after every write.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import json
import os
import statistics
import sys
import time
import uuid
from typing import Any

PATHS = ("log_spans", "bulk")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("store paths (with --store URI --paths: instead of the scale scenarios)")
    group.add_argument("--paths", action="store_true",
                       help="with --store: compare the store paths, log_spans and bulk, alternated per round")
    group.add_argument("--traces", type=int, default=1000, help="--paths: traces per write (default: %(default)s)")
    group.add_argument("--batch", type=int, default=200, help="--paths: traces per sink call (default: %(default)s)")
    group.add_argument("--lag", type=float, default=0.0, metavar="SECONDS",
                       help="--paths: also the lag p99 at 80%% of each path's writer rate, for SECONDS of paced "
                       "calls (default: not measured)")
    group.add_argument("--lag-producer", choices=("replay", "sdk"), default="replay",
                       help="--lag: paced calls made by replaying one real call's event with fresh ids (replay: "
                       "the producer takes ~1/50 of the CPU, so the host's CPU measures the writer), or by "
                       "the SDK on the fake API (default: %(default)s)")
    group.add_argument("--lag-backlog", type=int, default=BACKLOG, metavar="CALLS",
                       help="--lag: plain calls appended first, for the writer's rate (default: %(default)s)")


def run(args: argparse.Namespace) -> int:
    os.environ["MLFLOW_MODEL_CATALOG_URI"] = ""
    import mlflow

    target, rounds = args.store, args.rounds or 3
    mlflow.set_tracking_uri(target)
    template = recorded_agents(args.traces)
    _write(target, _fresh(template, target, _experiment()), args.batch, "bulk")  # warm-up: imports, connections
    samples: dict[str, list[dict[str, float]]] = {p: [] for p in PATHS}
    for r in range(rounds):
        for path in PATHS if r % 2 == 0 else PATHS[::-1]:
            units = _fresh(template, target, _experiment())
            gc.collect()  # the garbage of the last write is not this one's
            sample = _write(target, units, args.batch, path)
            samples[path].append(sample)
            print(f"round {r + 1} {path}: {sample['traces_per_s']:.0f} traces/s, "
                  f"{sample['cpu_ms']:.2f} ms CPU per trace (+ server {sample['server_cpu_ms']:.2f})",
                  file=sys.stderr, flush=True)
    lags = {}
    if args.lag:
        for path in PATHS:
            lags[path] = lag_at_80_percent(target, path, args.lag, args.lag_backlog, args.lag_producer)
            print(f"lag {path}: {lags[path]}", file=sys.stderr, flush=True)
    print(render(target, samples, args, lags))
    if getattr(args, "png", None):
        draw(target, samples, lags, args.png)
        print(f"spanline bench: wrote {args.png}", file=sys.stderr)
    if getattr(args, "json", None):
        with open(args.json, "w") as f:
            json.dump({"target": _safe(target), "samples": samples, "lags": lags}, f, indent=1)
    return 0


# --- lag at 80% of the writer's rate -------------------------------------------------------------------------

BACKLOG = 4000  # plain calls (1 span each) for the writer's rate on a ready backlog
_PRODUCER = """
import json, os, sys
import spanline
from spanline.testing import FakeAnthropicAPI
spanline.autolog(silent=True)
client = FakeAnthropicAPI(record_requests=False).client()
call = lambda i: client.messages.create(model="claude-sonnet-4-5", max_tokens=8,
                                        messages=[{"role": "user", "content": f"call {i}"}])
rate = float(os.environ["BENCH_RATE"])
if not rate:  # the backlog: appended only, stored once the writer starts
    for i in range(int(os.environ["BENCH_CALLS"])):
        call(i)
    assert spanline.shutdown(600, wait_for_store=False)
    sys.exit(0)
from spanline.bench.lag import steady_lag
from spanline.bench.storepaths import _count, replayed_call
if os.environ.get("BENCH_PRODUCER") == "replay":
    call = replayed_call(call)
uri, experiment = os.environ["MLFLOW_TRACKING_URI"], os.environ["MLFLOW_EXPERIMENT_ID"]
lags, calls = steady_lag(call, rate, float(os.environ["BENCH_SECONDS"]), lambda: _count(uri, experiment),
                         lambda: spanline.flush(600), poll=0.05)
print(json.dumps({"lags": sorted(lags), "calls": calls}))
"""


def replayed_call(call: Any) -> Any:
    """``call(i)`` as spanline records it, without making it: one real call's event is kept, and each call
    queues that event again with a fresh trace id and clock (encoding it, ~10 µs), as the call's patch would.
    The writer reads the same records it would from the real calls; the producer spends ~1/50 of the CPU."""
    import time

    import msgspec

    from spanline import _runtime
    from spanline.pipeline import context, events

    from .throughput import captured_events

    pipeline = _runtime.pipeline
    with captured_events() as captured:
        call(0)
    (template,) = [events.decode(events.encode_deferred(item)) for item in captured]
    duration = template.end_ns - template.start_ns

    def replay(i: int) -> None:
        now = time.time_ns()
        # a root's ids as the call's patch makes them: its trace number, leading with its start time
        ident = context.trace_number(context.new_span_id(), now - duration)
        pipeline.emit(events.encode(msgspec.structs.replace(
            template, trace=ident, span=ident, root=ident, start_ns=now - duration, end_ns=now)))

    return replay


def lag_at_80_percent(uri: str, path: str, seconds: float, backlog: int = BACKLOG,
                      producer: str = "replay") -> dict[str, Any]:
    """The writer's rate on a ready backlog of plain calls, then the lag of calls paced at 80% of it.

    One writer process (``spanline writer``, ``SPANLINE_BULK_STORE`` set for ``path``), fed by producer
    processes: first ``backlog`` calls appended with no writer running (its rate: traces stored over the
    time from its first stored trace to the last, polled in the store), then ``seconds`` of calls paced at
    80% of that rate (``spanline.bench.lag.steady_lag``: the time from a call's return until the store's count
    covers it, polled every 50 ms). The store's count is polled for both: the writer's status file is rewritten
    between its batches, and a ready backlog is one batch.

    The goal is the writer's, per writer core. So on a host of two or more CPUs the writer runs on a CPU of its
    own for both parts (``_Pinning``: with a local PostgreSQL, which it waits on), the producers and this
    process on the others; and the paced calls are, by default, one real call's event replayed with fresh ids
    (``replayed_call``): the writer reads the same records, and the producer takes ~20 µs a call instead of the
    fake SDK call's ~1 ms. With the SDK producer at the bulk path's rates (~800 calls/s) the producer's process
    saturates its CPU, and its own worker thread, starved of the GIL, appends late: that lag is the
    application's, measured here with ``producer="sdk"``.
    """
    import subprocess
    import tempfile

    from spanline.pipeline import logdir

    from .scale import _stop, _sustained

    experiment = _experiment()
    with tempfile.TemporaryDirectory(prefix="spanline-paths-lag-") as tmp:
        log = os.path.join(tmp, "log")
        env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "MLFLOW_EXPERIMENT_ID": experiment,
               "MLFLOW_MODEL_CATALOG_URI": "", "SPANLINE_LOG_DIR": log, "SPANLINE_WRITER_AUTOSTART": "0",
               "SPANLINE_BULK_STORE": "1" if path == "bulk" else "0", "BENCH_RATE": "0",
               "BENCH_CALLS": str(backlog), "BENCH_SECONDS": str(seconds),
               "BENCH_PRODUCER": producer}
        pinning = _Pinning(uri)
        subprocess.run([sys.executable, "-c", _PRODUCER], env=env, check=True, timeout=900,
                       preexec_fn=pinning.others)
        writer = subprocess.Popen([sys.executable, "-m", "spanline", "writer", "--log-dir", log], env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                                  preexec_fn=pinning.writer)
        try:
            pinning.pin_rest()
            series: list[tuple[float, int]] = []
            deadline = time.monotonic() + 900
            while time.monotonic() < deadline:
                stored = _count(uri, experiment)  # per sink call: the writer's status waits for its whole batch
                series.append((time.monotonic(), stored))
                if stored >= backlog:
                    break
                time.sleep(0.1)
            rate = _sustained(series) or 0.0
            if not rate:
                raise RuntimeError(f"{path}: no writer rate from the status series {series[-5:]}")
            paced = subprocess.run([sys.executable, "-c", _PRODUCER], env={**env, "BENCH_RATE": str(0.8 * rate)},
                                   check=True, timeout=900 + seconds, capture_output=True, text=True,
                                   preexec_fn=pinning.others)
            time.sleep(0.6)  # the status file, rewritten every 0.5 s, says which path the writer took
            store_path = (logdir.read_status(log).get("store") or {}).get("path")
        finally:
            _stop(writer)
            pinning.release()
    found = json.loads(paced.stdout.strip().splitlines()[-1])
    lags = found["lags"]
    return {"writer_traces_per_s": rate, "paced_at": 0.8 * rate, "calls": found["calls"],
            "achieved_per_s": found["calls"] / seconds, "lags_measured": len(lags),
            "lag_p50_s": lags[len(lags) // 2] if lags else None,
            "lag_p99_s": lags[min(len(lags) - 1, int(len(lags) * 0.99))] if lags else None,
            "store_path": store_path, "pinned": pinning.describe(), "producer": producer}


class _Pinning:
    """The writer on the last CPU this process may use, with a local PostgreSQL's processes (the writer waits
    for each of its statements, so the two take turns on one CPU; on the other CPU, busy with the producer,
    the server's share was delayed behind it and the writer with it: lag p99 2.8 and 9.1 s at 80% of the
    rate measured without a producer); the producers and this process on the others. Nothing is pinned on a
    one-CPU host. ``writer`` and ``others`` run in a child before it executes (preexec); ``pin_rest`` moves
    this process and the PostgreSQL processes, ``release`` gives them every CPU back."""

    def __init__(self, uri: str) -> None:
        self.all = sorted(os.sched_getaffinity(0))
        self.enabled = len(self.all) >= 2
        self.uri = uri
        self.moved: list[int] = []
        self.database = False

    def writer(self) -> None:
        if self.enabled:
            os.sched_setaffinity(0, {self.all[-1]})

    def others(self) -> None:
        if self.enabled:
            os.sched_setaffinity(0, set(self.all[:-1]))

    def pin_rest(self) -> None:
        if not self.enabled:
            return
        self._move(os.getpid(), set(self.all[:-1]))
        for pid in _server_pids(self.uri):  # the postmaster and its processes: new backends inherit it
            self.database |= self._move(pid, {self.all[-1]})

    def _move(self, pid: int, cpus: set[int]) -> bool:
        try:
            os.sched_setaffinity(pid, cpus)
        except OSError:  # not ours to move (another user's server): it stays where it is
            return False
        self.moved.append(pid)
        return True

    def release(self) -> None:
        for pid in self.moved:
            with contextlib.suppress(OSError):
                os.sched_setaffinity(pid, set(self.all))
        self.moved.clear()

    def describe(self) -> str:
        if not self.enabled:
            return "not pinned (one CPU)"
        rest = ",".join(map(str, self.all[:-1]))
        with_db = " with PostgreSQL" if self.database else ""
        return f"writer{with_db} on CPU {self.all[-1]}, the producer and the bench on {rest}"


def _experiment() -> str:
    import mlflow

    return mlflow.create_experiment(f"spanline-paths-{uuid.uuid4().hex[:10]}")


def recorded_agents(n: int) -> list:
    """``n`` of the seed agent's traces (4 spans) as the writer gets them (assembled units), recorded by spanline
    on the in-process fake API, in a process set up as the writer's (a failed ``import litellm`` remembered)."""
    import spanline
    from spanline.pipeline.compat import remember_missing_modules

    from .workload import fake_clients

    remember_missing_modules()  # as the writer process does
    spanline.autolog(silent=True)
    client, _, _ = fake_clients()
    return _agent_units(client, n)


def _agent_units(client: Any, n: int) -> list:
    from spanline import _runtime
    from spanline.pipeline import events
    from spanline.pipeline.assembler import Assembler
    from spanline.pipeline.stats import Counters

    from .throughput import capture_agent_events

    assembler = Assembler(Counters(), lambda: _runtime.options.policy)
    for item in capture_agent_events(client, n):
        assembler.add(events.decode(item))
    return assembler.take()


def _fresh(template: list, uri: str, experiment: str) -> list:
    """``template``'s units with new trace ids, for ``experiment`` of ``uri``: ids made as the recorders make
    them, leading with the time (a store's indexes take time-ordered ids more cheaply than random ones)."""
    from spanline.pipeline import context

    out = []
    for unit in template:
        trace_id = context.mlflow_trace_id(context.trace_number(context.new_span_id(), time.time_ns()))
        spans = []
        for rec in unit.spans:
            rec = copy.copy(rec)
            rec.attributes = {**rec.attributes, "mlflow.traceRequestId": json.dumps(trace_id)}
            rec.trace_id, rec.tracking_uri, rec.experiment = trace_id, uri, experiment
            spans.append(rec)
        out.append(type(unit)(trace_id, experiment, uri, spans, unit.producer))
    return out


def _write(uri: str, units: list, batch: int, path: str) -> dict[str, float]:
    from spanline.pipeline import bulkstore
    from spanline.pipeline.sink import MlflowSink

    os.environ[bulkstore.ENV] = "1" if path == "bulk" else "0"
    sink = MlflowSink(lambda: None)
    before = bulkstore.describe()["bulk_traces"]
    server0 = _server_cpu(uri)
    cpu0, t0 = time.process_time(), time.perf_counter()
    for i in range(0, len(units), batch):
        sink.write(units[i : i + batch])
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    server = _server_cpu(uri) - server0 if server0 is not None else 0.0
    in_bulk = bulkstore.describe()["bulk_traces"] - before
    expected = len(units) if path == "bulk" else 0
    if in_bulk != expected:
        raise RuntimeError(f"{path}: {in_bulk} traces went in bulk, expected {expected} "
                           f"({bulkstore.describe()['path']})")
    stored = _count(uri, units[0].experiment)
    if stored != len(units):
        raise RuntimeError(f"{path}: {stored} of {len(units)} traces stored")
    n = len(units)
    return {"traces_per_s": n / wall, "cpu_ms": cpu / n * 1e3, "server_cpu_ms": server / n * 1e3,
            "total_cpu_ms": (cpu + server) / n * 1e3}


def _count(uri: str, experiment: str) -> int:
    from mlflow.tracking._tracking_service.utils import _get_store
    from sqlalchemy import text

    with _get_store(uri).engine.connect() as conn:
        return conn.execute(text("SELECT count(*) FROM trace_info WHERE experiment_id = :e"),
                            {"e": int(experiment)}).scalar_one()


def _server_cpu(uri: str) -> float | None:
    """CPU seconds of a local PostgreSQL server's processes so far; None for another store, or a remote one."""
    pids = _server_pids(uri)
    return process_cpu(pids) if pids else None


def process_cpu(pids: list[int]) -> float:
    """CPU seconds (user + system) of ``pids`` so far, from ``/proc``; a process gone since counts as nothing."""
    tick, total = os.sysconf("SC_CLK_TCK"), 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / tick


def _server_pids(uri: str) -> list[int]:
    """A local PostgreSQL server's processes (its postmaster, found from a backend's parent, and its children);
    none for another store, or a remote one."""
    if not uri.startswith("postgresql"):
        return []
    from mlflow.tracking._tracking_service.utils import _get_store
    from sqlalchemy import text

    with _get_store(uri).engine.connect() as conn:
        backend = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
    try:
        with open(f"/proc/{backend}/stat") as f:
            postmaster = int(f.read().rsplit(")", 1)[1].split()[1])
    except OSError:
        return []
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                parent = int(f.read().rsplit(")", 1)[1].split()[1])
        except OSError:
            continue
        if int(pid) == postmaster or parent == postmaster:
            found.append(int(pid))
    return found


def _safe(uri: str) -> str:
    from spanline.pipeline.writer.fanout import safe_uri

    return safe_uri(uri)


def render(target: str, samples: dict[str, list[dict[str, float]]], args: argparse.Namespace,
           lags: dict[str, dict[str, Any]] | None = None) -> str:
    def med(path: str, key: str) -> float:
        return statistics.median(s[key] for s in samples[path])

    def ratios(key: str) -> str:
        values = [b[key] / a[key] for a, b in zip(samples["log_spans"], samples["bulk"], strict=True) if a[key]]
        return f"{statistics.median(values):.2f} ({min(values):.2f}–{max(values):.2f})" if values else "-"

    server = any(s["server_cpu_ms"] for path in PATHS for s in samples[path])
    out = [
        f"### Store paths: {args.traces} traces per write × {len(samples['bulk'])} rounds into {_safe(target)}",
        "",
        "| path | traces/s | writer CPU per trace | server CPU per trace | traces per writer core |",
        "| --- | --- | --- | --- | --- |",
    ]
    for path in PATHS:
        srv = f"{med(path, 'server_cpu_ms'):.2f} ms" if server else "-"
        out.append(f"| {path} | {med(path, 'traces_per_s'):.0f} | {med(path, 'cpu_ms'):.2f} ms | {srv} | "
                   f"{1000 / med(path, 'cpu_ms'):.0f} |")
    out += [
        "",
        f"bulk / log_spans, same rounds (median, range): traces/s {ratios('traces_per_s')}; writer CPU per trace "
        f"{ratios('cpu_ms')}" + (f"; writer + server CPU per trace {ratios('total_cpu_ms')}" if server else ""),
        "",
        f"Batches of {args.batch} traces through `MlflowSink.write` (the writer's store step); the seed's agent "
        "(4 spans); the paths alternated per round; medians over the rounds. Command: `spanline bench --store "
        f"<URI> --paths --traces {args.traces} --batch {args.batch} --rounds {len(samples['bulk'])}"
        + (f" --lag {args.lag:g}`." if lags else "`."),
    ]
    if lags:
        out += ["", f"Lag at 80% of the writer's rate ({args.lag_backlog} plain calls of 1 span for the rate on a "
                f"ready backlog, then {args.lag:g} s of calls paced at 80% of it; one writer process; "
                f"`--lag-producer {args.lag_producer}`):", "",
                "| path | writer traces/s (backlog) | paced at | achieved | lag p50 | lag p99 | store path |",
                "| --- | --- | --- | --- | --- | --- | --- |"]
        for path, lag in lags.items():
            p50, p99 = lag["lag_p50_s"], lag["lag_p99_s"]
            out.append(f"| {path} | {lag['writer_traces_per_s']:.0f} | {lag['paced_at']:.0f}/s | "
                       f"{lag['achieved_per_s']:.0f}/s | {'-' if p50 is None else f'{p50:.2f} s'} | "
                       f"{'-' if p99 is None else f'{p99:.2f} s'} | {lag['store_path']} |")
        first = next(iter(lags.values()))
        out += ["", f"CPUs: {first.get('pinned', 'not pinned')}. Paced calls: "
                + ("one real call's event replayed with fresh ids" if first.get("producer") == "replay"
                   else "SDK calls on the fake API") + "."]
    return "\n".join(out)


def run_store_path_job(job: dict[str, Any]) -> dict[str, Any]:
    """The main bench's SP scenario, one (round, path) in its own process: ``job["n"]`` of the seed agent's
    traces written through the sink on ``job["path"]`` into the job's fresh sqlite store, after a warm-up
    write (imports, connection, the gate) into another experiment."""
    uri, path, batch = job["uri"], job["path"], job["batch"]
    template = recorded_agents(job["n"])
    _write(uri, _fresh(template[:50], uri, _experiment()), batch, path)
    units = _fresh(template, uri, _experiment())
    gc.collect()
    return _write(uri, units, batch, path)


COLORS = {"log_spans": "#ff7f0e", "bulk": "#1f77b4"}


def cpu_panel(ax: Any, samples: dict[str, list[dict[str, float]]], title: str, *, loc: str = "center",
              fontsize: int = 9) -> None:
    """CPU per trace by path: the writer, and a local PostgreSQL's server processes stacked; each round a dot;
    each bar labelled with its median and the traces one writer core sustains at it."""
    for i, name in enumerate(PATHS):
        writer = statistics.median(s["cpu_ms"] for s in samples[name])
        server = statistics.median(s["server_cpu_ms"] for s in samples[name])
        ax.bar(i, writer, color=COLORS[name], label="writer process" if i == 0 else None)
        if server:
            ax.bar(i, server, bottom=writer, color=COLORS[name], alpha=0.4, hatch="//",
                   label="PostgreSQL server" if i == 0 else None)
        ax.scatter([i] * len(samples[name]), [s["cpu_ms"] for s in samples[name]], color="black", s=10, zorder=3)
        per_core = 1000 / writer
        ax.annotate(f"{writer:.2f} ms\n{per_core:.0f} traces/core", (i, writer + server), ha="center",
                    va="bottom", fontsize=8)
    ax.set_ylim(top=ax.get_ylim()[1] * 1.15)  # room for the labels above the bars
    ax.set_xticks(range(len(PATHS)), PATHS)
    ax.set_ylabel("CPU per trace (ms, median of rounds; dots: rounds)")
    ax.set_title(title, fontsize=fontsize, loc=loc)
    ax.legend(fontsize=8)


def draw(target: str, samples: dict[str, list[dict[str, float]]], lags: dict[str, dict[str, Any]], path: str) -> None:
    """The picture: CPU per trace by path (the writer, and a local PostgreSQL's server processes, stacked; each
    round a dot), and the lag at 80% of each path's rate when it was measured. matplotlib, Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = 2 if lags else 1
    fig, axes = plt.subplots(1, panels, figsize=(5.5 * panels, 4.2), squeeze=False)
    cpu_panel(axes[0][0], samples, f"Store path, CPU per trace\n{_safe(target)}")
    if lags:
        ax = axes[0][1]
        for i, name in enumerate(lags):
            lag = lags[name]
            ax.bar([i - 0.18], [lag["lag_p50_s"] or 0], width=0.36, color=COLORS[name], alpha=0.5,
                   label="p50" if i == 0 else None)
            ax.bar([i + 0.18], [lag["lag_p99_s"] or 0], width=0.36, color=COLORS[name], label="p99" if i == 0 else None)
            ax.annotate(f"at {lag['paced_at']:.0f}/s", (i, max(lag["lag_p99_s"] or 0, lag["lag_p50_s"] or 0)),
                        ha="center", va="bottom", fontsize=8)
        ax.axhline(2.0, color="green", linestyle="--", linewidth=1, label="goal: p99 < 2 s")
        ax.set_xticks(range(len(lags)), list(lags))
        ax.set_ylabel("lag (s)")
        ax.set_title("Lag at 80% of each path's writer rate", fontsize=9)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
