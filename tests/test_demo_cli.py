"""``spanline demo`` and the ``spanline`` command, end to end in a subprocess, checked against the store."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest
from mlflow import MlflowClient

import spanline
from spanline import cli

TIMEOUT = 120


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("ANTHROPIC_API_KEY", None)  # the fake backend, never the network
    env.pop("MLFLOW_TRACKING_URI", None)
    env["MLFLOW_MODEL_CATALOG_URI"] = ""  # offline: no ~7 s stall on the first span write
    env["PYTHONIOENCODING"] = "utf-8"
    return env


def _spanline(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "spanline.cli", *args],
        cwd=cwd,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )


def _check_traces(uri: str, experiment: str, cities: list[str]) -> str:
    """Asserts the store holds one seed-shaped trace per city; returns the experiment id."""
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"experiment {experiment!r} not created in {uri}"
    traces = client.search_traces(locations=[exp.experiment_id], max_results=50)
    assert len(traces) == len(cities)
    questions = []
    for tr in traces:
        assert tr.info.state == "OK"
        spans = tr.data.spans
        roots = [s for s in spans if s.parent_id is None]
        assert len(roots) == 1
        root = roots[0]
        assert (root.name, root.span_type) == ("run_tool_agent", "AGENT")
        children = sorted((s for s in spans if s.parent_id == root.span_id), key=lambda s: s.start_time_ns)
        assert len(spans) == 4 and len(children) == 3
        assert [(s.name, s.span_type) for s in children] == [
            ("AsyncMessages.create", "CHAT_MODEL"),
            ("get_weather", "TOOL"),
            ("AsyncMessages.create", "CHAT_MODEL"),
        ]
        for chat in (children[0], children[2]):
            usage = chat.get_attribute("mlflow.chat.tokenUsage")
            assert usage["input_tokens"] > 0 and usage["output_tokens"] > 0
        questions.append(root.inputs["question"])
        assert tr.info.token_usage["input_tokens"] > 0
    assert sorted(questions) == sorted(f"What's the weather like in {c} today?" for c in cities)
    return exp.experiment_id


def test_demo_stores_three_seed_traces_and_prints_them(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path}/d.db"
    work = tmp_path / "cwd"
    work.mkdir()
    proc = _spanline("demo", "--tracking-uri", uri, "--experiment", "demo-test", cwd=work)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout

    experiment_id = _check_traces(uri, "demo-test", ["Tokyo", "Paris", "Sydney"])

    assert "fake Anthropic API" in out
    assert "Tokyo: " in out and "sunny" in out
    assert "Paris: " in out and "rainy" in out
    assert "Sydney: " in out
    assert "Read 3 trace(s) back from MLflow" in out
    lines = out.splitlines()
    assert sum(line.strip().startswith("run_tool_agent  AGENT  ") for line in lines) == 3
    assert sum("├─ AsyncMessages.create  CHAT_MODEL  " in line for line in lines) == 3
    assert sum("├─ get_weather  TOOL  " in line for line in lines) == 3
    assert sum("└─ AsyncMessages.create  CHAT_MODEL  " in line for line in lines) == 3
    assert " in / " in out and " out" in out
    assert "spanline stats: 3 traces" in out and "dropped: none" in out
    assert f"mlflow ui --backend-store-uri {uri} --port 5000" in out
    assert f"http://127.0.0.1:5000/#/experiments/{experiment_id}/traces" in out
    # The view command runs as printed, from where the demo ran, with the venv not activated (a newcomer's
    # shell): its program is a file there, or on the PATH the demo had.
    command = next(line.split() for line in out.splitlines() if " ui --backend-store-uri " in line)
    program = command[0]
    assert os.access(work / program, os.X_OK) or shutil.which(program, path=_env().get("PATH")), command
    help_run = subprocess.run([*command[: command.index("ui") + 1], "--help"], cwd=work, env=_env(),
                              capture_output=True, text=True, timeout=TIMEOUT)
    assert help_run.returncode == 0, help_run.stderr[-2000:]
    # Nothing written to the working directory when a tracking URI is given.
    assert not (work / "mlflow.db").exists()


def test_demo_defaults_to_mlflow_db_in_cwd(tmp_path: Path) -> None:
    proc = _spanline("demo", "--cities", "Tokyo", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    uri = f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    assert f"MLflow tracking URI: {uri}" in proc.stdout
    _check_traces(uri, "spanline-demo", ["Tokyo"])


def test_version() -> None:
    proc = _spanline("--version", cwd=Path.cwd())
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"spanline {spanline.__version__}"


def test_bench_missing_module_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "spanline.bench", None)  # makes the import fail
    monkeypatch.delattr(spanline, "bench", raising=False)  # imported by an earlier test
    assert cli.main(["bench", "--traces", "10"]) == 2
    assert "spanline.bench is not available" in capsys.readouterr().err


def test_bench_gets_the_rest_of_argv(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[list[str]] = []
    fake_bench = types.ModuleType("spanline.bench")
    fake_bench.main = lambda argv: seen.append(argv) or 0  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "spanline.bench", fake_bench)
    monkeypatch.delattr(spanline, "bench", raising=False)
    assert cli.main(["bench", "--help", "-n", "3"]) == 0
    assert seen == [["--help", "-n", "3"]]


def test_no_command_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([]) == 2
    assert "demo" in capsys.readouterr().out
