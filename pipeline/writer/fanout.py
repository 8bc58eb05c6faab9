"""Fan-out: the writer's units stored by N store writers in parallel, every trace always by the same one.

In: the units of one store write (``Writer.write_unwritten``'s batch, store.py), on the writer process's
loop thread; the store writers are threads or child processes of the writer process.
Out: the same units in the tracking store, written by N store writers at once, each calling
``MlflowSink.write`` on its part (so whatever the sink does, attachments included, happens per part).
The call returns once every part is stored, and raises ``PartialWrite`` otherwise.

A unit goes to store writer ``crc32(trace id) % N``: every span of a trace is written by one store writer,
never by two at once (two concurrent ``log_spans`` of one trace race on creating its row). Which kind of
store writer, and how many by default, depends on the store (``plan``):

- an ``mlflow server`` (http/https): 4 threads. The work is waiting on the server, so threads overlap well.
  MLflow's REST store sends the OTLP protobuf to ``/v1/traces`` over its pooled session (its own HTTP retries
  are off in the writer unless ``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` is set: the writer's retry loop, with its
  short capped backoff, waits out 429/5xx and outages). A keep-alive connection stays on the server worker
  that accepted it, and uvicorn's workers share one listening socket: measured here, two and four connections
  opened together all landed on one of two workers, and a second store writer added nothing. So the store
  writers' batch requests each ask for a fresh connection (``Connection: close``); a local connect costs well
  under a millisecond against the seconds of server work a batch of 100–200 traces takes, and each new
  connection goes to whichever worker accepts first, usually an idle one. With ``SPANLINE_OTLP_GZIP=1`` the
  span requests' bodies go gzip-compressed (``otlpgzip``; off by default: on loopback it saved bytes only).
- PostgreSQL, MySQL, SQL Server (SQLAlchemy): processes when asked (``--writers N``), 1 by default.
  ``log_spans`` there is mostly Python CPU (~3 ms per trace), so threads would share one GIL; processes can
  use the machine's cores. On a loaded 2-core host a second PostgreSQL writer was as often slower as faster
  (``spanline bench --store postgresql://...``; the figures are in the docs' scaling page), so the default
  stays at one until a quiet host says otherwise. Units are pickled to the child (~tens of µs per trace).
- sqlite and file stores: 1, in the writer's own thread, whatever is asked (a second sqlite writer adds
  nothing but lock waits).

Checkpoints stay correct: the writer checkpoints only after a call returns, so a checkpoint never passes
a unit that is not stored. When some parts fail, the parts that were stored are remembered, and the retry
of the same units (the writer retries its unwritten list as is) writes only the parts still missing.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import threading
import zlib
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection
from typing import Any

from ..assembler import Unit
from ..sink import MlflowSink  # imports mlflow: the writer imports this module once its socket is up
from . import otlpgzip

logger = logging.getLogger("spanline.writer")

Sink = Callable[[Sequence[Unit]], None]

PART_UNITS = 200  # units per sink call: the writer's own batch size, per store writer
DEFAULT_SERVER_WRITERS = 4
DEFAULT_SQL_WRITERS = 1  # measured here: a second PostgreSQL writer process did not help (see the module docstring)
_SQL_SCHEMES = ("postgresql", "postgres", "mysql", "mssql")
_SINGLE_SCHEMES = ("sqlite", "file", "")


def plan(tracking_uri: str, requested: int | None = None) -> tuple[int, str]:
    """``(store writers, "inline" | "thread" | "process")`` for a store; ``requested`` overrides the
    default count for stores that scale (sqlite and file stores always get one)."""
    scheme = tracking_uri.split(":", 1)[0].split("+", 1)[0].lower() if "://" in tracking_uri else ""
    if scheme in _SINGLE_SCHEMES:
        return 1, "inline"
    if scheme in ("http", "https"):
        n = requested or DEFAULT_SERVER_WRITERS
        kind = "thread"
    elif scheme in _SQL_SCHEMES:
        n = requested or DEFAULT_SQL_WRITERS
        kind = "process"
    else:  # databricks and other plug-in stores: leave them as they were, unless asked
        n = requested or 1
        kind = "thread"
    return (n, kind) if n > 1 else (1, "inline")


def partition(units: Sequence[Unit], n: int) -> list[list[Unit]]:
    """``units`` in ``n`` parts by trace id, each part in the order given."""
    parts: list[list[Unit]] = [[] for _ in range(n)]
    for unit in units:
        parts[zlib.crc32(unit.trace_id.encode()) % n].append(unit)
    return parts


def _write_in_chunks(sink: Sink, part: Sequence[Unit]) -> None:
    for i in range(0, len(part), PART_UNITS):
        sink(part[i : i + PART_UNITS])


def default_sink() -> Sink:
    """The store writer of one part: MLflow's ``log_spans`` through spanline's sink."""
    return MlflowSink(lambda: None).write


class PartialWrite(Exception):
    """Some parts of a write failed (the others are stored); ``errors``: one message per failed part."""

    def __init__(self, errors: list[str], stored: int, total: int) -> None:
        self.errors = errors
        super().__init__(f"{len(errors)} store writer(s) failed, {stored} of {total} unit(s) stored: {errors[0]}")


class FanOut:
    """A sink for ``Writer``: call it with units; it returns once all are stored, or raises."""

    def __init__(
        self,
        writers: int | None = None,
        make_sink: Callable[[], Sink] = default_sink,
        kind: str | None = None,
    ) -> None:
        """``writers``: store writers per store that scales (None: the default per store kind).
        ``make_sink``: builds one store writer's sink (in the child, for processes: must be picklable).
        ``kind``: force ``"thread"`` or ``"process"`` (measurements); None: by the store's kind."""
        self.writers = writers
        self.make_sink = make_sink
        self.kind = kind
        self._pools: dict[str, _Pool] = {}
        # Units a failed call did store (id -> unit; the reference keeps the id from being reused).
        self._stored: dict[int, Unit] = {}

    @property
    def batch_units(self) -> int:
        """How many units the writer should hand over per call: a full batch for each store writer."""
        return PART_UNITS * max((pool.n for pool in self._pools.values()), default=1)

    def __call__(self, units: Sequence[Unit]) -> None:
        todo = [u for u in units if self._stored.get(id(u)) is not u]
        by_uri: dict[str, list[Unit]] = {}
        for unit in todo:
            by_uri.setdefault(unit.tracking_uri, []).append(unit)
        errors: list[str] = []
        stored = len(units) - len(todo)
        for uri, group in by_uri.items():
            pool = self._pool(uri)
            parts = partition(group, pool.n)
            for part, error in zip(parts, pool.write(parts), strict=True):
                if error is None:
                    stored += len(part)
                    self._stored.update((id(u), u) for u in part)
                else:
                    errors.append(error)
        if errors:
            raise PartialWrite(errors, stored, len(units))
        self._stored.clear()

    def describe(self) -> dict[str, tuple[int, str]]:
        """For the status: store -> (writers, kind)."""
        return {uri: (pool.n, pool.kind) for uri, pool in self._pools.items()}

    def close(self) -> None:
        for pool in self._pools.values():
            pool.close()
        self._pools.clear()

    def _pool(self, uri: str) -> _Pool:
        pool = self._pools.get(uri)
        if pool is None:
            n, kind = plan(uri, self.writers)
            if self.kind and n > 1:
                kind = self.kind
            if kind == "process":
                pool = _Processes(n, self.make_sink)
            elif kind == "thread":
                pool = _Threads(n, self.make_sink)
                if uri.startswith(("http://", "https://")):
                    _fresh_connection_per_batch()
            else:
                pool = _Inline(self.make_sink)
            gzip = uri.startswith(("http://", "https://")) and otlpgzip.enabled()
            if gzip:  # SPANLINE_OTLP_GZIP=1: span requests to this server gzip-compressed (otlpgzip.py)
                from mlflow.tracking._tracking_service.utils import _get_store

                otlpgzip.compress(_get_store(uri))  # the store object the sinks get for this URI (MLflow caches it)
            logger.info("spanline writer: %d store writer(s) (%s) for %s%s", pool.n, pool.kind, safe_uri(uri),
                        ", span requests gzip-compressed" if gzip else "")
            self._pools[uri] = pool
        return pool


