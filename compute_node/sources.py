"""What a plan reads from: a table (full scan or index scan), a view (its query, planned as
a subquery), an information_schema view, or nothing; the run-time Context; and the analysis
helpers plans share.

Invariants: a source yields only rows visible to the statement's snapshot; an index scan (chosen
by compute_node/index_scans.py) yields a superset of the rows its conditions select, never fewer;
a view's rows have exactly the view's columns, whatever its tables gained since it was made.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable, Iterator

import sqlglot
from sqlglot import exp

from aurora_db.errors import DatabaseError, InternalError, InvalidParameterValue, UndefinedTable
from compute_node import pg_catalog
from compute_node import sql_types as t
from compute_node.backend import Column, Result
from compute_node.catalog import TableDef
from compute_node.expressions import ScopeColumn, compile_expr
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
    """Rows of one table visible to the snapshot, by full scan or by an index scan
    (index_scans.IndexScan); the caller filters either with every condition on the table."""

    def __init__(self, table: TableDef, alias: str):
        self.table = table
        self.alias = alias
        self.types = [c.type_name for c in table.columns]

    def scope_columns(self, offset=0):
        return [ScopeColumn(self.alias, c.name, c.type_name, offset + i) for i, c in enumerate(self.table.columns)]

    def rows(self, ctx: Context, access=None) -> Iterator[tuple[tuple, list]]:
        if access is not None:
            candidates = access.candidates(ctx, self.table)
            if candidates is not None:
                yield from candidates
                return
        for tid, (xmin, xmax, values) in Heap(ctx.store, self.table.table_page_id).scan():
            if ctx.visible(xmin, xmax):
                yield tid, values


class InvalidObjectDefinition(DatabaseError):
    sqlstate = "42P17"


VIEW_QUERIES_PARSED_MAX = 256


@functools.lru_cache(maxsize=VIEW_QUERIES_PARSED_MAX)
def _parsed_view_query(sql: str) -> exp.Expression:
    return sqlglot.parse_one(sql, read="postgres")


class ViewSource:
    """A view in FROM: its stored query, planned as a subquery that shares the statement's Runtime
    (so the statement is replanned when the view or anything it reads changes), with its rows under
    the view's column names and types. A view that reads itself, through any chain of views, is
    refused (42P17) rather than expanded forever."""

    def __init__(self, view: TableDef, alias: str, tables: dict, runtime=None):
        from compute_node.subqueries import Runtime, plan_query
        self.table = view
        self.alias = alias
        self.column_defs = [(c.name, c.type_name) for c in view.columns]
        runtime = runtime or Runtime()
        if view.oid in runtime.views_expanding:
            raise InvalidObjectDefinition(f'infinite recursion detected in rules for relation "{view.name}"')
        runtime.views_expanding.append(view.oid)
        try:
            self.plan = plan_query(_parsed_view_query(view.query).copy(), tables, [], None, runtime)
        finally:
            runtime.views_expanding.pop()
        if list(self.plan.out_types[:len(view.columns)]) != [type_name for _, type_name in self.column_defs]:
            raise InternalError(f'view "{view.name}" no longer matches the relations it reads')
        self.width = len(view.columns)

    def scope_columns(self, offset=0):
        return [ScopeColumn(self.alias, name, type_name, offset + i) for i, (name, type_name) in enumerate(self.column_defs)]

    def rows(self, ctx, access=None):
        width = self.width
        for row in self.plan.rows(ctx):
            yield None, row if len(row) == width else row[:width]


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

    def rows(self, ctx, access=None):
        for row in self.produce(ctx):
            yield None, row


class NoSource:
    alias = ""
    table = None

    def scope_columns(self, offset=0):
        return []

    def rows(self, ctx, access=None):
        yield None, []


# --- information_schema -------------------------------------------------------------------------


def _info_tables(ctx):
    return [["postgres", "public", name, "VIEW" if relation.is_view else "BASE TABLE"]
            for name, relation in sorted(ctx.catalog.tables(ctx.snapshot, ctx.xid).items())]


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


def resolve_source(table: exp.Table, tables: dict[str, TableDef], runtime=None):
    """The source a FROM item names; a view's query is planned with `runtime`, the statement's."""
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
    if tables[name].is_view:
        return ViewSource(tables[name], alias, tables, runtime)
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
