"""`spanline bench` runs end to end (tiny counts) and writes its outputs, so the benchmark cannot rot unnoticed."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest


def test_bench_runs_end_to_end_and_writes_markdown_json_and_picture(tmp_path):
    """A tiny run of every kind of job (the scenario processes, the one-process caller path, the worker's
    throughput, the stalled store) prints its report and writes it as Markdown, JSON and a PNG."""
    env = {**os.environ, "MLFLOW_MODEL_CATALOG_URI": ""}
    out = tmp_path / "bench"
    done = subprocess.run(
        [sys.executable, "-m", "spanline.bench", "--smoke", "--scenarios", "S1,S5,S6,SP,TW,MEM", "--no-progress",
         "--out", str(out)],
        env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bench"], "the bench leaves its stores in its temp dir"
    table = done.stdout
    for heading in ("## At a glance", "## Caller's path, in one process", "## S1 ", "## S5 ", "## S6 ",
                    "## SP: the store paths", "## Worker throughput", "## Memory", "## Targets"):
        assert heading in table, heading
    assert "error:" not in table and "failed" not in table, table
    assert "| sqlite (in-process) | 100 |" in table
    assert (out / "bench.md").read_text().strip() == table.strip()

    payload = json.loads((out / "bench.json").read_text())
    summary = payload["summary"]
    caller = summary["caller_path"]
    assert caller["untraced_us"] > 0 and caller["pct_of_untraced_call"] == pytest.approx(
        100 * caller["spanline_added_us"] / caller["untraced_us"])
    s1 = summary["S1"]
    assert {"untraced", "spanline", "mlflow_async", "mlflow_sync"} <= set(s1)
    assert 0 < s1["spanline"]["caller_cpu_per_trace_us"] <= s1["spanline"]["cpu_per_trace_us"]
    assert summary["S5"]["spanline"]["stored"] == summary["S5"]["spanline"]["made"] == 100
    assert summary["glance"][0]["figure"].startswith("caller's path")
    assert all(run["result"]["ok"] for run in payload["runs"])
    # spanline's jobs run a writer process: its CPU over the timed part and its start are reported apart, and
    # S1 and S5 measure the lag at a steady load; the other configurations have no writer.
    scenario_runs = [run for run in payload["runs"] if run["job"]["kind"] == "scenario"]
    for run in scenario_runs:
        job, result = run["job"], run["result"]
        if job["config"] in ("spanline", "spanline_mlflow_export"):
            assert result["writer_cpu_s"] >= 0 and result["writer_start_cpu_s"] > 0, result
            if job["scenario"] in ("S1", "S5"):
                assert len(result["lag_s"]) == result["lag_calls"] > 0 and min(result["lag_s"]) >= 0, result
        else:
            assert "writer_cpu_s" not in result and "lag_s" not in result, job
    assert {r["job"]["scenario"] for r in scenario_runs if r["job"]["config"] == "spanline"} == {"S1", "S5", "S6"}
    # S6: the seed's agent under @mlflow.trace, every configuration stored what it made, and the derived figures.
    s6 = summary["S6"]
    for config in ("spanline", "spanline_mlflow_export", "mlflow_async"):
        assert s6[config]["stored"] == s6[config]["made"] == 6, (config, s6[config])
    assert s6["derived"]["creation"] == pytest.approx(
        s6["mlflow_tracer_only"]["cpu_per_trace_us"] - s6["untraced"]["cpu_per_trace_us"])
    assert "S6 application CPU per agent run under `@mlflow.trace`" in table
    assert s1["spanline"]["writer_cpu_per_trace_us"] is not None and summary["S5"]["spanline"]["lag_s"]
    (writer_row,) = [row for row in summary["glance"] if row["figure"].startswith("writer process CPU")]
    assert writer_row["spanline"].endswith("(S5)") and " µs" in writer_row["spanline"], writer_row
    assert "≤ 1/50 of MLflow async autolog's added CPU" in table
    # SP: both store paths ran on the seed agent's traces, each stored all of them (checked in the store by the
    # job), and the picture's sixth panel has its figures.
    sp = summary["SP"]
    assert len(sp["samples"]["log_spans"]) == len(sp["samples"]["bulk"]) == 1
    assert sp["per_core_gain"] == pytest.approx(sp["log_spans"]["cpu_ms"] / sp["bulk"]["cpu_ms"])
    assert "SP bulk path ≥ 3× the traces per writer core" in table
    assert "application + writer CPU per traced call ≤ 1/25" in table

    import matplotlib.image

    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    height, width = matplotlib.image.imread(out / "bench.png").shape[:2]
    assert width >= 1200 and height >= 800


def test_untraced_twin_runs_the_sdk_as_shipped(traced, experiment):
    """The caller-path benchmark compares a traced client with its untraced twin while the patches stay in
    place: the twin must record nothing and answer as the SDK does, and the traced client must still record."""
    from helpers import traces_in

    import spanline
    from spanline.bench import CHAT_KWARGS, fake_clients, interleaved_overhead, untraced_twin

    client = fake_clients()[0]
    twin = untraced_twin(fake_clients()[0])
    answer = twin.messages.create(**CHAT_KWARGS)
    assert answer.content[0].text == client.messages.create(**CHAT_KWARGS).content[0].text
    assert answer._request_id
    result = interleaved_overhead(client, twin, blocks=2, calls=3)
    assert spanline.flush(timeout=60)
    assert len(traces_in(experiment)) == 1 + 2 * 3  # the traced client's calls only
    assert len(result["diff_ns"]) == 2 and len(result["samples_ns"][False]) == 6


def test_bench_talks_to_the_one_fake_anthropic_api():
    """The bench measures the SDK against ``spanline.testing``, the fake the tests and the demo use, not a
    second fake of its own: answers carry that fake's ids, and no module of the package defines a handler."""
    import pkgutil

    import spanline.bench
    from spanline.bench import CHAT_KWARGS, fake_clients

    client, _, which = fake_clients()
    answer = client.messages.create(**CHAT_KWARGS)
    assert answer.id.startswith("msg_fake_") and answer._request_id.startswith("req_fake_")
    assert "spanline.testing" in which
    for info in pkgutil.iter_modules(spanline.bench.__path__, "spanline.bench."):
        if info.name.endswith("__main__"):  # importing it runs the bench
            continue
        module = __import__(info.name, fromlist=["_"])
        assert not [name for name in vars(module) if name.startswith("_fallback")], info.name


