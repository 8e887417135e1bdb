"""The segment core: SCL from backlinks, pending records, truncation, GetPage@LSN (DESIGN.md 6a, 7),
and its page image: coalescing to a new base, reads below it refused, a peer's image installed,
a damaged image serving nothing (Aurora 2017, 3.3: 'coalesce log records into new page versions')."""

import dataclasses
import random

import pytest

from aurora_db import pages
from aurora_db.constants import PAGES_PER_PG
from storage_node.log_file import RecordEntry
from storage_node.page_image import PageImage, PagePayload, write_image
from storage_node.segment import BelowHorizon, BrokenPageChain, NotComplete, Segment
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


# --- the page image and its base (coalescing, garbage collection, repair) ---------------------


def page_stream(count: int, pages_in_pg: int = 4, seed: int = 0) -> list:
    """`count` records of PG 0 over several heap pages: inits, inserts, xmax updates, and now and
    then a page initialized again (its versions below that init no longer matter)."""
    rng = random.Random(seed)
    builder = RecordBuilder()
    records = []
    initialized = set()
    while len(records) < count:
        page = rng.randrange(pages_in_pg)
        if page not in initialized or rng.random() < 0.04:
            initialized.add(page)
            records.append(builder.heap_init(page))
        elif rng.random() < 0.25 and builder.slots[page]:
            records.append(builder.heap_set_xmax(page, rng.randrange(builder.slots[page]), 77))
        else:
            records.append(builder.heap_insert(page, [len(records), f"row {len(records)}"]))
    return records


def coalesce(segment: Segment, new_base: int, directory) -> PageImage:
    """What the healer does: the changed pages as of new_base, the old image's others, one new
    image written durably, then the segment rebased on it."""
    fresh = {p: PagePayload.of_page(segment.get_page(p, new_base)) for p in segment.pages_changed(new_base)}
    payloads = list(fresh.values()) + [segment.image.read(p) for p in segment.image.page_ids if p not in fresh]
    image = write_image(directory, segment.pg, new_base, segment.vdl_hint, payloads)
    segment.rebase(image)
    return image


def all_versions(segment: Segment, page_ids, read_points) -> dict:
    out = {}
    for read_point in read_points:
        for page_id in page_ids:
            page = segment.get_page(page_id, read_point)
            out[page_id, read_point] = None if page is None else pages.to_wire(page)
    return out


def test_coalescing_changes_no_page_at_any_read_point_at_or_above_the_new_base(tmp_path):
    """Aurora 2017, 3.3: the log is the database; coalescing only materializes what it says."""
    records = page_stream(90, seed=11)
    segment = Segment(0)
    segment.add(entries(records))
    first_base, second_base = records[40].lsn, records[70].lsn
    before = all_versions(segment, range(5), [r.lsn for r in records[40:]])  # also fills the cache
    assert segment.pages_changed(first_base) == sorted({r.page_id for r in records[:41]})
    coalesce(segment, first_base, tmp_path)
    assert segment.base_lsn == first_base and segment.scl == records[-1].lsn
    assert all_versions(segment, range(5), [r.lsn for r in records[40:]]) == before
    changed = segment.pages_changed(second_base)
    assert changed == sorted({r.page_id for r in records[41:71]}), "only pages with records above the base"
    coalesce(segment, second_base, tmp_path)
    assert all_versions(segment, range(5), [r.lsn for r in records[70:]]) == \
        {k: v for k, v in before.items() if k[1] >= second_base}
    for (page_id, read_point), wire in before.items():  # and the oracle agrees, without the cache
        if read_point >= second_base:
            want = oracle_page(records, page_id, read_point)
            assert wire == (None if want is None else pages.to_wire(want)), (page_id, read_point)


def test_a_segment_reopened_from_its_image_and_the_records_above_serves_the_same_pages(tmp_path):
    """A restart: the image file plus the log records above its base (those below are skipped)."""
    records = page_stream(60, seed=3)
    segment = Segment(0)
    segment.add(entries(records))
    image = coalesce(segment, records[29].lsn, tmp_path)
    reopened_image, damaged = PageImage.open(image.path)
    assert damaged == []
    restarted = Segment(0, reopened_image, cache_pages_max=1)
    result = restarted.add(entries(records))  # the whole log, as if no file had been removed yet
    assert result.duplicates == 30 and result.added == 30
    assert restarted.scl == segment.scl and restarted.records_held == segment.records_held
    read_points = [r.lsn for r in records[29:]]
    assert all_versions(restarted, range(4), read_points) == all_versions(segment, range(4), read_points)


