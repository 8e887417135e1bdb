"""pg_catalog's virtual tables, computed from table definitions: every row has its table's columns,
and the oids tie pg_class, pg_attribute, pg_index and pg_type together as PostgreSQL's do; types,
identifiers and column defaults print as PostgreSQL 15's format_type, quote_ident and pg_get_expr do."""

from __future__ import annotations

import types

import pytest
import sqlglot

from compute_node import deparse, pg_catalog
from compute_node import sql_types as t
from compute_node.catalog import ColumnDef, IndexDef, TableDef
from compute_node.catalog_functions import quote_ident


class _Context(types.SimpleNamespace):
    """A statement context's catalog part (a class of its own: pg_catalog remembers a context weakly)."""


def _context(*tables: TableDef):
    catalog = types.SimpleNamespace(tables=lambda snapshot, xid: {table.name: table for table in tables})
    return _Context(catalog=catalog, snapshot=None, xid=None)


USERS = TableDef("users", 40, (ColumnDef("id", "int4", -1, True), ColumnDef("name", "varchar", 20, False),
                               ColumnDef("ok", "bool", -1, False, default="true")),
                 ("id",), (3, 1), (IndexDef("users_pkey", ("id",), True, 41, primary=True),))


def test_every_row_has_its_tables_columns():
    context = _context(USERS)
    for name, (columns, produce) in pg_catalog.TABLES.items():
        rows = produce(context)
        assert bool(rows) == (name not in pg_catalog.EMPTY_TABLES), name
        assert all(len(row) == len(columns) for row in rows), name


def test_oids_tie_tables_columns_indexes_and_types_together():
    context = _context(USERS)
    classes = {row[1]: row for row in pg_catalog.TABLES["pg_class"][1](context)}
    assert classes["users"][0] == USERS.oid and classes["users"][5] == "r"
    assert classes["users_pkey"][5] == "i"
    attributes = [row for row in pg_catalog.TABLES["pg_attribute"][1](context) if row[0] == USERS.oid]
    type_names = {row[0]: row[1] for row in pg_catalog.TABLES["pg_type"][1](context)}
    assert [(row[1], type_names[row[2]], row[3], row[4], row[5], row[7]) for row in attributes] == [
        ("id", "int4", 1, True, -1, False), ("name", "varchar", 2, False, 24, False), ("ok", "bool", 3, False, -1, True)]
    [index] = pg_catalog.TABLES["pg_index"][1](context)
    assert index[:6] == [classes["users_pkey"][0], USERS.oid, 1, True, True, "1"]
    namespaces = {row[0]: row[1] for row in pg_catalog.TABLES["pg_namespace"][1](context)}
    assert namespaces[classes["users"][2]] == "public"


ITEMS = TableDef("items", 50, (ColumnDef("id", "int4", -1, True, "nextval('items_id_seq'::regclass)", None, 51),
                               ColumnDef("code", "varchar", 20, False),
                               ColumnDef("price", "numeric", t.numeric_typmod(10, 2), False, "0"),
                               ColumnDef("tag", "text", -1, False, "NULL"),
                               ColumnDef("n", "int8", -1, True, "nextval('items_n_seq'::regclass)", "always", 52)),
                 ("id",), (4, 1), (IndexDef("items_pkey", ("id",), True, 53, primary=True, constraint=True),
                                   IndexDef("items_code_key", ("code",), True, 54, constraint=True),
                                   IndexDef("items_code_price", ("code", "price"), False, 55)))


def test_sequences_defaults_and_constraints_follow_the_columns():
    """A SERIAL or identity column's sequence is a relation of its own; a DEFAULT NULL and an identity
    are no default (pg_attrdef); PRIMARY KEY and UNIQUE indexes are constraints, a plain index is not."""
    context = _context(ITEMS)
    kinds = {row[1]: row[5] for row in pg_catalog.TABLES["pg_class"][1](context)}
    assert kinds == {"items": "r", "items_pkey": "i", "items_code_key": "i", "items_code_price": "i",
                     "items_id_seq": "S", "items_n_seq": "S"}
    defaults = [(row[2], row[3]) for row in pg_catalog.TABLES["pg_attrdef"][1](context)]
    assert [number for number, _ in defaults] == [1, 3]
    assert pg_catalog.parse_node_tree(defaults[0][1]) == ("int4", -1, "nextval('items_id_seq'::regclass)")
    constraints = {row[1]: (row[3], list(row[12])) for row in pg_catalog.TABLES["pg_constraint"][1](context)}
    assert constraints == {"items_pkey": ("p", [1]), "items_code_key": ("u", [2])}
    typmods = {row[1]: row[5] for row in pg_catalog.TABLES["pg_attribute"][1](context) if row[0] == ITEMS.oid}
    assert typmods == {"id": -1, "code": 24, "price": t.numeric_typmod(10, 2), "tag": -1, "n": -1}


