"""The redo stream's two sans-I/O ends (DESIGN.md 5): the writer's RedoStream and a reader's
ReplicaState, joined here by frames with no sockets. "The writer streams the same redo records
(whole MTRs only), VDL updates and commit notices to each reader. A reader applies records only
to pages it has cached, discards the rest, and never applies beyond VDL." """

from __future__ import annotations

import asyncio

import pytest

from aurora_db.constants import FOLLOWER_BUFFER_BYTES_MAX, REPLICA_PENDING_RECORDS_MAX
from aurora_db.framing import FrameDecoder
from aurora_db.quorum import DurabilityTracker
from compute_node.redo_stream import HELLO, RECORDS, STATE, RedoStream
from compute_node.replica import ReplicaState, StreamBroken
from compute_node.transactions import Snapshot


class Transport:
    """What RedoStream needs of an asyncio transport: frames written, a buffer size, abort."""

    def __init__(self, buffered: int = 0):
        self.decoder = FrameDecoder()
        self.frames: list[dict] = []
        self.buffered = buffered
        self.aborted = False

    def write(self, data: bytes) -> None:
        self.frames.extend(self.decoder.feed(data))

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def is_closing(self) -> bool:
        return self.aborted

    def abort(self) -> None:
        self.aborted = True


class Writer:
    """A writer in miniature: a tracker that allocates MTRs, acks from four segments, a snapshot."""

    def __init__(self, loop):
        self.tracker = DurabilityTracker(vdl=0, pg_tails={}, lsn_floor=0)
        self.snapshot = Snapshot(1030, frozenset({1025}))
        self.stream = RedoStream(loop, 7, self.tracker, lambda: self.snapshot, clock_ms=lambda: 1_000.0)

    def mtr(self, *page_ids: int) -> list:
        records = [self.tracker.allocate(page_id, 0, "heap_set_xmax", (0, 1025), cpl=False) for page_id in page_ids]
        records[-1] = self.tracker.seal_mtr(records[-1])
        self.stream.publish(records, [list(r.sealed()) for r in records])
        return records

    def ack_all(self) -> None:
        for pg in {r_pg for r_pg in self.tracker.pg_tail}:
            for segment in ("a1", "a2", "b1", "b2"):
                self.tracker.on_ack(pg, segment, self.tracker.pg_tail[pg])
        self.stream.notify()


async def _turn() -> None:
    await asyncio.sleep(0)


async def test_a_follower_gets_a_hello_then_every_record_above_it_once_in_order():
    writer = Writer(asyncio.get_running_loop())
    writer.mtr(1, 2)
    writer.ack_all()
    await _turn()
    writer.mtr(3)  # shipped, not durable yet: retained for a follower that comes now
    follower = Transport()
    assert writer.stream.subscribe(follower)
    hello, backlog = follower.frames
    assert hello["t"] == HELLO and hello["epoch"] == 7 and hello["vdl"] == 2 and hello["pg_points"] == {"0": 2}
    assert (hello["xmax"], hello["active"]) == (1030, [1025])
    assert backlog["t"] == RECORDS and len(backlog["records"]) == 1
    writer.mtr(4, 5)
    writer.snapshot = Snapshot(1031, frozenset())
    writer.ack_all()
    writer.ack_all()  # two notifications in one loop turn: one state frame
    await _turn()
    kinds = [frame["t"] for frame in follower.frames]
    assert kinds == [HELLO, RECORDS, RECORDS, STATE]
    assert follower.frames[-1]["vdl"] == 5 and follower.frames[-1]["active"] == []

    replica = ReplicaState(hello)
    for frame in follower.frames[1:]:
        if frame["t"] == RECORDS:
            replica.on_records(frame["records"])
    assert replica.lag_lsn == 3 and replica.applied_lsn == 2
    applied = replica.on_state(follower.frames[-1], now_ms=1_004.0)
    assert [r.lsn for r in applied] == [3, 4, 5] and applied[-1].cpl
    assert replica.applied_lsn == 5 and replica.pg_points == {0: 5} and replica.lag_lsn == 0
    assert replica.snapshot == Snapshot(1031, frozenset()) and replica.last_lag_ms == 4.0


