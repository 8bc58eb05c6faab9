"""The segment format: what goes in comes out, damage is skipped and counted, a newer format is refused."""

from __future__ import annotations

import os
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from spanline.pipeline import appender, eventlog


def _appender(directory, segment_bytes=1 << 20, policy=None):
    return appender.Appender(str(directory), {"pid": os.getpid(), "tracking_uri": "sqlite:///x.db"},
                             segment_bytes, fsync=False, policy=policy or {"capture_content": "full"})


def _records(directory):
    """Every record of every segment, in order: (segment seq, kind, payload)."""
    out = []
    for name in sorted(os.listdir(directory)):
        parsed = eventlog.parse_name(name)
        if parsed:
            _header, result = eventlog.scan(os.path.join(directory, name))
            out.extend((parsed[1], kind, payload) for _, kind, payload in result.records)
    return out


@settings(max_examples=40, deadline=None)
@given(batches=st.lists(st.lists(st.binary(max_size=300), max_size=20), max_size=8),
       segment_bytes=st.integers(4096, 20_000))
def test_events_round_trip_through_segments_in_order(tmp_path_factory, batches, segment_bytes):
    directory = tmp_path_factory.mktemp("log")
    log = _appender(directory, segment_bytes)
    for batch in batches:
        log.append(b"".join(eventlog.event_frame(e) for e in batch), len(batch))
    log.close()
    got = [payload for _, kind, payload in _records(directory) if kind == eventlog.EVENT]
    assert got == [e for batch in batches for e in batch]
    seqs = [seq for seq, kind, _ in _records(directory) if kind == eventlog.SEAL]
    assert seqs == list(range(log.seq)), "every rotated segment is sealed, the open one is not"
    for name in os.listdir(directory):
        assert os.stat(directory / name).st_mode & 0o777 == 0o600, "segments hold prompts: owner only"


def test_the_directory_is_private(tmp_path):
    directory = tmp_path / "log"
    eventlog.ensure_dir(str(directory))
    assert os.stat(directory).st_mode & 0o777 == 0o700
    os.chmod(directory, 0o755)
    eventlog.ensure_dir(str(directory))
    assert os.stat(directory).st_mode & 0o777 == 0o700, "a too-open directory is tightened"


def test_every_segment_starts_with_the_policy_in_force(tmp_path):
    log = _appender(tmp_path, 4096, {"capture_content": "full"})
    log.append(eventlog.event_frame(b"before"), 1)
    log.append(log.set_policy({"capture_content": "metadata"}), 0)
    log.append(eventlog.event_frame(b"x" * 5000), 1)  # rotates
    log.close()
    first_of_each = {}
    for seq, kind, payload in _records(tmp_path):
        if kind == eventlog.POLICY:
            first_of_each.setdefault(seq, payload)
    assert first_of_each[0] == b'{"capture_content": "full"}'
    assert first_of_each[1] == b'{"capture_content": "metadata"}'


def _one_segment(tmp_path, events):
    log = _appender(tmp_path)
    log.append(b"".join(eventlog.event_frame(e) for e in events), len(events))
    log.close()
    (name,) = [n for n in os.listdir(tmp_path) if n.endswith(".seg")]
    return str(tmp_path / name)


def test_a_torn_tail_is_not_read_as_a_record(tmp_path):
    path = _one_segment(tmp_path, [b"first", b"second", b"third"])
    size = os.path.getsize(path)
    os.truncate(path, size - 3)  # the producer died in the middle of its last append
    _, result = eventlog.scan(path)
    assert [p for _, k, p in result.records if k == eventlog.EVENT] == [b"first", b"second"]
    assert result.partial and result.corrupt == 0


@pytest.mark.parametrize("where", ["payload", "length", "checksum"])
def test_a_flipped_byte_skips_that_record_only_and_counts_it(tmp_path, where):
    events = [b"alpha" * 10, b"bravo" * 10, b"charlie" * 10]
    path = _one_segment(tmp_path, events)
    _header, clean = eventlog.scan(path)
    second = [off for off, kind, _ in clean.records if kind == eventlog.EVENT][1]
    at = {"payload": second + 9 + 20, "length": second + 1, "checksum": second + 5}[where]
    with open(path, "r+b") as f:
        f.seek(at)
        byte = f.read(1)
        f.seek(at)
        f.write(bytes([byte[0] ^ 0x41]))
    _, result = eventlog.scan(path)
    assert [p for _, k, p in result.records if k == eventlog.EVENT] == [events[0], events[2]]
    assert result.corrupt == 1


def test_a_newer_format_version_is_refused_with_a_clear_error(tmp_path):
    path = _one_segment(tmp_path, [b"x"])
    with open(path, "r+b") as f:
        f.seek(8)
        f.write(struct.pack("<H", eventlog.FORMAT_VERSION + 1))
    with pytest.raises(eventlog.NewerFormatError, match="newer than this spanline"):
        eventlog.scan(path)
    assert os.path.exists(path)


def test_a_forked_copy_of_the_appender_never_writes_the_parents_segment(tmp_path):
    log = _appender(tmp_path)
    log.append(eventlog.event_frame(b"parent"), 1)
    pid = os.fork()
    if pid == 0:  # the child drops its copy of the descriptor; the parent's file and lock are untouched
        log.abandon_after_fork()
        os._exit(0 if log.fd == -1 else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    log.append(eventlog.event_frame(b"after"), 1)
    log.close()
    assert [p for _, k, p in _records(tmp_path) if k == eventlog.EVENT] == [b"parent", b"after"]
