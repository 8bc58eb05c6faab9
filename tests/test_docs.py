"""The docs site builds with ``mkdocs build --strict``: every page in the nav, every link and anchor found,
every API reference entry collected from the docstrings. Needs the ``docs`` extra; CI installs it and also runs
the build itself (``.ci/run``), so a skip here never hides a broken site there."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_docs_build_strictly(tmp_path: Path) -> None:
    pytest.importorskip("mkdocs", reason="the docs extra is not installed: pip install -e '.[docs]'")
    pytest.importorskip("mkdocstrings_handlers.python", reason="the docs extra is not installed")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "MLFLOW_MODEL_CATALOG_URI": ""}
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    reference = (tmp_path / "site" / "reference" / "index.html").read_text(encoding="utf-8")
    assert 'id="spanline.autolog"' in reference and 'id="spanline.testing.FakeAnthropicAPI"' in reference


def test_testing_page_example_runs_as_printed() -> None:
    """docs/testing.md's example, the first thing a user copies into a test of their own, runs unchanged
    (its asserts included) in a fresh interpreter, offline."""
    import re

    text = (ROOT / "docs" / "testing.md").read_text(encoding="utf-8")
    [code] = re.findall(r"^```python\n(.*?)^```", text, flags=re.M | re.S)
    env = {k: v for k, v in os.environ.items() if k != "ANTHROPIC_API_KEY"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("http://127.0.0.1:")


def test_the_ui_page_shows_one_screenshot_of_each_surface_the_browser_test_opens() -> None:
    """docs/ui.md shows the browser test's screenshots (copied into docs/img/ui/): one per surface it checks,
    and the trace list; none that the test does not take."""
    import re

    from browser_surfaces import CHECKS, screenshot_name

    expected = {screenshot_name(name) for name in [*CHECKS, "trace list"]}
    page = (ROOT / "docs" / "ui.md").read_text(encoding="utf-8")
    shown = re.findall(r"!\[[^\]]*\]\(img/ui/([^)]+)\)", page)
    assert sorted(shown) == sorted(expected), set(shown) ^ expected
    assert {p.name for p in (ROOT / "docs" / "img" / "ui").glob("*.png")} == expected
