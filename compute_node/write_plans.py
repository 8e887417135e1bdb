"""INSERT, UPDATE and DELETE: MVCC row versions with their entries in every index of the table.

Invariants: UPDATE and DELETE collect their target rows before changing any, and INSERT ... SELECT
materializes its rows before inserting any, so a statement never sees its own new row versions;
a row's heap tuple, its old version's xmax and its entries in every index change in one MTR
(DESIGN.md 2); every check that can fail (types, NOT NULL, identity, duplicate key, a row another
open transaction changed, a table another open transaction is altering, record and key sizes)
runs before that MTR, so a failed row leaves nothing behind. DEFAULT expressions and sequence
values are computed when the row is made; RETURNING columns are known when the plan is made.
Row locks (PostgreSQL's): a row whose xmax an open transaction set, or a key an open transaction is
inserting or deleting, makes the statement undo its own changes (undo_statement: each as redo in
MTRs) and raise RowLockWait; the session waits for that transaction on the event loop and runs the
statement again (READ COMMITTED: with a fresh snapshot). Under REPEATABLE READ a row changed by a
transaction that committed after the snapshot fails with 40001.
"""

from __future__ import annotations

import functools

import sqlglot
from sqlglot import exp

from aurora_db import pages
from aurora_db.errors import (
    DatabaseError,
    DuplicateColumn,
    FeatureNotSupported,
    NotNullViolation,
    ProgramLimitExceeded,
    SerializationFailure,
    SyntaxError_,
    UndefinedColumn,
)
from aurora_db.pages import XID_ABORTED, XID_COMMITTED, XID_IN_PROGRESS
from compute_node import indexes as ix
from compute_node import sql_types as t
from compute_node.backend import Column, Result
from compute_node.btree import BTree
from compute_node.catalog import ColumnDef, TableDef
from compute_node.expressions import Scope, compile_expr
from compute_node.heap import Heap
from compute_node.page_store import MTR_RECORDS_MAX
from compute_node.index_scans import choose_index
from compute_node.sources import Context, Plan, TableSource, output_name, resolve_source
from compute_node.subqueries import Runtime
from compute_node.transactions import SNAPSHOT_PER_TRANSACTION, RowLockWait

PAGE_ROWS_MAX = pages.PAGE_BYTES_MAX // pages.TUPLE_OVERHEAD_BYTES  # more rows than a heap page can hold
HEAP_INSERT_RECORDS_MAX = 5  # a new heap page: allocation, init, link, table root, then the tuple
DEFAULT_PARSE_CACHE_MAX = 256
UNDO_RECORDS_PER_MTR = 16  # statement undo: few pages pinned at once, even with a small buffer cache
assert UNDO_RECORDS_PER_MTR <= MTR_RECORDS_MAX


class GeneratedAlways(DatabaseError):
    sqlstate = "428C9"


def check_row(table: TableDef, values: list) -> None:
    for column, value in zip(table.columns, values):
        if value is None and (column.not_null or column.name in table.primary_key):
            raise NotNullViolation(
                f'null value in column "{column.name}" of relation "{table.name}" violates not-null constraint',
                detail=f"Failing row contains ({', '.join('null' if v is None else t.to_text(v) for v in values)}).")


def check_writable(ctx: Context, tid, xmax: int) -> bool:
    """DDL on a catalog row: may this transaction set xmax on it? False: it already deleted it itself.
    (Table rows take row locks with lock_row instead; DDL still fails with 40001 rather than wait.)"""
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


def repeatable_read(ctx: Context) -> bool:
    return (ctx.settings or {}).get("transaction_isolation", "read committed") in SNAPSHOT_PER_TRANSACTION


def lock_row(ctx: Context, xmax: int) -> bool:
    """May this statement set xmax on a row version its snapshot sees (`xmax`: its current one)?
    False: this transaction already deleted it. Raises RowLockWait while another transaction holds
    the row; once that one committed, READ COMMITTED runs the statement again (RowLockWait, the wait
    ends at once) on the newest version, and REPEATABLE READ fails with 40001."""
    if xmax == 0:
        return True
    if xmax == ctx.xid:
        return False
    status = ctx.transactions.status(xmax)
    if status == XID_ABORTED:
        return True
    if status == XID_COMMITTED and repeatable_read(ctx):
        raise SerializationFailure("could not serialize access due to concurrent update")
    raise RowLockWait(xmax)


