"""A/B of the caller's recording step (``patches/record.py`` ``record``; ``patches/messages.py``
``_record`` at revisions before the call skeleton moved): a git revision's version against
the working tree's, in one process, interleaved; the minimum thread CPU time per call over 40 blocks of 2,000
calls (the minimum is what contention on a shared machine cannot inflate). The queue append is stubbed out:
this measures building the event. Usage: ``python benchmarks/ab_record_step.py [REV]`` (default ``HEAD~1``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import types
import warnings

os.environ.setdefault("MLFLOW_MODEL_CATALOG_URI", "")


def main(rev: str) -> None:
    import spanline.patches.record as new
    from anthropic.resources.messages import Messages
    from spanline.patches import original
    from spanline.patches.http_capture import inflight

    import spanline
    from spanline import _runtime
    from spanline.testing import FakeAnthropicAPI

    try:
        src, name = subprocess.check_output(["git", "show", f"{rev}:patches/record.py"]).decode(), "record"
    except subprocess.CalledProcessError:
        src, name = subprocess.check_output(["git", "show", f"{rev}:patches/messages.py"]).decode(), "_record"
    old = types.ModuleType("spanline.patches._messages_base")
    old.__package__ = "spanline.patches"
    exec(compile(src, "messages_base.py", "exec"), old.__dict__)

    spanline.autolog()
    client = FakeAnthropicAPI(record_requests=False).client()
    kwargs = {"model": "claude-sonnet-4-5", "max_tokens": 64, "messages": [{"role": "user", "content": "hello"}]}
    slot: list = []
    token = inflight.set(slot)
    result = original(Messages, "create")(client.messages, **kwargs)  # the SDK's own create: one real exchange
    inflight.reset(token)
    _runtime.pipeline.emit = lambda event: None  # measure building the event, not the queue
    best = {"base": float("inf"), "branch": float("inf")}
    pairs = [("base", getattr(old, name)), ("branch", new.record)]
    for block in range(40):
        for label, record in pairs if block % 2 == 0 else pairs[::-1]:
            started = time.thread_time_ns()
            for _ in range(2000):
                record(client.messages, kwargs, None, 0, slot, result)
            best[label] = min(best[label], (time.thread_time_ns() - started) / 2000)
    spanline.autolog(disable=True)
    print(f"{rev}: {best['base']:.0f} ns, working tree: {best['branch']:.0f} ns, "
          f"difference {best['branch'] - best['base']:+.0f} ns per call")


if __name__ == "__main__":
    warnings.simplefilter("ignore")
    main(sys.argv[1] if len(sys.argv) > 1 else "HEAD~1")
