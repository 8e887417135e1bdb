"""The catalog: table and view definitions stored as MVCC rows of a system table, in pages like any
table.

DESIGN.md 8: "The catalog lives in pages like any table." Its rows are
[name, table_page_id, columns, primary_key, indexes, oid], and a view's row has a seventh field
[query SQL, oids of the relations it reads]. Rows are read through snapshots, so CREATE, DROP,
CREATE INDEX, TRUNCATE, ALTER TABLE and CREATE [OR REPLACE] VIEW are transactional: each writes a
new row version of the relation (its old version gets xmax), and a plan made from an old version
is remade.
Invariants: at most one visible row per relation name in any snapshot (tables and views share one
namespace); a table's oid is stable for its life (its first root page id; TRUNCATE and table
rewrites move the table to a new root page); a view has no pages (table_page_id 0) and its oid is
a page id allocated for it alone; an index's root page id never changes, and a table's primary-key
root is also named in its root page under "indexes" (what compute_node/sources.py reads); rows
written before this format (four fields) decode with no secondary indexes.
"""

from __future__ import annotations

import dataclasses
import types
from typing import Mapping

from aurora_db import pages
from aurora_db.errors import DuplicateTable, ProgramLimitExceeded, SerializationFailure, UndefinedTable
from aurora_db.pages import XID_IN_PROGRESS
from compute_node.heap import Heap
from compute_node.page_store import META_PAGE, PageStore
from compute_node.sequences import Sequences
from compute_node.transactions import BOOTSTRAP_XID, Snapshot, Transactions

PRIMARY_KEY_INDEX = "pkey"
INDEXES_PER_TABLE_MAX = 16  # every row version gets an entry in each, inside one MTR
WRITERS_TRACKED_PER_TABLE_MAX = 64  # past this, finished writers are pruned from the set


@dataclasses.dataclass(frozen=True, slots=True)
class ColumnDef:
    name: str
    type_name: str  # int2 int4 int8 float4 float8 bool text varchar
    type_modifier: int  # varchar(n): n; otherwise -1
    not_null: bool
    default: str | None = None  # the DEFAULT expression as SQL text (postgres dialect)
    identity: str | None = None  # "always" or "by default": GENERATED ... AS IDENTITY
    sequence: int = 0  # page id of the sequence behind SERIAL or an identity column, 0 if none


@dataclasses.dataclass(frozen=True, slots=True)
class IndexDef:
    name: str
    columns: tuple[str, ...]
    unique: bool
    root_page_id: int  # 0: a primary key of an old-format row, named in the table's root page
    primary: bool = False
    constraint: bool = False  # made by a PRIMARY KEY or UNIQUE constraint (DROP INDEX refuses it)


@dataclasses.dataclass(frozen=True, slots=True)
class TableDef:
    name: str
    table_page_id: int
    columns: tuple[ColumnDef, ...]
    primary_key: tuple[str, ...]
    tid: tuple[int, int]  # where the catalog row lives
    indexes: tuple[IndexDef, ...] = ()  # the primary key's first, if any
    relation_oid: int = 0
    query: str | None = None  # a view's SELECT (postgres dialect, `*` expanded); None for a table
    depends_on: tuple[int, ...] = ()  # a view: oids of the tables and views its query reads

    @property
    def oid(self) -> int:
        return self.relation_oid or self.table_page_id

    @property
    def is_view(self) -> bool:
        return self.query is not None

    def column_index(self, name: str) -> int | None:
        for index, column in enumerate(self.columns):
            if column.name == name:
                return index
        return None

    @property
    def primary_key_indexes(self) -> tuple[int, ...]:
        return tuple(self.column_index(name) for name in self.primary_key)

    @property
    def primary_index(self) -> IndexDef | None:
        return self.indexes[0] if self.indexes and self.indexes[0].primary else None

    @property
    def indexed_positions(self) -> tuple[int, ...]:
        """The positions of the columns some index holds: an UPDATE that changes none is HOT-eligible."""
        return tuple({self.column_index(name) for index in self.indexes for name in index.columns})

    def index(self, name: str) -> IndexDef | None:
        return next((index for index in self.indexes if index.name == name), None)

    def values(self) -> list:
        """The catalog row for this definition."""
        row = [self.name, self.table_page_id, [list(dataclasses.astuple(c)) for c in self.columns],
               list(self.primary_key), [[i.name, list(i.columns), i.unique, i.root_page_id, i.primary, i.constraint]
                                        for i in self.indexes], self.oid]
        if self.is_view:
            row.append([self.query, list(self.depends_on)])
        return row


def _checked_row(table: TableDef) -> list:
    values = table.values()
    size = pages.tuple_bytes(values)
    if size > pages.ROW_BYTES_MAX:
        kind = "view" if table.is_view else "table"
        raise ProgramLimitExceeded(f'the definition of {kind} "{table.name}" is too big: {size} bytes, '
                                   f"maximum {pages.ROW_BYTES_MAX}")
    return values