def test_records_at_or_below_the_base_are_no_longer_held(tmp_path):
    records = page_stream(50, seed=4)
    segment = Segment(0)
    segment.add(entries(records))
    new_base = records[19].lsn
    assert segment.records_to_coalesce(new_base) == 20
    coalesce(segment, new_base, tmp_path)
    assert segment.records_held == 30
    assert segment.held_bytes == sum(len(e.body) for e in entries(records[20:]))
    assert segment.held(records[19].lsn) is None and segment.held(records[20].lsn) is not None
    assert segment.holds(entry(records[5])), "a resend of a covered record needs no write"
    assert segment.add(entries(records[:20])).duplicates == 20 and segment.records_held == 30
    assert segment.page_count() == len({r.page_id for r in records})


def test_reads_below_the_base_are_below_the_horizon(tmp_path):
    records = page_stream(30, seed=5)
    segment = Segment(0)
    segment.add(entries(records))
    base = records[14].lsn
    coalesce(segment, base, tmp_path)
    with pytest.raises(BelowHorizon):
        segment.get_page(records[0].page_id, base - 1)
    with pytest.raises(BelowHorizon):
        segment.chain(base - 1, limit=10)
    with pytest.raises(BelowHorizon):
        segment.read_records(0, records[-1].lsn, limit=10, bytes_max=10**6)
    listed, last_at_or_below, more = segment.chain(base, limit=100)
    assert last_at_or_below == base and not more
    assert [x[0] for x in listed] == [r.lsn for r in records[15:]]
    got, more = segment.read_records(base, records[-1].lsn, limit=100, bytes_max=10**6)
    assert [e.lsn for e in got] == [r.lsn for r in records[15:]] and not more


def test_coalesce_point_is_the_highest_chain_lsn_at_or_below_the_horizon(tmp_path):
    records = heap_stream(20, other_pg_every=2)  # PG 0's LSNs are spaced: not every LSN is a record
    segment = Segment(0)
    assert segment.coalesce_point(100) is None
    segment.add(entries(records[:15] + records[16:]))  # SCL = records[14]: the rest waits
    assert segment.coalesce_point(records[0].lsn - 1) is None
    assert segment.coalesce_point(records[6].lsn + 1) == records[6].lsn
    assert segment.coalesce_point(10**9) == records[14].lsn, "never above SCL"
    coalesce(segment, records[6].lsn, tmp_path)
    assert segment.coalesce_point(records[6].lsn + 1) is None, "nothing above the base to coalesce"
    assert segment.coalesce_point(records[7].lsn) == records[7].lsn


def test_installing_a_peers_image_above_scl_keeps_and_chains_the_records_above_its_base(tmp_path):
    """A segment far behind copies a peer's image; what it already holds above that base still counts."""
    records = page_stream(40, seed=6)
    peer = Segment(0)
    peer.add(entries(records))
    peer_image = coalesce(peer, records[24].lsn, tmp_path / "peer")
    copied = [PagePayload.verified(p.crc, p.payload) for p in (peer_image.read(i) for i in peer_image.page_ids)]

    behind = Segment(0)
    behind.add(entries(records[:5] + records[27:]))  # SCL records[4]; 27.. pending
    behind.truncate(records[-1].lsn + 10, records[-1].lsn + 20)  # a range told earlier: kept across the install
    assert behind.scl == records[4].lsn and behind.pending_count == 13
    behind.install_image(write_image(tmp_path / "mine", 0, records[24].lsn, 0, copied))
    assert behind.base_lsn == records[24].lsn and behind.scl == records[24].lsn, "25 and 26 are still missing"
    assert behind.records_held == 13 and behind.held(records[4].lsn) is None
    assert behind.truncation_ranges == [(records[-1].lsn + 10, records[-1].lsn + 20)]
    behind.add(entries(records[25:27]))
    assert behind.scl == records[-1].lsn and behind.pending_count == 0
    read_points = [r.lsn for r in records[24:]]
    assert all_versions(behind, range(4), read_points) == all_versions(peer, range(4), read_points)


def test_installing_a_peers_image_connects_records_right_above_its_base_at_once(tmp_path):
    records = page_stream(30, seed=7)
    peer = Segment(0)
    peer.add(entries(records))
    peer_image = coalesce(peer, records[14].lsn, tmp_path / "peer")
    behind = Segment(0)
    behind.add(entries(records[:3] + records[15:]))
    behind.install_image(peer_image)
    assert behind.scl == records[-1].lsn and behind.pending_count == 0 and behind.records_held == 15
    assert pages.to_wire(behind.get_page(records[-1].page_id, records[-1].lsn)) == \
        pages.to_wire(oracle_page(records, records[-1].page_id, records[-1].lsn))


