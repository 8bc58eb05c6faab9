"""Where a log lives, and how an application reaches the writer process that stores it.

In: a tracking URI (or an explicit ``log_dir``), from the application's worker thread or ``flush()``'s caller.
Out: the log directory, a running writer (started detached when none holds the directory's lock), and the
answer to "is everything up to this offset stored?" over the writer's UNIX socket.

One log per user and per tracking store: ``$XDG_CACHE_HOME/spanline/<hash of the resolved URI>`` (default
``~/.cache``; the system temp directory if that cannot be written). Two programs writing to one store
share one directory and one writer. Files in the directory:

    <producer>.<seq>.seg[.ckpt]  segments and their checkpoints (pipeline/eventlog.py)
    writer.lock                  held (flock) by the one writer; holds its pid
    writer.sock                  the writer's socket: flush requests, answered once stored
    status.json                  the writer's counters, for ``spanline status`` and ``stats()``
    writer.log                   the auto-started writer's own log
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import socket
import sys
import tempfile
import threading
import time
from typing import Any

from . import safefs

logger = logging.getLogger("spanline")

LOCK = "writer.lock"
STATUS = "status.json"
WRITER_LOG = "writer.log"
_SOCK = "writer.sock"
_MAX_SOCK_PATH = 100  # sun_path is 108 bytes on Linux


def absolute_uri(uri: str, cwd: str | None = None) -> str:
    """``uri`` with a relative sqlite or file path made absolute (against ``cwd``), so a writer started
    elsewhere finds the same store."""
    cwd = cwd or os.getcwd()
    if uri.startswith("sqlite:///"):
        path = uri[len("sqlite:///") :]
        if path and not path.startswith("/") and not path.startswith(":memory:"):
            return "sqlite:///" + os.path.normpath(os.path.join(cwd, path))
        return uri
    if "://" not in uri and not uri.startswith("databricks"):
        return "file://" + os.path.normpath(os.path.join(cwd, uri))
    return uri


def resolved_tracking_uri() -> str:
    """MLflow's tracking URI as this process resolves it now (imports mlflow)."""
    import mlflow

    return absolute_uri(mlflow.get_tracking_uri())


_fallback_dirs: dict[str, str] = {}  # tracking URI -> this process's private fallback directory
_fallback_lock = threading.Lock()


URI_FILE = "tracking-uri.txt"  # names, for a person listing the cache, the store a log directory belongs to


def cache_root() -> str:
    """Where the default log directories live: ``$XDG_CACHE_HOME/spanline`` (else ``~/.cache/spanline``)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "spanline")


def default_path(tracking_uri: str) -> str:
    """The default log directory's path for this store, without creating or checking anything."""
    return os.path.join(cache_root(), hashlib.sha256(tracking_uri.encode()).hexdigest()[:16])


def shown_uri(tracking_uri: str) -> str:
    """The URI with a password in it masked: what may be written down or printed."""
    return re.sub(r"(://[^/:@]*):[^/@]*@", r"\1:***@", tracking_uri)


def default_dir(tracking_uri: str) -> str:
    """The user's cache directory for this store; when that cannot be used (unwritable, or not private: owned
    by another user or writable by others), a fresh private directory of this process's (``mkdtemp``), never
    a predictable path in a shared temp directory, where another user could have prepared it."""
    key = hashlib.sha256(tracking_uri.encode()).hexdigest()[:16]
    candidate = default_path(tracking_uri)
    try:
        safefs.make_private_dirs(candidate)
        if os.access(candidate, os.W_OK | os.X_OK):
            _name_store(candidate, tracking_uri)
            return candidate
        reason: str = "not writable"
    except OSError as exc:
        reason = str(exc)
    with _fallback_lock:
        fallback = _fallback_dirs.get(tracking_uri)
        if fallback is None or not os.path.isdir(fallback):
            fallback = _fallback_dirs[tracking_uri] = tempfile.mkdtemp(prefix=f"spanline-{key}-")
            # Once per store and process: its traces are not shared with other processes' through this one.
            logger.warning("spanline: the log directory %r cannot be used (%s); using the private directory %r",
                           candidate, reason, fallback)
    return fallback


def _name_store(directory: str, tracking_uri: str) -> None:
    # Best effort: the directory works without it, so a failure (a full disk) is not worth more than a skip.
    try:
        with safefs.opened_dir(directory) as dir_fd:
            if safefs.read_small(dir_fd, URI_FILE) is None:
                safefs.write_replace(dir_fd, URI_FILE, (shown_uri(tracking_uri) + "\n").encode())
    except OSError:
        pass


def store_of(directory: str) -> str | None:
    """The tracking URI named in ``directory``'s ``tracking-uri.txt`` (None: no such file)."""
    try:
        with safefs.opened_dir(directory) as dir_fd:
            data = safefs.read_small(dir_fd, URI_FILE, 4096)
    except OSError:
        return None
    return data.decode(errors="replace").strip() if data is not None else None


SOCK = _SOCK


