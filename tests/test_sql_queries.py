"""Queries over several tables, checked against PostgreSQL 15 itself: joins (comma, INNER, LEFT,
USING), subqueries (scalar, correlated, EXISTS, IN with NULLs), compound queries (UNION, EXCEPT,
INTERSECT, with and without ALL) and the expressions sqllogictest uses. Same statements on both
servers, same rows, same SQLSTATEs."""

from __future__ import annotations

import itertools
import time

import psycopg
import pytest

from tests.test_sql import run, sqlstate_of

_names = itertools.count()

SCHEMA = [
    "CREATE TABLE {p}a (id int PRIMARY KEY, x int, s text)",
    "CREATE TABLE {p}b (id int PRIMARY KEY, a_id int, y int, f double precision)",
    "CREATE TABLE {p}c (k int PRIMARY KEY, b_id int, note varchar(10))",
    "INSERT INTO {p}a VALUES (1, 10, 'one'), (2, 20, 'two'), (3, NULL, 'three'), (4, 10, NULL)",
    "INSERT INTO {p}b VALUES (1, 1, 100, 1.5), (2, 1, 200, NULL), (3, 2, 300, 2.5), (4, NULL, 400, 0), (5, 9, 10, 10)",
    "INSERT INTO {p}c VALUES (1, 1, 'c1'), (2, 3, 'c2'), (3, 3, NULL), (4, 7, 'c4')",
]

