"""The sans-I/O core of one segment: one protection group's copy on this node (DESIGN.md 6a, 7).

Responsibilities: take redo records in (any order, duplicates allowed), find the segment complete
LSN (SCL) from their backlinks, hold records that arrive ahead of a gap in a bounded pending map,
apply truncations, and serve GetPage@LSN, `chain` and `read_records`. No asyncio, no file I/O.

Invariants:
  - Only durable records enter: the shell calls `add` after the fsync that covers them, so the
    SCL this core reports (and every ack carries) never names an LSN that is not on disk.
  - The chain is 0 -> r1 -> r2 ... where each record's prev_pg is the one before it; SCL is its last
    LSN (0 when empty). Every record at or below SCL is held and was checksum-verified.
  - Pending records (ahead of a gap) are keyed by prev_pg, at most `pending_records_max`; over the
    limit the highest-LSN one is dropped and reported (the writer resends it).
  - SCL only grows, except by an explicit truncation: SCL = min(SCL, highest chain LSN <= above_lsn).
  - Only chain records (<= SCL) are indexed for pages or served; a page version is built by
    applying, with aurora_db.pages.apply, the page's records from its last init record up to the
    read point; a page object handed to a reader is never mutated afterwards (copy on need).
  - A record that contradicts the chain (same LSN with another body, a second successor of the
    same record, an LSN at or below SCL not in the chain) is refused and reported as a conflict.

Truncation ranges (DESIGN.md 6a step 4): truncate(above_lsn, lsn_floor) discards records with
above_lsn < lsn <= lsn_floor now and whenever they arrive later (the new writer allocates above
lsn_floor only, so any such record is an older epoch's). Records above lsn_floor are the new
epoch's and survive, so repeating a truncation is harmless. Without lsn_floor everything above
above_lsn is discarded now, and nothing is remembered for later arrivals.
"""

from __future__ import annotations

import bisect
import collections
import dataclasses
import heapq
import logging

from aurora_db import pages
from aurora_db.constants import PENDING_RECORDS_MAX, SEGMENT_CACHE_PAGES_MAX
from storage_node.log_file import RecordEntry

log = logging.getLogger(__name__)


class NotComplete(Exception):
    """The segment's SCL is below the requested read point: ask a segment that is complete."""


class BrokenPageChain(Exception):
    """A page's records at or below the read point do not start with an init record."""


@dataclasses.dataclass(slots=True)
class AddResult:
    added: int = 0  # records newly held, in the chain or pending
    duplicates: int = 0  # already held with the same body
    discarded: int = 0  # inside a remembered truncation range
    dropped: list[int] = dataclasses.field(default_factory=list)  # evicted from pending: resend
    conflicts: list[str] = dataclasses.field(default_factory=list)  # refused: contradict the chain


@dataclasses.dataclass(slots=True)
class _CachedPage:
    page: pages.Page
    shared: bool  # handed to a reader: copy before applying more records


def copy_page(page: pages.Page) -> pages.Page:
    """An independent copy: apply never mutates the lists it shares with the original (values, keys)."""
    return pages.from_wire(pages.to_wire(page))


