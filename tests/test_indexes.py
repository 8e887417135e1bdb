"""The index module against a brute-force oracle, over an in-memory page store that applies the
same redo records as the real one: bulk builds, inserts that split nodes, lookups by key and by
prefix, ranges with open and closed bounds, NULLs sorting last, and uniqueness (NULLs distinct)."""

from __future__ import annotations

import contextlib
import random
import types

import pytest

from aurora_db import pages
from aurora_db.errors import UniqueViolation
from aurora_db.pages import XID_COMMITTED
from compute_node import indexes as ix
from compute_node.btree import BTree
from compute_node.catalog import ColumnDef, IndexDef, TableDef
from compute_node.heap import Heap
from compute_node.page_store import DATA_FIRST_PAGE, META_PAGE


class MemoryStore:
    """PageStore's interface, in memory: records go through pages.apply like everywhere else."""

    def __init__(self):
        self.pages = {}
        self.lsn = 0
        self.in_mtr = False
        with self.mtr():
            self.log(META_PAGE, "meta_init")
            self.log(META_PAGE, "meta_set", "next_page_id", DATA_FIRST_PAGE)

    def get(self, page_id):
        return self.pages[page_id]

    @contextlib.contextmanager
    def mtr(self, *pages_used, records_max=0):
        assert not self.in_mtr, "MTRs do not nest"
        self.in_mtr = True
        try:
            yield self
        finally:
            self.in_mtr = False

    def log(self, page_id, op, *args):
        assert self.in_mtr, op
        self.lsn += 1
        record = types.SimpleNamespace(lsn=self.lsn, page_id=page_id, op=op, args=args)
        page = pages.apply(None if op.endswith("_init") else self.pages[page_id], record)
        self.pages[page_id] = page
        return page

    def take_free_page(self):
        return None  # no free list here: the volume only grows

    def allocate_page(self):
        page_id = self.pages[META_PAGE].values["next_page_id"]
        self.log(META_PAGE, "meta_set", "next_page_id", page_id + 1)
        return page_id


class AllCommitted:
    def status(self, xid):
        return XID_COMMITTED


def make_table(store, index_columns, unique):
    with store.mtr():
        table_page_id = Heap.create(store)
        root = BTree.create(store)
    columns = (ColumnDef("a", "int4", -1, False), ColumnDef("b", "text", -1, False), ColumnDef("c", "int4", -1, False))
    index = IndexDef("t_idx", tuple(index_columns), unique, root)
    return TableDef("t", table_page_id, columns, (), (0, 0), (index,)), index


def insert(store, table, row, xid=100):
    heap = Heap(store, table.table_page_id)
    target = heap.prepare_insert(row)
    entries = ix.prepare_entries(store, table, row)
    with store.mtr():
        tid = heap.insert(row, xid, target)
        ix.insert_entries(entries, tid)
    return tid


def context(store):
    return types.SimpleNamespace(store=store, transactions=AllCommitted(), xid=999,
                                 visible=lambda xmin, xmax: xmax == 0)


def random_row(rng):
    a = rng.choice([None] + list(range(40)))
    b = rng.choice([None, "x", "y", "z" * rng.randrange(1, 300)])
    return [a, b, rng.randrange(1000)]


def sort_value(value):
    return (1, 0) if value is None else (0, value)


