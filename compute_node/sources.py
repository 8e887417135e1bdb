"""What a plan reads from: a table (full scan or primary-key lookup), an information_schema view,
or nothing; the run-time Context; and the analysis helpers plans share.

Invariants: a source yields only rows visible to the statement's snapshot; a key lookup is chosen
only when WHERE pins every primary-key column to a value that does not depend on the row.
"""

from __future__ import annotations

import dataclasses
import decimal
from typing import Callable, Iterator

from sqlglot import exp

from aurora_db.errors import InvalidParameterValue, UndefinedTable
from compute_node import pg_catalog
from compute_node import sql_types as t
from compute_node.backend import Column, Result
from compute_node.btree import BTree
from compute_node.catalog import PRIMARY_KEY_INDEX, TableDef
from compute_node.expressions import Scope, ScopeColumn, compile_expr
from compute_node.heap import Heap


@dataclasses.dataclass
class Context:
    """What a plan runs against: the engine's parts, the statement's snapshot and parameters."""

    store: object
    transactions: object
    catalog: object
    snapshot: object
    session: object  # has .xid (None until the first write) and .ensure_xid()
    params: list
    settings: dict

    @property
    def xid(self) -> int | None:
        return self.session.xid

    def ensure_xid(self) -> int:
        return self.session.ensure_xid()

    def visible(self, xmin, xmax) -> bool:
        return self.transactions.visible(xmin, xmax, self.snapshot, self.xid)


class Plan:
    columns: list[Column] | None = None
    tables: dict[str, tuple] = {}  # name -> catalog tid the plan was made from
    writes = False
    # Statement undo (write_plans.undo_statement) covers every change it makes, so a run may be
    # given up and started again (Engine.call_restartable); DDL plans are not.
    restartable = True

    def run(self, ctx: Context) -> Result:
        raise NotImplementedError


class TableSource:
    """Rows of one table visible to the snapshot, by full scan or by primary-key lookup."""

    def __init__(self, table: TableDef, alias: str):
        self.table = table
        self.alias = alias
        self.types = [c.type_name for c in table.columns]

    def scope_columns(self, offset=0):
        return [ScopeColumn(self.alias, c.name, c.type_name, offset + i) for i, c in enumerate(self.table.columns)]

    def rows(self, ctx: Context, key_fns=None) -> Iterator[tuple[tuple, list]]:
        heap = Heap(ctx.store, self.table.table_page_id)
        if key_fns is not None:
            key = tuple(fn([], ctx.params) for fn in key_fns)
            if any(value is None for value in key):
                return
            # The index keeps an entry per row version (nothing prunes dead ones yet), so a hot
            # row's key has many. A primary key is unique: a snapshot sees at most one version,
            # and versions are entered oldest first, so look from the newest and stop at it.
            tree = BTree(ctx.store, self._index_root(ctx))
            for tid in tree.newest_first(key):
                xmin, xmax, values = heap.fetch(tid)
                if ctx.visible(xmin, xmax):
                    yield tid, values
                    return
            return
        for tid, (xmin, xmax, values) in heap.scan():
            if ctx.visible(xmin, xmax):
                yield tid, values

    def _index_root(self, ctx):
        return ctx.store.get(self.table.table_page_id).values["indexes"][PRIMARY_KEY_INDEX]


class VirtualSource:
    """A read-only table computed from the catalog (information_schema)."""

    def __init__(self, name: str, columns: list[tuple[str, str]], produce: Callable[[Context], list[list]], alias: str):
        self.name = name
        self.column_defs = columns
        self.produce = produce
        self.alias = alias
        self.table = None

    def scope_columns(self, offset=0):
        return [ScopeColumn(self.alias, name, type_name, offset + i) for i, (name, type_name) in enumerate(self.column_defs)]

    def rows(self, ctx, key_fns=None):
        for row in self.produce(ctx):
            yield None, row


class NoSource:
    alias = ""
    table = None

    def scope_columns(self, offset=0):
        return []

    def rows(self, ctx, key_fns=None):
        yield None, []


# --- information_schema -------------------------------------------------------------------------


def _info_tables(ctx):
    return [["postgres", "public", name, "BASE TABLE"] for name in sorted(ctx.catalog.tables(ctx.snapshot, ctx.xid))]


def _info_columns(ctx):
    rows = []
    for name, table in sorted(ctx.catalog.tables(ctx.snapshot, ctx.xid).items()):
        for position, column in enumerate(table.columns, 1):
            length = column.type_modifier if column.type_name == "varchar" and column.type_modifier >= 0 else None
            rows.append(["postgres", "public", name, column.name, position, None,
                         "NO" if column.not_null else "YES", t.DISPLAY[column.type_name], length])
    return rows


def _info_constraints(ctx):
    return [[f"{name}_pkey", "public", name, "PRIMARY KEY"]
            for name, table in sorted(ctx.catalog.tables(ctx.snapshot, ctx.xid).items()) if table.primary_key]


def _info_key_columns(ctx):
    rows = []
    for name, table in sorted(ctx.catalog.tables(ctx.snapshot, ctx.xid).items()):
        for position, column in enumerate(table.primary_key, 1):
            rows.append([f"{name}_pkey", "public", name, column, position])
    return rows


