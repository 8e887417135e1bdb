"""The sans-I/O core of one segment: one protection group's copy on this node (DESIGN.md 6a, 7).

Responsibilities: take redo records in (any order, duplicates allowed), find the segment complete
LSN (SCL) from their backlinks, hold records that arrive ahead of a gap in a bounded pending map,
apply truncations, serve GetPage@LSN, `chain` and `read_records`, and move its base up when a
coalesced page image is durable (garbage collection). No asyncio; the only file reads are the
image's, through its PageImage.

A segment is a page image at a base LSN (storage_node/page_image.py: every page as of the base)
plus the records above the base. Records at or below the base are covered by the image: they are
neither held nor stored again, and a read point below the base is refused (BelowHorizon); the
base only moves up to the horizon, below every live read point (PGMRPL), so no live read meets it.

Invariants:
  - Only durable records enter: the shell calls `add` after the fsync that covers them, so the
    SCL this core reports (and every ack carries) never names an LSN that is not on disk.
  - The chain is base -> r1 -> r2 ... where each record's prev_pg is the one before it; SCL is its
    last LSN (the base when empty). Every record in (base, SCL] is held and was checksum-verified.
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
from aurora_db.records import ChecksumMismatch
from storage_node.log_file import RecordEntry
from storage_node.page_image import PageImage

log = logging.getLogger(__name__)


class NotComplete(Exception):
    """The segment's SCL is below the requested read point: ask a segment that is complete."""


class BrokenPageChain(Exception):
    """A page's records at or below the read point do not start with an init record."""


class BelowHorizon(Exception):
    """The read point is below the segment's base: those versions were garbage-collected."""


