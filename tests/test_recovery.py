"""Recovery's chain walk (DESIGN.md 6a) over the real segment core and the real durability tracker.

Aurora 2017, 4.3: "the database ... establishes the durable point ... from a read quorum" and must
never lose an acknowledged commit. Property checked here over random histories: from ANY write
quorum of segments (the set_epoch replies), the recovered VDL is at least the VDL the writer had
acknowledged, it ends an MTR, and every record at or below it is held by the PG's best segment.
"""

import itertools
import random

from aurora_db.constants import PAGES_PER_PG, SEGMENTS_PER_PG, WRITE_QUORUM
from aurora_db.quorum import DurabilityTracker
from compute_node.recovery import best_segments, walk_volume_chain
from storage_node.log_file import RecordEntry
from storage_node.segment import Segment

NODES = ["a1", "a2", "b1", "b2", "c1", "c2"]
PGS = 3
CHAIN_LIMIT = 10**9


def recover_from(quorum, segments):
    """What recovery computes from the set_epoch replies of `quorum` (node ids)."""
    replies = {node: {"pgs": {pg: segments[node][pg].scl for pg in range(PGS) if segments[node][pg].scl},
                      "vdl_hint": max(segments[node][pg].vdl_hint for pg in range(PGS))}
               for node in quorum}
    best = best_segments(replies)
    start = max(reply["vdl_hint"] for reply in replies.values())
    chains = {}
    for pg, (_, node) in best.items():
        chain, last_at_or_below, _ = segments[node][pg].chain(start, CHAIN_LIMIT)
        chains[pg] = (chain, last_at_or_below)
    return (*walk_volume_chain(chains, start), best)


def random_history(rng):
    tracker = DurabilityTracker(vdl=0, pg_tails={}, lsn_floor=0)
    segments = {node: {pg: Segment(pg) for pg in range(PGS)} for node in NODES}
    records = []
    acked_vdl = 0
    for _ in range(rng.randint(5, 60)):
        mtr = []
        for position in range(rng.randint(1, 3)):
            page = rng.randrange(PGS) * PAGES_PER_PG + rng.randrange(3)
            mtr.append(tracker.allocate(page, 0, "meta_init", (), cpl=False))
        mtr[-1] = tracker.seal_mtr(mtr[-1])
        records += mtr
        # Deliver this MTR to a random subset of segments, sometimes with a record lost.
        for node in NODES:
            if rng.random() < 0.7:
                for record in mtr:
                    if rng.random() < 0.9:
                        segments[node][record.pg].add([RecordEntry.from_sealed(*record.sealed())])
        for node in NODES:
            for pg in range(PGS):
                tracker.on_ack(pg, node, segments[node][pg].scl)
        acked_vdl = tracker.vdl
    return tracker, segments, records, acked_vdl


def test_recovery_from_any_write_quorum_keeps_every_acknowledged_record():
    rng = random.Random(2017)
    for trial in range(300):
        tracker, segments, records, acked_vdl = random_history(rng)
        cpls = {r.lsn for r in records if r.cpl} | {0}
        for quorum in itertools.combinations(NODES, WRITE_QUORUM):
            vdl, vcl, pg_tails, best = recover_from(quorum, segments)
            assert vdl >= acked_vdl, f"trial {trial}, quorum {quorum}: VDL {vdl} < acknowledged {acked_vdl}"
            assert vdl in cpls and vcl >= vdl
            for record in records:
                if record.lsn <= vdl:
                    scl, node = best[record.pg]
                    assert scl >= record.lsn, f"trial {trial}: record {record.lsn} not recoverable"
            for pg in range(PGS):
                expected = max((r.lsn for r in records if r.pg == pg and r.lsn <= vdl), default=0)
                assert pg_tails.get(pg, 0) == expected, (trial, pg)


def test_a_missing_record_stops_the_walk_before_its_mtr():
    """A CPL is present but an earlier record of its MTR is not: that MTR is not durable."""
    tracker = DurabilityTracker(vdl=0, pg_tails={}, lsn_floor=0)
    first = tracker.seal_mtr(tracker.allocate(0, 0, "meta_init", (), cpl=False))
    second_a = tracker.allocate(PAGES_PER_PG, 0, "meta_init", (), cpl=False)
    second_b = tracker.seal_mtr(tracker.allocate(0, 0, "meta_init", (), cpl=False))
    pg0, pg1 = Segment(0), Segment(1)
    for record in (first, second_b):
        pg0.add([RecordEntry.from_sealed(*record.sealed())])
    chains = {0: (pg0.chain(0, CHAIN_LIMIT)[0], 0), 1: (pg1.chain(0, CHAIN_LIMIT)[0], 0)}
    vdl, vcl, pg_tails = walk_volume_chain(chains, start=0)
    assert (vdl, vcl) == (first.lsn, first.lsn), "record 2 (PG 1) is missing, so MTR 2-3 is not durable"
    assert pg_tails == {0: first.lsn}
    assert second_a.lsn == 2
