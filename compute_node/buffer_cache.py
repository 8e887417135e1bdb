"""A bounded cache of pages: the compute node's only copy of data, and never a durable one.

DESIGN.md 1, 4: a page missing from the cache is read from a storage segment at the read point;
no page is ever written from compute to storage. Invariants: the cache holds at most `capacity`
pages except transiently while every page is pinned or not yet durable; a page whose LSN is
above VDL is never evicted (storage could not yet give it back); a pinned page is never evicted.
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

    def get(self, page_id: int) -> Page | None:
        page = self._pages.get(page_id)
        if page is not None:
            self._pages.move_to_end(page_id)
            self.hits += 1
            return page
        self.misses += 1
        page = self._fetch(page_id)
        if page is not None:
            self.put(page)
        return page

    def put(self, page: Page) -> None:
        self._pages[page.page_id] = page
        self._pages.move_to_end(page.page_id)
        self._evict()

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

    def _evict(self) -> None:
        while len(self._pages) > self.capacity:
            if not self._evict_one():
                # Every page is pinned or above VDL: wait for acks rather than grow without bound.
                if len(self._pages) - len(self._pins) <= 0:
                    return  # only pinned pages: the MTR in progress needs them all
                self._wait_durable()
                if not self._evict_one():
                    return

    def _evict_one(self) -> bool:
        vdl = self._durable_lsn()
        for page_id, page in self._pages.items():
            if page_id not in self._pins and page.lsn <= vdl:
                del self._pages[page_id]
                return True
        return False
