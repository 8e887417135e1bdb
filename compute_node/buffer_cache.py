"""A bounded cache of pages: the compute node's only copy of data, and never a durable one.

DESIGN.md 1, 4: a page missing from the cache is read from a storage segment at the read point;
no page is ever written from compute to storage. Invariants: a page whose LSN is above VDL is never
evicted (storage could not yet give it back); a pinned page is never evicted; the cache holds at
most `capacity` pages, except that an MTR in progress (which must not wait) may add its few pages
beyond it; the next read or MTR that may wait first waits for acks until there is room again.
"""

from __future__ import annotations

import collections
from typing import Callable

from aurora_db.constants import CACHE_PAGES_MIN
from aurora_db.pages import Page


class BufferCache:
    def __init__(self, capacity: int, fetch: Callable[[int], Page | None], durable_lsn: Callable[[], int],
                 wait_durable: Callable[[], None]):
        assert capacity >= CACHE_PAGES_MIN, capacity
        self.capacity = capacity
        self._fetch = fetch
        self._durable_lsn = durable_lsn
        self._wait_durable = wait_durable
        self._pages: collections.OrderedDict[int, Page] = collections.OrderedDict()
        self._pins: collections.Counter[int] = collections.Counter()
        self.hits = 0
        self.misses = 0

    def get(self, page_id: int, may_wait: bool = True) -> Page | None:
        page = self._pages.get(page_id)
        if page is not None:
            self._pages.move_to_end(page_id)
            self.hits += 1
            return page
        self.misses += 1
        if may_wait:
            self.make_room()
        page = self._fetch(page_id)
        if page is not None:
            self.put(page)
        return page

    def peek(self, page_id: int) -> Page | None:
        """The cached page or None: no read, no statistics, no change to the eviction order."""
        return self._pages.get(page_id)

    def clear(self) -> None:
        """Forget every page (a reader starting again from a new point); none may be pinned."""
        assert not self._pins, "clearing a cache with pinned pages"
        self._pages.clear()

    def put(self, page: Page) -> None:
        """Add a page and evict what may be evicted; never waits."""
        self._pages[page.page_id] = page
        self._pages.move_to_end(page.page_id)
        while len(self._pages) > self.capacity and self._evict_one(keep=page.page_id):
            pass

    def make_room(self) -> None:
        """Wait for acks (VDL to advance) until the cache is within its capacity; raises
        QuorumTimeout if no write quorum answers. Only called where waiting is safe."""
        while len(self._pages) >= self.capacity and not self._evict_one():
            if len(self._pins) >= len(self._pages):
                return  # nothing could ever be evicted by waiting
            self._wait_durable()

    def evict_to_capacity(self) -> bool:
        """Evict, without waiting, until the cache is below its capacity; False if it cannot."""
        while len(self._pages) >= self.capacity:
            if not self._evict_one():
                return False
        return True

    def pin(self, page_id: int) -> None:
        self._pins[page_id] += 1

    def unpin(self, page_id: int) -> None:
        self._pins[page_id] -= 1
        if self._pins[page_id] <= 0:
            del self._pins[page_id]

    def __len__(self) -> int:
        return len(self._pages)

    def __contains__(self, page_id: int) -> bool:
        return page_id in self._pages

    def _evict_one(self, keep: int | None = None) -> bool:
        """Evict the least recently used page that may go (never `keep`, the page being added)."""
        vdl = self._durable_lsn()
        for page_id, page in self._pages.items():
            if page_id not in self._pins and page.lsn <= vdl and page_id != keep:
                del self._pages[page_id]
                return True
        return False
