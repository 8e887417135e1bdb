"""SQL types of the engine: names, OIDs, and the casts between them (PostgreSQL's rules).

Invariants: a stored value always has its column's Python type (int for int2/int4/int8, float for
float4/float8, bool, str for text/varchar/bpchar, Decimal for numeric, datetime.date for date, a naive
datetime for timestamp, a UTC-aware datetime for timestamptz) and fits its range, length and typmod;
a value that does not fails with the SQLSTATE PostgreSQL uses. The engine (rows, B-tree keys) holds
these Python values, which compare natively; only the page/record encoding (aurora_db/pages.py)
turns them into msgpack extension types. bpchar values are stored blank-padded to their length and
compared with trailing blanks ignored. numeric(p,s)'s typmod is PostgreSQL's ((p << 16) | s) + 4.
"""

from __future__ import annotations

import datetime
import decimal
import math
import re

from aurora_db.errors import (
    DatatypeMismatch,
    DatabaseError,
    FeatureNotSupported,
    InvalidParameterValue,
    InvalidTextRepresentation,
    NumericValueOutOfRange,
    StringDataRightTruncation,
)
from aurora_db.pgwire import format_timestamp
from compute_node import backend as b

OIDS = {
    "int2": b.INT2_OID, "int4": b.INT4_OID, "int8": b.INT8_OID, "float4": b.FLOAT4_OID, "float8": b.FLOAT8_OID,
    "numeric": b.NUMERIC_OID, "bool": b.BOOL_OID, "text": b.TEXT_OID, "varchar": b.VARCHAR_OID, "unknown": b.TEXT_OID,
    "bpchar": 1042, "date": 1082, "timestamp": 1114, "timestamptz": 1184,
}
NAMES_BY_OID = {oid: name for name, oid in OIDS.items() if name != "unknown"}  # the types a column or $n may have
DISPLAY = {"int2": "smallint", "int4": "integer", "int8": "bigint", "float4": "real", "float8": "double precision",
           "numeric": "numeric", "bool": "boolean", "text": "text", "varchar": "character varying", "unknown": "text",
           "bpchar": "character", "date": "date", "timestamp": "timestamp without time zone",
           "timestamptz": "timestamp with time zone"}

# Types only expressions have (no column is of these types): one-dimensional arrays, "elem[]", and the
# object-identifier aliases, whose values are RegOid (an oid that prints as the object's name).
ARRAY_OIDS = {"bool": 1000, "int2": 1005, "int4": 1007, "int8": 1016, "text": 1009, "float4": 1021, "float8": 1022,
              "varchar": 1015, "bpchar": 1014, "numeric": 1231, "date": 1182, "timestamp": 1115, "timestamptz": 1185}
REG_TYPES = {"regclass": 2205, "regtype": 2206, "regnamespace": 4089, "regrole": 4096}
for _element, _oid in ARRAY_OIDS.items():
    OIDS[f"{_element}[]"] = _oid
    DISPLAY[f"{_element}[]"] = DISPLAY[_element] + "[]"
OIDS.update(REG_TYPES)
DISPLAY.update({name: name for name in REG_TYPES})
INTEGER_RANGES = {"int2": (-2**15, 2**15 - 1), "int4": (-2**31, 2**31 - 1), "int8": (-2**63, 2**63 - 1)}
RANGE_NAMES = {"int2": "smallint", "int4": "integer", "int8": "bigint"}
INTEGERS = ("int2", "int4", "int8")
FLOATS = ("float4", "float8")
NUMBERS = INTEGERS + FLOATS + ("numeric",)
STRINGS = ("text", "varchar", "unknown", "bpchar")
DATETIMES = ("date", "timestamp", "timestamptz")  # comparable with each other, widened left to right

# sqlglot DataType names -> ours
SQLGLOT_TYPES = {
    "SMALLINT": "int2", "INT": "int4", "BIGINT": "int8", "FLOAT": "float4", "DOUBLE": "float8",
    "DECIMAL": "numeric", "BOOLEAN": "bool", "TEXT": "text", "VARCHAR": "varchar", "CHAR": "bpchar",
    "BPCHAR": "bpchar", "NCHAR": "bpchar", "DATE": "date", "TIMESTAMP": "timestamp", "TIMESTAMPTZ": "timestamptz",
    "DATETIME": "timestamp",
}

NUMERIC_PRECISION_MAX = 1000  # PostgreSQL's NUMERIC_MAX_PRECISION for numeric(p,s)
NUMERIC_DISPLAY_SCALE_MAX = 1000  # NUMERIC_MAX_DISPLAY_SCALE
NUMERIC_SIGNIFICANT_DIGITS_MIN = 16  # NUMERIC_MIN_SIG_DIGITS: division keeps at least these
NUMERIC_CONTEXT = decimal.Context(prec=2 * NUMERIC_PRECISION_MAX + 2 * NUMERIC_DISPLAY_SCALE_MAX,
                                  Emax=decimal.MAX_EMAX, Emin=decimal.MIN_EMIN, traps=[decimal.InvalidOperation])
