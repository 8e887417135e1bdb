"""A column DEFAULT as PostgreSQL displays it (pg_get_expr, ruleutils.c), from the SQL the catalog keeps.

PostgreSQL keeps a DEFAULT as an expression tree already coerced to the column's type and prints
that tree back. Invariants of that printing, followed here: a string literal becomes a constant of
the type it was coerced to, printed with a `::type` label unless the type reads back unlabeled
(non-negative integer, numeric with a point or exponent, boolean); a negative number is one
constant ('-1'::integer); an implicit cast is hidden at the top and shown as `::type` on an
operator's argument; in pretty mode parentheses appear only where precedence or a hidden cast needs
them (isSimpleNode), otherwise every operator wraps itself in parentheses. An expression outside
what is modelled here (CASE, subqueries) is shown as the engine's SQL for it.
"""

from __future__ import annotations

import dataclasses
import decimal

import sqlglot
from sqlglot import exp

from aurora_db.errors import DatabaseError
from compute_node import sql_types as t
from compute_node.expressions import cast_target

INT4_MAX = 2**31 - 1
INT8_MAX = 2**63 - 1

LABELS = {"int2": "smallint", "int4": "integer", "int8": "bigint", "float4": "real", "float8": "double precision",
          "numeric": "numeric", "bool": "boolean", "text": "text", "varchar": "character varying", "bpchar": "bpchar",
          "date": "date", "timestamp": "timestamp without time zone", "timestamptz": "timestamp with time zone",
          "regclass": "regclass"}
TYPMOD_TYPES = ("varchar", "bpchar", "numeric")
ARITHMETIC = {exp.Add: "+", exp.Sub: "-", exp.Mul: "*", exp.Div: "/", exp.Mod: "%"}
COMPARISONS = {exp.EQ: "=", exp.NEQ: "<>", exp.LT: "<", exp.LTE: "<=", exp.GT: ">", exp.GTE: ">="}
SQL_VALUE_FUNCTIONS = {exp.CurrentTimestamp: ("CURRENT_TIMESTAMP", "timestamptz"),
                       exp.CurrentDate: ("CURRENT_DATE", "date"), exp.Localtimestamp: ("LOCALTIMESTAMP", "timestamp")}
FUNCTION_RESULTS = {"now": "timestamptz", "transaction_timestamp": "timestamptz", "statement_timestamp": "timestamptz",
                    "clock_timestamp": "timestamptz", "upper": "text", "lower": "text", "length": "int4",
                    "nextval": "int8"}
NUMERIC_ORDER = ("int2", "int4", "int8", "numeric", "float4", "float8")
CASE_INDENT = " " * 4


class Unmodelled(Exception):
    """The expression has a node this module does not print as PostgreSQL would."""


@dataclasses.dataclass(frozen=True, slots=True)
class Shown:
    """A printed node: its text, its SQL type, and what isSimpleNode needs to know about it."""

    text: str
    type_name: str
    kind: str  # const, func, op, bool, relabel, io, cast (a hidden implicit cast)
    operator: str = ""  # op: the symbol; bool: AND, OR or NOT


def default_expression(sql: str, type_name: str, type_modifier: int, *, pretty: bool) -> str:
    """The DEFAULT `sql` of a column of `type_name` (with `type_modifier`) as pg_get_expr prints it."""
    try:
        node = sqlglot.parse_one(sql, read="postgres")
        return _Printer(pretty).default(node, type_name, type_modifier)
    except (Unmodelled, sqlglot.errors.ParseError, DatabaseError, ValueError, decimal.InvalidOperation):
        return sql


