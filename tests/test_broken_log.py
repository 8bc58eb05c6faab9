"""A log directory with broken files in it (issue 25): checkpoints that lie, a torn tail claiming 200 MiB, a
segment with a garbage header, bytes appended to a live app's segment, the directory deleted under its writer.
The writer stores what can be stored, says what it could not, and never spins or outlives its directory."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import struct
import subprocess
import sys
import textwrap
import time
import zlib

import mlflow
import pytest
from helpers import APP, app_env
from logwriters import stop_writers_under
from spanline.pipeline import eventlog, logdir


def _env(uri: str, log_dir: str, calls: int, **extra: str) -> dict[str, str]:
    return app_env(uri, "broken", calls, SPANLINE_LOG_DIR=log_dir, **extra)


def _app(uri: str, log_dir: str, calls: int, tail: str = "spanline.shutdown(wait_for_store=False)\n") -> str:
    done = subprocess.run([sys.executable, "-c", APP + textwrap.dedent(tail)], capture_output=True, text=True,
                          timeout=240, env=_env(uri, log_dir, calls, SPANLINE_WRITER_AUTOSTART="0"))
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def _once(log_dir: str, timeout: float = 240) -> subprocess.CompletedProcess:
    proc = subprocess.Popen([sys.executable, "-m", "spanline", "writer", "--log-dir", log_dir, "--once"],
                            env={**os.environ, "MLFLOW_MODEL_CATALOG_URI": ""}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err[-3000:]
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _stored(uri: str) -> int:
    mlflow.set_tracking_uri(uri)
    exp = mlflow.get_experiment_by_name("broken")
    return 0 if exp is None else len(mlflow.search_traces(locations=[exp.experiment_id], return_type="list",
                                                          max_results=1000))


def _segments(log_dir: str) -> list[str]:
    return sorted(f for f in os.listdir(log_dir) if eventlog.parse_name(f))


@pytest.mark.parametrize("checkpoint", [b"99999999999", b"7", b"garbage\n", b"120 00000000"])
def test_a_checkpoint_that_does_not_fit_its_segment_is_a_hint_read_from_the_start(tmp_path, log_dir, checkpoint):
    """Past the end (the writer had pread ~100 GB), inside the header (struct.error), garbage, a bad checksum:
    the segment is read from its start and every trace stored."""
    uri = f"sqlite:///{tmp_path}/store.db"
    _app(uri, log_dir, 6)
    (segment,) = _segments(log_dir)
    with open(os.path.join(log_dir, segment + eventlog.CHECKPOINT_SUFFIX), "wb") as f:
        f.write(checkpoint)
    _once(log_dir)
    assert _stored(uri) == 6
    assert _segments(log_dir) == []


def test_a_dead_producers_torn_tail_claiming_200_mib_is_final(tmp_path, log_dir):
    """The last record claims 200 MiB (under the 256 MiB cap) and 12 MiB follow: counted once, what came before
    stored, the segment deleted, and the writer done (it had spun at 81% of a core for ever)."""
    uri = f"sqlite:///{tmp_path}/store.db"
    _app(uri, log_dir, 5)
    (segment,) = _segments(log_dir)
    with open(os.path.join(log_dir, segment), "ab") as f:
        f.write(struct.pack("<IIB", 200 * 1024 * 1024, 0, eventlog.EVENT))
        f.write(b"\0" * (12 * 1024 * 1024))
    _once(log_dir)
    assert _stored(uri) == 5
    assert _segments(log_dir) == [], "the dead producer's segment is deleted"
    assert logdir.read_status(log_dir)["dropped"].get("torn_tail") == 1


def test_a_segment_with_a_garbage_header_is_quarantined_and_the_writer_exits_when_idle(tmp_path, log_dir):
    uri = f"sqlite:///{tmp_path}/store.db"
    _app(uri, log_dir, 3)
    garbage = eventlog.segment_name("18e0000000000002-99", 0)
    with open(os.path.join(log_dir, garbage), "wb") as f:
        f.write(b"NOTASEGMENT" * 10)
    proc = subprocess.Popen([sys.executable, "-m", "spanline", "writer", "--log-dir", log_dir, "--exit-when-idle",
                             "--idle-exit", "0.5"], env={**os.environ, "MLFLOW_MODEL_CATALOG_URI": ""},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _, err = proc.communicate(timeout=180)  # exits by itself: the garbage is no live producer
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err[-3000:]
    assert _stored(uri) == 3
    assert os.path.exists(os.path.join(log_dir, garbage + ".bad")) and _segments(log_dir) == []
    status = logdir.read_status(log_dir)
    assert status["quarantined"] == 1 and "bad magic" in status["bad_segments"][garbage]


def test_bytes_appended_to_a_live_apps_segment_are_not_charged_to_it(tmp_path, log_dir):
    """Garbage appended to a running app's segment: reported as corrupt records of that segment, but the app
    lost nothing of its own, so its flush() is True and its stats count no drop."""
    uri = f"sqlite:///{tmp_path}/store.db"
    tail = """
        import glob
        agent(100)
        assert spanline.flush(120)
        (seg,) = glob.glob(os.path.join(os.environ["SPANLINE_LOG_DIR"], "*.seg"))
        with open(seg, "ab") as f:
            f.write(b"\\x05\\x00\\x00\\x00JUNKEjunk!")  # a record's shape, a wrong checksum
        for i in range(101, 104):
            agent(i)
        print("FLUSH", spanline.flush(120), spanline.stats().dropped, flush=True)
    """
    env = _env(uri, log_dir, 2)
    done = subprocess.run([sys.executable, "-c", APP + textwrap.dedent(tail)], capture_output=True, text=True,
                          timeout=240, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "FLUSH True {}" in done.stdout, done.stdout
    assert _stored(uri) == 6
    status = logdir.read_status(log_dir)
    assert status["corrupt_records"] == 1


def test_a_writer_whose_directory_is_deleted_exits(tmp_path):
    directory = str(tmp_path / "log")
    eventlog.ensure_dir(directory)
    proc = subprocess.Popen([sys.executable, "-m", "spanline", "writer", "--log-dir", directory],
                            env={**os.environ, "MLFLOW_MODEL_CATALOG_URI": ""}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not logdir.writer_running(directory) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert logdir.writer_running(directory)
        shutil.rmtree(directory)
        _, err = proc.communicate(timeout=60)
        assert "deleted or replaced" in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_a_checkpoint_is_written_with_its_checksum_and_read_back():
    assert eventlog.parse_checkpoint(b"1234 " + f"{zlib.crc32(b'1234'):08x}".encode()) == 1234
    assert eventlog.parse_checkpoint(b"1234") == 1234  # written before the checksum existed
    assert eventlog.parse_checkpoint(b"1234 00000000") is None
    assert eventlog.parse_checkpoint(b"-5") is None and eventlog.parse_checkpoint(b"9" * 40) is None


def _processes_under(root: str) -> list[int]:
    """Pids of processes whose command line names a path under ``root`` (a writer's ``--log-dir``)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    cmdline = f.read()
            except OSError:
                continue
            if root.encode() in cmdline:
                found.append(int(entry))
    return found


def test_spanline_bench_leaves_no_process_behind(tmp_path):
    """The bench deletes its work directory at the end; a writer it started there (an --exit-when-idle one,
    or one still draining) sees its directory gone and exits, instead of running on for hours."""
    root = str(tmp_path / "tmp")
    os.makedirs(root)
    env = {**os.environ, "MLFLOW_MODEL_CATALOG_URI": "", "TMPDIR": root}
    try:
        done = subprocess.run([sys.executable, "-m", "spanline.bench", "--smoke", "--scenarios", "S5",
                               "--no-progress", "--out", str(tmp_path / "out")],
                              env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
        assert done.returncode == 0, done.stderr[-3000:]
        deadline = time.monotonic() + 60  # generous: a writer checks its directory about once a second
        while _processes_under(root) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _processes_under(root) == [], "a process of the bench outlived it"
    finally:
        for pid in _processes_under(root):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_a_log_directory_with_a_long_path_keeps_its_socket_inside(tmp_path, monkeypatch):
    """A socket path too long for sun_path went to a predictable name in the shared temp directory, which
    another user could take first; now it stays in the private directory, reached through its descriptor."""
    uri = f"sqlite:///{tmp_path}/store.db"
    shared = tmp_path / "shared-tmp"
    shared.mkdir()
    log_dir = str(tmp_path / ("d" * 60) / ("e" * 60) / "log")
    try:
        out = subprocess.run([sys.executable, "-c", APP + "print('FLUSH', spanline.flush(120), flush=True)\n"],
                             capture_output=True, text=True, timeout=240,
                             env=_env(uri, log_dir, 3, TMPDIR=str(shared)))
        assert out.returncode == 0, out.stderr[-3000:]
        assert "FLUSH True" in out.stdout, out.stdout + out.stderr[-3000:]
        assert _stored(uri) == 3
        assert os.listdir(shared) == [], "nothing of the log (its socket) in the shared temp directory"
    finally:
        stop_writers_under(str(tmp_path))
