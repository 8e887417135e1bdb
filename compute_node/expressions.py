"""Compile sqlglot expressions into Python closures `fn(row, params) -> value` with a SQL type.

SQL's NULL rules hold throughout: comparisons and arithmetic with NULL give NULL, AND/OR use
three-valued logic, WHERE keeps only rows whose condition is TRUE. Integer division truncates
toward zero and integer results are range-checked, as in PostgreSQL. Parameter types ($n) are
inferred from context when the client left them unspecified.
"""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import functools
import operator
import re
import weakref
from typing import Any, Callable

import sqlglot
from sqlglot import exp

from aurora_db.errors import (
    AmbiguousColumn,
    DatabaseError,
    DatatypeMismatch,
    DivisionByZero,
    FeatureNotSupported,
    UndefinedColumn,
    UndefinedFunction,
)
from compute_node import sql_types as t

Fn = Callable[[list, list], Any]


@dataclasses.dataclass(frozen=True, slots=True)
class ScopeColumn:
    table: str
    name: str
    type_name: str
    index: int
    hidden: bool = False  # the right-hand copy of a JOIN ... USING column: only reachable qualified


class QueryBlock:
    """What the scopes of one SELECT share: whether it reads a column of an enclosing query."""

    __slots__ = ("correlated",)

    def __init__(self):
        self.correlated = False


class Scope:
    """The columns an expression may name, and the statement's parameter types (inferred in place).

    A subquery's scope has `outer`: a column not found here is looked up there, and the compiled
    closure reads it from `outer.cell[0]`, the enclosing query's current row, which the enclosing
    subquery expression sets before it runs the subquery."""

    def __init__(self, columns: list[ScopeColumn], param_types: list[str], *, outer: "Scope | None" = None,
                 tables: dict | None = None, runtime=None, block: QueryBlock | None = None):
        self.columns = columns
        self.param_types = param_types
        self.replacements: dict[str, tuple[int, str]] = {}  # expression SQL -> (row slot, type)
        self.outer = outer
        self.tables = tables  # the catalog's tables, for subqueries; None where subqueries are not allowed
        self.runtime = runtime
        self.block = block or QueryBlock()
        self.cell = [None]  # the current row, while a subquery compiled in this scope runs

    def derive(self, columns: list[ScopeColumn]) -> "Scope":
        """Another scope of the same query block (same parameters, outer scope and runtime)."""
        return Scope(columns, self.param_types, outer=self.outer, tables=self.tables, runtime=self.runtime,
                     block=self.block)

    def lookup(self, column: exp.Column) -> ScopeColumn | None:
        name, table = column.name, column.table
        if table:
            matches = [c for c in self.columns if c.name == name and c.table == table]
        else:
            matches = [c for c in self.columns if c.name == name and not c.hidden]
        if len(matches) > 1:
            raise AmbiguousColumn(f'column reference "{name}" is ambiguous')
        return matches[0] if matches else None

    def resolve(self, column: exp.Column) -> ScopeColumn:
        found = self.lookup(column)
        if found is None:
            shown = f"{column.table}.{column.name}" if column.table else column.name
            raise UndefinedColumn(f'column "{shown}" does not exist')
        return found

    def resolve_anywhere(self, column: exp.Column) -> tuple[ScopeColumn, "Scope"]:
        """This scope's column, else the nearest enclosing query's; marks the blocks in between correlated."""
        scope = self
        crossed = []
        while True:
            found = scope.lookup(column)
            if found is not None:
                for block in crossed:
                    block.correlated = True
                return found, scope
            if scope.outer is None:
                return self.resolve(column), self  # raises 42703
            crossed.append(scope.block)
            scope = scope.outer


def param_index(node: exp.Expression) -> int | None:
    if isinstance(node, exp.Parameter):
        inner = node.this
        text = inner.this if isinstance(inner, (exp.Literal, exp.Var, exp.Identifier)) else str(inner)
        if str(text).isdigit():
            return int(text) - 1
    if isinstance(node, exp.Placeholder) and str(node.this or "").isdigit():
        return int(node.this) - 1
    return None


def _strict_binary(left_fn, right_fn, op):
    """op(a, b) over two operands, NULL if either is NULL (SQL's strict operators)."""
    def apply(row, params):
        a = left_fn(row, params)
        if a is None:
            return None
        b = right_fn(row, params)
        if b is None:
            return None
        return op(a, b)
    return apply

def compile_expr(node: exp.Expression, scope: Scope, expected: str | None = None) -> tuple[Fn, str]:
    key = node.sql(dialect="postgres") if scope.replacements else None
    if key is not None and key in scope.replacements:
        slot, type_name = scope.replacements[key]
        return (lambda row, params: row[slot]), type_name
    handler = _HANDLERS.get(type(node))
    if handler is None:
        raise FeatureNotSupported(f"{_describe(node)} is not supported")
    return handler(node, scope, expected)


