"""Arbitrary bytes as segments and checkpoints in a log directory (issue 25): the writer (``--once``) never
crashes, never runs past a bound, and never reads a file outside the directory (a link to a valid segment
outside is in the mix: nothing of it may reach the store)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from spanline.pipeline import eventlog
from spanline.pipeline.writer import Writer

_OUTSIDE_MARK = "outside-the-directory"


def _frames(draw_bytes: list[tuple[int, bytes]]) -> bytes:
    out = b""
    for kind, payload in draw_bytes:
        out += eventlog.frame(kind, payload)
    return out


_kinds = st.sampled_from([eventlog.EVENT, eventlog.POLICY, eventlog.TICK, eventlog.SEAL])
_records = st.lists(st.tuples(_kinds, st.binary(max_size=64)), max_size=8)
_header = st.one_of(
    st.just(eventlog.encode_header({"producer_id": "x", "pid": 1})),
    st.dictionaries(st.text(max_size=8), st.one_of(st.text(max_size=8), st.integers()), max_size=3).map(
        lambda d: eventlog.encode_header(d)
    ),
    st.binary(max_size=40),
)
_segment = st.tuples(_header, _records, st.binary(max_size=32), st.integers(0, 3)).map(
    lambda t: (t[0] + _frames(t[1]) + t[2])[: None if t[3] else max(0, len(t[0]) + 3)]
)
_names = st.tuples(st.integers(1, 2**64), st.integers(1, 99999), st.integers(0, 3)).map(
    lambda t: eventlog.segment_name(f"{t[0]:x}-{t[1]}", t[2])
)
_files = st.dictionaries(_names, st.tuples(_segment, st.one_of(st.none(), st.binary(max_size=24))), max_size=4)


def _outside_segment(root: str) -> str:
    """A valid segment outside the log directory, whose span names carry a mark."""
    from spanline.pipeline import events

    path = os.path.join(root, "outside.seg")
    body = eventlog.encode_header({"producer_id": "18e0000000000009-9", "pid": 9})
    body += eventlog.event_frame(events.encode(events.SpanStart(trace=1, span=7, parent=0, root=7,
                                                                name=_OUTSIDE_MARK, span_type="AGENT", start_ns=1)))
    body += eventlog.event_frame(events.encode(events.SpanEnd(trace=1, span=7, root=7, end_ns=2)))
    with open(path, "wb") as f:
        f.write(body + _OUTSIDE_MARK.encode())
    return path


class _Hang(Exception):
    pass


def _alarm(*_):
    raise _Hang


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(files=_files, link_outside=st.booleans())
def test_arbitrary_segments_and_checkpoints_never_crash_hang_or_leave_the_directory(files, link_outside):
    root = tempfile.mkdtemp(prefix="spl-fuzz-")
    try:
        directory = os.path.join(root, "log")
        eventlog.ensure_dir(directory)
        outside = _outside_segment(root)
        for name, (content, checkpoint) in files.items():
            with open(os.path.join(directory, name), "wb") as f:
                f.write(content)
            if checkpoint is not None:
                with open(os.path.join(directory, name + eventlog.CHECKPOINT_SUFFIX), "wb") as f:
                    f.write(checkpoint)
        if link_outside:
            os.symlink(outside, os.path.join(directory, eventlog.segment_name("18e0000000000009-9", 0)))
            os.symlink(outside + ".ckpt", os.path.join(directory, "status.json.tmp"))
        stored = []
        writer = Writer(directory, once=True, sink=stored.extend, idle_exit=0)
        old = signal.signal(signal.SIGALRM, _alarm)
        signal.alarm(20)  # the bound: a round over these few KB takes milliseconds
        try:
            assert writer.run() == 0
        except _Hang:
            raise AssertionError("the writer ran past its bound") from None
        finally:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, old)
        assert not any(_OUTSIDE_MARK in json.dumps([s.name for s in u.spans]) for u in stored)
        assert not os.path.exists(outside + ".ckpt"), "a link was written through"
        with open(outside, "rb") as f:
            assert f.read().endswith(_OUTSIDE_MARK.encode())
    finally:
        shutil.rmtree(root, ignore_errors=True)