def note_undo(ctx: Context, tid, old_xmax: int | None) -> None:
    """Remember one change of the running statement: a tuple it inserted (old_xmax None) or an
    xmax it set over `old_xmax`."""
    undo = getattr(ctx.session, "statement_undo", None)
    if undo is not None:
        undo.append((tid, old_xmax))


def undo_statement(store, undo: list) -> None:
    """Make the running statement's changes as if never made, for its own transaction and all
    others: an xmax it set gets its old value back, and a tuple it inserted goes at once (no
    snapshot ever saw it): a HOT successor's slot is freed, with the link to it, and a tuple that
    index entries name becomes a dead stub, which readers skip and VACUUM frees. So the statement,
    run again (the engine gives up a statement that meets a row lock or outgrows its inline turn),
    finds the room it had."""
    changes = list(reversed(undo))
    undo.clear()
    for start in range(0, len(changes), UNDO_RECORDS_PER_MTR):
        batch = changes[start:start + UNDO_RECORDS_PER_MTR]
        with store.mtr(*{tid[0] for tid, _ in batch}):
            for (page_id, slot), old_xmax in batch:
                if old_xmax is not None:
                    store.log(page_id, "heap_set_xmax", slot, old_xmax)
                elif slot in store.get(page_id).heap_only:
                    store.log(page_id, "heap_prune", [], [], [slot])
                else:
                    store.log(page_id, "heap_prune", [], [slot], [])


def check_table_writable(ctx: Context, table: TableDef) -> None:
    """Rows may change only while no other transaction is replacing the table's definition (CREATE
    INDEX, TRUNCATE, ALTER TABLE, DROP): PostgreSQL would wait for its lock; we fail with 40001."""
    xmax = ctx.catalog.heap.fetch(table.tid)[1]
    if xmax and xmax != ctx.xid and ctx.transactions.status(xmax) != XID_ABORTED:
        raise SerializationFailure(
            f'could not serialize access: relation "{table.name}" is being altered by a concurrent transaction')


def check_unique(ctx: Context, table: TableDef, row: list, old_row: list | None = None) -> None:
    """Every unique index, for a new row version (only the keys that changed, for an UPDATE)."""
    for index in table.indexes:
        if not index.unique:
            continue
        if old_row is not None and all(row[i] == old_row[i] for i in ix.column_positions(table, index)):
            continue
        _wait_for_key_holders(ctx, table, index, row)
        ix.check_unique(ctx, table, index, row)


def _wait_for_key_holders(ctx: Context, table: TableDef, index, row: list) -> None:
    """RowLockWait if another open transaction is inserting or deleting the key (PostgreSQL waits
    for it: its outcome decides between 23505 and success)."""
    values = [row[i] for i in ix.column_positions(table, index)]
    if any(value is None for value in values):
        return
    heap = Heap(ctx.store, table.table_page_id)
    key = ix.encode(index, values)
    status = ctx.transactions.status
    for xmin, xmax in ix.holders(heap, ix.tree_of(ctx.store, table, index).range(key, key)):
        for holder in (xmin, xmax):
            if holder and holder != ctx.xid and status(holder) == XID_IN_PROGRESS:
                raise RowLockWait(holder)


def check_sizes(table: TableDef, values: list) -> None:
    """A row must fit a heap page and its keys a B-tree node (no out-of-line storage yet)."""
    size = pages.tuple_bytes(values)
    if size > pages.ROW_BYTES_MAX:
        raise ProgramLimitExceeded(f"row is too big: size {size}, maximum size {pages.ROW_BYTES_MAX}")
    ix.check_key_sizes(table, values)