QUERIES = [
    # joins
    "SELECT * FROM {p}a, {p}b WHERE {p}a.id = {p}b.a_id ORDER BY {p}b.id",
    "SELECT a.s, b.y FROM {p}a AS a JOIN {p}b AS b ON a.id = b.a_id WHERE b.y > 150 ORDER BY 2",
    "SELECT a.id, b.id, c.k FROM {p}a a, {p}b b, {p}c c WHERE a.id = b.a_id AND b.id = c.b_id ORDER BY 1, 2, 3",
    "SELECT a.id, b.id FROM {p}a a INNER JOIN {p}b b ON a.id = b.a_id AND b.f > 1 ORDER BY 1, 2",
    "SELECT a.id, b.id FROM {p}a a LEFT JOIN {p}b b ON a.id = b.a_id ORDER BY 1, 2",
    "SELECT a.id, b.id FROM {p}a a LEFT OUTER JOIN {p}b b ON a.id = b.a_id AND b.y > 150 ORDER BY 1, 2",
    "SELECT a.id, b.id FROM {p}a a LEFT JOIN {p}b b ON a.id = b.a_id WHERE b.id IS NULL ORDER BY 1",
    "SELECT a.id, b.id, c.k FROM {p}a a LEFT JOIN {p}b b ON a.id = b.a_id LEFT JOIN {p}c c ON c.b_id = b.id "
    "ORDER BY 1, 2, 3",
    "SELECT count(*) FROM {p}a, {p}b, {p}c",
    "SELECT a.id, b.id FROM {p}a a CROSS JOIN {p}b b WHERE a.x + b.y = 110 ORDER BY 1, 2",
    "SELECT a.id, b.id FROM {p}a a, {p}b b WHERE a.x < b.y / 10 AND b.f IS NOT NULL ORDER BY 1, 2",
    "SELECT * FROM {p}a JOIN {p}b USING (id) ORDER BY id",
    "SELECT a.x, count(*), sum(b.y) FROM {p}a a JOIN {p}b b ON b.a_id = a.id GROUP BY a.x ORDER BY 1",
    "SELECT a.id FROM {p}a a, {p}b b WHERE a.id = b.id AND a.id = 2",
    "SELECT a1.id, a2.id FROM {p}a a1, {p}a a2 WHERE a1.x = a2.x AND a1.id < a2.id",
    # subqueries
    "SELECT id, (SELECT count(*) FROM {p}b WHERE {p}b.a_id = {p}a.id) FROM {p}a ORDER BY 1",
    "SELECT id FROM {p}a WHERE EXISTS (SELECT 1 FROM {p}b WHERE {p}b.a_id = {p}a.id) ORDER BY 1",
    "SELECT id FROM {p}a WHERE NOT EXISTS (SELECT 1 FROM {p}b WHERE {p}b.a_id = {p}a.id) ORDER BY 1",
    "SELECT id FROM {p}a WHERE id IN (SELECT a_id FROM {p}b) ORDER BY 1",
    "SELECT id FROM {p}a WHERE id NOT IN (SELECT a_id FROM {p}b)",
    "SELECT id FROM {p}a WHERE id NOT IN (SELECT a_id FROM {p}b WHERE a_id IS NOT NULL) ORDER BY 1",
    "SELECT id, x IN (SELECT a_id * 10 FROM {p}b) FROM {p}a ORDER BY 1",
    "SELECT id, NULL IN (SELECT a_id FROM {p}b WHERE false), 1 IN (SELECT a_id FROM {p}b) FROM {p}a ORDER BY 1",
    "SELECT id FROM {p}b WHERE y > (SELECT avg(y) FROM {p}b) ORDER BY 1",
    "SELECT x, count(*) FROM {p}a GROUP BY x HAVING count(*) >= (SELECT count(*) FROM {p}c WHERE b_id = 3) ORDER BY 1",
    "SELECT id FROM {p}a ORDER BY (SELECT max(y) FROM {p}b WHERE {p}b.a_id = {p}a.id), id",
    "SELECT (SELECT s FROM {p}a WHERE id = 2), (SELECT s FROM {p}a WHERE id = 99)",
    "SELECT id, (SELECT max(x) FROM {p}a AS i WHERE i.x < o.x) FROM {p}a AS o ORDER BY 1",
    "SELECT id, CASE WHEN y > (SELECT avg(y) FROM {p}b) THEN 'hi' ELSE 'lo' END FROM {p}b ORDER BY 1",
    "SELECT * FROM (SELECT id * 2 AS d FROM {p}a) AS q WHERE d > 2 ORDER BY d",
    "SELECT a.id FROM {p}a a WHERE (SELECT count(*) FROM {p}b b WHERE b.a_id = a.id "
    "AND EXISTS (SELECT 1 FROM {p}c c WHERE c.b_id = b.id)) > 0 ORDER BY 1",
    # compound queries
    "SELECT id FROM {p}a UNION SELECT a_id FROM {p}b ORDER BY 1",
    "SELECT id FROM {p}a UNION ALL SELECT a_id FROM {p}b ORDER BY 1 DESC LIMIT 4",
    "SELECT x FROM {p}a UNION ALL SELECT x FROM {p}a ORDER BY x OFFSET 2",
    "SELECT id FROM {p}b EXCEPT SELECT id FROM {p}a",
    "SELECT x FROM {p}a EXCEPT ALL SELECT 10 ORDER BY 1",
    "SELECT x FROM {p}a INTERSECT SELECT x FROM {p}a ORDER BY 1",
    "SELECT x FROM {p}a INTERSECT ALL SELECT 10 UNION ALL SELECT 10 ORDER BY 1",
    "SELECT id, s FROM {p}a UNION SELECT k, note FROM {p}c ORDER BY 1, 2",
    "SELECT id FROM {p}a UNION SELECT f FROM {p}b ORDER BY 1",
    "SELECT 1 UNION SELECT 2 EXCEPT SELECT 1",
    "SELECT id FROM {p}a WHERE id IN (SELECT a_id FROM {p}b UNION SELECT b_id FROM {p}c) ORDER BY 1",
    # expressions
    "SELECT NULLIF(1, 1), NULLIF(1, 2), NULLIF(NULL, 1), 1 IS DISTINCT FROM NULL, NULL IS NOT DISTINCT FROM NULL",
    "SELECT id, x IS DISTINCT FROM 10, NULLIF(x, 10), +id, - -id FROM {p}a ORDER BY 1",
    "SELECT id, CASE x WHEN 10 THEN 'ten' WHEN 20 THEN 'twenty' END FROM {p}a ORDER BY 1",
    # VALUES in FROM (SQLAlchemy's many-row INSERT ... SELECT)
    "SELECT * FROM (VALUES (1, 'a'), (2, NULL), (3.5, 'c')) AS v(n, s) ORDER BY n",
    "SELECT v.*, column2 || '!' FROM (VALUES (1, 'x'), (2, 'y')) v ORDER BY 1 DESC",
    "SELECT a.id, v.label FROM {p}a a JOIN (VALUES (1, 'one'), (2, 'two')) AS v(id, label) ON v.id = a.id ORDER BY 1",
    "SELECT p0::varchar, n FROM (VALUES ('b'::varchar, 1), ('a', 0)) AS imp_sen(p0, n) ORDER BY n",
    "SELECT x + 1 FROM (VALUES (NULL), (NULL), (1)) AS v(x) ORDER BY 1",
    "SELECT d FROM (VALUES ('2020-01-01'), ('2020-01-02'), (DATE '2020-01-03')) AS v(d) ORDER BY 1",
    "SELECT a.id FROM {p}a a WHERE a.id IN (SELECT n FROM (VALUES (1.0), (2.5)) AS v(n)) ORDER BY 1",
]

