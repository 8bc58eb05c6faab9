"""``spanline demo``: the seed's tool-calling agent, traced by spanline, then read back from MLflow.

Runs three agent questions concurrently (``asyncio.gather``) against the real Anthropic API when
``ANTHROPIC_API_KEY`` is set, else against spanline's in-process fake (no network needed), flushes, reads
the traces this run made back from the tracking store and prints each as a span tree, then prints the
``mlflow ui`` command that shows them.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

DEFAULT_CITIES: tuple[str, ...] = ("Tokyo", "Paris", "Sydney")
DEFAULT_EXPERIMENT = "spanline-demo"
MODEL = "claude-sonnet-4-6"  # a current model: the SDK warns about deprecated ones
FLUSH_TIMEOUT = 60.0
UI_PORT = 5000
# A root-span attribute named mlflow.traceTag.<key> becomes a trace tag (DESIGN.md 7): it marks the
# traces of one demo run, so reading them back never picks up another run's traces in the same experiment.
RUN_TAG = "spanline.demo_run"

TOOLS: list[dict[str, Any]] = [
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


def _say(*parts: Any) -> None:
    print(*parts, flush=True)


def resolve_tracking_uri(tracking_uri: str | None) -> str:
    """The argument, else ``MLFLOW_TRACKING_URI``, else ``sqlite:///<cwd>/mlflow.db`` (absolute)."""
    if tracking_uri:
        return tracking_uri
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return "sqlite:///" + os.path.abspath("mlflow.db")


def _make_client() -> tuple[Any, str]:
    if os.environ.get("ANTHROPIC_API_KEY"):
        import anthropic

        return anthropic.AsyncAnthropic(), f"the real Anthropic API (ANTHROPIC_API_KEY is set), model {MODEL}"
    from spanline.testing import FakeAnthropicAPI

    return (
        FakeAnthropicAPI().async_client(),
        "spanline's built-in fake Anthropic API (in-process, offline; "
        "set ANTHROPIC_API_KEY for the real one)",
    )


def make_tool_agent(
    client: Any, tool_decorator: Callable, agent_decorator: Callable, model: str = MODEL
) -> Callable[[str], Awaitable[str]]:
    """The tool-calling agent of MLflow's Anthropic tracing page, with the decorators passed in.

    ``client`` is an ``AsyncAnthropic``; the decorators are ``spanline.trace(...)`` or ``mlflow.trace(...)``
    (or anything of their shape). The demo and ``spanline bench`` both run this one agent.
    """

    @tool_decorator
    async def get_weather(city: str) -> str:
        if city == "Tokyo":
            return "sunny"
        elif city == "Paris":
            return "rainy"
        return "unknown"

    tool_functions = {"get_weather": get_weather}

    @agent_decorator
    async def run_tool_agent(question: str) -> str:
        messages: list[dict[str, Any]] = [{"role": "user", "content": question}]

        # Invoke the model with the given question and available tools
        ai_msg = await client.messages.create(
            model=model,
            messages=messages,
            tools=TOOLS,
            max_tokens=2048,
        )
        messages.append({"role": "assistant", "content": ai_msg.content})

        # If the model requests tool call(s), invoke the function with the specified arguments
        tool_calls = [c for c in ai_msg.content if c.type == "tool_use"]
        for tool_call in tool_calls:
            if tool_func := tool_functions.get(tool_call.name):
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

        # Send the tool results to the model and get a new response
        response = await client.messages.create(
            model=model,
            messages=messages,
            max_tokens=2048,
        )

        return response.content[-1].text

    return run_tool_agent


async def _run_agents(client: Any, cities: Sequence[str], run_id: str) -> list[str]:
    """The seed's agent, decorated with spanline instead of mlflow, one question per city."""
    import spanline

    run_tool_agent = make_tool_agent(
        client,
        spanline.trace(span_type="TOOL"),
        spanline.trace(span_type="AGENT", attributes={f"mlflow.traceTag.{RUN_TAG}": run_id}),
    )
    questions = [f"What's the weather like in {city} today?" for city in cities]
    try:
        return list(await asyncio.gather(*(run_tool_agent(q) for q in questions)))
    finally:
        await client.close()


