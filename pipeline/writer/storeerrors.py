"""What a failed store write really means, in words an operator can act on.

In: the tracking URI a batch went to and what the write raised. Out: one line naming the cause and where:
"cannot reach http://127.0.0.1:1: connection refused", "permission denied on /srv/mlflow.db", else the
innermost exception of the chain. MLflow hides some causes: its REST store answers an unreachable server with
``NotImplementedError: log_spans is not supported: could not identify MLflow server version`` (the version
probe's own error is only logged at debug level), so for a server the writer asks it directly, once per
failure, with a short timeout. Runs in the writer process's loop thread (store.py).
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request

_PROBE_TIMEOUT = 2.0


def describe(tracking_uri: str, exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    cause = _innermost(exc)
    if cause is not exc:
        text = f"{text} (caused by {type(cause).__name__}: {cause})"
    if tracking_uri.startswith(("http://", "https://")):
        unreachable = _probe(tracking_uri)
        if unreachable:
            return f"cannot reach {_public(tracking_uri)}: {unreachable} [{text}]"
    elif tracking_uri.startswith("sqlite:///"):
        denied = _sqlite_access(tracking_uri[len("sqlite:///"):])
        if denied:
            return f"{denied} [{text}]"
    return text


def _innermost(exc: BaseException) -> BaseException:
    seen = {id(exc)}
    while True:
        nxt = exc.__cause__ or exc.__context__
        if nxt is None or id(nxt) in seen:
            return exc
        seen.add(id(nxt))
        exc = nxt


def _probe(uri: str) -> str:
    """'' when the server answers at all (any HTTP status); else why it cannot be reached."""
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=_PROBE_TIMEOUT):
            return ""
    except urllib.error.HTTPError:
        return ""
    except urllib.error.URLError as exc:
        reason = exc.reason
        if isinstance(reason, ConnectionRefusedError):
            return "connection refused"
        return f"{type(reason).__name__}: {reason}" if isinstance(reason, BaseException) else str(reason)
    except OSError as exc:
        return f"{type(exc).__name__}: {exc}"


def _sqlite_access(path: str) -> str:
    if not path or path.startswith(":memory:"):
        return ""
    directory = os.path.dirname(path) or "."
    if os.path.exists(path):
        if not os.access(path, os.R_OK | os.W_OK):
            return f"permission denied on the sqlite file {path}"
    elif not os.access(directory, os.W_OK | os.X_OK):
        return f"permission denied creating the sqlite file in {directory}"
    return ""


def _public(uri: str) -> str:
    if "@" in uri and "://" in uri:
        scheme, rest = uri.split("://", 1)
        return f"{scheme}://***@{rest.rsplit('@', 1)[1]}"
    return uri
