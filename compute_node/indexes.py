"""Secondary and primary-key indexes: key encoding, upkeep on every row version, uniqueness, builds,
and the lookup API the query planner calls for index scans.

Every index of a table gets an entry for every row version (tuple) of it that is not a HOT
successor (compute_node/heap.py), made in the same MTR as the heap tuple (DESIGN.md 2: "a row
insert plus its index entries"). An entry names the root of a chain of versions that share its
key; a pruned chain leaves a redirect or a dead stub, and only VACUUM removes the entries that name
a stub (heap.Heap.vacuum), so a reader walks the chain and checks each version's visibility (MVCC)
after following an index entry.

Key encoding. A primary-key index holds the raw column values (its columns are NOT NULL; this is
what compute_node/sources.py looks up). Any other index holds, per column, a pair (0, value), or
(1, None) for NULL, flattened into one tuple: NULLs sort last, as in PostgreSQL, and keys with NULLs
still compare. Invariants: a unique index never holds two live tuples with equal keys without a
NULL; an index is built with one entry per chain that holds a version some snapshot may see.

Planner API (all run on the engine thread, with a Context `ctx` of sources.py):
  find_index(table, columns) -> IndexDef | None
      an index whose leading columns are exactly `columns` (in order), the primary key first.
  index_lookup(ctx, table, index, key_values) -> list[tid]
      tids of tuples whose first len(key_values) index columns equal key_values (a prefix is fine);
      [] if a value is None (= NULL never matches). Values must have the column's Python type
      (cast with sql_types.cast first). They name chains, whose versions may be invisible: use
      fetch_visible.
  index_range(ctx, table, index, low=None, high=None, low_inclusive=True, high_inclusive=True)
      -> Iterator[tid] in key order; low/high are tuples of values for the leading columns
      (None: unbounded). Rows whose leading column is NULL are never returned, as no comparison
      is true for NULL.
  index_order(ctx, table, index) -> Iterator[tid]: every entry in key order, NULLs last.
  fetch_visible(ctx, table, tids) -> Iterator[(tid, values)]: per chain, the version visible to
      ctx's snapshot, if any.
  index_scan(ctx, table, index, low, high, ...) -> Iterator[(tid, values)]: index_range + fetch_visible.
  unique_lookup(ctx, table, index, key_values) -> Iterator[(tid, values)]: the one visible tuple of a
      unique index's full key, if any, read newest version first (compute_node/index_scans.py).
"""

from __future__ import annotations

from typing import Iterable, Iterator

from aurora_db import pages
from aurora_db.errors import ProgramLimitExceeded, SerializationFailure, UniqueViolation
from aurora_db.pages import XID_ABORTED, XID_COMMITTED
from compute_node import sql_types as t
from compute_node.btree import BTree
from compute_node.catalog import PRIMARY_KEY_INDEX, IndexDef, TableDef
from compute_node.heap import Heap

INDEX_BUILD_ROWS_MAX = 5_000_000  # an index build sorts its (key, tid) pairs in memory


# --- keys -------------------------------------------------------------------------------------


def column_positions(table: TableDef, index: IndexDef) -> tuple[int, ...]:
    return tuple(table.column_index(name) for name in index.columns)


def encode(index: IndexDef, values: Iterable) -> tuple:
    """The B-tree key of index-column values (or of a leading prefix of them)."""
    if index.primary:
        return tuple(values)
    key = []
    for value in values:
        key += (1, None) if value is None else (0, value)
    return tuple(key)


def decode(index: IndexDef, key: tuple) -> tuple:
    return key if index.primary else key[1::2]


def row_key(table: TableDef, index: IndexDef, row: list) -> tuple:
    return encode(index, (row[i] for i in column_positions(table, index)))


def root_of(store, table: TableDef, index: IndexDef) -> int:
    if index.root_page_id:
        return index.root_page_id
    return store.get(table.table_page_id).values["indexes"][PRIMARY_KEY_INDEX]


