"""The version matrix: the compatibility subset (``pytest -m compat``) on each supported anthropic / MLflow / Python.

``nox -db uv`` (or ``.ci/run``). Each session is a venv of its own (uv, reused between runs) with the versions
pinned below and spanline installed from this checkout. Not the full cross product: every axis value appears
in at least one session, and the floors together with both SDK majors. A missing interpreter is a skip that
says so, never a pass. Each session leaves ``.nox/_reports/<session>.xml`` (junit) and ``<session>.json``
(what was installed) for ``.ci/matrix_summary.py``.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
from pathlib import Path

import nox

nox.options.default_venv_backend = "uv"
nox.options.reuse_existing_virtualenvs = True
nox.options.error_on_missing_interpreters = False

REPORTS = Path(__file__).parent / ".nox" / "_reports"

# name -> (python, anthropic requirement, mlflow version). The floors here are pyproject.toml's lower bounds.
# Four sessions cover every axis value (CI's budget for the matrix is 10 minutes on a 2-core machine): the
# oldest SDK on the oldest Python; the last 1.x; SDK 2.0; the newest SDK with its aiohttp backend on the newest
# Python, with the newest MLflow. MLflow's floor is 3.17.2: 3.9.0 and 3.11.1 failed here, and anthropic 1.0.0 too
# (README, "Supported versions"), so the floors are MLflow 3.17.2 and the last 1.x SDK, which the floor session
# runs on 3.10. Each MLflow here is one the bulk path's gate lists (pipeline/bulkstore.py, VERIFIED): its
# conformance test runs in every session.
MATRIX: dict[str, tuple[str, str, str]] = {
    "floor": ("3.10", "anthropic==1.17.0", "3.17.2"),
    "last-1.x": ("3.11", "anthropic==1.17.0", "3.17.2"),
    "sdk-2.0": ("3.11", "anthropic==2.0.0", "3.17.2"),
    "py3.13-aiohttp": ("3.13", "anthropic[aiohttp]==2.17.0", "3.18.0"),
}


def _interpreter(version: str) -> str | None:
    """A Python ``version`` interpreter: on PATH, or one of pyenv's (its shims answer only when selected)."""
    found = shutil.which(f"python{version}")
    if found:
        try:
            subprocess.run([found, "-c", ""], check=True, capture_output=True)
            return found
        except (OSError, subprocess.CalledProcessError):
            pass
    root = os.environ.get("PYENV_ROOT") or os.path.expanduser("~/.pyenv")
    candidates = sorted(glob.glob(f"{root}/versions/{version}.*/bin/python{version}"))
    return candidates[-1] if candidates else None


def _define(name: str, python: str, anthropic: str, mlflow: str) -> None:
    interpreter = _interpreter(python)

    def compat(session: nox.Session) -> None:
        REPORTS.mkdir(parents=True, exist_ok=True)
        versions = {"session": name, "python": python, "anthropic": anthropic.split("==")[1], "mlflow": mlflow,
                    "aiohttp": "[aiohttp]" in anthropic}
        report = REPORTS / f"{name}.xml"
        report.unlink(missing_ok=True)
        (REPORTS / f"{name}.json").write_text(json.dumps({**versions, "skipped_because": None}))
        if interpreter is None:
            reason = f"Python {python} not found on this machine (PATH or pyenv)"
            (REPORTS / f"{name}.json").write_text(json.dumps({**versions, "skipped_because": reason}))
            session.skip(reason)
        # Compiled at install: else each process's first import compiles MLflow (~30 s here), and the writer
        # process a test starts misses the test's flush deadline.
        session.install("-e", ".[test]", anthropic, f"mlflow=={mlflow}", env={"UV_COMPILE_BYTECODE": "1"})
        # The resolver must have honoured the pins (a session that silently ran other versions proves nothing).
        session.run("python", "-c", (
            "import sys, platform, anthropic, mlflow;"
            f"want = ({anthropic.split('==')[1]!r}, {mlflow!r}, {python!r});"
            "got = (anthropic.__version__, mlflow.__version__, '.'.join(platform.python_version_tuple()[:2]));"
            "print('installed: anthropic %s, mlflow %s, Python %s' % got);"
            "sys.exit(0 if got == want else 'not the pinned versions: %s != %s' % (got, want))"
        ), silent=False)
        # SPANLINE_COMPAT_SESSION: tests/conftest.py runs one parameter per seam of the parametrised compat tests.
        env = {"MLFLOW_MODEL_CATALOG_URI": "", "SPANLINE_COMPAT_SESSION": name}
        # The real `mlflow server` variant of the trace metadata test starts a server (~60 s of a session's ~4 min
        # on a loaded 2-core machine): the main suite runs it; the sessions check the same rows on sqlite.
        session.run("pytest", "-q", "-m", "compat", f"--junitxml={report}",
                    "--deselect", "tests/test_interop.py::test_trace_metadata_is_what_mlflow_writes[server]",
                    *session.posargs, env=env)

    compat.__doc__ = f"Python {python}, {anthropic}, mlflow=={mlflow}: pytest -m compat"
    nox.session(name=name, python=interpreter or False, venv_backend="uv" if interpreter else "none")(compat)


for _name, _spec in MATRIX.items():
    _define(_name, *_spec)
