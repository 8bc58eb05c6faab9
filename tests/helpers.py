"""What the tests share besides fixtures (those are in conftest.py): reading back what MLflow stored, running a
script in a fresh interpreter (``run_script``), the agent app the writer's tests run (``APP``, ``app_env``), a
writer process (``start_writer``, ``writer_once``) and the checks of what it stored (``stored_traces``,
``assert_each_once``). Imported by test modules, in the pytest process."""

from __future__ import annotations

import base64
import collections
import contextlib
import json
import os
import struct
import subprocess
import sys
import textwrap
import time
import zlib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse
from urllib.request import url2pathname

import mlflow


def traces_in(experiment_id: str) -> list:
    """Every trace stored in an experiment, oldest first, with its spans (MLflow's async export flushed).

    Oldest by the earliest span's start in ns: MLflow orders by milliseconds, and two traces begun within
    one millisecond (a decorated function, then a call) came back in either order."""
    mlflow.flush_trace_async_logging()
    found = mlflow.search_traces(
        experiment_ids=[experiment_id], return_type="list", order_by=["timestamp_ms ASC"]
    )
    traces = [mlflow.get_trace(t.info.trace_id) for t in found]
    return sorted(traces, key=lambda t: min((s.start_time_ns for s in t.data.spans), default=0))


def root_of(trace) -> Any:
    roots = [s for s in trace.data.spans if s.parent_id is None]
    assert len(roots) == 1, [s.name for s in roots]
    return roots[0]


def children_of(trace, span) -> list:
    return sorted((s for s in trace.data.spans if s.parent_id == span.span_id), key=lambda s: s.start_time_ns)


def attr_json(span, key: str) -> Any:
    """A span attribute as MLflow stored it (JSON text), parsed."""
    raw = span.to_dict()["attributes"].get(key)
    return None if raw is None else json.loads(raw)


def token_usage(trace) -> dict | None:
    raw = trace.info.trace_metadata.get("mlflow.trace.tokenUsage")
    return None if raw is None else json.loads(raw)


def run_script(code: str, tracking_uri: str | None = None, env: dict[str, str] | None = None, *,
               timeout: float = 120, check: bool = False) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter (offline), against ``tracking_uri`` when given, with ``env`` added; it
    is killed if it outlives ``timeout``, so no process outlives the test. ``check``: assert it exited 0."""
    uri = {"MLFLOW_TRACKING_URI": tracking_uri} if tracking_uri is not None else {}
    full_env = {**os.environ, **uri, "MLFLOW_MODEL_CATALOG_URI": "", **(env or {})}
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=full_env, capture_output=True,
                          text=True, timeout=timeout)
    if check:
        assert done.returncode == 0, done.stderr[-4000:]
    return done


# --- what reaches the disk --------------------------------------------------------------------------


def store_files(tracking_uri: str, experiment_ids: Iterable[str] = ()) -> list[Path]:
    """Every file a sqlite tracking store may write: the database, its ``-wal``, ``-shm`` and ``-journal``
    siblings (whichever exist), and the artifact directories of ``experiment_ids`` (local ones)."""
    db = Path(tracking_uri.removeprefix("sqlite:///"))
    paths = [db] + [p for p in (Path(f"{db}{suffix}") for suffix in ("-wal", "-shm", "-journal")) if p.exists()]
    mlflow.set_tracking_uri(tracking_uri)
    for experiment_id in experiment_ids:
        location = mlflow.get_experiment(experiment_id).artifact_location
        parsed = urlparse(location)
        if parsed.scheme in ("", "file"):
            path = Path(url2pathname(parsed.path) if parsed.scheme else location)
            if path.exists():
                paths.append(path)
    return paths


def scan_for(paths: Iterable[Path | str], needles: Iterable[bytes]) -> dict[bytes, list[str]]:
    """Which files hold which needles: each needle maps to the files (directories are walked) whose raw
    bytes contain it; an empty list means found nowhere. A scan for secrets needs a positive control (a
    needle known to be stored), so that it notices when storage moves out of sight of the scan."""
    needles = list(needles)
    files: list[Path] = []
    for path in map(Path, paths):
        files.extend(sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path])
    found: dict[bytes, list[str]] = {needle: [] for needle in needles}
    for file in files:
        data = file.read_bytes()
        for needle in needles:
            if needle in data:
                found[needle].append(str(file))
    return found


# --- the seed's tool-calling agent (MLflow's Anthropic tracing page), shared by the tests ----------------

SEED_MODEL = "claude-3-5-sonnet-20241022"
TOOLS = [
    {
        "name": "get_weather",
        "description": "Returns the weather condition of a given city.",
        "input_schema": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    }
]
CITIES = ["Tokyo", "Paris", "Sydney"]
WEATHER = {"Tokyo": "sunny", "Paris": "rainy", "Sydney": "unknown"}


def make_agent(client: Any, decorate_tool: Callable, decorate_agent: Callable) -> Callable:
    """The seed's tool-calling agent, verbatim in shape, with the decorators passed in."""

    @decorate_tool
    async def get_weather(city: str) -> str:
        if city == "Tokyo":
            return "sunny"
        elif city == "Paris":
            return "rainy"
        return "unknown"

    _tool_functions = {"get_weather": get_weather}

    @decorate_agent
    async def run_tool_agent(question: str):
        messages = [{"role": "user", "content": question}]

        ai_msg = await client.messages.create(
            model=SEED_MODEL,
            messages=messages,
            tools=TOOLS,
            max_tokens=2048,
        )
        messages.append({"role": "assistant", "content": ai_msg.content})

        tool_calls = [c for c in ai_msg.content if c.type == "tool_use"]
        for tool_call in tool_calls:
            if tool_func := _tool_functions.get(tool_call.name):
                tool_result = await tool_func(**tool_call.input)
            else:
                raise RuntimeError("An invalid tool is returned from the assistant!")

            messages.append(
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "tool_result",
                            "tool_use_id": tool_call.id,
                            "content": tool_result,
                        }
                    ],
                }
            )

        response = await client.messages.create(
            model=SEED_MODEL,
            messages=messages,
            max_tokens=2048,
        )

        return response.content[-1].text

    return run_tool_agent


