"""Plans one SQL statement (DESIGN.md 8): sqlglot AST -> analyze (names, types, SQLSTATE errors)
-> a Plan holding compiled closures, which the engine runs against a snapshot.

Invariant: a plan is bound to the table definitions it was made from (`Plan.tables`), and the
engine remakes it when any of them changed.
"""

from __future__ import annotations

from sqlglot import exp

from aurora_db.errors import FeatureNotSupported
from compute_node.catalog import TableDef
from compute_node.compound import CompoundPlan
from compute_node.explain import ExplainPlan
from compute_node.ddl_plans import AlterTablePlan, TruncatePlan, create_plan, drop_plan
from compute_node.select_plan import SelectPlan
from compute_node.sources import Context, Plan
from compute_node.view_plans import CreateViewPlan
from compute_node.write_plans import DeletePlan, InsertPlan, UpdatePlan

__all__ = ["Context", "Plan", "plan_statement"]


def _create_plan(create: exp.Create, tables: dict[str, TableDef], param_types: list[str]) -> Plan:
    if (create.args.get("kind") or "").upper() == "VIEW":
        return CreateViewPlan(create, tables, param_types)
    return create_plan(create, tables, param_types)


PLANS = {exp.Select: SelectPlan, exp.Union: CompoundPlan, exp.Except: CompoundPlan, exp.Intersect: CompoundPlan,
         exp.Command: ExplainPlan,
         exp.Insert: InsertPlan, exp.Update: UpdatePlan, exp.Delete: DeletePlan,
         exp.Create: _create_plan, exp.Drop: drop_plan, exp.TruncateTable: TruncatePlan, exp.Alter: AlterTablePlan}


def plan_statement(node: exp.Expression, tables: dict[str, TableDef], param_types: list[str]) -> Plan:
    plan_class = PLANS.get(type(node))
    if plan_class is None:
        raise FeatureNotSupported(f"statement {node.key.upper()} is not supported yet")
    return plan_class(node, tables, param_types)
