"""When a storage node writes a new page image (storage_node/healer.py, plan_coalescing).

A new image rewrites a whole PG, so it must be worth it: a PG coalesces when its records weigh as
much as its image, when copying every record that pins an old log file forward would exceed the
copy budget (then the PGs pinning the most bytes coalesce), or when the node holds too much
altogether. Every other pinned record is copied forward, which costs only its bytes."""

from __future__ import annotations

from aurora_db.constants import PAGES_PER_PG
from storage_node import healer as healer_module
from storage_node.healer import plan_coalescing
from storage_node.log_file import RecordEntry
from storage_node.segment import Segment
from tests.record_builder import RecordBuilder

VALUE_BYTES = 100


def segments_with_records(counts: dict[int, int]) -> tuple[dict[int, Segment], dict[int, list[int]]]:
    """pg -> a segment holding `count` inserts of about VALUE_BYTES each; and pg -> their LSNs."""
    builder = RecordBuilder()
    segments, lsns = {}, {}
    for pg, count in counts.items():
        page_id = pg * PAGES_PER_PG
        records = [builder.heap_init(page_id)] + [builder.heap_insert(page_id, ["x" * VALUE_BYTES]) for _ in range(count)]
        segment = segments[pg] = Segment(pg)
        result = segment.add([RecordEntry(r, *r.sealed()) for r in records])
        assert result.added == count + 1
        lsns[pg] = [r.lsn for r in records]
    return segments, lsns


def test_pinned_records_are_copied_forward_while_they_fit_the_budget(monkeypatch):
    monkeypatch.setattr(healer_module, "COALESCE_RECORDS_MIN", 10**9)  # never "worth" here
    segments, lsns = segments_with_records({0: 50, 1: 50, 2: 50})
    horizon = max(max(v) for v in lsns.values())
    pins = {pg: {1: lsns[pg]} for pg in (0, 1, 2)}
    plan = plan_coalescing(segments, horizon, pins, copy_bytes_max=10**9, held_bytes_max=10**9)
    assert plan.coalesce == [], "everything fits: copy, do not rewrite images"
    two_and_a_half_pgs = 2.5 * segments[1].held_bytes
    plan = plan_coalescing(segments, horizon, pins, copy_bytes_max=two_and_a_half_pgs, held_bytes_max=10**9)
    assert len(plan.coalesce) == 1 and set(plan.reasons.values()) == {"pins"}
    plan = plan_coalescing(segments, horizon, pins, copy_bytes_max=0, held_bytes_max=10**9)
    assert sorted(plan.coalesce) == [0, 1, 2]


def test_the_pg_pinning_the_most_bytes_coalesces_first(monkeypatch):
    monkeypatch.setattr(healer_module, "COALESCE_RECORDS_MIN", 10**9)
    segments, lsns = segments_with_records({0: 10, 1: 200, 2: 30})
    horizon = max(max(v) for v in lsns.values())
    pins = {pg: {1: lsns[pg]} for pg in (0, 1, 2)}
    small = sum(s.held_bytes for pg, s in segments.items() if pg != 1)
    plan = plan_coalescing(segments, horizon, pins, copy_bytes_max=small, held_bytes_max=10**9)
    assert plan.coalesce == [1]


def test_a_node_holding_too_much_coalesces_its_largest_holders(monkeypatch):
    monkeypatch.setattr(healer_module, "COALESCE_RECORDS_MIN", 10**9)
    segments, lsns = segments_with_records({0: 10, 1: 200, 2: 100})
    horizon = max(max(v) for v in lsns.values())
    held = {pg: s.held_bytes for pg, s in segments.items()}
    plan = plan_coalescing(segments, horizon, {}, copy_bytes_max=10**9, held_bytes_max=held[0] + held[2])
    assert plan.coalesce == [1] and plan.reasons == {1: "memory"}
    plan = plan_coalescing(segments, horizon, {}, copy_bytes_max=10**9, held_bytes_max=held[0])
    assert plan.coalesce == [1, 2]


def test_records_weighing_as_much_as_the_image_coalesce_and_nothing_above_the_horizon_does(monkeypatch):
    monkeypatch.setattr(healer_module, "COALESCE_RECORDS_MIN", 20)
    segments, lsns = segments_with_records({0: 10, 1: 40})
    horizon = max(max(v) for v in lsns.values())
    plan = plan_coalescing(segments, horizon, {}, copy_bytes_max=10**9, held_bytes_max=10**9)
    assert plan.reasons == {1: "worth"}, "an empty image: any 20 records are worth it"
    plan = plan_coalescing(segments, 0, {pg: {1: v} for pg, v in lsns.items()}, copy_bytes_max=0, held_bytes_max=0)
    assert plan.coalesce == [], "nothing at or below the horizon: nothing to coalesce, whatever the pressure"
