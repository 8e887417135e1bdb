"""Crash recovery of the volume by a new writer: no redo replay on compute (DESIGN.md 6, 6a).

Steps: (1) new epoch = highest stored epoch of a read quorum + 1, made durable on a write quorum;
(2) from the set_epoch replies (a write quorum, so they meet every earlier write quorum) take each
PG's best segment; (3) walk the volume chain (prev_volume backlinks) upward from the highest VDL a
record in the quorum names (a point some writer acknowledged, so held by the best segments), to
find VCL, and VDL = the highest CPL on it; (4) record "truncate above VDL"
with the epoch and the new LSN floor on a write quorum; (5) re-replication to segments that lack
records happens through each link's catch-up. Transactions without a commit record at or below
VDL are aborted by the transaction manager (MVCC: no undo pass).
Safety: a record counted in an old VDL was complete on 4 segments, and any 4 replies include one
of them, so the walk reaches every such record: the new VDL >= every VDL ever acknowledged.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging

from aurora_db import storage_protocol as sp
from aurora_db import truncation
from aurora_db.constants import LSN_ALLOCATION_LIMIT, READ_QUORUM, RECOVERY_TIMEOUT_MS, WRITE_QUORUM
from aurora_db.errors import CannotConnectNow
from compute_node.storage_client import NodeLink, NodeUnreachable, RequestFailed, StorageClient

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class RecoveredVolume:
    epoch: int
    vdl: int
    vcl: int
    lsn_floor: int
    pg_tails: dict[int, int]


class NewerEpochSeen(Exception):
    """A storage node holds a newer epoch than the one recovery tried: another writer raced."""

    def __init__(self, epoch: int):
        self.epoch = epoch


async def _ask_all(links: list[NodeLink], message: dict) -> dict[str, dict]:
    async def ask(link):
        try:
            return link.node_id, await link.request(message)
        except RequestFailed as error:
            if error.code in (sp.ERROR_STALE_EPOCH, sp.ERROR_EPOCH_CLAIMED):
                raise
            log.warning("recovery: %s", error)
        except NodeUnreachable as error:
            log.warning("recovery: %s", error)
        return link.node_id, None

    results = await asyncio.gather(*(ask(link) for link in links), return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return {node_id: reply for node_id, reply in results if reply is not None}


def _check_not_overtaken(client: StorageClient) -> None:
    """Links refuse nodes that hold a newer epoch than this writer's: waiting for them to connect
    would wait out the whole recovery timeout. Raise NewerEpochSeen instead."""
    if client.epoch is not None and client.newest_epoch_seen > client.epoch:
        raise NewerEpochSeen(client.newest_epoch_seen)


async def _quorum_of(client: StorageClient, message_for, needed: int, what: str) -> dict[str, dict]:
    """Send to every connected node until `needed` succeed; wait for nodes to come back meanwhile."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + RECOVERY_TIMEOUT_MS / 1000
    while True:
        _check_not_overtaken(client)
        links = await client.wait_connected(needed, 1000)
        try:
            replies = await _ask_all(links, message_for()) if len(links) >= needed else {}
        except RequestFailed as error:
            raise NewerEpochSeen(0) from error
        if len(replies) >= needed:
            return replies
        if loop.time() > deadline:
            raise CannotConnectNow(f"recovery: {what} reached {len(replies)} storage nodes, needs {needed}")
        log.warning("recovery: %s reached %d of %d needed storage nodes; waiting", what, len(replies), needed)
        await asyncio.sleep(0.5)


async def recover(client: StorageClient) -> RecoveredVolume:
    statuses = await _quorum_of(client, lambda: {"t": sp.STATUS}, READ_QUORUM, "reading epochs")
    epoch = max(reply["epoch"] for reply in statuses.values()) + 1
    while True:
        client.epoch = epoch
        try:
            replies = await _quorum_of(client, lambda: {"t": sp.SET_EPOCH, "epoch": epoch,
                                                        "writer": client.writer_address},
                                       WRITE_QUORUM, f"setting epoch {epoch}")
            break
        except NewerEpochSeen as seen:  # another writer raced us to a newer epoch: go above it
            epoch = max(epoch, seen.epoch) + 1
    log.info("recovery: epoch %d is durable on %s", epoch, sorted(replies))
    replies, truncations = await _apply_known_truncations(client, epoch, replies)

    best = best_segments(replies)
    old_floor = max(reply.get("lsn_floor", 0) for reply in replies.values())
    start = max(reply.get("vdl_hint", 0) for reply in replies.values())
    vdl, vcl, pg_tails = await _find_vdl(client, best, start) if best else (0, 0, {})
    lsn_floor = max(vdl, old_floor) + LSN_ALLOCATION_LIMIT
    client.truncations = truncations + [(vdl, lsn_floor, epoch)]
    try:
        await _quorum_of(client, lambda: {"t": sp.TRUNCATE, "epoch": epoch, "above_lsn": vdl, "lsn_floor": lsn_floor},
                         WRITE_QUORUM, f"truncating above {vdl}")
    except NewerEpochSeen as seen:
        raise CannotConnectNow(f"recovery: another writer claimed epoch {seen.epoch} while this one, of epoch "
                               f"{epoch}, was truncating") from None
    client.seed_tails(pg_tails)
    for link in client.links.values():
        link.resync()  # handshake again and catch up to the tails
    await _wait_replicated(client, pg_tails)
    log.info("recovery: epoch %d, VCL %d, VDL %d, LSN floor %d, %d PGs", epoch, vcl, vdl, lsn_floor, len(pg_tails))
    return RecoveredVolume(epoch, vdl, vcl, lsn_floor, pg_tails)


