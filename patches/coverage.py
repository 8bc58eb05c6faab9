"""What spanline traces of the SDK's message resources, method by method: the one table of it.

``tests/test_coverage.py`` enumerates the public methods of ``messages``, ``messages.batches``,
``beta.messages``, ``beta.messages.batches`` (sync and async, the provider clients' own classes, and their
``with_raw_response`` / ``with_streaming_response`` wrappers) by introspection and fails on any method this
table does not classify, and on any "traced" method whose seam is not patched. The README shows
``markdown_table()``.
"""

from __future__ import annotations

from typing import NamedTuple

TRACED = "traced"
UNTRACED = "not traced"
VIA = "through its calls"  # sends nothing itself; the calls it makes are traced
ACCESSOR = "accessor"  # returns a resource or wrapper whose own methods are rows of this table


class Row(NamedTuple):
    status: str
    what: str
    # "module:Class.attribute" that autolog must have patched, when the method's own function is not the seam.
    seams: tuple[str, ...] = ()


_RUNNER = ("anthropic.lib.tools._beta_runner:BaseSyncToolRunner.__run__",
           "anthropic.lib.tools._beta_runner:BaseAsyncToolRunner.__run__",
           "anthropic.lib.tools._beta_runner:BaseSyncToolRunner._run_tool",
           "anthropic.lib.tools._beta_runner:BaseAsyncToolRunner._run_tool",
           "anthropic.lib.tools._beta_runner:BaseSyncToolRunner._run_toolset_member",
           "anthropic.lib.tools._beta_runner:BaseAsyncToolRunner._run_toolset_member")
_RESULTS = ("anthropic._decoders.jsonl:JSONLDecoder.__decode__",
            "anthropic._decoders.jsonl:AsyncJSONLDecoder.__decode__")
_STREAMED_BODY = ("anthropic._response:ResponseContextManager.__exit__",
                  "anthropic._response:AsyncResponseContextManager.__aexit__")

_MESSAGES = {
    "create": Row(TRACED, "`CHAT_MODEL` span in MLflow's shape; `stream=True`: the same span, from the call until "
                          "the stream ends, with the assembled message (see Streamed calls)"),
    "parse": Row(TRACED, "`CHAT_MODEL` span; the structured reply is the output"),
    "count_tokens": Row(TRACED, "`LLM` span: the request, and the count as output (no token usage)"),
    "stream": Row(TRACED, "`CHAT_MODEL` span named `Messages.stream`, from entering the helper until the stream "
                          "ends, with the assembled message (see Streamed calls)"),
    "batches": Row(ACCESSOR, "the Message Batches resource (rows below)"),
    "with_raw_response": Row(ACCESSOR, "the raw-response wrapper (rows below)"),
    "with_streaming_response": Row(ACCESSOR, "the streamed-body wrapper (rows below)"),
}
_BATCHES = {
    "create": Row(TRACED, "`TASK` span with the batch's requests; kept to link its results"),
    "results": Row(TRACED, "one trace: a `TASK` span, and a `CHAT_MODEL` span per result linked to its request "
                           "by `custom_id`, with usage, model and cost; recorded once the caller has read them",
                   _RESULTS),
    "cancel": Row(TRACED, "`TASK` span: the batch id and the batch as returned"),
    "delete": Row(TRACED, "`TASK` span: the batch id and the deletion"),
    "retrieve": Row(UNTRACED, "polled while a batch runs: a trace per poll would bury the batch's own; "
                              "`results()` calls it itself"),
    "list": Row(UNTRACED, "a listing, no model call; the paginator fetches pages lazily (the async one when "
                          "awaited or iterated), outside the call"),
    "with_raw_response": Row(ACCESSOR, "the raw-response wrapper (rows below)"),
    "with_streaming_response": Row(ACCESSOR, "the streamed-body wrapper (rows below)"),
}
_BETA = {
    **_MESSAGES,
    "create": Row(TRACED, "`CHAT_MODEL` span, named `beta.Messages.create` (`stream=True` too)"),
    "tool_runner": Row(TRACED, "the run as an `AGENT` span (`stream=True` too); each turn a `CHAT_MODEL` span, "
                               "each tool it runs (function, toolset member, built-in, MCP) a `TOOL` span under "
                               "it", _RUNNER),
    "thread": Row(VIA, "a message thread sends nothing itself; each turn is a traced `beta.messages.create`"),
}


# The methods the SDK's with_raw_response / with_streaming_response wrappers expose, per resource.
_WRAPPED = {
    "messages": ("create", "count_tokens"),
    "beta.messages": ("create", "parse", "count_tokens"),
    "messages.batches": ("create", "retrieve", "list", "delete", "cancel", "results"),
    "beta.messages.batches": ("create", "retrieve", "list", "delete", "cancel", "results"),
}


def _wrapped(group: str, rows: dict[str, Row], wrapper: str) -> dict[str, Row]:
    out = {}
    for name in _WRAPPED[group]:
        if name == "parse" and wrapper == "with_streaming_response":
            continue  # the SDK's streamed-body wrapper has no parse
        row = rows[name]
        if row.status == TRACED:
            seams = row.seams + (_STREAMED_BODY if wrapper == "with_streaming_response" else ())
            what = ("the parsed body and usage, not `<APIResponse [200 OK]>`" if wrapper == "with_raw_response"
                    else "recorded when the caller's `with` block ends, with the body it read "
                         "(`parse`/`read`/`json`/`text`; a body read with `iter_bytes` is not kept)")
            out[name] = Row(TRACED, what, seams)
        else:
            out[name] = row
    if not group.endswith("batches"):
        out["batches"] = Row(ACCESSOR, "the Message Batches resource's wrapper (rows below)")
    return out


def _table() -> dict[str, Row]:
    table: dict[str, Row] = {}
    for group, rows in (("messages", _MESSAGES), ("messages.batches", _BATCHES), ("beta.messages", _BETA),
                        ("beta.messages.batches", _BATCHES)):
        for name, row in rows.items():
            table[f"{group}.{name}"] = row
        for wrapper in ("with_raw_response", "with_streaming_response"):
            for name, row in _wrapped(group, rows, wrapper).items():
                table[f"{group}.{wrapper}.{name}"] = row
    return table


COVERAGE: dict[str, Row] = _table()
"""Every public method of the SDK's message resources, keyed ``<resource>.<method>``: sync and async alike."""


def markdown_table() -> str:
    """The README's table, one row per method (wrapper rows folded into one per resource)."""
    lines = ["| method (sync and async) | status | what is recorded, or why not |", "| --- | --- | --- |"]
    for key, row in COVERAGE.items():
        if ".with_raw_response." in key or ".with_streaming_response." in key:
            continue
        lines.append(f"| `{key}` | {row.status} | {row.what} |")
    for wrapper in ("with_raw_response", "with_streaming_response"):
        sample = next(r for k, r in COVERAGE.items() if k.endswith(f"{wrapper}.create"))
        lines.append(f"| `*.{wrapper}.<method>` | as the method | {sample.what} |")
    return "\n".join(lines) + "\n"