def write_row(ctx: Context, table: TableDef, values: list, old_tid=None, old_values: list | None = None) -> tuple:
    """Insert one row version (and, for an UPDATE, end the old one `old_tid`, whose values are
    `old_values`) with its entry in every index, in one MTR; or, for an UPDATE that changes no
    indexed column, a HOT update (heap.py) when the new version fits the old one's page, after
    pruning that page if it must."""
    check_sizes(table, values)
    if old_tid is not None and old_values is not None and _keys_unchanged(table, values, old_values):
        tid = _hot_update(ctx, table, values, old_tid)
        if tid is not None:
            return tid
    store = ctx.store
    xid = ctx.ensure_xid()
    heap = Heap(store, table.table_page_id)
    target = heap.prepare_insert(values, ctx.transactions.dead_to_all)
    entries = ix.prepare_entries(store, table, values)
    records = HEAP_INSERT_RECORDS_MAX + 1 + sum(BTree.insert_records_max(path) for _, _, path in entries)
    if records > MTR_RECORDS_MAX:
        raise ProgramLimitExceeded(f'a row of "{table.name}" and its index entries need up to {records} redo '
                                   f"records, more than the {MTR_RECORDS_MAX} of one MTR")
    old_page = [old_tid[0]] if old_tid is not None else []
    ctx.catalog.note_writer(table, xid)
    with store.mtr(*heap.pages_for_insert(target), *(p for _, _, path in entries for p in path), *old_page):
        if old_tid is not None:
            ended_page = store.get(old_tid[0])
            old_xmax, ended = ended_page.tuples[old_tid[1]][1], 1 + len(ended_page.heap_only)
            store.log(old_tid[0], "heap_set_xmax", old_tid[1], xid)
        tid = heap.insert(values, xid, target)
        ix.insert_entries(entries, tid)
    if old_tid is not None:
        heap.note_ended_versions(old_tid[0], ended)
        note_undo(ctx, old_tid, old_xmax)
    note_undo(ctx, tid, None)
    return tid


def write_rows(ctx: Context, table: TableDef, rows: list[list]) -> None:
    """Insert new rows (checked as write_row checks them) into a table without indexes, a page at
    a time: the rows that fit the last page, or a new one, in one MTR and one redo record
    (Heap.insert_many) instead of one each. COPY's bulk path: storage then holds, ships and
    coalesces some 60 times fewer records for a load like pgbench's."""
    assert not table.indexes, f'"{table.name}" has indexes: its rows need entries (write_row)'
    xid = ctx.ensure_xid()
    ctx.catalog.note_writer(table, xid)
    heap = Heap(ctx.store, table.table_page_id)
    done = 0
    while done < len(rows):
        with ctx.store.mtr(*heap.pages_for_insert(), records_max=HEAP_INSERT_RECORDS_MAX):
            tids = heap.insert_many(rows[done:done + PAGE_ROWS_MAX], xid)
        for tid in tids:
            note_undo(ctx, tid, None)
        done += len(tids)


def _keys_unchanged(table: TableDef, values: list, old_values: list) -> bool:
    return all(values[i] == old_values[i] for i in table.indexed_positions)


def _hot_update(ctx: Context, table: TableDef, values: list, old_tid) -> tuple | None:
    """The new version in the old one's page, linked from it, in one record; None if it does not
    fit there even after pruning the page."""
    store = ctx.store
    heap = Heap(store, table.table_page_id)
    slot = heap.hot_slot(old_tid, values)
    if slot is None:
        if not heap.prune(old_tid[0], ctx.transactions.dead_to_all()):
            return None
        slot = heap.hot_slot(old_tid, values)
        if slot is None:
            return None
    xid = ctx.ensure_xid()
    ctx.catalog.note_writer(table, xid)
    with store.mtr(old_tid[0]):
        old_xmax = store.get(old_tid[0]).tuples[old_tid[1]][1]
        tid = heap.hot_update(old_tid, xid, slot, values)
    note_undo(ctx, old_tid, old_xmax)
    note_undo(ctx, tid, None)
    return tid


# --- DEFAULT ----------------------------------------------------------------------------------


@functools.lru_cache(maxsize=DEFAULT_PARSE_CACHE_MAX)
def _parse_default(sql: str) -> exp.Expression:
    return sqlglot.parse_one(sql, read="postgres")


def column_positions(table: TableDef, names) -> list[int]:
    """Positions of a statement's target columns (INSERT, COPY): 42703 for one the table lacks,
    42701 for one named twice."""
    positions = []
    for name in names:
        index = table.column_index(name)
        if index is None:
            raise UndefinedColumn(f'column "{name}" of relation "{table.name}" does not exist')
        if index in positions:
            raise DuplicateColumn(f'column "{name}" specified more than once')
        positions.append(index)
    return positions


