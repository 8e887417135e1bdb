"""pg_catalog's virtual tables, computed from table definitions: every row has its table's columns,
and the oids tie pg_class, pg_attribute, pg_index and pg_type together as PostgreSQL's do."""

from __future__ import annotations

import types

from compute_node import pg_catalog
from compute_node.catalog import ColumnDef, IndexDef, TableDef


def _context(*tables: TableDef):
    catalog = types.SimpleNamespace(tables=lambda snapshot, xid: {table.name: table for table in tables})
    return types.SimpleNamespace(catalog=catalog, snapshot=None, xid=None)


USERS = TableDef("users", 40, (ColumnDef("id", "int4", -1, True), ColumnDef("name", "varchar", 20, False),
                               ColumnDef("ok", "bool", -1, False, default="true")),
                 ("id",), (3, 1), (IndexDef("users_pkey", ("id",), True, 41, primary=True),))


def test_every_row_has_its_tables_columns():
    context = _context(USERS)
    for name, (columns, produce) in pg_catalog.TABLES.items():
        rows = produce(context)
        assert rows, name
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
    assert index == [classes["users_pkey"][0], USERS.oid, 1, True, True, "1"]
    namespaces = {row[0]: row[1] for row in pg_catalog.TABLES["pg_namespace"][1](context)}
    assert namespaces[classes["users"][2]] == "public"
