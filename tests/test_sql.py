"""SQL over the wire, checked against PostgreSQL 15 itself: the same statements on both servers
must give the same rows, the same types (psycopg decodes by the OIDs each server sends) and the
same SQLSTATEs. Runs against a real cluster whose writer has a 64-page buffer cache."""

from __future__ import annotations

import concurrent.futures
import itertools

import psycopg
import pytest

_names = itertools.count()

SCHEMA = """
CREATE TABLE {t} (id int PRIMARY KEY, name varchar(20) NOT NULL, score double precision, flag boolean,
                  small smallint, big bigint, note text, ratio real)
"""
ROWS = """
INSERT INTO {t} VALUES
 (1, 'alpha', 1.5, true, 1, 10000000000, 'x', 0.5),
 (2, 'beta', NULL, false, -2, -5, NULL, 1.25),
 (3, 'gamma', 2.25, NULL, 3, 7, 'hello', NULL),
 (4, 'delta', -0.75, true, NULL, 0, '', 3),
 (5, 'epsilon', 100, false, 5, 9223372036854775807, 'y', -1),
 (6, 'zeta', 0, true, -6, 42, 'z', 2.5),
 (7, 'eta', 1e10, NULL, 7, NULL, NULL, 0.125)
"""

QUERIES = [
    "SELECT * FROM {t} ORDER BY id",
    "SELECT id, name FROM {t} WHERE score > 1 ORDER BY id",
    "SELECT id FROM {t} WHERE score IS NULL OR flag IS NULL ORDER BY id",
    "SELECT id, score IS NOT NULL, flag IS NOT TRUE, flag IS FALSE, note IS NULL FROM {t} ORDER BY id",
    "SELECT id FROM {t} WHERE note IS NOT NULL AND NOT flag IS NULL ORDER BY id",
    "SELECT id FROM {t} WHERE NOT (flag AND score > 0) ORDER BY id",
    "SELECT id FROM {t} WHERE flag OR score < 0 ORDER BY 1",
    "SELECT id, small / 2, small % 4, -small, small * 3 + 1 FROM {t} ORDER BY id",
    "SELECT id, big / 3, big - 1 FROM {t} WHERE big < 1000 ORDER BY id",
    "SELECT id, score * 2, score / 4, ratio + 1 FROM {t} ORDER BY id",
    "SELECT 7 / 2, -7 / 2, 7 % -3, -7 % 3, 7.0 / 2, 2 + 3 * 4, (2 + 3) * 4",
    "SELECT name || '-' || id, note || 'x' FROM {t} ORDER BY id",
    "SELECT count(*), count(score), count(note), sum(small), sum(big), avg(small), avg(score) FROM {t}",
    "SELECT min(name), max(name), min(score), max(score), min(ratio), sum(ratio) FROM {t}",
    "SELECT count(*), sum(id), avg(id), min(id) FROM {t} WHERE id > 100",
    "SELECT flag, count(*), sum(id) FROM {t} GROUP BY flag ORDER BY flag",
    "SELECT flag, count(*) FROM {t} GROUP BY flag HAVING count(*) > 2 ORDER BY 1",
    "SELECT flag, count(*) FROM {t} WHERE id > 1 GROUP BY 1 ORDER BY 1",
    "SELECT note IS NULL, count(*), max(id) FROM {t} GROUP BY 1 ORDER BY 2, 1",
    "SELECT id, score FROM {t} ORDER BY score DESC, id",
    "SELECT id, score FROM {t} ORDER BY score, id",
    "SELECT id, note FROM {t} ORDER BY note DESC, id LIMIT 3",
    "SELECT id FROM {t} ORDER BY id LIMIT 2 OFFSET 3",
    "SELECT id FROM {t} ORDER BY id OFFSET 5",
    "SELECT DISTINCT flag FROM {t} ORDER BY flag",
    "SELECT id, CASE WHEN score > 1 THEN 'big' WHEN score IS NULL THEN 'none' ELSE 'small' END FROM {t} ORDER BY id",
    "SELECT id, COALESCE(note, name) FROM {t} ORDER BY id",
    "SELECT id FROM {t} WHERE id BETWEEN 2 AND 4 ORDER BY id",
    "SELECT id FROM {t} WHERE id IN (1, 3, 99) ORDER BY id",
    "SELECT id FROM {t} WHERE name LIKE '%ta' ORDER BY id",
    "SELECT id, CAST(score AS int), CAST(id AS text) AS label, '5'::int + 1 FROM {t} WHERE id < 7 ORDER BY 1",
    "SELECT * FROM {t} WHERE id = 3",
    "SELECT name FROM {t} WHERE id = 3 AND flag IS NULL",
    "SELECT upper(name), lower('ABC'), length(name), abs(small) FROM {t} ORDER BY id",
    "SELECT true AND NULL, false AND NULL, true OR NULL, NOT NULL::boolean, NULL = 1",
    "SELECT 6 * 7",
]

