"""Transaction ids, their status, snapshots and MVCC visibility (DESIGN.md 4; PostgreSQL's rules).

A transaction gets an id at its first write. Its commit record is a `clog_set COMMITTED` redo
record, the CPL of its own MTR: the commit LSN. Invariants: an id stays in the active set until
its commit is durable (VDL >= commit LSN) or it aborted, so no snapshot ever sees a commit that
recovery could lose; ids are never reused: the meta page records a limit, raised a batch at a
time, and after recovery every id below that limit without a durable commit is aborted.
A transaction whose commit or abort record could not be made (no write quorum: a page read or
an eviction timed out before its MTR began) is aborted all the same: it has no commit record, so
recovery would abort it too. It leaves the active set at once, so its rows and keys are free,
and is remembered as aborted until begin() manages to log its abort record.
Row locks are the xmax of a row version (PostgreSQL's): a writer that meets one held by an open
transaction waits, on the event loop, for that transaction to end (wait_for); the wait-for graph
(waiter -> blocker) stays acyclic: a wait that would close a cycle fails at once with 40P01.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
import weakref
from typing import Callable

from aurora_db.pages import XID_ABORTED, XID_COMMITTED, XID_IN_PROGRESS, XIDS_PER_CLOG_PAGE
from aurora_db.errors import DatabaseError, ProgramLimitExceeded
from compute_node.page_store import DATA_FIRST_PAGE, META_PAGE, MTR_RECORDS_MAX, PageStore

log = logging.getLogger(__name__)

BOOTSTRAP_XID = 1  # the catalog's own rows; always committed
FIRST_XID = 1024
XID_BATCH = 1024
CLOG_FIRST_PAGE = 1
CLOG_PAGES_MAX = DATA_FIRST_PAGE - CLOG_FIRST_PAGE
assert XIDS_PER_CLOG_PAGE % XID_BATCH == 0 and FIRST_XID % XID_BATCH == 0
FINAL_STATUS_MEMO_MAX = 1_000_000
LATE_ABORT_RECORDS_PER_MTR = MTR_RECORDS_MAX  # abort records begin() logs at once for earlier failures
SNAPSHOT_PER_TRANSACTION = ("repeatable read", "serializable")  # isolation levels; SERIALIZABLE runs as REPEATABLE READ
ROW_LOCK_WAIT_MS_MAX = 60_000  # no row-lock wait lasts longer (a session's lock_timeout may be shorter): 55P03


class DeadlockDetected(DatabaseError):
    sqlstate = "40P01"


class LockNotAvailable(DatabaseError):
    sqlstate = "55P03"


class RowLockWait(Exception):
    """Raised on the engine thread (never a client error): the statement met a row or key that
    transaction `xid` is changing; its own changes are undone, and the session waits for `xid` to
    end on the event loop, then runs the statement again."""

    def __init__(self, xid: int):
        super().__init__(xid)
        self.xid = xid


@dataclasses.dataclass(frozen=True, slots=True, weakref_slot=True)
class Snapshot:
    xmax: int  # ids at or above this had not started
    active: frozenset  # ids in progress (or committed but not yet durable) when it was taken

    @property
    def xmin(self) -> int:
        """Every id below this had ended when the snapshot was taken: it sees their final status."""
        return min(self.active, default=self.xmax)


def clog_page_of(xid: int) -> int:
    return CLOG_FIRST_PAGE + xid // XIDS_PER_CLOG_PAGE


class Transactions:
    def __init__(self, store: PageStore):
        self.store = store
        self._lock = threading.Lock()
        self.active: set[int] = set()
        self.next_xid = FIRST_XID
        self.horizon = FIRST_XID  # ids below this without a commit record are aborted (recovery)
        self._final: dict[int, int] = {}
        # Aborted, but the abort record is not made yet. Grows only while no MTR can be made (each
        # entry cost its client a COMMIT_TIMEOUT_MS wait) and begin() drains it.
        self._aborted_unlogged: set[int] = set()
        self._waits_for: dict[int, int] = {}  # waiter xid -> blocker xid: acyclic
        self._ended: dict[int, list[tuple[asyncio.AbstractEventLoop, asyncio.Future]]] = {}  # blocker -> waits
        self.on_end: Callable[[], None] | None = None  # a transaction left the active set (the redo stream)
        # Every snapshot still referenced, by identity: equal snapshots (a frozen dataclass compares
        # by value) are each held here, so the one that lives longer still holds pruning back.
        self._snapshots: weakref.WeakValueDictionary[int, Snapshot] = weakref.WeakValueDictionary()
        self.readers_xmin: Callable[[], int | None] = lambda: None  # readers' oldest snapshots (the redo stream)

    def log_bootstrap(self) -> None:
        """Inside the bootstrap MTR: the first transaction status page and the id limit."""
        self.store.log(clog_page_of(0), "clog_init")
        self.store.log(META_PAGE, "meta_set", "xid_limit", FIRST_XID)

    def recover(self) -> None:
        """After volume recovery: continue above every id a previous writer could have used."""
        limit = self.store.get(META_PAGE).values["xid_limit"]
        self.next_xid = self.horizon = limit

    def begin(self) -> int:
        if self._aborted_unlogged:
            self._log_late_aborts()
        meta = self.store.get(META_PAGE)
        if self.next_xid >= meta.values["xid_limit"]:
            limit = meta.values["xid_limit"]
            if clog_page_of(limit + XID_BATCH) - CLOG_FIRST_PAGE >= CLOG_PAGES_MAX:
                raise ProgramLimitExceeded("transaction ids exhausted")
            with self.store.mtr(META_PAGE):
                if limit % XIDS_PER_CLOG_PAGE == 0:
                    self.store.log(clog_page_of(limit), "clog_init")
                self.store.log(META_PAGE, "meta_set", "xid_limit", limit + XID_BATCH)
            self.next_xid = max(self.next_xid, limit)
        with self._lock:
            xid = self.next_xid
            self.next_xid += 1
            self.active.add(xid)
        return xid

    def snapshot(self) -> Snapshot:
        with self._lock:
            snapshot = Snapshot(self.next_xid, frozenset(self.active))
            self._snapshots[id(snapshot)] = snapshot
        return snapshot

    def prune_horizon(self) -> int:
        """An id below which every commit is seen as committed by every snapshot that exists now or
        will be taken, here and on the readers (which report theirs): the lowest xmin of the
        snapshots still referenced and of the readers', and no higher than any open transaction
        (the next snapshot's xmin)."""
        with self._lock:
            horizon = min([snapshot.xmin for snapshot in list(self._snapshots.values())] + [self.next_xid, *self.active])
        readers = self.readers_xmin()
        return horizon if readers is None else min(horizon, readers)

    def dead_to_all(self) -> Callable[[int, int], bool]:
        """For pruning: does no snapshot, now or later, see a version (xmin, xmax)? True if its
        inserter aborted, or its deleter committed below the prune horizon. The horizon is taken
        when first needed: most pages a writer offers for pruning hold no ended version."""
        horizon = None
        status = self.status

        def dead(xmin: int, xmax: int) -> bool:
            nonlocal horizon
            if status(xmin) == XID_ABORTED:
                return True
            if xmax <= 0:
                return False
            if horizon is None:
                horizon = self.prune_horizon()
            return xmax < horizon and status(xmax) == XID_COMMITTED

        return dead

    def write_commit(self, xid: int) -> int:
        """Log the commit record; returns the commit LSN. The id stays active until finish().

        If the record cannot be made (a DatabaseError before the MTR's first record: a failure
        after it stops the process), the transaction is aborted and the error goes to the client."""
        page_id = clog_page_of(xid)
        try:
            self.store.get(page_id)
            with self.store.mtr():
                page = self.store.log(page_id, "clog_set", xid, XID_COMMITTED)
        except DatabaseError:
            self._abort_unlogged(xid)
            raise
        return page.lsn

    def write_abort(self, xid: int) -> None:
        """Log the abort record. A rollback cannot fail: without the record, the id is still aborted."""
        page_id = clog_page_of(xid)
        try:
            self.store.get(page_id)
            with self.store.mtr():
                self.store.log(page_id, "clog_set", xid, XID_ABORTED)
        except DatabaseError as error:
            log.warning("transaction %d aborted without its abort record for now: %s", xid, error)
            self._abort_unlogged(xid)
            return
        self.finish(xid)

    def _abort_unlogged(self, xid: int) -> None:
        with self._lock:
            self._aborted_unlogged.add(xid)
            self.active.discard(xid)
            waits = self._end_locked(xid)
        self._ended_now(waits)

    def _log_late_aborts(self) -> None:
        """Make the abort records that could not be made when their transactions ended: those on
        one clog page per call (so the MTR needs one page), at most LATE_ABORT_RECORDS_PER_MTR."""
        with self._lock:
            first = min(self._aborted_unlogged)
            page_id = clog_page_of(first)
            batch = sorted(x for x in self._aborted_unlogged if clog_page_of(x) == page_id)[:LATE_ABORT_RECORDS_PER_MTR]
        self.store.get(page_id)
        with self.store.mtr():
            for xid in batch:
                self.store.log(page_id, "clog_set", xid, XID_ABORTED)
        with self._lock:
            self._aborted_unlogged.difference_update(batch)

    def finish(self, xid: int) -> None:
        """The commit is durable, or the transaction aborted: other snapshots may now decide on it."""
        with self._lock:
            self.active.discard(xid)
            waits = self._end_locked(xid)
        self._ended_now(waits)

    def _ended_now(self, waits: list) -> None:
        _wake(waits)
        if self.on_end is not None:
            self.on_end()

    def _end_locked(self, xid: int) -> list:
        self._waits_for.pop(xid, None)
        return self._ended.pop(xid, [])

    # --- row-lock waits (called on the event loop) -----------------------------------------------

    def wait_begin(self, waiter: int | None, blocker: int, loop: asyncio.AbstractEventLoop) -> asyncio.Future:
        """A future that is done once `blocker` has ended (at once if it already has). Raises 40P01
        if `waiter` waiting for `blocker` would close a cycle of waits. Pair with wait_end()."""
        future = loop.create_future()
        with self._lock:
            if blocker not in self.active:
                future.set_result(None)
                return future
            if waiter is not None:
                chain = [waiter, blocker]
                next_ = self._waits_for.get(blocker)
                while next_ is not None:
                    chain.append(next_)
                    if next_ == waiter:
                        raise DeadlockDetected(
                            "deadlock detected",
                            detail="; ".join(f"Transaction {a} waits for transaction {b}." for a, b in zip(chain, chain[1:])),
                            hint="See server log for query details.")
                    assert len(chain) <= len(self._waits_for) + 2, chain  # the graph is acyclic
                    next_ = self._waits_for.get(next_)
                self._waits_for[waiter] = blocker
            self._ended.setdefault(blocker, []).append((loop, future))
        return future

    def wait_end(self, waiter: int | None, blocker: int, future: asyncio.Future) -> None:
        with self._lock:
            if waiter is not None and self._waits_for.get(waiter) == blocker:
                del self._waits_for[waiter]
            waits = self._ended.get(blocker)
            if waits is not None:
                waits[:] = [(loop, f) for loop, f in waits if f is not future]
                if not waits:
                    del self._ended[blocker]

    def forget_statuses(self) -> None:
        """Drop the remembered final statuses (a reader attaching to a new writer reads them again)."""
        self._final.clear()

    def status(self, xid: int) -> int:
        if xid == BOOTSTRAP_XID:
            return XID_COMMITTED
        final = self._final.get(xid)
        if final is not None:
            return final
        if xid in self.active:
            return XID_IN_PROGRESS
        if xid in self._aborted_unlogged:
            return XID_ABORTED
        status = self.store.get(clog_page_of(xid)).status[xid % XIDS_PER_CLOG_PAGE]
        if status == XID_IN_PROGRESS and xid < self.horizon:
            status = XID_ABORTED  # recovery found no durable commit for it
        if status != XID_IN_PROGRESS:
            if len(self._final) >= FINAL_STATUS_MEMO_MAX:
                self._final.clear()
            self._final[xid] = status
        return status

    def visible(self, xmin: int, xmax: int, snapshot: Snapshot, my_xid: int | None) -> bool:
        if xmin != my_xid:
            if xmin >= snapshot.xmax or xmin in snapshot.active or self.status(xmin) != XID_COMMITTED:
                return False
        if xmax == 0:
            return True
        if xmax == my_xid:
            return False
        if xmax >= snapshot.xmax or xmax in snapshot.active:
            return True
        return self.status(xmax) != XID_COMMITTED



def _wake(waits: list) -> None:
    """Complete the futures of waits for an ended transaction, each on its own loop (thread-safe)."""
    for loop, future in waits:
        loop.call_soon_threadsafe(_set_done, future)


def _set_done(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)
