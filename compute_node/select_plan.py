"""SELECT: filter, project, group and aggregate, sort, DISTINCT, LIMIT/OFFSET over the joined rows
of its FROM clause (planner.py).

Invariants: ORDER BY puts NULLs last ascending and first descending, as PostgreSQL does; grouped
output may name only GROUP BY expressions and aggregates (42803 otherwise); result column types
are known at plan time, before a row is read.
"""

from __future__ import annotations

import decimal
import functools

from sqlglot import exp

from aurora_db.errors import (
    FeatureNotSupported,
    GroupingError,
    InvalidColumnReference,
    UndefinedFunction,
    UndefinedTable,
)
from compute_node import sql_types as t
from compute_node.backend import Column, Result
from compute_node.catalog import TableDef
from compute_node.explain import nest
from compute_node.expressions import QueryBlock, Scope, ScopeColumn, canonical_function, compile_expr
from compute_node.planner import FromPlan
from compute_node.sources import Context, Plan, constant, output_name
from compute_node.subqueries import Runtime


# sqlglot nodes whose SQL function name PostgreSQL uses for the output column
FUNCTION_NAMES = {exp.GroupConcat: "string_agg", exp.ArraySize: "array_length", exp.ArrayToString: "array_to_string",
                  exp.Array: "array"}

AGGREGATES = (exp.Count, exp.Sum, exp.Min, exp.Max, exp.Avg, exp.GroupConcat)  # GroupConcat: string_agg


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
        if value is None or (self.kind == "string_agg" and value[0] is None):
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
        elif self.kind == "string_agg":  # value: (text, the separator that precedes it)
            text, separator = value
            self.value = text if self.value is None else self.value + (separator or "") + text

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
    if kind == "string_agg":
        return "text"
    if kind == "sum":
        return {"int2": "int8", "int4": "int8", "int8": "numeric", "float4": "float4", "float8": "float8",
                "numeric": "numeric"}.get(arg_type) or _bad_aggregate(kind, arg_type)
    if kind == "avg":
        return {"int2": "numeric", "int4": "numeric", "int8": "numeric", "float4": "float8", "float8": "float8",
                "numeric": "numeric"}.get(arg_type) or _bad_aggregate(kind, arg_type)
    return arg_type


def _bad_aggregate(kind, arg_type):
    raise UndefinedFunction(f"function {kind}({t.DISPLAY[arg_type]}) does not exist")


def aggregates_in(node: exp.Expression) -> list[exp.Expression]:
    """The aggregate calls of this query in `node`; those inside a subquery belong to the subquery."""
    if isinstance(node, AGGREGATES):
        return [node]
    found = []
    for child in node.iter_expressions():
        if not isinstance(child, exp.Select):
            found += aggregates_in(child)
    return found


def column_name(node: exp.Expression) -> str:
    """An output column's name as PostgreSQL picks it (FigureColname): a column or function keeps its
    name through casts; a cast of anything else is named by its type."""
    return _named(node)[0]


def _named(node: exp.Expression) -> tuple[str, int]:
    """(name, strength): 2 for a name of its own (column, function), 1 for a type's, 0 for none."""
    if isinstance(node, (exp.Alias, exp.Column)):
        return output_name(node), 2
    if isinstance(node, exp.Paren):
        return _named(node.this)
    if isinstance(node, exp.Cast):
        name, strength = _named(node.this)
        return (name, strength) if strength > 1 else (_cast_type_name(node.to), 1)
    if isinstance(node, exp.Dot) and isinstance(node.expression, exp.Func):
        return _named(canonical_function(node.expression.sql(dialect="postgres")))
    if isinstance(node, exp.Anonymous):
        return node.name.lower(), 2
    if type(node) in FUNCTION_NAMES:
        return FUNCTION_NAMES[type(node)], 2
    if isinstance(node, exp.Bracket):
        return _named(node.this)
    name = output_name(node)
    return name, 0 if name == "?column?" else 2


def _cast_type_name(to: exp.Expression) -> str:
    """The type's last name as written (x::pg_catalog.regclass: regclass), or the engine's for built-ins."""
    if isinstance(to, exp.ObjectIdentifier):
        return to.name.lower()
    if to.this == exp.DataType.Type.ARRAY:
        return _cast_type_name(to.expressions[0])
    if to.this == exp.DataType.Type.USERDEFINED:
        kind = to.args.get("kind")
        return (kind.expression if isinstance(kind, exp.Dot) else kind).name
    if to.this == exp.DataType.Type.NAME:
        return "name"
    return t.SQLGLOT_TYPES.get(to.this.name, "?column?")


class GroupedScope(Scope):
    """The scope above GROUP BY: grouped expressions and aggregates are slots of the grouped row;
    any other column of the query is an error (42803), as in PostgreSQL."""

    def __init__(self, input_scope: Scope, replacements: dict):
        super().__init__([], input_scope.param_types, outer=input_scope.outer, tables=input_scope.tables,
                         runtime=input_scope.runtime, block=input_scope.block)
        self.input_scope = input_scope
        self.replacements = replacements

    def lookup(self, column: exp.Column):
        found = self.input_scope.lookup(column)
        keys = [column.sql(dialect="postgres")]
        if found is not None:
            keys.append(exp.column(found.name, table=found.table).sql(dialect="postgres"))
        for key in keys:
            if key in self.replacements:
                slot, type_name = self.replacements[key]
                return ScopeColumn(column.table, column.name, type_name, slot)
        if found is not None:
            shown = f"{column.table}.{column.name}" if column.table else column.name
            raise GroupingError(f'column "{shown}" must appear in the GROUP BY clause or be used in an aggregate function')
        return None


