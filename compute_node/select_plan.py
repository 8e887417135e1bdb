"""SELECT: filter, project, group and aggregate, sort, DISTINCT, LIMIT/OFFSET over one source.

Invariants: ORDER BY puts NULLs last ascending and first descending, as PostgreSQL does; grouped
output may name only GROUP BY expressions and aggregates (42803 otherwise); result column types
are known at plan time, before a row is read.
"""

from __future__ import annotations

import decimal
import functools

from sqlglot import exp

from aurora_db.errors import FeatureNotSupported, GroupingError, UndefinedColumn, UndefinedFunction
from compute_node import sql_types as t
from compute_node.backend import Column, Result
from compute_node.catalog import TableDef
from compute_node.expressions import Scope, compile_expr
from compute_node.sources import (
    Context,
    NoSource,
    Plan,
    TableSource,
    constant,
    key_lookup,
    output_name,
    resolve_source,
)


AGGREGATES = (exp.Count, exp.Sum, exp.Min, exp.Max, exp.Avg)


@functools.total_ordering
class _SortKey:
    """One ORDER BY value: NULLs sort last ascending and first descending, as in PostgreSQL."""

    __slots__ = ("value", "descending")

    def __init__(self, value, descending):
        self.value = value
        self.descending = descending

    def __eq__(self, other):
        return self.value == other.value

    def __lt__(self, other):
        a, b = self.value, other.value
        if a is None or b is None:
            if a is None and b is None:
                return False
            less = b is None  # non-NULL before NULL ascending
        else:
            less = a < b
            if not less and a == b:
                return False
        return (not less) if self.descending else less


class Accumulator:
    def __init__(self, kind: str, distinct: bool):
        self.kind = kind
        self.distinct = distinct
        self.seen = set() if distinct else None
        self.count = 0
        self.value = None

    def add(self, value):
        if self.kind == "count_star":
            self.count += 1
            return
        if value is None:
            return
        if self.seen is not None:
            if value in self.seen:
                return
            self.seen.add(value)
        self.count += 1
        if self.kind in ("sum", "avg"):
            self.value = value if self.value is None else self.value + value
        elif self.kind == "min":
            self.value = value if self.value is None or value < self.value else self.value
        elif self.kind == "max":
            self.value = value if self.value is None or value > self.value else self.value

    def result(self, result_type):
        if self.kind in ("count", "count_star"):
            return self.count
        if self.kind == "avg":
            if not self.count:
                return None
            if result_type == "numeric":
                quotient = decimal.Decimal(self.value) / decimal.Decimal(self.count)
                return quotient.quantize(decimal.Decimal(1).scaleb(-16)).normalize() if quotient != quotient.to_integral() \
                    else quotient.quantize(decimal.Decimal("1.0000000000000000"))
            return self.value / self.count
        if self.kind == "sum" and result_type == "numeric" and self.value is not None:
            return decimal.Decimal(self.value)
        return self.value


def _aggregate_type(kind, arg_type):
    if kind in ("count", "count_star"):
        return "int8"
    if kind == "sum":
        return {"int2": "int8", "int4": "int8", "int8": "numeric", "float4": "float4", "float8": "float8",
                "numeric": "numeric"}.get(arg_type) or _bad_aggregate(kind, arg_type)
    if kind == "avg":
        return {"int2": "numeric", "int4": "numeric", "int8": "numeric", "float4": "float8", "float8": "float8",
                "numeric": "numeric"}.get(arg_type) or _bad_aggregate(kind, arg_type)
    return arg_type


def _bad_aggregate(kind, arg_type):
    raise UndefinedFunction(f"function {kind}({t.DISPLAY[arg_type]}) does not exist")


