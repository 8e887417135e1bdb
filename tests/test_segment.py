"""The segment core: SCL from backlinks, pending records, truncation, GetPage@LSN (DESIGN.md 6a, 7)."""

import dataclasses
import random

import pytest

from aurora_db import pages
from aurora_db.constants import PAGES_PER_PG
from storage_node.log_file import RecordEntry
from storage_node.segment import BrokenPageChain, NotComplete, Segment
from tests.record_builder import RecordBuilder


def entry(record) -> RecordEntry:
    return RecordEntry.from_sealed(*record.sealed())


def entries(records) -> list[RecordEntry]:
    return [entry(r) for r in records]


def heap_stream(count: int, pages_in_pg: int = 3, seed: int = 0, other_pg_every: int = 0) -> list:
    """`count` records of PG 0 (heap pages 0..pages_in_pg-1), optionally interleaved with PG 1's."""
    rng = random.Random(seed)
    builder = RecordBuilder()
    records = []
    initialized = set()
    while sum(1 for r in records if r.pg == 0) < count:
        if other_pg_every and len(records) % other_pg_every == other_pg_every - 1:
            page = PAGES_PER_PG + 7
        else:
            page = rng.randrange(pages_in_pg)
        if page not in initialized:
            initialized.add(page)
            records.append(builder.heap_init(page))
        elif rng.random() < 0.2 and builder.slots[page]:
            records.append(builder.heap_set_xmax(page, rng.randrange(builder.slots[page]), 99))
        else:
            records.append(builder.heap_insert(page, [len(records), f"row {len(records)}"]))
    return [r for r in records if r.pg == 0]


def oracle_scl(held_records) -> int:
    """Brute force: follow prev_pg from 0 through the held records while the next one is there."""
    by_prev = {r.prev_pg: r for r in held_records}
    tip = 0
    while tip in by_prev:
        tip = by_prev[tip].lsn
    return tip


def oracle_page(records, page_id, read_point):
    """Apply the page's records directly, from its last init at or below the read point."""
    mine = sorted((r for r in records if r.page_id == page_id and r.lsn <= read_point), key=lambda r: r.lsn)
    page = None
    for r in mine:
        page = pages.apply(page, r)
    return page


def test_scl_in_order():
    records = heap_stream(50)
    segment = Segment(0)
    for i, r in enumerate(records):
        segment.add([entry(r)])
        assert segment.scl == r.lsn
    assert segment.pending_count == 0


def test_scl_with_other_pgs_interleaved_follows_prev_pg_not_lsn_order():
    """The segment sees only its PG's records; LSNs of other PGs are gaps in numbers, not in the chain."""
    records = heap_stream(40, other_pg_every=3)
    assert any(b.lsn - a.lsn > 1 for a, b in zip(records, records[1:]))
    segment = Segment(0)
    segment.add(entries(records))
    assert segment.scl == records[-1].lsn


def test_scl_reverse_order_waits_then_jumps():
    records = heap_stream(30)
    segment = Segment(0)
    for r in reversed(records[1:]):
        segment.add([entry(r)])
        assert segment.scl == 0
    assert segment.pending_count == 29
    segment.add([entry(records[0])])
    assert segment.scl == records[-1].lsn
    assert segment.pending_count == 0


def test_duplicates_are_counted_not_held_twice():
    records = heap_stream(10)
    segment = Segment(0)
    segment.add(entries(records[:6]))
    result = segment.add(entries(records))
    assert result.duplicates == 6 and result.added == 4
    assert segment.scl == records[-1].lsn
    assert segment.holds(entry(records[3]))


def test_gap_holds_scl_until_filled():
    records = heap_stream(20)
    segment = Segment(0)
    segment.add(entries(records[:9] + records[10:]))
    assert segment.scl == records[8].lsn
    assert segment.pending_count == 10
    segment.add([entry(records[9])])
    assert segment.scl == records[-1].lsn


