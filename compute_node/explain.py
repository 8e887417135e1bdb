"""EXPLAIN <query>: the plan the engine chooses, one text row per plan node, column "QUERY PLAN".

The join order is chosen per execution from the filtered inputs (planner.py), so EXPLAIN scans the
inputs and reports the order, the scan of each table (sequential or primary-key lookup, with the
conditions pushed down to it) and the join method, without producing the query's rows.
Only EXPLAIN of a query is supported; options such as ANALYZE fail with 0A000.
"""

from __future__ import annotations

import sqlglot
from sqlglot import exp
from sqlglot.errors import ParseError, TokenError

from aurora_db.errors import FeatureNotSupported, SyntaxError_
from compute_node.backend import TEXT_OID, Column, Result
from compute_node.sources import Context, Plan
from compute_node.subqueries import plan_query

INDENT = "  ->  "


def is_explain(node: exp.Expression) -> bool:
    return isinstance(node, exp.Command) and str(node.this).upper() == "EXPLAIN"


class ExplainPlan(Plan):
    columns = [Column("QUERY PLAN", TEXT_OID)]

    def __init__(self, node: exp.Command, tables: dict, param_types: list[str]):
        if not is_explain(node):
            raise FeatureNotSupported(f"statement {node.this} is not supported yet")
        text = node.expression.this if isinstance(node.expression, exp.Literal) else str(node.expression)
        if text.lstrip().startswith("(") or text.split(None, 1)[0].upper() in ("ANALYZE", "VERBOSE"):
            raise FeatureNotSupported("EXPLAIN options are not supported")
        try:
            inner = sqlglot.parse_one(text, read="postgres")
        except (ParseError, TokenError) as error:
            raise SyntaxError_(f"syntax error: {str(error).splitlines()[0][:200]}") from None
        if not isinstance(inner, (exp.Select, exp.Union, exp.Except, exp.Intersect)):
            raise FeatureNotSupported(f"EXPLAIN {inner.key.upper()} is not supported")
        self.inner = plan_query(inner, tables, param_types, None, None)
        self.tables = self.inner.tables

    def run(self, ctx: Context) -> Result:
        lines = self.inner.runtime.run(ctx, self.inner.explain)
        return Result("EXPLAIN", self.columns, [(line,) for line in lines])


def nest(header: str, children: list[str]) -> list[str]:
    """A node's line, then its children's lines indented under it."""
    return [header] + [(INDENT + line) if not line.startswith(" ") else "      " + line for line in children]
