"""SQL types of the engine: names, OIDs, and the casts between them (PostgreSQL's rules).

Invariants: a stored value always has its column's Python type (int for int2/int4/int8, float for
float4/float8, bool, str for text/varchar, Decimal for numeric) and fits its range and length;
a value that does not fails with the SQLSTATE PostgreSQL uses.
"""

from __future__ import annotations

import decimal
import math

from aurora_db.errors import (
    DatatypeMismatch,
    FeatureNotSupported,
    InvalidTextRepresentation,
    NumericValueOutOfRange,
    StringDataRightTruncation,
)
from compute_node import backend as b

OIDS = {
    "int2": b.INT2_OID, "int4": b.INT4_OID, "int8": b.INT8_OID, "float4": b.FLOAT4_OID, "float8": b.FLOAT8_OID,
    "numeric": b.NUMERIC_OID, "bool": b.BOOL_OID, "text": b.TEXT_OID, "varchar": b.VARCHAR_OID, "unknown": b.TEXT_OID,
}
NAMES_BY_OID = {oid: name for name, oid in OIDS.items() if name != "unknown"}
DISPLAY = {"int2": "smallint", "int4": "integer", "int8": "bigint", "float4": "real", "float8": "double precision",
           "numeric": "numeric", "bool": "boolean", "text": "text", "varchar": "character varying", "unknown": "text"}
INTEGER_RANGES = {"int2": (-2**15, 2**15 - 1), "int4": (-2**31, 2**31 - 1), "int8": (-2**63, 2**63 - 1)}
RANGE_NAMES = {"int2": "smallint", "int4": "integer", "int8": "bigint"}
INTEGERS = ("int2", "int4", "int8")
FLOATS = ("float4", "float8")
NUMBERS = INTEGERS + FLOATS + ("numeric",)
STRINGS = ("text", "varchar", "unknown")

# sqlglot DataType names -> ours
SQLGLOT_TYPES = {
    "SMALLINT": "int2", "INT": "int4", "BIGINT": "int8", "FLOAT": "float4", "DOUBLE": "float8",
    "DECIMAL": "numeric", "BOOLEAN": "bool", "TEXT": "text", "VARCHAR": "varchar", "CHAR": "varchar",
}


def check_integer(value: int, type_name: str) -> int:
    low, high = INTEGER_RANGES[type_name]
    if not low <= value <= high:
        raise NumericValueOutOfRange(f"{RANGE_NAMES[type_name]} out of range")
    return value


def parse_text(text: str, type_name: str):
    """Input conversion of a string (a quoted literal or a text parameter) to a type."""
    stripped = text.strip()
    try:
        if type_name in INTEGERS:
            return check_integer(int(stripped), type_name)
        if type_name in FLOATS:
            lowered = stripped.lower()
            special = {"nan": math.nan, "infinity": math.inf, "+infinity": math.inf, "-infinity": -math.inf,
                       "inf": math.inf, "-inf": -math.inf}
            return special[lowered] if lowered in special else float(stripped)
        if type_name == "numeric":
            return decimal.Decimal(stripped)
        if type_name == "bool":
            lowered = stripped.lower()
            if lowered in ("t", "true", "yes", "on", "1", "y"):
                return True
            if lowered in ("f", "false", "no", "off", "0", "n"):
                return False
            raise ValueError(text)
    except (ValueError, decimal.InvalidOperation):
        raise InvalidTextRepresentation(f'invalid input syntax for type {DISPLAY[type_name]}: "{text}"') from None
    return text


def cast(value, source: str, target: str, type_modifier: int = -1, *, explicit: bool = True):
    """Convert a value between types; None stays None."""
    if value is None:
        return None
    if source in STRINGS and target not in STRINGS:
        return parse_text(value, target)
    if target in INTEGERS:
        if isinstance(value, bool):
            if not explicit or target == "int2":
                raise DatatypeMismatch(f"cannot cast type boolean to {DISPLAY[target]}")
            return int(value)
        if isinstance(value, float):
            if math.isnan(value) or math.isinf(value):
                raise NumericValueOutOfRange(f"{RANGE_NAMES[target]} out of range")
            value = round(value)  # PostgreSQL rounds half to even, like Python
        elif isinstance(value, decimal.Decimal):
            value = int(value.to_integral_value(rounding=decimal.ROUND_HALF_UP))
        return check_integer(int(value), target)
    if target in FLOATS:
        if isinstance(value, bool):
            raise DatatypeMismatch(f"cannot cast type boolean to {DISPLAY[target]}")
        return float(value)
    if target == "numeric":
        if isinstance(value, bool):
            raise DatatypeMismatch("cannot cast type boolean to numeric")
        return decimal.Decimal(repr(value)) if isinstance(value, float) else decimal.Decimal(value)
    if target == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and explicit:
            return value != 0
        raise DatatypeMismatch(f"cannot cast type {DISPLAY[source]} to boolean")
    if target in ("text", "varchar"):
        text = to_text(value)
        if target == "varchar" and type_modifier >= 0 and len(text) > type_modifier:
            if explicit:
                return text[:type_modifier]
            if text[type_modifier:].strip(" "):
                raise StringDataRightTruncation(f"value too long for type character varying({type_modifier})")
            return text[:type_modifier]
        return text
    raise FeatureNotSupported(f"cast to {target} is not supported")


def assign(value, source: str, target: str, type_modifier: int):
    """Assignment cast (INSERT / UPDATE into a column): PostgreSQL's stricter rules."""
    if value is None:
        return None
    if source in STRINGS and target in STRINGS:
        return cast(value, "text", target, type_modifier, explicit=False)
    if source == "bool" and target != "bool" and target not in STRINGS:
        raise DatatypeMismatch(f"column is of type {DISPLAY[target]} but expression is of type boolean")
    if source in NUMBERS and target == "bool":
        raise DatatypeMismatch(f"column is of type boolean but expression is of type {DISPLAY[source]}")
    if source in NUMBERS + ("bool",) and target in ("text", "varchar") and source != "unknown":
        return cast(value, source, target, type_modifier, explicit=False)
    return cast(value, source, target, type_modifier, explicit=False)


def to_text(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        text = repr(value)
        return text[:-2] if text.endswith(".0") else text
    return str(value)