def _describe(node: exp.Expression) -> str:
    if isinstance(node, exp.Func):
        return f"function {node.sql_name().lower()}()"
    return f"expression {type(node).__name__} ({node.sql(dialect='postgres')[:60]})"


def _column(node, scope, expected):
    column, owner = scope.resolve_anywhere(node)
    index = column.index
    if owner is scope:
        return (lambda row, params: row[index]), column.type_name
    cell = owner.cell
    return (lambda row, params: cell[0][index]), column.type_name


def _literal(node: exp.Literal, scope, expected):
    if node.is_string:
        value = node.this
        if expected in t.REG_TYPES:
            from compute_node.catalog_functions import compile_reg_cast
            return compile_reg_cast(lambda row, params: value, "unknown", expected, scope)
        if expected == "bpchar":
            # typed text, not char(n): its length is unknown here, and a primary-key probe must not
            # look for the unpadded value (comparisons with char(n) ignore trailing blanks anyway)
            return (lambda row, params: value), "text"
        if expected and expected not in t.STRINGS:
            converted = t.parse_text(value, expected)
            return (lambda row, params: converted), expected
        return (lambda row, params: value), "unknown"
    text = node.this
    if any(ch in text for ch in ".eE"):
        value = decimal.Decimal(text)
        if expected in t.FLOATS:
            value = float(value)
            return (lambda row, params: value), "float8"
        return (lambda row, params: value), "numeric"
    value = int(text)
    type_name = "int4" if -2**31 <= value < 2**31 else "int8" if -2**63 <= value < 2**63 else "numeric"
    if type_name == "numeric":
        value = decimal.Decimal(value)
    return (lambda row, params: value), type_name


def _string_literal(node, scope, expected):
    """E'...' (escapes already processed) and $$...$$: string literals like '...'."""
    return _literal(exp.Literal.string(node.this), scope, expected)


def _null(node, scope, expected):
    return (lambda row, params: None), expected or "unknown"


def _boolean(node: exp.Boolean, scope, expected):
    value = bool(node.this)
    return (lambda row, params: value), "bool"


def _param(node, scope, expected):
    index = param_index(node)
    if index is None:
        raise FeatureNotSupported(f"parameter {node.sql()} is not supported")
    if expected in t.REG_TYPES:  # a name, looked up when the statement runs (as a quoted literal is)
        from compute_node.catalog_functions import compile_reg_cast
        return compile_reg_cast(_param(node, scope, "text")[0], "text", expected, scope)
    while len(scope.param_types) <= index:
        scope.param_types.append("unknown")
    if scope.param_types[index] == "unknown" and expected and expected != "unknown":
        scope.param_types[index] = "text" if expected == "bpchar" else expected  # as _literal: no padding
    types = scope.param_types

    def parameter(row, params):
        value = params[index]
        if value.__class__ is str and types[index] in _PARSED_PARAMETER_TYPES:
            return t.parse_text(value, types[index])  # the protocol layer hands these over as text
        return value
    return parameter, scope.param_types[index]


_PARSED_PARAMETER_TYPES = frozenset(("numeric",) + t.DATETIMES)


def _paren(node, scope, expected):
    return compile_expr(node.this, scope, expected)


# PostgreSQL type names a cast may use beyond the column types: oid-like and name-like types map to
# the engine types that hold their values.
_CAST_TYPE_NAMES = {"oid": "int8", "name": "text", "char": "text", "text": "text", "int2": "int2", "int4": "int4",
                    "int8": "int8", "float4": "float4", "float8": "float8", "numeric": "numeric", "bool": "bool",
                    "varchar": "varchar", "bpchar": "bpchar", "date": "date", "timestamp": "timestamp",
                    "timestamptz": "timestamptz", "regclass": "regclass", "regtype": "regtype",
                    "regnamespace": "regnamespace", "regrole": "regrole"}


def cast_target(to: exp.Expression) -> tuple[str, int]:
    """(engine type, type modifier) of the type a CAST or :: names; 0A000 for a type the engine lacks."""
    if isinstance(to, exp.ObjectIdentifier):
        return _named_cast_type(to.name.lower(), to)
    kind = to.this
    if kind == exp.DataType.Type.ARRAY:
        element, _ = cast_target(to.expressions[0])
        if element not in t.ARRAY_OIDS:
            raise FeatureNotSupported(f"type {to.sql(dialect='postgres')} is not supported")
        return element + "[]", -1
    if kind == exp.DataType.Type.USERDEFINED:
        name = to.args.get("kind")
        if isinstance(name, exp.Dot):
            if name.this.name.lower() != "pg_catalog":
                raise FeatureNotSupported(f"type {to.sql(dialect='postgres')} is not supported")
            name = name.expression
        return _named_cast_type(name.name if name.args.get("quoted") else name.name.lower(), to)
    if kind == exp.DataType.Type.NAME:
        return "text", -1
    target = t.SQLGLOT_TYPES.get(kind.name)
    if target is None:
        raise FeatureNotSupported(f"type {to.sql(dialect='postgres')} is not supported")
    return target, t.type_modifier(to, target)