def test_a_truncation_never_reaches_below_the_base(tmp_path):
    """The base is at or below a durable VDL: a range told again after the base passed it only
    reaches the records above the base."""
    records = page_stream(30, seed=8)
    segment = Segment(0)
    segment.add(entries(records))
    base = records[14].lsn
    coalesce(segment, base, tmp_path)
    segment.truncate(records[2].lsn, records[20].lsn)
    assert segment.scl == base and segment.base_lsn == base
    assert segment.truncation_ranges == [(records[2].lsn, records[20].lsn)]
    assert segment.records_held == 9, "records above the range wait again for their chain"
    assert pages.to_wire(segment.get_page(records[3].page_id, base)) == \
        pages.to_wire(oracle_page(records, records[3].page_id, base))
    assert segment.add(entries(records[15:21])).discarded == 6
    segment.truncate(records[2].lsn, records[10].lsn)  # a range wholly below the base: nothing moves
    assert segment.scl == base and segment.records_held == 9


def test_a_damaged_image_serves_nothing_until_a_good_one_is_installed(tmp_path):
    builder = RecordBuilder()
    records = [builder.heap_init(p) for p in (0, 1, 2)] + [builder.heap_insert(p, [p]) for p in (0, 1, 2)]
    base = records[-1].lsn
    records += [builder.heap_insert(0, ["above"]), builder.heap_set_xmax(1, 0, 9)]  # page 2 only in the image
    segment = Segment(0)
    segment.add(entries(records))
    image = coalesce(segment, base, tmp_path)
    good_copy = [image.read(p) for p in image.page_ids]
    data = bytearray(image.path.read_bytes())
    data[-1] ^= 0x01  # inside the last entry: page 2's (pages are written in page id order)
    image.path.write_bytes(bytes(data))
    assert pages.to_wire(segment.get_page(0, records[-1].lsn)) == pages.to_wire(oracle_page(records, 0, records[-1].lsn))
    assert segment.damaged is None, "a page never read from the damaged entry is served"
    with pytest.raises(NotComplete):
        segment.get_page(2, records[-1].lsn)
    assert segment.damaged is not None and "page 2" in segment.damaged
    for page_id in (0, 1):
        with pytest.raises(NotComplete):
            segment.get_page(page_id, records[-1].lsn)  # a damaged segment serves nothing at all
    segment.install_image(write_image(tmp_path, 0, base, 0, good_copy))  # a peer's copy
    assert segment.damaged is None and segment.scl == records[-1].lsn
    for page_id in (0, 1, 2):
        assert pages.to_wire(segment.get_page(page_id, records[-1].lsn)) == \
            pages.to_wire(oracle_page(records, page_id, records[-1].lsn))


def test_interleaved_appends_coalescing_and_reads_match_direct_apply(tmp_path):
    """Random records, random coalescing points, a tiny page cache: every read at or above the base
    is the oracle's page, and the records held are exactly those above the base."""
    for seed in range(12):
        rng = random.Random(seed)
        records = page_stream(80, pages_in_pg=5, seed=100 + seed)
        segment = Segment(0, cache_pages_max=rng.choice([1, 2, 8]))
        delivered = 0
        while delivered < len(records):
            delivered = min(len(records), delivered + rng.randrange(1, 15))
            segment.add(entries(records[:delivered]))
            for read_point in rng.choices([r.lsn for r in records[:delivered] if r.lsn >= segment.base_lsn], k=3):
                segment.get_page(rng.randrange(5), read_point)  # warm the cache at random versions
            new_base = segment.coalesce_point(rng.randrange(segment.base_lsn, segment.scl + 1))
            if new_base is not None and rng.random() < 0.6:
                coalesce(segment, new_base, tmp_path / str(seed))
            assert segment.records_held == sum(1 for r in records[:delivered] if r.lsn > segment.base_lsn)
            for read_point in [segment.base_lsn, segment.scl, rng.randrange(segment.base_lsn, segment.scl + 1)]:
                for page_id in range(5):
                    want = oracle_page(records, page_id, read_point)
                    got = segment.get_page(page_id, read_point)
                    assert (None if got is None else pages.to_wire(got)) == \
                        (None if want is None else pages.to_wire(want)), (seed, page_id, read_point)