def tree_of(store, table: TableDef, index: IndexDef) -> BTree:
    return BTree(store, root_of(store, table, index))


def describe_key(index: IndexDef, values) -> str:
    shown = ", ".join("null" if v is None else t.to_text(v) for v in values)
    return f"Key ({', '.join(index.columns)})=({shown})"


# --- the planner's API ------------------------------------------------------------------------


def find_index(table: TableDef, columns) -> IndexDef | None:
    columns = tuple(columns)
    for index in table.indexes:
        if index.columns[:len(columns)] == columns:
            return index
    return None


def index_lookup(ctx, table: TableDef, index: IndexDef, key_values) -> list[tuple[int, int]]:
    key_values = tuple(key_values)
    if any(value is None for value in key_values):
        return []
    key = encode(index, key_values)
    return [tid for _, tid in tree_of(ctx.store, table, index).range(key, key)]


def index_range(ctx, table: TableDef, index: IndexDef, low=None, high=None, low_inclusive: bool = True,
                high_inclusive: bool = True) -> Iterator[tuple[int, int]]:
    if (low is not None and any(v is None for v in low)) or (high is not None and any(v is None for v in high)):
        return iter(())
    low_key = encode(index, low) if low is not None else None
    if high is not None:
        high_key = encode(index, high)
    elif not index.primary:
        high_key, high_inclusive = (0,), True  # stop before the first NULL of the leading column
    else:
        high_key = None
    return (tid for _, tid in tree_of(ctx.store, table, index).range(low_key, high_key, low_inclusive, high_inclusive))


def index_order(ctx, table: TableDef, index: IndexDef) -> Iterator[tuple[int, int]]:
    return (tid for _, tid in tree_of(ctx.store, table, index).range(None, None))


def fetch_visible(ctx, table: TableDef, tids) -> Iterator[tuple[tuple[int, int], list]]:
    """The version of each entry's chain (heap.py) that ctx's snapshot sees, if any."""
    heap = Heap(ctx.store, table.table_page_id)
    visible = ctx.visible
    for tid in tids:
        for version_tid, (xmin, xmax, values) in heap.versions(tid):
            if visible(xmin, xmax):
                yield version_tid, values
                break


def index_scan(ctx, table: TableDef, index: IndexDef, low=None, high=None, low_inclusive: bool = True,
               high_inclusive: bool = True) -> Iterator[tuple[tuple[int, int], list]]:
    return fetch_visible(ctx, table, index_range(ctx, table, index, low, high, low_inclusive, high_inclusive))


def unique_lookup(ctx, table: TableDef, index: IndexDef, key_values) -> Iterator[tuple[tuple[int, int], list]]:
    """A unique index keeps an entry per row version, so a hot row's key has many; but a snapshot
    sees at most one tuple per full key without NULLs (a key's next holder commits only after its
    previous holder's delete did). Versions are entered oldest first, so look from the newest and
    stop at the first visible one."""
    assert index.unique and len(key_values) == len(index.columns), (index, key_values)
    if any(value is None for value in key_values):
        return
    heap = Heap(ctx.store, table.table_page_id)
    for tid in tree_of(ctx.store, table, index).newest_first(encode(index, key_values)):
        for version_tid, (xmin, xmax, values) in heap.versions(tid):
            if ctx.visible(xmin, xmax):
                yield version_tid, values
                return


# --- upkeep on writes -------------------------------------------------------------------------


def check_key_sizes(table: TableDef, row: list) -> None:
    for index in table.indexes:
        size = pages.key_bytes(row_key(table, index, row))
        if size > pages.KEY_BYTES_MAX:
            raise ProgramLimitExceeded(f'index row size {size} exceeds maximum {pages.KEY_BYTES_MAX} '
                                       f'for index "{index.name}"')


def prepare_entries(store, table: TableDef, row: list) -> list[tuple[BTree, tuple, list[int]]]:
    """Before the MTR: for each index, its tree, the row's key and the root-to-leaf path to pin."""
    entries = []
    for index in table.indexes:
        tree = tree_of(store, table, index)
        key = row_key(table, index, row)
        entries.append((tree, key, tree.prepare_insert(key)))
    return entries