class _Printer:
    def __init__(self, pretty: bool):
        self.pretty = pretty

    # --- top level: the hidden coercion to the column's type ---------------------------------------

    def default(self, node, type_name: str, type_modifier: int) -> str:
        shown = self.show(node, type_name)
        for wrapper in _coercions(shown.type_name, type_name, type_modifier):
            # a hidden cast function is itself simple (function-like); a relabel or I/O node is as
            # simple as what it wraps
            simple = wrapper == "cast" or _is_simple(shown, Shown("", "", wrapper), False)
            shown = Shown(self._paren_under(shown, wrapper), type_name, "func" if simple else wrapper)
        return shown.text

    # --- nodes ---------------------------------------------------------------------------------------

    def show(self, node, expected: str | None = None) -> Shown:
        if isinstance(node, exp.Paren):
            return self.show(node.this, expected)
        if isinstance(node, exp.Dot) and node.this.name.lower() == "pg_catalog" \
                and isinstance(node.expression, exp.Func):
            return self.show(node.expression, expected)  # PostgreSQL prints built-in functions unqualified
        if isinstance(node, exp.Literal):
            return self._literal(node, expected)
        if isinstance(node, exp.Neg) and _is_number(node.this):
            return self._number(_number_value(node.this, negative=True))
        if isinstance(node, exp.Neg):
            return self._prefix("-", node.this)
        if isinstance(node, exp.Boolean):
            return Shown("true" if node.this else "false", "bool", "const")
        if isinstance(node, exp.Null):
            return Shown(f"NULL::{LABELS[expected]}" if expected in LABELS else "NULL", expected or "unknown", "const")
        if isinstance(node, exp.Cast):
            return self._cast(node)
        if type(node) in ARITHMETIC:
            return self._arithmetic(node, ARITHMETIC[type(node)])
        if type(node) in COMPARISONS:
            return self._comparison(node, COMPARISONS[type(node)])
        if isinstance(node, exp.DPipe):
            return self._binary("||", self.show(node.this, "text"), self.show(node.expression, "text"), "text")
        if isinstance(node, (exp.And, exp.Or)):
            return self._boolean(node)
        if isinstance(node, exp.Not):
            arg = self.show(node.this, "bool")
            return self._wrap(Shown(f"NOT {self._paren_under(arg, 'bool', 'NOT')}", "bool", "bool", "NOT"))
        if isinstance(node, exp.Case):
            return self._case(node)
        if type(node) in SQL_VALUE_FUNCTIONS:
            text, type_name = SQL_VALUE_FUNCTIONS[type(node)]
            return Shown(text, type_name, "func")
        return self._function(node)

    def _literal(self, node: exp.Literal, expected: str | None) -> Shown:
        if not node.is_string:
            return self._number(_number_value(node, negative=False))
        if expected in (None, "unknown") or expected not in LABELS:
            return Shown(_quoted(node.this), "unknown", "const")
        value = node.this if expected in t.STRINGS else t.parse_text(node.this, expected)
        return self.constant(value, expected)

    def _number(self, value) -> Shown:
        if isinstance(value, int) and -INT4_MAX - 1 <= value <= INT4_MAX:
            return self.constant(value, "int4")
        if isinstance(value, int) and -INT8_MAX - 1 <= value <= INT8_MAX:
            return self.constant(value, "int8")
        return self.constant(decimal.Decimal(value), "numeric")

    def constant(self, value, type_name: str, *, labelled: bool = True, typmod_label: str = "") -> Shown:
        """get_const_expr: `labelled` False is its showtype -1 (a cast prints the label itself)."""
        text = t.to_text(value)
        if type_name == "bool":
            return Shown(text, type_name, "const")
        if type_name == "int4" and not text.startswith("-"):
            return Shown(text, type_name, "const")
        if type_name == "numeric" and text[:1].isdigit() and any(c in text for c in ".eE"):
            return Shown(text, type_name, "const")
        label = f"::{typmod_label or LABELS[type_name]}" if labelled else ""
        return Shown(_quoted(text) + label, type_name, "const")

    def _cast(self, node: exp.Cast) -> Shown:
        target, modifier = cast_target(node.to)
        if target not in LABELS:
            raise Unmodelled(node.to.sql())
        label = _type_label(target, modifier)
        inner = node.this.this if isinstance(node.this, exp.Paren) else node.this
        if isinstance(inner, exp.Literal) and inner.is_string:
            value = inner.this if target in t.STRINGS + ("regclass",) else t.parse_text(inner.this, target)
            return self.constant(value, target, typmod_label=label if modifier >= 0 else "")
        arg = self.show(node.this)
        if arg.type_name == target and modifier < 0:
            return arg
        return Shown(self._shown_cast(arg, label), target, "func")

    def _shown_cast(self, arg: Shown, label: str) -> str:
        """An explicit cast, or an implicit one PostgreSQL shows (on an operator's argument)."""
        if arg.kind == "const" and arg.text.endswith(f"::{LABELS.get(arg.type_name, '')}") and arg.type_name in LABELS:
            body = arg.text[:-len(LABELS[arg.type_name]) - 2]
        else:
            body = arg.text
        if arg.kind != "const":
            body = self._paren_under(arg, "cast") if self.pretty else arg.text
        return f"{body}::{label}"

    def _arithmetic(self, node, symbol: str) -> Shown:
        left, right = self._operands(node)
        if left.type_name in t.DATETIMES or right.type_name in t.DATETIMES:
            result = left.type_name if left.type_name in t.DATETIMES else right.type_name
            if symbol == "-" and left.type_name == right.type_name == "date":
                result = "int4"
            return self._binary(symbol, left, right, result)
        common = _common_number(left.type_name, right.type_name)
        return self._binary(symbol, self._promoted(left, common), self._promoted(right, common), common)

    def _comparison(self, node, symbol: str) -> Shown:
        left, right = self._operands(node)
        if left.type_name in NUMERIC_ORDER and right.type_name in NUMERIC_ORDER:
            common = _common_number(left.type_name, right.type_name)
            left, right = self._promoted(left, common), self._promoted(right, common)
        return self._binary(symbol, left, right, "bool")

    def _operands(self, node) -> tuple[Shown, Shown]:
        left = self.show(node.this)
        right = self.show(node.expression, left.type_name if left.type_name != "unknown" else None)
        if left.type_name == "unknown":
            left = self.show(node.this, right.type_name if right.type_name != "unknown" else "text")
        if right.type_name == "unknown":
            right = self.show(node.expression, "text")
        return left, right

    def _promoted(self, shown: Shown, common: str) -> Shown:
        """PostgreSQL has cross-type operators within the integers (and the floats); across the
        groups the narrower argument gets an implicit cast, shown as `::type`."""
        if shown.type_name == common or _same_family(shown.type_name, common):
            return shown
        return Shown(self._shown_cast(shown, LABELS[common]), common, "func")

    def _binary(self, symbol: str, left: Shown, right: Shown, result: str) -> Shown:
        parent = Shown("", result, "op", symbol)
        text = f"{self._paren_under(left, parent, first=True)} {symbol} {self._paren_under(right, parent)}"
        return self._wrap(Shown(text, result, "op", symbol))

    def _prefix(self, symbol: str, node) -> Shown:
        arg = self.show(node)
        parent = Shown("", arg.type_name, "op", "")  # a prefix operator has no binary priority
        return self._wrap(Shown(f"{symbol} {self._paren_under(arg, parent)}", arg.type_name, "op", ""))

    def _boolean(self, node) -> Shown:
        operator = "AND" if isinstance(node, exp.And) else "OR"
        parent = Shown("", "bool", "bool", operator)
        left, right = self.show(node.this, "bool"), self.show(node.expression, "bool")
        text = f"{self._paren_under(left, parent)} {operator} {self._paren_under(right, parent)}"
        return self._wrap(Shown(text, "bool", "bool", operator))

    def _wrap(self, shown: Shown) -> Shown:
        """Outside pretty mode an operator prints its own parentheses."""
        return shown if self.pretty else dataclasses.replace(shown, text=f"({shown.text})")

    def _function(self, node) -> Shown:
        if isinstance(node, exp.Coalesce):
            return self._variadic("COALESCE", [node.this, *node.expressions])
        if isinstance(node, exp.Nullif):
            first = self.show(node.this)
            second = self.show(node.expression, first.type_name)
            return Shown(f"NULLIF({first.text}, {second.text})", first.type_name, "func")
        if isinstance(node, exp.Anonymous):
            name, args = node.name.lower(), list(node.expressions)
        elif isinstance(node, (exp.Upper, exp.Lower, exp.Length, exp.Abs)):
            name, args = type(node).__name__.lower(), [node.this]
        else:
            raise Unmodelled(type(node).__name__)
        shown = [self.show(arg, "text" if name in ("upper", "lower", "length") else None) for arg in args]
        shown = [self.show(arg, "text") if item.type_name == "unknown" else item for arg, item in zip(args, shown)]
        result = FUNCTION_RESULTS.get(name) or (shown[0].type_name if name == "abs" and shown else None)
        if result is None:
            raise Unmodelled(name)
        return Shown(f"{name}({', '.join(item.text for item in shown)})", result, "func")

    def _case(self, node: exp.Case) -> Shown:
        """CASE on lines of its own, WHEN and ELSE indented (ruleutils' PRETTYINDENT_VAR), in both modes."""
        branches = node.args.get("ifs") or []
        default = node.args.get("default")
        results = [branch.args["true"] for branch in branches] + ([default] if default is not None else [])
        known = [shown.type_name for shown in (self.show(result) for result in results) if shown.type_name != "unknown"]
        common = known[0] if known else "text"
        for other in known[1:]:
            common = _common_number(common, other) if common in NUMERIC_ORDER and other in NUMERIC_ORDER else common
        subject = self.show(node.this) if node.this is not None else None
        lines = ["", "CASE" + (f" {subject.text}" if subject is not None else "")]
        for branch in branches:
            condition = self.show(branch.this, subject.type_name if subject is not None else "bool")
            lines.append(f"{CASE_INDENT}WHEN {condition.text} THEN {self._result(branch.args['true'], common).text}")
        if default is not None:
            lines.append(f"{CASE_INDENT}ELSE {self._result(default, common).text}")
        lines.append("END")
        return Shown("\n".join(lines), common, "func")

    def _result(self, node, common: str) -> Shown:
        shown = self.show(node, common)
        return self._promoted(shown, common) if common in NUMERIC_ORDER else shown

    def _variadic(self, name: str, args) -> Shown:
        typed = [self.show(arg) for arg in args]
        known = [item.type_name for item in typed if item.type_name != "unknown"]
        common = known[0] if known else "text"
        for other in known[1:]:
            common = _common_number(common, other) if common in NUMERIC_ORDER and other in NUMERIC_ORDER else common
        items = [self._promoted(self.show(arg, common), common) if common in NUMERIC_ORDER else self.show(arg, common)
                 for arg in args]
        return Shown(f"{name}({', '.join(item.text for item in items)})", common, "func")

    # --- parentheses ---------------------------------------------------------------------------------

    def _paren_under(self, child: Shown, parent, operator: str = "", *, first: bool = False) -> str:
        """The child's text, in parentheses where PostgreSQL's pretty printer puts them (isSimpleNode)."""
        if not self.pretty:
            return child.text
        parent = parent if isinstance(parent, Shown) else Shown("", "", parent, operator)
        return child.text if _is_simple(child, parent, first) else f"({child.text})"


