"""The quorum math against a brute-force oracle, and the tracker's VCL/VDL rules (DESIGN.md 6a)."""

import itertools
import random

from aurora_db.constants import READ_QUORUM, SEGMENTS_PER_PG, WRITE_QUORUM
from aurora_db.quorum import AllocationLimitReached, DurabilityTracker, quorum_lsn
from aurora_db.records import pg_of_page
from aurora_db.constants import PAGES_PER_PG

import pytest


def brute_force_quorum_lsn(scls, quorum):
    """The largest L such that at least `quorum` segments have SCL >= L."""
    candidates = [0] + list(scls)
    return max(l for l in candidates if sum(1 for s in scls if s >= l) >= quorum)


def test_quorum_lsn_matches_brute_force():
    rng = random.Random(7)
    for _ in range(2000):
        count = rng.randint(0, SEGMENTS_PER_PG)
        scls = [rng.randint(0, 20) for _ in range(count)]
        for quorum in (WRITE_QUORUM, READ_QUORUM):
            expected = brute_force_quorum_lsn(scls, quorum) if count >= quorum else 0
            assert quorum_lsn(scls, quorum) == expected, (scls, quorum)


def test_every_read_quorum_meets_every_write_quorum():
    """Aurora 2017, 2.1: Vr + Vw > V, so a read quorum always includes a copy of the latest write."""
    nodes = range(SEGMENTS_PER_PG)
    for writers in itertools.combinations(nodes, WRITE_QUORUM):
        for readers in itertools.combinations(nodes, READ_QUORUM):
            assert set(writers) & set(readers)


def ack_all(tracker, pg, scl, segments):
    for segment in segments:
        tracker.on_ack(pg, segment, scl)


SIX = ["a1", "a2", "b1", "b2", "c1", "c2"]


def test_vdl_needs_a_write_quorum_and_stops_at_cpl():
    tracker = DurabilityTracker(vdl=0, pg_tails={}, lsn_floor=0)
    first = tracker.allocate(5, 0, "heap_init", (), cpl=False)
    second = tracker.seal_mtr(tracker.allocate(5, first.lsn, "heap_insert", (0, 1, []), cpl=False))
    assert (first.prev_volume, second.prev_volume, second.prev_pg, second.prev_page) == (0, 1, 1, 1)
    ack_all(tracker, 0, 1, SIX[:4])
    assert (tracker.vcl, tracker.vdl) == (1, 0), "the MTR is not complete: no CPL at or below VCL"
    ack_all(tracker, 0, 2, SIX[:3])
    assert tracker.vdl == 0, "three segments are not a write quorum"
    tracker.on_ack(0, "c2", 2)
    assert (tracker.vcl, tracker.vdl) == (2, 2)


def test_vcl_waits_for_the_slowest_pg():
    tracker = DurabilityTracker(vdl=0, pg_tails={}, lsn_floor=0)
    a = tracker.seal_mtr(tracker.allocate(0, 0, "meta_init", (), cpl=False))
    b = tracker.seal_mtr(tracker.allocate(PAGES_PER_PG, 0, "heap_init", (), cpl=False))
    ack_all(tracker, pg_of_page(PAGES_PER_PG), b.lsn, SIX)
    assert tracker.vdl == 0, "record 2 is durable but record 1 is not"
    ack_all(tracker, 0, a.lsn, SIX[:4])
    assert tracker.vdl == 2
    assert tracker.read_point(0) == 1 and tracker.read_point(1) == 2


def test_allocation_stops_at_vdl_plus_lal():
    tracker = DurabilityTracker(vdl=100, pg_tails={0: 100}, lsn_floor=110, allocation_limit=3)
    records = [tracker.seal_mtr(tracker.allocate(0, 0, "meta_set", ("k", i), cpl=False)) for i in range(3)]
    assert [r.lsn for r in records] == [111, 112, 113]
    assert records[0].prev_volume == 100 and records[0].prev_pg == 100
    with pytest.raises(AllocationLimitReached):
        tracker.allocate(0, 0, "meta_set", ("k", 9), cpl=True)
    ack_all(tracker, 0, 112, SIX[:4])
    assert tracker.vdl == 112 and tracker.room() == 2


def test_random_acks_never_move_vdl_back_and_respect_quorum():
    rng = random.Random(11)
    tracker = DurabilityTracker(vdl=0, pg_tails={}, lsn_floor=0)
    records = []
    for _ in range(200):
        page = rng.choice([0, 1, PAGES_PER_PG, 2 * PAGES_PER_PG])
        records.append(tracker.allocate(page, 0, "meta_set", (), cpl=rng.random() < 0.4))
    records[-1] = tracker.seal_mtr(records[-1])
    scl = {(pg, s): 0 for pg in range(3) for s in SIX}
    last_vdl = 0
    for _ in range(3000):
        pg, segment = rng.choice(list(scl))
        tail = [r.lsn for r in records if r.pg == pg]
        scl[(pg, segment)] = max(scl[(pg, segment)], rng.choice(tail))
        tracker.on_ack(pg, segment, scl[(pg, segment)])
        assert tracker.vdl >= last_vdl
        last_vdl = tracker.vdl
        for r in records:
            if r.lsn <= tracker.vdl:
                holders = sum(1 for s in SIX if scl[(r.pg, s)] >= r.lsn)
                assert holders >= WRITE_QUORUM, (r.lsn, holders)
    assert tracker.vdl == records[-1].lsn or any(
        sum(1 for s in SIX if scl[(r.pg, s)] >= r.lsn) < WRITE_QUORUM for r in records)