def socket_address(directory: str, dir_fd: int) -> str:
    """Where to bind or connect to the writer's socket, which is always ``writer.sock`` in the log directory.
    A path too long for ``sun_path`` goes through the directory's open descriptor (``/proc/self/fd/N/``),
    not through a predictable name in a shared temp directory, which another user could take first."""
    path = os.path.join(directory, _SOCK)
    if len(path) <= _MAX_SOCK_PATH:
        return path
    return f"/proc/self/fd/{dir_fd}/{_SOCK}"


def read_status(directory: str) -> dict[str, Any]:
    try:
        with safefs.opened_dir(directory) as dir_fd:
            data = safefs.read_small(dir_fd, STATUS, 64 << 20)
        return json.loads(data) if data else {}
    except (OSError, ValueError):
        return {}


def _open_lock(directory: str, create: bool = True) -> int:
    with safefs.opened_dir(directory) as dir_fd:
        return safefs.open_in(dir_fd, LOCK, os.O_RDWR | (os.O_CREAT if create else 0))


def writer_running(directory: str, create: bool = True) -> bool:
    """Whether a writer holds the directory's lock (one non-blocking ``flock`` attempt). ``create=False``: a
    directory without a lock file has no writer, and is left as it is (``spanline status`` only looks)."""
    try:
        fd = _open_lock(directory, create)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops the lock if we took it
    return False


def writer_pid(directory: str) -> int | None:
    try:
        with safefs.opened_dir(directory) as dir_fd:
            text = (safefs.read_small(dir_fd, LOCK, 64) or b"").strip()
        return int(text) if text else None
    except (OSError, ValueError):
        return None


_spawned: dict[str, int] = {}  # log dir -> pid of the writer this process started there
_spawn_lock = threading.Lock()


def _reap() -> None:
    """Collect writers this process started that have exited (no zombies), forget them."""
    for key, pid in list(_spawned.items()):
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:  # not our child (we are a forked copy of its parent)
            done = pid
        if done:
            del _spawned[key]


def ensure_writer(directory: str) -> bool:
    """Start a detached writer for ``directory`` unless one holds its lock; True if one was started.

    Two processes racing here may both start one: the second finds the lock taken and exits at once.
    """
    with _spawn_lock:
        _reap()
        if directory in _spawned or writer_running(directory):
            return False  # ours is still starting (or running), or another holds the lock
        # Opened here, through the checked directory and never through a link, and handed to the child: a
        # path given to posix_spawn would be opened by the child following links.
        with safefs.opened_dir(directory) as dir_fd:
            log_fd = safefs.open_in(dir_fd, WRITER_LOG, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        try:
            # posix_spawn, not subprocess: no Popen object to outlive (and warn about) at exit; its own
            # session, so it outlives the application and no signal of the application's terminal reaches it.
            pid = os.posix_spawn(
                sys.executable,
                [sys.executable, "-m", "spanline", "writer", "--log-dir", directory, "--exit-when-idle"],
                os.environ,
                file_actions=[
                    (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                    (os.POSIX_SPAWN_DUP2, log_fd, 1),
                    (os.POSIX_SPAWN_DUP2, log_fd, 2),
                ],
                setsid=True,
            )
        finally:
            os.close(log_fd)
        _spawned[directory] = pid
        return True


def ask_writer(
    directory: str, request: dict[str, Any], deadline: float | None, autostart: bool = True
) -> dict[str, Any] | None:
    """Send ``request`` to the directory's writer and wait for its answer (None on timeout).

    Starts a writer when none answers (unless ``autostart`` is False: then waits for one to appear). The
    writer answers a flush request only once the data is stored, so this waits on a socket read: no
    polling, and the request itself wakes the writer.
    """
    try:
        dir_fd = safefs.open_dir(directory)
    except OSError:
        return None  # not a private directory (or gone): no writer of ours can be there
    try:
        return _ask(directory, dir_fd, request, deadline, autostart)
    finally:
        os.close(dir_fd)


def _ask(
    directory: str, dir_fd: int, request: dict[str, Any], deadline: float | None, autostart: bool
) -> dict[str, Any] | None:
    path = socket_address(directory, dir_fd)
    delay = 0.01
    payload = (json.dumps(request) + "\n").encode()
    while True:
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            return None
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(remaining)
            sock.connect(path)
            sock.sendall(payload)
            reply = _read_line(sock)
            if reply:
                return json.loads(reply)
            # The writer went away mid-request (killed, or exiting idle): start another and ask again.
        except (FileNotFoundError, ConnectionRefusedError, ConnectionResetError, BrokenPipeError):
            pass
        except TimeoutError:
            return None
        finally:
            sock.close()
        if autostart:
            ensure_writer(directory)
        # Only while a writer is starting (it binds its socket before importing mlflow): short waits.
        wait = delay if remaining is None else min(delay, max(0.0, deadline - time.monotonic()))
        time.sleep(wait)
        delay = min(delay * 2, 0.2)


def _read_line(sock: socket.socket) -> bytes:
    chunks = []
    while True:
        chunk = sock.recv(4096)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        if chunk.endswith(b"\n"):
            return b"".join(chunks)


@contextlib.contextmanager
def held_lock(directory: str):
    """The writer's lock: yields True if this process now holds it (kept until the block ends)."""
    fd = _open_lock(directory)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        yield True
    finally:
        os.close(fd)