class Segment:
    def __init__(self, pg: int, *, pending_records_max: int = PENDING_RECORDS_MAX,
                 cache_pages_max: int = SEGMENT_CACHE_PAGES_MAX):
        assert pending_records_max >= 1 and cache_pages_max >= 1
        self.pg = pg
        self.pending_records_max = pending_records_max
        self.cache_pages_max = cache_pages_max
        self._held: dict[int, RecordEntry] = {}  # lsn -> entry, chain and pending
        self._chain: list[int] = []  # chain LSNs, ascending
        self._pending: dict[int, int] = {}  # prev_pg -> lsn of a record waiting for it
        self._pending_heap: list[int] = []  # -lsn of pending records (lazy: stale entries skipped)
        self._page_lsns: dict[int, list[int]] = {}  # page_id -> chain LSNs of that page, ascending
        self._page_inits: dict[int, list[int]] = {}  # page_id -> chain LSNs of its init records
        self._cache: collections.OrderedDict[int, _CachedPage] = collections.OrderedDict()
        self.truncation_ranges: list[tuple[int, int]] = []  # (above_lsn, lsn_floor]: refused forever
        self._highest_floor = 0  # the highest lsn_floor of those ranges
        self.vdl_hint = 0  # highest writer VDL named by a chain record: a known durable point

    # --- state --------------------------------------------------------------------------------

    @property
    def scl(self) -> int:
        return self._chain[-1] if self._chain else 0

    @property
    def pending_count(self) -> int:
        return len(self._pending)

    def holds(self, entry: RecordEntry) -> bool:
        """True if this exact record is already held (a resend: nothing to write)."""
        held = self._held.get(entry.lsn)
        return held is not None and held.body == entry.body

    def in_truncated_range(self, lsn: int) -> bool:
        if lsn > self._highest_floor:  # every record of the current epoch: no range to scan
            return False
        return any(above < lsn <= floor for above, floor in self.truncation_ranges)

    # --- input --------------------------------------------------------------------------------

    def add(self, entries: list[RecordEntry]) -> AddResult:
        """Take durable records in, in the given order; advance SCL as far as the chain goes."""
        result = AddResult()
        for entry in entries:
            self._add_one(entry, result)
        return result

    def _add_one(self, entry: RecordEntry, result: AddResult) -> None:
        record = entry.record
        assert record.pg == self.pg, f"record {record.lsn} of PG {record.pg} given to segment of PG {self.pg}"
        lsn = record.lsn
        if self.in_truncated_range(lsn):
            result.discarded += 1
            return
        held = self._held.get(lsn)
        if held is not None:
            if held.body == entry.body:
                result.duplicates += 1
            else:
                result.conflicts.append(f"record {lsn} differs from the record {lsn} already held")
            return
        tip = self.scl
        if lsn <= tip:
            result.conflicts.append(f"record {lsn} is at or below SCL {tip} but not in the chain")
            return
        if record.prev_pg == tip:
            self._extend(entry)
            self._drain_pending()
            result.added += 1
            return
        if record.prev_pg < tip:
            result.conflicts.append(f"record {lsn} follows {record.prev_pg}, which the chain already continues")
            return
        waiting = self._pending.get(record.prev_pg)
        if waiting is not None:
            result.conflicts.append(f"records {waiting} and {lsn} both follow {record.prev_pg}")
            return
        self._pending[record.prev_pg] = lsn
        self._held[lsn] = entry
        heapq.heappush(self._pending_heap, -lsn)
        result.added += 1
        if len(self._pending) > self.pending_records_max:
            dropped = self._evict_highest_pending()
            result.dropped.append(dropped)
            if dropped == lsn:
                result.added -= 1

    def _extend(self, entry: RecordEntry) -> None:
        record = entry.record
        assert record.prev_pg == self.scl and record.lsn > self.scl, (record.lsn, record.prev_pg, self.scl)
        self._chain.append(record.lsn)
        self._held[record.lsn] = entry
        self.vdl_hint = max(self.vdl_hint, record.vdl)
        self._page_lsns.setdefault(record.page_id, []).append(record.lsn)
        if record.op.endswith("_init"):
            self._page_inits.setdefault(record.page_id, []).append(record.lsn)

    def _drain_pending(self) -> None:
        while self._pending:
            lsn = self._pending.pop(self.scl, None)
            if lsn is None:
                return
            self._extend(self._held[lsn])
        self._pending_heap.clear()  # every pending record joined the chain

    def _evict_highest_pending(self) -> int:
        while True:
            lsn = -heapq.heappop(self._pending_heap)
            entry = self._held.get(lsn)
            if entry is not None and lsn > self.scl and self._pending.get(entry.record.prev_pg) == lsn:
                del self._pending[entry.record.prev_pg]
                del self._held[lsn]
                self._compact_pending_heap()
                return lsn

    def _compact_pending_heap(self) -> None:
        if len(self._pending_heap) > 2 * len(self._pending) + 64:
            self._pending_heap = [-lsn for lsn in self._pending.values()]
            heapq.heapify(self._pending_heap)

    def truncate(self, above_lsn: int, lsn_floor: int | None = None) -> None:
        """Discard records in (above_lsn, lsn_floor] (no upper bound if lsn_floor is None)."""
        assert lsn_floor is None or lsn_floor >= above_lsn, (above_lsn, lsn_floor)

        def in_range(lsn: int) -> bool:
            return lsn > above_lsn and (lsn_floor is None or lsn <= lsn_floor)

        cut = bisect.bisect_right(self._chain, above_lsn)
        cut_off = self._chain[cut:]
        del self._chain[cut:]
        survivors = []  # chain records above the range: their chain is broken, they wait again
        for lsn in reversed(cut_off):
            entry = self._held.pop(lsn)
            page_id = entry.record.page_id
            page_lsns = self._page_lsns[page_id]
            assert page_lsns[-1] == lsn, (page_id, page_lsns[-1], lsn)
            page_lsns.pop()
            if not page_lsns:
                del self._page_lsns[page_id]
            inits = self._page_inits.get(page_id)
            if inits and inits[-1] == lsn:
                inits.pop()
                if not inits:
                    del self._page_inits[page_id]
            cached = self._cache.get(page_id)
            if cached is not None and cached.page.lsn >= lsn:
                del self._cache[page_id]
            if not in_range(lsn):
                survivors.append(entry)
        for prev_pg, lsn in list(self._pending.items()):
            if in_range(lsn):
                del self._pending[prev_pg]
                del self._held[lsn]
        self._pending_heap = [-lsn for lsn in self._pending.values()]
        heapq.heapify(self._pending_heap)
        if lsn_floor is not None and lsn_floor > above_lsn and (above_lsn, lsn_floor) not in self.truncation_ranges:
            self.truncation_ranges.append((above_lsn, lsn_floor))
            self._highest_floor = max(self._highest_floor, lsn_floor)
        self._drain_pending()
        result = self.add(sorted(survivors, key=lambda e: e.lsn))
        unchained = sum(1 for entry in survivors if entry.lsn > self.scl)
        if unchained:  # a truncation repeated on reconnect re-chains every survivor: say nothing then
            log.warning("PG %d: truncation above %d left %d records above the floor %s without their chain",
                        self.pg, above_lsn, unchained, lsn_floor)
        assert not result.conflicts, result.conflicts

    # --- reads --------------------------------------------------------------------------------

    def get_page(self, page_id: int, lsn: int) -> pages.Page | None:
        """The page as of read point `lsn` (None if it has no record at or below it).

        Raises NotComplete if SCL < lsn, BrokenPageChain if no init record starts its chain.
        The caller may keep the returned page: it is never mutated afterwards."""
        if lsn > self.scl:
            raise NotComplete(f"segment of PG {self.pg} is complete to LSN {self.scl}, below the read point {lsn}")
        page_lsns = self._page_lsns.get(page_id)
        end = bisect.bisect_right(page_lsns, lsn) if page_lsns else 0
        if end == 0:
            return None
        target = page_lsns[end - 1]
        inits = self._page_inits.get(page_id, [])
        init_index = bisect.bisect_right(inits, target)
        if init_index == 0:
            raise BrokenPageChain(f"page {page_id} has records up to {target} but no init record at or below it")
        init_lsn = inits[init_index - 1]
        cached = self._cache.get(page_id)
        if cached is not None and init_lsn <= cached.page.lsn <= target:
            self._cache.move_to_end(page_id)
            if cached.page.lsn == target:
                cached.shared = True
                return cached.page
            page = copy_page(cached.page) if cached.shared else cached.page
            start = bisect.bisect_right(page_lsns, cached.page.lsn)
        else:
            page = None
            start = bisect.bisect_left(page_lsns, init_lsn)
        for record_lsn in page_lsns[start:end]:
            page = pages.apply(page, self._held[record_lsn].record)
        assert page is not None and page.lsn == target, (page_id, target)
        if cached is None or page.lsn >= cached.page.lsn:
            self._cache[page_id] = _CachedPage(page, shared=True)
            self._cache.move_to_end(page_id)
            while len(self._cache) > self.cache_pages_max:
                self._cache.popitem(last=False)
        return page

    def chain(self, after_lsn: int, limit: int) -> tuple[list[list], int, bool]:
        """([lsn, prev_volume, prev_pg, cpl] for chain records after after_lsn, at most `limit`),
        the highest chain LSN <= after_lsn (or 0), and whether more records follow."""
        start = bisect.bisect_right(self._chain, after_lsn)
        last_at_or_below = self._chain[start - 1] if start else 0
        lsns = self._chain[start:start + limit]
        out = []
        for lsn in lsns:
            record = self._held[lsn].record
            out.append([lsn, record.prev_volume, record.prev_pg, record.cpl])
        return out, last_at_or_below, start + limit < len(self._chain)

    def read_records(self, after_lsn: int, upto_lsn: int, limit: int, bytes_max: int) -> tuple[list[RecordEntry], bool]:
        """Chain records with after_lsn < lsn <= min(upto_lsn, SCL) in LSN order: at most `limit`,
        and no more body bytes than `bytes_max` (at least one record if any). Also: whether more follow."""
        start = bisect.bisect_right(self._chain, after_lsn)
        stop = bisect.bisect_right(self._chain, upto_lsn)
        out: list[RecordEntry] = []
        size = 0
        for lsn in self._chain[start:stop]:
            entry = self._held[lsn]
            if len(out) >= limit or (out and size + len(entry.body) > bytes_max):
                return out, True
            out.append(entry)
            size += len(entry.body)
        return out, False
