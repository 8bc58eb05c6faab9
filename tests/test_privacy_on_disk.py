"""No secret reaches the disk: under ``redact`` and under metadata mode, a secret planted in a prompt, a completion,
a tool's input and a streamed reply of several hundred network chunks (more than the recorder's 64-chunk batch)
is found in no byte of the log directory (every segment, checkpoint, status and log file, read while the app
lives with everything stored, and after it exited) nor of the store (the sqlite database, its siblings and the
experiment's artifacts). With the policy off, the same scan finds every secret in both: the scan looks where the
content goes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import mlflow
import pytest
from helpers import app_env, reap, scan_for, store_files, stored_traces
from logwriters import log_dir_of, stop_writers_under

# The app: an agent whose first call gets a tool_use back (its input is the question's last capitalized word),
# runs the tool, answers, then streams a long reply. The fake's text reply quotes the question's first 40
# characters, so the completion's secret is there and the prompt's is past it.
APP = """
import json, os, sys, mlflow, spanline
from spanline.testing import FakeAnthropicAPI
mlflow.set_experiment(os.environ["TEST_EXPERIMENT"])
S = json.loads(os.environ["TEST_SECRETS"])

def redact(value):
    text = json.dumps(value)
    for secret in S.values():
        text = text.replace(secret, "[redacted]")
    return json.loads(text)

mode = os.environ["TEST_MODE"]
spanline.autolog(**{"off": {}, "redact": {"redact": redact}, "metadata": {"capture_content": "metadata"}}[mode])
client = FakeAnthropicAPI().client()
TOOLS = [{"name": "lookup", "description": "Looks a key up.",
          "input_schema": {"type": "object", "properties": {"key": {"type": "string"}}, "required": ["key"]}}]

@spanline.trace(span_type="TOOL")
def lookup(key):
    return {"value": "found " + key}

@spanline.trace(span_type="AGENT")
def agent():
    question = f"{S['completion']} is mine; about {S['prompt']}, ask {S['tool']}"
    messages = [{"role": "user", "content": question}]
    first = client.messages.create(model="claude-fake-1", max_tokens=256, messages=messages, tools=TOOLS)
    (call,) = [b for b in first.content if b.type == "tool_use"]
    assert call.input == {"key": S["tool"]}, call.input
    messages += [{"role": "assistant", "content": first.content},
                 {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id,
                                               "content": json.dumps(lookup(call.input["key"]))}]}]
    client.messages.create(model="claude-fake-1", max_tokens=256, messages=messages, tools=TOOLS)
    # The fake's answer to a tool result quotes it whole, three words per event: ~400 network chunks, the secret
    # in the first (a batch of 64 goes to the worker long before the stream ends).
    long_result = f"{S['stream']} " + "filler words here " * 400
    events = 0
    for _ in client.messages.create(model="claude-fake-1", max_tokens=4096, stream=True, messages=[
            messages[0], messages[1],
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": long_result}]}]):
        events += 1
    return events

events = agent()
assert spanline.flush(120)
print(events, flush=True)
sys.stdin.readline()  # the test scans the log while this producer lives: its segments and checkpoints are there
"""


def _secrets() -> dict[str, str]:
    token = uuid.uuid4().hex[:10]
    # Lowercase but the tool's (the fake picks the last capitalized word as the tool's input); plain ASCII,
    # so JSON never escapes them and a byte scan finds them wherever they are stored.
    return {"prompt": f"promptsecret{token}", "completion": f"complsecret{token}",
            "tool": f"Toolsecret{token}", "stream": f"streamsecret{token}"}


def _scan(paths, secrets: dict[str, str]) -> dict[str, list[str]]:
    found = scan_for(paths, [s.encode() for s in secrets.values()])
    return {name: found[secret.encode()] for name, secret in secrets.items()}


@pytest.mark.parametrize("mode", ["off", "redact", "metadata"])
def test_no_secret_in_any_byte_of_the_log_or_the_store(tmp_path, own_cache, mode):
    uri = f"sqlite:///{tmp_path}/store.db"
    directory = log_dir_of(uri)
    secrets = _secrets()
    app = subprocess.Popen([sys.executable, "-c", APP], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True,
                           env=app_env(uri, f"privacy-{mode}", 0, TEST_MODE=mode, TEST_SECRETS=json.dumps(secrets)))
    try:
        line = app.stdout.readline()
        assert line.strip().isdigit(), app.stderr.read()[-3000:] if app.poll() is not None else line
        assert int(line) > 300, "the stream is several hundred events"
        # Stored (flush returned) and the producer alive: its segment, the writer's checkpoint, status and log.
        before = sorted(os.listdir(directory))
        assert {f.rsplit(".", 1)[-1] for f in before} >= {"seg", "ckpt", "json", "log"}, before
        in_log = _scan([directory], secrets)
        app.stdin.close()
        assert app.wait(60) == 0, app.stderr.read()[-3000:]
    finally:
        reap(app)
    stop_writers_under(own_cache)
    after = sorted(os.listdir(directory))
    in_log_after = _scan([directory], secrets)
    traces = stored_traces(uri, f"privacy-{mode}")
    (trace,) = traces
    spans = sorted(trace.data.spans, key=lambda s: s.start_time_ns)
    assert [s.name for s in spans] == ["agent", "Messages.create", "lookup", "Messages.create", "Messages.create"]
    stream_span = spans[-1]
    experiment = mlflow.get_experiment_by_name(f"privacy-{mode}").experiment_id
    in_store = _scan(store_files(uri, [experiment]), secrets)
    stored_text = json.dumps([s.to_dict() for t in traces for s in t.data.spans])

    if mode == "off":  # the positive control: where the content goes, the scan finds it
        assert all(in_log.values()), (before, in_log)
        assert all(in_store.values()), in_store
        assert all(secret in stored_text for secret in secrets.values())
        assert int(stream_span.attributes["spanline.stream.events"]) > 300
        return
    leaks = {name: in_log[name] + in_log_after[name] + in_store[name] for name in secrets}
    leaks = {name: files for name, files in leaks.items() if files}
    assert not leaks, f"secrets on disk under {mode}: {leaks} (log while the app lived: {before}, after: {after})"
    assert not [s for s in secrets.values() if s in stored_text]
    if mode == "redact":  # content is stored, redacted: the scan is not passing because nothing was stored
        assert "[redacted]" in json.dumps(stream_span.outputs) and "[redacted]" in json.dumps(stream_span.inputs)
        tool = next(s for s in trace.data.spans if s.name == "lookup")
        assert tool.inputs == {"key": "[redacted]"} and tool.outputs == {"value": "found [redacted]"}
    else:
        assert set(stream_span.inputs) <= {"model", "max_tokens", "stream"}, stream_span.inputs
        assert stream_span.outputs["usage"]["output_tokens"] > 0