def compile_default(column: ColumnDef, param_types: list[str]):
    """fn(ctx) -> the column's default value, already of the column's type. It runs with the
    statement's context, so now() is the transaction's start, as in PostgreSQL."""
    if column.sequence:
        page_id = column.sequence
        return lambda ctx: t.assign(ctx.catalog.sequences.nextval(page_id), "int8", column.type_name,
                                    column.type_modifier)
    if column.default is None:
        return lambda ctx: None
    runtime = Runtime()
    fn, type_name = compile_expr(_parse_default(column.default), Scope([], param_types, runtime=runtime),
                                 column.type_name)

    def default(ctx):
        return runtime.run(ctx, lambda ctx: t.assign(fn([], ctx.params), type_name, column.type_name,
                                                     column.type_modifier))
    return default


def is_default_keyword(node) -> bool:
    if isinstance(node, exp.Var) and node.name.upper() == "DEFAULT":
        return True
    return isinstance(node, exp.Column) and not node.table and isinstance(node.this, exp.Identifier) \
        and not node.this.quoted and node.name.upper() == "DEFAULT"


def _generated_always(column: ColumnDef) -> GeneratedAlways:
    return GeneratedAlways(f'cannot insert a non-DEFAULT value into column "{column.name}"',
                           detail=f'Column "{column.name}" is an identity column defined as GENERATED ALWAYS.',
                           hint="Use OVERRIDING SYSTEM VALUE to override.")


def _writable_source(node: exp.Table, tables, verb: str) -> TableSource:
    """The table an INSERT, UPDATE or DELETE writes: never a view (0A000) or a system view."""
    relation = tables.get(node.name) if node.db in ("", "public") else None
    if relation is not None and relation.is_view:
        raise FeatureNotSupported(f'cannot {verb} view "{node.name}"',
                                  detail="Writes through views are not supported yet.")
    source = resolve_source(node, tables)
    if not isinstance(source, TableSource):
        raise FeatureNotSupported(f"cannot {verb} a system view")
    return source


# --- RETURNING --------------------------------------------------------------------------------


class _Returning:
    """RETURNING: expressions over the written row, with result columns known at plan time."""

    def __init__(self, node: exp.Returning, source: TableSource, scope: Scope):
        if node.args.get("into"):
            raise FeatureNotSupported("RETURNING INTO is not supported")
        table = source.table
        self.fns = []
        self.columns = []
        for item in node.expressions:
            if isinstance(item, exp.Star) or (isinstance(item, exp.Column) and isinstance(item.this, exp.Star)):
                for index, column in enumerate(table.columns):
                    self.fns.append(lambda row, params, index=index: row[index])
                    self.columns.append(Column(column.name, t.OIDS[column.type_name], table.oid, index + 1))
                continue
            inner = item.this if isinstance(item, exp.Alias) else item
            fn, type_name = compile_expr(inner, scope)
            type_name = "text" if type_name == "unknown" else type_name
            origin = (0, 0)
            if isinstance(inner, exp.Column) and table.column_index(inner.name) is not None:
                origin = (table.oid, table.column_index(inner.name) + 1)
            self.fns.append(fn)
            self.columns.append(Column(output_name(item), t.OIDS[type_name], *origin))

    def row(self, values, params) -> tuple:
        return tuple(fn(values, params) for fn in self.fns)


def _returning(node, source, param_types, runtime):
    returning = node.args.get("returning")
    if not returning:
        return None
    return _Returning(returning, source, Scope(source.scope_columns(), param_types, runtime=runtime))


# --- INSERT -----------------------------------------------------------------------------------


