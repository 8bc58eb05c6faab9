"""An unreachable store is visible to the application: what it simulates is a wrong or down tracking server
(``http://127.0.0.1:1``, nothing listens): calls return as always, and within a few seconds of the writer's
first failed write ``stats().last_error`` names the refused connection and the URL, with one warning line on
the ``spanline`` logger."""

from __future__ import annotations

import os

from helpers import run_script
from logwriters import stop_writers_under

APP = """
import time, spanline
from spanline.fake_anthropic import FakeAnthropicAPI
spanline.autolog()
FakeAnthropicAPI().client().messages.create(model="claude-fake-1", max_tokens=8,
                                            messages=[{"role": "user", "content": "hi"}])
start = time.monotonic()
while time.monotonic() - start < 15 and not spanline.stats().last_error:
    spanline.flush(1)
print("LAST_ERROR", spanline.stats().last_error)
"""


def test_last_error_names_the_refused_connection(tmp_path):
    cache = str(tmp_path / "cache")
    os.makedirs(cache)
    try:
        done = run_script(APP, "http://127.0.0.1:1", {"XDG_CACHE_HOME": cache, "SPANLINE_SHUTDOWN_TIMEOUT": "1"})
    finally:
        stop_writers_under(cache)
    assert done.returncode == 0, done.stderr[-3000:]
    (line,) = [line for line in done.stdout.splitlines() if line.startswith("LAST_ERROR")]
    assert "cannot reach http://127.0.0.1:1: connection refused" in line, line
    warnings = [w for w in done.stderr.splitlines() if "traces are not being stored" in w]
    assert len(warnings) == 1, done.stderr[-3000:]