def _is_simple(child: Shown, parent: Shown, first: bool) -> bool:
    if child.kind in ("const", "func"):
        return True
    if child.kind in ("relabel", "io"):
        return False
    if child.kind == "op" and parent.kind == "op":
        return _op_under_op(child.operator, parent.operator, first)
    if parent.kind in ("cast", "relabel", "io", "op"):
        return False
    if child.kind == "bool" and parent.kind == "bool":
        if child.operator in ("NOT", "AND"):
            return parent.operator in ("AND", "OR")
        return parent.operator == "OR"
    return parent.kind == "bool" and child.kind == "op"


def _op_under_op(op: str, parent_op: str, first: bool) -> bool:
    low, high = op in ("+", "-"), op in ("*", "/", "%")
    parent_low, parent_high = parent_op in ("+", "-"), parent_op in ("*", "/", "%")
    if not (low or high) or not (parent_low or parent_high):
        return False
    if high and parent_low:
        return True
    if low and parent_high:
        return False
    return first  # (a - b) - c needs none, a - (b - c) does


def _coercions(source: str, target: str, type_modifier: int) -> list[str]:
    """The hidden nodes PostgreSQL puts between an expression of `source` and a column of `target`,
    innermost first: a binary-compatible relabel, an I/O conversion or a cast function, then a
    length coercion for a type modifier."""
    length = ["cast"] if type_modifier >= 0 and target in TYPMOD_TYPES else []
    if source in (target, "unknown"):
        return length
    if source in t.STRINGS and target in t.STRINGS:
        return (["cast"] if source == "bpchar" else ["relabel"]) + length
    if target in t.STRINGS:
        return ["io"] + length
    return ["cast"] + length