class InsertPlan(Plan):
    writes = True

    def __init__(self, insert: exp.Insert, tables, param_types):
        target = insert.this
        table_node = target.this if isinstance(target, exp.Schema) else target
        if not isinstance(table_node, exp.Table):
            raise FeatureNotSupported("INSERT target must be a table")
        source = _writable_source(table_node, tables, "insert into")
        self.table = table = source.table
        self.tables = {table.name: table.tid}
        if insert.args.get("conflict"):
            raise FeatureNotSupported("ON CONFLICT is not supported yet")
        explicit = isinstance(target, exp.Schema) and bool(target.expressions)
        names = [identifier.name for identifier in target.expressions] if explicit else [c.name for c in table.columns]
        positions = column_positions(table, names)
        self.defaults = [compile_default(column, param_types) for column in table.columns]
        self.runtime = Runtime()  # VALUES and RETURNING see the statement's context (now())
        self.returning = _returning(insert, source, param_types, self.runtime)
        self.columns = self.returning.columns if self.returning else None
        self.query = None
        self.rows = []
        values = insert.expression
        if insert.args.get("default") and values is None:
            self.rows.append([])
        elif isinstance(values, exp.Values):
            scope = Scope([], param_types, runtime=self.runtime)
            for row in values.expressions:
                items = row.expressions if isinstance(row, exp.Tuple) else [row]
                self.rows.append(self._compile_row(items, positions, explicit, scope))
        elif isinstance(values, exp.Expression):
            self._plan_query(values, positions, explicit, tables, param_types)
        else:
            raise FeatureNotSupported("this form of INSERT is not supported yet")

    def _check_count(self, count, positions, explicit):
        if count > len(positions):
            raise SyntaxError_("INSERT has more expressions than target columns")
        if count < len(positions) and explicit:
            raise SyntaxError_("INSERT has more target columns than expressions")

    def _compile_row(self, items, positions, explicit, scope):
        self._check_count(len(items), positions, explicit)
        compiled = []
        for position, item in zip(positions, items):
            column = self.table.columns[position]
            if is_default_keyword(item):
                continue
            if column.identity == "always":
                raise _generated_always(column)
            fn, type_name = compile_expr(item, scope, column.type_name)
            compiled.append((position, fn, type_name, column))
        return compiled

    def _plan_query(self, query, positions, explicit, tables, param_types):
        from compute_node.executor import plan_statement  # the executor imports this module
        self.query = plan_statement(query, tables, param_types)
        if self.query.columns is None:
            raise SyntaxError_("INSERT ... SELECT needs a query that returns rows")
        self._check_count(len(self.query.columns), positions, explicit)
        self.query_targets = []
        for position, column_out in zip(positions, self.query.columns):
            column = self.table.columns[position]
            if column.identity == "always":
                raise _generated_always(column)
            self.query_targets.append((position, t.NAMES_BY_OID.get(column_out.type_oid, "text"), column))
        self.tables = {**getattr(self.query, "tables", {}), **self.tables}

    def _rows(self, ctx: Context):
        """The new rows as full value lists, in column order (defaults filled in)."""
        if self.query is not None:
            result = self.query.run(ctx)
            for out in list(result.rows):  # materialized before the first insert
                values = [None] * len(self.table.columns)
                given = set()
                for (position, type_name, column), value in zip(self.query_targets, out):
                    values[position] = t.assign(value, type_name, column.type_name, column.type_modifier)
                    given.add(position)
                yield self._fill_defaults(ctx, values, given)
            return
        for compiled in self.rows:
            values = [None] * len(self.table.columns)
            given = set()
            for position, fn, type_name, column in compiled:
                values[position] = t.assign(fn([], ctx.params), type_name, column.type_name, column.type_modifier)
                given.add(position)
            yield self._fill_defaults(ctx, values, given)

    def _fill_defaults(self, ctx, values, given):
        for position, default in enumerate(self.defaults):
            if position not in given:
                values[position] = default(ctx)
        return values

    def run(self, ctx: Context) -> Result:
        return self.runtime.run(ctx, self._insert)

    def _insert(self, ctx: Context) -> Result:
        table = self.table
        check_table_writable(ctx, table)
        count = 0
        returned = []
        rows = self._rows(ctx)
        if self.query is not None:
            rows = list(rows)
        for values in rows:
            check_row(table, values)
            check_unique(ctx, table, values)
            write_row(ctx, table, values)
            count += 1
            if self.returning:
                returned.append(self.returning.row(values, ctx.params))
        return Result(f"INSERT 0 {count}", self.columns, returned)


# --- UPDATE and DELETE ------------------------------------------------------------------------


class _TargetedPlan(Plan):
    """UPDATE and DELETE: find the target rows first, then change them."""

    writes = True

    verb = ""

    def _bind_target(self, node, where, tables, param_types):
        source = _writable_source(node, tables, self.verb)
        self.source = source
        self.table = source.table
        self.tables = {self.table.name: self.table.tid}
        self.runtime = Runtime()  # WHERE, SET and RETURNING see the statement's context (now())
        self.scope = Scope(source.scope_columns(), param_types, runtime=self.runtime)
        self.where_fn = compile_expr(where.this, self.scope, "bool")[0] if where is not None else None
        self.access = choose_index(where.this, self.table, self.scope) if where is not None else None

    def targets(self, ctx):
        params = ctx.params
        return [(tid, values) for tid, values in self.source.rows(ctx, self.access)
                if self.where_fn is None or self.where_fn(values, params) is True]


