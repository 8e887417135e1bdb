"""pg_catalog as read-only virtual tables computed from our catalog, for drivers and psql.

Each entry of TABLES has the shape of sources.INFORMATION_SCHEMA: (columns as (name, engine type),
produce(ctx) -> rows). Invariants: every row is derived from the catalog as the statement's snapshot
sees it, so pg_class lists exactly the tables a SELECT could read; object ids are stable for an
object's life (a table's oid is TableDef.oid, an index's its root page id, a sequence's its page id);
the built-in types, namespaces, roles and access methods carry PostgreSQL 15's own oids, so clients
that hard-code them (psql, asyncpg) agree. Columns are the ones drivers and psql's meta-commands read,
not every column PostgreSQL has; oid-typed columns are int8, "char"/name columns text, int2vector
columns text (PostgreSQL's text form, "1 2"). The objects the engine has none of (policies,
publications, inheritance, statistics objects, comments) are empty tables, so queries over them run.
The bootstrap superuser (oid 10) is the session's user: the engine keeps no owners, and in
PostgreSQL whoever created an object owns it.
"""

from __future__ import annotations

import dataclasses
import re
import weakref

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
DATABASE_OWNER_ROLE_OID = 6171  # pg_database_owner: owns the public schema in PostgreSQL 15
POSTGRES_DATABASE_OID = 5
TEMPLATE0_DATABASE_OID = 4
TEMPLATE1_DATABASE_OID = 1
BTREE_AM_OID = 403
HEAP_AM_OID = 2
DEFAULT_COLLATION_OID = 100
C_COLLATION_OID = 950
POSIX_COLLATION_OID = 951
UTF8_ENCODING = 6
ENCODING_NAMES = {0: "SQL_ASCII", 6: "UTF8", 8: "LATIN1"}
DATABASE_LOCALE = "C"  # strings compare by code point, as under PostgreSQL's C collation
DEFAULT_USER = "postgres"

NAMESPACES = [(PG_CATALOG_NAMESPACE_OID, "pg_catalog", SUPERUSER_OID),  # oid, name, owner
              (PG_TOAST_NAMESPACE_OID, "pg_toast", SUPERUSER_OID),
              (PUBLIC_NAMESPACE_OID, "public", DATABASE_OWNER_ROLE_OID),
              (INFORMATION_SCHEMA_NAMESPACE_OID, "information_schema", SUPERUSER_OID)]

# typname, oid, typlen, array oid, category
TYPES = [
    ("bool", BOOL_OID, 1, 1000, "B"), ("bytea", BYTEA_OID, -1, 1001, "U"),
    ("char", 18, 1, 1002, "Z"), ("name", 19, 64, 1003, "S"),
    ("int8", INT8_OID, 8, 1016, "N"), ("int2", INT2_OID, 2, 1005, "N"),
    ("int2vector", 22, -1, 1006, "A"), ("int4", INT4_OID, 4, 1007, "N"),
    ("text", TEXT_OID, -1, 1009, "S"), ("oid", OID_OID, 4, 1028, "N"),
    ("float4", FLOAT4_OID, 4, 1021, "N"), ("float8", FLOAT8_OID, 8, 1022, "N"),
    ("bpchar", 1042, -1, 1014, "S"), ("varchar", VARCHAR_OID, -1, 1015, "S"),
    ("date", 1082, 4, 1182, "D"), ("timestamp", 1114, 8, 1115, "D"),
    ("timestamptz", 1184, 8, 1185, "D"), ("numeric", NUMERIC_OID, -1, 1231, "N"),
    ("regclass", 2205, 4, 2210, "N"), ("regtype", 2206, 4, 2211, "N"),
    ("regnamespace", 4089, 4, 4090, "N"), ("regrole", 4096, 4, 4097, "N"),
]
TYPE_OIDS_BY_NAME = {name: oid for name, oid, _, _, _ in TYPES}
COLLATABLE_TYPE_OIDS = frozenset((TEXT_OID, VARCHAR_OID, 1042))  # and name, whose collation is C

# format_type(): the SQL names PostgreSQL prints for the built-in types
TYPE_DISPLAY = {"bool": "boolean", "int2": "smallint", "int4": "integer", "int8": "bigint", "float4": "real",
                "float8": "double precision", "varchar": "character varying", "bpchar": "character",
                "timestamp": "timestamp without time zone", "timestamptz": "timestamp with time zone",
                "char": '"char"'}


