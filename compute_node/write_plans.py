"""INSERT, UPDATE and DELETE: MVCC row versions with their primary-key entries.

Invariants: UPDATE and DELETE collect their target rows before changing any, so a statement never
sees its own new row versions; a row's heap tuple, its old version's xmax and its index entry
change in one MTR; every check that can fail (types, NOT NULL, duplicate key, a row another open
transaction changed) runs before that MTR, so a failed row leaves nothing behind.
"""

from __future__ import annotations

from sqlglot import exp

from aurora_db.errors import (
    DuplicateColumn,
    FeatureNotSupported,
    NotNullViolation,
    ProgramLimitExceeded,
    SerializationFailure,
    SyntaxError_,
    UndefinedColumn,
    UniqueViolation,
)
from aurora_db import pages
from aurora_db.pages import XID_ABORTED, XID_COMMITTED
from compute_node import sql_types as t
from compute_node.backend import Result
from compute_node.btree import BTree
from compute_node.catalog import PRIMARY_KEY_INDEX, TableDef
from compute_node.expressions import Scope, compile_expr
from compute_node.heap import Heap
from compute_node.sources import Context, Plan, TableSource, key_lookup, resolve_source


def _pkey_name(table: TableDef) -> str:
    return f"{table.name}_pkey"


def check_row(table: TableDef, values: list) -> None:
    for column, value in zip(table.columns, values):
        if value is None and (column.not_null or column.name in table.primary_key):
            raise NotNullViolation(
                f'null value in column "{column.name}" of relation "{table.name}" violates not-null constraint')


def check_writable(ctx: Context, tid, xmax: int) -> bool:
    """May this transaction set xmax on the tuple? False: it already deleted it itself."""
    if xmax == 0:
        return True
    if xmax == ctx.xid:
        return False
    status = ctx.transactions.status(xmax)
    if status == XID_ABORTED:
        return True
    if status == XID_COMMITTED:
        raise SerializationFailure("could not serialize access due to concurrent update")
    raise SerializationFailure("could not serialize access: the row is being changed by a concurrent transaction")


def check_unique(ctx: Context, table: TableDef, tree: BTree, heap: Heap, key: tuple) -> None:
    for tid in tree.lookup(key):
        xmin, xmax, _ = heap.fetch(tid)
        if xmin != ctx.xid:
            status = ctx.transactions.status(xmin)
            if status == XID_ABORTED:
                continue
            if status != XID_COMMITTED:
                raise SerializationFailure(
                    f'could not insert key into "{_pkey_name(table)}": a concurrent transaction holds it')
        if xmax == ctx.xid:
            continue
        if xmax:
            status = ctx.transactions.status(xmax)
            if status == XID_COMMITTED:
                continue
            if status != XID_ABORTED:
                raise SerializationFailure(
                    f'could not insert key into "{_pkey_name(table)}": a concurrent transaction is deleting it')
        shown = ", ".join(t.to_text(v) for v in key)
        raise UniqueViolation(f'duplicate key value violates unique constraint "{_pkey_name(table)}"',
                              detail=f"Key ({', '.join(table.primary_key)})=({shown}) already exists.")


def check_sizes(table: TableDef, values: list) -> None:
    """A row must fit a heap page and its key a B-tree node (no out-of-line storage yet)."""
    size = pages.tuple_bytes(values)
    if size > pages.ROW_BYTES_MAX:
        raise ProgramLimitExceeded(f"row is too big: size {size}, maximum size {pages.ROW_BYTES_MAX}")
    if table.primary_key:
        key_size = pages.key_bytes(tuple(values[i] for i in table.primary_key_indexes))
        if key_size > pages.KEY_BYTES_MAX:
            raise ProgramLimitExceeded(f'index row size {key_size} exceeds maximum {pages.KEY_BYTES_MAX} '
                                       f'for index "{_pkey_name(table)}"')


def write_row(ctx: Context, table: TableDef, values: list, old_tid=None) -> tuple:
    """Insert one row version (and, for an UPDATE, end the old one) with its index entry, in one MTR."""
    check_sizes(table, values)
    store = ctx.store
    xid = ctx.ensure_xid()
    heap = Heap(store, table.table_page_id)
    tree = None
    key = None
    if table.primary_key:
        tree = BTree(store, store.get(table.table_page_id).values["indexes"][PRIMARY_KEY_INDEX])
        key = tuple(values[i] for i in table.primary_key_indexes)
    target = heap.prepare_insert(values)
    path = tree.prepare_insert(key) if tree else []
    old_page = [old_tid[0]] if old_tid is not None else []
    with store.mtr(*heap.pages_for_insert(), *path, *old_page):
        if old_tid is not None:
            store.log(old_tid[0], "heap_set_xmax", old_tid[1], xid)
        tid = heap.insert(values, xid, target)
        if tree:
            tree.insert(key, tid, path)
    return tid


