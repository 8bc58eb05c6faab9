"""The assembler builds the same trees whatever the interleaving of concurrent traces' events."""

from __future__ import annotations

import random

import pytest
from spanline.pipeline import events
from spanline.pipeline.assembler import Assembler
from spanline.pipeline.policy import ContentPolicy
from spanline.pipeline.stats import Counters


class Rand(random.Random):
    """A seeded Random whose repr names its seed, so a failing case can be replayed."""

    def __init__(self, seed: int) -> None:
        super().__init__(seed)
        self.seed_value = seed

    def __repr__(self) -> str:
        return f"Rand(seed={self.seed_value})"


def _tree_events(rng: Rand, trace: int, ids) -> tuple[list[bytes], dict[int, int]]:
    """Events of one random trace in a valid order, and the expected parent of every span."""
    out: list[bytes] = []
    parents: dict[int, int] = {}
    root = next(ids)

    def visit(span: int, parent: int, depth: int) -> None:
        parents[span] = parent
        if depth > 0 and rng.random() < 0.4:  # an SDK call: one event, a leaf
            out.append(events.encode(events.ApiCall(trace, span, parent, root, "Messages.create", "messages",
                                                    1, 2, b'{"model": "m"}', b'{"usage": null}')))
            return
        out.append(events.encode(events.SpanStart(trace, span, parent, root, f"s{span}", "CHAIN", 1, b'{"a": 1}')))
        if depth < 3:
            for _ in range(rng.randint(0, 3)):
                visit(next(ids), span, depth + 1)
        out.append(events.encode(events.SpanEnd(trace, span, root, 3, b'"ok"')))

    visit(root, 0, 0)
    return out, parents


@pytest.mark.parametrize("seed", range(20))
def test_interleaved_traces_assemble_to_the_same_trees(seed):
    rng = Rand(seed)
    ids = iter(range(1, 10**6))
    streams, expected = [], {}
    for trace in range(1, rng.randint(2, 12)):
        stream, parents = _tree_events(rng, trace, ids)
        streams.append(stream)
        expected[trace] = parents
    # Interleave, keeping each trace's own order (what one task or thread emits is ordered).
    merged = []
    cursors = [0] * len(streams)
    while any(c < len(s) for c, s in zip(cursors, streams, strict=True)):
        i = rng.choice([i for i, s in enumerate(streams) if cursors[i] < len(s)])
        merged.append(streams[i][cursors[i]])
        cursors[i] += 1

    assembler = Assembler(Counters(), ContentPolicy)
    for raw in merged:
        assembler.add(events.decode(raw))
    units = assembler.take()

    assert len(units) == len(expected), rng
    assert assembler.open_spans == 0, rng
    for unit in units:
        trace_number = int(unit.trace_id[3:19], 16)  # the id's high half (context.otel_trace_id)
        got = {s.span: s.parent for s in unit.spans}
        assert got == expected[trace_number], rng
        roots = [s for s in unit.spans if s.is_trace_root]
        assert len(roots) == 1 and roots[0].attributes["mlflow.traceTag.mlflow.traceName"], rng


def test_a_child_outliving_its_root_is_still_stored():
    assembler = Assembler(Counters(), ContentPolicy)
    for event in [
        events.SpanStart(1, 10, 0, 10, "root", "AGENT", 1),
        events.SpanStart(1, 11, 10, 10, "straggler", "TOOL", 2),
        events.SpanEnd(1, 10, 10, 3),
        events.SpanEnd(1, 11, 10, 4),
    ]:
        assembler.add(event)
    first, late = assembler.take()
    assert [s.name for s in first.spans] == ["root"]
    assert [s.name for s in late.spans] == ["straggler"] and late.trace_id == first.trace_id


def test_an_end_without_its_start_is_counted_not_invented():
    counters = Counters()
    assembler = Assembler(counters, ContentPolicy)
    assembler.add(events.SpanEnd(1, 99, 99, 3))
    assert assembler.take() == []
    assert counters.dropped() == {"orphaned": 1}