@dataclasses.dataclass(frozen=True, slots=True)
class Relation:
    """One pg_class row: a table ('r'), a view ('v'), one of a table's indexes ('i') or a sequence behind
    a column ('S')."""

    oid: int
    name: str
    kind: str
    table: object  # the TableDef it belongs to
    index: object = None  # the IndexDef, for an index
    column: object = None  # the ColumnDef a sequence serves


@dataclasses.dataclass(frozen=True, slots=True)
class View:
    """The catalog as one statement sees it: tables by name and every relation by oid."""

    tables: dict
    relations: dict  # oid -> Relation, in pg_class order


# [weak reference to ctx, View]: the last statement's view (engine calls take turns). Weak: a
# statement's context holds its snapshot, and a snapshot kept alive holds back pruning (heap.py).
_view_memo: list = [None, None]


def view(ctx) -> View:
    """The statement's View, computed once per statement context."""
    if _view_memo[0] is not None and _view_memo[0]() is ctx:
        return _view_memo[1]
    tables = dict(sorted(ctx.catalog.tables(ctx.snapshot, ctx.xid).items()))
    relations = {}
    for name, table in tables.items():
        relations[table.oid] = Relation(table.oid, name, "v" if table.is_view else "r", table)
        for index in table.indexes:
            relations[index_oid(table, index)] = Relation(index_oid(table, index), index.name, "i", table, index)
        for column in table.columns:
            sequence = sequence_name(column)
            if sequence is not None and column.sequence not in relations:
                relations[column.sequence] = Relation(column.sequence, sequence, "S", table, column=column)
    result = View(tables, relations)
    _view_memo[0], _view_memo[1] = weakref.ref(ctx), result
    return result


def index_oid(table, index) -> int:
    return index.root_page_id or table.oid * 1000 + table.indexes.index(index) + 1


_NEXTVAL = re.compile(r"^nextval\('((?:[^']|'')*)'(?:::regclass)?\)$", re.I)


def sequence_name(column) -> str | None:
    """The name of the sequence a SERIAL or identity column draws from (its DEFAULT names it)."""
    if not column.sequence or column.default is None:
        return None
    match = _NEXTVAL.match(column.default)
    return match.group(1).replace("''", "'") if match else None


def has_default(column) -> bool:
    """pg_attrdef has a row: a DEFAULT other than NULL, or SERIAL's nextval (identity is not a default)."""
    if column.identity:
        return False
    return column.default is not None and column.default.strip().upper() != "NULL"


def session_user(ctx) -> str:
    return (getattr(ctx, "settings", None) or {}).get("session_authorization") or DEFAULT_USER


def role_name(ctx, oid: int) -> str | None:
    return {SUPERUSER_OID: session_user(ctx), DATABASE_OWNER_ROLE_OID: "pg_database_owner"}.get(oid)


def namespace_name(oid: int) -> str | None:
    return next((name for namespace_oid, name, _ in NAMESPACES if namespace_oid == oid), None)


def type_oid(type_name: str) -> int:
    return TYPE_OIDS_BY_NAME.get(type_name) or t.OIDS.get(type_name, TEXT_OID)


def type_name_of(oid: int) -> str | None:
    for name, type_oid_, _, array_oid, _ in TYPES:
        if oid == type_oid_:
            return name
        if oid == array_oid:
            return "_" + name
    return None


def format_type(oid: int, typmod: int | None) -> str:
    """format_type(oid, typmod): the type as PostgreSQL prints it, with its modifier if it has one."""
    name = type_name_of(oid)
    if name is None:
        return "???"
    if name.startswith("_"):
        return format_type(next(o for _, o, _, a, _ in TYPES if a == oid), typmod) + "[]"
    shown = TYPE_DISPLAY.get(name, name)
    if typmod is None or typmod < 0:
        return shown
    if name in ("varchar", "bpchar"):
        return f"{shown}({typmod - 4})"
    if name == "numeric":
        precision, scale = t.numeric_precision_scale(typmod)
        return f"numeric({precision},{scale})"
    return shown


def column_typmod(column) -> int:
    """atttypmod: PostgreSQL's (varchar(n) and char(n) are n + 4; numeric(p,s) is already stored so)."""
    if column.type_name in ("varchar", "bpchar") and column.type_modifier >= 0:
        return column.type_modifier + 4
    if column.type_name == "numeric":
        return column.type_modifier
    return -1


def collation_of(type_oid_: int) -> int:
    if type_oid_ == TYPE_OIDS_BY_NAME["name"]:
        return C_COLLATION_OID
    return DEFAULT_COLLATION_OID if type_oid_ in COLLATABLE_TYPE_OIDS else 0