def _named_cast_type(name: str, to) -> tuple[str, int]:
    target = _CAST_TYPE_NAMES.get(name)
    if target is None:
        raise FeatureNotSupported(f"type {to.sql(dialect='postgres')} is not supported")
    return target, -1


def _cast(node: exp.Cast, scope, expected):
    target, modifier = cast_target(node.to)
    fn, source = compile_expr(node.this, scope, None if target in t.REG_TYPES else target)
    if source == target and modifier < 0:
        return fn, target
    if target in t.REG_TYPES:
        from compute_node.catalog_functions import compile_reg_cast
        return compile_reg_cast(fn, source, target, scope)
    return (lambda row, params: t.cast(fn(row, params), source, target, modifier)), target


def _operands(node, scope):
    """Compile both sides; an untyped side (string literal, NULL, $n) takes the other's type."""
    left_fn, left = compile_expr(node.this, scope)
    right_fn, right = compile_expr(node.expression, scope, None if left == "unknown" else left)
    if left == "unknown" and right != "unknown":
        left_fn, left = compile_expr(node.this, scope, right)
    return left_fn, left, right_fn, right


def _type_class(type_name):
    if type_name in t.NUMBERS or type_name in t.REG_TYPES:
        return "number"
    if type_name in t.STRINGS:
        return "string"
    if type_name in t.DATETIMES:
        return "datetime"
    return type_name


def _comparable(left_fn, left, right_fn, right):
    """The two sides made comparable as PostgreSQL's cross-type operators do: date, timestamp and
    timestamptz widen to the wider of the two; char(n) compares without its trailing blanks; a
    numeric compared with a float becomes a float8 (PostgreSQL casts numeric to float8 there)."""
    if left == "numeric" and right in t.FLOATS:
        return _as_float(left_fn), right_fn
    if right == "numeric" and left in t.FLOATS:
        return left_fn, _as_float(right_fn)
    if left != right and left in t.DATETIMES and right in t.DATETIMES:
        wide = max(left, right, key=t.DATETIMES.index)
        return _widened(left_fn, wide), _widened(right_fn, wide)
    if "bpchar" in (left, right) and _type_class(left) == _type_class(right) == "string":
        return _unpadded(left_fn), _unpadded(right_fn)
    return left_fn, right_fn


def _common_numeric(fns_types: list[tuple]) -> list:
    """Values compared with one another (IN, BETWEEN, CASE): where a numeric meets a float, every
    numeric becomes float8, PostgreSQL's common type for the two. Returns the functions."""
    types = {type_name for _, type_name in fns_types}
    if "numeric" in types and types & set(t.FLOATS):
        return [_as_float(fn) if type_name == "numeric" else fn for fn, type_name in fns_types]
    return [fn for fn, _ in fns_types]


def _as_float(fn):
    return lambda row, params: None if (v := fn(row, params)) is None else float(v)


def _widened(fn, target):
    return lambda row, params: None if (v := fn(row, params)) is None else t.datetime_to(v, target)


def _unpadded(fn):
    return lambda row, params: None if (v := fn(row, params)) is None else v.rstrip(" ")


def _comparison(op):
    def handler(node, scope, expected):
        if isinstance(node.expression, exp.Any):
            from compute_node import arrays
            return arrays.compile_any(node, scope, op, _SYMBOLS[type(node)])
        if isinstance(node.expression, exp.Anonymous) and node.expression.name.upper() == "ALL":
            raise FeatureNotSupported(f"{_SYMBOLS[type(node)]} ALL (...) is not supported")
        left_fn, left, right_fn, right = _operands(node, scope)
        if _type_class(left) != _type_class(right) and "unknown" not in (left, right):
            raise UndefinedFunction(
                f"operator does not exist: {t.DISPLAY[left]} {_SYMBOLS[type(node)]} {t.DISPLAY[right]}")
        left_fn, right_fn = _comparable(left_fn, left, right_fn, right)

        return _strict_binary(left_fn, right_fn, op), "bool"
    return handler


def _result_type(left, right, symbol):
    if left == "unknown":
        left = right if right != "unknown" else "text"
    if right == "unknown":
        right = left
    if left not in t.NUMBERS or right not in t.NUMBERS:
        raise UndefinedFunction(f"operator does not exist: {t.DISPLAY[left]} {symbol} {t.DISPLAY[right]}")
    if "float8" in (left, right) or "float4" in (left, right):
        return "float8" if "float8" in (left, right) or "numeric" in (left, right) or left != right else "float4"
    if "numeric" in (left, right):
        return "numeric"
    return max(left, right, key=t.INTEGERS.index)


def _int_div(a, b):
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b >= 0) else -q