class SelectPlan(Plan):
    """One SELECT block; a subquery's plan has the enclosing scope as `outer` and shares its Runtime."""

    def __init__(self, select: exp.Select, tables: dict[str, TableDef], param_types: list[str], *,
                 outer: Scope | None = None, runtime: Runtime | None = None):
        for unsupported in ("with_", "with", "windows", "qualify"):
            if select.args.get(unsupported):
                raise FeatureNotSupported(f"{unsupported.rstrip('_').upper()} is not supported")
        self.root = runtime is None
        self.runtime = runtime = runtime or Runtime()
        self.block = QueryBlock()
        template = Scope([], param_types, outer=outer, tables=tables, runtime=runtime, block=self.block)
        self.from_plan = FromPlan(select, tables, template)
        scope = self.from_plan.scope
        self.scope = scope
        if self.root:
            self.tables = runtime.tables

        projections = []
        for node in select.expressions:
            if isinstance(node, exp.Star):
                projections += [(exp.column(c.name, table=c.table), c.name) for c in scope.columns if not c.hidden]
            elif isinstance(node, exp.Column) and isinstance(node.this, exp.Star):
                matching = [c for c in scope.columns if c.table == node.table]
                if not matching:
                    raise UndefinedTable(f'missing FROM-clause entry for table "{node.table}"')
                projections += [(exp.column(c.name, table=c.table), c.name) for c in matching]
            else:
                projections.append((node.this if isinstance(node, exp.Alias) else node, column_name(node)))
        group = select.args.get("group")
        having = select.args.get("having")
        order = select.args.get("order")
        aggregates = [a for node, _ in projections for a in aggregates_in(node)]
        if having is not None:
            aggregates += aggregates_in(having.this)
        if order is not None:
            aggregates += [a for o in order.expressions for a in aggregates_in(o)]
        self.grouped = bool(aggregates) or group is not None or having is not None
        self.group_fns = []
        self.output_fns = []
        out_types = []
        if self.grouped:
            self._plan_grouping(group, aggregates, scope, projections)
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

    @property
    def correlated(self) -> bool:
        return self.block.correlated

    def _origin(self, node):
        if isinstance(node, exp.Column):
            column = self.scope.lookup(node)
            if column is not None:
                return self.from_plan.origins.get(column.index, (0, 0))
        return 0, 0

    def _plan_grouping(self, group, aggregates, scope, projections):
        self.group_fns = []
        replacements = {}
        for node in (group.expressions if group is not None else []):
            if isinstance(node, exp.Literal) and not node.is_string:  # GROUP BY 2: the second output column
                position = int(node.this)
                if not 1 <= position <= len(projections):
                    raise InvalidColumnReference(f"GROUP BY position {position} is not in select list")
                node = projections[position - 1][0]
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
            elif isinstance(aggregate, exp.GroupConcat):
                kind, arg_fn, arg_type = "string_agg", self._string_agg_argument(aggregate, arg, scope), "text"
            else:
                if aggregates_in(arg):
                    raise GroupingError("aggregate function calls cannot be nested")
                arg_fn, arg_type = compile_expr(arg, scope)
                kind = type(aggregate).__name__.lower()
                if arg_type == "unknown":
                    arg_type = "text"
            result_type = _aggregate_type(kind, arg_type)
            slot = len(self.group_fns) + len(self.aggregate_specs)
            self.aggregate_specs.append((kind, distinct, arg_fn, result_type))
            replacements[key] = (slot, result_type)
        self.out_scope = GroupedScope(scope, replacements)

    @staticmethod
    def _string_agg_argument(aggregate: exp.GroupConcat, arg, scope):
        """string_agg(value, separator): fn(row) -> (value as text, separator)."""
        if isinstance(arg, exp.Order) or aggregate.args.get("on_overflow"):
            raise FeatureNotSupported("string_agg with ORDER BY is not supported")
        separator = aggregate.args.get("separator")
        if separator is None:
            raise UndefinedFunction("function string_agg(text) does not exist")
        if aggregates_in(arg) or aggregates_in(separator):
            raise GroupingError("aggregate function calls cannot be nested")
        value_fn, value_type = compile_expr(arg, scope, "text")
        separator_fn, separator_type = compile_expr(separator, scope, "text")
        if value_type not in t.STRINGS or separator_type not in t.STRINGS:
            raise UndefinedFunction(f"function string_agg({t.DISPLAY[value_type]}, {t.DISPLAY[separator_type]}) "
                                    "does not exist")
        return lambda row, params: (value_fn(row, params), separator_fn(row, params))

    def _plan_order(self, order, projections, scope):
        keys = []
        names = {name: i for i, (_, name) in enumerate(projections)}
        for ordered in order.expressions:
            node = ordered.this
            descending = bool(ordered.args.get("desc"))
            if isinstance(node, exp.Literal) and not node.is_string:
                position = int(node.this)
                if not 1 <= position <= len(projections):
                    raise InvalidColumnReference(f"ORDER BY position {position} is not in select list")
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
        rows = self.runtime.run(ctx, self.rows) if self.root else self.rows(ctx)
        return Result(f"SELECT {len(rows)}", self.columns, rows)

    def explain(self, ctx: Context) -> list[str]:
        trace = []
        self.from_plan.rows(ctx, trace)
        lines = self.from_plan.explain(trace)
        for header, present in ((f"{'Hash' if self.group_fns else ''}Aggregate", self.grouped), ("Sort", self.sort),
                                ("Unique", self.distinct), ("Limit", self.limit or self.offset)):
            if present:
                lines = nest(header, lines)
        return lines

    def rows(self, ctx: Context) -> list[tuple]:
        params = ctx.params
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
        return out_rows

    def _input_rows(self, ctx):
        return self.from_plan.rows(ctx)

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
