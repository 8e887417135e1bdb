"""B+tree indexes over pages: key tuples to row ids, so a key lookup reads O(log n) pages.

Leaves hold sorted (key, tid) pairs linked left to right; internal nodes hold separators and
children. Equal keys may repeat (MVCC keeps several versions of a row), so lookups descend to the
leftmost leaf that can hold the key and walk right. The root page id never changes: a root split
moves its content into two new children. VACUUM unlinks the leaves it empties (never the root,
nor a parent's only child) and frees their pages. Invariants: keys in a leaf are sorted; every
key in child i of an internal node is >= keys[i-1] and <= keys[i] (child 0 and the last child
are open below and above within their parent's range); every leaf is at one depth; a split is
one MTR with the insert that caused it; all pages on the path are fetched and pinned before the
MTR's first record.
"""

from __future__ import annotations

import bisect
from typing import Iterator

from aurora_db import pages
from aurora_db.constants import PAGE_BYTES_MAX, PAGE_ID_MAX
from aurora_db.errors import ProgramLimitExceeded
from aurora_db.pages import BTreePage
from compute_node import free_space
from compute_node.page_store import META_PAGE, PageStore

BUILD_FILL_BYTES = PAGE_BYTES_MAX * 9 // 10  # a bulk-built node is filled to 90%, as PostgreSQL's leaves
BUILD_NODES_PER_MTR = 4  # nodes written per MTR while building: few pages pinned beyond the cache
BUILD_FREE_PAGES_PER_MTR = 60  # page ids taken from the free list per MTR (a record each, and one
                                # more per freelist page emptied)
assert BUILD_FILL_BYTES >= pages.PAGE_HEADER_BYTES + 2 * (pages.KEY_BYTES_MAX + pages.KEY_OVERHEAD_BYTES)


