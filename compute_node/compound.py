"""Compound queries: UNION [ALL], EXCEPT [ALL], INTERSECT [ALL], with ORDER BY / LIMIT / OFFSET on
the whole.

Invariants: both sides have the same number of columns (42601 otherwise); each result column has
one type, unified from both sides as PostgreSQL does for UNION (42804 if they cannot be matched),
and every value is converted to it; set operations treat NULLs as equal; ORDER BY names output
columns, by position or name.
"""

from __future__ import annotations

import collections
import decimal

from sqlglot import exp

from aurora_db.errors import DatatypeMismatch, FeatureNotSupported, SyntaxError_, UndefinedColumn
from compute_node import sql_types as t
from compute_node.backend import Column, Result
from compute_node.explain import nest
from compute_node.expressions import Scope
from compute_node.select_plan import _SortKey
from compute_node.sources import Context, Plan, constant
from compute_node.subqueries import Runtime, plan_query

OPERATORS = {exp.Union: "UNION", exp.Except: "EXCEPT", exp.Intersect: "INTERSECT"}
NUMERIC_ORDER = ("int2", "int4", "int8", "numeric", "float4", "float8")  # each converts implicitly to the later ones


def unify_types(a: str, b: str, operator: str) -> str:
    if a == b:
        return "text" if a == "unknown" else a
    if a == "unknown" or b == "unknown":
        return b if a == "unknown" else a
    if a in NUMERIC_ORDER and b in NUMERIC_ORDER:
        return max(a, b, key=NUMERIC_ORDER.index)
    if a in t.STRINGS and b in t.STRINGS:
        return "text"
    raise DatatypeMismatch(f"{operator} types {t.DISPLAY[a]} and {t.DISPLAY[b]} cannot be matched")


def converter(source: str, target: str):
    """fn(value) converting a value of `source` to `target` (unify_types' result), or None: no change."""
    if source == target or target in t.STRINGS or source == "unknown" and target in t.STRINGS:
        return None
    if source == "unknown":
        return lambda value: None if value is None else t.parse_text(value, target)
    if target == "numeric":
        return lambda value: None if value is None else decimal.Decimal(value) if not isinstance(value, float) \
            else decimal.Decimal(repr(value))
    if target in t.FLOATS:
        return lambda value: None if value is None else float(value)
    return None


def _distinct(rows):
    return list(dict.fromkeys(rows))


class CompoundPlan(Plan):
    def __init__(self, node: exp.Expression, tables: dict, param_types: list[str], *, outer: Scope | None = None,
                 runtime: Runtime | None = None):
        self.root = runtime is None
        self.runtime = runtime = runtime or Runtime()
        self.operator = OPERATORS[type(node)]
        self.all = not node.args.get("distinct")
        self.left = plan_query(node.this, tables, param_types, outer, runtime)
        self.right = plan_query(node.expression, tables, param_types, outer, runtime)
        if len(self.left.columns) != len(self.right.columns):
            raise SyntaxError_(f"each {self.operator} query must have the same number of columns")
        self.out_types = [unify_types(a, b, self.operator) for a, b in zip(self.left.out_types, self.right.out_types)]
        self.converters = [[converter(source, target) for source, target in zip(side.out_types, self.out_types)]
                           for side in (self.left, self.right)]
        self.columns = [Column(column.name, t.OIDS[type_name]) for column, type_name in zip(self.left.columns, self.out_types)]
        if self.root:
            self.tables = runtime.tables
        scope = Scope([], param_types)
        self.sort = self._plan_order(node.args.get("order"))
        limit = node.args.get("limit")
        offset = node.args.get("offset")
        self.limit = constant(limit and limit.expression, scope, "LIMIT")
        self.offset = constant(offset and offset.expression, scope, "OFFSET")

    @property
    def correlated(self) -> bool:
        return self.left.correlated or self.right.correlated

    def _plan_order(self, order):
        if order is None:
            return None
        names = [column.name for column in self.columns]
        keys = []
        for ordered in order.expressions:
            node = ordered.this
            if isinstance(node, exp.Literal) and not node.is_string:
                position = int(node.this)
                if not 1 <= position <= len(names):
                    raise UndefinedColumn(f"ORDER BY position {position} is not in select list")
                keys.append((position - 1, bool(ordered.args.get("desc"))))
            elif isinstance(node, exp.Column) and not node.table and node.name in names:
                keys.append((names.index(node.name), bool(ordered.args.get("desc"))))
            else:
                raise FeatureNotSupported(f"invalid {self.operator} ORDER BY clause: only result column names "
                                          "or positions can be used")
        return keys

    def _side_rows(self, side, converters, ctx):
        rows = side.rows(ctx)
        if not any(converters):
            return rows
        return [tuple(value if convert is None else convert(value) for value, convert in zip(row, converters))
                for row in rows]

    def explain(self, ctx: Context) -> list[str]:
        lines = nest(self.operator.title() + (" All" if self.all else ""), self.left.explain(ctx) + self.right.explain(ctx))
        for header, present in (("Sort", self.sort), ("Limit", self.limit or self.offset)):
            if present:
                lines = nest(header, lines)
        return lines

    def run(self, ctx: Context) -> Result:
        rows = self.runtime.run(ctx, self.rows) if self.root else self.rows(ctx)
        return Result(f"SELECT {len(rows)}", self.columns, rows)

    def rows(self, ctx: Context) -> list[tuple]:
        left = self._side_rows(self.left, self.converters[0], ctx)
        right = self._side_rows(self.right, self.converters[1], ctx)
        if self.operator == "UNION":
            rows = left + right if self.all else _distinct(left + right)
        elif self.all:
            counts = collections.Counter(right)
            rows = []
            keep_matches = self.operator == "INTERSECT"
            for row in left:
                if counts[row] > 0:
                    counts[row] -= 1
                    if keep_matches:
                        rows.append(row)
                elif not keep_matches:
                    rows.append(row)
        else:
            present = set(right)
            wanted = self.operator == "INTERSECT"
            rows = _distinct(row for row in left if (row in present) == wanted)
        if self.sort:
            rows.sort(key=lambda row: tuple(_SortKey(row[index], descending) for index, descending in self.sort))
        offset = self.offset(ctx) if self.offset else None
        limit = self.limit(ctx) if self.limit else None
        if offset:
            rows = rows[offset:]
        if limit is not None:
            rows = rows[:limit]
        return rows
