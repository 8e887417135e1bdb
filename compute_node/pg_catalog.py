"""pg_catalog as read-only virtual tables computed from our catalog, for drivers and psql.

Each entry of TABLES has the shape of sources.INFORMATION_SCHEMA: (columns as (name, engine type),
produce(ctx) -> rows). Invariants: every row is derived from the catalog as the statement's snapshot
sees it, so pg_class lists exactly the tables a SELECT could read; object ids are stable for an
object's life (a table's oid is TableDef.oid, an index's its root page id); the built-in types and
namespaces carry PostgreSQL 15's own oids, so clients that hard-code them (psql, asyncpg) agree.
Columns are the ones drivers and psql's meta-commands read, not every column PostgreSQL has;
oid-typed columns are int8 and "char"/name columns text, the nearest types the engine has.
"""

from __future__ import annotations

from compute_node import sql_types as t
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
)

PG_CATALOG_NAMESPACE_OID = 11
PG_TOAST_NAMESPACE_OID = 99
PUBLIC_NAMESPACE_OID = 2200
INFORMATION_SCHEMA_NAMESPACE_OID = 13_000
SUPERUSER_OID = 10
POSTGRES_DATABASE_OID = 5
BTREE_AM_OID = 403
HEAP_AM_OID = 2

NAMESPACES = [(PG_CATALOG_NAMESPACE_OID, "pg_catalog"), (PG_TOAST_NAMESPACE_OID, "pg_toast"),
              (PUBLIC_NAMESPACE_OID, "public"), (INFORMATION_SCHEMA_NAMESPACE_OID, "information_schema")]

# typname, oid, typlen, array oid, category
TYPES = [
    ("bool", BOOL_OID, 1, 1000, "B"), ("bytea", BYTEA_OID, -1, 1001, "U"), ("int8", INT8_OID, 8, 1016, "N"),
    ("int2", INT2_OID, 2, 1005, "N"), ("int4", INT4_OID, 4, 1007, "N"), ("text", TEXT_OID, -1, 1009, "S"),
    ("oid", OID_OID, 4, 1028, "N"), ("float4", FLOAT4_OID, 4, 1021, "N"), ("float8", FLOAT8_OID, 8, 1022, "N"),
    ("varchar", VARCHAR_OID, -1, 1015, "S"), ("date", 1082, 4, 1182, "D"), ("timestamp", 1114, 8, 1115, "D"),
    ("timestamptz", 1184, 8, 1185, "D"), ("numeric", NUMERIC_OID, -1, 1231, "N"),
]
TYPE_OIDS_BY_NAME = {name: oid for name, oid, _, _, _ in TYPES}


def _tables(ctx):
    return sorted(ctx.catalog.tables(ctx.snapshot, ctx.xid).items())


def index_oid(table, index) -> int:
    return index.root_page_id or table.oid * 1000 + table.indexes.index(index) + 1


def _type_oid(type_name: str) -> int:
    return TYPE_OIDS_BY_NAME.get(type_name) or t.OIDS.get(type_name, TEXT_OID)


def _pg_namespace(ctx):
    return [[oid, name, SUPERUSER_OID] for oid, name in NAMESPACES]


def _pg_class(ctx):
    rows = []
    for name, table in _tables(ctx):
        rows.append([table.oid, name, PUBLIC_NAMESPACE_OID, SUPERUSER_OID, HEAP_AM_OID, "r", "p",
                     len(table.columns), bool(table.indexes), False, -1.0])
        for index in table.indexes:
            rows.append([index_oid(table, index), index.name, PUBLIC_NAMESPACE_OID, SUPERUSER_OID, BTREE_AM_OID,
                         "i", "p", len(index.columns), False, False, -1.0])
    return rows


def _pg_attribute(ctx):
    rows = []
    for _, table in _tables(ctx):
        for number, column in enumerate(table.columns, 1):
            type_modifier = column.type_modifier + 4 if column.type_name == "varchar" and column.type_modifier >= 0 else -1
            identity = {"always": "a", "by default": "d"}.get(column.identity or "", "")
            has_default = column.default is not None or bool(column.sequence and not column.identity)
            rows.append([table.oid, column.name, _type_oid(column.type_name), number,
                         column.not_null or column.name in table.primary_key, type_modifier, False, has_default,
                         identity, ""])
    return rows


def _pg_type(ctx):
    return [[oid, name, PG_CATALOG_NAMESPACE_OID, length, "b", category, ",", 0, 0, array_oid, -1, False]
            for name, oid, length, array_oid, category in TYPES]


def _pg_index(ctx):
    rows = []
    for _, table in _tables(ctx):
        for index in table.indexes:
            key = " ".join(str(table.column_index(name) + 1) for name in index.columns)
            rows.append([index_oid(table, index), table.oid, len(index.columns), index.unique, index.primary, key])
    return rows


def _pg_database(ctx):
    return [[POSTGRES_DATABASE_OID, "postgres", SUPERUSER_OID, 6, False, True]]


def _pg_roles(ctx):
    return [[SUPERUSER_OID, "postgres", True, True, True, True]]


TABLES = {
    "pg_namespace": ([("oid", "int8"), ("nspname", "text"), ("nspowner", "int8")], _pg_namespace),
    "pg_class": ([("oid", "int8"), ("relname", "text"), ("relnamespace", "int8"), ("relowner", "int8"),
                  ("relam", "int8"), ("relkind", "text"), ("relpersistence", "text"), ("relnatts", "int2"),
                  ("relhasindex", "bool"), ("relispartition", "bool"), ("reltuples", "float4")], _pg_class),
    "pg_attribute": ([("attrelid", "int8"), ("attname", "text"), ("atttypid", "int8"), ("attnum", "int2"),
                      ("attnotnull", "bool"), ("atttypmod", "int4"), ("attisdropped", "bool"), ("atthasdef", "bool"),
                      ("attidentity", "text"), ("attgenerated", "text")], _pg_attribute),
    "pg_type": ([("oid", "int8"), ("typname", "text"), ("typnamespace", "int8"), ("typlen", "int2"),
                 ("typtype", "text"), ("typcategory", "text"), ("typdelim", "text"), ("typrelid", "int8"),
                 ("typelem", "int8"), ("typarray", "int8"), ("typtypmod", "int4"), ("typnotnull", "bool")], _pg_type),
    "pg_index": ([("indexrelid", "int8"), ("indrelid", "int8"), ("indnatts", "int2"), ("indisunique", "bool"),
                  ("indisprimary", "bool"), ("indkey", "text")], _pg_index),
    "pg_database": ([("oid", "int8"), ("datname", "text"), ("datdba", "int8"), ("encoding", "int4"),
                     ("datistemplate", "bool"), ("datallowconn", "bool")], _pg_database),
    "pg_roles": ([("oid", "int8"), ("rolname", "text"), ("rolsuper", "bool"), ("rolinherit", "bool"),
                  ("rolcreaterole", "bool"), ("rolcreatedb", "bool")], _pg_roles),
}
for _columns, _produce in TABLES.values():
    assert len({name for name, _ in _columns}) == len(_columns), _columns
