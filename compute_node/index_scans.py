"""Index scans (DESIGN.md 8): which index, if any, the scan of one table uses, chosen from the AND-ed
conditions on that table, and the scan itself through compute_node/indexes.py's planner API.

An index is used when the conditions pin its leading columns by equality to values that do not
depend on the row (literals, parameters, columns of an enclosing query), optionally followed by a
range (<, <=, >, >=, BETWEEN) on its next column; or a range on its first column alone. Among
usable indexes the one with the most columns pinned wins, then a unique one fully pinned, then
one with more range bounds, then the earlier one (the primary key is first).

Invariants: the index only proposes candidates, and the caller checks every condition again on
each visible row, so an index scan yields exactly the rows of a full scan with the same filters.
To that end a key value is compared in the B-tree only where Python orders it as the filter's own
comparison does: a column of integer, numeric, text, varchar, date, timestamp, timestamptz or
boolean type, against a value of the same type family (never a float value, compared as float8,
nor a float or char(n) column, whose NaN and blank-padding rules differ); a NULL key value yields no row; a NaN key value makes the
scan fall back to reading the whole table.
"""

from __future__ import annotations

import dataclasses
import decimal
from typing import Callable, Iterator

from sqlglot import exp

from compute_node import indexes as ix
from compute_node import sql_types as t
from compute_node.catalog import IndexDef, TableDef
from compute_node.expressions import Scope, compile_expr
from compute_node.sources import conjuncts

NUMERIC_KEYS = t.INTEGERS + ("numeric",)
STRING_KEYS = ("text", "varchar")
EXACT_KEYS = ("date", "timestamp", "timestamptz", "bool")  # compared with a value of the same type only
VOLATILE_FUNCTIONS = frozenset(("nextval", "setval", "random", "clock_timestamp", "timeofday", "gen_random_uuid"))
RANGE_OPERATORS = {exp.LT: "<", exp.LTE: "<=", exp.GT: ">", exp.GTE: ">="}
FLIPPED = {"=": "=", "<": ">", "<=": ">=", ">": "<", ">=": "<="}


@dataclasses.dataclass(frozen=True, slots=True)
class Term:
    """One usable condition on a column: `column op value`, value computed by fn([], params)."""

    column: str
    op: str  # = < <= > >=
    fn: Callable
    node: exp.Expression  # the condition it comes from (a BETWEEN gives two terms)


@dataclasses.dataclass(frozen=True, slots=True)
class Bound:
    fn: Callable
    inclusive: bool


@dataclasses.dataclass(frozen=True)
class IndexScan:
    """Equalities on the index's first len(equal_fns) columns, then an optional range on the next."""

    index: IndexDef
    equal_fns: tuple
    low: Bound | None
    high: Bound | None
    conditions: tuple[exp.Expression, ...]  # what EXPLAIN shows as the index condition

    @property
    def unique_lookup(self) -> bool:
        """A unique index fully pinned: a snapshot sees at most one tuple with a key without NULLs."""
        return self.index.unique and len(self.equal_fns) == len(self.index.columns)

    def rank(self) -> tuple:
        return len(self.equal_fns), self.unique_lookup, (self.low is not None) + (self.high is not None)

    def candidates(self, ctx, table: TableDef) -> Iterator[tuple[tuple, list]] | None:
        """The visible tuples the index proposes, or None: a key value is NaN, scan the table."""
        params = ctx.params
        prefix = [fn([], params) for fn in self.equal_fns]
        low = self.low.fn([], params) if self.low is not None else _UNBOUNDED
        high = self.high.fn([], params) if self.high is not None else _UNBOUNDED
        values = prefix + [low, high]
        if any(value is None for value in values):
            return iter(())  # a comparison with NULL is never true
        if any(_is_nan(value) for value in values):
            return None
        if self.unique_lookup:
            return ix.unique_lookup(ctx, table, self.index, prefix)
        if low is _UNBOUNDED and high is _UNBOUNDED:
            return ix.fetch_visible(ctx, table, ix.index_lookup(ctx, table, self.index, prefix))
        low_key = tuple(prefix) + (() if low is _UNBOUNDED else (low,))
        high_key = tuple(prefix) + (() if high is _UNBOUNDED else (high,))
        return ix.index_scan(ctx, table, self.index, low_key or None, high_key or None,
                             low is _UNBOUNDED or self.low.inclusive, high is _UNBOUNDED or self.high.inclusive)

    def describe(self, label: str) -> str:
        conditions = " AND ".join(node.sql(dialect="postgres") for node in self.conditions)
        return f"Index Scan using {self.index.name} on {label} (index cond: {conditions})"