class SelectPlan(Plan):
    def __init__(self, select: exp.Select, tables: dict[str, TableDef], param_types: list[str]):
        if select.args.get("joins"):
            raise FeatureNotSupported("joins are not supported yet")
        for unsupported in ("with_", "with", "windows", "qualify"):
            if select.args.get(unsupported):
                raise FeatureNotSupported(f"{unsupported.rstrip('_').upper()} is not supported")
        from_ = select.args.get("from_") or select.args.get("from")
        if from_ is not None:
            if not isinstance(from_.this, exp.Table):
                raise FeatureNotSupported("subqueries in FROM are not supported yet")
            self.source = resolve_source(from_.this, tables)
        else:
            self.source = NoSource()
        if self.source.table is not None:
            self.tables = {self.source.table.name: self.source.table.tid}
        scope = Scope(self.source.scope_columns(), param_types)
        self.scope = scope
        where = select.args.get("where")
        self.where_fn = compile_expr(where.this, scope, "bool")[0] if where is not None else None
        self.key_fns = key_lookup(where.this, self.source, scope) if where is not None else None

        projections = []
        for node in select.expressions:
            if isinstance(node, exp.Star):
                projections += [(exp.column(c.name, table=c.table), c.name) for c in scope.columns]
            elif isinstance(node, exp.Column) and isinstance(node.this, exp.Star):
                projections += [(exp.column(c.name, table=c.table), c.name) for c in scope.columns
                                if c.table == node.table]
            else:
                projections.append((node.this if isinstance(node, exp.Alias) else node, output_name(node)))
        group = select.args.get("group")
        having = select.args.get("having")
        order = select.args.get("order")
        aggregates = [a for node, _ in projections for a in node.find_all(*AGGREGATES)]
        if having is not None:
            aggregates += list(having.this.find_all(*AGGREGATES))
        if order is not None:
            aggregates += [a for o in order.expressions for a in o.find_all(*AGGREGATES)]
        self.grouped = bool(aggregates) or group is not None
        self.output_fns = []
        out_types = []
        if self.grouped:
            self._plan_grouping(group, aggregates, scope)
        for node, _ in projections:
            fn, type_name = compile_expr(node, self.out_scope if self.grouped else scope)
            self.output_fns.append(fn)
            out_types.append("text" if type_name == "unknown" else type_name)
        self.having_fn = compile_expr(having.this, self.out_scope, "bool")[0] if having is not None else None
        self.columns = [Column(name, t.OIDS[type_name], *self._origin(node)) for (node, name), type_name
                        in zip(projections, out_types)]
        self.out_types = out_types
        self.sort = self._plan_order(order, projections, scope) if order is not None else None
        self.distinct = bool(select.args.get("distinct"))
        self.limit = constant(select.args.get("limit") and select.args["limit"].expression, scope, "LIMIT")
        offset = select.args.get("offset")
        self.offset = constant(offset and offset.expression, scope, "OFFSET")

    def _origin(self, node):
        if isinstance(node, exp.Column) and isinstance(self.source, TableSource):
            index = self.source.table.column_index(node.name)
            if index is not None:
                return self.source.table.oid, index + 1
        return 0, 0

    def _plan_grouping(self, group, aggregates, scope):
        self.group_fns = []
        replacements = {}
        for node in (group.expressions if group is not None else []):
            fn, type_name = compile_expr(node, scope)
            slot = len(self.group_fns)
            self.group_fns.append(fn)
            replacements[node.sql(dialect="postgres")] = (slot, type_name)
            if isinstance(node, exp.Column):
                resolved = scope.resolve(node)
                replacements[exp.column(resolved.name).sql(dialect="postgres")] = (slot, type_name)
                replacements[exp.column(resolved.name, table=resolved.table).sql(dialect="postgres")] = (slot, type_name)
        self.aggregate_specs = []
        for aggregate in aggregates:
            key = aggregate.sql(dialect="postgres")
            if key in replacements:
                continue
            arg = aggregate.this
            distinct = isinstance(arg, exp.Distinct)
            if distinct:
                arg = arg.expressions[0]
            if isinstance(aggregate, exp.Count) and (arg is None or isinstance(arg, exp.Star)):
                kind, arg_fn, arg_type = "count_star", None, "int8"
            else:
                if any(arg.find_all(*AGGREGATES)):
                    raise GroupingError("aggregate function calls cannot be nested")
                arg_fn, arg_type = compile_expr(arg, scope)
                kind = type(aggregate).__name__.lower()
                if arg_type == "unknown":
                    arg_type = "text"
            result_type = _aggregate_type(kind, arg_type)
            slot = len(self.group_fns) + len(self.aggregate_specs)
            self.aggregate_specs.append((kind, distinct, arg_fn, result_type))
            replacements[key] = (slot, result_type)
        self.out_scope = Scope([], scope.param_types)
        self.out_scope.replacements = replacements
        # A column not grouped and not inside an aggregate is an error, as in PostgreSQL.
        self.group_scope_error = lambda column: GroupingError(
            f'column "{column}" must appear in the GROUP BY clause or be used in an aggregate function')
        self.out_scope.resolve = lambda column: (_ for _ in ()).throw(self.group_scope_error(
            f"{column.table}.{column.name}" if column.table else column.name))

    def _plan_order(self, order, projections, scope):
        keys = []
        names = {name: i for i, (_, name) in enumerate(projections)}
        for ordered in order.expressions:
            node = ordered.this
            descending = bool(ordered.args.get("desc"))
            if isinstance(node, exp.Literal) and not node.is_string:
                position = int(node.this)
                if not 1 <= position <= len(projections):
                    raise UndefinedColumn(f"ORDER BY position {position} is not in select list")
                keys.append(("output", position - 1, descending))
            elif isinstance(node, exp.Column) and not node.table and node.name in names and \
                    not any(c.name == node.name for c in scope.columns if not self.grouped):
                keys.append(("output", names[node.name], descending))
            elif isinstance(node, exp.Column) and not node.table and node.name in names and \
                    isinstance(projections[names[node.name]][0], exp.Column):
                keys.append(("output", names[node.name], descending))
            else:
                fn, _ = compile_expr(node, self.out_scope if self.grouped else scope)
                keys.append(("input", fn, descending))
        return keys

    def run(self, ctx: Context) -> Result:
        params = ctx.params
        out_rows = []
        if self.grouped:
            rows_with_input = self._run_grouped(ctx)
        else:
            rows_with_input = self._run_plain(ctx)
        keyed = []
        for output, input_row in rows_with_input:
            if self.sort:
                key = tuple(_SortKey(output[spec] if kind == "output" else spec(input_row, params), descending)
                            for kind, spec, descending in self.sort)
                keyed.append((key, output))
            else:
                keyed.append((None, output))
        if self.sort:
            keyed.sort(key=lambda pair: pair[0])
        out_rows = [tuple(output) for _, output in keyed]
        if self.distinct:
            seen = set()
            unique = []
            for row in out_rows:
                if row not in seen:
                    seen.add(row)
                    unique.append(row)
            out_rows = unique
        offset = self.offset(ctx) if self.offset else None
        limit = self.limit(ctx) if self.limit else None
        if offset:
            out_rows = out_rows[offset:]
        if limit is not None:
            out_rows = out_rows[:limit]
        return Result(f"SELECT {len(out_rows)}", self.columns, out_rows)

    def _input_rows(self, ctx):
        params = ctx.params
        where = self.where_fn
        for _, values in self.source.rows(ctx, self.key_fns):
            if where is None or where(values, params) is True:
                yield values

    def _run_plain(self, ctx):
        params = ctx.params
        fns = self.output_fns
        for values in self._input_rows(ctx):
            yield [fn(values, params) for fn in fns], values

    def _run_grouped(self, ctx):
        params = ctx.params
        groups: dict[tuple, list] = {}
        for values in self._input_rows(ctx):
            key = tuple(fn(values, params) for fn in self.group_fns)
            accumulators = groups.get(key)
            if accumulators is None:
                accumulators = groups[key] = [Accumulator(kind, distinct) for kind, distinct, _, _ in self.aggregate_specs]
            for accumulator, (_, _, arg_fn, _) in zip(accumulators, self.aggregate_specs):
                accumulator.add(arg_fn(values, params) if arg_fn else None)
        if not groups and not self.group_fns:
            groups[()] = [Accumulator(kind, distinct) for kind, distinct, _, _ in self.aggregate_specs]
        for key, accumulators in groups.items():
            row = list(key) + [acc.result(spec[3]) for acc, spec in zip(accumulators, self.aggregate_specs)]
            if self.having_fn is not None and self.having_fn(row, params) is not True:
                continue
            yield [fn(row, params) for fn in self.output_fns], row
