"""When a storage node writes a new page image (storage_node/healer.py, plan_coalescing).

A new image rewrites a whole PG, so it must be worth it: a PG coalesces when its records weigh as
much as its image, or when the node holds too much altogether (the largest holders first). An old
log file that is mostly garbage has its live records copied forward, which costs only their
bytes, so that it can go (files_to_empty); one mostly live is kept."""

from __future__ import annotations

from aurora_db.constants import PAGES_PER_PG
from storage_node import healer as healer_module
from storage_node.healer import files_to_empty, plan_coalescing
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


def test_an_old_file_mostly_garbage_is_emptied_and_one_mostly_live_is_kept():
    weights = {1: {0: 300}, 2: {0: 900, 1: 500}}
    assert files_to_empty(weights, *segments_with_records({0: 1, 1: 1})[:1], live_bytes_max=1399) == [1], \
        "file 2 holds more live bytes than the limit: kept"
    assert files_to_empty(weights, *segments_with_records({0: 1, 1: 1})[:1], live_bytes_max=1400) == [1, 2]


def test_a_file_a_damaged_segment_needs_is_not_emptied():
    segments, _ = segments_with_records({0: 5, 1: 5})
    segments[1].damaged = "pages [3] fail their checksums"
    weights = {1: {0: 10}, 2: {0: 10, 1: 10}, 3: {2: 10}}
    assert files_to_empty(weights, segments, live_bytes_max=10**9) == [1], \
        "file 2 holds a damaged segment's records, file 3 those of a PG the node does not have"


def test_a_node_holding_too_much_coalesces_its_largest_holders(monkeypatch):
    monkeypatch.setattr(healer_module, "COALESCE_RECORDS_MIN", 10**9)
    segments, lsns = segments_with_records({0: 10, 1: 200, 2: 100})
    horizon = max(max(v) for v in lsns.values())
    held = {pg: s.held_bytes for pg, s in segments.items()}
    plan = plan_coalescing(segments, horizon, held_bytes_max=held[0] + held[2])
    assert plan.coalesce == [1] and plan.reasons == {1: "memory"}
    plan = plan_coalescing(segments, horizon, held_bytes_max=held[0])
    assert plan.coalesce == [1, 2]


def test_records_weighing_as_much_as_the_image_coalesce_and_nothing_above_the_horizon_does(monkeypatch):
    monkeypatch.setattr(healer_module, "COALESCE_RECORDS_MIN", 20)
    segments, lsns = segments_with_records({0: 10, 1: 40})
    horizon = max(max(v) for v in lsns.values())
    plan = plan_coalescing(segments, horizon, held_bytes_max=10**9)
    assert plan.reasons == {1: "worth"}, "an empty image: any 20 records are worth it"
    plan = plan_coalescing(segments, 0, held_bytes_max=0)
    assert plan.coalesce == [], "nothing at or below the horizon: nothing to coalesce, whatever the pressure"
