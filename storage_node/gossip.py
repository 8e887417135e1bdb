"""Sans-I/O decisions of a storage node's background healing (DESIGN.md 7, steps 3-4 and 8):
what to pull from which peer, and when an emptied node has learned enough to serve.

Invariants:
  - A node pulls only for a segment whose SCL did not move over the last gossip round, and only
    what a peer held a whole round ago (its SCL then): a segment that the writer is still feeding,
    however far behind on a busy machine, is left to the writer, so no record is fetched twice.
  - A segment behind a peer's base (the peer collected the records it lacks), or with a damaged
    image, copies that peer's page image first, then the records above it.
  - An emptied node (no data directory) serves only after a read quorum of peers that are not
    themselves emptied answered: any write quorum of the PG overlaps three of the other five
    nodes, so the highest epoch and every truncation range a writer made durable are among them.
    A volume whose answering read quorum of peers is empty at epoch 0 is new: had a writer ever run,
    a write quorum would hold its epoch, and at most the two nodes outside those three and this one
    could (Vw = 4 > 3).
"""

from __future__ import annotations

import dataclasses

from aurora_db import truncation
from aurora_db.constants import READ_QUORUM, SEGMENTS_PER_PG


@dataclasses.dataclass(frozen=True, slots=True)
class Pull:
    pg: int
    peer: str
    after_lsn: int  # this segment's SCL
    upto_lsn: int  # the peer's SCL a round ago
    image: bool  # copy the peer's page image first


@dataclasses.dataclass(frozen=True, slots=True)
class SegmentView:
    scl: int
    base: int
    damaged: bool = False


def views_from_status(reply: dict) -> dict[int, SegmentView]:
    """A status reply's segments, as gossip compares them."""
    return {int(pg): SegmentView(int(info["scl"]), int(info["base"]), bool(info.get("damaged")))
            for pg, info in (reply.get("segments") or {}).items()}


def plan_pulls(mine: dict[int, SegmentView], peers_now: dict[str, dict[int, SegmentView]],
               peers_before: dict[str, dict[int, SegmentView]], mine_before: dict[int, SegmentView]) -> list[Pull]:
    """One pull per stuck PG that some peer can advance, from the peer that held the most a round ago."""
    pulls = []
    pgs = {pg for views in peers_now.values() for pg in views}
    for pg in sorted(pgs):
        own = mine.get(pg, SegmentView(0, 0))
        if not own.damaged and own.scl > mine_before.get(pg, SegmentView(0, 0)).scl:
            continue  # moving: the writer is feeding it
        best: tuple[int, str] | None = None
        for peer, views in peers_now.items():
            now, before = views.get(pg), peers_before.get(peer, {}).get(pg)
            if now is None or now.damaged or before is None:
                continue
            upto = min(now.scl, before.scl)
            if upto > own.scl or (own.damaged and upto >= own.scl):
                if best is None or upto > best[0]:
                    best = (upto, peer)
        if best is None:
            continue
        upto, peer = best
        peer_base = peers_now[peer][pg].base
        pulls.append(Pull(pg, peer, own.scl, upto, image=own.damaged or peer_base > own.scl))
    return pulls


@dataclasses.dataclass(frozen=True, slots=True)
class JoinDecision:
    done: bool
    epoch: int = 0
    writer: str | None = None
    truncations: tuple[truncation.Range, ...] = ()


def decide_join(replies: dict[str, dict], peers_total: int) -> JoinDecision:
    """Whether an emptied node may serve, given its peers' status replies (see the docstring)."""
    knowing = {peer: reply for peer, reply in replies.items() if not reply.get("rebuilding")}
    needed = min(READ_QUORUM, SEGMENTS_PER_PG - 1, peers_total)
    all_new = len(replies) >= needed and all(reply.get("epoch", 0) == 0 and not reply.get("pgs")
                                             for reply in replies.values())
    if len(knowing) < needed and not all_new:
        return JoinDecision(False)
    newest = max(knowing.values(), key=lambda reply: reply.get("epoch", 0), default={})
    ranges = [r for reply in knowing.values() for r in truncation.from_wire(reply.get("truncations"))]
    return JoinDecision(True, newest.get("epoch", 0), newest.get("writer"), truncation.live(ranges))
