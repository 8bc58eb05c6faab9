"""The README's promises to a newcomer, run as the newcomer would: its Use example, copied as printed, runs
offline in a fresh interpreter and stores the trace it describes; its view command names the store the
example wrote and a program the set-up installs."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from logwriters import stop_writers_under
from mlflow import MlflowClient

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
# The same first call, as the docs site's getting-started page shows it.
GETTING_STARTED = ROOT / "docs" / "getting-started.md"


def _section(title: str, page: Path = README) -> str:
    text = page.read_text(encoding="utf-8")
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, flags=re.M | re.S)
    assert match, f"no '## {title}' section in {page.name}"
    return match.group(1)


def _block(title: str, language: str, page: Path = README) -> str:
    blocks = re.findall(rf"^```{language}\n(.*?)^```", _section(title, page), flags=re.M | re.S)
    assert len(blocks) == 1, f"expected one {language} block under '## {title}' in {page.name}, found {len(blocks)}"
    return blocks[0]


@pytest.mark.parametrize(
    ("page", "title"), [(README, "Use"), (GETTING_STARTED, "A first traced call, offline")], ids=["readme", "docs"]
)
def test_use_example_runs_offline_as_written(tmp_path: Path, page: Path, title: str) -> None:
    """The example, unchanged, with no key and no network: exit 0, the fake's answer printed, and in the
    store it names one trace: the ``agent`` span (AGENT) with the SDK call under it (CHAT_MODEL, tokens)."""
    code = _block(title, "python", page)
    cache = tmp_path / "cache"
    env = {k: v for k, v in os.environ.items() if k not in ("ANTHROPIC_API_KEY", "MLFLOW_TRACKING_URI")}
    env |= {"MLFLOW_MODEL_CATALOG_URI": "", "XDG_CACHE_HOME": str(cache), "PYTHONIOENCODING": "utf-8"}
    try:
        proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=120)
    finally:
        stop_writers_under(str(cache))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Hello! You said: Hello, Claude" in proc.stdout

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("agents")
    assert experiment is not None
    [trace] = client.search_traces(locations=[experiment.experiment_id])
    spans = {s.name: s for s in trace.data.spans}
    assert set(spans) == {"agent", "Messages.create"}
    root, call = spans["agent"], spans["Messages.create"]
    assert (root.span_type, root.parent_id) == ("AGENT", None)
    assert (call.span_type, call.parent_id) == ("CHAT_MODEL", root.span_id)
    assert call.get_attribute("mlflow.chat.tokenUsage")["output_tokens"] > 0
    assert root.outputs == "Hello! You said: Hello, Claude"


def test_view_command_opens_the_examples_store() -> None:
    """The command to view traces is a program in the venv the set-up makes (not a bare ``mlflow`` that is not
    on PATH), and it reads the store the Use example writes to."""
    [command] = [line for line in _block("View the traces", "bash").splitlines() if line.strip()]
    argv = shlex.split(command)
    assert argv[0] == ".venv/bin/mlflow" and argv[1] == "ui"
    assert (Path(sys.prefix) / "bin" / "mlflow").exists()
    store = argv[argv.index("--backend-store-uri") + 1]
    assert f'mlflow.set_tracking_uri("{store}")' in _block("Use", "python")