ERRORS = [
    "SELECT id FROM {p}a, {p}b",
    "SELECT (SELECT id FROM {p}b)",
    "SELECT (SELECT id, y FROM {p}b)",
    "SELECT id FROM {p}a WHERE id IN (SELECT id, y FROM {p}b)",
    "SELECT id FROM {p}a UNION SELECT id, x FROM {p}a",
    "SELECT id FROM {p}a UNION SELECT s FROM {p}a",
    "SELECT * FROM {p}a, {p}a",
    "SELECT nope FROM {p}a a JOIN {p}b b ON a.id = b.id",
    "SELECT a.id FROM {p}a a JOIN {p}b b ON a.nope = b.id",
    "SELECT x, (SELECT count(*) FROM {p}b WHERE y = length(s)) FROM {p}a GROUP BY x",
    "SELECT * FROM (VALUES (1, 2), (3)) AS v(a, b)",
    "SELECT * FROM (VALUES (1)) AS v(a, b)",
    "SELECT * FROM (VALUES (1), ('x')) AS v(a)",
]


@pytest.fixture
def both(sql_cluster, postgres_server):
    """The same three small tables (named with a fresh prefix) on our cluster and on PostgreSQL 15."""
    prefix = f"q{next(_names)}_"
    ours, theirs = sql_cluster.connect(), postgres_server.connect()
    for connection in (ours, theirs):
        for statement in SCHEMA:
            connection.execute(statement.format(p=prefix))
    yield ours, theirs, prefix
    for connection in (ours, theirs):
        for table in "abc":
            connection.execute(f"DROP TABLE IF EXISTS {prefix}{table}")
        connection.close()


def _sorted_if_unordered(sql, rows):
    return rows if "ORDER BY" in sql or not isinstance(rows, list) else sorted(rows, key=repr)


def test_joins_subqueries_and_compound_queries_match_postgresql(both):
    ours, theirs, prefix = both
    for query in QUERIES:
        sql = query.format(p=prefix)
        assert _sorted_if_unordered(sql, run(ours, sql)) == _sorted_if_unordered(sql, run(theirs, sql)), sql


def test_query_errors_have_postgresqls_sqlstate(both):
    ours, theirs, prefix = both
    for query in ERRORS:
        sql = query.format(p=prefix)
        assert sqlstate_of(ours, sql) == sqlstate_of(theirs, sql), sql
        assert run(ours, "SELECT 1") == [(1,)]


def test_a_64_table_equality_chain_joins_in_under_a_second(sql_cluster):
    """Hash joins in a greedy order: 64 tables chained by equalities, written in the worst order."""
    tables = 64
    with sql_cluster.connect() as connection:
        with connection.transaction():
            for i in range(tables):
                connection.execute(f"CREATE TABLE chain_{i} (id int PRIMARY KEY, next int)")
                connection.execute(f"INSERT INTO chain_{i} VALUES " + ",".join(f"({k}, {(k * 7 + i) % 10})" for k in range(10)))
        names = ", ".join(f"chain_{i}" for i in reversed(range(tables)))
        chain = " AND ".join(f"chain_{i}.next = chain_{i + 1}.id" for i in range(tables - 1))
        sql = f"SELECT count(*), min(chain_{tables - 1}.id) FROM {names} WHERE {chain} AND chain_0.id = 3"
        started = time.monotonic()
        rows = run(connection, sql)
        elapsed = time.monotonic() - started
        assert rows[0][0] == 1
        assert elapsed < 1.0, f"{elapsed:.2f} s"
        plan = [line.strip(" ->") for (line,) in run(connection, "EXPLAIN " + sql)]
        assert plan[0] == "Aggregate", plan
        assert plan[1].startswith("Index Scan using chain_0_pkey on chain_0"), plan
        assert all(line.startswith("Hash Join") for line in plan[2:tables + 1]), plan


def test_an_uncorrelated_subquery_runs_once_per_statement(sql_cluster):
    """Its result is kept for the statement, so a large outer table does not rerun it per row."""
    with sql_cluster.connect() as connection:
        connection.execute("CREATE TABLE once_outer (id int PRIMARY KEY)")
        connection.execute("CREATE TABLE once_inner (id int PRIMARY KEY)")
        connection.execute("INSERT INTO once_outer VALUES " + ",".join(f"({i})" for i in range(2000)))
        connection.execute("INSERT INTO once_inner VALUES " + ",".join(f"({i})" for i in range(0, 2000, 2)))
        started = time.monotonic()
        rows = run(connection, "SELECT count(*) FROM once_outer WHERE id IN (SELECT id FROM once_inner) "
                               "AND id > (SELECT min(id) FROM once_inner)")
        assert rows == [(999,)]
        assert time.monotonic() - started < 2.0
        with pytest.raises(psycopg.errors.CardinalityViolation):
            connection.execute("SELECT (SELECT id FROM once_inner)")