CHAR_LENGTH_MAX = 10_485_760  # PostgreSQL's MaxAttrSize for char(n) / varchar(n)
POSTGRES_EPOCH_DATE = datetime.date(2000, 1, 1)
UTC = datetime.timezone.utc


class InvalidDatetimeFormat(DatabaseError):
    sqlstate = "22007"


class DatetimeFieldOverflow(DatabaseError):
    sqlstate = "22008"


class CannotCoerce(DatabaseError):
    sqlstate = "42846"


def type_modifier(kind, type_name: str) -> int:
    """varchar(n) and char(n): n (char without a length is char(1)); numeric(p[,s]): PostgreSQL's
    typmod; -1 otherwise. An out-of-range length or precision is 22023, as in PostgreSQL."""
    params = [int(param.this.this) for param in kind.expressions]
    if type_name in ("varchar", "bpchar"):
        if not params:
            return 1 if type_name == "bpchar" and kind.this.name != "BPCHAR" else -1
        shown = "varchar" if type_name == "varchar" else "char"
        if params[0] < 1:
            raise InvalidParameterValue(f"length for type {shown} must be at least 1")
        if params[0] > CHAR_LENGTH_MAX:
            raise InvalidParameterValue(f"length for type {shown} cannot exceed {CHAR_LENGTH_MAX}")
        return params[0]
    if type_name == "numeric" and params:
        precision, scale = params[0], params[1] if len(params) > 1 else 0
        if not 1 <= precision <= NUMERIC_PRECISION_MAX:
            raise InvalidParameterValue(f"NUMERIC precision {precision} must be between 1 and "
                                        f"{NUMERIC_PRECISION_MAX}")
        if not 0 <= scale <= precision:
            raise FeatureNotSupported("NUMERIC with a negative scale or a scale above its precision is not supported")
        return numeric_typmod(precision, scale)
    if params and type_name not in ("timestamp", "timestamptz"):
        raise FeatureNotSupported(f"type modifier on {DISPLAY[type_name]} is not supported")
    if params:
        raise FeatureNotSupported("timestamp(p) is not supported yet")
    return -1


def numeric_typmod(precision: int, scale: int) -> int:
    return ((precision << 16) | (scale & 0xFFFF)) + 4


def numeric_precision_scale(typmod: int) -> tuple[int, int]:
    return (typmod - 4) >> 16, (typmod - 4) & 0xFFFF


def apply_numeric_typmod(value: decimal.Decimal, typmod: int) -> decimal.Decimal:
    """numeric(p,s): round half away from zero to s places; more than p-s integer digits is 22003."""
    if typmod < 0:
        return value
    precision, scale = numeric_precision_scale(typmod)
    rounded = value.quantize(decimal.Decimal(1).scaleb(-scale), rounding=decimal.ROUND_HALF_UP, context=NUMERIC_CONTEXT)
    if rounded != 0 and rounded.adjusted() >= precision - scale:
        raise NumericValueOutOfRange("numeric field overflow")
    return rounded


def numeric_div(a: decimal.Decimal, b: decimal.Decimal) -> decimal.Decimal:
    """PostgreSQL's numeric division: the result scale of select_div_scale, rounded half away from zero."""
    def weight_and_first(value):
        if value == 0:
            return 0, 0
        weight = value.adjusted() // 4  # base-10000 digit position of the first nonzero digit
        return weight, int(abs(value).scaleb(-4 * weight, context=NUMERIC_CONTEXT))
    weight1, first1 = weight_and_first(a)
    weight2, first2 = weight_and_first(b)
    qweight = weight1 - weight2 - (1 if first1 <= first2 else 0)
    scale = max(NUMERIC_SIGNIFICANT_DIGITS_MIN - qweight * 4, -min(a.as_tuple().exponent, 0),
                -min(b.as_tuple().exponent, 0), 0)
    scale = min(scale, NUMERIC_DISPLAY_SCALE_MAX)
    quotient = NUMERIC_CONTEXT.divide(a, b)
    return quotient.quantize(decimal.Decimal(1).scaleb(-scale), rounding=decimal.ROUND_HALF_UP, context=NUMERIC_CONTEXT)


def pad_bpchar(text: str, length: int, *, explicit: bool) -> str:
    """char(n): blank-padded to n; a longer value is cut if the excess is blanks (or the cast explicit)."""
    if length < 0:
        return text
    if len(text) > length:
        if not explicit and text[length:].strip(" "):
            raise StringDataRightTruncation(f"value too long for type character({length})")
        return text[:length]
    return text + " " * (length - len(text))