async def _apply_known_truncations(client: StorageClient, epoch: int,
                                   replies: dict[str, dict]) -> tuple[dict[str, dict], list[truncation.Range]]:
    """Every truncation an earlier recovery made durable reached a write quorum, so it is in these
    replies. A node that missed one may still hold an old epoch's records inside it, which the
    chain walk must never see: tell every replying node every live range (with the epoch that made
    it), then read their SCLs again. A void range (a losing candidate's: aurora_db/truncation.py)
    is neither applied nor passed on."""
    truncations = list(truncation.live(r for reply in replies.values()
                                       for r in truncation.from_wire(reply.get("truncations"))))
    lacking = {node_id: [r for r in truncations
                         if r[:2] not in truncation.pairs(truncation.from_wire(reply.get("truncations")))]
               for node_id, reply in replies.items()}
    if not any(lacking.values()):
        return replies, truncations
    for node_id, missing in lacking.items():
        for above_lsn, lsn_floor, range_epoch in missing:
            log.info("recovery: %s missed truncation (%d, %d] of epoch %d; applying it", node_id, above_lsn,
                     lsn_floor, range_epoch)
            await client.links[node_id].request(
                {"t": sp.TRUNCATE, "epoch": epoch, "above_lsn": above_lsn, "lsn_floor": lsn_floor,
                 "range_epoch": range_epoch})
    fresh = {node_id: await client.links[node_id].request({"t": sp.STATUS}) for node_id in replies}
    return fresh, truncations


async def _wait_replicated(client: StorageClient, pg_tails: dict[int, int]) -> None:
    """DESIGN.md 6a step 5: serve only once every PG's records up to its part of VDL are on a write
    quorum, so the new writer never builds on a record a single segment holds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + RECOVERY_TIMEOUT_MS / 1000
    while True:
        try:
            _check_not_overtaken(client)
        except NewerEpochSeen as seen:
            raise CannotConnectNow(f"recovery: another writer claimed epoch {seen.epoch} while this one, of epoch "
                                   f"{client.epoch}, waited for its tails to be replicated") from None
        behind = {pg: tail for pg, tail in pg_tails.items()
                  if sum(1 for link in client.links.values()
                         if link.connected.is_set() and link.last_scls.get(pg, 0) >= tail) < WRITE_QUORUM}
        if not behind:
            return
        if loop.time() > deadline:
            raise CannotConnectNow(f"recovery: PGs {sorted(behind)} are not on a write quorum up to VDL")
        await asyncio.sleep(0.02)


async def _find_vdl(client: StorageClient, best: dict[int, tuple[int, str]], start: int) -> tuple[int, int, dict[int, int]]:
    """Read each PG's best segment's chain above `start` (a known durable VDL) and walk it."""
    chains = {}
    for pg, (_, node_id) in best.items():
        records, last_at_or_below, after = [], None, start
        while True:
            reply = await client.links[node_id].request(
                {"t": sp.CHAIN, "epoch": client.epoch, "pg": pg, "after_lsn": after})
            if last_at_or_below is None:
                last_at_or_below = reply.get("last_at_or_below", 0)
            records += reply["records"]
            if not reply.get("more") or not reply["records"]:
                break
            after = reply["records"][-1][0]
        chains[pg] = (records, last_at_or_below)
    return walk_volume_chain(chains, start)


# --- the pure part: no I/O ----------------------------------------------------------------------


def best_segments(replies: dict[str, dict]) -> dict[int, tuple[int, str]]:
    """Per PG, the (SCL, node) of the segment with the highest SCL among the replies."""
    best: dict[int, tuple[int, str]] = {}
    for node_id, reply in sorted(replies.items()):
        for pg, scl in reply.get("pgs", {}).items():
            pg = int(pg)
            if scl > best.get(pg, (-1, ""))[0]:
                best[pg] = (scl, node_id)
    return best


def walk_volume_chain(chains: dict[int, tuple[list, int]], start: int) -> tuple[int, int, dict[int, int]]:
    """DESIGN.md 6a step 3. `start` is a VDL some writer acknowledged (the highest `vdl` a record
    in the quorum names), so every record at or below it is on a write quorum and therefore in its
    PG's best segment. `chains` maps each PG to that best segment's chain records above `start`
    ([lsn, prev_volume, prev_pg, cpl]) and the last LSN it holds at or below `start`. From `start`,
    follow prev_volume links upward while the next record is present: where the walk stops is VCL;
    VDL is the highest CPL on the way. Every acknowledged record lies on this walk, so the new VDL
    is at least every VDL ever acknowledged. Returns (VDL, VCL, last LSN of each PG <= VDL)."""
    records = {}  # lsn -> (prev_volume, cpl, pg)
    for pg, (chain, _) in chains.items():
        for lsn, prev_volume, _prev_pg, cpl in chain:
            records[lsn] = (prev_volume, bool(cpl), pg)
    next_of = {prev_volume: lsn for lsn, (prev_volume, _, _) in records.items()}
    vcl = vdl = start
    while vcl in next_of:
        vcl = next_of[vcl]
        if records[vcl][1]:
            vdl = vcl
    pg_tails = {pg: last_at_or_below for pg, (_, last_at_or_below) in chains.items()}
    for lsn, (_, _, pg) in records.items():
        if lsn <= vdl and lsn > pg_tails.get(pg, 0):
            pg_tails[pg] = lsn
    return vdl, vcl, {pg: tail for pg, tail in pg_tails.items() if tail > 0}