def _int_mod(a, b):
    return a - b * _int_div(a, b)


def _numeric_mod(a, b):
    """numeric % numeric: the remainder takes the dividend's sign, as in PostgreSQL."""
    return a - b * (a / b).to_integral_value(rounding=decimal.ROUND_DOWN)


_DATE_OFFSETS = ("int2", "int4")


def _datetime_arithmetic(symbol, left_fn, left, right_fn, right):
    """date + integer, integer + date, date - integer (a date) and date - date (an integer); the
    timestamp operators need interval, which the engine does not have."""
    if symbol == "+" and left == "date" and right in _DATE_OFFSETS:
        op, result = (lambda a, b: _date_shift(a, b)), "date"
    elif symbol == "+" and left in _DATE_OFFSETS and right == "date":
        op, result = (lambda a, b: _date_shift(b, a)), "date"
    elif symbol == "-" and left == "date" and right in _DATE_OFFSETS:
        op, result = (lambda a, b: _date_shift(a, -b)), "date"
    elif symbol == "-" and left == right == "date":
        op, result = (lambda a, b: (a - b).days), "int4"
    elif symbol in "+-" and {left, right} & {"timestamp", "timestamptz"} and {left, right} <= set(t.DATETIMES):
        raise FeatureNotSupported(f"{t.DISPLAY[left]} {symbol} {t.DISPLAY[right]} (type interval) is not supported")
    else:
        raise UndefinedFunction(f"operator does not exist: {t.DISPLAY[left]} {symbol} {t.DISPLAY[right]}")

    return _strict_binary(left_fn, right_fn, op), result


def _date_shift(date, days):
    try:
        return date + datetime.timedelta(days=days)
    except OverflowError:
        raise t.DatetimeFieldOverflow("date out of range") from None


def _arithmetic(symbol):
    def handler(node, scope, expected):
        left_fn, left, right_fn, right = _operands(node, scope)
        if left in t.DATETIMES or right in t.DATETIMES:
            if left == "unknown" or right == "unknown":
                left_fn, left, right_fn, right = _date_operands(node, scope, left, right)
            return _datetime_arithmetic(symbol, left_fn, left, right_fn, right)
        result = _result_type(left, right, symbol)
        if symbol == "%" and result in t.FLOATS:
            raise UndefinedFunction(f"operator does not exist: {t.DISPLAY[left]} % {t.DISPLAY[right]}")
        is_int = result in t.INTEGERS
        is_numeric = result == "numeric"
        to_float = result in t.FLOATS and "numeric" in (left, right)  # numeric op float is float8
        if symbol == "+":
            op = t.NUMERIC_CONTEXT.add if is_numeric else operator.add
        elif symbol == "-":
            op = t.NUMERIC_CONTEXT.subtract if is_numeric else operator.sub
        elif symbol == "*":
            op = t.NUMERIC_CONTEXT.multiply if is_numeric else operator.mul
        elif symbol == "/":
            op = _int_div if is_int else t.numeric_div if is_numeric else operator.truediv
        else:
            op = _int_mod if is_int else _numeric_mod

        def compute(a, b):
            if symbol in "/%" and b == 0:
                raise DivisionByZero("division by zero")
            if to_float:
                a, b = float(a), float(b)
            elif is_numeric:
                a, b = decimal.Decimal(a) if not isinstance(a, float) else decimal.Decimal(repr(a)), \
                    decimal.Decimal(b) if not isinstance(b, float) else decimal.Decimal(repr(b))
            value = op(a, b)
            return t.check_integer(value, result) if is_int else value
        return _strict_binary(left_fn, right_fn, compute), result
    return handler


def _date_operands(node, scope, left, right):
    """date + '1' and '2024-01-02' - date: PostgreSQL resolves the unknown side as integer for +,
    and as date for date - unknown."""
    known = left if right == "unknown" else right
    other = "date" if known == "date" and isinstance(node, exp.Sub) else "int4"
    if known != "date":
        other = known
    if left == "unknown":
        left_fn, left = compile_expr(node.this, scope, other)
        right_fn, _ = compile_expr(node.expression, scope, right)
    else:
        left_fn, _ = compile_expr(node.this, scope, left)
        right_fn, right = compile_expr(node.expression, scope, other)
    return left_fn, left, right_fn, right


def _neg(node, scope, expected):
    fn, type_name = compile_expr(node.this, scope, expected)
    if type_name not in t.NUMBERS:
        raise UndefinedFunction(f"operator does not exist: - {t.DISPLAY[type_name]}")
    is_int = type_name in t.INTEGERS

    def negate(row, params):
        value = fn(row, params)
        if value is None:
            return None
        return t.check_integer(-value, type_name) if is_int else -value
    return negate, type_name


