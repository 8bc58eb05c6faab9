"""Reading back what MLflow stored, for assertions."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
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


def run_script(code: str, tracking_uri: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter against ``tracking_uri`` (offline), with ``env`` added; it is
    killed if it outlives the timeout, so no process outlives the test."""
    full_env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "MLFLOW_MODEL_CATALOG_URI": "", **(env or {})}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=full_env, capture_output=True,
                          text=True, timeout=120)


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