def _common_number(a: str, b: str) -> str:
    if a not in NUMERIC_ORDER or b not in NUMERIC_ORDER:
        return a if a == b else (a if a != "unknown" else b)
    if a in t.FLOATS or b in t.FLOATS:
        return "float8" if "float8" in (a, b) or a != b else "float4"
    return max(a, b, key=NUMERIC_ORDER.index)


def _same_family(a: str, b: str) -> bool:
    return (a in t.INTEGERS and b in t.INTEGERS) or (a in t.FLOATS and b in t.FLOATS)


def _is_number(node) -> bool:
    node = node.this if isinstance(node, exp.Paren) else node
    return isinstance(node, exp.Literal) and not node.is_string


def _number_value(node, *, negative: bool):
    node = node.this if isinstance(node, exp.Paren) else node
    text = ("-" if negative else "") + node.this
    if any(c in text for c in ".eE"):
        return decimal.Decimal(text)
    return int(text)


def _type_label(type_name: str, modifier: int) -> str:
    if modifier < 0:
        return LABELS[type_name]
    if type_name == "numeric":
        precision, scale = t.numeric_precision_scale(modifier)
        return f"numeric({precision},{scale})"
    return f"{'character varying' if type_name == 'varchar' else 'character'}({modifier})"


def _quoted(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"
