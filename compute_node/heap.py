"""A table's rows: MVCC tuples in a chain of heap pages, found from the table's root page.

A row id (tid) is (page_id, slot); slots never move, so index entries stay valid. An UPDATE is a
new tuple plus xmax on the old one, as in PostgreSQL. Invariants: the table page names the first
and last heap page; tuples are only appended to the last page; a new page is linked in the same
MTR that inserts into it.
"""

from __future__ import annotations

from typing import Iterator

from compute_node.page_store import META_PAGE, PageStore


class Heap:
    def __init__(self, store: PageStore, table_page_id: int):
        self.store = store
        self.table_page_id = table_page_id

    @staticmethod
    def create(store: PageStore) -> int:
        """Inside an MTR: make a table root page and its first heap page; returns the root's id."""
        table_page_id = store.allocate_page()
        heap_page_id = store.allocate_page()
        store.log(heap_page_id, "heap_init", 0)
        store.log(table_page_id, "table_init", {"first_heap": heap_page_id, "last_heap": heap_page_id, "indexes": {}})
        return table_page_id

    def prepare_insert(self, values: list) -> int:
        """Before the MTR: returns the page the tuple goes to, or 0 if a new page is needed."""
        table = self.store.get(self.table_page_id)
        last = self.store.get(table.values["last_heap"])
        return last.page_id if last.fits(values) else 0

    def pages_for_insert(self) -> list[int]:
        """The existing pages an insert may read or change: pin them at the MTR's start."""
        return [META_PAGE, self.table_page_id, self.store.get(self.table_page_id).values["last_heap"]]

    def insert(self, values: list, xid: int, target_page_id: int) -> tuple[int, int]:
        """Inside an MTR, after prepare_insert. Returns the new tuple's tid."""
        if not target_page_id:
            table = self.store.get(self.table_page_id)
            old_last = table.values["last_heap"]
            target_page_id = self.store.allocate_page()
            self.store.log(target_page_id, "heap_init", 0)
            self.store.log(old_last, "heap_set_next", target_page_id)
            self.store.log(self.table_page_id, "table_set", "last_heap", target_page_id)
        page = self.store.get(target_page_id)
        slot = len(page.tuples)
        self.store.log(target_page_id, "heap_insert", slot, xid, values)
        return target_page_id, slot

    def set_xmax(self, tid: tuple[int, int], xid: int) -> None:
        with self.store.mtr(tid[0]):
            self.store.log(tid[0], "heap_set_xmax", tid[1], xid)

    def fetch(self, tid) -> list:
        """[xmin, xmax, values] of one tuple."""
        return self.store.get(tid[0]).tuples[tid[1]]

    def scan(self) -> Iterator[tuple[tuple[int, int], list]]:
        """Every tuple, visible or not, as (tid, [xmin, xmax, values])."""
        page_id = self.store.get(self.table_page_id).values["first_heap"]
        while page_id:
            page = self.store.get(page_id)
            tuples = page.tuples
            for slot in range(len(tuples)):
                yield (page_id, slot), tuples[slot]
            page_id = page.next_page
