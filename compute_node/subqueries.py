"""Subqueries inside expressions: scalar `(SELECT ...)`, EXISTS, and `x [NOT] IN (SELECT ...)`.

A subquery is planned once, with the enclosing scope as its `outer` scope. A correlated one (it
names a column of an enclosing query) runs again for each outer row, with that row placed in the
enclosing scope's cell; an uncorrelated one runs at most once per statement execution and its
result is kept in the statement's Runtime. Invariants: a scalar subquery yields NULL for no row
and fails with 21000 for more than one; IN follows SQL's NULL rules.
"""

from __future__ import annotations

from sqlglot import exp

from aurora_db.errors import CardinalityViolation, FeatureNotSupported, SyntaxError_, UndefinedFunction
from compute_node import sql_types as t


class Runtime:
    """One statement's run-time state, shared by its plan and all its subplans."""

    def __init__(self):
        self.ctx = None
        self.cache: dict = {}  # id(subplan) -> its rows (or their IN form), for uncorrelated subplans
        self.tables: dict[str, tuple] = {}  # every table and view the statement reads: name -> catalog tid
        self.views_expanding: list[int] = []  # while planning: oids of the views being expanded, outermost first

    def run(self, ctx, fn):
        """fn(ctx) as one statement's run: begun on ctx, and cleared after, so that a cached plan
        keeps neither the session nor its snapshot alive (a snapshot still referenced holds back
        pruning: compute_node/heap.py)."""
        self.ctx = ctx
        self.cache.clear()
        try:
            return fn(ctx)
        finally:
            self.ctx = None
            self.cache.clear()


def plan_query(node: exp.Expression, tables: dict, param_types: list[str], outer, runtime):
    """A plan for a SELECT or a compound query (UNION / EXCEPT / INTERSECT)."""
    from compute_node.compound import CompoundPlan
    from compute_node.select_plan import SelectPlan
    while isinstance(node, exp.Subquery) and not node.args.get("limit") and not node.args.get("order"):
        node = node.this
    if isinstance(node, exp.Select):
        return SelectPlan(node, tables, param_types, outer=outer, runtime=runtime)
    if isinstance(node, (exp.Union, exp.Except, exp.Intersect)):
        return CompoundPlan(node, tables, param_types, outer=outer, runtime=runtime)
    raise FeatureNotSupported(f"query {node.key.upper()} is not supported")


def subplan(node: exp.Expression, scope):
    if scope.tables is None or scope.runtime is None:
        raise FeatureNotSupported("subqueries are not supported in this statement")
    return plan_query(node, scope.tables, scope.param_types, scope, scope.runtime)


def runner(plan, scope, transform=None):
    """fn(row) -> the subplan's rows (transformed) with `row` as the enclosing query's current row."""
    runtime = scope.runtime
    cell = scope.cell
    key = id(plan)

    def rows_for(row):
        if runtime.ctx is None:
            raise FeatureNotSupported("subqueries are not supported in this statement")
        if not plan.correlated:
            cached = runtime.cache.get(key)
            if cached is None:
                result = plan.rows(runtime.ctx)
                cached = runtime.cache[key] = transform(result) if transform else result
            return cached
        saved = cell[0]
        cell[0] = row
        try:
            result = plan.rows(runtime.ctx)
        finally:
            cell[0] = saved
        return transform(result) if transform else result
    return rows_for


def compile_scalar(node: exp.Subquery, scope, expected):
    plan = subplan(node, scope)
    if len(plan.columns) != 1:
        raise SyntaxError_("subquery must return only one column")
    rows_for = runner(plan, scope)

    def scalar(row, params):
        rows = rows_for(row)
        if not rows:
            return None
        if len(rows) > 1:
            raise CardinalityViolation("more than one row returned by a subquery used as an expression")
        return rows[0][0]
    return scalar, plan.out_types[0]


def compile_exists(node: exp.Exists, scope, expected):
    plan = subplan(node.this, scope)
    rows_for = runner(plan, scope)
    return (lambda row, params: bool(rows_for(row))), "bool"


def _in_form(rows):
    values = set()
    has_null = False
    for (value,) in rows:
        if value is None:
            has_null = True
        else:
            values.add(value)
    return values, has_null, bool(rows)


def compile_in(node: exp.In, scope, expected):
    from compute_node.expressions import compile_expr, in_set
    value_fn, value_type = compile_expr(node.this, scope)
    plan = subplan(node.args["query"], scope)
    if len(plan.columns) != 1:
        raise SyntaxError_("subquery has too many columns")
    item_type = plan.out_types[0]
    if _type_class(value_type) != _type_class(item_type) and "unknown" not in (value_type, item_type):
        raise UndefinedFunction(f"operator does not exist: {t.DISPLAY[value_type]} = {t.DISPLAY[item_type]}")
    rows_for = runner(plan, scope, _in_form)

    def contains(row, params):
        values, has_null, nonempty = rows_for(row)
        if not nonempty:
            return False
        return in_set(value_fn(row, params), values, has_null)
    return contains, "bool"


def _type_class(type_name):
    if type_name in t.NUMBERS:
        return "number"
    if type_name in t.STRINGS:
        return "string"
    return type_name
