"""Where the event log goes by default, seen from the outside: an app run with HOME, XDG_CACHE_HOME and TMPDIR
set (or unset) by the test leaves its segment in the directory the README names, written here as literal paths
(never computed with ``logdir.default_dir``). When the cache directory cannot be written (a read-only mount: root
ignores permission bits), the log goes to a directory private to this user (0700, ours) under the temp dir."""

from __future__ import annotations

import os
import pwd
import re
import shutil
import stat
import subprocess
import sys

import pytest

APP = """
import spanline
from spanline.testing import FakeAnthropicAPI
spanline.autolog()
FakeAnthropicAPI().client().messages.create(model="claude-fake-1", max_tokens=8,
                                            messages=[{"role": "user", "content": "where do I go?"}])
spanline.shutdown(wait_for_store=False)
"""


def _run(tmp_path, **env: str | None) -> None:
    full = {k: v for k, v in os.environ.items() if k not in ("XDG_CACHE_HOME", "HOME", "TMPDIR")}
    full.update({"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/store.db", "MLFLOW_MODEL_CATALOG_URI": "",
                 "SPANLINE_WRITER_AUTOSTART": "0", "TMPDIR": str(tmp_path / "tmp")})
    full.update({k: v for k, v in env.items() if v is not None})
    for k, v in env.items():
        if v is None:
            full.pop(k, None)
    os.makedirs(tmp_path / "tmp", exist_ok=True)
    done = subprocess.run([sys.executable, "-c", APP], env=full, capture_output=True, text=True, timeout=120,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]


def _segment_dirs(root) -> list[str]:
    return sorted({d for d, _, files in os.walk(root) if any(f.endswith(".seg") for f in files)})


def _the_log_under(base: str) -> str:
    """The one log directory under ``base``: ``<base>/<16 hex digits of the store's key>``, holding a segment."""
    (found,) = _segment_dirs(base)
    assert os.path.dirname(found) == base, found
    assert re.fullmatch(r"[0-9a-f]{16}", os.path.basename(found)), found
    return found


def test_xdg_cache_home_set(tmp_path):
    _run(tmp_path, XDG_CACHE_HOME=str(tmp_path / "xdg"), HOME=str(tmp_path / "home"))
    _the_log_under(f"{tmp_path}/xdg/spanline")
    assert _segment_dirs(tmp_path / "home") == [] and _segment_dirs(tmp_path / "tmp") == []


def test_xdg_unset_uses_home_dot_cache(tmp_path):
    _run(tmp_path, XDG_CACHE_HOME=None, HOME=str(tmp_path / "home"))
    _the_log_under(f"{tmp_path}/home/.cache/spanline")
    assert _segment_dirs(tmp_path / "tmp") == []


def test_xdg_empty_uses_home_dot_cache(tmp_path):
    _run(tmp_path, XDG_CACHE_HOME="", HOME=str(tmp_path / "home"))
    _the_log_under(f"{tmp_path}/home/.cache/spanline")


def test_home_and_xdg_unset_uses_the_users_home_from_the_password_database(tmp_path):
    home = pwd.getpwuid(os.getuid()).pw_dir
    before = set(_segment_dirs(f"{home}/.cache/spanline")) if os.path.isdir(f"{home}/.cache/spanline") else set()
    _run(tmp_path, XDG_CACHE_HOME=None, HOME=None)
    new = sorted(set(_segment_dirs(f"{home}/.cache/spanline")) - before)
    try:
        assert len(new) == 1 and os.path.dirname(new[0]) == f"{home}/.cache/spanline", new
    finally:
        for directory in new:  # the store is this test's own: so is its log directory in the real cache
            shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def read_only_dir(tmp_path):
    """A read-only tmpfs: unwritable even by root."""
    path = tmp_path / "ro"
    path.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(path)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


def _assert_private_under_tmp(tmp_path) -> None:
    """Whatever its name (a fixed one today, a fresh ``mkdtemp`` after the hardening of issue 25), the fallback
    is under the temp dir, every directory from there down is ours and not writable by others, and the log
    directory itself is 0700. (Today's ``$TMPDIR/spanline-<uid>`` is 0755: ``os.makedirs`` gives only the leaf
    its mode; its content stays closed.)"""
    tmp = str(tmp_path / "tmp")
    (found,) = _segment_dirs(tmp)
    rel = os.path.relpath(found, tmp)
    assert not rel.startswith(".."), found
    path = tmp
    for part in rel.split(os.sep):
        path = os.path.join(path, part)
        st = os.lstat(path)
        assert stat.S_ISDIR(st.st_mode), path
        assert st.st_uid == os.getuid(), path
        assert not st.st_mode & 0o022, (path, oct(st.st_mode))
    assert stat.S_IMODE(os.lstat(found).st_mode) == 0o700, (found, oct(os.lstat(found).st_mode))


@pytest.mark.parametrize("unwritable", ["xdg", "home"])
def test_an_unwritable_cache_falls_back_to_a_private_dir_under_tmpdir(tmp_path, read_only_dir, unwritable):
    if unwritable == "xdg":
        _run(tmp_path, XDG_CACHE_HOME=str(read_only_dir), HOME=str(tmp_path / "home"))
        assert _segment_dirs(tmp_path / "home") == []
    else:
        _run(tmp_path, XDG_CACHE_HOME=None, HOME=str(read_only_dir))
    _assert_private_under_tmp(tmp_path)