class InsertPlan(Plan):
    writes = True

    def __init__(self, insert: exp.Insert, tables, param_types):
        target = insert.this
        table_node = target.this if isinstance(target, exp.Schema) else target
        if not isinstance(table_node, exp.Table):
            raise FeatureNotSupported("INSERT target must be a table")
        source = resolve_source(table_node, tables)
        if not isinstance(source, TableSource):
            raise FeatureNotSupported("cannot insert into a system view")
        self.table = table = source.table
        self.tables = {table.name: table.tid}
        if insert.args.get("returning"):
            raise FeatureNotSupported("RETURNING is not supported yet")
        if insert.args.get("conflict"):
            raise FeatureNotSupported("ON CONFLICT is not supported yet")
        if isinstance(target, exp.Schema) and target.expressions:
            names = [identifier.name for identifier in target.expressions]
        else:
            names = [c.name for c in table.columns]
        positions = []
        for name in names:
            index = table.column_index(name)
            if index is None:
                raise UndefinedColumn(f'column "{name}" of relation "{table.name}" does not exist')
            if index in positions:
                raise DuplicateColumn(f'column "{name}" specified more than once')
            positions.append(index)
        values = insert.expression
        if not isinstance(values, exp.Values):
            raise FeatureNotSupported("INSERT ... SELECT is not supported yet")
        scope = Scope([], param_types)
        self.rows = []
        for row in values.expressions:
            items = row.expressions if isinstance(row, exp.Tuple) else [row]
            if len(items) > len(positions):
                raise SyntaxError_("INSERT has more expressions than target columns")
            if len(items) < len(positions) and isinstance(target, exp.Schema) and target.expressions:
                raise SyntaxError_("INSERT has more target columns than expressions")
            compiled = []
            for position, item in zip(positions, items):
                column = table.columns[position]
                if isinstance(item, exp.Var) and item.name.upper() == "DEFAULT":
                    continue
                fn, type_name = compile_expr(item, scope, column.type_name)
                compiled.append((position, fn, type_name, column))
            self.rows.append(compiled)

    def run(self, ctx: Context) -> Result:
        table = self.table
        heap = Heap(ctx.store, table.table_page_id)
        count = 0
        for compiled in self.rows:
            values = [None] * len(table.columns)
            for position, fn, type_name, column in compiled:
                values[position] = t.assign(fn([], ctx.params), type_name, column.type_name, column.type_modifier)
            check_row(table, values)
            if table.primary_key:
                tree = BTree(ctx.store, ctx.store.get(table.table_page_id).values["indexes"][PRIMARY_KEY_INDEX])
                check_unique(ctx, table, tree, heap, tuple(values[i] for i in table.primary_key_indexes))
            write_row(ctx, table, values)
            count += 1
        return Result(f"INSERT 0 {count}")


class _TargetedPlan(Plan):
    """UPDATE and DELETE: find the target rows first, then change them."""

    writes = True

    def _bind_target(self, node, where, tables, param_types):
        source = resolve_source(node, tables)
        if not isinstance(source, TableSource):
            raise FeatureNotSupported("cannot change a system view")
        self.source = source
        self.table = source.table
        self.tables = {self.table.name: self.table.tid}
        self.scope = Scope(source.scope_columns(), param_types)
        self.where_fn = compile_expr(where.this, self.scope, "bool")[0] if where is not None else None
        self.key_fns = key_lookup(where.this, source, self.scope) if where is not None else None

    def targets(self, ctx):
        params = ctx.params
        return [(tid, values) for tid, values in self.source.rows(ctx, self.key_fns)
                if self.where_fn is None or self.where_fn(values, params) is True]


class UpdatePlan(_TargetedPlan):
    def __init__(self, update: exp.Update, tables, param_types):
        for unsupported in ("from_", "from", "returning", "joins"):
            if update.args.get(unsupported):
                raise FeatureNotSupported(f"UPDATE with {unsupported.rstrip('_').upper()} is not supported yet")
        self._bind_target(update.this, update.args.get("where"), tables, param_types)
        self.assignments = []
        for assignment in update.expressions:
            column_node = assignment.this
            index = self.table.column_index(column_node.name)
            if index is None:
                raise UndefinedColumn(f'column "{column_node.name}" of relation "{self.table.name}" does not exist')
            column = self.table.columns[index]
            fn, type_name = compile_expr(assignment.expression, self.scope, column.type_name)
            self.assignments.append((index, fn, type_name, column))

    def run(self, ctx: Context) -> Result:
        table = self.table
        heap = Heap(ctx.store, table.table_page_id)
        key_indexes = table.primary_key_indexes
        count = 0
        for tid, values in self.targets(ctx):
            new_values = list(values)
            for index, fn, type_name, column in self.assignments:
                new_values[index] = t.assign(fn(values, ctx.params), type_name, column.type_name, column.type_modifier)
            check_row(table, new_values)
            ctx.ensure_xid()
            if not check_writable(ctx, tid, heap.fetch(tid)[1]):
                continue
            if key_indexes and any(new_values[i] != values[i] for i in key_indexes):
                tree = BTree(ctx.store, ctx.store.get(table.table_page_id).values["indexes"][PRIMARY_KEY_INDEX])
                check_unique(ctx, table, tree, heap, tuple(new_values[i] for i in key_indexes))
            write_row(ctx, table, new_values, old_tid=tid)
            count += 1
        return Result(f"UPDATE {count}")


class DeletePlan(_TargetedPlan):
    def __init__(self, delete: exp.Delete, tables, param_types):
        if delete.args.get("using") or delete.args.get("returning"):
            raise FeatureNotSupported("DELETE with USING or RETURNING is not supported yet")
        self._bind_target(delete.this, delete.args.get("where"), tables, param_types)

    def run(self, ctx: Context) -> Result:
        heap = Heap(ctx.store, self.table.table_page_id)
        count = 0
        for tid, _ in self.targets(ctx):
            xid = ctx.ensure_xid()
            if not check_writable(ctx, tid, heap.fetch(tid)[1]):
                continue
            with ctx.store.mtr(tid[0]):
                ctx.store.log(tid[0], "heap_set_xmax", tid[1], xid)
            count += 1
        return Result(f"DELETE {count}")
