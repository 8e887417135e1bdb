"""The catalog queries drivers send on their own, recognized by shape and answered from our catalog.

asyncpg's pool sends `SELECT pg_advisory_unlock_all()` when a connection is released.
SQLAlchemy asks `select pg_catalog.version()`, `select current_schema()` and, before CREATE TABLE,
whether a table exists (a join of pg_class and pg_namespace with `= ANY (ARRAY[...])` and
pg_table_is_visible()); psycopg's TypeInfo.fetch (which SQLAlchemy calls for hstore) reads pg_type
through to_regtype(). Until the query engine runs such queries itself (pg_catalog virtual tables,
joins, ANY, those functions), this module answers exactly these shapes, so the drivers work unchanged.
Invariant: a query that is not one of these shapes is left to the engine (match() returns None).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable

from aurora_db.constants import SERVER_VERSION
from compute_node.backend import (
    BOOL_OID,
    BYTEA_OID,
    FLOAT4_OID,
    FLOAT8_OID,
    INT2_OID,
    INT4_OID,
    INT8_OID,
    NUMERIC_OID,
    OID_OID,
    TEXT_OID,
    VARCHAR_OID,
    Column,
)

SERVER_VERSION_TEXT = f"PostgreSQL {SERVER_VERSION} (aurora-db) on x86_64-pc-linux-gnu, compiled by CPython, 64-bit"
CURRENT_SCHEMA = "public"
CURRENT_DATABASE = "postgres"

# typname -> (oid, array oid), for the types the engine stores or drivers ask about.
BUILTIN_TYPES = {
    "bool": (BOOL_OID, 1000), "bytea": (BYTEA_OID, 1001), "int8": (INT8_OID, 1016), "int2": (INT2_OID, 1005),
    "int4": (INT4_OID, 1007), "text": (TEXT_OID, 1009), "oid": (OID_OID, 1028), "float4": (FLOAT4_OID, 1021),
    "float8": (FLOAT8_OID, 1022), "varchar": (VARCHAR_OID, 1015), "numeric": (NUMERIC_OID, 1231),
    "date": (1082, 1182), "timestamp": (1114, 1115), "timestamptz": (1184, 1185),
}
_TYPE_ALIASES = {"boolean": "bool", "bigint": "int8", "smallint": "int2", "integer": "int4", "int": "int4",
                 "real": "float4", "double precision": "float8", "character varying": "varchar",
                 "decimal": "numeric", "timestamp without time zone": "timestamp",
                 "timestamp with time zone": "timestamptz"}
_REGTYPE_NAMES = {"int2": "smallint", "int4": "integer", "int8": "bigint", "float4": "real",
                  "float8": "double precision", "bool": "boolean", "varchar": "character varying",
                  "timestamp": "timestamp without time zone", "timestamptz": "timestamp with time zone"}


@dataclasses.dataclass(frozen=True, slots=True)
class Canned:
    """A recognized query: its parameters, its result columns, and how to answer it."""

    param_oids: list[int]
    columns: list[Column]
    answer: Callable[[list, dict, dict], list[tuple]]  # (params, tables by name, settings) -> rows


def _normalized(sql: str) -> str:
    spaced = sql.replace("(", " ( ").replace(")", " ) ").replace(",", " , ")
    return " ".join(spaced.split()).rstrip(";").strip()


VOID_OID = 2278


def _constant(name: str, type_oid: int, value) -> Canned:
    return Canned([], [Column(name, type_oid)], lambda params, tables, settings: [(value,)])


_CONSTANTS = {
    "select pg_catalog.version ( )": ("version", SERVER_VERSION_TEXT),
    "select version ( )": ("version", SERVER_VERSION_TEXT),
    "select current_schema ( )": ("current_schema", CURRENT_SCHEMA),
    "select pg_catalog.current_schema ( )": ("current_schema", CURRENT_SCHEMA),
    "select current_database ( )": ("current_database", CURRENT_DATABASE),
    "select pg_catalog.current_database ( )": ("current_database", CURRENT_DATABASE),
}

_TYPE_INFO = re.compile(
    r"^select typname as name , oid , typarray as array_oid , oid::regtype::text as regtype , typdelim as delimiter "
    r"from pg_type t where t\.oid = to_regtype \( \$1 \) order by t\.oid$")

_HAS_TABLE = re.compile(
    r"^select pg_catalog\.pg_class\.relname from pg_catalog\.pg_class join pg_catalog\.pg_namespace "
    r"on pg_catalog\.pg_namespace\.oid = pg_catalog\.pg_class\.relnamespace "
    r"where pg_catalog\.pg_class\.relname in \( (?P<names>[^()]*) \) "
    r"and pg_catalog\.pg_class\.relkind = any \( array\[(?P<kinds>[^\]]*)\] \)"
    r"(?P<visible> and pg_catalog\.pg_table_is_visible \( pg_catalog\.pg_class\.oid \))?"
    r" and pg_catalog\.pg_namespace\.nspname (?P<op>!=|<>|=) (?P<schema>\S+)$")

_VALUE = re.compile(r"^\s*(?:\$(?P<param>\d+)|'(?P<literal>(?:[^']|'')*)')(?:::[a-z ]+)?\s*$")


def _value_getter(item: str) -> Callable[[list], str] | None:
    match = _VALUE.match(item)
    if match is None:
        return None
    if match.group("param"):
        index = int(match.group("param")) - 1
        return lambda params: params[index]
    literal = match.group("literal").replace("''", "'")
    return lambda params: literal


def _param_count(sql: str) -> int:
    return max((int(n) for n in re.findall(r"\$(\d+)", sql)), default=0)


def _type_info(normalized: str) -> Canned:
    columns = [Column("name", TEXT_OID), Column("oid", OID_OID), Column("array_oid", OID_OID),
               Column("regtype", TEXT_OID), Column("delimiter", TEXT_OID)]

    def answer(params, tables, settings):
        name = (params[0] or "").strip().lower()
        name = _TYPE_ALIASES.get(name, name)
        if name not in BUILTIN_TYPES:
            return []
        oid, array_oid = BUILTIN_TYPES[name]
        return [(name, oid, array_oid, _REGTYPE_NAMES.get(name, name), ",")]

    return Canned([TEXT_OID], columns, answer)


def _has_table(match: re.Match, normalized: str) -> Canned | None:
    names = [_value_getter(item) for item in match.group("names").split(",")]
    kinds = [_value_getter(item) for item in match.group("kinds").split(",")]
    schema = _value_getter(match.group("schema"))
    if any(getter is None for getter in names + kinds) or schema is None:
        return None
    excluding = match.group("op") != "="

    def answer(params, tables, settings):
        wanted_kinds = {kind(params) for kind in kinds}
        wanted_schema = schema(params)
        in_public = wanted_schema != "public" if excluding else wanted_schema == "public"
        if not in_public:
            return []
        return [(name(params),) for name in names
                if name(params) in tables and ("v" if tables[name(params)].is_view else "r") in wanted_kinds]

    return Canned([TEXT_OID] * _param_count(normalized), [Column("relname", TEXT_OID)], answer)


def match(sql: str) -> Canned | None:
    """The answer to one of the recognized driver queries, or None for anything else."""
    normalized = _normalized(sql)
    lowered = normalized.lower()
    if lowered in _CONSTANTS:
        name, value = _CONSTANTS[lowered]
        return _constant(name, TEXT_OID, value)
    if lowered in ("select pg_advisory_unlock_all ( )", "select pg_catalog.pg_advisory_unlock_all ( )"):
        return _constant("pg_advisory_unlock_all", VOID_OID, "")  # no advisory locks: none to release
    if not lowered.startswith("select") or "pg_" not in lowered:
        return None
    if _TYPE_INFO.match(lowered):
        return _type_info(normalized)
    found = _HAS_TABLE.match(lowered)
    if found:
        return _has_table(found, lowered)
    return None
