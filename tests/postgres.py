"""A pytest plugin: a throwaway PostgreSQL server (Debian's ``postgresql``, no systemd) and a database on it.

``initdb`` and ``pg_ctl`` run as the ``postgres`` user (``runuser``) when the tests run as root, in a temp
directory, listening on 127.0.0.1 at a free port only (no UNIX socket in the system's directory). Start-up
takes well under a second. The server is stopped at teardown even when the test fails. Tests that need it
are skipped where PostgreSQL or ``psycopg`` is missing.

    def test_x(postgres_uri):  # "postgresql+psycopg://postgres@127.0.0.1:PORT/DB", a fresh database
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest


def _bindir() -> str | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return os.path.dirname(found[-1])
    initdb = shutil.which("initdb")
    return os.path.dirname(initdb) if initdb else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class PostgresServer:
    host: str
    port: int
    data: str
    bindir: str
    user: str

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://{self.user}@{self.host}:{self.port}/{database}"

    def run(self, *args: str) -> subprocess.CompletedProcess:
        cmd = [os.path.join(self.bindir, args[0]), *args[1:]]
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=True)

    def createdb(self) -> str:
        name = f"t{uuid.uuid4().hex[:12]}"
        self.run("createdb", "-h", self.host, "-p", str(self.port), "-U", self.user, name)
        return name


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A PostgreSQL server for the session, trust-authenticated on 127.0.0.1 only."""
    bindir = _bindir()
    if bindir is None:
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql)")
    pytest.importorskip("psycopg")
    root = tempfile.mkdtemp(prefix="spanline-pg-")
    os.chmod(root, 0o755)
    data = os.path.join(root, "data")
    server = PostgresServer("127.0.0.1", _free_port(), data, bindir, "postgres")
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
    else:
        server.user = os.environ.get("USER") or "postgres"
    try:
        server.run("initdb", "-D", data, "-U", server.user, "-A", "trust", "--no-sync", "-E", "UTF8")
        server.run(
            "pg_ctl", "-D", data, "-l", os.path.join(root, "server.log"), "-w", "-t", "30",
            "-o", f"-h 127.0.0.1 -p {server.port} -k {root} -c fsync=off -c full_page_writes=off",
            "start",
        )
    except subprocess.CalledProcessError as exc:
        shutil.rmtree(root, ignore_errors=True)
        raise RuntimeError(f"PostgreSQL did not start: {exc.stderr}") from exc
    try:
        yield server
    finally:
        with contextlib.suppress(Exception):
            server.run("pg_ctl", "-D", data, "-m", "immediate", "-w", "stop")
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def postgres_uri(postgres_server: PostgresServer) -> str:
    """A fresh, empty database on the session's server, as an MLflow tracking URI."""
    return postgres_server.url(postgres_server.createdb())