class UpdatePlan(_TargetedPlan):
    verb = "update"

    def __init__(self, update: exp.Update, tables, param_types):
        for unsupported in ("from_", "from", "joins"):
            if update.args.get(unsupported):
                raise FeatureNotSupported(f"UPDATE with {unsupported.rstrip('_').upper()} is not supported yet")
        self._bind_target(update.this, update.args.get("where"), tables, param_types)
        self.assignments = []
        seen = set()
        for assignment in update.expressions:
            column_node = assignment.this
            index = self.table.column_index(column_node.name)
            if index is None:
                raise UndefinedColumn(f'column "{column_node.name}" of relation "{self.table.name}" does not exist')
            if index in seen:
                raise SyntaxError_(f'multiple assignments to same column "{column_node.name}"')
            seen.add(index)
            column = self.table.columns[index]
            if is_default_keyword(assignment.expression):
                default = compile_default(column, param_types)
                self.assignments.append((index, None, default, column))
                continue
            if column.identity == "always":
                raise GeneratedAlways(f'column "{column.name}" can only be updated to DEFAULT',
                                      detail=f'Column "{column.name}" is an identity column defined as GENERATED ALWAYS.')
            fn, type_name = compile_expr(assignment.expression, self.scope, column.type_name)
            self.assignments.append((index, fn, type_name, column))
        self.returning = _returning(update, self.source, param_types, self.runtime)
        self.columns = self.returning.columns if self.returning else None

    def run(self, ctx: Context) -> Result:
        return self.runtime.run(ctx, self._update)

    def _update(self, ctx: Context) -> Result:
        table = self.table
        check_table_writable(ctx, table)
        heap = Heap(ctx.store, table.table_page_id)
        count = 0
        returned = []
        for tid, values in self.targets(ctx):
            new_values = list(values)
            for index, fn, type_name, column in self.assignments:
                if fn is None:
                    new_values[index] = type_name(ctx)  # DEFAULT: the compiled default
                else:
                    new_values[index] = t.assign(fn(values, ctx.params), type_name, column.type_name,
                                                 column.type_modifier)
            check_row(table, new_values)
            ctx.ensure_xid()
            if not lock_row(ctx, heap.fetch(tid)[1]):
                continue
            check_unique(ctx, table, new_values, values)
            write_row(ctx, table, new_values, old_tid=tid, old_values=values)
            count += 1
            if self.returning:
                returned.append(self.returning.row(new_values, ctx.params))
        return Result(f"UPDATE {count}", self.columns, returned)


class DeletePlan(_TargetedPlan):
    verb = "delete from"

    def __init__(self, delete: exp.Delete, tables, param_types):
        if delete.args.get("using"):
            raise FeatureNotSupported("DELETE with USING is not supported yet")
        self._bind_target(delete.this, delete.args.get("where"), tables, param_types)
        self.returning = _returning(delete, self.source, param_types, self.runtime)
        self.columns = self.returning.columns if self.returning else None

    def run(self, ctx: Context) -> Result:
        return self.runtime.run(ctx, self._delete)

    def _delete(self, ctx: Context) -> Result:
        check_table_writable(ctx, self.table)
        heap = Heap(ctx.store, self.table.table_page_id)
        count = 0
        returned = []
        for tid, values in self.targets(ctx):
            xid = ctx.ensure_xid()
            old_xmax = heap.fetch(tid)[1]
            if not lock_row(ctx, old_xmax):
                continue
            ctx.catalog.note_writer(self.table, xid)
            with ctx.store.mtr(tid[0]):
                ended = 1 + len(ctx.store.get(tid[0]).heap_only)
                ctx.store.log(tid[0], "heap_set_xmax", tid[1], xid)
            heap.note_ended_versions(tid[0], ended)
            note_undo(ctx, tid, old_xmax)
            count += 1
            if self.returning:
                returned.append(self.returning.row(values, ctx.params))
        return Result(f"DELETE {count}", self.columns, returned)
