"""``spanline bench``: parse the arguments, run the plan through the runner, print and write the report."""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .jobs import child_main
from .plan import FULL, QUICK, SCENARIOS, SMOKE, Plan, Sizes, job_label
from .progress import Progress
from .report import Report, json_default, strip_samples
from .runner import Runner, fork_server_main, mlflow_server


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in ("mlflow", "anthropic", "spanline", "msgspec", "httpx2"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "?"
    return out


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="spanline bench",
        description="Benchmark spanline against MLflow's own Anthropic autolog (interleaved, one process per "
        "configuration) and print a markdown table.",
    )
    parser.add_argument("--quick", action="store_true", help="small counts, 2 rounds (about 3 minutes)")
    parser.add_argument(
        "--out",
        metavar="DIR",
        help="write bench.md, bench.json and bench.png into DIR (created if missing)",
    )
    parser.add_argument("--markdown", metavar="PATH", help="also write the Markdown report here")
    parser.add_argument("--json", metavar="PATH", help="also write every figure (and per-run summaries) here")
    parser.add_argument(
        "--png",
        metavar="PATH",
        help="also draw the picture here: per-call latency distributions, CPU per call by process, drain "
        "(needs matplotlib)",
    )
    parser.add_argument(
        "--scenarios",
        default=",".join(SCENARIOS),
        help=f"comma-separated subset of {','.join(SCENARIOS)} (default: all)",
    )
    parser.add_argument("--rounds", type=int, default=None, help="override the number of rounds")
    parser.add_argument("--no-server", action="store_true", help="skip the real `mlflow server` part of TW")
    parser.add_argument(
        "--spawn", action="store_true", help="start a fresh interpreter per process instead of forking"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (stores and logs)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    # For the test suite: the smallest counts that exercise every part (figures are meaningless).
    parser.add_argument("--smoke", action="store_true", help=argparse.SUPPRESS)
    # Internal: the per-process runners.
    parser.add_argument("--fork-server", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--job", help=argparse.SUPPRESS)
    parser.add_argument("--save-raw", metavar="PATH", help=argparse.SUPPRESS)  # every sample, for --render
    parser.add_argument("--render", metavar="PATH", help=argparse.SUPPRESS)  # print a --save-raw run again
    from .scale import add_arguments as add_scale_arguments  # the scale scenarios (--store / --server)

    add_scale_arguments(parser)
    from .storepaths import add_arguments as add_path_arguments  # --store URI --paths: log_spans against bulk

    add_path_arguments(parser)
    from .serverrequests import add_arguments as add_request_arguments  # --server URL --requests

    add_request_arguments(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """``spanline bench``: run the plan, print the markdown table; the exit code is 0 unless a run failed."""
    args = _parse_args(argv)
    if args.fork_server:
        return fork_server_main()
    if args.job:
        child_main(json.loads(args.job))
        return 0  # not reached: the child leaves through os._exit
    outputs = _outputs(args)
    if args.render:
        return _render_saved(args.render, outputs)
    if args.store and args.paths:  # the store paths, log_spans and bulk, alternated
        from .storepaths import run as run_paths

        return run_paths(args)
    if args.server and args.requests:  # the writer's requests to a server: batch, threads, compression
        from .serverrequests import run as run_requests

        return run_requests(args)
    if args.store or args.server:  # the scale scenarios: one writer, N store writers, a given store
        from .scale import run as run_scale

        return run_scale(args)

    os.environ["MLFLOW_MODEL_CATALOG_URI"] = ""
    sizes = SMOKE if args.smoke else QUICK if args.quick else FULL
    if args.rounds:
        sizes = Sizes(**{**sizes.__dict__, "rounds": args.rounds})
    scenarios = [s.strip().upper() for s in args.scenarios.split(",") if s.strip()]
    unknown = [s for s in scenarios if s not in SCENARIOS]
    if unknown:
        print(
            f"spanline bench: unknown scenario(s) {', '.join(unknown)}; known: {', '.join(SCENARIOS)}",
            file=sys.stderr,
        )
        return 2
    plan = Plan(sizes, scenarios)
    plan.build(server=not args.no_server)

    started = time.monotonic()
    started_utc = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    load_at_start = os.getloadavg()[0]
    workdir = tempfile.mkdtemp(prefix="spanline-bench-")
    results: list[tuple[dict[str, Any], dict[str, Any]]] = []
    progress = Progress(len(plan.jobs) + 1, enabled=not args.no_progress)
    runner = Runner(workdir, spawn=args.spawn)
    failed = False
    try:
        template = os.path.join(workdir, "template.db")
        progress.step("creating the template sqlite store")
        artifacts = Path(workdir, "artifacts").as_uri()
        init = runner.run({"kind": "init_db", "uri": f"sqlite:///{template}", "artifacts": artifacts}, timeout=300)
        progress.advance()
        if not init.get("ok"):
            raise RuntimeError(f"could not create the template store: {init.get('error')}")
        server_jobs = [j for j in plan.jobs if j.get("target") == "server"]
        server_ctx = mlflow_server(workdir) if server_jobs else contextlib.nullcontext(None)
        with server_ctx as server_url:
            for i, job in enumerate(plan.jobs):
                progress.step(job_label(job))
                job["cache"] = os.path.join(workdir, "cache")
                if job.get("target") == "server":
                    job["uri"] = server_url
                else:
                    db = os.path.join(workdir, f"store{i:03d}.db")
                    shutil.copyfile(template, db)
                    job["uri"] = f"sqlite:///{db}"
                result = runner.run(job)
                failed |= not result.get("ok")
                results.append((job, result))
                progress.advance()
                if job["kind"] == "scenario" and result.get("ok"):
                    with contextlib.suppress(OSError):
                        os.remove(job["uri"][len("sqlite:///") :])
    finally:
        runner.close()
        progress.finish()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)

    fake = next((r.get("fake") for _, r in results if r.get("fake")), "?")
    meta = {
        **_versions(),
        "cpu": _cpu_model(),
        "nproc": os.cpu_count(),
        "platform": f"{platform.system()} {platform.release()}",
        "processes": "process (spawned)" if args.spawn else "process (forked from a preloaded interpreter)",
        "wall_s": time.monotonic() - started,
        "fake": fake,
        "mode": sizes.name,
        "command": " ".join(["spanline bench", *(sys.argv[1:] if argv is None else argv)]),
        "started_utc": started_utc,
        "load_average": [round(load_at_start, 2), round(os.getloadavg()[0], 2)],  # 1-minute, at start and end
        "workdir": workdir if args.keep else None,
    }
    if args.save_raw:
        with open(args.save_raw, "w") as f:
            json.dump({"meta": meta, "sizes": sizes.__dict__, "results": results}, f)
    return _write_report(sizes, results, meta, outputs, failed)


OUTPUT_FILES = {"markdown": "md", "json": "json", "png": "png"}  # --out DIR writes DIR/bench.<ext>


def _outputs(args: argparse.Namespace) -> dict[str, str | None]:
    """Where the Markdown, JSON and PNG go: ``--out DIR`` names all three, each ``--markdown/--json/--png``
    overrides its own; the Markdown is printed on stdout in any case."""
    out: dict[str, str | None] = {"markdown": None, "json": None, "png": None}
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        out = {kind: os.path.join(args.out, f"bench.{ext}") for kind, ext in OUTPUT_FILES.items()}
    for kind in out:
        if getattr(args, kind):
            out[kind] = getattr(args, kind)
    return out


def _write_report(
    sizes: Sizes,
    results: list[tuple[dict[str, Any], dict[str, Any]]],
    meta: dict[str, Any],
    outputs: dict[str, str | None],
    failed: bool,
) -> int:
    report = Report(sizes, results, meta)
    markdown = report.render()
    print(markdown)
    if outputs["markdown"]:
        with open(outputs["markdown"], "w") as f:
            f.write(markdown)
    if outputs["json"]:
        payload = {
            "meta": meta,
            "sizes": sizes.__dict__,
            "summary": report.summary,
            "targets": report.targets,
            "runs": [{"job": j, "result": strip_samples(r)} for j, r in results],
        }
        with open(outputs["json"], "w") as f:
            json.dump(payload, f, indent=1, default=json_default)
    if outputs["png"]:
        try:
            from .figure import draw
        except ImportError as exc:  # matplotlib comes with mlflow, but not with mlflow-skinny
            print(f"spanline bench: no picture ({exc}); pip install 'spanline[bench]'", file=sys.stderr)
        else:
            draw(report, outputs["png"])
    written = [path for path in outputs.values() if path]
    if written:
        print(f"spanline bench: wrote {', '.join(written)}", file=sys.stderr)
    return 1 if failed else 0


def _render_saved(path: str, outputs: dict[str, str | None]) -> int:
    """Print (and write) the report of a run saved with ``--save-raw``, without running it again."""
    with open(path) as f:
        saved = json.load(f)
    sizes = Sizes(**{k: tuple(v) if k == "tw_batches" else v for k, v in saved["sizes"].items()})
    results = [(j, r) for j, r in saved["results"]]
    failed = any(not r.get("ok") for _, r in results)
    return _write_report(sizes, results, saved["meta"], outputs, failed)