ERRORS = [
    "SELEC 1",
    "SELECT * FROM no_such_table",
    "SELECT no_such_column FROM {t}",
    "INSERT INTO {t} VALUES (1, 'dup')",
    "INSERT INTO {t} (id) VALUES (100)",
    "INSERT INTO {t} (id, name) VALUES (NULL, 'x')",
    "SELECT 1 / 0",
    "SELECT id % 0 FROM {t}",
    "SELECT 2147483647 + 1",
    "INSERT INTO {t} (id, name, small) VALUES (200, 'x', 40000)",
    "INSERT INTO {t} (id, name) VALUES (201, 'this name is much too long for twenty')",
    "SELECT 'abc'::int",
    "SELECT id, score % 1 FROM {t} WHERE false",
    "SELECT id, ratio % 2 FROM {t}",
    "SELECT CAST(score AS int) FROM {t} WHERE id = 7",
    "SELECT name + 1 FROM {t}",
    "SELECT id, count(*) FROM {t}",
    "CREATE TABLE {t} (a int)",
    "DROP TABLE no_such_table",
    "SELECT flag FROM {t} GROUP BY 2",
    "SELECT flag FROM {t} ORDER BY 0",
]


def run(connection, sql):
    cursor = connection.execute(sql)
    return cursor.fetchall() if cursor.description else cursor.statusmessage


def sqlstate_of(connection, sql):
    with pytest.raises(psycopg.Error) as caught:
        connection.execute(sql)
    return caught.value.sqlstate


@pytest.fixture
def both(sql_cluster, postgres_server):
    """A fresh table of the same name and rows on our cluster and on PostgreSQL 15."""
    table = f"diff_{next(_names)}"
    ours, theirs = sql_cluster.connect(), postgres_server.connect()
    for connection in (ours, theirs):
        connection.execute(SCHEMA.format(t=table))
        connection.execute(ROWS.format(t=table))
    yield ours, theirs, table
    for connection in (ours, theirs):
        connection.execute(f"DROP TABLE IF EXISTS {table}")
        connection.close()


def test_queries_match_postgresql(both):
    ours, theirs, table = both
    for query in QUERIES:
        sql = query.format(t=table)
        assert run(ours, sql) == run(theirs, sql), sql


def test_errors_have_postgresqls_sqlstate_and_the_session_goes_on(both):
    ours, theirs, table = both
    for query in ERRORS:
        sql = query.format(t=table)
        assert sqlstate_of(ours, sql) == sqlstate_of(theirs, sql), sql
        assert run(ours, "SELECT 1") == [(1,)]
    assert run(ours, f"SELECT count(*) FROM {table}") == run(theirs, f"SELECT count(*) FROM {table}")


