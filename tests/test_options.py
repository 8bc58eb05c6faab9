"""Options change what is recorded, never what the caller gets; and the exit handler stores what is left."""

from __future__ import annotations

import os
import subprocess
import sys

import mlflow
import pytest
from helpers import run_script, traces_in
from spanline.pipeline import options as options_module

import spanline

MODEL = "claude-fake-1"


def _ask(client, text="hello"):
    return client.messages.create(model=MODEL, max_tokens=32, messages=[{"role": "user", "content": text}])


def test_sample_rate_keeps_whole_traces_or_none(traced, fake, restore_options):
    spanline.configure(sample_rate=0.0)
    client = fake.client()

    @spanline.trace(span_type="AGENT")
    def agent():
        return _ask(client).content[0].text

    assert agent().startswith("Hello!")  # the caller's result is untouched
    spanline.configure(sample_rate=1.0)
    agent()
    assert spanline.flush(30)
    (trace,) = traces_in(traced)
    assert len(trace.data.spans) == 2


def test_metadata_mode_records_no_prompt_or_completion(traced, fake, restore_options):
    spanline.configure(capture_content="metadata")
    _ask(fake.client(), "my secret prompt")
    assert spanline.flush(30)
    (trace,) = traces_in(traced)
    span = trace.data.spans[0]
    stored = str(span.to_dict())
    assert "my secret prompt" not in stored and "You said" not in stored
    assert span.inputs == {"max_tokens": 32, "model": MODEL}
    assert span.outputs["usage"]["output_tokens"] > 0
    assert trace.info.trace_metadata["mlflow.trace.tokenUsage"]


def test_redact_runs_on_inputs_and_outputs(traced, fake, restore_options):
    def redact(value):
        if isinstance(value, dict):
            return {k: ("[email]" if isinstance(v, str) and "@" in v else redact(v)) for k, v in value.items()}
        if isinstance(value, list):
            return [redact(v) for v in value]
        return value

    spanline.configure(redact=redact)

    @spanline.trace
    def lookup(email):
        return {"owner": email}

    lookup("ann@example.com")
    _ask(fake.client(), "mail bob@example.com")
    assert spanline.flush(30)
    first, second = traces_in(traced)
    assert first.data.spans[0].inputs == {"email": "[email]"}
    assert first.data.spans[0].outputs == {"owner": "[email]"}
    assert second.data.spans[0].inputs["messages"][0]["content"] == "[email]"


def test_max_content_bytes_truncates_with_a_marker(traced, fake, restore_options):
    spanline.configure(max_content_bytes=1024)
    _ask(fake.client(), "word " * 2000)
    assert spanline.flush(30)
    (trace,) = traces_in(traced)
    inputs = trace.data.spans[0].inputs
    assert inputs["__spanline_truncated__"] is True
    assert inputs["original_bytes"] > 10_000
    assert len(inputs["preview"].encode()) <= 1024


def test_bad_options_are_refused_clearly():
    with pytest.raises(ValueError, match="sample_rate"):
        spanline.configure(sample_rate=2)
    with pytest.raises(TypeError, match="unknown spanline option"):
        spanline.configure(colour="blue")
    with pytest.raises(ValueError, match="on_full"):
        spanline.configure(on_full="explode")


def test_environment_variables_set_options():
    env = {"SPANLINE_SAMPLE_RATE": "0.25", "SPANLINE_QUEUE_SIZE": "10", "SPANLINE_CAPTURE_CONTENT": "metadata",
           "SPANLINE_MAX_CONTENT_BYTES": "none", "SPANLINE_EXPERIMENT_ID": "42"}
    opts = options_module.build(options_module.Options(), options_module.from_env(env))
    assert (opts.sample_rate, opts.queue_size, opts.capture_content) == (0.25, 10, "metadata")
    assert opts.max_content_bytes is None and opts.experiment_id == "42"