def decode_row(tid, values) -> TableDef:
    name, table_page_id, columns, primary_key = values[:4]
    if len(values) > 4:
        indexes = tuple(IndexDef(n, tuple(c), u, r, p, k) for n, c, u, r, p, k in values[4])
        oid = values[5]
    else:
        indexes = (IndexDef(f"{name}_pkey", tuple(primary_key), True, 0, True, True),) if primary_key else ()
        oid = table_page_id
    query, depends_on = values[6] if len(values) > 6 else (None, ())
    return TableDef(name, table_page_id, tuple(ColumnDef(*c) for c in columns), tuple(primary_key), tuple(tid),
                    indexes, oid, query, tuple(depends_on))


@dataclasses.dataclass(frozen=True, slots=True)
class _CatalogRows:
    """The catalog's row versions as (xmin, xmax, definition), read at the given page LSNs."""

    page_lsns: list[int]
    versions: tuple[tuple[int, int, TableDef], ...]


@dataclasses.dataclass(frozen=True, slots=True)
class _Settled:
    """What every snapshot sees of `rows` once the transactions that wrote them (`xids`) have all
    ended: a snapshot that began after them all sees `tables`, whatever its own transaction."""

    rows: _CatalogRows
    xids: frozenset[int]
    newest_xid: int
    tables: Mapping[str, TableDef]

    def fits(self, snapshot: Snapshot) -> bool:
        return self.newest_xid < snapshot.xmax and snapshot.active.isdisjoint(self.xids)


