"""One-dimensional arrays in expressions: ARRAY[...], ARRAY(SELECT ...), subscripts, `x op ANY (array)`,
and the array functions psql and drivers call (array_to_string, array_upper, array_lower,
array_length, cardinality).

Values are sql_types.Array (a tuple, subscripts from 1) of the element type's values; an array's
type is "elem[]". Invariants: a subscript outside the array, or a NULL one, gives NULL, as in
PostgreSQL; `x = ANY (array)` follows IN's NULL rules (NULL unless some element matches, when an
element or x is NULL); functions are strict (NULL in, NULL out) where PostgreSQL's are.
"""

from __future__ import annotations

from sqlglot import exp

from aurora_db.errors import DatatypeMismatch, FeatureNotSupported, UndefinedFunction
from compute_node import sql_types as t


def _compile(node, scope, expected=None):
    from compute_node.expressions import compile_expr
    return compile_expr(node, scope, expected)


def _array_operand(node, scope, what: str, expected: str | None = None):
    fn, type_name = _compile(node, scope, expected)
    if type_name == "unknown":
        raise FeatureNotSupported(f"{what} of an untyped literal is not supported")
    if not t.is_array(type_name):
        raise UndefinedFunction(f"{what} needs an array, not type {t.DISPLAY[type_name]}")
    return fn, type_name


def compile_array(node: exp.Array, scope, expected):
    """ARRAY[a, b, ...] (elements of one type) or ARRAY(SELECT one column)."""
    items = node.expressions
    if len(items) == 1 and isinstance(items[0], (exp.Select, exp.Union, exp.Except, exp.Intersect)):
        return _array_of_query(items[0], scope)
    element_hint = expected[:-2] if expected and t.is_array(expected) else None
    compiled = [_compile(item, scope, element_hint) for item in items]
    known = {type_name for _, type_name in compiled if type_name != "unknown"}
    if len(known) > 1:
        raise DatatypeMismatch(f"ARRAY types {' and '.join(t.DISPLAY[k] for k in sorted(known))} cannot be matched")
    element = known.pop() if known else (element_hint or "text")
    if element not in t.ARRAY_OIDS:
        raise FeatureNotSupported(f"arrays of type {t.DISPLAY[element]} are not supported")
    fns = [fn if type_name == element else _compile(item, scope, element)[0]
           for item, (fn, type_name) in zip(items, compiled)]
    return (lambda row, params: t.Array(fn(row, params) for fn in fns)), element + "[]"


def _array_of_query(query, scope):
    from compute_node import subqueries
    plan = subqueries.subplan(query, scope)
    if len(plan.columns) != 1:
        raise DatatypeMismatch("subquery must return only one column")
    element = plan.out_types[0] if plan.out_types[0] != "unknown" else "text"
    if element not in t.ARRAY_OIDS:
        raise FeatureNotSupported(f"arrays of type {t.DISPLAY[element]} are not supported")
    rows_for = subqueries.runner(plan, scope)
    return (lambda row, params: t.Array(values[0] for values in rows_for(row))), element + "[]"


def compile_subscript(node: exp.Bracket, scope, expected):
    """array[i]: the element, NULL outside the array. sqlglot stores a literal subscript 0-based."""
    if len(node.expressions) != 1 or isinstance(node.expressions[0], exp.Slice):
        raise FeatureNotSupported("array slices are not supported")
    array_fn, array_type = _array_operand(node.this, scope, "subscript")
    subscript = node.expressions[0]
    offset = 1 if isinstance(subscript, exp.Literal) and not subscript.is_string else 0
    index_fn, index_type = _compile(subscript, scope, "int4")
    if index_type not in t.INTEGERS and index_type != "unknown":
        raise DatatypeMismatch("array subscript must have type integer")

    def element(row, params):
        array, index = array_fn(row, params), index_fn(row, params)
        if array is None or index is None:
            return None
        position = int(index) + offset
        return array[position - 1] if 1 <= position <= len(array) else None
    return element, array_type[:-2]