_STORE_WRITER_THREAD = "spanline-store-writer"
_fresh_connections = False


def _fresh_connection_per_batch() -> None:
    """Make the store writer threads' requests to a server close their connection after the response (an
    MLflow request-header provider, active on those threads only), so the next batch connects anew and
    lands on whichever server worker accepts it, instead of every batch staying on one worker."""
    global _fresh_connections
    if _fresh_connections:
        return
    from mlflow.tracking.request_header.abstract_request_header_provider import RequestHeaderProvider
    from mlflow.tracking.request_header.registry import _request_header_provider_registry

    class _CloseAfterEachBatch(RequestHeaderProvider):
        def in_context(self) -> bool:
            return threading.current_thread().name.startswith(_STORE_WRITER_THREAD)

        def request_headers(self) -> dict[str, str]:
            return {"Connection": "close"}

    _request_header_provider_registry.register(_CloseAfterEachBatch)
    _fresh_connections = True


def safe_uri(uri: str) -> str:
    """A URI without its password, for the log."""
    if "@" in uri and "://" in uri:
        scheme, rest = uri.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        return f"{scheme}://{creds.split(':', 1)[0]}:***@{host}" if ":" in creds else uri
    return uri


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


class _Pool:
    n: int
    kind: str

    def write(self, parts: list[list[Unit]]) -> list[str | None]:
        """Write each part with its own store writer, all at once; per part: None (stored) or the error."""
        raise NotImplementedError

    def close(self) -> None:
        pass