def attrdef_oid(table, number: int) -> int:
    return table.oid * 1000 + number


def default_node_tree(column) -> str:
    """adbin: the DEFAULT in a form pg_get_expr reads back (PostgreSQL's is an opaque node tree)."""
    return f"{{DEFAULT :type {column.type_name} :typmod {column.type_modifier} :expr {column.default}}}"


_NODE_TREE = re.compile(r"^\{DEFAULT :type (\S+) :typmod (-?\d+) :expr (.*)\}$", re.S)


def parse_node_tree(text: str) -> tuple[str, int, str] | None:
    """(engine type, type modifier, expression SQL) of an adbin value, or None for anything else."""
    match = _NODE_TREE.match(text)
    return (match.group(1), int(match.group(2)), match.group(3)) if match else None


# --- the tables ------------------------------------------------------------------------------


def _relations(ctx):
    return view(ctx).relations.values()


def _pg_namespace(ctx):
    return [[oid, name, owner, None] for oid, name, owner in NAMESPACES]


def _pg_class(ctx):
    rows = []
    for relation in _relations(ctx):
        table = relation.table
        if relation.kind == "r":
            am, natts, has_index, replident = HEAP_AM_OID, len(table.columns), bool(table.indexes), "d"
        elif relation.kind == "i":
            am, natts, has_index, replident = BTREE_AM_OID, len(relation.index.columns), False, "n"
        elif relation.kind == "v":
            am, natts, has_index, replident = 0, len(table.columns), False, "n"
        else:
            am, natts, has_index, replident = 0, 3, False, "n"
        view = relation.kind == "v"  # its query is a rule (_RETURN); it has no storage
        rows.append([relation.oid, relation.name, PUBLIC_NAMESPACE_OID, SUPERUSER_OID, am, relation.kind, "p", natts,
                     has_index, False, -1.0, 0, view, False, False, False, 0, 0, replident, 0, None, 0, None, None,
                     0, 0 if view else relation.oid])
    return rows


def _pg_attribute(ctx):
    rows = []
    for relation in _relations(ctx):
        if relation.kind in ("r", "v"):
            for number, column in enumerate(relation.table.columns, 1):
                rows.append(_attribute_row(relation.oid, number, column, relation.table))
        elif relation.kind == "i":
            for number, name in enumerate(relation.index.columns, 1):
                column = relation.table.columns[relation.table.column_index(name)]
                rows.append(_attribute_row(relation.oid, number, column, None))
    return rows


def _attribute_row(relation_oid: int, number: int, column, table) -> list:
    """A table's column (table given) or an index's key column (no constraints, no default)."""
    oid = type_oid(column.type_name)
    identity = {"always": "a", "by default": "d"}.get(column.identity or "", "") if table is not None else ""
    not_null = table is not None and (column.not_null or column.name in table.primary_key)
    defaulted = table is not None and has_default(column)
    length = next((length for _, type_oid_, length, *_ in TYPES if type_oid_ == oid), -1)
    return [relation_oid, column.name, oid, number, not_null, column_typmod(column), False, defaulted, identity, "",
            collation_of(oid), length, 0, False]


def _pg_attrdef(ctx):
    rows = []
    for relation in _relations(ctx):
        if relation.kind != "r":
            continue
        for number, column in enumerate(relation.table.columns, 1):
            if has_default(column):
                rows.append([attrdef_oid(relation.table, number), relation.oid, number, default_node_tree(column)])
    return rows


def _pg_type(ctx):
    rows = []
    for name, oid, length, array_oid, category in TYPES:
        collation = collation_of(oid)
        rows.append([oid, name, PG_CATALOG_NAMESPACE_OID, length, "b", category, ",", 0, 0, array_oid, -1, False,
                     collation, 0, SUPERUSER_OID])
        rows.append([array_oid, "_" + name, PG_CATALOG_NAMESPACE_OID, -1, "b", "A", ",", 0, oid, 0, -1, False,
                     collation, 0, SUPERUSER_OID])
    return rows


def _pg_index(ctx):
    rows = []
    for relation in _relations(ctx):
        if relation.kind == "i":
            table, index = relation.table, relation.index
            key = " ".join(str(table.column_index(name) + 1) for name in index.columns)
            rows.append([relation.oid, table.oid, len(index.columns), index.unique, index.primary, key,
                         False, True, False, len(index.columns), False, True, True, True, None, None, False])
    return rows


