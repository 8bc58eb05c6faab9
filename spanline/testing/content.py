"""The canned "model": what the fake answers, as a pure function of the request body.

In: a request body (the JSON of ``/v1/messages``, already validated by :mod:`spanline.testing.routes`).
Out: the complete Message JSON (:func:`build_message`), the token count (:func:`input_tokens`) and the streaming
features the last user turn asks for (:func:`stream_features`). No I/O, no clock; ids come from the caller's
``next_id``, so the same conversation always gets the same reply. Runs on whatever thread answers the request.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from typing import Any

__all__ = ["build_message", "input_tokens", "stream_features"]

_WORD = re.compile(r"\S+")
_EDGE_PUNCTUATION = re.compile(r"^[\W_]+|[\W_]+$")
_TOOL_PREAMBLE = "I'll check that."


def _count_words(text: str) -> int:
    return len(_WORD.findall(text))


def _truncate_words(text: str, n: int) -> str:
    """First ``n`` words of ``text`` with the original spacing kept, so streamed chunks re-join exactly."""
    if n <= 0:
        return ""
    matches = list(_WORD.finditer(text))
    if len(matches) <= n:
        return text
    return text[: matches[n - 1].end()]


def _content_text(content: Any) -> str:
    """All the words a message ``content`` carries: text, tool results, tool inputs and thinking."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return ""
    parts: list[str] = []
    for block in content:
        if isinstance(block, str):
            parts.append(block)
            continue
        if not isinstance(block, dict):
            continue
        kind = block.get("type")
        if kind == "text" and isinstance(block.get("text"), str):
            parts.append(block["text"])
        elif kind == "tool_result":
            parts.append(_content_text(block.get("content")))
        elif kind == "tool_use":
            parts.append(json.dumps(block.get("input"), ensure_ascii=False))
        elif kind == "thinking" and isinstance(block.get("thinking"), str):
            parts.append(block["thinking"])
    return " ".join(part for part in parts if part)