class Catalog:
    def __init__(self, store: PageStore, transactions: Transactions):
        self.store = store
        self.transactions = transactions
        self._decoded: dict[tuple, TableDef] = {}
        self._rows: _CatalogRows | None = None
        self._settled: _Settled | None = None
        self._writers: dict[int, set[int]] = {}  # table oid -> transactions that wrote its rows
        self.sequences = Sequences(store)

    @property
    def heap(self) -> Heap:
        return Heap(self.store, self.store.get(META_PAGE).values["catalog_table"])

    def log_bootstrap(self) -> None:
        """Inside the bootstrap MTR: the catalog's own table."""
        table_page_id = Heap.create(self.store)
        self.store.log(META_PAGE, "meta_set", "catalog_table", table_page_id)

    def tables(self, snapshot: Snapshot, xid: int | None) -> Mapping[str, TableDef]:
        """Every relation with a catalog row (tables and views) visible to the snapshot, by name
        (read-only: the same mapping may be handed to many statements).

        Every statement asks, so the answer is remembered while it cannot change: the catalog's
        pages are at the same LSNs, and every transaction that wrote a catalog row has ended and
        is settled for the snapshot (below its xmax and not in its active set)."""
        rows = self._current_rows()
        settled = self._settled
        if settled is not None and settled.rows is rows and settled.fits(snapshot):
            return settled.tables
        visible = {}
        for xmin, xmax, table in rows.versions:
            if self.transactions.visible(xmin, xmax, snapshot, xid):
                visible[table.name] = table
        tables = types.MappingProxyType(visible)
        xids = frozenset(x for xmin, xmax, _ in rows.versions for x in (xmin, xmax) if x)
        settled = _Settled(rows, xids, max(xids, default=0), tables)
        if settled.fits(snapshot) and all(self.transactions.status(x) != XID_IN_PROGRESS for x in xids):
            self._settled = settled
        return tables

    def forget(self) -> None:
        """Drop everything remembered of the catalog's pages (a reader starting again elsewhere)."""
        self._rows = self._settled = None
        self._decoded = {}

    def _current_rows(self) -> _CatalogRows:
        """Every catalog row version, decoded; rebuilt only when a catalog page's LSN moved."""
        store = self.store
        page_id = store.get(store.get(META_PAGE).values["catalog_table"]).values["first_heap"]
        lsns = []
        while page_id:
            page = store.get(page_id)
            lsns.append(page.lsn)
            page_id = page.next_page
        rows = self._rows
        if rows is None or rows.page_lsns != lsns:
            versions = tuple((xmin, xmax, self._decode_cached(tid, values))
                             for tid, (xmin, xmax, values) in self.heap.scan())
            self._decoded = {table.tid: table for _, _, table in versions}  # forget rows no longer there
            rows = self._rows = _CatalogRows(lsns, versions)
        return rows

    def _decode_cached(self, tid, values) -> TableDef:
        table = self._decoded.get(tid)
        if table is None:
            table = self._decoded[tid] = decode_row(tid, values)
        return table

    def get(self, name: str, snapshot: Snapshot, xid: int | None) -> TableDef:
        table = self.tables(snapshot, xid).get(name)
        if table is None:
            raise UndefinedTable(f'relation "{name}" does not exist')
        return table

    def find_index(self, name: str, snapshot: Snapshot, xid: int | None) -> tuple[TableDef, IndexDef] | None:
        for table in self.tables(snapshot, xid).values():
            index = table.index(name)
            if index is not None:
                return table, index
        return None

    def check_relation_name_free(self, name: str, snapshot: Snapshot, xid: int) -> None:
        """Tables and indexes share one namespace, as PostgreSQL's relations do."""
        if self.find_index(name, snapshot, xid) is not None:
            raise DuplicateTable(f'relation "{name}" already exists')
        self._check_name_free(name, snapshot, xid)

    def create(self, table: TableDef, snapshot: Snapshot, xid: int) -> TableDef:
        """Insert the catalog row of a table whose pages are made already (see make_pages)."""
        self.check_relation_name_free(table.name, snapshot, xid)
        for index in table.indexes:
            self.check_relation_name_free(index.name, snapshot, xid)
        heap = self.heap
        values = _checked_row(table)
        row_target = heap.prepare_insert(values)
        with self.store.mtr(*heap.pages_for_insert()):
            tid = heap.insert(values, xid, row_target)
        return decode_row(tid, values)

    def make_pages(self, primary_key: bool) -> tuple[int, int]:
        """One MTR: a table root page, its first heap page and, if asked, its primary-key root.
        Returns (table_page_id, primary key root or 0). Pages of a transaction that aborts are
        unreachable garbage, never visible."""
        from compute_node.btree import BTree
        with self.store.mtr(META_PAGE):
            table_page_id = Heap.create(self.store)
            root = 0
            if primary_key:
                root = BTree.create(self.store)
                self.store.log(table_page_id, "table_set", "indexes", {PRIMARY_KEY_INDEX: root})
        return table_page_id, root

    def new_oid(self) -> int:
        """An object id for a relation without pages (a view): a page id that no page will use."""
        with self.store.mtr(META_PAGE):
            return self.store.allocate_page()

    def dependent_views(self, oids, snapshot: Snapshot, xid: int | None) -> list[TableDef]:
        """The visible views, other than those of `oids`, that read a relation of `oids` directly or
        through other views. Raises 40001 if a concurrent open transaction is creating a view that
        reads one of them (PostgreSQL would wait for its lock)."""
        visible, pending = [], []
        for tid, (xmin, xmax, values) in self.heap.scan():
            if len(values) <= 6:
                continue
            if self.transactions.visible(xmin, xmax, snapshot, xid):
                visible.append(self._decode_cached(tid, values))
            elif xmin != xid and xmin in self.transactions.active:
                pending.append(self._decode_cached(tid, values))
        reached = set(oids)
        found = []
        while True:
            more = [view for view in visible if view.oid not in reached and reached.intersection(view.depends_on)]
            if not more:
                break
            found += more
            reached.update(view.oid for view in more)
        for view in pending:
            if reached.intersection(view.depends_on):
                raise SerializationFailure(f'view "{view.name}" is being created by a concurrent transaction')
        return found

    def replace(self, old: TableDef, new: TableDef, xid: int) -> TableDef:
        """A new version of a table's catalog row, in one MTR with the old version's xmax.
        The caller checked that the old row is writable (check_writable)."""
        heap = self.heap
        values = _checked_row(new)
        row_target = heap.prepare_insert(values)
        with self.store.mtr(*heap.pages_for_insert(), old.tid[0]):
            self.store.log(old.tid[0], "heap_set_xmax", old.tid[1], xid)
            tid = heap.insert(values, xid, row_target)
        return decode_row(tid, values)

    def drop(self, table: TableDef, xid: int) -> None:
        self.heap.set_xmax(table.tid, xid)

    # --- which transactions wrote a table (for DDL that must not race open writers) ----------

    def note_writer(self, table: TableDef, xid: int) -> None:
        writers = self._writers.setdefault(table.oid, set())
        if xid in writers:
            return
        if len(writers) >= WRITERS_TRACKED_PER_TABLE_MAX:
            writers.intersection_update(self._open(writers))
        writers.add(xid)

    def other_open_writers(self, table: TableDef, xid: int | None) -> list[int]:
        """Transactions other than `xid` that changed rows of the table and have not ended."""
        writers = self._writers.get(table.oid)
        if not writers:
            return []
        open_ = self._open(writers)
        writers.intersection_update(open_)
        return [w for w in open_ if w != xid]

    def _open(self, xids) -> set[int]:
        return {x for x in xids if self.transactions.status(x) == XID_IN_PROGRESS}

    def _check_name_free(self, name: str, snapshot: Snapshot, xid: int) -> None:
        for tid, (xmin, xmax, values) in self.heap.scan():
            if values[0] != name:
                continue
            if self.transactions.visible(xmin, xmax, snapshot, xid):
                raise DuplicateTable(f'relation "{name}" already exists')
            if xmin != xid and xmin != BOOTSTRAP_XID and xmin in self.transactions.active:
                raise SerializationFailure(f'relation "{name}" is being created by a concurrent transaction')