def _concat(node, scope, expected):
    left_fn, left = compile_expr(node.this, scope, "text")
    right_fn, right = compile_expr(node.expression, scope, "text")
    left_fn = _unpadded(left_fn) if left == "bpchar" else left_fn
    right_fn = _unpadded(right_fn) if right == "bpchar" else right_fn

    def concat(row, params):
        a, b = left_fn(row, params), right_fn(row, params)
        if a is None or b is None:
            return None
        return t.to_text(a) + t.to_text(b)
    return concat, "text"


def _boolean_operand(node, scope):
    fn, type_name = compile_expr(node, scope, "bool")
    if type_name not in ("bool", "unknown"):
        raise DatatypeMismatch(f"argument of AND/OR/NOT must be type boolean, not type {t.DISPLAY[type_name]}")
    return fn


def _logical(decisive: bool):
    """AND (decisive False) and OR (decisive True) in three-valued logic: a decisive operand
    decides, else NULL if either is NULL, else the other value."""
    def handler(node, scope, expected):
        left, right = _boolean_operand(node.this, scope), _boolean_operand(node.expression, scope)

        def combine(row, params):
            a = left(row, params)
            if a is decisive:
                return decisive
            b = right(row, params)
            if b is decisive:
                return decisive
            return None if a is None or b is None else not decisive
        return combine, "bool"
    return handler


def _not(node, scope, expected):
    fn = _boolean_operand(node.this, scope)

    def negate(row, params):
        value = fn(row, params)
        return None if value is None else not value
    return negate, "bool"


def _is(node: exp.Is, scope, expected):
    """IS [NOT] NULL and IS [NOT] TRUE/FALSE: never NULL themselves. sqlglot marks NOT with `negate`."""
    fn, _ = compile_expr(node.this, scope)
    target = node.expression
    negate = bool(node.args.get("negate"))
    if isinstance(target, exp.Null):
        return (lambda row, params: (fn(row, params) is None) != negate), "bool"
    if isinstance(target, exp.Boolean):
        wanted = bool(target.this)
        return (lambda row, params: (fn(row, params) is wanted) != negate), "bool"
    raise FeatureNotSupported(f"IS {target.sql()} is not supported")


def _between(node: exp.Between, scope, expected):
    value_fn, value_type = compile_expr(node.this, scope)
    value_fn, low_fn, high_fn = _common_numeric([
        (value_fn, value_type), compile_expr(node.args["low"], scope, value_type),
        compile_expr(node.args["high"], scope, value_type)])

    def between(row, params):
        value, low, high = value_fn(row, params), low_fn(row, params), high_fn(row, params)
        if value is None:
            return None
        above = None if low is None else value >= low
        below = None if high is None else value <= high
        if above is False or below is False:
            return False
        return None if above is None or below is None else True
    return between, "bool"


def _in(node: exp.In, scope, expected):
    if node.args.get("query"):
        return _subquery_handler("compile_in")(node, scope, expected)
    if node.args.get("unnest") or node.args.get("field"):
        raise FeatureNotSupported("IN with UNNEST is not supported")
    value_fn, value_type = compile_expr(node.this, scope)
    value_fn, *item_fns = _common_numeric(
        [(value_fn, value_type)] + [compile_expr(item, scope, value_type) for item in node.expressions])
    if value_type == "bpchar":
        value_fn, item_fns = _unpadded(value_fn), [_unpadded(item_fn) for item_fn in item_fns]
    if all(isinstance(item, (exp.Literal, exp.Null)) for item in node.expressions):
        constants = [item_fn(None, None) for item_fn in item_fns]
        values = {value for value in constants if value is not None}
        has_null = len(values) < len(constants) and None in constants

        return lambda row, params: in_set(value_fn(row, params), values, has_null), "bool"

    def contains(row, params):
        value = value_fn(row, params)
        if value is None:
            return None
        saw_null = False
        for item_fn in item_fns:
            item = item_fn(row, params)
            if item is None:
                saw_null = True
            elif item == value:
                return True
        return None if saw_null else False
    return contains, "bool"


def in_set(value, values: set, has_null: bool):
    """SQL's `value IN (...)` over the list's non-NULL values: NULL when the value is NULL, or when
    it is not found and the list held a NULL."""
    if value is None:
        return None
    if value in values:
        return True
    return None if has_null else False


def _like(node, scope, expected):
    import re
    value_fn, _ = compile_expr(node.this, scope, "text")
    pattern_fn, _ = compile_expr(node.expression, scope, "text")
    insensitive = isinstance(node, exp.ILike)
    negate = bool(node.args.get("negate"))  # sqlglot reads `x NOT LIKE y` as one node with `negate`
    cache = {}

    def like(row, params):
        value, pattern = value_fn(row, params), pattern_fn(row, params)
        if value is None or pattern is None:
            return None
        regex = cache.get(pattern)
        if regex is None:
            parts = ["." if ch == "_" else ".*" if ch == "%" else re.escape(ch) for ch in pattern]
            regex = cache[pattern] = re.compile("".join(parts), re.S | (re.I if insensitive else 0))
        return (regex.fullmatch(value) is not None) != negate
    return like, "bool"


