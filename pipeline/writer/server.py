"""The flush protocol's server side: the log directory's UNIX socket.

In: connections on ``<log dir>/writer.sock``, one JSON request line each (a producer's flush of a segment up
to an offset, ``{"drain": true}`` from ``spanline writer --once``, ``{"status": true}``). Out: one JSON
answer line per request, sent once the writer's loop can answer it (``answer_waiters``); a connection whose
asker hung up is closed unanswered. Runs in the writer process, on its one thread, between rounds.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import socket
from collections.abc import Callable
from typing import Any

from .. import logdir


class FlushServer:
    """The socket, the connections being read, and the requests waiting for their answer."""

    def __init__(self) -> None:
        self.waiters: list[tuple[socket.socket, dict[str, Any]]] = []
        self.selector: selectors.BaseSelector | None = None
        self.sock: socket.socket | None = None

    def listen(self, directory: str, dir_fd: int) -> None:
        path = logdir.socket_address(directory, dir_fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(logdir.SOCK, dir_fd=dir_fd)
        server = self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind(path)
        os.chmod(logdir.SOCK, 0o600, dir_fd=dir_fd)
        server.listen(128)
        server.setblocking(False)
        self.selector = selectors.DefaultSelector()
        self.selector.register(server, selectors.EVENT_READ, None)

    def read_requests(self, timeout: float) -> None:
        """Wait up to ``timeout`` for connections and request lines; complete requests join ``waiters``."""
        assert self.selector is not None and self.sock is not None
        for key, _ in self.selector.select(timeout):
            if key.data is None:
                while True:
                    try:
                        conn, _ = self.sock.accept()
                    except BlockingIOError:
                        break
                    conn.setblocking(False)
                    self.selector.register(conn, selectors.EVENT_READ, bytearray())
            else:
                conn, buf = key.fileobj, key.data
                try:
                    chunk = conn.recv(4096)
                except (BlockingIOError, ConnectionError):
                    chunk = b""
                if not chunk:
                    self.selector.unregister(conn)
                    conn.close()
                    continue
                buf.extend(chunk)
                if b"\n" in buf:
                    self.selector.unregister(conn)
                    try:
                        request = json.loads(bytes(buf).split(b"\n", 1)[0])
                    except ValueError:
                        conn.close()
                        continue
                    conn.setblocking(True)
                    self.waiters.append((conn, request))

    def answer_waiters(self, answer: Callable[[dict[str, Any]], dict[str, Any] | None]) -> None:
        """Send each waiter ``answer(request)``; None keeps it waiting (unless its asker is gone)."""
        still = []
        for sock, request in self.waiters:
            reply = answer(request)
            if reply is None:
                if _hung_up(sock):
                    sock.close()  # its asker is gone (a killed app, a --once timed out): nobody to answer
                else:
                    still.append((sock, request))
                continue
            with contextlib.suppress(OSError):
                sock.sendall((json.dumps(reply) + "\n").encode())
            sock.close()
        self.waiters = still

    def close_waiters(self) -> None:
        for sock, _ in self.waiters:
            sock.close()

    def close(self, dir_fd: int) -> None:
        if self.sock is not None:
            self.sock.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(logdir.SOCK, dir_fd=dir_fd)


def _hung_up(sock: socket.socket) -> bool:
    """Whether the other end of a waiter's connection has closed. A waiter left behind would keep an
    ``--exit-when-idle`` writer alive forever: the bench's writers outlived their deleted log directories."""
    try:
        return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True