async def test_a_reader_applies_nothing_above_vdl_and_never_half_an_mtr():
    writer = Writer(asyncio.get_running_loop())
    follower = Transport()
    writer.stream.subscribe(follower)
    replica = ReplicaState(follower.frames[0])
    writer.mtr(1, 2, 3)
    writer.mtr(4)
    replica.on_records(follower.frames[1]["records"])
    replica.on_records(follower.frames[2]["records"])
    assert replica.on_state({"vdl": 0, "xmax": 1030, "active": [1025], "at_ms": 0}, 0) == []
    assert [r.lsn for r in replica.on_state({"vdl": 3, "xmax": 1030, "active": [], "at_ms": 0}, 0)] == [1, 2, 3]
    torn = ReplicaState(follower.frames[0])
    torn.on_records(follower.frames[1]["records"])
    with pytest.raises(StreamBroken):  # VDL is always an MTR's last record: record 2 is not
        torn.on_state({"vdl": 2, "xmax": 1030, "active": [], "at_ms": 0}, 0)


async def test_a_broken_stream_is_refused_not_applied():
    writer = Writer(asyncio.get_running_loop())
    follower = Transport()
    writer.stream.subscribe(follower)
    writer.mtr(1)
    writer.mtr(2)
    writer.mtr(3)
    hello, first, second, third = follower.frames
    with pytest.raises(StreamBroken):  # a gap: record 2 names record 1, which never came
        ReplicaState(hello).on_records(second["records"])
    skipped = ReplicaState(hello)
    skipped.on_records(first["records"])
    with pytest.raises(StreamBroken):  # record 2 lost in between
        skipped.on_records(third["records"])
    early = ReplicaState(hello)
    early.on_records(first["records"])
    with pytest.raises(StreamBroken):  # a VDL at a record that has not arrived
        early.on_state({"vdl": 2, "xmax": 1030, "active": [], "at_ms": 0}, 0)
    assert early.applied_lsn == 0 and early.lag_lsn == 1  # nothing taken from a refused frame
    replica = ReplicaState(hello)
    replica.on_records(first["records"] + second["records"])
    replica.on_state({"vdl": 2, "xmax": 1030, "active": [], "at_ms": 0}, 0)
    with pytest.raises(StreamBroken):  # VDL going back
        replica.on_state({"vdl": 1, "xmax": 1030, "active": [], "at_ms": 0}, 0)


def test_pending_records_above_vdl_are_bounded():
    hello = {"epoch": 1, "vdl": 0, "pg_points": {}, "xmax": 1024, "active": []}
    replica = ReplicaState(hello)
    writer = DurabilityTracker(vdl=0, pg_tails={}, lsn_floor=0, allocation_limit=REPLICA_PENDING_RECORDS_MAX + 10)
    records = [list(writer.allocate(1, 0, "heap_set_xmax", (0, 1), cpl=True).sealed())
               for _ in range(REPLICA_PENDING_RECORDS_MAX + 1)]
    with pytest.raises(StreamBroken):
        replica.on_records(records)


async def test_a_follower_too_far_behind_is_disconnected_and_the_others_go_on():
    writer = Writer(asyncio.get_running_loop())
    slow, fast = Transport(buffered=FOLLOWER_BUFFER_BYTES_MAX + 1), Transport()
    writer.stream.subscribe(slow)
    writer.stream.subscribe(fast)
    writer.mtr(1)
    assert slow.aborted and not fast.aborted and writer.stream.followers == 1
    writer.mtr(2)
    assert [frame["t"] for frame in fast.frames] == [HELLO, RECORDS, RECORDS]