# --- the SDK as it was: every attribute of every class and module, by identity ----------------------------


def sdk_snapshot() -> dict[tuple[str, str], object]:
    """Every entry of the ``__dict__`` of each loaded ``anthropic`` module and of each class defined there,
    keyed by (module or class qualname, attribute): read from the SDK itself, not from spanline's record of
    what it patched, so a patch left behind (or one spanline forgot it made) shows."""
    import sys

    out: dict[tuple[str, str], object] = {}
    for name, module in list(sys.modules.items()):
        if module is None or not (name == "anthropic" or name.startswith("anthropic.")):
            continue
        for attr, value in list(vars(module).items()):
            out[(name, attr)] = value
            if isinstance(value, type) and value.__module__ == name:
                for cattr, cvalue in list(vars(value).items()):
                    out[(f"{name}.{value.__qualname__}", cattr)] = cvalue
    return out


def sdk_changes(before: dict[tuple[str, str], object]) -> list[tuple[str, str]]:
    """The entries of ``before`` that are no longer the same object."""
    now = sdk_snapshot()
    return sorted(key for key, value in before.items() if key in now and now[key] is not value)


# --- an app, a writer and what they stored (the writer process's tests) --------------------------------------


# An app: N agent traces of two spans each (an AGENT span around one SDK call), then what ``END`` says.
APP = """
import os, sys, mlflow, spanline
from spanline.testing import FakeAnthropicAPI
mlflow.set_experiment(os.environ["TEST_EXPERIMENT"])
spanline.autolog()
client = FakeAnthropicAPI().client(api_key=os.environ.get("TEST_API_KEY", "sk-test"))
tag = os.environ.get("TEST_TAG", "q")

@spanline.trace(span_type="AGENT")
def agent(i):
    return client.messages.create(model="claude-fake-1", max_tokens=8,
                                  messages=[{"role": "user", "content": f"{tag}-{i}"}])

for i in range(int(os.environ["TEST_CALLS"])):
    agent(i)
"""


def app_env(tracking_uri: str, experiment: str, calls: int, **extra: str) -> dict[str, str]:
    return {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "MLFLOW_MODEL_CATALOG_URI": "",
            "TEST_EXPERIMENT": experiment, "TEST_CALLS": str(calls), **extra}


