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
"""

from __future__ import annotations

import dataclasses
import logging
import threading

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


@dataclasses.dataclass(frozen=True, slots=True)
class Snapshot:
    xmax: int  # ids at or above this had not started
    active: frozenset  # ids in progress (or committed but not yet durable) when it was taken


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
            with self.store.mtr():
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
            return Snapshot(self.next_xid, frozenset(self.active))

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