def compile_any(node: exp.Expression, scope, compare, symbol: str):
    """`x op ANY (array)` for a comparison node whose right side is exp.Any; `compare(a, b)` is op."""
    inner = node.expression.this
    if isinstance(inner, exp.Paren):
        inner = inner.this
    if isinstance(inner, (exp.Select, exp.Subquery)):
        if symbol != "=":
            raise FeatureNotSupported(f"{symbol} ANY (subquery) is not supported")
        from compute_node import subqueries
        return subqueries.compile_in(exp.In(this=node.this.copy(), query=inner.copy()), scope, "bool")
    left_fn, left = _compile(node.this, scope)
    element_hint = "text" if left == "unknown" else left  # x = ANY ('{1,2}'): an array of x's type
    hint = element_hint + "[]" if element_hint in t.ARRAY_OIDS else None
    array_fn, array_type = _array_operand(inner, scope, "ANY", hint)
    element = array_type[:-2]
    if left == "unknown":
        left_fn, left = _compile(node.this, scope, element)
    if _type_class(left) != _type_class(element):
        raise UndefinedFunction(f"operator does not exist: {t.DISPLAY[left]} {symbol} {t.DISPLAY[element]}")
    # a numeric beside a float compares as float8, as the scalar operators do
    value_key = float if left == "numeric" and element in t.FLOATS else None
    item_key = float if element == "numeric" and left in t.FLOATS else None

    def any_matches(row, params):
        value = left_fn(row, params)
        array = array_fn(row, params)
        if array is None:
            return None
        if value is None:
            return None if array else False
        if value_key is not None:
            value = value_key(value)
        saw_null = False
        for item in array:
            if item is None:
                saw_null = True
            elif compare(value, item if item_key is None else item_key(item)):
                return True
        return None if saw_null else False
    return any_matches, "bool"


def _type_class(type_name):
    if type_name in t.NUMBERS or type_name in t.REG_TYPES:
        return "number"
    if type_name in t.STRINGS:
        return "string"
    return type_name


def compile_array_to_string(node: exp.ArrayToString, scope, expected):
    """array_to_string(array, delimiter [, null_string]): NULL elements are skipped unless null_string."""
    array_fn, _ = _array_operand(node.this, scope, "array_to_string")
    delimiter_fn, _ = _compile(node.expression, scope, "text")
    null_node = node.args.get("null")
    null_fn = _compile(null_node, scope, "text")[0] if null_node is not None else (lambda row, params: None)

    def joined(row, params):
        array, delimiter = array_fn(row, params), delimiter_fn(row, params)
        if array is None or delimiter is None:
            return None
        null_text = null_fn(row, params)
        items = [t.to_text(item) if item is not None else null_text for item in array]
        return delimiter.join(item for item in items if item is not None)
    return joined, "text"


def _dimension_function(name: str, answer):
    """array_upper/array_lower/array_length(array, dimension): NULL for an empty array or another dimension."""
    def handler(node, scope, expected):
        args = _arguments(node)
        if len(args) != 2:
            raise UndefinedFunction(f"function {name}() takes an array and a dimension")
        array_fn, _ = _array_operand(args[0], scope, name)
        dimension_fn, _ = _compile(args[1], scope, "int4")

        def value(row, params):
            array, dimension = array_fn(row, params), dimension_fn(row, params)
            if array is None or dimension is None or dimension != 1 or not array:
                return None
            return answer(array)
        return value, "int4"
    return handler


def _cardinality(node, scope, expected):
    args = _arguments(node)
    if len(args) != 1:
        raise UndefinedFunction("function cardinality() takes one array")
    array_fn, _ = _array_operand(args[0], scope, "cardinality")
    return (lambda row, params: None if (array := array_fn(row, params)) is None else len(array)), "int4"


def _arguments(node) -> list:
    if isinstance(node, exp.Anonymous):
        return list(node.expressions)
    return [arg for arg in (node.this, node.args.get("expression")) if arg is not None] + list(node.expressions)


FUNCTIONS = {
    "array_upper": _dimension_function("array_upper", len),
    "array_lower": _dimension_function("array_lower", lambda array: 1),
    "array_length": _dimension_function("array_length", len),
    "cardinality": _cardinality,
}