def _coalesce(node, scope, expected):
    fns_types = [compile_expr(arg, scope, expected) for arg in [node.this, *node.expressions]]
    type_name = next((ty for _, ty in fns_types if ty != "unknown"), "unknown")
    fns = [fn for fn, _ in fns_types]

    def coalesce(row, params):
        for fn in fns:
            value = fn(row, params)
            if value is not None:
                return value
        return None
    return coalesce, type_name


def _abs(node, scope, expected):
    fn, type_name = compile_expr(node.this, scope, expected)
    return (lambda row, params: None if (v := fn(row, params)) is None else abs(v)), type_name


def _case(node: exp.Case, scope, expected):
    subject = node.this
    subject_fn, subject_type = compile_expr(subject, scope) if subject is not None else (None, None)
    conditions, values = [], []
    result_type = "unknown"
    for branch in node.args.get("ifs", []):
        conditions.append(compile_expr(branch.this, scope, subject_type or "bool"))
        value_fn, value_type = compile_expr(branch.args["true"], scope, expected)
        result_type = value_type if result_type == "unknown" else result_type
        values.append(value_fn)
    if subject_fn is not None:  # CASE x WHEN a ...: x = a, in the common type of x and every a
        subject_fn, *condition_fns = _common_numeric([(subject_fn, subject_type)] + conditions)
    else:
        condition_fns = [fn for fn, _ in conditions]
    branches = list(zip(condition_fns, values))
    default = node.args.get("default")
    default_fn = compile_expr(default, scope, result_type)[0] if default is not None else (lambda row, params: None)

    def case(row, params):
        key = subject_fn(row, params) if subject_fn else None
        for cond_fn, value_fn in branches:
            cond = cond_fn(row, params)
            if (subject_fn is None and cond is True) or (subject_fn is not None and key is not None and cond == key):
                return value_fn(row, params)
        return default_fn(row, params)
    return case, result_type


def _null_safe(equal: bool):
    """IS [NOT] DISTINCT FROM: NULL equals NULL, and the result is never NULL."""
    def handler(node, scope, expected):
        left_fn, left, right_fn, right = _operands(node, scope)
        if _type_class(left) != _type_class(right) and "unknown" not in (left, right):
            raise UndefinedFunction(f"operator does not exist: {t.DISPLAY[left]} = {t.DISPLAY[right]}")
        left_fn, right_fn = _comparable(left_fn, left, right_fn, right)

        def same(row, params):
            a, b = left_fn(row, params), right_fn(row, params)
            if a is None or b is None:
                return (a is None and b is None) == equal
            return (a == b) == equal
        return same, "bool"
    return handler


def _nullif(node, scope, expected):
    """NULLIF(a, b): a unless a = b. What is returned is the first argument of that `=`, so a
    numeric beside a float comes back as float8, as in PostgreSQL."""
    left_fn, left, right_fn, right = _operands(node, scope)
    if _type_class(left) != _type_class(right) and "unknown" not in (left, right):
        raise UndefinedFunction(f"operator does not exist: {t.DISPLAY[left]} = {t.DISPLAY[right]}")
    promoted = left == "numeric" and right in t.FLOATS
    if promoted or (right == "numeric" and left in t.FLOATS):
        left_fn, right_fn = _comparable(left_fn, left, right_fn, right)

    def nullif(row, params):
        a = left_fn(row, params)
        if a is None:
            return None
        b = right_fn(row, params)
        return None if b is not None and a == b else a
    return nullif, "float8" if promoted else left if left != "unknown" else right


def _subquery_handler(name):
    def handler(node, scope, expected):
        from compute_node import subqueries
        return getattr(subqueries, name)(node, scope, expected)
    return handler


def _text_function(fn_of_value, result_type):
    def handler(node, scope, expected):
        fn, type_name = compile_expr(node.this, scope, "text")
        fn = _unpadded(fn) if type_name == "bpchar" else fn
        return (lambda row, params: None if (v := fn(row, params)) is None else fn_of_value(v)), result_type
    return handler


_TRANSACTION_CLOCKS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # session -> (marker, now)
_statement_clock: list = [None, None]  # [params list of the statement running, its now]


def transaction_timestamp(ctx, params) -> datetime.datetime:
    """now(): the start of the current transaction, as PostgreSQL. With a run-time context (every
    statement's expressions have one), one value per transaction block (keyed by the block's
    savepoint list, made anew at BEGIN) or per statement outside a block; without one (only where
    no statement runs), one value per evaluation run, keyed by its parameter list."""
    if ctx is not None:
        session = ctx.session
        in_block = getattr(getattr(session, "state", None), "value", "I") != "I"
        marker = getattr(session, "savepoints", None) if in_block else ctx
        try:
            clock = _TRANSACTION_CLOCKS.get(session)
        except TypeError:  # a session that cannot be weakly referenced: per statement
            clock = None
        if clock is not None and clock[0] is marker and marker is not None:
            return clock[1]
        now = datetime.datetime.now(t.UTC)
        try:
            _TRANSACTION_CLOCKS[session] = (marker, now)
        except TypeError:
            pass
        return now
    if _statement_clock[0] is not params or params is None:
        _statement_clock[0], _statement_clock[1] = params, datetime.datetime.now(t.UTC)
    return _statement_clock[1]


