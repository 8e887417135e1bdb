"""Pages for the engine thread: reads through the buffer cache, changes only as redo in MTRs.

Every change is a redo record made inside an MTR (DESIGN.md 2): the record is allocated an LSN,
applied to the cached page with the shared apply function, and, when the MTR ends, shipped with
its last record marked as the CPL. Invariants: an MTR's pages are fetched and pinned before its
first record is made, so nothing inside it waits on storage; LSN room for the whole MTR is
reserved up front (MTR_RECORDS_MAX); an exception after the first record of an MTR is a broken
invariant (a half-applied MTR) and stops the process.
On a reader nothing is made here: the writer's records are applied to the pages it holds
(apply_replicated), and a record for a page being read meanwhile is kept with that read and
applied when the page is installed, if the copy read does not have it yet.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import time

from aurora_db import pages
from aurora_db.constants import (
    BATCH_RECORDS_MAX,
    ENGINE_INLINE_BUDGET_MS,
    ENGINE_INLINE_RECORDS_MAX,
    PAGE_ID_MAX,
    PAGES_PER_PG,
    STORAGE_REQUEST_TIMEOUT_MS,
)
from aurora_db.errors import ProgramLimitExceeded, StorageUnavailable
from aurora_db.pages import Page
from aurora_db.records import Record, pg_of_page
from compute_node.buffer_cache import BufferCache
from compute_node.log_writer import LogWriter, WouldWait
from compute_node.storage_client import StorageClient

log = logging.getLogger(__name__)

META_PAGE = 0
DATA_FIRST_PAGE = PAGES_PER_PG  # PG 0 holds the meta page and the transaction status (clog) pages
MTR_RECORDS_MAX = 128
assert MTR_RECORDS_MAX <= BATCH_RECORDS_MAX  # one MTR always fits one append request
PAGE_FETCH_TIMEOUT_MS = 5 * STORAGE_REQUEST_TIMEOUT_MS  # above the client's own deadline


class PageMiss(WouldWait):
    """An inline call needs a page the cache lacks: read it outside the engine's turn, then retry."""

    def __init__(self, page_id: int):
        super().__init__(f"page {page_id} is not cached")
        self.page_id = page_id


@dataclasses.dataclass
class _Fetch:
    """A page read in flight for a PageMiss; installed at the next turn unless superseded."""

    task: asyncio.Task
    superseded: bool = False  # the page entered the cache meanwhile: this copy may be older
    records: list[Record] = dataclasses.field(default_factory=list)  # a reader's records applied meanwhile