# --- reading the traces back -----------------------------------------------------------------------


def _tokens(span: Any) -> tuple[int, int] | None:
    usage = span.get_attribute("mlflow.chat.tokenUsage")
    if isinstance(usage, str):
        try:
            usage = json.loads(usage)
        except ValueError:
            return None
    if not isinstance(usage, dict):
        return None
    return int(usage.get("input_tokens") or 0), int(usage.get("output_tokens") or 0)


def _span_type(span: Any) -> str:
    return str(span.span_type or "UNKNOWN")


def _duration_ms(span: Any) -> float:
    if span.start_time_ns is None or span.end_time_ns is None:
        return 0.0
    return (span.end_time_ns - span.start_time_ns) / 1e6


def _subtree_tokens(span: Any, children: dict[str | None, list[Any]]) -> tuple[int, int] | None:
    total: tuple[int, int] | None = None
    stack = [span]
    while stack:
        s = stack.pop()
        if _span_type(s) == "CHAT_MODEL" and (t := _tokens(s)) is not None:
            total = (t[0] + (total[0] if total else 0), t[1] + (total[1] if total else 0))
        stack.extend(children.get(s.span_id, ()))
    return total


def _label(span: Any, children: dict[str | None, list[Any]], is_root: bool) -> str:
    text = f"{span.name}  {_span_type(span)}  {_duration_ms(span):.1f} ms"
    if _span_type(span) == "CHAT_MODEL":
        if (t := _tokens(span)) is not None:
            text += f"  {t[0]} in / {t[1]} out"
    elif is_root and (t := _subtree_tokens(span, children)) is not None:
        text += f"  tokens {t[0]} in / {t[1]} out"
    return text


def _can_draw_boxes() -> bool:
    try:
        "├└│".encode(sys.stdout.encoding or "ascii")
    except (LookupError, UnicodeEncodeError):
        return False
    return True


def format_tree(spans: Iterable[Any], ascii_only: bool = False) -> list[str]:
    """One line per span, indented by depth, children ordered by start time."""
    branch, last_branch, pipe = ("|- ", "`- ", "|  ") if ascii_only else ("├─ ", "└─ ", "│  ")
    spans = list(spans)
    ids = {s.span_id for s in spans}
    children: dict[str | None, list[Any]] = {}
    roots: list[Any] = []
    for s in spans:
        if s.parent_id is None or s.parent_id not in ids:
            roots.append(s)
        else:
            children.setdefault(s.parent_id, []).append(s)
    for kids in children.values():
        kids.sort(key=lambda s: s.start_time_ns or 0)
    roots.sort(key=lambda s: s.start_time_ns or 0)

    lines: list[str] = []

    def walk(span: Any, prefix: str, connector: str, child_prefix: str) -> None:
        lines.append(prefix + connector + _label(span, children, is_root=not connector))
        kids = children.get(span.span_id, [])
        for i, kid in enumerate(kids):
            last = i == len(kids) - 1
            walk(kid, prefix + child_prefix, last_branch if last else branch, "   " if last else pipe)

    for root in roots:
        walk(root, "", "", "")
    return lines


def _find_traces(mlflow: Any, experiment_id: str, run_id: str, started_ms: int, expected: int) -> list[Any]:
    """This run's traces: tagged with its run id (and no older than the run, to keep the search small)."""
    filter_string = f"tags.`{RUN_TAG}` = '{run_id}' AND trace.timestamp_ms >= {started_ms}"
    deadline = time.monotonic() + 10.0
    while True:
        traces = mlflow.search_traces(
            locations=[experiment_id],
            filter_string=filter_string,
            max_results=max(expected * 2, 10),
            return_type="list",
        )
        # flush() returned True, so they are stored; the short retry only covers a slow server's reads.
        if len(traces) >= expected or time.monotonic() > deadline:
            return sorted(traces, key=lambda t: t.info.timestamp_ms)
        time.sleep(0.25)


# --- the demo --------------------------------------------------------------------------------------