def _clock(type_name):
    def handler(node, scope, expected):
        runtime = scope.runtime
        if type_name == "timestamptz":
            convert = None
        elif type_name == "timestamp":
            convert = lambda now: now.replace(tzinfo=None)  # noqa: E731 (TimeZone UTC)
        else:
            convert = lambda now: now.date()  # noqa: E731

        def now(row, params):
            value = transaction_timestamp(runtime.ctx if runtime is not None else None, params)
            return value if convert is None else convert(value)
        return now, type_name
    return handler


def _anonymous(node: exp.Anonymous, scope, expected):
    """A function sqlglot has no node for: the clock, or one of the catalog and array functions."""
    from compute_node import arrays, catalog_functions
    name = node.name.lower()
    if name in ("transaction_timestamp", "now") and not node.expressions:
        return _clock("timestamptz")(node, scope, expected)
    handler = catalog_functions.FUNCTIONS.get(name) or arrays.FUNCTIONS.get(name)
    if handler is None:
        raise FeatureNotSupported(f"function {name}() is not supported")
    return handler(node, scope, expected)


def _named_function(name: str):
    """A function sqlglot parses to a node of its own (current_user, version(), ...)."""
    def handler(node, scope, expected):
        from compute_node import catalog_functions
        return catalog_functions.FUNCTIONS[name](exp.Anonymous(this=name), scope, expected)
    return handler


def _qualified(node: exp.Dot, scope, expected):
    """pg_catalog.f(...): the built-in function f (the only schema functions live in)."""
    schema, function = node.this, node.expression
    if isinstance(schema, exp.Identifier) and schema.name.lower() == "pg_catalog" and isinstance(function, exp.Func):
        return compile_expr(canonical_function(function.sql(dialect="postgres")), scope, expected)
    raise FeatureNotSupported(f"{_describe(node)} is not supported")


@functools.lru_cache(maxsize=256)
def canonical_function(sql: str) -> exp.Expression:
    """The node sqlglot makes for an unqualified call (pg_catalog.upper(x) parses as an anonymous call)."""
    return sqlglot.parse_one(sql, read="postgres")


# OPERATOR(pg_catalog.op): the node of the operator's usual spelling, and whether it is negated
_OPERATORS = {"~": (exp.RegexpLike, False), "!~": (exp.RegexpLike, True), "~*": (exp.RegexpILike, False),
              "!~*": (exp.RegexpILike, True), "~~": (exp.Like, False), "!~~": (exp.Like, True),
              "~~*": (exp.ILike, False), "!~~*": (exp.ILike, True), "=": (exp.EQ, False), "<>": (exp.NEQ, False),
              "!=": (exp.NEQ, False), "<": (exp.LT, False), "<=": (exp.LTE, False), ">": (exp.GT, False),
              ">=": (exp.GTE, False), "+": (exp.Add, False), "-": (exp.Sub, False), "*": (exp.Mul, False),
              "/": (exp.Div, False), "%": (exp.Mod, False), "||": (exp.DPipe, False)}


def _operator(node: exp.Operator, scope, expected):
    name = node.args.get("operator") or ""
    symbol = name[len("pg_catalog."):] if name.lower().startswith("pg_catalog.") else name
    if symbol not in _OPERATORS or node.expression is None:
        raise FeatureNotSupported(f"operator {name} is not supported")
    node_type, negated = _OPERATORS[symbol]
    plain = node_type(this=node.this.copy(), expression=node.expression.copy())
    return compile_expr(exp.Not(this=plain) if negated else plain, scope, expected)


_COLLATIONS = ("default", "c", "posix")  # all compare strings by code point, as the engine does


def _collate(node: exp.Collate, scope, expected):
    collation = node.expression
    name = collation.name
    schema = collation.table.lower() if isinstance(collation, exp.Column) else ""
    if name.lower() not in _COLLATIONS or schema not in ("", "pg_catalog"):
        raise FeatureNotSupported(f'collation "{name}" is not supported')
    return compile_expr(node.this, scope, expected)


class InvalidRegularExpression(DatabaseError):
    sqlstate = "2201B"


_POSIX_CLASSES = {"alpha": "a-zA-Z", "digit": "0-9", "alnum": "a-zA-Z0-9", "upper": "A-Z", "lower": "a-z",
                  "space": r"\s", "punct": r"!-/:-@\[-`{-~", "xdigit": "0-9A-Fa-f", "word": r"\w"}