def test_types_print_as_format_type_prints_them():
    assert pg_catalog.format_type(23, -1) == "integer"
    assert pg_catalog.format_type(1043, 24) == "character varying(20)"
    assert pg_catalog.format_type(1042, 7) == "character(3)"
    assert pg_catalog.format_type(1700, t.numeric_typmod(10, 2)) == "numeric(10,2)"
    assert pg_catalog.format_type(1184, None) == "timestamp with time zone"
    assert pg_catalog.format_type(1007, -1) == "integer[]"
    assert pg_catalog.format_type(424242, -1) == "???"


def test_identifiers_are_quoted_as_quote_ident_quotes_them():
    assert [quote_ident(name) for name in ("a", "t_1", "Order", "select", "two words", 'x"y')] == [
        "a", "t_1", '"Order"', '"select"', '"two words"', '"x""y"']


# (column type, DEFAULT as written, as PostgreSQL 15's \d shows it): observed on PostgreSQL 15
DEFAULTS_SHOWN = [
    ("int", "1+2", "1 + 2"), ("text", "'a' || 'b'", "'a'::text || 'b'::text"), ("int", "'5'", "5"),
    ("timestamp", "'2024-01-02'", "'2024-01-02 00:00:00'::timestamp without time zone"),
    ("bool", "'yes'", "true"), ("numeric", "'2'", "'2'::numeric"), ("numeric(5,2)", "2", "2"),
    ("bigint", "5000000000", "'5000000000'::bigint"), ("float8", "-1.5", "'-1.5'::numeric"),
    ("int", "-(4)", "'-4'::integer"), ("text", "upper('x')", "upper('x'::text)"), ("numeric", "1e3", "'1000'::numeric"),
    ("int", "coalesce(null, 3)", "COALESCE(NULL::integer, 3)"), ("text", "'it''s'", "'it''s'::text"),
    ("bigint", "1+2", "(1 + 2)"), ("varchar(10)", "'n/' || 'a'", "(('n/'::text || 'a'::text))"),
    ("char(4)", "'a' || 'b'", "(('a'::text || 'b'::text))"), ("varchar(5)", "upper('x')", "upper('x'::text)"),
    ("int", "1 - (2 - 3)", "1 - (2 - 3)"), ("int", "1 - (2 + 3) * 4", "1 - (2 + 3) * 4"),
    ("bool", "((1 = 1 OR 2 = 2) AND 3 = 3)", "(1 = 1 OR 2 = 2) AND 3 = 3"), ("bool", "(NOT (1 = 2))", "NOT 1 = 2"),
    ("int", "(1+2) + 2.5", "((1 + 2)::numeric + 2.5)"), ("int", "5 - -3", "5 - '-3'::integer"),
    ("int", "5::bigint", "5::bigint"), ("numeric", "3.0::numeric(4,1)", "3.0::numeric(4,1)"),
    ("timestamptz", "CURRENT_TIMESTAMP", "CURRENT_TIMESTAMP"), ("date", "CURRENT_DATE + 1", "CURRENT_DATE + 1"),
    ("text", "CASE WHEN true THEN 'a' ELSE 'b' END", "\nCASE\n    WHEN true THEN 'a'::text\n    ELSE 'b'::text\nEND"),
    ("int", "nextval('t_id_seq'::regclass)", "nextval('t_id_seq'::regclass)"),
]


@pytest.mark.parametrize("column_type, written, shown", DEFAULTS_SHOWN)
def test_defaults_print_as_pg_get_expr_prints_them(column_type, written, shown):
    kind = sqlglot.parse_one(f"CAST(x AS {column_type})", read="postgres").to
    type_name = t.SQLGLOT_TYPES[kind.this.name]
    stored = sqlglot.parse_one(written, read="postgres").sql(dialect="postgres")  # as the catalog keeps it
    assert deparse.default_expression(stored, type_name, t.type_modifier(kind, type_name), pretty=True) == shown


def test_defaults_outside_pretty_mode_parenthesize_every_operator():
    assert deparse.default_expression("2 * 3 + 1", "int4", -1, pretty=False) == "((2 * 3) + 1)"
    assert deparse.default_expression("NOT TRUE", "bool", -1, pretty=False) == "(NOT true)"