class PageStore:
    def __init__(self, loop: asyncio.AbstractEventLoop, client: StorageClient, log_writer: LogWriter, cache_pages: int):
        self.loop = loop
        self.client = client
        self.log_writer = log_writer
        self.cache = BufferCache(cache_pages, self._fetch, lambda: log_writer.vdl, log_writer.wait_vdl_advance)
        self._mtr: list[Record] | None = None
        self._mtr_pins: list[int] = []
        self.records_made = 0
        self._inline: tuple[float, int] | None = None  # (deadline, records_made limit) of an inline call
        self._fetching: dict[int, _Fetch] = {}  # at most one per session: each waits for its own
        # Table page -> heap.ReusablePages: where UPDATEs and DELETEs left versions to prune (a hint,
        # not logged: compute_node/heap.py reuses their space for new rows).
        self.reusable_pages: dict[int, object] = {}

    # --- inline calls (Engine.call_restartable) -----------------------------------------------

    def begin_inline(self) -> bool:
        """On the loop thread, before an inline call: False if it could not even start without
        waiting (no LSN room for it and its undo, or a cache full of pages not yet durable)."""
        if not self.log_writer.has_room(4 * ENGINE_INLINE_RECORDS_MAX) or not self.cache.evict_to_capacity():
            return False
        deadline = time.monotonic() + ENGINE_INLINE_BUDGET_MS / 1000
        self._inline = (deadline, self.records_made + ENGINE_INLINE_RECORDS_MAX)
        return True

    def end_inline(self) -> None:
        """Lift the inline limits (also before undoing a given-up call: the undo must finish)."""
        self._inline = None

    def _check_inline(self) -> None:
        deadline, records_limit = self._inline
        if self.records_made > records_limit or time.monotonic() > deadline:
            raise WouldWait("over the inline budget")

    # --- page misses of inline calls ---------------------------------------------------------

    def start_fetch(self, page_id: int) -> asyncio.Task:
        """Inside the engine's turn, on the loop: read `page_id` at the read point, in the
        background, so that the turn is not held while storage answers. Returns the task to wait
        for (its errors are for the retry to meet again, not raised here)."""
        fetch = self._fetching.get(page_id)
        if fetch is None:
            fetch = self._fetching[page_id] = _Fetch(self.loop.create_task(self._read_page(page_id)))
        return fetch.task

    async def _read_page(self, page_id: int) -> Page | None:
        pg = pg_of_page(page_id)
        read_point, complete = self.log_writer.read_point(pg)
        wire = await self.client.get_page(pg, page_id, read_point, complete)
        return pages.from_wire(wire) if wire is not None else None

    def install_fetched(self) -> None:
        """At the start of every engine turn: put pages read since into the cache. A copy is
        dropped if the page entered the cache after its read began (then it may have changed,
        become durable and been evicted again, and the copy would bring back an old version)."""
        for page_id, fetch in list(self._fetching.items()):
            if not fetch.task.done():
                continue
            del self._fetching[page_id]
            if fetch.superseded or fetch.task.cancelled() or fetch.task.exception() is not None:
                continue
            page = fetch.task.result()
            if page_id in self.cache:
                continue
            for record in fetch.records:  # a reader's: applied while the read was under way
                if record.op.endswith("_init") or (page is not None and record.lsn > page.lsn):
                    page = pages.apply(page, record)
            if page is not None:
                self.cache.put(page)

    # --- a reader's redo stream ---------------------------------------------------------------

    def apply_replicated(self, records: list[Record]) -> None:
        """Inside the engine's turn, on a reader: apply records (at or below VDL, whole MTRs) to the
        pages it holds, and keep them for pages being read; the others are read from storage at a
        later read point when needed, so they are dropped."""
        cache = self.cache
        for record in records:
            page_id = record.page_id
            fetch = self._fetching.get(page_id)
            if fetch is not None:
                fetch.records.append(record)
            page = cache.peek(page_id)
            if page is None:
                continue
            if record.op.endswith("_init"):
                cache.put(pages.apply(None, record))
            else:
                pages.apply(page, record)  # a cached page is never ahead of VDL: apply asserts it

    def forget_all(self) -> None:
        """Inside the engine's turn, on a reader starting again from a new hello: no cached page
        and no read under way may be used (records between the two streams were never seen)."""
        self.cache.clear()
        for fetch in self._fetching.values():
            fetch.superseded = True

    def _supersede(self, page_id: int) -> None:
        fetch = self._fetching.get(page_id)
        if fetch is not None:
            fetch.superseded = True

    # --- reads --------------------------------------------------------------------------------

    def get(self, page_id: int) -> Page:
        if self._inline is not None and not self._mtr:  # never give up once an MTR made a record
            self._check_inline()
        page = self.cache.get(page_id, may_wait=not self._mtr)  # never wait once an MTR made a record
        if page is None:
            raise AssertionError(f"page {page_id} does not exist on storage")
        if self._mtr is not None:
            self.cache.pin(page_id)
            self._mtr_pins.append(page_id)
        return page

    def _fetch(self, page_id: int) -> Page | None:
        """Read a page from one segment complete to the read point (runs on the engine thread)."""
        if self.log_writer.on_loop_thread():
            raise PageMiss(page_id)
        future = asyncio.run_coroutine_threadsafe(self._read_page(page_id), self.loop)
        try:
            page = future.result(PAGE_FETCH_TIMEOUT_MS / 1000)
        except TimeoutError:
            future.cancel()
            raise StorageUnavailable(f"reading page {page_id} timed out after {PAGE_FETCH_TIMEOUT_MS} ms") from None
        self._supersede(page_id)  # this copy is at least as new as one read in the background
        return page

    # --- changes ------------------------------------------------------------------------------

    @contextlib.contextmanager
    def mtr(self, *pages_used: int, records_max: int = MTR_RECORDS_MAX):
        """A mini-transaction: reserve LSN room, fetch and pin `pages_used` (every existing page
        the MTR will read or change), collect records, ship them with a CPL at the end."""
        assert self._mtr is None, "MTRs do not nest"
        if self.log_writer.on_loop_thread():
            self.cache.evict_to_capacity()  # no waiting: the inline records limit bounds the excess
        else:
            self.cache.make_room()
        self.log_writer.reserve(records_max)
        self._mtr = []
        try:
            for page_id in pages_used:
                self.get(page_id)  # no record made yet: a failed fetch leaves nothing behind
            if META_PAGE in pages_used:  # an MTR that may allocate: allocate_page may take the list's head
                free_head = self.get(META_PAGE).values.get("free_head", 0)
                if free_head:
                    self.get(free_head)
            yield self
        except BaseException as error:
            if self._mtr:
                log.critical("exception inside an MTR after %d records: %r", len(self._mtr), error, exc_info=True)
                os._exit(70)  # a half-applied MTR must never be shipped or kept
            raise
        else:
            if self._mtr:
                self.log_writer.finish_mtr(self._mtr)
                self.records_made += len(self._mtr)
        finally:
            self._mtr = None
            for page_id in self._mtr_pins:
                self.cache.unpin(page_id)
            self._mtr_pins.clear()

    def log(self, page_id: int, op: str, *args) -> Page:
        """Make one redo record, apply it to the cached page, and add it to the current MTR."""
        assert self._mtr is not None, f"{op} outside an MTR"
        assert len(self._mtr) < MTR_RECORDS_MAX, "MTR over its reserved size"
        if op.endswith("_init"):
            prev_page = self.cache.get(page_id).lsn if page_id in self.cache else 0
            page = None
        else:
            page = self.get(page_id)
            prev_page = page.lsn
        record = self.log_writer.allocate(page_id, prev_page, op, args)
        page = pages.apply(page, record)
        if op.endswith("_init"):
            self.cache.put(page)
            self._supersede(page_id)
            self.cache.pin(page_id)
            self._mtr_pins.append(page_id)
        self._mtr.append(record)
        return page

    def allocate_page(self) -> int:
        """Inside an MTR: a page id for a new page. A page the free list holds comes first (see
        compute_node/free_space.py); else the volume grows by one page (the meta page records
        it). The caller's init record makes the page anew."""
        page_id = self.take_free_page()
        if page_id is not None:
            return page_id
        meta = self.get(META_PAGE)
        page_id = meta.values["next_page_id"]
        if page_id >= PAGE_ID_MAX:
            raise ProgramLimitExceeded("the volume has no page ids left")
        self.log(META_PAGE, "meta_set", "next_page_id", page_id + 1)
        return page_id

    def take_free_page(self) -> int | None:
        """Inside an MTR that pinned the meta page (as every MTR that allocates does; mtr() then
        pins the list's head too): a page id from the free list (one record), or None when the
        list is empty or its head changed to a page not cached during this MTR."""
        head_id = self.get(META_PAGE).values.get("free_head", 0)
        head = self.cache.peek(head_id) if head_id else None
        if head is None or not (head.runs or head.next_page):
            return None
        self.cache.pin(head_id)  # a head that changed during this MTR: nothing may evict it now
        self._mtr_pins.append(head_id)
        if head.runs:
            page_id = head.runs[0][0]
            self.log(head_id, "freelist_take")
            return page_id
        self.log(META_PAGE, "meta_set", "free_head", head.next_page)
        return head_id  # an emptied freelist page that is not the last is itself free

    def log_bootstrap(self) -> None:
        """Inside the bootstrap MTR: the volume's meta page."""
        self.log(META_PAGE, "meta_init")
        self.log(META_PAGE, "meta_set", "next_page_id", DATA_FIRST_PAGE)


def encoded_bytes(values) -> int:
    return len(pages.packb(values))