def _pg_constraint(ctx):
    rows = []
    for relation in _relations(ctx):
        index = relation.index
        if relation.kind == "i" and (index.primary or index.constraint):
            table = relation.table
            key = t.Array(table.column_index(name) + 1 for name in index.columns)
            rows.append([relation.oid, index.name, PUBLIC_NAMESPACE_OID, "p" if index.primary else "u", False, False,
                         True, table.oid, 0, relation.oid, 0, 0, key, None, True, 0, True])
    return rows


def _pg_am(ctx):
    return [[HEAP_AM_OID, "heap", "heap_tableam_handler", "t"], [BTREE_AM_OID, "btree", "bthandler", "i"]]


def _pg_collation(ctx):
    return [[DEFAULT_COLLATION_OID, "default", PG_CATALOG_NAMESPACE_OID, SUPERUSER_OID, "d", True, -1, None, None],
            [C_COLLATION_OID, "C", PG_CATALOG_NAMESPACE_OID, SUPERUSER_OID, "c", True, -1, "C", "C"],
            [POSIX_COLLATION_OID, "POSIX", PG_CATALOG_NAMESPACE_OID, SUPERUSER_OID, "c", True, -1, "POSIX", "POSIX"]]


def _pg_database(ctx):
    owner = session_user(ctx)
    template_acl = t.Array([f"=c/{owner}", f"{owner}=CTc/{owner}"])
    rows = []
    for oid, name, is_template, allow_connections, acl in (
            (POSTGRES_DATABASE_OID, "postgres", False, True, None),
            (TEMPLATE1_DATABASE_OID, "template1", True, True, template_acl),
            (TEMPLATE0_DATABASE_OID, "template0", True, False, template_acl)):
        rows.append([oid, name, SUPERUSER_OID, UTF8_ENCODING, is_template, allow_connections, DATABASE_LOCALE,
                     DATABASE_LOCALE, None, "c", acl, -1, 1663])
    return rows


def _pg_roles(ctx):
    return [[SUPERUSER_OID, session_user(ctx), True, True, True, True, True, True, -1, None, True],
            [DATABASE_OWNER_ROLE_OID, "pg_database_owner", False, True, False, False, False, False, -1, None, False]]


def _empty(ctx):
    return []


