"""B+tree indexes over pages: key tuples to row ids, so a key lookup reads O(log n) pages.

Leaves hold sorted (key, tid) pairs linked left to right; internal nodes hold separators and
children. Equal keys may repeat (MVCC keeps several versions of a row), so lookups descend to the
leftmost leaf that can hold the key and walk right. The root page id never changes: a root split
moves its content into two new children. Invariants: keys in a leaf are sorted; every key in
child i of an internal node is >= keys[i-1] and <= keys[i]; a split is one MTR with the insert
that caused it; all pages on the path are fetched and pinned before the MTR's first record.
"""

from __future__ import annotations

import bisect
from typing import Iterator

from aurora_db.pages import BTreePage
from compute_node.page_store import PageStore


def sort_key(key: tuple) -> tuple:
    """NULLs are not allowed in index keys; values of one column share a type, so tuples compare."""
    return key


class BTree:
    def __init__(self, store: PageStore, root_page_id: int):
        self.store = store
        self.root_page_id = root_page_id

    @staticmethod
    def create(store: PageStore) -> int:
        """Inside an MTR: an empty tree; returns its root page id."""
        root = store.allocate_page()
        store.log(root, "btree_init", True, [], [], 0)
        return root

    # --- reads --------------------------------------------------------------------------------

    def _descend(self, key: tuple, rightmost: bool) -> list[int]:
        path = [self.root_page_id]
        page = self.store.get(self.root_page_id)
        while not page.is_leaf:
            index = bisect.bisect_right(page.keys, key) if rightmost else bisect.bisect_left(page.keys, key)
            path.append(page.vals[index])
            page = self.store.get(page.vals[index])
        return path

    def lookup(self, key: tuple) -> list[tuple[int, int]]:
        return [tid for _, tid in self.range(key, key)]

    def range(self, low: tuple | None, high: tuple | None) -> Iterator[tuple[tuple, tuple[int, int]]]:
        """(key, tid) for low <= key <= high in key order (None: unbounded)."""
        if low is None:
            page = self.store.get(self._leftmost_leaf())
            index = 0
        else:
            page = self.store.get(self._descend(low, rightmost=False)[-1])
            index = bisect.bisect_left(page.keys, low)
        while True:
            keys, vals = page.keys, page.vals
            while index < len(keys):
                key = keys[index]
                if high is not None and key > high:
                    return
                yield key, vals[index]
                index += 1
            if not page.right:
                return
            page = self.store.get(page.right)
            index = 0

    def _leftmost_leaf(self) -> int:
        page = self.store.get(self.root_page_id)
        while not page.is_leaf:
            page = self.store.get(page.vals[0])
        return page.page_id

    # --- insert -------------------------------------------------------------------------------

    def prepare_insert(self, key: tuple) -> list[int]:
        """Before the MTR: the root-to-leaf path, fetched (and pinned by the caller's MTR)."""
        return self._descend(key, rightmost=True)

    def insert(self, key: tuple, tid: tuple[int, int], path: list[int]) -> None:
        """Inside an MTR that pinned the path from prepare_insert."""
        leaf = self.store.get(path[-1])
        position = bisect.bisect_right(leaf.keys, key)
        if leaf.fits(key):
            self.store.log(leaf.page_id, "btree_insert", position, list(key), list(tid))
            return
        keys = list(leaf.keys)
        vals = list(leaf.vals)
        keys.insert(position, key)
        vals.insert(position, tid)
        self._split(path, len(path) - 1, keys, vals)

    def _split(self, path: list[int], depth: int, keys: list, vals: list) -> None:
        """Write node path[depth] as two nodes holding keys/vals and push a separator up."""
        page: BTreePage = self.store.get(path[depth])
        if page.is_leaf:
            middle = len(keys) // 2
            left_keys, left_vals = keys[:middle], vals[:middle]
            right_keys, right_vals = keys[middle:], vals[middle:]
            separator = right_keys[0]
        else:
            middle = len(keys) // 2
            separator = keys[middle]
            left_keys, left_vals = keys[:middle], vals[:middle + 1]
            right_keys, right_vals = keys[middle + 1:], vals[middle + 1:]
        wire = lambda ks, vs: ([list(k) for k in ks], [list(v) if isinstance(v, tuple) else v for v in vs])
        if depth == 0:  # the root keeps its page id: both halves move to new children
            left_id = self.store.allocate_page()
            right_id = self.store.allocate_page()
            self.store.log(right_id, "btree_init", page.is_leaf, *wire(right_keys, right_vals), 0 if not page.is_leaf else page.right)
            self.store.log(left_id, "btree_init", page.is_leaf, *wire(left_keys, left_vals), right_id if page.is_leaf else 0)
            self.store.log(page.page_id, "btree_init", False, [list(separator)], [left_id, right_id], 0)
            return
        right_id = self.store.allocate_page()
        self.store.log(right_id, "btree_init", page.is_leaf, *wire(right_keys, right_vals), page.right if page.is_leaf else 0)
        self.store.log(page.page_id, "btree_init", page.is_leaf, *wire(left_keys, left_vals), right_id if page.is_leaf else 0)
        parent = self.store.get(path[depth - 1])
        position = parent.vals.index(page.page_id)  # the new right node goes just after this child
        if parent.fits(separator):
            self.store.log(parent.page_id, "btree_insert", position, list(separator), right_id)
            return
        parent_keys = list(parent.keys)
        parent_vals = list(parent.vals)
        parent_keys.insert(position, separator)
        parent_vals.insert(position + 1, right_id)
        self._split(path, depth - 1, parent_keys, parent_vals)