class _Inline(_Pool):
    """One store writer, the caller's thread: today's behaviour for stores that do not scale."""

    n, kind = 1, "inline"

    def __init__(self, make_sink: Callable[[], Sink]) -> None:
        self._make_sink = make_sink
        self._sink: Sink | None = None

    def write(self, parts: list[list[Unit]]) -> list[str | None]:
        if self._sink is None:
            self._sink = self._make_sink()
        try:
            _write_in_chunks(self._sink, parts[0])
        except Exception as exc:
            return [_error(exc)]
        return [None]


class _Threads(_Pool):
    """N threads of this process, one sink each (MLflow's store and its connection pool are thread-safe)."""

    kind = "thread"

    def __init__(self, n: int, make_sink: Callable[[], Sink]) -> None:
        self.n = n
        self._make_sink = make_sink
        self._sinks: list[Sink | None] = [None] * n
        self._executor = ThreadPoolExecutor(n, thread_name_prefix=_STORE_WRITER_THREAD)

    def _write_one(self, index: int, part: list[Unit]) -> None:
        sink = self._sinks[index]
        if sink is None:
            sink = self._sinks[index] = self._make_sink()
        _write_in_chunks(sink, part)

    def write(self, parts: list[list[Unit]]) -> list[str | None]:
        futures = [self._executor.submit(self._write_one, i, part) if part else None for i, part in enumerate(parts)]
        out: list[str | None] = []
        for future in futures:
            error = None if future is None else future.exception()
            out.append(None if error is None else _error(error))
        return out

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)


class _Processes(_Pool):
    """N child processes, each with its own sink and its own store connection, fed units over a pipe.

    A child that dies (killed, out of memory) fails its part; the next write starts a new one. Children are
    daemonic and exit when the pipe closes, so they never outlive the writer."""

    kind = "process"

    def __init__(self, n: int, make_sink: Callable[[], Sink]) -> None:
        self.n = n
        self._make_sink = make_sink
        # Not a plain fork: the writer may hold threads and store connections a forked child must not share.
        # A fork server (a fresh interpreter that imported the sink, so mlflow, once) forks clean children in
        # milliseconds, where spawning each would import mlflow again (seconds).
        self._ctx = multiprocessing.get_context("forkserver")
        self._ctx.set_forkserver_preload(["spanline.pipeline.sink"])
        self._children: list[tuple[Any, Connection] | None] = [None] * n
        self._lock = threading.Lock()

    def _child(self, index: int) -> Connection:
        child = self._children[index]
        if child is not None and child[0].is_alive():
            return child[1]
        if child is not None:
            self._stop(index)
        parent_end, child_end = self._ctx.Pipe()
        proc = self._ctx.Process(
            target=_child_main, args=(child_end, self._make_sink), name=f"spanline-store-writer-{index}", daemon=True
        )
        proc.start()
        child_end.close()
        self._children[index] = (proc, parent_end)
        return parent_end

    def write(self, parts: list[list[Unit]]) -> list[str | None]:
        out: list[str | None] = [None] * self.n
        sent: list[int] = []
        with self._lock:
            for i, part in enumerate(parts):
                if not part:
                    continue
                try:
                    self._child(i).send(part)
                    sent.append(i)
                except (OSError, EOFError, ValueError) as exc:
                    out[i] = f"store writer process {i}: {_error(exc)}"
                    self._stop(i)
            for i in sent:
                child = self._children[i]
                assert child is not None
                try:
                    out[i] = child[1].recv()
                except (OSError, EOFError) as exc:
                    out[i] = f"store writer process {i} died: {_error(exc)}"
                    self._stop(i)
        return out

    def _stop(self, index: int) -> None:
        child = self._children[index]
        self._children[index] = None
        if child is None:
            return
        proc, conn = child
        conn.close()
        proc.join(5)
        if proc.is_alive():
            proc.kill()
            proc.join(5)

    def close(self) -> None:
        with self._lock:
            for i in range(self.n):
                self._stop(i)


def _child_main(conn: Connection, make_sink: Callable[[], Sink]) -> None:
    """A store writer process: receive a part, store it, answer None or the error; exit when the pipe closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the writer, which stops its children
    os.environ.setdefault("MLFLOW_MODEL_CATALOG_URI", "")
    sink = make_sink()
    while True:
        try:
            part = conn.recv()
        except (EOFError, OSError):
            return
        try:
            _write_in_chunks(sink, part)
            answer = None
        except Exception as exc:
            answer = _error(exc)
        with contextlib.suppress(OSError):
            conn.send(answer)
