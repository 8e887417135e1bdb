"""Index scans, checked against PostgreSQL 15: queries whose WHERE pins the leading columns of a
secondary index (unique or not, multi-column, over nullable columns) or of the primary key, or
bounds a leading column, return what PostgreSQL returns, with NULLs, cross-type comparisons
(int against numeric, text against an unknown literal) and MVCC: rows updated and deleted by open
and committed transactions. EXPLAIN on our side shows that each such query uses the index."""

from __future__ import annotations

import datetime
import decimal
import itertools

import pytest

from tests.test_sql_schema import outcome, run_script

_prefixes = itertools.count()

SCHEMA = """
CREATE TABLE {p}t (id int PRIMARY KEY, a int, b text, c numeric(8,2), d date, e bigint, f varchar(10), g boolean)
CREATE INDEX {p}t_a ON {p}t (a)
CREATE INDEX {p}t_ab ON {p}t (a, b)
CREATE UNIQUE INDEX {p}t_c ON {p}t (c)
CREATE UNIQUE INDEX {p}t_ef ON {p}t (e, f)
CREATE INDEX {p}t_d ON {p}t (d)
CREATE INDEX {p}t_g ON {p}t (g)
INSERT INTO {p}t SELECT n, n % 7, 'b' || (n % 3), n * 1.25, DATE '2024-01-01' + n, n % 11, 'f' || (n % 4), n % 2 = 0 FROM generate_series(1, 300) n
INSERT INTO {p}t VALUES (1001, NULL, NULL, NULL, NULL, NULL, NULL, NULL), (1002, NULL, 'b1', NULL, NULL, 3, NULL, true)
INSERT INTO {p}t VALUES (1003, 3, NULL, 1000.5, NULL, 3, 'f1', NULL), (1004, 3, 'b1', -2, '2023-12-31', -1, 'f1', false)
CREATE TABLE {p}k (x int, y text, z int, PRIMARY KEY (x, y))
INSERT INTO {p}k SELECT n % 20, 'y' || (n % 5), n FROM generate_series(1, 100) n
"""