def sort_key(key: tuple) -> tuple:
    """Keys hold no NULL (compute_node/indexes.py encodes a nullable column as a (null flag, value)
    pair); values of one column share a type, so tuples compare."""
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

    def newest_first(self, key: tuple) -> Iterator[tuple[int, int]]:
        """tids of the entries equal to `key`, the most recently inserted first.

        Equal keys stay in insertion order (an insert goes after its equals, in the rightmost
        leaf that can hold it), so the newest is found by one descent, reading back from there:
        a hot row's newest versions cost O(log n) however many old ones its key still has. Only
        when the equals run back past the start of that leaf is the whole run read."""
        leaf = self.store.get(self._descend(key, rightmost=True)[-1])
        keys, vals = leaf.keys, leaf.vals
        index = bisect.bisect_right(keys, key) - 1
        given = 0
        while index >= 0 and keys[index] == key:
            yield vals[index]
            given += 1
            index -= 1
        if index >= 0:
            return  # a smaller key ends the run inside this leaf
        older = self.lookup(key)  # the run may continue in leaves to the left: read it whole
        yield from reversed(older[:len(older) - given])

    def range(self, low: tuple | None, high: tuple | None, low_inclusive: bool = True,
              high_inclusive: bool = True) -> Iterator[tuple[tuple, tuple[int, int]]]:
        """(key, tid) for low <= key <= high in key order (None: unbounded). A bound shorter than
        the keys is a prefix: it compares with the same number of leading key fields."""
        if low is None:
            page = self.store.get(self._leftmost_leaf())
            index = 0
        else:
            page = self.store.get(self._descend(low, rightmost=False)[-1])
            index = bisect.bisect_left(page.keys, low)
        low_width = len(low) if low is not None else 0
        high_width = len(high) if high is not None else 0
        skipping = low is not None and not low_inclusive
        while True:
            keys, vals = page.keys, page.vals
            while index < len(keys):
                key = keys[index]
                if high is not None:
                    head = key[:high_width] if high_width < len(key) else key
                    if head > high or (not high_inclusive and head == high):
                        return
                if skipping:
                    if (key[:low_width] if low_width < len(key) else key) == low:
                        index += 1
                        continue
                    skipping = False
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

    def leaf_ids(self) -> Iterator[int]:
        """Every leaf, left to right."""
        page_id = self._leftmost_leaf()
        while page_id:
            yield page_id
            page_id = self.store.get(page_id).right

    def page_count(self) -> int:
        """Every node of the tree, root included (pg_relation_size)."""
        count, level = 0, [self.root_page_id]
        while level:
            count += len(level)
            nodes = [self.store.get(page_id) for page_id in level]
            level = [child for node in nodes if not node.is_leaf for child in node.vals]
        return count

    def prepare_insert(self, key: tuple) -> list[int]:
        """Before the MTR: the root-to-leaf path, fetched (and pinned by the caller's MTR)."""
        return self._descend(key, rightmost=True)

    @staticmethod
    def insert_records_max(path: list[int]) -> int:
        """Records an insert along `path` may make: a split per level (an allocation and two
        node images; the root three images and two allocations) and the final insert."""
        return 3 * len(path) + 2

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
        if depth == 0:  # the root keeps its page id: both halves move to new children
            left_id = self.store.allocate_page()
            right_id = self.store.allocate_page()
            self.store.log(right_id, "btree_init", page.is_leaf, *_wire(right_keys, right_vals), 0 if not page.is_leaf else page.right)
            self.store.log(left_id, "btree_init", page.is_leaf, *_wire(left_keys, left_vals), right_id if page.is_leaf else 0)
            self.store.log(page.page_id, "btree_init", False, [list(separator)], [left_id, right_id], 0)
            return
        right_id = self.store.allocate_page()
        self.store.log(right_id, "btree_init", page.is_leaf, *_wire(right_keys, right_vals), page.right if page.is_leaf else 0)
        self.store.log(page.page_id, "btree_init", page.is_leaf, *_wire(left_keys, left_vals), right_id if page.is_leaf else 0)
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

    # --- VACUUM -------------------------------------------------------------------------------

    def drop_empty_leaves(self) -> int:
        """VACUUM, after removing entries: unlink every empty leaf but the root and a parent's only
        child, and give its page to the free list, in one MTR per leaf (its parent, its left
        neighbour's link, the free list). Returns how many went. A descent never reaches an
        unlinked leaf and a walk to the right skips it; keys in its range now descend to its left
        neighbour (or, for a first child, its right one), which may hold them (PostgreSQL too only
        deletes empty pages, it merges none)."""
        leaves = self._leaves_with_parents()
        dropped = 0
        for position in range(len(leaves) - 1, -1, -1):  # right to left: positions on the left stay valid
            leaf_id, parent_id = leaves[position]
            if parent_id is None or self.store.get(leaf_id).keys or len(self.store.get(parent_id).vals) < 2:
                continue
            left_id = leaves[position - 1][0] if position else 0
            free_space.warm(self.store)
            with self.store.mtr(META_PAGE, parent_id, leaf_id, *([left_id] if left_id else []),
                                *free_space.tail_pages(self.store)):
                parent, leaf = self.store.get(parent_id), self.store.get(leaf_id)
                child = parent.vals.index(leaf_id)
                keys, vals = list(parent.keys), list(parent.vals)
                del vals[child]
                del keys[max(child - 1, 0)]
                self.store.log(parent_id, "btree_init", False, *_wire(keys, vals), 0)
                if left_id:
                    left = self.store.get(left_id)
                    self.store.log(left_id, "btree_init", True, *_wire(left.keys, left.vals), leaf.right)
                free_space.release(self.store, [[leaf_id, 1]])
            dropped += 1
        return dropped

    def _leaves_with_parents(self) -> list[tuple[int, int | None]]:
        """(leaf, its parent or None for a root leaf), left to right: every leaf is at one depth."""
        level: list[tuple[int, int | None]] = [(self.root_page_id, None)]
        while True:
            nodes = [(self.store.get(page_id), parent_id) for page_id, parent_id in level]
            if nodes[0][0].is_leaf:
                return level
            level = [(child, node.page_id) for node, _ in nodes for child in node.vals]

    # --- bulk build ---------------------------------------------------------------------------

    def build(self, entries: list[tuple[tuple, tuple[int, int]]]) -> None:
        """Fill an empty tree (its root made by create()) from (key, tid) pairs sorted by key,
        bottom up, a level at a time. Not one MTR: the tree must not be reachable by anyone
        else until the catalog row naming it commits (a crash leaves unreachable pages)."""
        root = self.store.get(self.root_page_id)
        assert root.is_leaf and not root.keys, "build() fills an empty tree"
        # A node is (keys, vals, lowest key under it).
        level = [([key for key, _ in chunk], [tid for _, tid in chunk], chunk[0][0] if chunk else None)
                 for chunk in _pack(entries)]
        is_leaf = True
        while len(level) > 1:
            ids = self._allocate_pages(len(level))
            for start in range(0, len(level), BUILD_NODES_PER_MTR):
                with self.store.mtr(META_PAGE):
                    for index in range(start, min(start + BUILD_NODES_PER_MTR, len(level))):
                        keys, vals, _ = level[index]
                        right = ids[index + 1] if is_leaf and index + 1 < len(level) else 0
                        self.store.log(ids[index], "btree_init", is_leaf, [list(k) for k in keys],
                                       [list(v) if isinstance(v, tuple) else v for v in vals], right)
            children = [(low, page_id) for (_, _, low), page_id in zip(level, ids)]
            level = [([low for low, _ in chunk[1:]], [page_id for _, page_id in chunk], chunk[0][0])
                     for chunk in _pack(children)]
            is_leaf = False
        keys, vals, _ = level[0]
        with self.store.mtr(self.root_page_id):
            self.store.log(self.root_page_id, "btree_init", is_leaf, [list(k) for k in keys],
                           [list(v) if isinstance(v, tuple) else v for v in vals], 0)

    def _allocate_pages(self, count: int) -> list[int]:
        """`count` page ids: the free list's first (BUILD_FREE_PAGES_PER_MTR per MTR), then the
        volume grows by the rest in one record."""
        ids: list[int] = []
        while len(ids) < count:
            wanted = min(count - len(ids), BUILD_FREE_PAGES_PER_MTR)
            taken: list[int] = []
            with self.store.mtr(META_PAGE):
                while len(taken) < wanted and (page_id := self.store.take_free_page()) is not None:
                    taken.append(page_id)
            if not taken:
                break
            ids += taken
        rest = count - len(ids)
        if rest:
            with self.store.mtr(META_PAGE):
                first = self.store.get(META_PAGE).values["next_page_id"]
                if first + rest >= PAGE_ID_MAX:
                    raise ProgramLimitExceeded("the volume has no page ids left")
                self.store.log(META_PAGE, "meta_set", "next_page_id", first + rest)
            ids += range(first, first + rest)
        return ids


def _wire(keys: list, vals: list) -> tuple[list, list]:
    """A node's keys and values as a btree_init record carries them."""
    return [list(k) for k in keys], [list(v) if isinstance(v, tuple) else v for v in vals]


def _pack(entries: list) -> list[list]:
    """Split (key, value) pairs into consecutive chunks whose keys fill a node to BUILD_FILL_BYTES
    (at least one pair per chunk; always at least one chunk)."""
    chunks, chunk, used = [], [], pages.PAGE_HEADER_BYTES
    for entry in entries:
        size = pages.key_bytes(entry[0])
        if chunk and used + size > BUILD_FILL_BYTES:
            chunks.append(chunk)
            chunk, used = [], pages.PAGE_HEADER_BYTES
        chunk.append(entry)
        used += size
    chunks.append(chunk)
    return chunks