def test_writes_leave_the_same_table(both):
    ours, theirs, table = both
    statements = [
        f"UPDATE {table} SET score = score * 2, note = 'upd' WHERE id <= 3",
        f"UPDATE {table} SET name = name || '!' WHERE flag",
        f"DELETE FROM {table} WHERE score IS NULL",
        f"INSERT INTO {table} (id, name, big) VALUES (10, 'ten', 10), (11, 'eleven', NULL)",
        f"UPDATE {table} SET id = id + 100 WHERE id = 10",
        f"DELETE FROM {table} WHERE id = 11",
        f"UPDATE {table} SET small = NULL WHERE id = 999",
    ]
    for sql in statements:
        assert run(ours, sql) == run(theirs, sql), sql
    final = f"SELECT * FROM {table} ORDER BY id"
    assert run(ours, final) == run(theirs, final)


def test_an_internal_error_rolls_back_like_any_other_error(sql_cluster):
    """Whatever fails inside a statement, nothing of it is committed later."""
    with sql_cluster.connect() as connection:
        connection.execute("CREATE TABLE oversize (id int PRIMARY KEY, v text)")
        with pytest.raises(psycopg.errors.ProgramLimitExceeded):
            connection.execute("INSERT INTO oversize VALUES (1, 'a'), (2, repeat_me)".replace(
                "repeat_me", "'" + "x" * 20_000 + "'"))
        assert run(connection, "SELECT 1") == [(1,)]
        assert run(connection, "SELECT count(*) FROM oversize") == [(0,)], "row 1 must not survive"
        connection.execute("INSERT INTO oversize VALUES (3, 'ok')")
        assert run(connection, "SELECT id FROM oversize") == [(3,)]


def test_a_failed_statement_is_not_half_applied(sql_cluster):
    """The third row of a multi-row INSERT is a duplicate: none of the three rows may remain."""
    with sql_cluster.connect() as connection:
        connection.execute("CREATE TABLE atomic_insert (id int PRIMARY KEY)")
        connection.execute("INSERT INTO atomic_insert VALUES (1)")
        with pytest.raises(psycopg.errors.UniqueViolation):
            connection.execute("INSERT INTO atomic_insert VALUES (2), (3), (1)")
        assert run(connection, "SELECT id FROM atomic_insert ORDER BY id") == [(1,)]


def test_transaction_blocks_commit_and_roll_back(sql_cluster):
    with sql_cluster.connect() as writer, sql_cluster.connect() as reader:
        writer.execute("CREATE TABLE blocks (id int PRIMARY KEY, v text)")
        writer.execute("BEGIN")
        writer.execute("INSERT INTO blocks VALUES (1, 'a')")
        assert run(writer, "SELECT v FROM blocks") == [("a",)]
        assert run(reader, "SELECT v FROM blocks") == [], "an uncommitted row is invisible to others"
        writer.execute("COMMIT")
        assert run(reader, "SELECT v FROM blocks") == [("a",)]
        writer.execute("BEGIN")
        writer.execute("UPDATE blocks SET v = 'b'")
        writer.execute("DELETE FROM blocks")
        writer.execute("ROLLBACK")
        assert run(reader, "SELECT v FROM blocks") == [("a",)]


def test_an_error_fails_the_block_until_rollback(sql_cluster):
    with sql_cluster.connect() as connection:
        connection.execute("CREATE TABLE failed_block (id int PRIMARY KEY)")
        connection.execute("BEGIN")
        connection.execute("INSERT INTO failed_block VALUES (1)")
        with pytest.raises(psycopg.errors.UniqueViolation):
            connection.execute("INSERT INTO failed_block VALUES (1)")
        with pytest.raises(psycopg.errors.InFailedSqlTransaction):
            connection.execute("SELECT 1")
        assert connection.execute("COMMIT").statusmessage == "ROLLBACK"
        assert run(connection, "SELECT count(*) FROM failed_block") == [(0,)]


