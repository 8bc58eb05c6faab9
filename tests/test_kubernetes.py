"""A pod's termination with the writer as a native sidecar (deploy/kubernetes.yaml, its commands parsed here).

What it simulates: the app and ``spanline writer`` share an ``emptyDir``; Kubernetes sends the app SIGTERM (it
has no handler: it dies at once), then the sidecar SIGTERM, and deletes the volume after the grace period. What
must hold: the writer drains (it stores until every producer is gone and all they appended is stored) and
exits 0 within its grace: every one of the app's 2,000 traces is in the store.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import yaml
from helpers import APP, app_env, stored_traces

MANIFEST = Path(__file__).resolve().parent.parent / "deploy" / "kubernetes.yaml"
LOG_MOUNT = "/var/spanline/log"

# The app: the calls, then it idles as a service does, once the worker has appended them (SIGTERM then).
SERVICE = APP + """
import threading
assert spanline._runtime.pipeline.flush(120, wait_for_store=False)
print("ready", flush=True)
threading.Event().wait()
"""


def _pod() -> tuple[list[str], dict[str, str]]:
    """The sidecar's command and the app's environment, from the manifest."""
    spec = yaml.safe_load(MANIFEST.read_text())["spec"]["template"]["spec"]
    (sidecar,) = spec["initContainers"]
    assert sidecar["restartPolicy"] == "Always", "a native sidecar: stopped after the app"
    assert any(v.get("emptyDir") is not None for v in spec["volumes"])
    (app,) = spec["containers"]
    return sidecar["command"], {e["name"]: e["value"] for e in app["env"]}


def _wait_line(proc: subprocess.Popen, text: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 1.0)
        if ready:
            line = proc.stdout.readline()
            if line.strip() == text:
                return
            if not line and proc.poll() is not None:
                break
    raise AssertionError(f"no {text!r} from the app")


def test_pod_termination_with_a_sidecar_writer(tmp_path):
    uri = f"sqlite:///{tmp_path}/store.db"
    log_dir = str(tmp_path / "emptydir")
    os.makedirs(log_dir, mode=0o700)
    command, pod_env = _pod()
    assert command[:2] == ["spanline", "writer"]
    binary = os.path.join(os.path.dirname(sys.executable), "spanline")
    writer_cmd = [binary, *(log_dir if arg == LOG_MOUNT else arg for arg in command[1:])]
    # The manifest's grace (25 s) is for a pod's own CPU; on this shared 2-core machine sqlite takes 2,000 traces
    # in ~30-60 s, so the test gives the same drain more time (it waits on the writer's exit, not on a clock).
    writer_cmd[writer_cmd.index("--grace") + 1] = "240"
    pod_env = {k: (log_dir if v == LOG_MOUNT else v) for k, v in pod_env.items() if k != "MLFLOW_TRACKING_URI"}
    env = app_env(uri, "pod", 2000, **pod_env)
    with open(tmp_path / "w.log", "w") as log:
        writer = subprocess.Popen(writer_cmd, env=env, stdout=subprocess.DEVNULL, stderr=log)
    app = subprocess.Popen([sys.executable, "-c", textwrap.dedent(SERVICE)], env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.DEVNULL, text=True)
    try:
        _wait_line(app, "ready", 300)
        app.send_signal(signal.SIGTERM)  # the pod is terminated: the app first
        assert app.wait(30) == -signal.SIGTERM
        writer.send_signal(signal.SIGTERM)  # then the sidecar
        assert writer.wait(300) == 0, (tmp_path / "w.log").read_text()[-3000:]
    finally:
        for proc in (app, writer):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    stored = len(stored_traces(uri, "pod"))
    assert stored == 2000, (stored, (tmp_path / "w.log").read_text()[-3000:])
