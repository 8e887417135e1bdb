"""CREATE [OR REPLACE] VIEW: a view is a catalog row (catalog.py) holding its name, its columns
(names, types, type modifiers) and its query as SQL text; sources.ViewSource plans that query as a
subquery wherever the view is read. DROP VIEW is ddl_plans.DropRelationPlan.

Invariants, as in PostgreSQL: a view's columns are fixed when it is made, so its stored query has
every `*` of its output lists written out as the columns it stood for; a view records the oids of
every table and view its query reads, so DROP refuses (2BP01) or cascades; OR REPLACE keeps the
view's oid and may only add columns at the end (42P16 otherwise); no view reads itself (42P17).
"""

from __future__ import annotations

import dataclasses

from sqlglot import exp

from aurora_db.errors import (
    DatabaseError,
    DuplicateColumn,
    DuplicateTable,
    FeatureNotSupported,
    SyntaxError_,
    WrongObjectType,
)
from compute_node import pg_catalog as pg
from compute_node.backend import Result
from compute_node.catalog import ColumnDef, TableDef
from compute_node.ddl_plans import InvalidTableDefinition
from compute_node.sources import Context, InvalidObjectDefinition, Plan
from compute_node.subqueries import plan_query
from compute_node.write_plans import check_writable

QUERY_TYPES = (exp.Select, exp.Union, exp.Except, exp.Intersect)


class UndefinedParameter(DatabaseError):
    sqlstate = "42P02"


class CreateViewPlan(Plan):
    """Plans the view's query once, at plan time, to check it and to derive the view's columns; the
    plan is remade (engine.py) when any relation the query reads changes."""

    writes = True
    restartable = False

    def __init__(self, create: exp.Create, tables: dict, param_types):
        target = create.this
        names = [identifier.name for identifier in target.expressions] if isinstance(target, exp.Schema) else []
        table_node = target.this if isinstance(target, exp.Schema) else target
        _check_supported(create, table_node)
        self.name = table_node.name
        self.replace = bool(create.args.get("replace"))
        query = create.expression
        if not isinstance(query, QUERY_TYPES):
            raise FeatureNotSupported(f"CREATE VIEW AS {query.key.upper()} is not supported yet")
        parameter = query.find(exp.Parameter, exp.Placeholder)
        if parameter is not None:
            raise UndefinedParameter(f"there is no parameter {parameter.sql(dialect='postgres')}")
        plan = plan_query(query.copy(), tables, [], None, None)
        self.view_columns = _view_columns(plan, names, tables)
        self.query = _stars_expanded(query.copy(), plan).sql(dialect="postgres")
        self.depends_on = _relations_named(query, tables)
        self.reads = frozenset(tables[name].oid for name in plan.tables if name in tables)  # also through views
        self.tables = {name: tables[name].tid for name in plan.tables if name in tables}
        self.tables[self.name] = tables[self.name].tid if self.name in tables else None

    def run(self, ctx: Context) -> Result:
        visible = ctx.catalog.tables(ctx.snapshot, ctx.xid)
        existing = visible.get(self.name)
        xid = ctx.ensure_xid()
        view = TableDef(self.name, 0, self.view_columns, (), (0, 0), query=self.query, depends_on=self.depends_on)
        _check_reads_stay(ctx, visible, view)
        if self.replace and existing is not None:
            _replace(ctx, existing, view, self.reads, xid)
            return Result("CREATE VIEW")
        if self.replace and ctx.catalog.find_index(self.name, ctx.snapshot, xid) is not None:
            raise WrongObjectType(f'"{self.name}" is not a view')
        if existing is not None:
            raise DuplicateTable(f'relation "{self.name}" already exists')
        ctx.catalog.check_relation_name_free(self.name, ctx.snapshot, xid)
        ctx.catalog.create(dataclasses.replace(view, relation_oid=ctx.catalog.new_oid()), ctx.snapshot, xid)
        return Result("CREATE VIEW")


def _check_supported(create: exp.Create, table_node) -> None:
    properties = create.args.get("properties")
    for prop in (properties.expressions if properties else []):
        shown = {exp.TemporaryProperty: "TEMPORARY", exp.MaterializedProperty: "MATERIALIZED"}.get(type(prop))
        raise FeatureNotSupported(f"CREATE {shown or prop.sql(dialect='postgres')} VIEW is not supported yet")
    if not isinstance(table_node, exp.Table) or table_node.db not in ("", "public"):
        raise FeatureNotSupported(f"CREATE VIEW {table_node.sql(dialect='postgres')} is not supported: views are "
                                  "made in schema public")