class _Unbounded:
    """No bound on that side of the range."""


_UNBOUNDED = _Unbounded()


def _is_nan(value) -> bool:
    if isinstance(value, float):
        return value != value
    return isinstance(value, decimal.Decimal) and value.is_nan()


# --- choosing ---------------------------------------------------------------------------------


def choose_index(where, table: TableDef | None, scope: Scope) -> IndexScan | None:
    """The best index scan for a table's scan, given its AND-ed conditions (a list, or one
    condition to split), or None for a full scan. `scope` holds the table's columns only."""
    if where is None or table is None or table.is_view or not table.indexes:
        return None
    nodes = where if isinstance(where, list) else conjuncts(where)
    terms = [term for node in nodes for term in _terms(node, table, scope)]
    if not terms:
        return None
    best = None
    for index in table.indexes:
        scan = _scan_for(index, terms)
        if scan is not None and (best is None or scan.rank() > best.rank()):
            best = scan
    return best


def _scan_for(index: IndexDef, terms: list[Term]) -> IndexScan | None:
    equal, conditions = [], []
    for name in index.columns:
        term = next((term for term in terms if term.column == name and term.op == "="), None)
        if term is None:
            break
        equal.append(term.fn)
        conditions.append(term.node)
    low = high = None
    if len(equal) < len(index.columns):
        name = index.columns[len(equal)]
        for term in terms:
            if term.column != name or term.op == "=":
                continue
            if term.op in (">", ">=") and low is None:
                low = Bound(term.fn, term.op == ">=")
            elif term.op in ("<", "<=") and high is None:
                high = Bound(term.fn, term.op == "<=")
            else:
                continue
            if not any(node is term.node for node in conditions):
                conditions.append(term.node)
    if not equal and low is None and high is None:
        return None
    return IndexScan(index, tuple(equal), low, high, tuple(conditions))


def _terms(node: exp.Expression, table: TableDef, scope: Scope) -> list[Term]:
    if isinstance(node, exp.EQ):
        pairs = [(node.this, "=", node.expression, node), (node.expression, "=", node.this, node)]
    elif type(node) in RANGE_OPERATORS:
        op = RANGE_OPERATORS[type(node)]
        pairs = [(node.this, op, node.expression, node), (node.expression, FLIPPED[op], node.this, node)]
    elif isinstance(node, exp.Between) and not node.args.get("symmetric"):
        pairs = [(node.this, ">=", node.args["low"], node), (node.this, "<=", node.args["high"], node)]
    else:
        return []
    terms = []
    for column, op, value, origin in pairs:
        term = _term(column, op, value, origin, table, scope)
        if term is not None:
            terms.append(term)
    return terms


def _term(column, op: str, value, origin, table: TableDef, scope: Scope) -> Term | None:
    """`column op value` as a Term if column is one of the table's and value a usable key value."""
    if not isinstance(column, exp.Column) or isinstance(column.this, exp.Star):
        return None
    found = scope.lookup(column)
    if found is None or table.column_index(found.name) is None:
        return None
    if not _row_independent(value, scope) or _volatile(value):
        return None
    column_type = table.columns[table.column_index(found.name)].type_name
    fn, value_type = compile_expr(value, scope, column_type)
    if not _comparable_in_index(column_type, value_type):
        return None
    return Term(found.name, op, fn, origin)


def _comparable_in_index(column_type: str, value_type: str) -> bool:
    if column_type in NUMERIC_KEYS:
        return value_type in NUMERIC_KEYS  # a float compares as float8, not exactly as the B-tree would
    if column_type in STRING_KEYS:
        return value_type in STRING_KEYS or value_type == "unknown"
    return column_type in EXACT_KEYS and value_type == column_type


def _row_independent(node, scope: Scope) -> bool:
    """No column of this query (a column of an enclosing query is fixed while this one runs)."""
    columns = list(node.find_all(exp.Column))
    if not columns:
        return True
    return scope.outer is not None and not node.find(exp.Select) and all(scope.lookup(c) is None for c in columns)


def _volatile(node) -> bool:
    """A function whose value may change from one call to the next: a full scan calls it per row."""
    for call in node.find_all(exp.Anonymous, exp.Rand):
        if isinstance(call, exp.Rand) or call.name.lower() in VOLATILE_FUNCTIONS:
            return True
    return False
