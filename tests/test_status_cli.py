"""`spanline status` as a newcomer runs it: it says which tracking URI and log directory it looked at, and
creates nothing; each default log directory names its store in `tracking-uri.txt` (a password masked), and
`spanline status --all` lists them. Real processes, a real sqlite store, HOME and XDG_CACHE_HOME set by the test."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

APP = """
import spanline
from spanline.testing import FakeAnthropicAPI
spanline.autolog()
FakeAnthropicAPI().client().messages.create(model="claude-fake-1", max_tokens=8,
                                            messages=[{"role": "user", "content": "hi"}])
spanline.shutdown()
"""


def _env(tmp_path, uri: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SPANLINE_", "MLFLOW_TRACKING"))}
    env.update(XDG_CACHE_HOME=str(tmp_path / "cache"), HOME=str(tmp_path / "home"), MLFLOW_TRACKING_URI=uri,
               MLFLOW_MODEL_CATALOG_URI="")
    return env


def _status(tmp_path, env: dict[str, str], *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "spanline.cli", "status", *args], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def _tree(root) -> list[str]:
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, files in os.walk(root) for f in [*files, ""])


def test_status_names_what_it_read_and_creates_nothing(tmp_path):
    uri = f"sqlite:///{tmp_path}/store.db"
    env = _env(tmp_path, uri)
    out = _status(tmp_path, env)
    assert f"tracking URI:  {uri}   (from $MLFLOW_TRACKING_URI)" in out
    assert f"{tmp_path}/cache/spanline/" in out and "does not exist" in out
    assert not (tmp_path / "cache").exists() and not (tmp_path / "store.db").exists()

    subprocess.run([sys.executable, "-c", APP], env=env, cwd=tmp_path, check=True, timeout=240)
    (directory,) = (tmp_path / "cache" / "spanline").iterdir()
    assert (directory / "tracking-uri.txt").read_text() == uri + "\n"
    before = _tree(directory)
    out = _status(tmp_path, env)
    assert f"log directory: {directory}" in out and "writer:        not running" in out
    # the writer stored the trace into a fresh sqlite store: the bulk path (pipeline/bulkstore.py), and why
    assert "store path:    bulk (mlflow " in out and "1 traces in bulk" in out
    assert _tree(directory) == before, "status only looks"


def test_status_all_lists_each_store_with_its_password_masked(tmp_path):
    first = f"sqlite:///{tmp_path}/a.db"
    env = _env(tmp_path, first)
    subprocess.run([sys.executable, "-c", APP], env=env, cwd=tmp_path, check=True, timeout=240)
    # A second store, named by a URI with a password: the directory is made for it (as an app's first append
    # would) without reaching the store.
    secret = "postgresql://app:hunter2@db.internal:5432/mlflow"
    subprocess.run([sys.executable, "-c", f"from spanline.pipeline import logdir; logdir.default_dir({secret!r})"],
                   env=env, check=True, timeout=60)
    out = _status(tmp_path, env, "--all")
    assert f"log directories in {tmp_path}/cache/spanline: 2" in out
    assert first in out and "postgresql://app:***@db.internal:5432/mlflow" in out
    assert "hunter2" not in out
    for d, _, files in os.walk(tmp_path / "cache"):
        for f in files:
            if (Path(d) / f).is_file():  # not the writer's socket
                assert b"hunter2" not in (Path(d) / f).read_bytes(), f