def _plain_text(content: Any) -> str:
    """Only the user-visible text of a message (text blocks), as the reply logic quotes it."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return ""
    return " ".join(
        block["text"]
        for block in content
        if isinstance(block, dict) and block.get("type") == "text" and isinstance(block.get("text"), str)
    )


def input_tokens(body: dict[str, Any]) -> int:
    """A stable stand-in for tokenisation: whitespace-separated words of system + messages, at least 1."""
    words = _count_words(_content_text(body.get("system")))
    for message in body.get("messages") or []:
        if isinstance(message, dict):
            words += _count_words(_content_text(message.get("content")))
    return max(1, words)


def _key_word(question: str) -> str:
    """The last Capitalized word with edge punctuation stripped ("...in Tokyo today?" -> "Tokyo").

    Falls back to the last word, then to "", so every question yields a string argument.
    """
    words = [w for w in (_EDGE_PUNCTUATION.sub("", raw) for raw in question.split()) if w]
    capitalized = [w for w in words if w[0].isupper()]
    if capitalized:
        return capitalized[-1]
    return words[-1] if words else ""


def _schema_value(prop: Any, question: str) -> Any:
    if not isinstance(prop, dict):
        return _key_word(question)
    enum = prop.get("enum")
    if isinstance(enum, list) and enum:
        return enum[0]
    kind = prop.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind in ("integer", "number"):
        return 1
    if kind == "boolean":
        return True
    if kind == "array":
        return []
    if kind == "object":
        return {}
    if kind == "null":
        return None
    return _key_word(question)


# The member a toolset entry's call names, and its input: one per family, enough for a runner to run it.
_TOOLSET_MEMBERS: dict[str, tuple[str, Callable[[str], dict[str, Any]]]] = {
    "browser": ("navigate", lambda word: {"url": f"https://example.com/{word or 'home'}"}),
    "computer": ("screenshot", lambda word: {}),
}
_TOOLSET_TYPE = re.compile(r"(?P<family>[a-z]+)_toolset_\d+")


def _tool_input(tool: dict[str, Any], question: str) -> dict[str, Any]:
    """Arguments for ``tool`` from its JSON schema: required properties (or all, if none are required).
    The memory tool, which has no schema, views its root directory."""
    if tool.get("type") == "memory_20250818":
        return {"command": "view", "path": "/memories"}
    schema = tool.get("input_schema")
    if not isinstance(schema, dict):
        return {}
    props = schema.get("properties")
    props = props if isinstance(props, dict) else {}
    required = [name for name in schema.get("required") or [] if isinstance(name, str)]
    names = required or [name for name in props if isinstance(name, str)]
    return {name: _schema_value(props.get(name), question) for name in names}


def _pick_tool(tools: Any, tool_choice: Any) -> dict[str, Any] | None:
    if not isinstance(tools, list):
        return None
    named = [t for t in tools if isinstance(t, dict) and isinstance(t.get("name"), str)]
    choice = tool_choice.get("type") if isinstance(tool_choice, dict) else None
    if choice == "none":
        return None
    if not named:
        # A toolset entry has no name: the call names one of its members and carries its family.
        for entry in tools:
            match = _TOOLSET_TYPE.fullmatch(str(entry.get("type") if isinstance(entry, dict) else ""))
            if match is not None and match["family"] in _TOOLSET_MEMBERS:
                member, _ = _TOOLSET_MEMBERS[match["family"]]
                return {"name": member, "toolset_name": match["family"]}
        return None
    if choice == "tool":
        wanted = tool_choice.get("name")
        return next((t for t in named if t["name"] == wanted), named[0])
    return named[0]


def _tool_result_text(blocks: list[dict[str, Any]]) -> str:
    results = [_content_text(block.get("content")) for block in blocks]
    return "; ".join(r for r in results if r)


def _last_user_content(body: dict[str, Any]) -> Any:
    last_user = next((m for m in reversed(body["messages"]) if m.get("role") == "user"), None)
    return last_user.get("content") if last_user else ""


def _block_cost(block: dict[str, Any]) -> int:
    kind = block["type"]
    if kind == "text":
        return _count_words(block["text"])
    if kind == "thinking":
        return _count_words(block["thinking"])
    if "input" in block:
        return max(1, _count_words(json.dumps(block["input"], ensure_ascii=False)))
    return 1  # redacted thinking, a server tool's result: opaque to the word count


# Words in the last user turn that make the fake answer with a streaming feature (see FakeAnthropicAPI).
_FEATURE = re.compile(r"fake:(pings|redacted_thinking|citations|web_search|error)\b")


def _features(question: str) -> set[str]:
    return set(_FEATURE.findall(question))


def _digest(text: str, n: int = 24) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:n]


def _with_features(blocks: list[dict[str, Any]], question: str, features: set[str]) -> list[dict[str, Any]]:
    """The reply's blocks with what ``features`` asks for: citations on the text, a web search before it
    (``server_tool_use`` and its ``web_search_tool_result``), a ``redacted_thinking`` block first."""
    blocks = list(blocks)
    text_at = next((i for i, b in enumerate(blocks) if b["type"] == "text"), None)
    if "web_search" in features:
        tool_id = "srvtoolu_fake_" + _digest(question)
        url = f"https://example.com/search/{_digest(question, 8)}"
        search = [
            {"id": tool_id, "caller": None, "input": {"query": question}, "name": "web_search",
             "type": "server_tool_use"},
            {"caller": None, "content": [{"encrypted_content": "enc_" + _digest(url), "page_age": None,
                                          "title": "Search result", "type": "web_search_result", "url": url}],
             "tool_use_id": tool_id, "type": "web_search_tool_result"},
        ]
        if text_at is not None:
            text = blocks[text_at]
            cite = {"cited_text": text["text"], "encrypted_index": "idx_" + _digest(url), "title": "Search result",
                    "type": "web_search_result_location", "url": url}
            blocks[text_at] = {**text, "citations": [*(text.get("citations") or []), cite]}
        blocks[0:0] = search
        text_at = None if text_at is None else text_at + len(search)
    if "citations" in features and text_at is not None:
        text = blocks[text_at]
        cite = {"cited_text": text["text"], "document_index": 0, "document_title": None,
                "end_char_index": len(text["text"]), "file_id": None, "start_char_index": 0,
                "type": "char_location"}
        blocks[text_at] = {**text, "citations": [*(text.get("citations") or []), cite]}
    if "redacted_thinking" in features:
        blocks.insert(0, {"data": "redacted_" + _digest(question, 48), "type": "redacted_thinking"})
    return blocks

def _usage(input_tokens: int, output_tokens: int, thinking_tokens: int | None) -> dict[str, Any]:
    """Every field of the SDK's ``Usage`` model, null where the fake has no value."""
    return {
        "cache_creation": {"ephemeral_1h_input_tokens": 0, "ephemeral_5m_input_tokens": 0},
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "inference_geo": None,
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "output_tokens_details": None if thinking_tokens is None else {"thinking_tokens": thinking_tokens},
        "server_tool_use": None,
        "service_tier": "standard",
        "speed": None,
    }


def _schema_instance(schema: Any, question: str, depth: int = 0) -> Any:
    """A value that satisfies a (structured-output) JSON schema, from the same rules as tool inputs."""
    if not isinstance(schema, dict) or depth > 8:
        return _key_word(question)
    if schema.get("type") == "object" or "properties" in schema:
        props = schema.get("properties") if isinstance(schema.get("properties"), dict) else {}
        return {name: _schema_instance(prop, question, depth + 1) for name, prop in props.items()}
    if schema.get("type") == "array":
        return [_schema_instance(schema.get("items"), question, depth + 1)]
    for key in ("anyOf", "oneOf"):
        if isinstance(schema.get(key), list) and schema[key]:
            return _schema_instance(schema[key][0], question, depth + 1)
    return _schema_value(schema, question)