def _writer_once(tracking_uri: str) -> None:
    """``spanline writer --once`` for a store: drains its log (asking the running writer, if any)."""
    done = subprocess.run([sys.executable, "-m", "spanline", "writer", "--once", "--tracking-uri", tracking_uri],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_process_exit_stores_everything_without_a_flush(tmp_path, own_cache):
    uri = f"sqlite:///{tmp_path}/exit.db"
    done = run_script(
        """
        import mlflow, spanline
        from spanline.testing import FakeAnthropicAPI
        mlflow.set_experiment("exit")
        spanline.autolog()
        client = FakeAnthropicAPI().client()
        for i in range(50):
            client.messages.create(model="claude-fake-1", max_tokens=8, messages=[{"role": "user", "content": str(i)}])
        # no flush: the exit handler puts all 50 in the log, the writer stores them
        """,
        uri,
    )
    assert done.returncode == 0, done.stderr
    _writer_once(uri)
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.get_experiment_by_name("exit").experiment_id
    assert len(mlflow.search_traces(locations=[experiment], return_type="list", max_results=100)) == 50


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork only")
def test_forked_child_traces_with_its_own_worker(tmp_path, own_cache):
    uri = f"sqlite:///{tmp_path}/fork.db"
    done = run_script(
        """
        import os, mlflow, spanline
        from spanline.testing import FakeAnthropicAPI
        mlflow.set_experiment("fork")
        spanline.autolog()
        client = FakeAnthropicAPI().client()
        client.messages.create(model="claude-fake-1", max_tokens=8, messages=[{"role": "user", "content": "parent"}])
        pid = os.fork()
        if pid == 0:
            client.messages.create(model="claude-fake-1", max_tokens=8, messages=[{"role": "user", "content": "child"}])
            ok = spanline.flush(60)
            os._exit(0 if ok else 3)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert spanline.flush(60)
        """,
        uri,
    )
    assert done.returncode == 0, done.stderr
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.get_experiment_by_name("fork").experiment_id
    previews = sorted(t.info.request_preview for t in mlflow.search_traces(locations=[experiment], return_type="list"))
    assert previews == ["child", "parent"]


def test_silent_autolog_logs_nothing(experiment, fake, caplog, monkeypatch):
    from spanline.patches import call

    monkeypatch.setattr(call, "_warned_mlflow", False)  # the warning is once per process
    mlflow.anthropic.autolog()
    spanline.autolog(silent=True)
    try:
        deferred = spanline.stats().deferred_to_mlflow
        _ask(fake.client())
        assert not [r for r in caplog.records if r.name == "spanline"]
        assert spanline.stats().deferred_to_mlflow - deferred == 1, "the warning had a reason to be logged"
    finally:
        mlflow.anthropic.autolog(disable=True)
        spanline.autolog(disable=True)
        spanline.autolog(silent=False, disable=True)


def test_disable_gives_mlflow_back_its_context_functions():
    """autolog() hooks MLflow's runtime context (get_current / attach / detach); disable puts MLflow's own back."""
    from mlflow.environment_variables import MLFLOW_USE_DEFAULT_TRACER_PROVIDER
    from mlflow.tracing.provider import mlflow_runtime_context
    from opentelemetry import context as otel_context

    runtime = mlflow_runtime_context if MLFLOW_USE_DEFAULT_TRACER_PROVIDER.get() else otel_context._RUNTIME_CONTEXT
    spanline.autolog(disable=True)
    before = {name: getattr(runtime, name) for name in ("get_current", "attach", "detach")}
    spanline.autolog()
    try:
        assert runtime.get_current != before["get_current"], "the hook is in place while autolog is on"
    finally:
        spanline.autolog(disable=True)
    for name, function in before.items():
        assert getattr(runtime, name) == function, name
        assert name not in vars(runtime), f"{name}: MLflow's own method, not an instance attribute"
    assert not hasattr(runtime, "_spanline_original_get_current")


def test_a_bad_environment_value_names_the_variable_at_autolog_not_at_import():
    code = """
import spanline
print("imported")
try:
    spanline.autolog()
except ValueError as exc:
    print("error:", exc)
"""
    done = run_script(code, "sqlite:///:memory:", {"SPANLINE_SAMPLE_RATE": "abc"})
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "imported" in out
    assert "error: SPANLINE_SAMPLE_RATE='abc' is not valid: it takes a number within 0..1" in out


def test_an_unknown_environment_variable_is_warned_about_with_the_closest_name():
    code = """
import spanline
spanline.autolog()
spanline.autolog()
"""
    done = run_script(code, "sqlite:///:memory:", {"SPANLINE_SAMPLE_RAT": "0.5", "SPANLINE_WRITER_AUTOSTART": "0"})
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stderr.splitlines() if "SPANLINE_SAMPLE_RAT" in line]
    assert len(lines) == 1, done.stderr
    assert "did you mean SPANLINE_SAMPLE_RATE?" in lines[0]