@functools.lru_cache(maxsize=256)
def _regex(pattern: str, insensitive: bool) -> re.Pattern:
    """A PostgreSQL (ARE) pattern as a Python one: bracket classes [[:alpha:]] and the word
    boundaries \\m \\M \\y \\Y translated; an invalid pattern is 2201B."""
    translated = re.sub(r"\[:(\w+):\]", lambda m: _POSIX_CLASSES.get(m.group(1), m.group(0)), pattern)
    translated = re.sub(r"\\[mMyY]", lambda m: r"\B" if m.group(0) == "\\Y" else r"\b", translated)
    try:
        return re.compile(translated, re.I if insensitive else 0)
    except re.error as error:
        raise InvalidRegularExpression(f"invalid regular expression: {error}") from None


def _regex_match(insensitive: bool):
    """text ~ pattern (~* ignoring case): whether the pattern matches anywhere in the text."""
    symbol = "~*" if insensitive else "~"

    def handler(node, scope, expected):
        value_fn, value_type = compile_expr(node.this, scope, "text")
        pattern_fn, pattern_type = compile_expr(node.expression, scope, "text")
        if value_type not in t.STRINGS or pattern_type not in t.STRINGS:
            raise UndefinedFunction(f"operator does not exist: {t.DISPLAY[value_type]} {symbol} "
                                    f"{t.DISPLAY[pattern_type]}")

        return _strict_binary(value_fn, pattern_fn,
                              lambda value, pattern: _regex(pattern, insensitive).search(value) is not None), "bool"
    return handler


def _array_handler(name):
    def handler(node, scope, expected):
        from compute_node import arrays
        return getattr(arrays, name)(node, scope, expected)
    return handler


def _array_size(node, scope, expected):
    """array_length(array, dimension), which sqlglot parses as ArraySize."""
    from compute_node import arrays
    return arrays.FUNCTIONS["array_length"](node, scope, expected)


_SYMBOLS = {exp.EQ: "=", exp.NEQ: "<>", exp.LT: "<", exp.LTE: "<=", exp.GT: ">", exp.GTE: ">="}

_HANDLERS = {
    exp.Column: _column,
    exp.Literal: _literal,
    exp.Null: _null,
    exp.Boolean: _boolean,
    exp.Parameter: _param,
    exp.Placeholder: _param,
    exp.Paren: _paren,
    exp.Cast: _cast,
    exp.EQ: _comparison(operator.eq),
    exp.NEQ: _comparison(operator.ne),
    exp.LT: _comparison(operator.lt),
    exp.LTE: _comparison(operator.le),
    exp.GT: _comparison(operator.gt),
    exp.GTE: _comparison(operator.ge),
    exp.Add: _arithmetic("+"),
    exp.Sub: _arithmetic("-"),
    exp.Mul: _arithmetic("*"),
    exp.Div: _arithmetic("/"),
    exp.Mod: _arithmetic("%"),
    exp.Neg: _neg,
    exp.DPipe: _concat,
    exp.And: _logical(False),
    exp.Or: _logical(True),
    exp.Not: _not,
    exp.Is: _is,
    exp.Between: _between,
    exp.In: _in,
    exp.Like: _like,
    exp.ILike: _like,
    exp.Coalesce: _coalesce,
    exp.Abs: _abs,
    exp.Case: _case,
    exp.NullSafeEQ: _null_safe(True),
    exp.NullSafeNEQ: _null_safe(False),
    exp.Nullif: _nullif,
    exp.Subquery: _subquery_handler("compile_scalar"),
    exp.Exists: _subquery_handler("compile_exists"),
    exp.Upper: _text_function(str.upper, "text"),
    exp.Lower: _text_function(str.lower, "text"),
    exp.Length: _text_function(len, "int4"),
    exp.CurrentTimestamp: _clock("timestamptz"),
    exp.CurrentDate: _clock("date"),
    exp.Localtimestamp: _clock("timestamp"),
    exp.Anonymous: _anonymous,
    exp.ByteString: _string_literal,
    exp.RawString: _string_literal,
    exp.Dot: _qualified,
    exp.Operator: _operator,
    exp.Collate: _collate,
    exp.RegexpLike: _regex_match(False),
    exp.RegexpILike: _regex_match(True),
    exp.Array: _array_handler("compile_array"),
    exp.Bracket: _array_handler("compile_subscript"),
    exp.ArrayToString: _array_handler("compile_array_to_string"),
    exp.ArraySize: _array_size,
    exp.CurrentUser: _named_function("current_user"),
    exp.SessionUser: _named_function("session_user"),
    exp.CurrentSchema: _named_function("current_schema"),
    exp.CurrentDatabase: _named_function("current_database"),
    exp.CurrentCatalog: _named_function("current_database"),
    exp.CurrentVersion: _named_function("version"),
}
