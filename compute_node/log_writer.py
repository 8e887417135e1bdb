"""The bridge between the engine thread, which makes redo records, and the event loop, which
ships them and hears acks.

The engine thread allocates LSNs and applies records to cached pages; the loop thread feeds
acks to the DurabilityTracker. One lock guards the tracker. Commit waiters live on the loop.

Shipping is a boxcar (as Aurora's writer batches per PG): finished MTRs wait in a bounded list
until someone needs them durable (a commit, an LSN-room or cache-eviction wait), until
BOXCAR_RECORDS_MAX of them wait, or until BOXCAR_DELAY_MS after the first of them; then all of
them leave in one batch per PG. A busy writer so sends one append per PG for many statements
and commits, instead of one per MTR, and each storage node fsyncs once for all of them.
Invariants: records reach the StorageClient in LSN order (only the loop thread ships, always
the whole list, taken under the lock that appended to it); a commit future resolves only when
VDL >= its LSN; nobody waits for VDL without first asking for a ship.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import threading
from typing import Callable

from aurora_db.constants import BOXCAR_DELAY_MS, BOXCAR_RECORDS_MAX, COMMIT_TIMEOUT_MS
from aurora_db.errors import QuorumTimeout, StaleEpoch
from aurora_db.quorum import AllocationLimitReached, DurabilityTracker
from aurora_db.records import Record
from compute_node.storage_client import StorageClient


class WouldWait(Exception):
    """Raised instead of blocking when engine code runs on the event-loop thread (a loop that
    blocked could never hear the acks or replies it waits for). Engine.call_restartable then
    gives the call up, leaving nothing behind, and runs it again on the engine thread."""


class LogWriter:
    def __init__(self, loop: asyncio.AbstractEventLoop, client: StorageClient, tracker: DurabilityTracker):
        self.loop = loop
        self._loop_thread = threading.get_ident()  # made on the loop's thread (Engine.__init__)
        self.client = client
        self.tracker = tracker
        self._lock = threading.Lock()
        self._vdl_advanced = threading.Condition(self._lock)
        self._waiters: list[tuple[int, int, asyncio.Future]] = []  # heap of (lsn, seq, future)
        self._seq = itertools.count()
        self._boxcar: list[Record] = []  # sealed MTRs not yet shipped, in LSN order
        self._ship_asked = False  # a ship_now is scheduled on the loop
        self._ships = 0  # ships so far: a boxcar timer armed before the latest ship is stale
        self.fenced_reason: str | None = None
        self.on_shipped: Callable[[list[Record], list[list]], None] | None = None  # the redo stream's
        self.on_vdl_advanced: Callable[[], None] | None = None

    # --- engine thread ------------------------------------------------------------------------

    def reserve(self, records_needed: int, timeout_ms: int = COMMIT_TIMEOUT_MS) -> None:
        """Block until `records_needed` LSNs may be allocated (LAL back-pressure)."""
        with self._lock:
            if self.tracker.room() < records_needed:
                self._ask_ship_locked()
                if self.on_loop_thread():
                    raise WouldWait(f"no room for {records_needed} LSNs")
            ok = self._vdl_advanced.wait_for(
                lambda: self.fenced_reason or self.tracker.room() >= records_needed, timeout_ms / 1000)
            self._check_fenced()
            if not ok:
                raise QuorumTimeout(f"no write quorum for {timeout_ms} ms: VDL is stuck at {self.tracker.vdl}")

    def allocate(self, page_id: int, prev_page: int, op: str, args: tuple) -> Record:
        with self._lock:
            try:
                return self.tracker.allocate(page_id, prev_page, op, args, cpl=False)
            except AllocationLimitReached as error:
                raise AssertionError(f"allocation inside a reserved MTR failed: {error}") from None

    def finish_mtr(self, records: list[Record]) -> list[Record]:
        """Seal the MTR's last record as its CPL and put the records in the boxcar."""
        with self._lock:
            records[-1] = self.tracker.seal_mtr(records[-1])
            was_empty = not self._boxcar
            self._boxcar.extend(records)
            if len(self._boxcar) >= BOXCAR_RECORDS_MAX:
                self._ask_ship_locked()
            elif was_empty:  # the first MTR of this boxcar: it leaves within BOXCAR_DELAY_MS
                self._soon(self.loop.call_later, BOXCAR_DELAY_MS / 1000, self._ship_if_not_yet, self._ships)
        return records

    def _ask_ship_locked(self) -> None:
        if not self._ship_asked and self._boxcar:
            self._ship_asked = True
            self._soon(self.ship_now)

    def _soon(self, fn, *args) -> None:
        """Run fn on the loop after the current callback (no wake-up write from the loop itself)."""
        if self.on_loop_thread():
            self.loop.call_soon(fn, *args)
        else:
            self.loop.call_soon_threadsafe(fn, *args)

    @property
    def vdl(self) -> int:
        return self.tracker.vdl

    def read_point(self, pg: int) -> tuple[int, list[str]]:
        with self._lock:
            lsn = self.tracker.read_point(pg)
            return lsn, self.tracker.segments_complete_to(pg, lsn)

    def quorum_points(self) -> dict[int, int]:
        """Every PG's PGCL: the LSN a write quorum of its segments holds."""
        with self._lock:
            return dict(self.tracker.pgcl)

    def wait_vdl_advance(self, timeout_ms: int = COMMIT_TIMEOUT_MS) -> None:
        with self._lock:
            self._ask_ship_locked()
            if self.on_loop_thread():
                raise WouldWait("VDL must advance")
            vdl = self.tracker.vdl
            if not self._vdl_advanced.wait_for(lambda: self.tracker.vdl > vdl or self.fenced_reason, timeout_ms / 1000):
                raise QuorumTimeout(f"no write quorum for {timeout_ms} ms: VDL is stuck at {vdl}")
            self._check_fenced()

    def has_room(self, records: int) -> bool:
        with self._lock:
            return self.tracker.room() >= records

    def on_loop_thread(self) -> bool:
        return threading.get_ident() == self._loop_thread

    def _check_fenced(self) -> None:
        if self.fenced_reason:
            raise StaleEpoch(f"this writer was fenced: {self.fenced_reason}")

    # --- loop thread --------------------------------------------------------------------------

    def _ship_if_not_yet(self, ships_when_armed: int) -> None:
        """A boxcar's timer: ship it unless it already left. A timer that outlived its boxcar
        would otherwise ship a later one early, with a few records, in a request of its own."""
        if self._ships == ships_when_armed:
            self.ship_now()

    def ship_now(self) -> None:
        """Ship every record in the boxcar (a no-op when it is empty)."""
        with self._lock:
            records, self._boxcar = self._boxcar, []
            self._ship_asked = False
            self._ships += 1 if records else 0
        if records:
            sealed = self.client.ship(records)
            if self.on_shipped is not None:
                self.on_shipped(records, sealed)

    def on_ack(self, pg: int, node_id: str, scl: int) -> None:
        with self._lock:
            advanced = self.tracker.on_ack(pg, node_id, scl)
            if advanced:
                self._vdl_advanced.notify_all()
            vdl = self.tracker.vdl
        if advanced:
            while self._waiters and self._waiters[0][0] <= vdl:
                _, _, future = heapq.heappop(self._waiters)
                if not future.done():
                    future.set_result(vdl)
            if self.on_vdl_advanced is not None:
                self.on_vdl_advanced()

    def on_forget(self, node_id: str) -> None:
        with self._lock:
            self.tracker.forget_segment(node_id)

    def on_fenced(self, reason: str) -> None:
        with self._lock:
            self.fenced_reason = reason
            self._vdl_advanced.notify_all()
        for _, _, future in self._waiters:
            if not future.done():
                future.set_exception(StaleEpoch(f"this writer was fenced: {reason}"))
        self._waiters.clear()

    async def wait_durable(self, lsn: int, timeout_ms: int = COMMIT_TIMEOUT_MS) -> None:
        """Return once VDL >= lsn; raise QuorumTimeout after `timeout_ms` (outcome then unknown)."""
        if self.fenced_reason:
            raise StaleEpoch(f"this writer was fenced: {self.fenced_reason}")
        if self.tracker.vdl >= lsn:
            return
        with self._lock:
            self._ask_ship_locked()  # at the end of this loop turn: commits made meanwhile ride along
        future = self.loop.create_future()
        heapq.heappush(self._waiters, (lsn, next(self._seq), future))
        try:
            await asyncio.wait_for(asyncio.shield(future), timeout_ms / 1000)
        except asyncio.TimeoutError:
            self._waiters = [entry for entry in self._waiters if entry[2] is not future]  # no stale waiters
            heapq.heapify(self._waiters)
            raise QuorumTimeout(
                f"commit at LSN {lsn} not acknowledged by a write quorum within {timeout_ms} ms "
                f"(VDL {self.tracker.vdl}); its outcome is unknown") from None