def start_writer(directory: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "spanline", "writer", "--log-dir", directory, *args],
                            env={**os.environ, "MLFLOW_MODEL_CATALOG_URI": ""}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True)


def writer_once(directory: str, timeout: float = 300) -> None:
    proc = start_writer(directory, "--once")
    try:
        _, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:  # timed out (or interrupted): never left behind, asking (and starting) writers
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err.decode()[-4000:]


def stored_traces(tracking_uri: str, experiment: str) -> list:
    """Every trace of an experiment, by name, with its spans."""
    mlflow.set_tracking_uri(tracking_uri)
    exp = mlflow.get_experiment_by_name(experiment)
    if exp is None:
        return []
    return mlflow.search_traces(locations=[exp.experiment_id], return_type="list", max_results=50_000,
                                include_spans=True)


def trace_key(trace) -> str:
    """Which call made a trace: its root's inputs (the agent's ``i``), and its tag."""
    root = root_of(trace)
    return f"{root.name}:{json.dumps(root.inputs, sort_keys=True)}"


def assert_each_once(traces: list, n: int, spans_per_trace: int = 2) -> None:
    keys = collections.Counter(trace_key(t) for t in traces)
    dupes = {k: c for k, c in keys.items() if c > 1}
    assert not dupes, f"stored more than once: {list(dupes.items())[:5]}"
    expected = {f"agent:{json.dumps({'i': i})}" for i in range(n)}
    assert set(keys) == expected, f"{len(keys)} stored of {n}; missing e.g. {sorted(expected - set(keys))[:5]}"
    bad = [t.info.trace_id for t in traces if len(t.data.spans) != spans_per_trace]
    assert not bad, f"traces without exactly {spans_per_trace} spans: {bad[:5]}"


def assert_stored_with_the_crash(tracking_uri: str, experiment: str, n: int) -> None:
    """What an app SIGKILLed inside its ``crashing-agent`` span (after ``n`` agent runs) must leave in the store:
    every run once, and the open span stored as unfinished with the call it had made."""
    traces = stored_traces(tracking_uri, experiment)
    crashed = [t for t in traces if root_of(t).name == "crashing-agent"]
    assert_each_once([t for t in traces if t not in crashed], n)
    (last,) = crashed
    root = root_of(last)
    assert root.attributes.get("spanline.unfinished") is True
    assert [c.name for c in children_of(last, root)] == ["Messages.create"]
    # The trace list says so without opening it; the runs that ended say nothing.
    assert last.info.tags.get("spanline.cut_short") == "unfinished"
    assert not [t for t in traces if t is not last and "spanline.cut_short" in t.info.tags]


def reap(proc: subprocess.Popen) -> None:
    """Never leave a test's app behind: kill it if it still runs, wait for it, close its pipes."""
    if proc.poll() is None:
        proc.kill()
    if proc.stdin is not None and proc.stdin.closed:
        proc.stdin = None  # closed by the test already: communicate() would flush it and raise
    proc.communicate(timeout=10)


def wait_in_log(directory: str, needles: list[bytes], app: subprocess.Popen, timeout: float = 120) -> None:
    """Wait until every needle is in the bytes of the log's segments (what a SIGKILL cannot take back)."""
    deadline = time.monotonic() + timeout
    while True:
        data = b""
        with contextlib.suppress(FileNotFoundError):
            for name in os.listdir(directory):
                if name.endswith(".seg"):
                    with contextlib.suppress(FileNotFoundError), open(os.path.join(directory, name), "rb") as f:
                        data += f.read()
        if all(needle in data for needle in needles):
            return
        assert app.poll() is None, f"the app exited: {app.stderr.read()[-3000:]}"
        assert time.monotonic() < deadline, f"never in the log: {[n for n in needles if n not in data]}"
        time.sleep(0.02)


# --- content for tests of images ----------------------------------------------------------------------


def png(width: int = 48, height: int = 32, rgb: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    """A real PNG (one colour), so a browser can draw it."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    rows = b"".join(b"\x00" + bytes(rgb) * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def image_block(data: bytes, media_type: str = "image/png") -> dict:
    return {"type": "image", "source": {"type": "base64", "media_type": media_type,
                                       "data": base64.b64encode(data).decode()}}
