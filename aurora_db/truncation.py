"""Truncation ranges (DESIGN.md 6a step 4): which of them still hold.

A recovery of epoch E that found VDL V and chose LSN floor F makes the range (V, F] durable on a
write quorum, tagged with E: records in it are an older epoch's and are discarded, now and when
they arrive later. A range is written as (above_lsn, lsn_floor, epoch).

A candidate can lose the race for the volume after some nodes took its range: that range never
reached a write quorum, and the winner, not having seen it, may allocate LSNs inside it. Such a
range is void, and this is how it shows:
  - a range that reached a write quorum is seen by every later recovery (any write quorum of
    set_epoch replies meets it), which then picks a floor above it: max(VDL, every floor seen) + LAL.
  - so a range R of epoch E whose floor is above the floor of a range of a newer epoch E' > E was
    not seen by the E' recovery, so never reached a write quorum, so its writer never acknowledged
    anything, and every record in R that matters is the E' writer's (or a later one's).
Invariant: storage nodes and recoveries keep and apply only live ranges (`live`). A void range
is never needed: the newer range below it covers every record older epochs left there.
"""

from __future__ import annotations

from typing import Iterable

Range = tuple[int, int, int]  # (above_lsn, lsn_floor, epoch)


def live(ranges: Iterable[Range]) -> tuple[Range, ...]:
    """The ranges no newer epoch's range proves void, each (above_lsn, lsn_floor) once, in order."""
    ranges = list(ranges)
    kept: list[Range] = []
    seen: set[tuple[int, int]] = set()
    for above_lsn, lsn_floor, epoch in ranges:
        if (above_lsn, lsn_floor) in seen:
            continue
        if any(other_epoch > epoch and other_floor < lsn_floor for _, other_floor, other_epoch in ranges):
            continue
        seen.add((above_lsn, lsn_floor))
        kept.append((above_lsn, lsn_floor, epoch))
    return tuple(kept)


def from_wire(items) -> list[Range]:
    """[[above_lsn, lsn_floor, epoch], ...]; a range stored before ranges had epochs has epoch 0."""
    ranges = []
    for item in items or ():
        if not (isinstance(item, (list, tuple)) and len(item) in (2, 3) and all(isinstance(v, int) for v in item)):
            raise ValueError(f"a truncation range must be [above_lsn, lsn_floor, epoch], got {item!r}")
        above_lsn, lsn_floor, *epoch = item
        ranges.append((above_lsn, lsn_floor, epoch[0] if epoch else 0))
    return ranges


def to_wire(ranges: Iterable[Range]) -> list[list[int]]:
    return [list(r) for r in ranges]


def pairs(ranges: Iterable[Range]) -> set[tuple[int, int]]:
    """The ranges' (above_lsn, lsn_floor): what a segment remembers to refuse."""
    return {(above_lsn, lsn_floor) for above_lsn, lsn_floor, _ in ranges}