def test_scl_matches_oracle_over_random_permutations_and_subsets():
    rng = random.Random(2017)
    for trial in range(300):
        records = heap_stream(rng.randrange(1, 25), seed=trial, other_pg_every=rng.choice([0, 2, 5]))
        delivered = [r for r in records if rng.random() < 0.9]
        delivered += rng.sample(delivered, k=len(delivered) // 3) if delivered else []  # duplicates
        rng.shuffle(delivered)
        segment = Segment(0)
        held = {}
        while delivered:
            cut = rng.randrange(1, 5)
            batch, delivered = delivered[:cut], delivered[cut:]
            segment.add(entries(batch))
            held.update((r.lsn, r) for r in batch)
            assert segment.scl == oracle_scl(held.values()), (trial, sorted(held))


def test_pending_limit_drops_the_highest_and_says_so():
    records = heap_stream(12)
    segment = Segment(0, pending_records_max=4)
    ahead = records[1:]  # all wait for records[0]
    result = segment.add(entries(ahead[:4]))
    assert result.dropped == [] and segment.pending_count == 4
    result = segment.add(entries(ahead[4:6]))
    assert result.dropped == [ahead[4].lsn, ahead[5].lsn]  # the newest (highest LSN) goes first
    result = segment.add([entry(ahead[0])])  # a duplicate: nothing dropped
    assert result.duplicates == 1 and not result.dropped
    segment.add([entry(records[0])])
    assert segment.scl == ahead[3].lsn  # the dropped ones are missing: the writer resends
    segment.add(entries(records))
    assert segment.scl == records[-1].lsn


def test_pending_limit_keeps_lower_lsns_when_a_lower_one_arrives():
    records = heap_stream(8)
    segment = Segment(0, pending_records_max=3)
    segment.add(entries([records[5], records[6], records[7]]))
    result = segment.add([entry(records[2])])
    assert result.dropped == [records[7].lsn]
    segment.add(entries(records[:2] + records[3:5]))
    assert segment.scl == records[6].lsn


def test_conflicting_records_are_refused():
    records = heap_stream(5)
    segment = Segment(0)
    segment.add(entries(records))
    fork = dataclasses.replace(records[-1], lsn=records[-1].lsn + 100)  # a second successor of records[-2]
    other_body = dataclasses.replace(records[2], args=(0, 5, ["other"]))
    result = segment.add([entry(fork), entry(other_body)])
    assert len(result.conflicts) == 2 and segment.scl == records[-1].lsn
    below_scl = dataclasses.replace(records[-1], lsn=records[-1].lsn - 1, prev_pg=0, prev_page=0, prev_volume=0)
    assert len(segment.add([entry(below_scl)]).conflicts) == 1
    assert pages.to_wire(segment.get_page(records[2].page_id, records[-1].lsn)) == pages.to_wire(
        oracle_page(records, records[2].page_id, records[-1].lsn))


def test_truncate_without_floor_drops_everything_above():
    records = heap_stream(20)
    segment = Segment(0)
    segment.add(entries(records[:15] + records[16:]))  # pending above a gap
    above = records[10].lsn
    segment.truncate(above)
    assert segment.scl == above and segment.pending_count == 0
    builder = RecordBuilder(first_lsn=1000, last_lsn=above, pg_tails={0: above})
    builder.page_tail = {r.page_id: r.lsn for r in records[:11]}
    builder.slots = {p: len(oracle_page(records, p, above).tuples) for p in builder.page_tail}
    new = builder.heap_insert(records[0].page_id, ["after"])
    segment.add([entry(new)])
    assert segment.scl == 1000


def test_truncate_scl_is_the_highest_chain_lsn_at_or_below():
    records = heap_stream(20, other_pg_every=2)  # PG 0's LSNs are spaced: not every LSN is a record
    segment = Segment(0)
    segment.add(entries(records))
    above = records[10].lsn + 1  # an LSN of the other PG
    segment.truncate(above, above + 500)
    assert segment.scl == records[10].lsn


def test_truncate_range_refuses_late_old_records_and_keeps_new_epoch_ones():
    """DESIGN.md 6a step 4: records above VDL from older epochs are discarded now and if they arrive later."""
    records = heap_stream(20)
    segment = Segment(0)
    segment.add(entries(records[:12]))
    vdl, floor = records[8].lsn, records[-1].lsn + 100
    segment.truncate(vdl, floor)
    assert segment.scl == vdl
    late = segment.add(entries(records[12:]))
    assert late.discarded == 8 and segment.scl == vdl
    builder = RecordBuilder(first_lsn=floor + 1, last_lsn=vdl, pg_tails={0: vdl})
    builder.page_tail = {r.page_id: r.lsn for r in records[:9]}
    builder.slots = {p: len(oracle_page(records, p, vdl).tuples) for p in builder.page_tail}
    new = [builder.heap_insert(records[0].page_id, ["new"]) for _ in range(3)]
    segment.add(entries(new))
    assert segment.scl == new[-1].lsn
    segment.truncate(vdl, floor)  # the writer repeats its truncation on every reconnect: harmless
    assert segment.scl == new[-1].lsn
    page = segment.get_page(records[0].page_id, new[-1].lsn)
    assert page.tuples[-1][2] == ["new"] and page.lsn == new[-1].lsn


def test_truncate_invalidates_cached_pages():
    records = heap_stream(30, pages_in_pg=1)
    segment = Segment(0)
    segment.add(entries(records))
    assert segment.get_page(0, records[-1].lsn).lsn == records[-1].lsn
    segment.truncate(records[15].lsn)
    assert pages.to_wire(segment.get_page(0, records[15].lsn)) == pages.to_wire(oracle_page(records, 0, records[15].lsn))


def test_get_page_at_every_read_point_matches_direct_apply():
    records = heap_stream(120, pages_in_pg=4, seed=5)
    segment = Segment(0, cache_pages_max=2)
    segment.add(entries(records))
    rng = random.Random(7)
    read_points = [r.lsn for r in records] + [0]
    rng.shuffle(read_points)
    for read_point in read_points:
        for page_id in range(4):
            got = segment.get_page(page_id, read_point)
            want = oracle_page(records, page_id, read_point)
            assert (got is None) == (want is None), (page_id, read_point)
            if want is not None:
                assert pages.to_wire(got) == pages.to_wire(want), (page_id, read_point)


def test_get_page_above_scl_is_not_complete():
    records = heap_stream(10)
    segment = Segment(0)
    segment.add(entries(records[:5] + records[6:]))
    with pytest.raises(NotComplete):
        segment.get_page(records[0].page_id, records[6].lsn)
    assert segment.get_page(99, records[4].lsn) is None  # no record of that page: no page


def test_get_page_starts_from_the_last_init():
    builder = RecordBuilder()
    records = [builder.heap_init(1), builder.heap_insert(1, ["a"]), builder.heap_init(1), builder.heap_insert(1, ["b"])]
    segment = Segment(0)
    segment.add(entries(records))
    assert segment.get_page(1, 4).tuples == [[1, 0, ["b"]]]
    assert segment.get_page(1, 2).tuples == [[1, 0, ["a"]]]


def test_get_page_without_init_is_a_broken_chain():
    builder = RecordBuilder()
    builder.slots[3] = 0
    segment = Segment(0)
    segment.add([entry(builder.heap_insert(3, ["orphan"]))])
    with pytest.raises(BrokenPageChain):
        segment.get_page(3, 1)


def test_a_page_handed_out_is_never_mutated_by_later_reads():
    """Copy on need: the cached latest version advances, but a reader's page stays as it was."""
    builder = RecordBuilder()
    segment = Segment(0)
    segment.add(entries([builder.heap_init(0), builder.heap_insert(0, ["one"])]))
    first = segment.get_page(0, 2)
    wire_before = pages.to_wire(first)
    snapshot = repr(wire_before)
    segment.add(entries([builder.heap_insert(0, ["two"]), builder.heap_set_xmax(0, 0, 7)]))
    latest = segment.get_page(0, 4)
    assert latest is not first and len(latest.tuples) == 2 and latest.tuples[0][1] == 7
    assert repr(pages.to_wire(first)) == snapshot and repr(wire_before) == snapshot
    assert segment.get_page(0, 4) is latest  # the latest version is served from the cache


def test_chain_and_read_records():
    records = heap_stream(30, other_pg_every=3)
    segment = Segment(0)
    segment.add(entries(records[:20] + records[21:]))  # records[20] missing: SCL = records[19]
    after = records[5].lsn + 1  # not a record of this PG
    listed, last_at_or_below, more = segment.chain(after, limit=1000)
    assert last_at_or_below == records[5].lsn and not more
    assert listed == [[r.lsn, r.prev_volume, r.prev_pg, r.cpl] for r in records[6:20]]
    listed, _, more = segment.chain(0, limit=3)
    assert [x[0] for x in listed] == [r.lsn for r in records[:3]] and more
    assert segment.chain(records[-1].lsn, 10) == ([], records[19].lsn, False)

    got, more = segment.read_records(records[2].lsn, records[10].lsn, limit=100, bytes_max=10**6)
    assert [e.lsn for e in got] == [r.lsn for r in records[3:11]] and not more
    assert [e.body for e in got] == [r.sealed()[1] for r in records[3:11]]
    got, more = segment.read_records(0, 10**9, limit=4, bytes_max=10**6)
    assert [e.lsn for e in got] == [r.lsn for r in records[:4]] and more
    got, more = segment.read_records(0, 10**9, limit=100, bytes_max=10**6)
    assert got[-1].lsn == records[19].lsn  # never beyond SCL
    got, more = segment.read_records(0, 10**9, limit=100, bytes_max=1)
    assert len(got) == 1 and more
