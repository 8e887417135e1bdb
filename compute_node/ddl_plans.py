"""CREATE TABLE and DROP TABLE: transactional, through catalog rows.

Invariant: a table definition is validated whole (types, duplicate columns, one primary key whose
columns exist) before anything is written.
"""

from __future__ import annotations

import dataclasses

from sqlglot import exp

from aurora_db.errors import DuplicateColumn, FeatureNotSupported, SyntaxError_, UndefinedColumn, UndefinedTable
from compute_node import sql_types as t
from compute_node.backend import Result
from compute_node.catalog import ColumnDef
from compute_node.sources import Context, Plan
from compute_node.write_plans import check_writable


def column_def(node: exp.ColumnDef) -> tuple[ColumnDef, bool]:
    kind = node.args.get("kind")
    if kind is None:
        raise SyntaxError_(f'column "{node.name}" has no type')
    type_name = t.SQLGLOT_TYPES.get(kind.this.name)
    if type_name is None or type_name == "numeric":
        raise FeatureNotSupported(f"type {kind.sql(dialect='postgres').lower()} is not supported yet")
    modifier = -1
    if type_name == "varchar" and kind.expressions:
        modifier = int(kind.expressions[0].this.this)
    not_null = primary = False
    for constraint in node.args.get("constraints") or []:
        constraint_kind = constraint.args.get("kind")
        if isinstance(constraint_kind, exp.NotNullColumnConstraint):
            if constraint_kind.args.get("allow_null"):
                continue
            not_null = True
        elif isinstance(constraint_kind, exp.PrimaryKeyColumnConstraint):
            primary = True
            not_null = True
        else:
            raise FeatureNotSupported(f"column constraint {constraint.sql(dialect='postgres')} is not supported yet")
    return ColumnDef(node.name, type_name, modifier, not_null), primary


class CreateTablePlan(Plan):
    writes = True

    def __init__(self, create: exp.Create, tables, param_types):
        if (create.args.get("kind") or "").upper() != "TABLE":
            raise FeatureNotSupported(f"CREATE {create.args.get('kind')} is not supported yet")
        schema = create.this
        if not isinstance(schema, exp.Schema) or create.expression is not None:
            raise FeatureNotSupported("CREATE TABLE AS is not supported yet")
        self.name = schema.this.name
        self.if_not_exists = bool(create.args.get("exists"))
        columns, primary_key = [], []
        for item in schema.expressions:
            if isinstance(item, exp.ColumnDef):
                column, primary = column_def(item)
                if any(c.name == column.name for c in columns):
                    raise DuplicateColumn(f'column "{column.name}" specified more than once')
                columns.append(column)
                if primary:
                    if primary_key:
                        raise SyntaxError_(f'multiple primary keys for table "{self.name}" are not allowed')
                    primary_key = [column.name]
            elif isinstance(item, exp.PrimaryKey):
                if primary_key:
                    raise SyntaxError_(f'multiple primary keys for table "{self.name}" are not allowed')
                primary_key = [e.name for e in item.expressions]
            else:
                raise FeatureNotSupported(f"table constraint {item.sql(dialect='postgres')} is not supported yet")
        for name in primary_key:
            index = next((i for i, c in enumerate(columns) if c.name == name), None)
            if index is None:
                raise UndefinedColumn(f'column "{name}" named in key does not exist')
            columns[index] = dataclasses.replace(columns[index], not_null=True)
        self.column_defs, self.primary_key = columns, primary_key
        self.tables = {self.name: tables[self.name].tid} if self.name in tables else {self.name: None}

    def run(self, ctx: Context) -> Result:
        if self.if_not_exists and self.name in ctx.catalog.tables(ctx.snapshot, ctx.xid):
            return Result("CREATE TABLE")
        ctx.catalog.create(self.name, self.column_defs, self.primary_key, ctx.snapshot, ctx.ensure_xid())
        return Result("CREATE TABLE")


class DropTablePlan(Plan):
    writes = True

    def __init__(self, drop: exp.Drop, tables, param_types):
        if (drop.args.get("kind") or "").upper() != "TABLE":
            raise FeatureNotSupported(f"DROP {drop.args.get('kind')} is not supported yet")
        self.if_exists = bool(drop.args.get("exists"))
        targets = drop.args.get("tables") or [drop.this]
        self.names = [table.name for table in targets]
        self.tables = {name: tables[name].tid if name in tables else None for name in self.names}

    def run(self, ctx: Context) -> Result:
        visible = ctx.catalog.tables(ctx.snapshot, ctx.xid)
        for name in self.names:
            if name not in visible and not self.if_exists:
                raise UndefinedTable(f'table "{name}" does not exist')
        for name in self.names:
            if name in visible:
                table = visible[name]
                xid = ctx.ensure_xid()
                check_writable(ctx, table.tid, ctx.catalog.heap.fetch(table.tid)[1])
                ctx.catalog.drop(table, xid)
        return Result("DROP TABLE")
