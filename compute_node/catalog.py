"""The catalog: table definitions stored as MVCC rows of a system table, in pages like any table.

DESIGN.md 8: "The catalog lives in pages like any table." Its rows are
[name, table_page_id, columns, primary_key] and are read through snapshots, so CREATE and DROP
are transactional. Invariants: at most one visible row per table name in any snapshot; a table's
oid is its root page id, stable for its life.
"""

from __future__ import annotations

import dataclasses

from aurora_db.errors import DuplicateTable, SerializationFailure, UndefinedTable
from compute_node.heap import Heap
from compute_node.page_store import META_PAGE, PageStore
from compute_node.transactions import BOOTSTRAP_XID, Snapshot, Transactions

PRIMARY_KEY_INDEX = "pkey"


@dataclasses.dataclass(frozen=True, slots=True)
class ColumnDef:
    name: str
    type_name: str  # int2 int4 int8 float4 float8 bool text varchar
    type_modifier: int  # varchar(n): n; otherwise -1
    not_null: bool


@dataclasses.dataclass(frozen=True, slots=True)
class TableDef:
    name: str
    table_page_id: int
    columns: tuple[ColumnDef, ...]
    primary_key: tuple[str, ...]
    tid: tuple[int, int]  # where the catalog row lives

    @property
    def oid(self) -> int:
        return self.table_page_id

    def column_index(self, name: str) -> int | None:
        for index, column in enumerate(self.columns):
            if column.name == name:
                return index
        return None

    @property
    def primary_key_indexes(self) -> tuple[int, ...]:
        return tuple(self.column_index(name) for name in self.primary_key)


def _decode(tid, values) -> TableDef:
    name, table_page_id, columns, primary_key = values
    return TableDef(name, table_page_id, tuple(ColumnDef(*c) for c in columns), tuple(primary_key), tuple(tid))


class Catalog:
    def __init__(self, store: PageStore, transactions: Transactions):
        self.store = store
        self.transactions = transactions
        self._decoded: dict[tuple, TableDef] = {}

    @property
    def heap(self) -> Heap:
        return Heap(self.store, self.store.get(META_PAGE).values["catalog_table"])

    def log_bootstrap(self) -> None:
        """Inside the bootstrap MTR: the catalog's own table."""
        table_page_id = Heap.create(self.store)
        self.store.log(META_PAGE, "meta_set", "catalog_table", table_page_id)

    def tables(self, snapshot: Snapshot, xid: int | None) -> dict[str, TableDef]:
        visible = {}
        for tid, (xmin, xmax, values) in self.heap.scan():
            if self.transactions.visible(xmin, xmax, snapshot, xid):
                table = self._decoded.get(tid)
                if table is None:
                    table = self._decoded[tid] = _decode(tid, values)
                visible[table.name] = table
        return visible

    def get(self, name: str, snapshot: Snapshot, xid: int | None) -> TableDef:
        table = self.tables(snapshot, xid).get(name)
        if table is None:
            raise UndefinedTable(f'relation "{name}" does not exist')
        return table

    def create(self, name: str, columns: list[ColumnDef], primary_key: list[str], snapshot: Snapshot, xid: int) -> TableDef:
        self._check_name_free(name, snapshot, xid)
        heap = self.heap
        # The table's pages first, then its catalog row; each its own MTR. Pages of a table whose
        # transaction aborts are unreachable garbage, never visible.
        with self.store.mtr(META_PAGE):
            table_page_id = Heap.create(self.store)
            if primary_key:
                from compute_node.btree import BTree
                root = BTree.create(self.store)
                self.store.log(table_page_id, "table_set", "indexes", {PRIMARY_KEY_INDEX: root})
        values = [name, table_page_id, [list(dataclasses.astuple(c)) for c in columns], list(primary_key)]
        row_target = heap.prepare_insert(values)
        with self.store.mtr(*heap.pages_for_insert()):
            tid = heap.insert(values, xid, row_target)
        return _decode(tid, values)

    def drop(self, table: TableDef, xid: int) -> None:
        self.heap.set_xmax(table.tid, xid)

    def _check_name_free(self, name: str, snapshot: Snapshot, xid: int) -> None:
        for tid, (xmin, xmax, values) in self.heap.scan():
            if values[0] != name:
                continue
            if self.transactions.visible(xmin, xmax, snapshot, xid):
                raise DuplicateTable(f'relation "{name}" already exists')
            if xmin != xid and xmin != BOOTSTRAP_XID and xmin in self.transactions.active:
                raise SerializationFailure(f'relation "{name}" is being created by a concurrent transaction')