_DATE = re.compile(r"(\d{1,4})-(\d{1,2})-(\d{1,2})")
_TIME = re.compile(r"(\d{1,2}):(\d{2})(?::(\d{2})(?:\.(\d+))?)?")
_ZONE = re.compile(r"(?:z|utc|gmt|([+-])(\d{1,2})(?::?(\d{2}))?)", re.I)


def parse_datetime(text: str, type_name: str):
    """ISO 8601 input ('2024-01-02', '2024-01-02 03:04:05.5+02', 'T' separator, 'epoch'), as PostgreSQL
    reads it with DateStyle ISO and TimeZone UTC: malformed text is 22007, a field out of range 22008."""
    stripped = text.strip()
    display = DISPLAY[type_name]
    if stripped.lower() == "epoch":
        moment = datetime.datetime(1970, 1, 1)
        return moment.date() if type_name == "date" else moment.replace(tzinfo=UTC) if type_name == "timestamptz" \
            else moment
    match = _DATE.match(stripped)
    if match is None:
        raise InvalidDatetimeFormat(f'invalid input syntax for type {display}: "{text}"')
    rest = stripped[match.end():]
    hour = minute = second = micro = 0
    offset = None
    if rest:
        if rest[0] not in " Tt":
            raise InvalidDatetimeFormat(f'invalid input syntax for type {display}: "{text}"')
        rest = rest[1:].lstrip()
        time_match = _TIME.match(rest)
        if time_match is None:
            raise InvalidDatetimeFormat(f'invalid input syntax for type {display}: "{text}"')
        hour, minute = int(time_match.group(1)), int(time_match.group(2))
        second = int(time_match.group(3) or 0)
        fraction = time_match.group(4) or ""
        micro = round(int(fraction or 0) * 10 ** (6 - len(fraction))) if len(fraction) <= 6 else \
            int(decimal.Decimal("0." + fraction).scaleb(6).quantize(1, rounding=decimal.ROUND_HALF_EVEN))
        rest = rest[time_match.end():].strip()
        if rest:
            zone = _ZONE.fullmatch(rest)
            if zone is None:
                raise InvalidDatetimeFormat(f'invalid input syntax for type {display}: "{text}"')
            offset = 0
            if zone.group(1):
                offset = (int(zone.group(2)) * 60 + int(zone.group(3) or 0)) * (-1 if zone.group(1) == "-" else 1)
    year, month, day = (int(part) for part in match.groups())
    try:
        date = datetime.date(year, month, day)
        if hour > 24 or minute > 59 or second > 60 or (hour == 24 and (minute or second or micro)):
            raise ValueError
    except ValueError:
        raise DatetimeFieldOverflow(f'date/time field value out of range: "{text}"') from None
    if type_name == "date":
        return date
    moment = datetime.datetime(year, month, day) + datetime.timedelta(hours=hour, minutes=minute, seconds=second,
                                                                      microseconds=micro)
    if type_name == "timestamp":
        return moment
    return (moment - datetime.timedelta(minutes=offset or 0)).replace(tzinfo=UTC)


def datetime_to(value, target: str):
    """date -> timestamp -> timestamptz and back (TimeZone UTC)."""
    if target == "date":
        return value.date() if isinstance(value, datetime.datetime) else value
    if not isinstance(value, datetime.datetime):
        value = datetime.datetime(value.year, value.month, value.day)
    if target == "timestamp":
        return value.replace(tzinfo=None) if value.tzinfo is None else value.astimezone(UTC).replace(tzinfo=None)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def check_integer(value: int, type_name: str) -> int:
    low, high = INTEGER_RANGES[type_name]
    if not low <= value <= high:
        raise NumericValueOutOfRange(f"{RANGE_NAMES[type_name]} out of range")
    return value


class Array(tuple):
    """A one-dimensional SQL array value, subscripts from 1; str() is PostgreSQL's text form."""

    __slots__ = ()

    def __str__(self) -> str:
        return "{" + ",".join("NULL" if item is None else _array_item_text(to_text(item)) for item in self) + "}"


_ARRAY_QUOTED = frozenset('{},"\\ \t\n\r\v\f')