def run(
    tracking_uri: str | None = None,
    experiment: str = DEFAULT_EXPERIMENT,
    cities: Sequence[str] = DEFAULT_CITIES,
) -> int:
    """Run the traced tool-calling agent for each city, then print the stored traces. Returns an exit code."""
    # Offline machines stall ~7 s on the first span write while MLflow tries to fetch a price catalog.
    os.environ.setdefault("MLFLOW_MODEL_CATALOG_URI", "")
    cities = [c.strip() for c in cities if c and c.strip()]
    if not cities:
        print("spanline demo: no cities given", file=sys.stderr)
        return 2

    import mlflow

    import spanline

    uri = resolve_tracking_uri(tracking_uri)
    mlflow.set_tracking_uri(uri)
    experiment_id = mlflow.set_experiment(experiment).experiment_id
    _say(f"MLflow tracking URI: {uri}")
    _say(f"MLflow experiment:   {experiment} (id {experiment_id})")

    client, backend = _make_client()
    _say(f"Backend:             {backend}")

    spanline.autolog()
    run_id = uuid.uuid4().hex
    started_ms = int(time.time() * 1000) - 1000  # a second of slack for clock granularity

    _say("")
    _say(f"Asking the tool-calling agent about {', '.join(cities)} (concurrently)...")
    t0 = time.perf_counter()
    try:
        answers = asyncio.run(_run_agents(client, cities, run_id))
    except Exception as exc:
        spanline.flush(timeout=FLUSH_TIMEOUT)  # keep what was traced of the failed calls
        print(f"spanline demo: the agent failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    elapsed = (time.perf_counter() - t0) * 1000
    for city, answer in zip(cities, answers, strict=True):
        _say(f"  {city}: {answer}")
    _say(f"({len(cities)} agents in {elapsed:.1f} ms)")

    _say("")
    _say(f"Flushing traces to MLflow (up to {FLUSH_TIMEOUT:.0f} s)...")
    if not spanline.flush(timeout=FLUSH_TIMEOUT):
        st = spanline.stats()
        print(
            f"spanline demo: flush did not finish within {FLUSH_TIMEOUT:.0f} s "
            f"(queue depth {st.queue_depth}, last error: {st.last_error})",
            file=sys.stderr,
        )
        return 1

    traces = _find_traces(mlflow, experiment_id, run_id, started_ms, expected=len(cities))
    _say(f"Read {len(traces)} trace(s) back from MLflow:")
    boxes = _can_draw_boxes()
    for tr in traces:
        _say("")
        _say(f"trace {tr.info.trace_id}")
        for line in format_tree(tr.data.spans, ascii_only=not boxes):
            _say("  " + line)

    st = spanline.stats()
    drops = ", ".join(f"{k} {v}" for k, v in sorted(st.dropped.items())) or "none"
    _say("")
    _say(
        f"spanline stats: {st.traces_stored} traces / {st.spans_stored} spans stored in {st.batches} "
        f"batch(es), {st.events_emitted} events emitted, dropped: {drops}, "
        f"internal errors: {st.internal_errors}"
    )

    _say("")
    _say("View them in the MLflow UI:")
    if uri.startswith(("http://", "https://")):
        _say(f"  {uri.rstrip('/')}/#/experiments/{experiment_id}/traces")
    else:
        _say(f"  {_mlflow_command()} ui --backend-store-uri {uri} --port {UI_PORT}")
        _say(f"  http://127.0.0.1:{UI_PORT}/#/experiments/{experiment_id}/traces")

    if len(traces) != len(cities):
        print(
            f"spanline demo: expected {len(cities)} traces in experiment {experiment_id} at {uri}, "
            f"found {len(traces)} (stats: {st})",
            file=sys.stderr,
        )
        return 1
    return 0


def _mlflow_command() -> str:
    """``mlflow`` as this interpreter's environment has it, written so it runs as printed from the current
    directory: the venv's script (``.venv/bin/mlflow``) when the venv is not activated, else plain ``mlflow``."""
    script = os.path.join(os.path.dirname(sys.executable), "mlflow")
    if not os.path.exists(script):
        return f"{sys.executable} -m mlflow"
    on_path = shutil.which("mlflow")
    if on_path and os.path.realpath(on_path) == os.path.realpath(script):
        return "mlflow"
    relative = os.path.relpath(script)
    return relative if not relative.startswith("..") else script