def test_bench_store_paths_compares_log_spans_and_bulk(tmp_path):
    """``spanline bench --store URI --paths`` (tiny counts): both paths, alternated, in one table and the JSON."""
    env = {**os.environ, "MLFLOW_MODEL_CATALOG_URI": ""}
    done = subprocess.run(
        [sys.executable, "-m", "spanline.bench", "--store", f"sqlite:///{tmp_path}/paths.db", "--paths",
         "--traces", "6", "--batch", "4", "--rounds", "2", "--json", str(tmp_path / "paths.json"),
         "--png", str(tmp_path / "paths.png"), "--lag", "1", "--lag-backlog", "600"],
        env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "| log_spans |" in done.stdout and "| bulk |" in done.stdout and "bulk / log_spans" in done.stdout
    rounds = [line.split(":")[0] for line in done.stderr.splitlines() if line.startswith("round ")]
    assert rounds == ["round 1 log_spans", "round 1 bulk", "round 2 bulk", "round 2 log_spans"]
    samples = json.loads((tmp_path / "paths.json").read_text())["samples"]
    assert all(len(samples[path]) == 2 and samples[path][0]["cpu_ms"] > 0 for path in ("log_spans", "bulk"))
    assert (tmp_path / "paths.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The lag at 80% of each path's writer rate: a writer process per path, on a CPU of its own where there
    # are two, which took the path asked for; every paced call's lag measured.
    lags = json.loads((tmp_path / "paths.json").read_text())["lags"]
    for path in ("log_spans", "bulk"):
        lag = lags[path]
        assert lag["writer_traces_per_s"] > 0 and lag["lags_measured"] == lag["calls"] > 0, lag
        assert lag["store_path"].startswith(path) and lag["producer"] == "replay", lag
        assert lag["pinned"].startswith("writer on CPU" if len(os.sched_getaffinity(0)) > 1 else "not pinned"), lag
