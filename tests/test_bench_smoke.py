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


def test_bench_talks_to_the_one_fake_anthropic_api():
    """The bench measures the SDK against ``spanline.fake_anthropic``, the fake the tests and the demo use, not a
    second fake of its own: answers carry that fake's ids, and no module of the package defines a handler."""
    import pkgutil

    import spanline.bench
    from spanline.bench import CHAT_KWARGS, fake_clients

    client, _, which = fake_clients()
    answer = client.messages.create(**CHAT_KWARGS)
    assert answer.id.startswith("msg_fake_") and answer._request_id.startswith("req_fake_")
    assert "spanline.fake_anthropic" in which
    for info in pkgutil.iter_modules(spanline.bench.__path__, "spanline.bench."):
        if info.name.endswith("__main__"):  # importing it runs the bench
            continue
        module = __import__(info.name, fromlist=["_"])
        assert not [name for name in vars(module) if name.startswith("_fallback")], info.name
