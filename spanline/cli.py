"""The ``spanline`` command: ``demo``, ``bench``, ``writer``, ``status``, ``--version``."""

from __future__ import annotations

import argparse
import os
import sys

import spanline


def _cities(value: str) -> list[str]:
    cities = [c.strip() for c in value.split(",") if c.strip()]
    if not cities:
        raise argparse.ArgumentTypeError("give at least one city, e.g. Tokyo,Paris,Sydney")
    return cities


def _positive_int(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {value!r}")
    return n


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spanline",
        description="Trace every Anthropic SDK call into MLflow as nested traces.",
    )
    parser.add_argument("--version", action="version", version=f"spanline {spanline.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = sub.add_parser(
        "demo",
        help="run a traced tool-calling agent and print the stored traces",
        description=(
            "Run the tool-calling agent of MLflow's Anthropic tracing example, traced by spanline, against "
            "the real Anthropic API when ANTHROPIC_API_KEY is set (else an offline fake), then read the "
            "traces back from MLflow and print them."
        ),
    )
    demo.add_argument(
        "--tracking-uri",
        default=None,
        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the current "
        "directory)",
    )
    demo.add_argument(
        "--experiment", default="spanline-demo", help="MLflow experiment (default: %(default)s)"
    )
    demo.add_argument(
        "--cities",
        type=_cities,
        default=["Tokyo", "Paris", "Sydney"],
        help="comma-separated cities to ask about (default: Tokyo,Paris,Sydney)",
    )

    writer = sub.add_parser(
        "writer",
        help="store a log directory's events in MLflow (started automatically; run it by hand or supervised)",
        description=(
            "Tail every segment of an event-log directory, assemble the events into traces and store them with "
            "log_spans, checkpointing after each write. One writer per directory (a lock file)."
        ),
    )
    _log_location(writer)
    writer.add_argument("--once", action="store_true", help="store what the log holds now, then exit")
    writer.add_argument(
        "--exit-when-idle",
        action="store_true",
        help="exit once no producer is alive and the log is stored (how the automatic writer runs)",
    )
    writer.add_argument("--idle-exit", type=float, default=5.0, help="seconds idle before --exit-when-idle exits")
    writer.add_argument("--poll", type=float, default=0.2, help="seconds between looks for new records")
    writer.add_argument(
        "--grace",
        type=float,
        default=None,
        help="on SIGTERM/SIGINT, seconds to go on storing until every producer is gone and its traces are "
        "stored (a second signal: exit now, the rest left in the log); default $SPANLINE_WRITER_GRACE or 25",
    )
    writer.add_argument(
        "--writers",
        type=_positive_int,
        default=os.environ.get("SPANLINE_WRITERS") or None,  # argparse applies ``type`` to a string default
        help="store writers in parallel, each trace always written by the same one (default per store: 4 "
        "threads for an mlflow server, 1 for PostgreSQL/MySQL (N: processes), always 1 for sqlite; "
        "also $SPANLINE_WRITERS)",
    )

    status = sub.add_parser("status", help="print an event log's state: segments, lag, writer, producers")
    _log_location(status)
    status.add_argument("--json", action="store_true", help="print the writer's status file as JSON")
    status.add_argument("--all", action="store_true", help="list every default log directory of this user")

    replay = sub.add_parser(
        "replay-dead-letters",
        help="store again the traces the store refused for good (set aside in the log directory's dead-letter file)",
        description=(
            "Once the cause is fixed (the experiment created, the store migrated), write each trace of the "
            "log directory's dead-letter file again; those refused again stay in the file with their new error."
        ),
    )
    _log_location(replay)

    sub.add_parser(
        "bench",
        help="run spanline's benchmark (arguments go to spanline.bench)",
        add_help=False,
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``spanline`` console script; returns the exit code."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    parser = _parser()

    # Everything after "bench" belongs to spanline.bench, whatever it looks like.
    if args_list and args_list[0] == "bench":
        return _bench(args_list[1:])

    args = parser.parse_args(args_list)
    if args.command == "demo":
        from spanline import demo

        return demo.run(tracking_uri=args.tracking_uri, experiment=args.experiment, cities=args.cities)
    if args.command == "writer":
        return _writer(args)
    if args.command == "status":
        return _status(args)
    if args.command == "replay-dead-letters":
        return _replay_dead_letters(args)
    parser.print_help()
    return 2


def _log_location(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--log-dir", default=None, help="the log directory (default: the tracking store's)")
    sub.add_argument(
        "--tracking-uri",
        default=None,
        help="find the default log directory of this store (default: $MLFLOW_TRACKING_URI / MLflow's default)",
    )


def _log_dir(args: argparse.Namespace, create: bool = True) -> str:
    """The log directory the command works on; ``create=False`` only computes the default one's path."""
    from spanline.pipeline import logdir

    if args.log_dir:
        return args.log_dir
    if os.environ.get("SPANLINE_LOG_DIR"):
        return os.environ["SPANLINE_LOG_DIR"]
    uri, _ = _tracking_uri(args)
    return logdir.default_dir(uri) if create else logdir.default_path(uri)


def _tracking_uri(args: argparse.Namespace) -> tuple[str, str]:
    """The tracking URI whose default log directory a command uses, and where it came from."""
    from spanline.pipeline import logdir

    if args.tracking_uri:
        return logdir.absolute_uri(args.tracking_uri), "--tracking-uri"
    source = "$MLFLOW_TRACKING_URI" if os.environ.get("MLFLOW_TRACKING_URI") else "MLflow's default"
    return logdir.resolved_tracking_uri(), source


def _writer(args: argparse.Namespace) -> int:
    import logging

    from spanline.pipeline.writer import OneLineFormatter, Writer, drain

    handler = logging.StreamHandler()
    handler.setFormatter(OneLineFormatter("%(asctime)s spanline-writer[%(process)d] %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    # SIGTERM / SIGINT (Kubernetes, a supervisor): drain within the grace period, then leave through the loop's
    # cleanup. What was read but not checkpointed is stored again by the next writer, once (log_spans is
    # idempotent).
    grace = drain.Drain(args.grace if args.grace is not None else drain.grace_from_env())
    grace.install()
    os.environ.setdefault("MLFLOW_MODEL_CATALOG_URI", "")  # offline, MLflow would stall ~7 s per process
    # The writer's own loop retries a failed store write, forever, with a short capped backoff. MLflow's HTTP
    # retries inside a call (7 by default, waits doubling up to 2 minutes) would hold the call for minutes
    # and leave the writer asleep in urllib3 long after the server is back. Unless the user chose otherwise.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    from spanline.pipeline.compat import remember_missing_modules

    remember_missing_modules()  # MLflow's cost lookup would retry a failed `import litellm` per chat span
    writer = Writer(
        _log_dir(args),
        once=args.once,
        exit_when_idle=args.exit_when_idle,
        idle_exit=args.idle_exit,
        poll=args.poll,
        writers=args.writers,
        freeze_gc=True,
    )
    writer.drain = grace
    try:
        code = writer.run()
    except SystemExit as stop:  # a second signal
        code = stop.code if isinstance(stop.code, int) else 1
    return grace.exit_code(code)


def _status(args: argparse.Namespace) -> int:
    import json
    import time

    from spanline.pipeline import eventlog, logdir

    if args.all:
        return _status_all()
    # Only looks: creates no directory and no file (a newcomer's first `spanline status` must leave no trace).
    directory = _log_dir(args, create=False)
    if not (args.log_dir or os.environ.get("SPANLINE_LOG_DIR")) and not args.json:
        uri, source = _tracking_uri(args)
        print(f"tracking URI:  {logdir.shown_uri(uri)}   (from {source})")
    if not os.path.isdir(directory):
        print(f"log directory: {directory} does not exist: nothing was recorded for this store here "
              "(`spanline status --all` lists the log directories of this user)")
        return 0
    status = logdir.read_status(directory)
    if args.json:
        print(json.dumps(status, indent=2))
        return 0
    segments, size = eventlog.total_bytes(directory)
    running = logdir.writer_running(directory, create=False)
    print(f"log directory: {directory}")
    print(f"segments:      {segments} ({size:,} bytes)")
    producers = _producers(directory)
    uris = sorted({p["tracking_uri"] for p in producers if p["tracking_uri"]})
    # With the directory named by hand, the producers' headers are the only word on its store.
    label = "tracking URI: " if (args.log_dir or os.environ.get("SPANLINE_LOG_DIR")) else "recorded for: "
    print(f"{label} {', '.join(logdir.shown_uri(u) for u in uris) if uris else '(no producer left in the log)'}")
    if running:
        pid = logdir.writer_pid(directory)
        print(f"writer:        pid {pid}, {status.get('state', 'starting')}")
        print(f"  stop it:     kill -TERM {pid}   (it drains within its grace period; a second SIGTERM stops it "
              f"at once, the rest stays in the log for the next writer)")
    else:
        print("writer:        not running (the next traced process starts one)")
    for p in producers:
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(p["start_ns"] / 1e9)) if p["start_ns"] else "?"
        print(f"producer:      pid {p['pid']} started {started}: {'alive' if p['alive'] else 'gone'}, "
              f"{p['segments']} segment(s) in the log")
    if status:
        age = time.time() - status.get("updated", 0)
        lag = status.get("lag_p99_s")
        print(f"stored:        {status.get('traces_stored', 0):,} traces, {status.get('spans_stored', 0):,} spans "
              f"in {status.get('batches', 0):,} batches ({status.get('retries', 0)} retries)")
        print(f"lag (p99):     {'-' if lag is None else f'{lag:.3f} s'}   (status {age:.1f} s old)")
        print(f"dropped:       {status.get('dropped') or 'none'}")
        store = status.get("store") or {}
        if store.get("path"):
            others = ", ".join(f"{why}: {n:,}" for why, n in (store.get("log_spans_traces") or {}).items())
            print(f"store path:    {store['path']}   ({store.get('bulk_traces', 0):,} traces in bulk"
                  f"{'; to log_spans: ' + others if others else ''})")
        for pid, p in (status.get("producers") or {}).items():
            print(f"producer {pid} (writer's view): {p.get('segments')} segment(s), "
                  f"{p.get('bytes_pending', 0):,} bytes unread, {p.get('traces_stored', 0):,} traces stored, "
                  f"open spans {p.get('open_spans', 0)}")
        for name, message in (status.get("bad_segments") or {}).items():
            print(f"left in place: {name}: {message}")
        for what, message in (status.get("file_errors") or {}).items():
            print(f"cannot write:  {what}: {message} (storing goes on)")
        if status.get("quarantined") or status.get("corrupt_records"):
            print(f"damaged:       {status.get('quarantined', 0)} segment(s) quarantined (renamed *.bad), "
                  f"{status.get('corrupt_records', 0)} corrupt record(s) skipped")
        print(f"last error:    {status.get('last_error') or 'none'}")
    _print_dead_letters(directory)
    return 0


def _status_all() -> int:
    """One line per default log directory of this user: its store, what waits in it, whether a writer runs."""
    from spanline.pipeline import eventlog, logdir

    root = logdir.cache_root()
    try:
        names = sorted(os.listdir(root))
    except OSError:
        names = []
    print(f"log directories in {root}: {len(names)}")
    for name in names:
        directory = os.path.join(root, name)
        if not os.path.isdir(directory):
            continue
        segments, size = eventlog.total_bytes(directory)
        writer = "writer running" if logdir.writer_running(directory, create=False) else "no writer"
        store = logdir.store_of(directory) or "(store not named: made before tracking-uri.txt)"
        print(f"  {name}  {store}  {segments} segment(s), {size:,} bytes, {writer}")
    return 0


def _producers(directory: str) -> list[dict]:
    """Every producer with segments in ``directory``: its pid and start time (from its segment header, so a
    reused pid is not mistaken for it) and whether it lives, read from the lock it holds on its newest segment
    while it does (not from the writer's status, which a writer busy retrying updates late)."""
    import fcntl

    from spanline.pipeline import eventlog, safefs

    newest: dict[str, tuple[int, str]] = {}
    counts: dict[str, int] = {}
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    for name in names:
        parsed = eventlog.parse_name(name)
        if parsed is None:
            continue
        producer, seq = parsed
        counts[producer] = counts.get(producer, 0) + 1
        if producer not in newest or seq > newest[producer][0]:
            newest[producer] = (seq, name)
    out = []
    for producer, (_, name) in sorted(newest.items()):
        entry = {"id": producer, "pid": None, "start_ns": 0, "tracking_uri": "", "alive": False,
                 "segments": counts[producer]}
        try:
            fd = safefs.open_in_path(os.path.join(directory, name), os.O_RDONLY)  # never through a link
        except OSError:
            continue
        try:
            header = eventlog.read_header(fd)
            if header is not None:
                entry.update(pid=header.fields.get("pid"), start_ns=header.fields.get("start_ns") or 0,
                             tracking_uri=header.fields.get("tracking_uri") or "")
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                fcntl.flock(fd, fcntl.LOCK_UN)
            except BlockingIOError:
                entry["alive"] = True
        except Exception:
            pass
        finally:
            os.close(fd)
        out.append(entry)
    return out


def _print_dead_letters(directory: str) -> None:
    from spanline.pipeline.writer import deadletter

    count, error = deadletter.count(directory)
    if count:
        print(f"dead letters:  {count} trace part(s) refused by the store for good, in "
              f"{os.path.join(directory, deadletter.FILE)}; last error: {error}")
        print("               fix the cause, then run `spanline replay-dead-letters`")


def _replay_dead_letters(args: argparse.Namespace) -> int:
    os.environ.setdefault("MLFLOW_MODEL_CATALOG_URI", "")
    from spanline.pipeline.sink import MlflowSink
    from spanline.pipeline.writer import deadletter

    directory = _log_dir(args)
    result = deadletter.replay(directory, MlflowSink(lambda: None).write)
    print(f"replayed: {result['stored']} stored, {result['refused']} refused again (kept), "
          f"{result['unreadable']} unreadable line(s) dropped")
    return 0 if not result["refused"] else 1


def _bench(rest: list[str]) -> int:
    try:
        from spanline import bench
    except ImportError as exc:
        print(
            f"spanline bench: the benchmark module spanline.bench is not available ({exc}).",
            file=sys.stderr,
        )
        return 2
    result = bench.main(rest)
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
