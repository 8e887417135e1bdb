"""A reader compute node's view of the volume (DESIGN.md 5): what it has applied of the writer's
redo stream (redo_stream.py), and the stand-ins for the writer's log and transaction manager that
its engine uses.

ReplicaState is the sans-I/O core: records in (whole MTRs, in LSN order), state frames in, and
out the records to apply, which are exactly those at or below the frame's VDL. Invariants:
  - Nothing above VDL is ever applied, and an MTR is applied whole or not at all (a VDL must be
    the last record of an MTR received).
  - The records received form one chain: each names the one before it (prev_volume), starting at
    the hello's VDL, so a gap is noticed, never skipped.
  - While it follows one writer, `applied_lsn` and the snapshot never move back; the snapshot read
    with a VDL sees only commits at or below it (the writer's own rule), so a query on a reader
    sees a state that existed on the writer.
  - A PG's read point is its last record at or below `applied_lsn`: a segment can serve it as
    soon as it is complete to that record.
  - At most REPLICA_PENDING_RECORDS_MAX records wait above the applied VDL (the writer never
    allocates more than LAL above VDL): more is a broken stream, and the reader starts again.
The engine of a reader refuses every change: ReplicaLog has no LSNs to give and
ReplicaTransactions no ids (25006, as PostgreSQL's hot standby does).
"""

from __future__ import annotations

import collections
import threading

from aurora_db.constants import REPLICA_PENDING_RECORDS_MAX
from aurora_db.errors import ReadOnlyTransaction
from aurora_db.records import Record, open_sealed
from compute_node.transactions import Snapshot, Transactions

LAG_SAMPLES_MAX = 1024  # recent replica-lag samples kept for the p50/p99 in status
READ_ONLY_MESSAGE = "cannot execute {} in a read-only transaction"


class StreamBroken(Exception):
    """The writer's stream broke an invariant (order, bounds): drop it and start again."""


def _snapshot_of(frame: dict) -> Snapshot:
    return Snapshot(int(frame["xmax"]), frozenset(int(x) for x in frame["active"]))


class ReplicaState:
    def __init__(self, hello: dict, now_ms: float | None = None):
        self.epoch = int(hello["epoch"])
        self.applied_lsn = int(hello["vdl"])
        self.pg_points = {int(pg): int(lsn) for pg, lsn in hello["pg_points"].items()}
        self.snapshot = _snapshot_of(hello)
        self._pending: collections.deque[tuple[Record, int]] = collections.deque()  # (record, bytes)
        self._pending_bytes = 0
        self._last_lsn = self.applied_lsn  # the highest LSN received
        self.lag_ms_samples: collections.deque[float] = collections.deque(maxlen=LAG_SAMPLES_MAX)
        self.last_lag_ms: float | None = None
        if now_ms is not None:
            self._note_lag(now_ms - float(hello["at_ms"]))

    def on_records(self, sealed: list) -> None:
        for crc, body in sealed:
            try:
                record = open_sealed(crc, body)
            except Exception as error:  # a checksum mismatch or a body that does not decode
                raise StreamBroken(f"a record that does not verify: {error}") from None
            if record.prev_volume != self._last_lsn or record.lsn <= self._last_lsn:
                raise StreamBroken(f"record {record.lsn} follows {record.prev_volume}, but the last one "
                                   f"received is {self._last_lsn}: a gap in the stream")
            self._last_lsn = record.lsn
            self._pending.append((record, len(body)))
            self._pending_bytes += len(body)
        if len(self._pending) > REPLICA_PENDING_RECORDS_MAX:
            raise StreamBroken(f"{len(self._pending)} records above VDL {self.applied_lsn}")

    def on_state(self, frame: dict, now_ms: float) -> list[Record]:
        """A state frame: returns the records to apply now (at or below its VDL), in LSN order,
        and takes its snapshot. Apply them and adopt the snapshot in the same engine turn."""
        vdl, snapshot, at_ms = int(frame["vdl"]), _snapshot_of(frame), float(frame["at_ms"])  # all before any change
        if vdl < self.applied_lsn:
            raise StreamBroken(f"VDL {vdl} is below the applied {self.applied_lsn}")
        count = 0
        for record, _ in self._pending:
            if record.lsn > vdl:
                break
            count += 1
        if vdl > self.applied_lsn and not (count and self._pending[count - 1][0].lsn == vdl
                                            and self._pending[count - 1][0].cpl):
            raise StreamBroken(f"VDL {vdl} is not the last record of an MTR received")
        ready = []
        for _ in range(count):
            record, size = self._pending.popleft()
            self._pending_bytes -= size
            self.pg_points[record.pg] = record.lsn
            ready.append(record)
        self.applied_lsn = vdl
        self.snapshot = snapshot
        self._note_lag(now_ms - at_ms)
        return ready

    def _note_lag(self, lag_ms: float) -> None:
        """How old the writer's state was when this reader applied it (one host: one clock)."""
        self.last_lag_ms = max(0.0, lag_ms)
        self.lag_ms_samples.append(self.last_lag_ms)

    @property
    def lag_lsn(self) -> int:
        """Records received from the writer and not yet applied (their VDL has not come)."""
        return self._last_lsn - self.applied_lsn

    @property
    def lag_bytes(self) -> int:
        return self._pending_bytes

    def lag_percentile_ms(self, fraction: float) -> float | None:
        if not self.lag_ms_samples:
            return None
        ordered = sorted(self.lag_ms_samples)
        return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


