"""spanline's options: defaults, ``SPANLINE_<NAME>`` environment variables, and validation.

In: keyword arguments of ``autolog()`` / ``configure()``, and the environment. Out: one ``Options`` value,
replaced whole on every change, so the caller's path reads a consistent set without a lock. Runs on the
user thread calling ``autolog()`` / ``configure()`` (and once at import, for the environment).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from typing import Any, Literal

from .policy import ContentPolicy


@dataclasses.dataclass(frozen=True)
class Options:
    sample_rate: float = 1.0
    capture_content: Literal["full", "metadata"] = "full"
    redact: Callable[[Any], Any] | None = None
    max_content_bytes: int | None = 4 * 1024 * 1024
    queue_size: int = 100_000
    on_full: Literal["drop", "block"] = "drop"
    batch_size: int = 100
    flush_interval: float = 0.5
    experiment_id: str | None = None
    shutdown_timeout: float = 15.0
    # The event log (pipeline/eventlog.py) and its writer process (pipeline/writer/).
    log_dir: str | None = None  # None: per user and tracking store, see pipeline/logdir.py
    durability: Literal["page_cache", "fsync", "memory"] = "page_cache"
    max_log_bytes: int = 1024**3
    segment_bytes: int = 64 * 1024**2
    writer_autostart: bool = True  # False: a writer is run by hand or under a supervisor
    # At exit (and in shutdown()): "store" waits, within shutdown_timeout, until this process's traces are
    # stored; "disk" only until they are in the log (for a writer that outlives the application).
    exit_wait: Literal["store", "disk"] = "store"
    # Spans of MLflow's own tracer (@mlflow.trace, mlflow.start_span, MLflow's other autologs): "log" sends them
    # through the event log with spanline's (patches/mlflow_export.py); "mlflow" leaves them to MLflow's exporter.
    mlflow_spans: Literal["log", "mlflow"] = "log"

    @property
    def policy(self) -> ContentPolicy:
        return ContentPolicy(self.capture_content, self.redact, self.max_content_bytes)


_FIELDS = {f.name: f for f in dataclasses.fields(Options)}


def _parse_env(name: str, text: str) -> Any:
    if name in ("sample_rate", "flush_interval", "shutdown_timeout"):
        return float(text)
    if name in ("queue_size", "batch_size", "max_log_bytes", "segment_bytes"):
        return int(text)
    if name == "max_content_bytes":
        return None if text.lower() in ("", "none", "0") else int(text)
    if name == "writer_autostart":
        return text.strip().lower() not in ("0", "false", "no", "off", "")
    if name == "redact":
        raise ValueError("redact cannot be set from the environment; pass a callable to configure()")
    return text or None if name in ("log_dir", "experiment_id") else text


# What each variable accepts, for the error naming a bad one.
_ACCEPTED = {
    "sample_rate": "a number within 0..1", "capture_content": "'full' or 'metadata'",
    "max_content_bytes": "a number of bytes (at least 64), or 'none'", "queue_size": "an integer >= 1",
    "on_full": "'drop' or 'block'", "batch_size": "an integer >= 1", "flush_interval": "seconds, > 0",
    "experiment_id": "an experiment id", "shutdown_timeout": "seconds, >= 0", "log_dir": "a directory",
    "durability": "'page_cache', 'fsync' or 'memory'", "max_log_bytes": "a number of bytes, >= segment_bytes",
    "segment_bytes": "a number of bytes, >= 4096", "writer_autostart": "1/0, true/false, yes/no, on/off",
    "exit_wait": "'store' or 'disk'", "mlflow_spans": "'log' or 'mlflow'",
}
# SPANLINE_* variables read elsewhere (the writer's command line; SPANLINE_BULK_STORE=0: pipeline/bulkstore.py;
# SPANLINE_OTLP_GZIP=1: pipeline/writer/otlpgzip.py).
_OTHER_VARIABLES = {"SPANLINE_WRITERS", "SPANLINE_WRITER_GRACE", "SPANLINE_BULK_STORE", "SPANLINE_OTLP_GZIP"}


def from_env(environ: Mapping[str, str] = os.environ, strict: bool = False) -> dict[str, Any]:
    """The options set by ``SPANLINE_<NAME>`` variables. A bad value: skipped, or with ``strict`` a ValueError
    naming the variable and what it accepts (``autolog()`` is strict; ``import spanline`` never raises)."""
    out: dict[str, Any] = {}

    def bad(name: str, exc: BaseException) -> None:
        key = f"SPANLINE_{name.upper()}"
        if strict:
            raise ValueError(f"{key}={environ[key]!r} is not valid: it takes {_ACCEPTED.get(name, 'a value')}"
                             f" ({exc})") from None

    for name in _FIELDS:
        key = f"SPANLINE_{name.upper()}"
        if key in environ and name != "redact":
            try:
                out[name] = _parse_env(name, environ[key])
            except (TypeError, ValueError) as exc:
                bad(name, exc)
    # Checked together (max_log_bytes against segment_bytes): a variable is bad when the set without it passes.
    try:
        build(Options(), out)
    except (TypeError, ValueError) as exc:
        culprits = []
        for name in list(out):
            try:
                build(Options(), {k: v for k, v in out.items() if k != name})
                culprits.append(name)
            except (TypeError, ValueError):
                continue
        for name in culprits or list(out):
            bad(name, exc)
            out.pop(name, None)
    return out


def unknown_env(environ: Mapping[str, str] = os.environ) -> list[str]:
    """One line per ``SPANLINE_*`` variable that spanline does not read, naming the closest one it does."""
    import difflib

    known = {f"SPANLINE_{n.upper()}" for n in _FIELDS} | _OTHER_VARIABLES
    lines = []
    for key in sorted(k for k in environ if k.startswith("SPANLINE_") and k not in known):
        close = difflib.get_close_matches(key, sorted(known), n=1)
        hint = f"; did you mean {close[0]}?" if close else ""
        lines.append(f"spanline: unknown environment variable {key} is ignored{hint}")
    return lines


def build(base: Options, changes: Mapping[str, Any]) -> Options:
    """``base`` with ``changes`` applied and checked; raises ``TypeError``/``ValueError`` on bad options."""
    unknown = set(changes) - set(_FIELDS)
    if unknown:
        raise TypeError(f"unknown spanline option(s): {', '.join(sorted(unknown))}; known: {', '.join(_FIELDS)}")
    opts = dataclasses.replace(base, **changes)
    if not 0.0 <= opts.sample_rate <= 1.0:
        raise ValueError(f"sample_rate must be within 0..1, got {opts.sample_rate!r}")
    if opts.capture_content not in ("full", "metadata"):
        raise ValueError(f"capture_content must be 'full' or 'metadata', got {opts.capture_content!r}")
    if opts.durability not in ("page_cache", "fsync", "memory"):
        raise ValueError(f"durability must be 'page_cache', 'fsync' or 'memory', got {opts.durability!r}")
    if opts.segment_bytes < 4096 or opts.max_log_bytes < opts.segment_bytes:
        raise ValueError("segment_bytes must be at least 4096, and max_log_bytes at least segment_bytes")
    if opts.exit_wait not in ("store", "disk"):
        raise ValueError(f"exit_wait must be 'store' or 'disk', got {opts.exit_wait!r}")
    if opts.mlflow_spans not in ("log", "mlflow"):
        raise ValueError(f"mlflow_spans must be 'log' or 'mlflow', got {opts.mlflow_spans!r}")
    if opts.on_full not in ("drop", "block"):
        raise ValueError(f"on_full must be 'drop' or 'block', got {opts.on_full!r}")
    if opts.redact is not None and not callable(opts.redact):
        raise TypeError("redact must be a callable taking and returning a value")
    for name in ("queue_size", "batch_size"):
        if getattr(opts, name) < 1:
            raise ValueError(f"{name} must be at least 1")
    if opts.flush_interval <= 0 or opts.shutdown_timeout < 0:
        raise ValueError("flush_interval must be > 0 and shutdown_timeout >= 0")
    if opts.max_content_bytes is not None and opts.max_content_bytes < 64:
        raise ValueError("max_content_bytes must be at least 64 (or None for no limit)")
    if opts.experiment_id is not None:
        opts = dataclasses.replace(opts, experiment_id=str(opts.experiment_id))
    return opts