def build_message(body: dict[str, Any], next_id: Callable[[str], str]) -> dict[str, Any]:
    """The complete non-streaming Message JSON for a validated request ``body``; streaming replays the same
    object as events. ``next_id(prefix)`` numbers the message and tool-use ids."""
    content = _last_user_content(body)
    tool_results = [b for b in (content if isinstance(content, list) else []) if b.get("type") == "tool_result"]
    question = _plain_text(content)

    blocks: list[dict[str, Any]] = []
    stop_reason = "end_turn"
    tool = None if tool_results else _pick_tool(body.get("tools"), body.get("tool_choice"))
    if tool_results:
        result = _tool_result_text(tool_results)
        if result.strip():
            reply = f"The result is: {result}" + ("" if result.rstrip()[-1] in ".!?" else ".")
        else:
            reply = "The tool returned no result."
        thought = "I have the tool result, so I can answer the user."
        blocks.append({"citations": None, "text": reply, "type": "text"})
    elif tool is not None:
        thought = f"The user asked about {_key_word(question) or 'something'}; I should use {tool['name']}."
        blocks.append({"citations": None, "text": _TOOL_PREAMBLE, "type": "text"})
        blocks.append(
            {
                "id": next_id("toolu"),
                "caller": None,
                "input": (
                    _TOOLSET_MEMBERS[tool["toolset_name"]][1](_key_word(question))
                    if tool.get("toolset_name") else _tool_input(tool, question)
                ),
                "name": tool["name"],
                "type": "tool_use",
                "toolset_name": tool.get("toolset_name"),
            }
        )
        stop_reason = "tool_use"
    else:
        thought = "The user said something; I should reply politely."
        output_config = body.get("output_config")
        form = output_config.get("format") if isinstance(output_config, dict) else None
        if isinstance(form, dict) and form.get("type") == "json_schema":
            # Structured output: the text is JSON that satisfies the schema, as the SDK's parse() expects.
            text = json.dumps(_schema_instance(form.get("schema"), question), ensure_ascii=False)
        else:
            text = f"Hello! You said: {question[:40]}"
        blocks.append({"citations": None, "text": text, "type": "text"})

    features = _features(question)
    blocks = _with_features(blocks, question, features)
    thinking = body.get("thinking")
    if isinstance(thinking, dict) and thinking.get("type") in ("enabled", "adaptive"):
        signature = "fakesig_" + hashlib.sha256(thought.encode("utf-8")).hexdigest()
        blocks.insert(0, {"signature": signature, "thinking": thought, "type": "thinking"})

    stop_sequence: str | None = None
    sequences = [s for s in body.get("stop_sequences") or [] if isinstance(s, str) and s]
    for i, block in enumerate(blocks):
        if block["type"] != "text" or not sequences:
            continue
        hits = [(block["text"].find(s), s) for s in sequences if s in block["text"]]
        if hits:
            position, stop_sequence = min(hits)
            blocks[i] = {**block, "text": block["text"][:position]}
            del blocks[i + 1 :]
            stop_reason = "stop_sequence"
            break

    budget = body["max_tokens"]
    kept: list[dict[str, Any]] = []
    output_tokens = 0
    thinking_tokens: int | None = None
    for block in blocks:
        cost = _block_cost(block)
        if cost > budget:
            stop_reason, stop_sequence = "max_tokens", None
            if block["type"] not in ("text", "thinking") or budget == 0:
                break
            field = "text" if block["type"] == "text" else "thinking"
            block = {**block, field: _truncate_words(block[field], budget)}
            cost = budget
        kept.append(block)
        budget -= cost
        output_tokens += cost
        if block["type"] == "thinking":
            thinking_tokens = (thinking_tokens or 0) + cost
        if stop_reason == "max_tokens":
            break

    return {
        "id": next_id("msg"),
        "container": None,
        "content": kept,
        "diagnostics": None,
        "model": body["model"],
        "role": "assistant",
        "stop_details": None,
        "stop_reason": stop_reason,
        "stop_sequence": stop_sequence,
        "type": "message",
        "usage": {
            **_usage(input_tokens(body), max(1, output_tokens), thinking_tokens),
            "server_tool_use": (
                {"web_fetch_requests": 0, "web_search_requests": 1}
                if any(b["type"] == "server_tool_use" for b in kept) else None
            ),
        },
    }


def stream_features(body: dict[str, Any]) -> frozenset[str]:
    """The streaming features (``fake:pings`` ...) the last user turn's text asks for."""
    return frozenset(_features(_plain_text(_last_user_content(body))))