# (query, the index EXPLAIN must name)
QUERIES = [
    ("SELECT * FROM {p}t WHERE id = 17", "{p}t_pkey"),
    ("SELECT * FROM {p}t WHERE id = 17.0", "{p}t_pkey"),
    ("SELECT * FROM {p}t WHERE id = 17.5", "{p}t_pkey"),
    ("SELECT * FROM {p}t WHERE 17 = id", "{p}t_pkey"),
    ("SELECT id FROM {p}t WHERE id = '18'", "{p}t_pkey"),
    ("SELECT id FROM {p}t WHERE id = 5000000000", "{p}t_pkey"),
    ("SELECT id FROM {p}t WHERE id = NULL", "{p}t_pkey"),
    ("SELECT id FROM {p}t WHERE id < 5 ORDER BY id", "{p}t_pkey"),
    ("SELECT id FROM {p}t WHERE id <= 4.5 ORDER BY id", "{p}t_pkey"),
    ("SELECT id FROM {p}t WHERE id > 297.5 ORDER BY id", "{p}t_pkey"),
    ("SELECT id FROM {p}t WHERE id >= 298 AND id < 1002 ORDER BY id", "{p}t_pkey"),
    ("SELECT id FROM {p}t WHERE id BETWEEN 10 AND 12 ORDER BY id", "{p}t_pkey"),
    ("SELECT id FROM {p}t WHERE id BETWEEN 12 AND 10", "{p}t_pkey"),
    ("SELECT id FROM {p}t WHERE id > NULL", "{p}t_pkey"),
    ("SELECT id, b FROM {p}t WHERE a = 3 ORDER BY id", "{p}t_a"),
    ("SELECT id FROM {p}t WHERE a = 3.0 ORDER BY id", "{p}t_a"),
    ("SELECT id FROM {p}t WHERE a = 3.5 ORDER BY id", "{p}t_a"),
    ("SELECT id FROM {p}t WHERE a = 3 AND b = 'b1' ORDER BY id", "{p}t_ab"),
    ("SELECT id FROM {p}t WHERE b = 'b1' AND a = 3 AND id > 100 ORDER BY id", "{p}t_ab"),
    ("SELECT id FROM {p}t WHERE a = 3 AND b > 'b0' ORDER BY id", "{p}t_ab"),
    ("SELECT id FROM {p}t WHERE a = 3 AND b < 'b1' ORDER BY id", "{p}t_ab"),
    ("SELECT id FROM {p}t WHERE a = 3 AND b IS NULL ORDER BY id", "{p}t_a"),
    ("SELECT id FROM {p}t WHERE a < 1 ORDER BY id", "{p}t_a"),
    ("SELECT id FROM {p}t WHERE a >= 6 AND a <= 6.5 ORDER BY id", "{p}t_a"),
    ("SELECT id FROM {p}t WHERE a > 5 AND a > 2 AND a < 100 ORDER BY id", "{p}t_a"),
    ("SELECT count(*) FROM {p}t WHERE a BETWEEN 2 AND 4", "{p}t_a"),
    ("SELECT id FROM {p}t WHERE c = 12.5", "{p}t_c"),
    ("SELECT id FROM {p}t WHERE c = 10", "{p}t_c"),
    ("SELECT id FROM {p}t WHERE c = '12.50'", "{p}t_c"),
    ("SELECT id, c FROM {p}t WHERE c > 370 ORDER BY id", "{p}t_c"),
    ("SELECT id FROM {p}t WHERE c < 0 ORDER BY id", "{p}t_c"),
    ("SELECT id FROM {p}t WHERE c BETWEEN 1 AND 5 ORDER BY id", "{p}t_c"),
    ("SELECT id FROM {p}t WHERE e = 3 ORDER BY id", "{p}t_ef"),
    ("SELECT id FROM {p}t WHERE e = 3 AND f = 'f1' ORDER BY id", "{p}t_ef"),
    ("SELECT id FROM {p}t WHERE e = 3::bigint AND f = 'f1'::text ORDER BY id", "{p}t_ef"),
    ("SELECT id FROM {p}t WHERE e = 3 AND f >= 'f2' ORDER BY id", "{p}t_ef"),
    ("SELECT id FROM {p}t WHERE d = '2024-01-31'", "{p}t_d"),
    ("SELECT id FROM {p}t WHERE d < DATE '2024-01-03' ORDER BY id", "{p}t_d"),
    ("SELECT id FROM {p}t WHERE d BETWEEN '2024-02-01' AND '2024-02-03' ORDER BY id", "{p}t_d"),
    ("SELECT id FROM {p}t WHERE g = true AND id < 9 ORDER BY id", "{p}t_g"),
    ("SELECT count(*) FROM {p}t WHERE g = false", "{p}t_g"),
    ("SELECT x, y, z FROM {p}k WHERE x = 3 ORDER BY z", "{p}k_pkey"),
    ("SELECT z FROM {p}k WHERE x = 3 AND y = 'y3' ORDER BY z", "{p}k_pkey"),
    ("SELECT z FROM {p}k WHERE x = 3 AND y > 'y1' ORDER BY z", "{p}k_pkey"),
    ("SELECT z FROM {p}k WHERE x BETWEEN 18 AND 30 ORDER BY z", "{p}k_pkey"),
    ("SELECT t.id, k.z FROM {p}t t JOIN {p}k k ON k.x = t.a WHERE t.id = 10 ORDER BY k.z", "{p}t_pkey"),
    ("SELECT id FROM {p}t t WHERE EXISTS (SELECT 1 FROM {p}k k WHERE k.x = t.id AND k.y = 'y2') ORDER BY id", None),
    ("SELECT id, (SELECT max(z) FROM {p}k WHERE x = t.a) AS m FROM {p}t t WHERE id < 4 ORDER BY id", "{p}t_pkey"),
]


