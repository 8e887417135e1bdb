"""The writer's redo stream to its readers (DESIGN.md 5): every finished MTR, and the writer's VDL
with its transaction snapshot each time either changes.

A reader follows by sending {"t": "follow", "xmin"} on the writer's admin port (xmin: the oldest
snapshot its queries still hold from an earlier stream, or None). From then on that
connection only carries frames from the writer:
  hello    {"t": "hello", "ok": True, "epoch", "vdl", "pg_points": {pg: lsn}, "xmax", "active", "at_ms"}
           where to start: the reader reads a page of PG `pg` at read point pg_points[pg] (the PG's
           last record at or below vdl), and sees rows through the snapshot (xmax, active).
  records  {"t": "records", "records": [[crc, body], ...]}: whole MTRs, in LSN order, every record
           above the hello's vdl exactly once.
  state    {"t": "state", "vdl", "xmax", "active", "at_ms"}: the writer's VDL and snapshot at
           `at_ms` (wall clock, milliseconds); the records it covers were sent before it. Sent
           when either changes, and at least every STREAM_HEARTBEAT_MS.
Hello and state frames carry a sequence number, `seq`. A reader sends one kind of frame back:
  feedback {"t": "feedback", "seq", "xmin"}: having applied every frame up to `seq`, the lowest
           xmin of the snapshots its queries hold or the next one takes (PostgreSQL's
           hot_standby_feedback); at most every READER_FEEDBACK_INTERVAL_MS, after a state frame.
Invariants:
  - The writer prunes no row version a reader's snapshot may see (readers_xmin): a follower's
    horizon is the lower of its last feedback and the xmin of every snapshot sent to it that no
    feedback has acknowledged yet, so a snapshot is covered from the moment it is sent. A
    follower with more than FOLLOWER_UNACKED_SNAPSHOTS_MAX of them is disconnected. While a
    reader has no stream (it lost one and has not followed again), nothing holds pruning back for
    it: a long query that outlives the reader's stream may miss rows, as PostgreSQL's
    hot_standby_feedback leaves the same gap.
  - The snapshot in a frame sees only commits at or below the frame's VDL: a transaction leaves
    the writer's active set only once its commit is durable (or it aborted), so a reader that has
    applied every record up to VDL and reads through that snapshot sees a state that existed on
    the writer, never a torn transaction, and never goes back in time.
  - Records shipped before a reader subscribed but not yet durable are retained (at most LAL of
    them: the writer allocates no further above VDL) and sent right after its hello. Every record
    names the one allocated before it (prev_volume), so a reader checks that it misses none.
  - A follower's unsent bytes are bounded (FOLLOWER_BUFFER_BYTES_MAX): a follower that falls
    further behind is disconnected, and starts again from a new hello.
Runs on the event loop's thread only; the engine thread reaches it through `notify`.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from typing import Callable

from aurora_db.constants import (
    BATCH_RECORDS_MAX,
    FOLLOWER_BUFFER_BYTES_MAX,
    FOLLOWERS_MAX,
    FOLLOWER_UNACKED_SNAPSHOTS_MAX,
    LSN_ALLOCATION_LIMIT,
)
from aurora_db.framing import encode_frame
from aurora_db.quorum import DurabilityTracker
from aurora_db.records import Record
from compute_node.transactions import Snapshot

log = logging.getLogger(__name__)

FOLLOW = "follow"
HELLO = "hello"
RECORDS = "records"
STATE = "state"
FEEDBACK = "feedback"


def wall_clock_ms() -> float:
    return time.time() * 1000


def _record_frames(sealed: list[list]) -> list[bytes]:
    """Records frames of at most BATCH_RECORDS_MAX records each: a boxcar has no size limit of
    its own, a frame has (a record is at most a page, so such a frame always fits)."""
    return [encode_frame({"t": RECORDS, "records": sealed[start:start + BATCH_RECORDS_MAX]})
            for start in range(0, len(sealed), BATCH_RECORDS_MAX)]


class RedoStream:
    def __init__(self, loop: asyncio.AbstractEventLoop, epoch: int, tracker: DurabilityTracker,
                 snapshot: Callable[[], Snapshot], clock_ms: Callable[[], float] = wall_clock_ms):
        self.loop = loop
        self.epoch = epoch
        self.tracker = tracker
        self._snapshot = snapshot
        self._clock_ms = clock_ms
        self._followers: dict[asyncio.WriteTransport, FollowerSnapshots] = {}
        self._seq = 0  # of the last hello or state frame
        self._retained: collections.deque[tuple[int, list]] = collections.deque()  # (lsn, [crc, body]) above VDL
        self._state_due = False
        self._last_state: tuple | None = None

    @property
    def followers(self) -> int:
        return len(self._followers)

    def subscribe(self, transport: asyncio.WriteTransport, held_xmin: int | None = None) -> bool:
        """Start a follower: its hello, then every retained record above the hello's VDL. False if
        there are FOLLOWERS_MAX already."""
        if len(self._followers) >= FOLLOWERS_MAX:
            return False
        self._prune()
        vdl, snapshot = self.tracker.vdl, self._snapshot()
        self._seq += 1
        snapshots = FollowerSnapshots()
        snapshots.reported_xmin = held_xmin  # a reader that followed before: its queries' snapshots
        snapshots.sent(self._seq, snapshot.xmin)
        hello = {"t": HELLO, "ok": True, "epoch": self.epoch, "vdl": vdl, "seq": self._seq,
                 "pg_points": {str(pg): lsn for pg, lsn in self.tracker.durable_pg_tail.items()},
                 "xmax": snapshot.xmax, "active": sorted(snapshot.active), "at_ms": self._clock_ms()}
        transport.write(encode_frame(hello))
        for frame in _record_frames([sealed for _, sealed in self._retained]):
            transport.write(frame)
        self._followers[transport] = snapshots
        log.info("a reader follows from VDL %d (%d records above it sent first)", vdl, len(self._retained))
        return True

    def unsubscribe(self, transport: asyncio.WriteTransport) -> None:
        self._followers.pop(transport, None)

    def feedback(self, transport: asyncio.WriteTransport, seq: int, xmin: int) -> None:
        """A follower applied every frame up to `seq`, and its snapshots' lowest xmin is `xmin`."""
        snapshots = self._followers.get(transport)
        if snapshots is not None:
            snapshots.acknowledged(seq, xmin)

    def readers_xmin(self) -> int | None:
        """The lowest xmin a follower's snapshot may have, None with no follower."""
        return min((x for x in (s.xmin() for s in self._followers.values()) if x is not None), default=None)

    def publish(self, records: list[Record], sealed: list[list]) -> None:
        """Records just shipped to storage (whole MTRs, in LSN order), with their sealed forms."""
        self._prune()
        for record, pair in zip(records, sealed):
            self._retained.append((record.lsn, pair))
        assert len(self._retained) <= LSN_ALLOCATION_LIMIT, "more records above VDL than LAL allows"
        if self._followers:
            for frame in _record_frames(sealed):
                self._send(frame)

    def notify(self) -> None:
        """VDL advanced or a transaction ended: send the new state once, at the end of this loop
        turn (so a burst of acks and commits costs one frame). Thread-safe."""
        if self._state_due or not self._followers:
            return
        self._state_due = True
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self.loop:
            self.loop.call_soon(self._send_state)
        else:
            self.loop.call_soon_threadsafe(self._send_state)

    def heartbeat(self) -> None:
        """Every STREAM_HEARTBEAT_MS: the state again, changed or not, so a reader measures its lag
        and knows its writer lives (a paused writer sends nothing, and its readers look for a newer one)."""
        self._last_state = None
        self._send_state()

    def _send_state(self) -> None:
        self._state_due = False
        self._prune()
        vdl, snapshot = self.tracker.vdl, self._snapshot()
        state = (vdl, snapshot.xmax, snapshot.active)
        if state == self._last_state or not self._followers:
            self._last_state = state if self._followers else None
            return
        self._last_state = state
        self._seq += 1
        for transport, snapshots in list(self._followers.items()):
            snapshots.sent(self._seq, snapshot.xmin)
            if len(snapshots.unacknowledged) > FOLLOWER_UNACKED_SNAPSHOTS_MAX:
                log.warning("a reader acknowledged none of the last %d snapshots: disconnecting it (it starts again)",
                            FOLLOWER_UNACKED_SNAPSHOTS_MAX)
                self._drop(transport)
        self._send(encode_frame({"t": STATE, "seq": self._seq, "vdl": vdl, "xmax": snapshot.xmax,
                                 "active": sorted(snapshot.active), "at_ms": self._clock_ms()}))

    def _prune(self) -> None:
        vdl = self.tracker.vdl
        while self._retained and self._retained[0][0] <= vdl:
            self._retained.popleft()

    def _send(self, frame: bytes) -> None:
        for transport in list(self._followers):
            if transport.is_closing():
                self._followers.pop(transport, None)
                continue
            transport.write(frame)
            if transport.get_write_buffer_size() > FOLLOWER_BUFFER_BYTES_MAX:
                log.warning("a reader is %d bytes behind the redo stream: disconnecting it (it starts again)",
                            transport.get_write_buffer_size())
                self._drop(transport)

    def _drop(self, transport: asyncio.WriteTransport) -> None:
        self._followers.pop(transport, None)
        transport.abort()

    def close(self) -> None:
        for transport in self._followers:
            transport.abort()
        self._followers.clear()


class FollowerSnapshots:
    """The snapshots one follower may hold: those sent to it that no feedback acknowledged yet,
    and the lowest xmin its last feedback reported."""

    __slots__ = ("unacknowledged", "reported_xmin")

    def __init__(self):
        self.unacknowledged: collections.deque[tuple[int, int]] = collections.deque()  # (seq, xmin), seq ascending
        self.reported_xmin: int | None = None

    def sent(self, seq: int, xmin: int) -> None:
        if self.unacknowledged and self.unacknowledged[-1][1] == xmin:
            self.unacknowledged[-1] = (seq, xmin)  # one entry per xmin, acknowledged with its last frame
        else:
            self.unacknowledged.append((seq, xmin))

    def acknowledged(self, seq: int, xmin: int) -> None:
        while self.unacknowledged and self.unacknowledged[0][0] <= seq:
            self.unacknowledged.popleft()
        self.reported_xmin = xmin

    def xmin(self) -> int | None:
        xmins = [xmin for _, xmin in self.unacknowledged]
        if self.reported_xmin is not None:
            xmins.append(self.reported_xmin)
        return min(xmins, default=None)