def test_a_conflicting_update_waits_and_applies_on_the_committed_row(sql_cluster):
    """Row locks as in PostgreSQL: a second writer of the same row waits for the first, then, under
    READ COMMITTED, updates the version the first committed; under REPEATABLE READ it fails with 40001."""
    with sql_cluster.connect() as first, sql_cluster.connect() as second:
        first.execute("CREATE TABLE conflict (id int PRIMARY KEY, v int)")
        first.execute("INSERT INTO conflict VALUES (1, 0)")
        first.execute("BEGIN")
        first.execute("UPDATE conflict SET v = v + 1 WHERE id = 1")
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            waiting = pool.submit(second.execute, "UPDATE conflict SET v = v + 10 WHERE id = 1")
            with pytest.raises(concurrent.futures.TimeoutError):
                waiting.result(timeout=0.5)
            first.execute("COMMIT")
            assert waiting.result(timeout=30).rowcount == 1
        assert run(second, "SELECT v FROM conflict") == [(11,)]
        second.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        assert run(second, "SELECT v FROM conflict") == [(11,)]
        first.execute("UPDATE conflict SET v = 0 WHERE id = 1")
        with pytest.raises(psycopg.errors.SerializationFailure):
            second.execute("UPDATE conflict SET v = v + 1 WHERE id = 1")
        second.execute("ROLLBACK")
        assert run(second, "SELECT v FROM conflict") == [(0,)]


def test_unsupported_sql_is_0A000_and_names_the_feature(sql_cluster):
    with sql_cluster.connect() as connection:
        for sql, feature in [("SELECT * FROM information_schema.tables a FULL JOIN information_schema.columns b ON true", "join"),
                             ("CREATE INDEX i ON t USING hash (x)", "INDEX"),
                             ("WITH x AS (SELECT 1) SELECT * FROM x", "WITH")]:
            with pytest.raises(psycopg.errors.FeatureNotSupported) as caught:
                connection.execute(sql)
            assert feature.lower() in str(caught.value).lower(), sql
        assert run(connection, "SELECT 1") == [(1,)]


def test_parameters_in_text_and_binary(sql_cluster):
    with sql_cluster.connect() as connection:
        connection.execute("CREATE TABLE params (id bigint PRIMARY KEY, f double precision, b boolean, s text, n smallint)")
        for binary in (False, True):
            base = 100 if binary else 0
            with connection.cursor(binary=binary) as cursor:
                cursor.execute("INSERT INTO params VALUES (%s, %s, %s, %s, %s)", (base + 1, 2.5, True, "é", 3))
                cursor.execute("INSERT INTO params VALUES (%s, %s, %s, %s, %s)", (base + 2, None, False, None, None))
                cursor.execute("SELECT * FROM params WHERE id = %s", (base + 1,))
                assert cursor.fetchall() == [(base + 1, 2.5, True, "é", 3)]
                cursor.execute("SELECT id FROM params WHERE f IS NULL AND id > %s", (base,))
                assert cursor.fetchall() == [(base + 2,)]


def test_a_primary_key_lookup_reads_few_pages(sql_cluster):
    """A B-tree over pages: a key lookup in a table far larger than the cache reads O(depth) pages."""

    from tests.admin import writer_status
    with sql_cluster.connect() as connection:
        connection.execute("CREATE TABLE lookup (id int PRIMARY KEY, pad text)")
        with connection.transaction():
            for start in range(0, 20_000, 500):
                connection.execute("INSERT INTO lookup VALUES " + ",".join(
                    f"({i}, '{'p' * 60}')" for i in range(start, start + 500)))
        before = writer_status(sql_cluster.port + 20)
        for key in range(0, 20_000, 997):
            assert run(connection, f"SELECT id FROM lookup WHERE id = {key}") == [(key,)]
        after = writer_status(sql_cluster.port + 20)
        lookups = len(range(0, 20_000, 997))
        misses = after["cache_misses"] - before["cache_misses"]
        table_pages = 20_000 * 90 // 8192
        assert misses <= lookups * 6, f"{misses} page reads for {lookups} lookups in a {table_pages}-page table"
        assert run(connection, "SELECT count(*), sum(id) FROM lookup") == [(20_000, sum(range(20_000)))]