@pytest.fixture
def tables(sql_cluster, postgres_server):
    prefix = f"ixs{next(_prefixes)}_"
    ours, theirs = sql_cluster.connect(), postgres_server.connect()
    run_script(ours, theirs, SCHEMA, prefix)
    yield ours, theirs, prefix
    for connection in (ours, theirs):
        connection.execute(f"DROP TABLE {prefix}t, {prefix}k")
        connection.close()


def _uses(connection, sql: str, index: str) -> bool:
    plan = "\n".join(line for (line,) in connection.execute("EXPLAIN " + sql).fetchall())
    return f"Index Scan using {index} " in plan


def test_index_scans_return_what_postgresql_returns(tables):
    ours, theirs, prefix = tables
    for query, index in QUERIES:
        sql = query.format(p=prefix)
        assert outcome(ours, sql) == outcome(theirs, sql), sql
        if index is not None:
            assert _uses(ours, sql, index.format(p=prefix)), sql


def test_index_scans_with_typed_parameters_match_postgresql(tables):
    """Parameters bound by the driver (int, numeric, text, date) reach the index as their own types."""
    ours, theirs, prefix = tables
    cases = [
        ("SELECT id FROM {p}t WHERE a = %s ORDER BY id", [4]),
        ("SELECT id FROM {p}t WHERE a = %s ORDER BY id", [decimal.Decimal("4.5")]),
        ("SELECT id FROM {p}t WHERE a = %s AND b = %s ORDER BY id", [4, "b2"]),
        ("SELECT id FROM {p}t WHERE a = %s ORDER BY id", [None]),
        ("SELECT id FROM {p}t WHERE c > %s ORDER BY id", [decimal.Decimal("371.25")]),
        ("SELECT id FROM {p}t WHERE id BETWEEN %s AND %s ORDER BY id", [7, 9]),
        ("SELECT id FROM {p}t WHERE d = %s", [datetime.date(2024, 1, 11)]),
        ("SELECT z FROM {p}k WHERE x = %s AND y = %s ORDER BY z", [7, "y2"]),
    ]
    for query, params in cases:
        sql = query.format(p=prefix)
        for prepare in (False, True):
            mine = ours.execute(sql, params, prepare=prepare).fetchall()
            assert mine == theirs.execute(sql, params).fetchall(), (sql, params)


def test_updates_and_deletes_through_an_index_match_postgresql(tables):
    ours, theirs, prefix = tables
    run_script(ours, theirs, """
UPDATE {p}t SET b = 'moved' WHERE a = 2 AND b = 'b1' RETURNING id, b
UPDATE {p}t SET a = 100 WHERE a = 5 RETURNING id
DELETE FROM {p}t WHERE c BETWEEN 10 AND 20 RETURNING id
UPDATE {p}t SET c = c + 1000 WHERE id = 40 RETURNING c
UPDATE {p}t SET c = 51 WHERE id = 41
UPDATE {p}t SET c = 50 WHERE id = 41
SELECT id, a, b FROM {p}t WHERE a = 100 ORDER BY id
SELECT id, b FROM {p}t WHERE a = 2 ORDER BY id
SELECT id FROM {p}t WHERE a = 2 AND b = 'moved' ORDER BY id
SELECT id FROM {p}t WHERE c <= 25 ORDER BY id
SELECT id, c FROM {p}t WHERE c = 1050
SELECT id, c FROM {p}t WHERE c = 50
DELETE FROM {p}k WHERE x = 4 AND y = 'y4' RETURNING z
SELECT count(*) FROM {p}k WHERE x = 4
""", prefix)


def _both(pair, sql: str, prefix: str):
    ours, theirs = pair
    sql = sql.format(p=prefix)
    mine = outcome(ours, sql)
    assert mine == outcome(theirs, sql), sql
    return mine


