"""Whole recoveries, run by the real recover() against six real storage-node cores (sans-I/O), with
an in-memory link between them: crash schedules that are hard to hit with processes, replayed exactly.

Aurora 2017, 4.1: "the volume epoch ... fences" older writers, and recovery must never lose an
acknowledged commit, whatever earlier recoveries truncated and whichever nodes were down.
"""

import itertools

from aurora_db import storage_protocol as sp
from aurora_db.constants import LSN_ALLOCATION_LIMIT, PAGES_PER_PG
from aurora_db.quorum import DurabilityTracker
from compute_node import recovery
from compute_node.storage_client import NodeUnreachable, RequestFailed
from storage_node.node import Node, NodeMeta

PG1_PAGE, PG2_PAGE = PAGES_PER_PG, 2 * PAGES_PER_PG


class Volume:
    """Six storage-node cores; each request is persisted (a perfect disk) and answered."""

    def __init__(self):
        self.nodes = {f"n{i}": Node(f"n{i}", "a", NodeMeta(), {}) for i in range(6)}
        self.up = set(self.nodes)
        self._ids = itertools.count(1)

    def request(self, node_id, message):
        node = self.nodes[node_id]
        token = object()
        reply = node.step({**message, "id": next(self._ids)}, token)
        if reply is None:
            for replied_token, deferred in node.advance(node.ready()):
                if replied_token is token:
                    reply = deferred
        return reply


class Connected:
    def __init__(self, volume, node_id):
        self.volume, self.node_id = volume, node_id

    def is_set(self):
        return self.node_id in self.volume.up


class InMemoryLink:
    def __init__(self, volume, node_id):
        self.volume, self.node_id = volume, node_id
        self.connected = Connected(volume, node_id)

    @property
    def last_scls(self):
        return self.volume.nodes[self.node_id].scls()

    async def request(self, message, timeout_ms=0):
        if self.node_id not in self.volume.up:
            raise NodeUnreachable(self.node_id)
        reply = self.volume.request(self.node_id, message)
        if not reply.get("ok"):
            raise RequestFailed(self.node_id, reply["error"], reply.get("message", ""))
        return reply

    def resync(self):
        pass


class InMemoryClient:
    def __init__(self, volume):
        self.volume = volume
        self.epoch = None
        self.newest_epoch_seen = 0  # the in-memory links never refuse a node
        self.truncations = []
        self.writer_address = "127.0.0.1:7020"
        self.links = {node_id: InMemoryLink(volume, node_id) for node_id in volume.nodes}

    async def wait_connected(self, count, timeout_ms):
        return [link for link in self.links.values() if link.connected.is_set()]

    def seed_tails(self, tails):
        self.tails = tails


def ship(volume, epoch, records, to):
    by_pg = {}
    for record in records:
        by_pg.setdefault(record.pg, []).append(list(record.sealed()))
    for node_id in to:
        for pg, sealed in by_pg.items():
            assert volume.request(node_id, {"t": sp.APPEND, "epoch": epoch, "pg": pg, "records": sealed})["ok"]


def mtr(tracker, page_ids):
    records = [tracker.allocate(page_id, 0, "meta_set", ("k", i), cpl=False) for i, page_id in enumerate(page_ids)]
    records[-1] = tracker.seal_mtr(records[-1])
    return records


def acknowledge(tracker, volume, node_ids):
    for node_id in node_ids:
        for pg, scl in volume.nodes[node_id].scls().items():
            tracker.on_ack(pg, node_id, scl)


async def test_a_node_that_missed_a_truncation_cannot_resurrect_what_it_cut():
    """Epoch 1's unacknowledged MTR reaches one node, which is down while epoch 2 truncates it and
    commits above it. When that node returns for epoch 3's quorum, its stale records must not
    displace epoch 2's acknowledged commit, nor come back."""
    volume = Volume()
    first = await recovery.recover(InMemoryClient(volume))
    tracker = DurabilityTracker(vdl=first.vdl, pg_tails=first.pg_tails, lsn_floor=first.lsn_floor)
    ship(volume, first.epoch, mtr(tracker, [0, PG1_PAGE, PG2_PAGE]), volume.nodes)
    acknowledge(tracker, volume, volume.nodes)
    lost = mtr(tracker, [PG2_PAGE, PG2_PAGE, PG2_PAGE])
    ship(volume, first.epoch, lost, ["n5"])  # never acknowledged; writer 1 crashes

    volume.up.discard("n5")
    second = await recovery.recover(InMemoryClient(volume))
    assert second.vdl < lost[0].lsn
    tracker = DurabilityTracker(vdl=second.vdl, pg_tails=second.pg_tails, lsn_floor=second.lsn_floor)
    committed = mtr(tracker, [PG1_PAGE, 0])
    ship(volume, second.epoch, committed, sorted(volume.up))
    acknowledge(tracker, volume, sorted(volume.up))
    assert tracker.vdl >= committed[-1].lsn  # acknowledged; writer 2 crashes

    volume.up.add("n5")
    third = await recovery.recover(InMemoryClient(volume))
    assert third.vdl >= committed[-1].lsn, "the acknowledged commit survives"
    assert third.pg_tails.get(2, 0) == second.pg_tails.get(2, 0), "epoch 1's truncated records stay cut"
    assert all(volume.nodes[n].segments[2].scl < lost[0].lsn for n in volume.nodes)
    assert third.lsn_floor >= second.lsn_floor + LSN_ALLOCATION_LIMIT, "above all epoch 2 could allocate"