def insert_entries(entries, tid) -> None:
    """Inside the MTR that inserted the tuple `tid`."""
    for tree, key, path in entries:
        tree.insert(key, tid, path)


def check_unique(ctx, table: TableDef, index: IndexDef, row: list) -> None:
    """Before writing `row` as a new tuple: no other live tuple may hold its key (NULLs are distinct)."""
    values = [row[i] for i in column_positions(table, index)]
    if any(value is None for value in values):
        return
    heap = Heap(ctx.store, table.table_page_id)
    key = encode(index, values)
    for xmin, xmax in holders(heap, tree_of(ctx.store, table, index).range(key, key)):
        if xmin != ctx.xid:
            status = ctx.transactions.status(xmin)
            if status == XID_ABORTED:
                continue
            if status != XID_COMMITTED:
                raise SerializationFailure(
                    f'could not insert key into "{index.name}": a concurrent transaction holds it')
        if xmax == ctx.xid:
            continue
        if xmax:
            status = ctx.transactions.status(xmax)
            if status == XID_COMMITTED:
                continue
            if status != XID_ABORTED:
                raise SerializationFailure(
                    f'could not insert key into "{index.name}": a concurrent transaction is deleting it')
        raise UniqueViolation(f'duplicate key value violates unique constraint "{index.name}"',
                              detail=f"{describe_key(index, values)} already exists.")


def holders(heap: Heap, entries) -> Iterator[tuple[int, int]]:
    """(xmin, xmax) of every version of the chains that index entries (key, tid) name."""
    for _, tid in entries:
        for _, (xmin, xmax, _) in heap.versions(tid):
            yield xmin, xmax


# --- builds -----------------------------------------------------------------------------------


def build(ctx, table: TableDef, index: IndexDef) -> None:
    """Fill the empty tree of `index` from the table's tuples. The caller made sure no other open
    transaction wrote the table, so every tuple's status is final or ours. Raises 23505 (nothing
    reachable is changed) if a unique index would hold two live equal keys.

    One entry per HOT chain (heap.py), naming its root, with the key of its newest version that a
    snapshot may still see: older versions of a chain may hold other values of the new index's
    columns (they were not indexed when it was updated), but only snapshots taken before this
    transaction committed see them, and those do not see the index (the catalog is read through
    the statement's snapshot)."""
    heap = Heap(ctx.store, table.table_page_id)
    positions = column_positions(table, index)
    status = ctx.transactions.status
    entries = []
    live = []  # keys of tuples that are live now, for the uniqueness check
    for root_tid, versions in heap.chains():
        newest = None  # the key of the chain's newest version that some snapshot may still see
        for _, (xmin, xmax, values) in versions:
            if xmin != ctx.xid and status(xmin) == XID_ABORTED:
                continue
            if xmax and xmax != ctx.xid and status(xmax) == XID_COMMITTED:
                continue
            key_values = [values[i] for i in positions]
            newest = encode(index, key_values)
            size = pages.key_bytes(newest)
            if size > pages.KEY_BYTES_MAX:
                raise ProgramLimitExceeded(f'index row size {size} exceeds maximum {pages.KEY_BYTES_MAX} '
                                           f'for index "{index.name}"')
            if index.unique and xmax != ctx.xid and None not in key_values:
                live.append(newest)
        if newest is None:
            continue
        entries.append((newest, root_tid))
        if len(entries) > INDEX_BUILD_ROWS_MAX:
            raise ProgramLimitExceeded(f"an index build is limited to {INDEX_BUILD_ROWS_MAX} rows")
    if index.unique:
        live.sort()
        for previous, key in zip(live, live[1:]):
            if previous == key:
                raise UniqueViolation(f'could not create unique index "{index.name}"',
                                      detail=f"{describe_key(index, decode(index, key))} is duplicated.")
    entries.sort()
    tree_of(ctx.store, table, index).build(entries)
