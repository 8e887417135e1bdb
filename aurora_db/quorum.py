"""Quorum arithmetic and the writer's durability tracker (DESIGN.md 2, 3, 6a). No I/O.

The writer allocates LSNs, gives every record its backlinks, and learns from acks how far each
segment is complete (SCL). From those it derives, in this order:
  PGCL  per PG: the WRITE_QUORUM-th highest SCL among the PG's segments;
  VCL   the LSN just below the oldest allocated record whose PG's PGCL has not reached it;
  VDL   the highest CPL (an MTR's last record) at or below VCL.
Invariants: VCL and VDL never move back; VDL <= VCL <= last allocated LSN; a commit is acknowledged
only when VDL >= its commit LSN; allocation never goes beyond max(VDL, epoch floor) + LAL.
"""

from __future__ import annotations

import collections
import dataclasses

from aurora_db.constants import LSN_ALLOCATION_LIMIT, SEGMENTS_PER_PG, WRITE_QUORUM
from aurora_db.records import Record, pg_of_page


def quorum_lsn(scls: list[int], quorum: int = WRITE_QUORUM, segments: int = SEGMENTS_PER_PG) -> int:
    """The highest LSN that at least `quorum` of `segments` segments are complete to.

    `scls` holds the SCLs heard from; segments not heard from count as 0."""
    assert len(scls) <= segments, scls
    if len(scls) < quorum:
        return 0
    return sorted(scls, reverse=True)[quorum - 1]


class AllocationLimitReached(Exception):
    """LSN allocation would pass VDL + LAL: wait for acks (back-pressure)."""


@dataclasses.dataclass(slots=True)
class _Outstanding:
    lsn: int
    pg: int
    cpl: bool


class DurabilityTracker:
    """LSN allocation with backlinks, and PGCL / VCL / VDL from segment acks.

    `vdl` is where recovery left the volume; `pg_tails` the last record LSN of every PG at or below
    it; `lsn_floor` the LSN above which this epoch allocates (recovery makes it VDL + LAL, so no LSN
    a previous writer may have handed out is ever reused)."""

    def __init__(self, *, vdl: int, pg_tails: dict[int, int], lsn_floor: int,
                 allocation_limit: int = LSN_ALLOCATION_LIMIT):
        assert lsn_floor >= vdl, (lsn_floor, vdl)
        self.allocation_limit = allocation_limit
        self.lsn_floor = lsn_floor
        self.vcl = vdl
        self.vdl = vdl
        self.last_lsn = vdl  # prev_volume of the next record
        self._next_lsn = lsn_floor + 1
        self.pg_tail = dict(pg_tails)  # prev_pg of the next record of each PG
        self.durable_pg_tail = dict(pg_tails)  # last record of each PG at or below VDL
        self.segment_scl: dict[int, dict[str, int]] = collections.defaultdict(dict)
        self.pgcl: dict[int, int] = dict(pg_tails)
        self._outstanding: collections.deque[_Outstanding] = collections.deque()
        self._complete_not_durable: list[_Outstanding] = []  # popped for VCL, waiting for a CPL

    # --- allocation ---------------------------------------------------------------------------

    @property
    def allocation_ceiling(self) -> int:
        return max(self.vdl, self.lsn_floor) + self.allocation_limit

    def room(self) -> int:
        """How many more LSNs may be allocated before VDL must advance."""
        return self.allocation_ceiling - self._next_lsn + 1

    def allocate(self, page_id: int, prev_page: int, op: str, args: tuple, cpl: bool) -> Record:
        lsn = self._next_lsn
        if lsn > self.allocation_ceiling:
            raise AllocationLimitReached(f"LSN {lsn} is beyond VDL {self.vdl} + LAL {self.allocation_limit}")
        pg = pg_of_page(page_id)
        record = Record(lsn, page_id, self.last_lsn, self.pg_tail.get(pg, 0), prev_page, cpl, op, args, self.vdl)
        self._next_lsn = lsn + 1
        self.last_lsn = lsn
        self.pg_tail[pg] = lsn
        self._outstanding.append(_Outstanding(lsn, pg, cpl))
        return record

    def seal_mtr(self, record: Record) -> Record:
        """Mark the MTR's last record (already allocated, the newest) as its CPL."""
        assert self._outstanding and self._outstanding[-1].lsn == record.lsn, "only the newest record ends an MTR"
        self._outstanding[-1].cpl = True
        return dataclasses.replace(record, cpl=True)

    # --- acks ---------------------------------------------------------------------------------

    def on_ack(self, pg: int, segment: str, scl: int) -> bool:
        """A segment reports its SCL for a PG. Returns True if VDL advanced."""
        known = self.segment_scl[pg]
        if scl <= known.get(segment, -1):
            return False
        known[segment] = scl
        pgcl = quorum_lsn(list(known.values()))
        if pgcl <= self.pgcl.get(pg, 0):
            return False
        self.pgcl[pg] = pgcl
        return self._advance()

    def forget_segment(self, segment: str) -> None:
        """A segment's connection was lost or it restarted: its next ack starts afresh.

        PGCL never moves back, so forgetting cannot undo durability already counted."""
        for known in self.segment_scl.values():
            known.pop(segment, None)

    def _advance(self) -> bool:
        old_vdl = self.vdl
        while self._outstanding and self._outstanding[0].lsn <= self.pgcl.get(self._outstanding[0].pg, 0):
            entry = self._outstanding.popleft()
            self.vcl = entry.lsn
            self._complete_not_durable.append(entry)
            if entry.cpl:
                self.vdl = entry.lsn
                for done in self._complete_not_durable:
                    self.durable_pg_tail[done.pg] = done.lsn
                self._complete_not_durable.clear()
        assert self.vdl >= old_vdl and self.vcl >= self.vdl, (old_vdl, self.vdl, self.vcl)
        return self.vdl > old_vdl

    def read_point(self, pg: int) -> int:
        """The LSN to read a page of `pg` at: the PG's last record at or below VDL."""
        return self.durable_pg_tail.get(pg, 0)

    def segments_complete_to(self, pg: int, lsn: int) -> list[str]:
        return [segment for segment, scl in self.segment_scl[pg].items() if scl >= lsn]
