"""The log directory under a hostile second local user (issue 25): no file of the user's is touched through a
link, no file outside the directory is read, no file name writes a line of its own into a log.

Real users (``useradd``; root needed), real processes, sqlite stores.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import helpers
import pytest
from logwriters import stop_writers_under
from spanline.pipeline import eventlog, logdir

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: the test adds a second local user (useradd)")

# The shared app (tests/helpers.py), reporting its flush and mode at the end.
APP = helpers.APP + """
ok = spanline.flush(120)
print("FLUSH", ok, spanline.stats().mode, flush=True)
"""


@pytest.fixture
def probe_user() -> Iterator[pwd.struct_passwd]:
    """A second local user, removed afterwards."""
    name = f"splprobe{uuid.uuid4().hex[:6]}"
    subprocess.run(["useradd", "-M", "-N", "-s", "/usr/sbin/nologin", name], check=True, capture_output=True)
    try:
        yield pwd.getpwnam(name)
    finally:
        subprocess.run(["userdel", "-f", name], capture_output=True)


@pytest.fixture
def shared_tmp() -> Iterator[str]:
    """A shared temp directory like /tmp (1777), reachable by the second user (pytest's tmp_path is not)."""
    root = tempfile.mkdtemp(prefix="spl-shared-")
    os.chmod(root, 0o1777)
    try:
        yield root
    finally:
        stop_writers_under(root)
        shutil.rmtree(root, ignore_errors=True)


def _as(user: pwd.struct_passwd, code: str) -> None:
    """Run Python ``code`` as ``user`` (what the attacker prepares)."""
    done = subprocess.run(["/usr/bin/python3", "-c", textwrap.dedent(code)], user=user.pw_uid, group=user.pw_gid,
                          extra_groups=[], capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr


def _victim_files(root: str) -> dict[str, bytes]:
    """Files of the victim's (root's) that the attacker's links point at, with their bytes."""
    os.makedirs(os.path.join(root, "victim"), mode=0o700)
    files = {}
    for name in ("lock-target", "log-target", "status-target", "ckpt-target"):
        path = os.path.join(root, "victim", name)
        with open(path, "wb") as f:
            f.write(f"precious {name}\n".encode() * 3)
        files[path] = Path(path).read_bytes()
    return files


def _unchanged(files: dict[str, bytes]) -> None:
    for path, content in files.items():
        assert Path(path).read_bytes() == content, f"{path} was changed through a link"


def _outside_segment(root: str, uri: str) -> str:
    """A valid segment of another 'app' (tag ``stolen``) outside any log directory."""
    outside = os.path.join(root, "outside")
    os.makedirs(outside, mode=0o755)
    env = helpers.app_env(uri, "stolen", 3, TEST_TAG="stolen", SPANLINE_LOG_DIR=outside,
                          SPANLINE_WRITER_AUTOSTART="0", SPANLINE_EXIT_WAIT="disk")
    subprocess.run([sys.executable, "-c", helpers.APP], env=env, capture_output=True, timeout=120, check=True)
    (seg,) = [f for f in os.listdir(outside) if f.endswith(".seg")]
    os.chmod(os.path.join(outside, seg), 0o644)
    return os.path.join(outside, seg)


def _plant(user: pwd.struct_passwd, directory: str, victim: dict[str, bytes], segment: str) -> None:
    """The attack of the issue: links named like the writer's files, a segment-named link to a segment
    outside, and a file name with a newline in it."""
    targets = sorted(victim)  # ckpt, lock, log, status (sorted by name)
    seg_name = eventlog.segment_name("18e0000000000001-77", 0)
    _as(user, f"""
        import os
        d = {directory!r}
        os.makedirs(d, exist_ok=True)
        os.chmod(d, 0o777)
        os.symlink({targets[1]!r}, os.path.join(d, "writer.lock"))
        os.symlink({targets[2]!r}, os.path.join(d, "writer.log"))
        os.symlink({targets[3]!r}, os.path.join(d, "status.json.tmp"))
        os.symlink({targets[0]!r}, os.path.join(d, {seg_name!r} + ".ckpt.tmp"))
        os.symlink({segment!r}, os.path.join(d, {seg_name!r}))
        open(os.path.join(d, "x\\nINJECTED-BY-PROBEUSER\\n.000000.seg"), "w").close()
    """)


def _run_app(uri: str, experiment: str, calls: int, **env: str) -> subprocess.CompletedProcess:
    full = helpers.app_env(uri, experiment, calls, **env)
    full.pop("XDG_CACHE_HOME", None)
    done = subprocess.run([sys.executable, "-c", APP], env=full, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-4000:]
    return done


def _stored(uri: str, experiment: str) -> int:
    """Traces stored in an experiment (the app's: ``victim``; the linked-in segment's: ``stolen``)."""
    import mlflow

    mlflow.set_tracking_uri(uri)
    exp = mlflow.get_experiment_by_name(experiment)
    if exp is None:
        return 0
    return len(mlflow.search_traces(locations=[exp.experiment_id], return_type="list", max_results=1000))


def _no_injected_line(root: str) -> None:
    for directory, _, files in os.walk(root):
        for name in files:
            if name.endswith(".log") or name == "writer.log":
                with contextlib.suppress(OSError):
                    for line in Path(directory, name).read_bytes().splitlines():
                        assert not line.startswith(b"INJECTED"), f"a file name wrote a line into {name}"


def test_a_predictable_shared_default_directory_prepared_by_another_user_is_never_used(
    probe_user, shared_tmp
):
    """HOME unusable, TMPDIR shared: the other user prepared the old predictable path with links to the
    victim's files. The app stores its traces through a fresh private directory; the victim's files are
    unchanged byte for byte; the segment the attacker linked in is not stored."""
    uri = f"sqlite:///{shared_tmp}/victim/store.db"
    victim = _victim_files(shared_tmp)
    outside = _outside_segment(shared_tmp, uri)
    key = hashlib.sha256(uri.encode()).hexdigest()[:16]
    trap = os.path.join(shared_tmp, f"spanline-{os.getuid()}", key)
    _as(probe_user, f"import os; os.makedirs({os.path.dirname(trap)!r}, 0o777); "
                    f"os.chmod({os.path.dirname(trap)!r}, 0o777)")
    _plant(probe_user, trap, victim, outside)

    done = _run_app(uri, "victim", 5, HOME="/proc/nonexistent", TMPDIR=shared_tmp)
    assert "FLUSH True log" in done.stdout, done.stdout + done.stderr[-3000:]
    assert done.stderr.count("cannot be used") == 1, "said once"
    _unchanged(victim)
    assert _stored(uri, "stolen") == 0, "a segment linked in from outside was read and stored"
    assert _stored(uri, "victim") == 5
    private = [d for d in os.listdir(shared_tmp) if d.startswith(f"spanline-{key}-")]
    assert private and all(os.stat(os.path.join(shared_tmp, d)).st_mode & 0o777 == 0o700 for d in private)
    assert not {"status.json", "writer.sock"} & set(os.listdir(trap)), "the prepared directory was used"
    _no_injected_line(shared_tmp)


def test_an_explicit_log_directory_of_another_user_is_refused(probe_user, shared_tmp):
    """``SPANLINE_LOG_DIR`` names a directory the other user owns (mode 777, links planted): never used; the
    app stores in-process instead (said once), and the victim's files are unchanged."""
    uri = f"sqlite:///{shared_tmp}/victim/store.db"
    victim = _victim_files(shared_tmp)
    outside = _outside_segment(shared_tmp, uri)
    trap = os.path.join(shared_tmp, "theirs")
    _plant(probe_user, trap, victim, outside)
    done = _run_app(uri, "victim", 4, SPANLINE_LOG_DIR=trap)
    assert "FLUSH True in_process" in done.stdout, done.stdout + done.stderr[-3000:]
    assert "owned by uid" in done.stderr
    _unchanged(victim)
    assert _stored(uri, "victim") == 4 and _stored(uri, "stolen") == 0
    _no_injected_line(shared_tmp)


def test_links_inside_the_users_own_directory_are_never_followed(probe_user, shared_tmp):
    """The user's own private directory, with the same links inside (as a directory that was once open to
    others would hold): the writer replaces its own files' links instead of writing through them, does not
    read the linked segment, and logs no line made by a file name."""
    uri = f"sqlite:///{shared_tmp}/victim/store.db"
    victim = _victim_files(shared_tmp)
    outside = _outside_segment(shared_tmp, uri)
    mine = os.path.join(shared_tmp, "mine")
    _plant(probe_user, mine, victim, outside)  # made by the other user, then taken over and made private
    for name in [mine, *(os.path.join(mine, n) for n in os.listdir(mine))]:
        os.lchown(name, 0, 0)
    os.chmod(mine, 0o700)
    done = _run_app(uri, "victim", 5, SPANLINE_LOG_DIR=mine)
    assert "FLUSH True log" in done.stdout, done.stdout + done.stderr[-3000:]
    _unchanged(victim)
    assert _stored(uri, "victim") == 5 and _stored(uri, "stolen") == 0
    for name in ("writer.lock", "writer.log"):
        assert not os.path.islink(os.path.join(mine, name))
    _no_injected_line(shared_tmp)


def test_a_directory_writable_by_others_is_refused_even_when_it_is_ours(tmp_path):
    directory = tmp_path / "log"
    directory.mkdir()
    os.chmod(directory, 0o777)
    with pytest.raises(PermissionError, match="writable by other users"):
        eventlog.ensure_dir(str(directory))
    os.chmod(directory, 0o755)
    eventlog.ensure_dir(str(directory))  # only readable by others: tightened
    assert os.stat(directory).st_mode & 0o777 == 0o700


def test_only_the_exact_segment_names_are_read():
    assert eventlog.parse_name(eventlog.segment_name("18e0000000000000-4242", 3)) == ("18e0000000000000-4242", 3)
    for bad in ["x\nINJECTED\n.000000.seg", "a.b.000000.seg", "18e-1.000001.seg.ckpt", "../18e-1.000001.seg",
                "18E-1.000001.seg", "18e-1.1.seg"]:
        assert eventlog.parse_name(bad) is None, bad


def test_a_file_name_never_starts_a_line_of_the_writers_log():
    import logging

    from spanline.pipeline.writer import OneLineFormatter

    record = logging.LogRecord("spanline.writer", logging.ERROR, __file__, 1, "spanline writer: %r / %s", (
        "a\nINJECTED", "b\r\nINJECTED"), None)
    line = OneLineFormatter("%(message)s").format(record)
    assert "\n" not in line and "\r" not in line
    assert logdir.WRITER_LOG == "writer.log"
