"""MLflow's ``sanitize_attributes`` with the values it cannot change passed over, for the verified versions.

In: nothing at import; ``install()`` is called by the bulk store path's gate once a store passed it (a verified
(MLflow version, alembic head) pair, pipeline/bulkstore.py). Out: MLflow's
``mlflow.tracing.otel.translation.sanitize_attributes`` replaced by ``screened``, for this process.

Why: MLflow translates every span it stores (``translate_span_when_storing``, on both store paths), and the
first step, ``sanitize_attributes``, runs ``json.loads`` over every attribute value to find values encoded
twice (a JSON string whose content is JSON again), parsing each span's full inputs and outputs to learn they
are an object. It was a tenth of the writer's CPU per trace. A value can only be replaced when its first
``json.loads`` gives a ``str``, and JSON text decodes to a string only when its first character past JSON's
whitespace is ``"``. So an object or array (a span's inputs and outputs) is kept without parsing it, a string's content
is parsed only when it can be JSON of a string, an object or an array, and anything else (numbers, which
Python may refuse to parse, literals, bytes) goes through MLflow's own function; the key order is MLflow's.
``tests/test_sanitize.py`` checks that the two agree on arbitrary input. Where MLflow's function raises on an
object or array (a number of over 4,300 digits inside, nesting past the recursion limit), the translation of
that span fails and ``log_spans`` with it; the screened one keeps the value, as MLflow keeps any value it
cannot parse.

Only for the MLflow versions in ``bulkstore.VERIFIED``: the shortcut restates what this version's function
does, and another version's may do more. MLflow 3.18 dropped the step from the translation of stored spans
(its successor, ``strip_otlp_double_encoding``, runs on spans received over OTLP only): there ``install()``
does nothing, as there is nothing left to screen.
"""

from __future__ import annotations

import json
import re
from typing import Any

try:
    import mlflow.tracing.otel.translation as _translation
except ImportError:  # another MLflow: nothing to replace (and no verified pair to replace it for)
    _translation = None

_WHITESPACE = " \t\n\r"  # JSON's whitespace (json.decoder.WHITESPACE_STR), which json.loads skips
_original = getattr(_translation, "sanitize_attributes", None)
# JSON text of a string with no escape in it: its content is what is between the quotes
_PLAIN_STRING = re.compile(r'"[^"\\\x00-\x1f]*"')


def screened(attributes: dict[str, Any]) -> dict[str, Any]:
    """``sanitize_attributes(attributes)``: the same result, parsing only what may decode to a string."""
    out: dict[str, Any] = {}
    for key, value in attributes.items():
        first = value.lstrip(_WHITESPACE)[:1] if type(value) is str else None
        if first in ("{", "["):  # an object or array: never a string, kept without parsing it
            out[key] = value
        elif first == '"':
            out[key] = _unwrapped(value)
        else:  # a number (which may be too long to parse), a literal, not JSON, not a str: MLflow's own
            out[key] = _original({key: value})[key]
    return out


def _unwrapped(value: str) -> str:
    """One value that is JSON text of a string (it starts with ``"``): the string when it is itself JSON of a
    string, an object or an array, else ``value``; MLflow 3.17.2's rule, its exceptions caught where it
    catches them."""
    if _PLAIN_STRING.fullmatch(value):  # most are: a name, a type, an id, with nothing to unescape
        result = value[1:-1]
    else:
        try:
            result = json.loads(value)  # a str: JSON text starting with '"' decodes to nothing else
        except json.JSONDecodeError:
            return value
    first = result.lstrip(_WHITESPACE)[:1]
    if first and first in "-0123456789":  # a number inside: MLflow's own (it fails past 4,300 digits)
        return _original({"": value})[""]
    if first not in ('"', "{", "["):  # nothing else decodes to a str, dict or list: MLflow keeps the value
        return value
    try:
        inner = json.loads(result)
    except json.JSONDecodeError:
        return value
    return result if isinstance(inner, (str, dict, list)) else value


def install() -> None:
    """Make MLflow's translation use ``screened`` in this process (idempotent)."""
    if _original is not None:
        _translation.sanitize_attributes = screened


def uninstall() -> None:
    if _original is not None:
        _translation.sanitize_attributes = _original