INFORMATION_SCHEMA = {
    "tables": ([("table_catalog", "text"), ("table_schema", "text"), ("table_name", "text"), ("table_type", "text")],
               _info_tables),
    "columns": ([("table_catalog", "text"), ("table_schema", "text"), ("table_name", "text"), ("column_name", "text"),
                 ("ordinal_position", "int4"), ("column_default", "text"), ("is_nullable", "text"),
                 ("data_type", "text"), ("character_maximum_length", "int4")], _info_columns),
    "table_constraints": ([("constraint_name", "text"), ("table_schema", "text"), ("table_name", "text"),
                           ("constraint_type", "text")], _info_constraints),
    "key_column_usage": ([("constraint_name", "text"), ("table_schema", "text"), ("table_name", "text"),
                          ("column_name", "text"), ("ordinal_position", "int4")], _info_key_columns),
}


def resolve_source(table: exp.Table, tables: dict[str, TableDef]):
    name = table.name
    schema = table.db
    alias = table.alias_or_name
    if schema == "information_schema":
        if name not in INFORMATION_SCHEMA:
            raise UndefinedTable(f'relation "information_schema.{name}" does not exist')
        columns, produce = INFORMATION_SCHEMA[name]
        return VirtualSource(name, columns, produce, alias)
    if schema == "pg_catalog" or (not schema and name in pg_catalog.TABLES and name not in tables):
        if name not in pg_catalog.TABLES:
            raise UndefinedTable(f'relation "pg_catalog.{name}" does not exist')
        columns, produce = pg_catalog.TABLES[name]
        return VirtualSource(name, columns, produce, alias)
    if schema not in ("", "public"):
        raise UndefinedTable(f'relation "{schema}.{name}" does not exist')
    if name not in tables:
        raise UndefinedTable(f'relation "{name}" does not exist')
    return TableSource(tables[name], alias)


def output_name(node: exp.Expression) -> str:
    if isinstance(node, exp.Alias):
        return node.alias
    if isinstance(node, exp.Column):
        return node.name
    if isinstance(node, exp.Cast):
        inner = node.this
        return output_name(inner) if isinstance(inner, (exp.Column, exp.Cast)) else t.SQLGLOT_TYPES.get(
            node.to.this.name, "?column?").replace("int4", "int4")
    if isinstance(node, exp.Func) and not isinstance(node, (exp.Binary, exp.Unary)):
        return node.sql_name().lower() if not isinstance(node, exp.Count) else "count"
    if isinstance(node, exp.Paren):
        return output_name(node.this)
    return "?column?"


def conjuncts(node):
    """The AND-ed parts of a condition."""
    if isinstance(node, exp.And):
        return conjuncts(node.this) + conjuncts(node.expression)
    if isinstance(node, exp.Paren):
        return conjuncts(node.this)
    return [node]


def _row_independent(node, scope: Scope) -> bool:
    """No column of this query (a column of an enclosing query is fixed while this one runs)."""
    columns = list(node.find_all(exp.Column))
    if not columns:
        return True
    return scope.outer is not None and not node.find(exp.Select) and all(scope.lookup(c) is None for c in columns)


def key_lookup(where: exp.Expression | list | None, source, scope: Scope):
    """If WHERE (a condition, or a list of AND-ed conditions) pins every primary-key column to a
    value not depending on the row, the closures computing the key."""
    table = getattr(source, "table", None)
    if where is None or not isinstance(source, TableSource) or not table.primary_key:
        return None
    pinned = {}
    for conjunct in (where if isinstance(where, list) else conjuncts(where)):
        if not isinstance(conjunct, exp.EQ):
            continue
        for column, other in ((conjunct.this, conjunct.expression), (conjunct.expression, conjunct.this)):
            if isinstance(column, exp.Column) and column.name in table.primary_key and _row_independent(other, scope) \
                    and not (column.table and column.table != source.alias):
                type_name = table.columns[table.column_index(column.name)].type_name
                fn, value_type = compile_expr(other, scope, type_name)
                if value_type not in t.NUMBERS and value_type != type_name and value_type != "unknown":
                    continue
                pinned[column.name] = _coerce_key(fn, value_type, type_name)
    if set(pinned) != set(table.primary_key):
        return None
    return [pinned[name] for name in table.primary_key]


def _coerce_key(fn, source_type, target_type):
    if source_type == target_type:
        return fn
    def coerced(row, params):
        value = fn(row, params)
        if value is None:
            return None
        if target_type in t.INTEGERS and isinstance(value, (float, decimal.Decimal)) and value != int(value):
            return _NO_MATCH
        try:
            return t.cast(value, source_type, target_type)
        except Exception:
            return _NO_MATCH
    return coerced


class _NoMatch:
    def __eq__(self, other):
        return False

    def __lt__(self, other):
        return False

    def __gt__(self, other):
        return False

    __hash__ = object.__hash__


_NO_MATCH = _NoMatch()


def constant(node, scope, what: str, expected="int8"):
    if node is None:
        return None
    fn, _ = compile_expr(node, scope, expected)
    def value(ctx):
        result = fn([], ctx.params)
        if result is not None and (not isinstance(result, int) or result < 0):
            raise InvalidParameterValue(f"{what} must not be negative")
        return result
    return value