class ReplicaLog:
    """The LogWriter of a reader's engine: read points from the stream, and no writes at all."""

    def __init__(self, state: ReplicaState):
        self.state = state
        self._loop_thread = threading.get_ident()  # made on the loop's thread

    @property
    def vdl(self) -> int:
        return self.state.applied_lsn  # every cached page is at or below it: all may be evicted

    def read_point(self, pg: int) -> tuple[int, list[str]]:
        return self.state.pg_points.get(pg, 0), []

    def wait_vdl_advance(self, timeout_ms: int = 0) -> None:
        """Nothing on a reader waits for durability: every page it holds is durable already."""

    def has_room(self, records: int) -> bool:
        return True

    def on_loop_thread(self) -> bool:
        return threading.get_ident() == self._loop_thread

    def reserve(self, records_needed: int, timeout_ms: int = 0) -> None:
        raise ReadOnlyTransaction(READ_ONLY_MESSAGE.format("a write"))

    def allocate(self, *args) -> Record:
        raise AssertionError("a reader allocates no LSN")

    def finish_mtr(self, records: list[Record]) -> list[Record]:
        raise AssertionError("a reader makes no MTR")

    def on_ack(self, pg: int, node_id: str, scl: int) -> None:
        """A reader's storage links report SCLs too; it reads at its own points and ignores them."""

    def on_forget(self, node_id: str) -> None:
        pass


class ReplicaTransactions(Transactions):
    """A reader's transactions: snapshots come from the writer's stream, statuses from the clog
    pages it reads and applies; it starts no transaction of its own."""

    def __init__(self, store, state: ReplicaState):
        super().__init__(store)
        self.state = state
        self.horizon = 0  # a reader never decides that an id without a commit record aborted

    def snapshot(self) -> Snapshot:
        snapshot = self.state.snapshot
        with self._lock:
            self._snapshots[id(snapshot)] = snapshot
        return snapshot

    def oldest_xmin(self) -> int:
        """The lowest xmin of the snapshots this reader's queries still hold, or of the one the next
        query takes: what it reports to its writer, which prunes no version these may see."""
        with self._lock:
            held = [snapshot.xmin for snapshot in list(self._snapshots.values())]
        return min(held + [self.state.snapshot.xmin])

    def begin(self) -> int:
        raise ReadOnlyTransaction(READ_ONLY_MESSAGE.format("a write"))

    def recover(self) -> None:
        raise AssertionError("a reader does not recover the volume")