def _view_columns(plan, names: list[str], tables: dict) -> tuple[ColumnDef, ...]:
    """The view's columns: the query's output columns, renamed by the column list if one is given;
    a column read straight from a table keeps its type modifier (varchar(20), numeric(10,2))."""
    if len(names) > len(plan.columns):
        raise SyntaxError_("CREATE VIEW specifies more column names than columns")
    by_oid = {relation.oid: relation for relation in tables.values()}
    columns = []
    for position, (column, type_name) in enumerate(zip(plan.columns, plan.out_types)):
        name = names[position] if position < len(names) else column.name
        if any(c.name == name for c in columns):
            raise DuplicateColumn(f'column "{name}" specified more than once')
        source = by_oid.get(column.table_oid)
        modifier = -1
        if source is not None and 0 < column.column_number <= len(source.columns):
            origin = source.columns[column.column_number - 1]
            modifier = origin.type_modifier if origin.type_name == type_name else -1
        columns.append(ColumnDef(name, "text" if type_name == "unknown" else type_name, modifier, False))
    return tuple(columns)


def _relations_named(query: exp.Expression, tables: dict) -> tuple[int, ...]:
    """Oids of the tables and views the query names itself (in any of its subqueries), in order:
    what PostgreSQL records as the view's direct dependencies."""
    named = (node.name for node in query.find_all(exp.Table) if node.db in ("", "public"))
    return tuple(dict.fromkeys(tables[name].oid for name in named if name in tables))


def _stars_expanded(node: exp.Expression, plan) -> exp.Expression:
    """The query with each `*` and `t.*` of its output lists (every arm of a UNION) written out as
    the columns it stands for now, each qualified and quoted. `plan` was made from a copy of `node`."""
    while isinstance(node, exp.Subquery) and not node.args.get("limit") and not node.args.get("order"):
        node = node.this
    if isinstance(node, (exp.Union, exp.Except, exp.Intersect)):
        node.set("this", _stars_expanded(node.this, plan.left))
        node.set("expression", _stars_expanded(node.expression, plan.right))
        return node
    visible = [c for c in plan.scope.columns if not c.hidden]
    expressions = []
    for item in node.expressions:
        if isinstance(item, exp.Star):
            expressions += [_qualified(c) for c in visible]
        elif isinstance(item, exp.Column) and isinstance(item.this, exp.Star):
            expressions += [_qualified(c) for c in plan.scope.columns if c.table == item.table]
        else:
            expressions.append(item)
    node.set("expressions", expressions)
    return node


def _qualified(column) -> exp.Column:
    return exp.column(exp.to_identifier(column.name, quoted=True),
                      table=exp.to_identifier(column.table, quoted=True) if column.table else None)


def _type_shown(column: ColumnDef) -> str:
    return pg.format_type(pg.type_oid(column.type_name), pg.column_typmod(column))


def _check_reads_stay(ctx: Context, visible: dict, view: TableDef) -> None:
    """No other open transaction is dropping or changing a relation the view reads (PostgreSQL
    would wait for its lock): 40001, as for other DDL here."""
    by_oid = {relation.oid: relation for relation in visible.values()}
    for oid in view.depends_on:
        relation = by_oid.get(oid)
        if relation is not None:
            check_writable(ctx, relation.tid, ctx.catalog.heap.fetch(relation.tid)[1])


def _replace(ctx: Context, old: TableDef, new: TableDef, reads: frozenset, xid: int) -> None:
    """CREATE OR REPLACE of an existing view: same oid, its old columns kept (names and types), new
    ones only at the end; `reads` (every relation the new query reads, also through views) must not
    hold the view itself."""
    if not old.is_view:
        raise WrongObjectType(f'"{old.name}" is not a view')
    if old.oid in reads:
        raise InvalidObjectDefinition(f'infinite recursion detected in rules for relation "{old.name}"')
    if len(new.columns) < len(old.columns):
        raise InvalidTableDefinition("cannot drop columns from view")
    for before, after in zip(old.columns, new.columns):
        if before.name != after.name:
            raise InvalidTableDefinition(f'cannot change name of view column "{before.name}" to "{after.name}"',
                                         hint="Use ALTER VIEW ... RENAME COLUMN ... to change name of view column "
                                              "instead.")
        if (before.type_name, before.type_modifier) != (after.type_name, after.type_modifier):
            raise InvalidTableDefinition(f'cannot change data type of view column "{before.name}" from '
                                         f"{_type_shown(before)} to {_type_shown(after)}")
    check_writable(ctx, old.tid, ctx.catalog.heap.fetch(old.tid)[1])
    ctx.catalog.replace(old, dataclasses.replace(new, relation_oid=old.oid), xid)