@pytest.mark.parametrize("seed", range(4))
def test_lookups_and_ranges_match_a_scan(seed):
    rng = random.Random(seed)
    store = MemoryStore()
    table, index = make_table(store, ["a", "b"], unique=False)
    rows = {}
    # Half the rows exist before the index is built (bulk build), half are inserted after (splits).
    early = [random_row(rng) for _ in range(1500)]
    heap = Heap(store, table.table_page_id)
    for row in early:
        target = heap.prepare_insert(row)
        with store.mtr():
            rows[heap.insert(row, 100, target)] = row
    empty = IndexDef(index.name, index.columns, index.unique, index.root_page_id)
    ix.build(context(store), table, empty)
    for _ in range(1500):
        row = random_row(rng)
        rows[insert(store, table, row)] = row
    ctx = context(store)
    order = [rows[tid] for tid in ix.index_order(ctx, table, index)]
    assert [(sort_value(r[0]), sort_value(r[1])) for r in order] == \
        sorted((sort_value(r[0]), sort_value(r[1])) for r in rows.values()), "key order, NULLs last"
    for a in [None, 0, 5, 39, 40]:
        expected = sorted(tid for tid, r in rows.items() if a is not None and r[0] == a)
        assert sorted(ix.index_lookup(ctx, table, index, [a])) == expected
        for b in ["x", "y", None]:
            expected = sorted(tid for tid, r in rows.items() if a is not None and b is not None and r[:2] == [a, b])
            assert sorted(ix.index_lookup(ctx, table, index, (a, b))) == expected
    for low, high, low_inclusive, high_inclusive in [(5, 10, True, True), (5, 10, False, False), (None, 3, True, False),
                                                     (37, None, False, True), (None, None, True, True)]:
        expected = sorted(tid for tid, r in rows.items() if r[0] is not None
                          and (low is None or (r[0] >= low if low_inclusive else r[0] > low))
                          and (high is None or (r[0] <= high if high_inclusive else r[0] < high)))
        got = list(ix.index_range(ctx, table, index, None if low is None else (low,), None if high is None else (high,),
                                  low_inclusive, high_inclusive))
        assert sorted(got) == expected, (low, high, low_inclusive, high_inclusive)
        assert [rows[tid][0] for tid in got] == sorted(rows[tid][0] for tid in got), "ranges come in key order"
    assert ix.find_index(table, ["a"]) is index and ix.find_index(table, ["b"]) is None
    scanned = [values for _, values in ix.index_scan(ctx, table, index, (3,), (3,))]
    assert sorted(map(repr, scanned)) == sorted(repr(r) for r in rows.values() if r[0] == 3)
    assert store.get(index.root_page_id).is_leaf is False, "the test must reach past one leaf"


def test_a_unique_index_treats_nulls_as_distinct_and_a_build_finds_duplicates():
    store = MemoryStore()
    table, index = make_table(store, ["a", "c"], unique=True)
    ctx = context(store)
    for row in ([1, "x", 1], [1, "x", None], [None, "x", 1]):
        ix.check_unique(ctx, table, index, row)
        insert(store, table, row)
    ix.check_unique(ctx, table, index, [1, "y", None])  # NULLs are distinct
    with pytest.raises(UniqueViolation) as caught:
        ix.check_unique(ctx, table, index, [1, "y", 1])
    assert caught.value.detail == "Key (a, c)=(1, 1) already exists."
    insert(store, table, [2, "x", 2])
    insert(store, table, [2, "y", 2])  # a duplicate that bypassed the check: a new build must refuse it
    with store.mtr():
        root = BTree.create(store)
    with pytest.raises(UniqueViolation) as caught:
        ix.build(ctx, table, IndexDef("t_again", ("a", "c"), True, root))
    assert str(caught.value) == 'could not create unique index "t_again"'
    assert caught.value.detail == "Key (a, c)=(2, 2) is duplicated."


@pytest.mark.parametrize("versions", [1, 3, 400])
def test_newest_first_gives_a_keys_entries_newest_first_even_when_they_span_leaves(versions):
    """A hot row's primary key gets an entry per version; a lookup reads them newest first."""
    store = MemoryStore()
    with store.mtr():
        root = BTree.create(store)
    tree = BTree(store, root)
    rng = random.Random(versions)
    inserted = {key: [] for key in range(5)}
    for n in range(versions * 5):
        key = rng.randrange(5)
        tid = (1000 + n, n % 7)
        path = tree.prepare_insert((key, "k" * 200))  # wide keys: a run of equals spans many leaves
        with store.mtr():
            tree.insert((key, "k" * 200), tid, path)
        inserted[key].append(tid)
    assert not store.pages[root].is_leaf or versions < 400
    for key, tids in inserted.items():
        assert list(tree.newest_first((key, "k" * 200))) == tids[::-1]
    assert list(tree.newest_first((99, ""))) == []