def test_index_scans_see_what_their_snapshot_sees(tables, sql_cluster, postgres_server):
    """A writer updates and deletes indexed rows in an open transaction: it reads its own changes
    through the indexes, a reader keeps reading the committed rows, and after COMMIT (or ROLLBACK)
    both read the outcome; the same steps on both servers give the same rows."""
    ours, theirs, prefix = tables
    writer = (ours, theirs)
    reader = (sql_cluster.connect(), postgres_server.connect())
    reads = [
        "SELECT id, a, b FROM {p}t WHERE a = 6 ORDER BY id",
        "SELECT id, a, b FROM {p}t WHERE a = 6 AND b = 'b0' ORDER BY id",
        "SELECT id, c FROM {p}t WHERE c = 15",
        "SELECT id, c FROM {p}t WHERE c = 9999",
        "SELECT id, c FROM {p}t WHERE c BETWEEN 14 AND 16 ORDER BY id",
        "SELECT id FROM {p}t WHERE id = 12",
        "SELECT id, e, f FROM {p}t WHERE e = 5 AND f = 'f0' ORDER BY id",
    ]
    changes = [
        "UPDATE {p}t SET a = 6 WHERE id = 1",
        "UPDATE {p}t SET b = 'b0' WHERE a = 6 AND b = 'b1'",
        "UPDATE {p}t SET c = 9999 WHERE c = 15",
        "DELETE FROM {p}t WHERE id = 12",
        "INSERT INTO {p}t (id, a, b, c, e, f) VALUES (2000, 6, 'b0', 15, 5, 'f0')",
        "DELETE FROM {p}t WHERE e = 5 AND f = 'f0' AND id < 100",
    ]
    try:
        for ending in ("ROLLBACK", "COMMIT"):
            _both(writer, "BEGIN", prefix)
            for change in changes:
                _both(writer, change, prefix)
            for sql in reads:
                _both(writer, sql, prefix)
                _both(reader, sql, prefix)
            _both(writer, ending, prefix)
            for sql in reads:
                _both(reader, sql, prefix)
                _both(writer, sql, prefix)
        _both(reader, "BEGIN ISOLATION LEVEL REPEATABLE READ", prefix)
        for sql in reads:
            _both(reader, sql, prefix)
        _both(writer, "UPDATE {p}t SET a = 6, c = 15 WHERE id = 2000", prefix)
        _both(writer, "UPDATE {p}t SET a = 0 WHERE a = 6 AND id < 20", prefix)
        for sql in reads:
            _both(reader, sql, prefix)
        _both(reader, "COMMIT", prefix)
        for sql in reads:
            _both(reader, sql, prefix)
    finally:
        for connection in reader:
            connection.close()


def test_conditions_an_index_cannot_answer_are_filters(tables):
    """OR, IS NULL, <> and a condition between two columns use no index; a float value and a NaN one
    (which falls back to the full scan) give the same rows."""
    ours, theirs, prefix = tables
    for query in ["SELECT id FROM {p}t WHERE a = 3 OR a = 4 ORDER BY id",
                  "SELECT id FROM {p}t WHERE a IS NULL ORDER BY id",
                  "SELECT id FROM {p}t WHERE a <> 3 AND id < 10 ORDER BY id",
                  "SELECT id FROM {p}t WHERE a = e ORDER BY id",
                  "SELECT id FROM {p}t WHERE id = 3e0",
                  "SELECT id FROM {p}t WHERE id = 'NaN'::float8",
                  "SELECT id FROM {p}t WHERE a > 'NaN'::float8"]:
        sql = query.format(p=prefix)
        assert outcome(ours, sql) == outcome(theirs, sql), sql
    plan = ours.execute(f"EXPLAIN SELECT id FROM {prefix}t WHERE a = 3 OR a = 4").fetchall()
    assert plan[0][0].startswith(f"Seq Scan on {prefix}t"), plan