class Damaged(Exception):
    """The segment's image failed its checksum: it serves nothing until rebuilt from a peer."""


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
    def __init__(self, pg: int, image: PageImage | None = None, *, pending_records_max: int = PENDING_RECORDS_MAX,
                 cache_pages_max: int = SEGMENT_CACHE_PAGES_MAX):
        assert pending_records_max >= 1 and cache_pages_max >= 1
        self.pg = pg
        self.pending_records_max = pending_records_max
        self.cache_pages_max = cache_pages_max
        self.truncation_ranges: list[tuple[int, int]] = []  # (above_lsn, lsn_floor]: refused forever
        self._highest_floor = 0  # the highest lsn_floor of those ranges
        self._start_from(image if image is not None else PageImage.empty(pg))

    def _start_from(self, image: PageImage) -> None:
        """Hold nothing but `image` (truncation ranges are kept: they are the node's, not the data's)."""
        assert image.pg == self.pg, (self.pg, image.pg)
        self.image = image
        self.damaged: str | None = None  # why the image failed its checksum; None while whole
        self.held_bytes = 0  # record bodies held, chain and pending
        self._held: dict[int, RecordEntry] = {}  # lsn -> entry, chain and pending
        self._chain: list[int] = []  # chain LSNs, ascending
        self._pending: dict[int, int] = {}  # prev_pg -> lsn of a record waiting for it
        self._pending_heap: list[int] = []  # -lsn of pending records (lazy: stale entries skipped)
        self._page_lsns: dict[int, list[int]] = {}  # page_id -> chain LSNs of that page, ascending
        self._page_inits: dict[int, list[int]] = {}  # page_id -> chain LSNs of its init records
        self._cache: collections.OrderedDict[int, _CachedPage] = collections.OrderedDict()
        self.vdl_hint = image.vdl_hint  # highest writer VDL named by a chain record: a known durable point

    # --- state --------------------------------------------------------------------------------

    @property
    def base_lsn(self) -> int:
        return self.image.base_lsn

    @property
    def scl(self) -> int:
        return self._chain[-1] if self._chain else self.image.base_lsn

    @property
    def records_held(self) -> int:
        return len(self._held)

    @property
    def pending_count(self) -> int:
        return len(self._pending)

    def holds(self, entry: RecordEntry) -> bool:
        """True if this exact record is already held or covered by the image (a resend: nothing to write)."""
        if entry.lsn <= self.image.base_lsn:
            return True
        held = self._held.get(entry.lsn)
        return held is not None and held.body == entry.body

    def fresh(self, entries: list[RecordEntry]) -> list[RecordEntry]:
        """The entries that are neither held already (`holds`) nor inside a truncation range: what
        an append, or a peer's records, must still write. One pass over a batch."""
        base, held, floor = self.image.base_lsn, self._held, self._highest_floor
        kept = []
        for entry in entries:
            lsn = entry.record.lsn
            if lsn <= base:
                continue
            same = held.get(lsn)
            if same is not None and same.body == entry.body:
                continue
            if lsn <= floor and self.in_truncated_range(lsn):
                continue
            kept.append(entry)
        return kept

    def held(self, lsn: int) -> RecordEntry | None:
        return self._held.get(lsn)

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
        lsn = record.lsn
        assert record.pg == self.pg, f"record {lsn} of PG {record.pg} given to segment of PG {self.pg}"
        if lsn <= self._highest_floor and self.in_truncated_range(lsn):
            result.discarded += 1
            return
        base = self.image.base_lsn
        if lsn <= base:  # covered by the image
            result.duplicates += 1
            return
        held = self._held.get(lsn)
        if held is not None:
            if held.body == entry.body:
                result.duplicates += 1
            else:
                result.conflicts.append(f"record {lsn} differs from the record {lsn} already held")
            return
        chain = self._chain
        tip = chain[-1] if chain else base  # the SCL
        if lsn <= tip:
            result.conflicts.append(f"record {lsn} is at or below SCL {tip} but not in the chain")
            return
        if record.prev_pg == tip:
            self._held[lsn] = entry  # pending records were counted when they arrived
            self.held_bytes += len(entry.body)
            self._extend(entry)
            if self._pending_heap:  # empty unless records wait for this one (or waited: cleared here)
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
        self.held_bytes += len(entry.body)
        heapq.heappush(self._pending_heap, -lsn)
        result.added += 1
        if len(self._pending) > self.pending_records_max:
            dropped = self._evict_highest_pending()
            result.dropped.append(dropped)
            if dropped == lsn:
                result.added -= 1

    def _extend(self, entry: RecordEntry) -> None:
        """Chain a held record (its bytes are already counted in held_bytes)."""
        record = entry.record
        lsn, page_id = record.lsn, record.page_id
        chain = self._chain
        tip = chain[-1] if chain else self.image.base_lsn
        assert record.prev_pg == tip and lsn > tip, (lsn, record.prev_pg, tip)
        chain.append(lsn)
        if record.vdl > self.vdl_hint:
            self.vdl_hint = record.vdl
        page_lsns = self._page_lsns.get(page_id)
        if page_lsns is None:
            self._page_lsns[page_id] = [lsn]
        else:
            page_lsns.append(lsn)
        if record.op.endswith("_init"):
            self._page_inits.setdefault(page_id, []).append(lsn)

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
                self.held_bytes -= len(entry.body)
                self._compact_pending_heap()
                return lsn

    def _compact_pending_heap(self) -> None:
        if len(self._pending_heap) > 2 * len(self._pending) + 64:
            self._pending_heap = [-lsn for lsn in self._pending.values()]
            heapq.heapify(self._pending_heap)

    def retain_ranges(self, live: set[tuple[int, int]]) -> None:
        """Stop refusing LSNs of every remembered range not in `live` (voided by a newer epoch's
        range: aurora_db/truncation.py). What they discarded stays discarded."""
        self.truncation_ranges = [r for r in self.truncation_ranges if r in live]
        self._highest_floor = max((floor for _, floor in self.truncation_ranges), default=0)

    def truncate(self, above_lsn: int, lsn_floor: int | None = None, *, remember: bool = True) -> None:
        """Discard records in (above_lsn, lsn_floor] (no upper bound if lsn_floor is None).

        Records at or below the base are in the image, below a durable VDL: no truncation reaches
        them (an old range told again after the base passed it only reaches the records above)."""
        assert lsn_floor is None or lsn_floor >= above_lsn, (above_lsn, lsn_floor)
        if (remember and lsn_floor is not None and lsn_floor > above_lsn
                and (above_lsn, lsn_floor) not in self.truncation_ranges):
            self.truncation_ranges.append((above_lsn, lsn_floor))
            self._highest_floor = max(self._highest_floor, lsn_floor)
        above_lsn = max(above_lsn, self.image.base_lsn)
        if lsn_floor is not None and lsn_floor <= above_lsn:
            return

        def in_range(lsn: int) -> bool:
            return lsn > above_lsn and (lsn_floor is None or lsn <= lsn_floor)

        cut = bisect.bisect_right(self._chain, above_lsn)
        cut_off = self._chain[cut:]
        del self._chain[cut:]
        survivors = []  # chain records above the range: their chain is broken, they wait again
        for lsn in reversed(cut_off):
            entry = self._held.pop(lsn)
            self.held_bytes -= len(entry.body)
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
                self.held_bytes -= len(self._held.pop(lsn).body)
        self._pending_heap = [-lsn for lsn in self._pending.values()]
        heapq.heapify(self._pending_heap)
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

        Raises NotComplete if SCL < lsn (or the image is damaged), BelowHorizon if lsn is below
        the base, BrokenPageChain if neither the image nor an init record starts its chain.
        The caller may keep the returned page: it is never mutated afterwards."""
        if lsn > self.scl:
            raise NotComplete(f"segment of PG {self.pg} is complete to LSN {self.scl}, below the read point {lsn}")
        if self.damaged is not None:
            raise NotComplete(f"segment of PG {self.pg} is being repaired: {self.damaged}")
        base = self.image.base_lsn
        if lsn < base:
            raise BelowHorizon(f"segment of PG {self.pg} keeps versions from LSN {base}, above the read point {lsn}")
        page_lsns = self._page_lsns.get(page_id)
        end = bisect.bisect_right(page_lsns, lsn) if page_lsns else 0
        if end == 0:
            return self._image_page(page_id)
        target = page_lsns[end - 1]
        inits = self._page_inits.get(page_id, [])
        init_index = bisect.bisect_right(inits, target)
        if init_index:
            start_lsn = inits[init_index - 1]  # the chain starts at the init record
        else:
            start_lsn = self.image.page_lsn(page_id)  # ... or at the image's version
            if start_lsn is None:
                raise BrokenPageChain(f"page {page_id} has records up to {target} but no init record "
                                      f"or image version at or below it")
        cached = self._cache.get(page_id)
        if cached is not None and start_lsn <= cached.page.lsn <= target:
            self._cache.move_to_end(page_id)
            if cached.page.lsn == target:
                cached.shared = True
                return cached.page
            page = copy_page(cached.page) if cached.shared else cached.page
            start = bisect.bisect_right(page_lsns, cached.page.lsn)
        elif init_index:
            page = None
            start = bisect.bisect_left(page_lsns, start_lsn)
        else:
            page = self._image_page(page_id)
            start = 0
        for record_lsn in page_lsns[start:end]:
            page = pages.apply(page, self._held[record_lsn].record)
        assert page is not None and page.lsn == target, (page_id, target)
        if cached is None or page.lsn >= cached.page.lsn:
            self._cache[page_id] = _CachedPage(page, shared=True)
            self._cache.move_to_end(page_id)
            while len(self._cache) > self.cache_pages_max:
                self._cache.popitem(last=False)
        return page

    def _image_page(self, page_id: int) -> pages.Page | None:
        """The image's version of the page (a fresh object each time: callers may apply to it)."""
        try:
            return self.image.get(page_id)
        except ChecksumMismatch as error:
            self.damaged = str(error)
            log.error("PG %d: %s: the segment serves nothing until it is rebuilt from a peer", self.pg, error)
            raise NotComplete(f"segment of PG {self.pg} is being repaired: {error}") from None

    def page_count(self) -> int:
        """Pages with a version in the image or a record held above it."""
        return len(self.image.page_ids | self._page_lsns.keys())

    # --- coalescing and garbage collection (DESIGN.md 7, steps 5 and 7) -------------------------

    def coalesce_point(self, horizon_lsn: int) -> int | None:
        """The base a new image could have: the highest chain LSN at or below the horizon, if
        that is above the current base (None: nothing to coalesce)."""
        cut = bisect.bisect_right(self._chain, min(horizon_lsn, self.scl))
        if cut == 0:
            return None
        return self._chain[cut - 1]

    def records_to_coalesce(self, new_base: int) -> int:
        return bisect.bisect_right(self._chain, new_base)

    def pages_changed(self, new_base: int) -> list[int]:
        """Pages with a record in (base, new_base]: the ones a new image at new_base rewrites."""
        cut = bisect.bisect_right(self._chain, new_base)
        return sorted({self._held[lsn].record.page_id for lsn in self._chain[:cut]})

    def rebase(self, image: PageImage) -> None:
        """A new image is durable: its base becomes this segment's, and the records at or below it
        are dropped. The image must be this segment's pages at a chain LSN at or above the base."""
        new_base = image.base_lsn
        assert image.pg == self.pg and new_base >= self.image.base_lsn, (image.pg, new_base, self.image.base_lsn)
        assert new_base <= self.scl and (new_base == self.image.base_lsn or new_base in self._held), new_base
        cut = bisect.bisect_right(self._chain, new_base)
        dropped_pages = set()
        for lsn in self._chain[:cut]:
            entry = self._held.pop(lsn)
            self.held_bytes -= len(entry.body)
            dropped_pages.add(entry.record.page_id)
        del self._chain[:cut]
        for page_id in dropped_pages:
            self._cut_page_index(self._page_lsns, page_id, new_base)
            self._cut_page_index(self._page_inits, page_id, new_base)
        old, self.image = self.image, image
        self.vdl_hint = max(self.vdl_hint, image.vdl_hint)
        old.close()

    def install_image(self, image: PageImage) -> None:
        """Replace the image with a peer's (a rebuild, or a repair of a damaged image): records at
        or below its base are dropped, those above it are kept and chained again from it."""
        assert image.pg == self.pg
        survivors = [entry for lsn, entry in self._held.items() if lsn > image.base_lsn]
        old = self.image
        vdl_hint = max(self.vdl_hint, image.vdl_hint)
        self._start_from(image)
        self.vdl_hint = vdl_hint
        result = self.add(sorted(survivors, key=lambda e: e.lsn))
        if result.conflicts:  # records of ours that contradict the peer's image: the peer's is quorum-backed
            log.warning("PG %d: %d records held here contradict the peer's image at %d: dropped",
                        self.pg, len(result.conflicts), image.base_lsn)
        if old is not image:
            old.close()

    @staticmethod
    def _cut_page_index(index: dict[int, list[int]], page_id: int, new_base: int) -> None:
        lsns = index.get(page_id)
        if lsns:
            del lsns[:bisect.bisect_right(lsns, new_base)]
            if not lsns:
                del index[page_id]

    def chain(self, after_lsn: int, limit: int) -> tuple[list[list], int, bool]:
        """([lsn, prev_volume, prev_pg, cpl] for chain records after after_lsn, at most `limit`),
        the highest chain LSN <= after_lsn (the base, or 0), and whether more records follow.
        Raises BelowHorizon if after_lsn is below the base."""
        if after_lsn < self.image.base_lsn:
            raise BelowHorizon(f"segment of PG {self.pg} holds records from LSN {self.image.base_lsn}, "
                               f"above {after_lsn}")
        start = bisect.bisect_right(self._chain, after_lsn)
        last_at_or_below = self._chain[start - 1] if start else self.image.base_lsn
        lsns = self._chain[start:start + limit]
        out = []
        for lsn in lsns:
            record = self._held[lsn].record
            out.append([lsn, record.prev_volume, record.prev_pg, record.cpl])
        return out, last_at_or_below, start + limit < len(self._chain)

    def read_records(self, after_lsn: int, upto_lsn: int, limit: int, bytes_max: int) -> tuple[list[RecordEntry], bool]:
        """Chain records with after_lsn < lsn <= min(upto_lsn, SCL) in LSN order: at most `limit`,
        and no more body bytes than `bytes_max` (at least one record if any). Also: whether more follow.
        Raises BelowHorizon if after_lsn is below the base (those records are in the image)."""
        if after_lsn < self.image.base_lsn:
            raise BelowHorizon(f"segment of PG {self.pg} holds records from LSN {self.image.base_lsn}, "
                               f"above {after_lsn}")
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