def _array_item_text(text: str) -> str:
    if text and text.upper() != "NULL" and not _ARRAY_QUOTED.intersection(text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


class RegOid(int):
    """A value of regclass, regtype, regnamespace or regrole: compares as its oid, prints as the name
    of the object it named when it was made (or as the number, for an oid naming nothing)."""

    def __new__(cls, oid: int, name: str | None):
        value = super().__new__(cls, oid)
        value.name = name if name is not None else str(oid)
        return value

    def __str__(self) -> str:
        return self.name

    __repr__ = __str__


def is_array(type_name: str) -> bool:
    return type_name.endswith("[]")


def parse_array(text: str, element_type: str) -> Array:
    """PostgreSQL's array input for one dimension: {a,"b c",NULL}; 22P02 when malformed."""
    stripped = text.strip()
    if len(stripped) < 2 or stripped[0] != "{" or stripped[-1] != "}":
        raise InvalidTextRepresentation(f'malformed array literal: "{text}"')
    body = stripped[1:-1]
    items = []
    position = 0
    while body.strip():
        item, quoted, position = _array_item(body, position, text)
        items.append(None if not quoted and item.upper() == "NULL" else parse_text(item, element_type))
        rest = body[position:].lstrip()
        if not rest:
            break
        if rest[0] != ",":
            raise InvalidTextRepresentation(f'malformed array literal: "{text}"')
        position = len(body) - len(rest) + 1
    return Array(items)


def _array_item(body: str, position: int, text: str) -> tuple[str, bool, int]:
    """One element from body[position:]: (its text, whether it was quoted, the position after it)."""
    while position < len(body) and body[position].isspace():
        position += 1
    if position < len(body) and body[position] == '"':
        chars = []
        position += 1
        while position < len(body) and body[position] != '"':
            if body[position] == "\\":
                position += 1
            if position < len(body):
                chars.append(body[position])
            position += 1
        if position >= len(body):
            raise InvalidTextRepresentation(f'malformed array literal: "{text}"')
        return "".join(chars), True, position + 1
    end = position
    while end < len(body) and body[end] not in ',{}"':
        end += 1
    item = body[position:end].strip()
    if not item or (end < len(body) and body[end] in '{}"'):
        raise InvalidTextRepresentation(f'malformed array literal: "{text}"')
    return item, False, end


def parse_text(text: str, type_name: str):
    """Input conversion of a string (a quoted literal or a text parameter) to a type."""
    if is_array(type_name):
        return parse_array(text, type_name[:-2])
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
            if "_" in stripped:  # Python's Decimal reads '1_000'; PostgreSQL 15 does not
                raise ValueError(text)
            value = decimal.Decimal(stripped)
            if not value.is_finite():
                raise FeatureNotSupported(f"numeric value {stripped} is not supported")
            return value
        if type_name in DATETIMES:
            return parse_datetime(text, type_name)
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
    if source == "bpchar" and target != "bpchar":
        value = value.rstrip(" ")  # char(n) to anything drops its padding, as PostgreSQL's rtrim1
    if is_array(target):
        return _cast_array(value, source, target)
    if source in STRINGS and target not in STRINGS:
        if target == "numeric":
            return apply_numeric_typmod(parse_text(value, target), type_modifier)
        return parse_text(value, target)
    if target in DATETIMES:
        if source in DATETIMES:
            return datetime_to(value, target)
        raise CannotCoerce(f"cannot cast type {DISPLAY[source]} to {DISPLAY[target]}")
    if source in DATETIMES and target not in STRINGS:
        raise CannotCoerce(f"cannot cast type {DISPLAY[source]} to {DISPLAY[target]}")
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
        if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
            raise FeatureNotSupported("numeric NaN and Infinity are not supported")
        number = decimal.Decimal(repr(value)) if isinstance(value, float) else decimal.Decimal(value)
        return apply_numeric_typmod(number, type_modifier)
    if target == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and explicit:
            return value != 0
        raise DatatypeMismatch(f"cannot cast type {DISPLAY[source]} to boolean")
    if target == "bpchar":
        return pad_bpchar(to_text(value), type_modifier, explicit=explicit)
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


def _cast_array(value, source: str, target: str) -> Array:
    """text to an array by array input; an array to another element type element by element."""
    if source in STRINGS:
        return parse_array(value, target[:-2])
    if not is_array(source):
        raise CannotCoerce(f"cannot cast type {DISPLAY[source]} to {DISPLAY[target]}")
    return Array(cast(item, source[:-2], target[:-2]) for item in value)


def assign(value, source: str, target: str, type_modifier: int):
    """Assignment cast (INSERT / UPDATE into a column): PostgreSQL's stricter rules."""
    if value is None:
        return None
    if source in STRINGS and target in STRINGS:
        return cast(value, "bpchar" if source == "bpchar" else "text", target, type_modifier, explicit=False)
    if source == "bool" and target != "bool" and target not in STRINGS:
        raise DatatypeMismatch(f"column is of type {DISPLAY[target]} but expression is of type boolean")
    if (source in DATETIMES) != (target in DATETIMES) and source not in STRINGS and target not in STRINGS:
        raise DatatypeMismatch(f"column is of type {DISPLAY[target]} but expression is of type {DISPLAY[source]}")
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
    if isinstance(value, decimal.Decimal):
        return format(value, "f")
    if isinstance(value, datetime.datetime):
        return format_timestamp(value)
    if isinstance(value, datetime.date):
        return value.isoformat()
    return str(value)