def test_open_spans_at_shutdown_are_stored_as_unfinished():
    assembler = Assembler(Counters(), ContentPolicy)
    assembler.add(events.SpanStart(1, 10, 0, 10, "root", "AGENT", 1))
    assembler.add(events.SpanStart(1, 11, 10, 10, "child", "TOOL", 2))
    assembler.close_all()
    (unit,) = assembler.take()
    assert sorted(s.name for s in unit.spans) == ["child", "root"]
    assert all(s.attributes["spanline.unfinished"] == "true" for s in unit.spans)


def _mlflow_trace(trace_id: str, root: int, child: int) -> list[events.Event]:
    """An MLflow-rooted trace: its root, a child of MLflow's, and a spanline SDK call under the child."""
    attrs = {"mlflow.spanType": '"AGENT"', "mlflow.traceRequestId": f'"{trace_id}"'}
    return [
        events.MlflowSpanStart(trace_id, root, 0, 0, "agent", 1, attrs, "1", "", {"mlflow.traceName": "agent"}),
        events.MlflowSpanStart(trace_id, child, root, 0, "tool", 2, attrs),
        events.ApiCall(7, 70, child, 70, "Messages.create", "messages", 3, 4, b'{"model": "m"}', b"{}",
                       ext_trace=trace_id),
        events.MlflowSpanEnd(trace_id, child, root, 0, "tool", 2, attrs, end_ns=5),
        events.MlflowSpanEnd(trace_id, root, 0, 0, "agent", 1, attrs, end_ns=6, status=1),
        events.MlflowTraceEnd(trace_id, "1", 0, 0, "OK", {}, {"mlflow.traceName": "agent"}),
    ]


def test_a_trace_mlflow_roots_is_one_unit_once_its_info_arrives():
    asm = Assembler(Counters(), ContentPolicy)
    trace_id = "tr-" + "ab" * 16
    *spans, info = _mlflow_trace(trace_id, 11, 12)
    for ev in spans:
        asm.add(events.decode(events.encode(ev)))
    assert asm.take() == []  # held: the root ended, its info has not come
    asm.add(events.decode(events.encode(info)))
    (unit,) = asm.take()
    assert unit.mlflow_info is not None and unit.experiment == "1"
    assert sorted(r.name for r in unit.spans) == ["Messages.create", "agent", "tool"]
    assert asm.mlflow_traces == {} and asm.open == {}


def test_a_dead_producers_open_mlflow_trace_is_stored_unfinished():
    asm = Assembler(Counters(), ContentPolicy)
    trace_id = "tr-" + "cd" * 16
    for ev in _mlflow_trace(trace_id, 21, 22)[:3]:  # the root and its child still open
        asm.add(ev)
    asm.close_all()
    (unit,) = asm.take()
    root = next(r for r in unit.spans if r.is_trace_root)
    assert root.attributes["spanline.unfinished"] == "true"
    assert root.attributes["mlflow.traceTag.spanline.cut_short"] == '"unfinished"'
    assert root.attributes["mlflow.traceTag.mlflow.traceName"] == '"agent"'
    assert len(unit.spans) == 3


def test_held_mlflow_traces_are_bounded(monkeypatch):
    """Info events lost (a full queue): past the bound, the oldest trace is stored as far as it is."""
    from spanline.pipeline import assembler

    monkeypatch.setattr(assembler, "MAX_HELD_TRACES", 3)
    asm = Assembler(Counters(), ContentPolicy)
    for n in range(5):
        for ev in _mlflow_trace(f"tr-{n:032x}", 100 + n, 200 + n)[:-1]:  # every info lost
            asm.add(ev)
    assert len(asm.mlflow_traces) == 3
    assert sorted(u.trace_id for u in asm.take()) == [f"tr-{0:032x}", f"tr-{1:032x}"]