TABLES = {
    "pg_namespace": ([("oid", "int8"), ("nspname", "text"), ("nspowner", "int8"), ("nspacl", "text[]")],
                     _pg_namespace),
    "pg_class": ([("oid", "int8"), ("relname", "text"), ("relnamespace", "int8"), ("relowner", "int8"),
                  ("relam", "int8"), ("relkind", "text"), ("relpersistence", "text"), ("relnatts", "int2"),
                  ("relhasindex", "bool"), ("relispartition", "bool"), ("reltuples", "float4"),
                  ("relchecks", "int2"), ("relhasrules", "bool"), ("relhastriggers", "bool"),
                  ("relrowsecurity", "bool"), ("relforcerowsecurity", "bool"), ("reltablespace", "int8"),
                  ("reloftype", "int8"), ("relreplident", "text"), ("reltoastrelid", "int8"),
                  ("relpartbound", "text"), ("reltype", "int8"), ("relacl", "text[]"), ("reloptions", "text[]"),
                  ("relpages", "int4"), ("relfilenode", "int8")], _pg_class),
    "pg_attribute": ([("attrelid", "int8"), ("attname", "text"), ("atttypid", "int8"), ("attnum", "int2"),
                      ("attnotnull", "bool"), ("atttypmod", "int4"), ("attisdropped", "bool"), ("atthasdef", "bool"),
                      ("attidentity", "text"), ("attgenerated", "text"), ("attcollation", "int8"), ("attlen", "int2"),
                      ("attndims", "int4"), ("atthasmissing", "bool")], _pg_attribute),
    "pg_attrdef": ([("oid", "int8"), ("adrelid", "int8"), ("adnum", "int2"), ("adbin", "text")], _pg_attrdef),
    "pg_type": ([("oid", "int8"), ("typname", "text"), ("typnamespace", "int8"), ("typlen", "int2"),
                 ("typtype", "text"), ("typcategory", "text"), ("typdelim", "text"), ("typrelid", "int8"),
                 ("typelem", "int8"), ("typarray", "int8"), ("typtypmod", "int4"), ("typnotnull", "bool"),
                 ("typcollation", "int8"), ("typbasetype", "int8"), ("typowner", "int8")], _pg_type),
    "pg_index": ([("indexrelid", "int8"), ("indrelid", "int8"), ("indnatts", "int2"), ("indisunique", "bool"),
                  ("indisprimary", "bool"), ("indkey", "text"), ("indisclustered", "bool"), ("indisvalid", "bool"),
                  ("indisreplident", "bool"), ("indnkeyatts", "int2"), ("indisexclusion", "bool"),
                  ("indimmediate", "bool"), ("indisready", "bool"), ("indislive", "bool"), ("indexprs", "text"),
                  ("indpred", "text"), ("indnullsnotdistinct", "bool")], _pg_index),
    "pg_constraint": ([("oid", "int8"), ("conname", "text"), ("connamespace", "int8"), ("contype", "text"),
                       ("condeferrable", "bool"), ("condeferred", "bool"), ("convalidated", "bool"),
                       ("conrelid", "int8"), ("contypid", "int8"), ("conindid", "int8"), ("conparentid", "int8"),
                       ("confrelid", "int8"), ("conkey", "int2[]"), ("confkey", "int2[]"), ("conislocal", "bool"),
                       ("coninhcount", "int2"), ("connoinherit", "bool")], _pg_constraint),
    "pg_am": ([("oid", "int8"), ("amname", "text"), ("amhandler", "text"), ("amtype", "text")], _pg_am),
    "pg_collation": ([("oid", "int8"), ("collname", "text"), ("collnamespace", "int8"), ("collowner", "int8"),
                      ("collprovider", "text"), ("collisdeterministic", "bool"), ("collencoding", "int4"),
                      ("collcollate", "text"), ("collctype", "text")], _pg_collation),
    "pg_database": ([("oid", "int8"), ("datname", "text"), ("datdba", "int8"), ("encoding", "int4"),
                     ("datistemplate", "bool"), ("datallowconn", "bool"), ("datcollate", "text"), ("datctype", "text"),
                     ("daticulocale", "text"), ("datlocprovider", "text"), ("datacl", "text[]"),
                     ("datconnlimit", "int4"), ("dattablespace", "int8")], _pg_database),
    "pg_roles": ([("oid", "int8"), ("rolname", "text"), ("rolsuper", "bool"), ("rolinherit", "bool"),
                  ("rolcreaterole", "bool"), ("rolcreatedb", "bool"), ("rolcanlogin", "bool"),
                  ("rolreplication", "bool"), ("rolconnlimit", "int4"), ("rolvaliduntil", "timestamptz"),
                  ("rolbypassrls", "bool")], _pg_roles),
    "pg_auth_members": ([("roleid", "int8"), ("member", "int8"), ("grantor", "int8"), ("admin_option", "bool")],
                        _empty),
    "pg_description": ([("objoid", "int8"), ("classoid", "int8"), ("objsubid", "int4"), ("description", "text")],
                       _empty),
    "pg_inherits": ([("inhrelid", "int8"), ("inhparent", "int8"), ("inhseqno", "int4"),
                     ("inhdetachpending", "bool")], _empty),
    "pg_policy": ([("oid", "int8"), ("polname", "text"), ("polrelid", "int8"), ("polcmd", "text"),
                   ("polpermissive", "bool"), ("polroles", "int8[]"), ("polqual", "text"), ("polwithcheck", "text")],
                  _empty),
    "pg_statistic_ext": ([("oid", "int8"), ("stxrelid", "int8"), ("stxname", "text"), ("stxnamespace", "int8"),
                          ("stxowner", "int8"), ("stxstattarget", "int4"), ("stxkeys", "text"), ("stxkind", "text[]")],
                         _empty),
    "pg_publication": ([("oid", "int8"), ("pubname", "text"), ("pubowner", "int8"), ("puballtables", "bool"),
                        ("pubinsert", "bool"), ("pubupdate", "bool"), ("pubdelete", "bool"), ("pubtruncate", "bool"),
                        ("pubviaroot", "bool")], _empty),
    "pg_publication_namespace": ([("oid", "int8"), ("pnpubid", "int8"), ("pnnspid", "int8")], _empty),
    "pg_publication_rel": ([("oid", "int8"), ("prpubid", "int8"), ("prrelid", "int8"), ("prqual", "text"),
                            ("prattrs", "int2[]")], _empty),
}
EMPTY_TABLES = frozenset(name for name, (_, produce) in TABLES.items() if produce is _empty)
for _columns, _produce in TABLES.values():
    assert len({name for name, _ in _columns}) == len(_columns), _columns