def test_a_secondary_index_lookup_reads_few_pages(sql_cluster):
    """An equality on a secondary index, and a short range on it, in a table far larger than the
    cache read O(depth + rows) pages, not the table; the answers match a full scan's."""

    from tests.admin import writer_status
    rows = 20_000
    with sql_cluster.connect() as connection:
        connection.execute("CREATE TABLE by_code (id int PRIMARY KEY, code int, pad text)")
        connection.execute("CREATE INDEX by_code_code ON by_code (code)")
        with connection.transaction():
            for start in range(0, rows, 500):
                connection.execute("INSERT INTO by_code VALUES " + ",".join(
                    f"({i}, {i * 7919 % rows}, '{'p' * 60}')" for i in range(start, start + 500)))
        plan = run(connection, "EXPLAIN SELECT id FROM by_code WHERE code BETWEEN 5 AND 9")
        assert plan[0][0].startswith("Index Scan using by_code_code on by_code"), plan
        keys = range(0, rows, 997)
        before = writer_status(sql_cluster.port + 20)
        for key in keys:
            assert run(connection, f"SELECT code FROM by_code WHERE code = {key}") == [(key,)]
        middle = writer_status(sql_cluster.port + 20)
        for key in keys:
            found = run(connection, f"SELECT code FROM by_code WHERE code BETWEEN {key} AND {key + 4} ORDER BY code")
            assert found == [(code,) for code in range(key, min(key + 5, rows))]
        after = writer_status(sql_cluster.port + 20)
        table_pages = rows * 90 // 8192
        lookup_misses = middle["cache_misses"] - before["cache_misses"]
        range_misses = after["cache_misses"] - middle["cache_misses"]
        assert lookup_misses <= len(keys) * 6, f"{lookup_misses} page reads for {len(keys)} lookups, {table_pages} pages"
        assert range_misses <= len(keys) * 10, f"{range_misses} page reads for {len(keys)} ranges, {table_pages} pages"
        assert run(connection, "SELECT count(*), sum(code) FROM by_code WHERE code >= 0") == \
            [(rows, sum(range(rows)))]


def test_a_multi_statement_query_is_one_implicit_transaction(sql_cluster):
    """PostgreSQL: the statements of one simple-query string commit together or not at all."""
    with sql_cluster.connect() as connection:
        connection.execute("CREATE TABLE script_block (id int PRIMARY KEY)")
        with pytest.raises(psycopg.errors.DivisionByZero):
            connection.execute("INSERT INTO script_block VALUES (1); SELECT 1 / 0")
        assert run(connection, "SELECT count(*) FROM script_block") == [(0,)]
        connection.execute("INSERT INTO script_block VALUES (2); INSERT INTO script_block VALUES (3); SHOW server_version")
        assert run(connection, "SELECT id FROM script_block ORDER BY id") == [(2,), (3,)]
        with pytest.raises(psycopg.errors.UniqueViolation):
            connection.execute("INSERT INTO script_block VALUES (4); COMMIT; INSERT INTO script_block VALUES (4)")
        assert run(connection, "SELECT id FROM script_block ORDER BY id") == [(2,), (3,), (4,)], \
            "an explicit COMMIT inside the string commits what came before it"


def test_vacuum_and_analyze_are_accepted_as_postgresql_accepts_them(sql_cluster, postgres_server):
    for server in (sql_cluster, postgres_server):
        with server.connect() as connection:
            connection.execute("CREATE TABLE maintained (id int PRIMARY KEY)")
            assert connection.execute("VACUUM ANALYZE maintained").statusmessage == "VACUUM"
            assert connection.execute("ANALYZE maintained").statusmessage == "ANALYZE"
            connection.execute("BEGIN")
            with pytest.raises(psycopg.errors.ActiveSqlTransaction):
                connection.execute("VACUUM maintained")
            connection.execute("ROLLBACK")
            connection.execute("DROP TABLE maintained")
