"""`spanline bench` runs end to end (one small scenario), so the benchmark cannot rot unnoticed."""

from __future__ import annotations

import os
import subprocess
import sys


def test_bench_worker_throughput_scenario_runs():
    env = {**os.environ, "MLFLOW_MODEL_CATALOG_URI": ""}
    done = subprocess.run(
        [sys.executable, "-m", "spanline.bench", "--quick", "--scenarios", "TW", "--rounds", "1", "--no-progress"],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    table = done.stdout
    assert "## Worker throughput" in table
    assert "error" not in table.lower(), table
    assert "| sqlite (in-process) | 100 |" in table


def test_untraced_twin_runs_the_sdk_as_shipped(traced, experiment):
    """The caller-path benchmark compares a traced client with its untraced twin while the patches stay in
    place: the twin must record nothing and answer as the SDK does, and the traced client must still record."""
    from helpers import traces_in

    import spanline
    from spanline.bench import CHAT_KWARGS, fake_clients, interleaved_overhead, untraced_twin

    client = fake_clients()[0]
    twin = untraced_twin(fake_clients()[0])
    answer = twin.messages.create(**CHAT_KWARGS)
    assert answer.content[0].text == client.messages.create(**CHAT_KWARGS).content[0].text
    assert answer._request_id
    result = interleaved_overhead(client, twin, blocks=2, calls=3)
    assert spanline.flush(timeout=60)
    assert len(traces_in(experiment)) == 1 + 2 * 3  # the traced client's calls only
    assert len(result["diff_ns"]) == 2 and len(result["samples_ns"][False]) == 6
