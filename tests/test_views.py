"""Views, checked against PostgreSQL 15: CREATE [OR REPLACE] VIEW and DROP VIEW, a view read like a
table (joined, filtered, in a subquery, over another view), its columns fixed when it is made, and
PostgreSQL's SQLSTATEs for what a view refuses. Each script runs statement by statement on both
servers, in one connection each: rows, column names, command tags and SQLSTATEs must match."""

from __future__ import annotations

import itertools

import pytest

from tests.test_sql_schema import both, outcome, run_script  # noqa: F401 (both is a fixture)

_prefixes = itertools.count()


READING = """
CREATE TABLE {p}t (id int PRIMARY KEY, name varchar(20), amount numeric(10,2), team int)
CREATE TABLE {p}teams (id int PRIMARY KEY, title text)
INSERT INTO {p}t VALUES (1, 'ada', 10.50, 1), (2, 'bob', NULL, 1), (3, NULL, 7, 2), (4, 'dee', 3.25, NULL)
INSERT INTO {p}teams VALUES (1, 'red'), (2, 'blue'), (3, 'empty')
CREATE VIEW {p}v AS SELECT * FROM {p}t WHERE id > 1
CREATE VIEW {p}named (key, who) AS SELECT id, name, amount * 2 AS doubled FROM {p}t
CREATE VIEW {p}joined AS SELECT t.name, s.title FROM {p}t t JOIN {p}teams s ON t.team = s.id
CREATE VIEW {p}totals AS SELECT team, count(*) AS n, sum(amount) AS total FROM {p}t GROUP BY team
CREATE VIEW {p}both AS SELECT id FROM {p}t UNION SELECT id FROM {p}teams
CREATE VIEW {p}top AS SELECT id, name FROM {p}t ORDER BY id DESC LIMIT 2
CREATE VIEW {p}consts AS SELECT 'x' AS s, 1.5 AS n, NULL AS z, 7 AS i
CREATE VIEW {p}over AS SELECT v.id, v.name, j.title FROM {p}v v LEFT JOIN {p}joined j ON v.name = j.name
CREATE VIEW {p}exprs AS SELECT id, CASE WHEN amount > 5 THEN 'big' ELSE 'small' END AS size, COALESCE(amount, 0) + 1 AS a1, name || '!' AS bang, id IN (1, 3) AS odd, CAST(id AS bigint) * 2 AS twice, upper(name) AS up FROM {p}t WHERE name NOT LIKE 'b%' AND name NOT ILIKE 'D%'
SELECT * FROM {p}v ORDER BY id
SELECT * FROM {p}v WHERE amount IS NULL
SELECT * FROM {p}v WHERE name = 'bob'
SELECT * FROM {p}named ORDER BY key
SELECT key, doubled FROM {p}named WHERE who IS NULL
SELECT * FROM {p}joined ORDER BY name
SELECT * FROM {p}totals ORDER BY team
SELECT * FROM {p}both ORDER BY id
SELECT * FROM {p}top
SELECT * FROM {p}consts
SELECT * FROM {p}over ORDER BY id
SELECT * FROM {p}exprs ORDER BY id
SELECT v.id, s.title FROM {p}v v JOIN {p}teams s ON v.team = s.id ORDER BY v.id
SELECT x.id FROM {p}v x, {p}named y WHERE x.id = y.key AND y.doubled > 10 ORDER BY 1
SELECT * FROM (SELECT id, name FROM {p}v WHERE id < 4) s ORDER BY id
SELECT id FROM {p}t WHERE id IN (SELECT id FROM {p}v) ORDER BY id
SELECT id FROM {p}t t WHERE EXISTS (SELECT 1 FROM {p}v v WHERE v.id = t.id + 1) ORDER BY id
SELECT (SELECT count(*) FROM {p}v) AS n, (SELECT max(total) FROM {p}totals) AS m
SELECT team, count(*) FROM {p}v GROUP BY team ORDER BY team
SELECT DISTINCT team FROM {p}v ORDER BY team
SELECT {p}v.name FROM {p}v WHERE {p}v.id = 2
SELECT table_name, table_type FROM information_schema.tables WHERE table_name LIKE '{p}%' ORDER BY table_name
SELECT relname, relkind, relnatts FROM pg_catalog.pg_class WHERE relname LIKE '{p}%' AND relkind IN ('r', 'v') ORDER BY relname
SELECT column_name, data_type FROM information_schema.columns WHERE table_name = '{p}named' ORDER BY ordinal_position
SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_class c ON c.oid = a.attrelid WHERE c.relname = '{p}over' AND a.attnum > 0 ORDER BY a.attnum
UPDATE {p}t SET name = 'bea' WHERE id = 2
DELETE FROM {p}t WHERE id = 3
SELECT * FROM {p}v ORDER BY id
SELECT * FROM {p}over ORDER BY id
"""

DDL = """
CREATE TABLE {p}t (id int PRIMARY KEY, name text)
INSERT INTO {p}t VALUES (1, 'a'), (2, 'b')
CREATE VIEW {p}v AS SELECT * FROM {p}t
CREATE VIEW {p}v AS SELECT 1
CREATE VIEW {p}t AS SELECT 1
CREATE VIEW {p}t_pkey AS SELECT 1
CREATE TABLE {p}v (a int)
CREATE INDEX {p}v_i ON {p}v (id)
CREATE VIEW {p}w AS SELECT * FROM {p}nope
CREATE VIEW {p}w AS SELECT nope FROM {p}t
CREATE VIEW {p}w (a, b, c) AS SELECT * FROM {p}t
CREATE VIEW {p}w AS SELECT 1 AS a, 2 AS a
CREATE VIEW {p}w (a, a) AS SELECT 1, 2
CREATE VIEW {p}w (a) AS SELECT 1, 2 AS b
SELECT * FROM {p}w
CREATE OR REPLACE VIEW {p}w AS SELECT 1 AS a, 2 AS b, 3 AS c
SELECT * FROM {p}w
CREATE OR REPLACE VIEW {p}w AS SELECT 1 AS a
CREATE OR REPLACE VIEW {p}w AS SELECT 1 AS a, 2 AS x, 3 AS c
CREATE OR REPLACE VIEW {p}w AS SELECT 1 AS a, 'two' AS b, 3 AS c
CREATE OR REPLACE VIEW {p}t AS SELECT 1
CREATE OR REPLACE VIEW {p}t_pkey AS SELECT 1
CREATE OR REPLACE VIEW {p}v AS SELECT id, name, id * 10 AS tens FROM {p}t
SELECT * FROM {p}v ORDER BY id
INSERT INTO {p}t VALUES (3, 'c')
SELECT * FROM {p}v ORDER BY id
CREATE VIEW {p}counts AS SELECT count(*) AS n FROM {p}t
TRUNCATE {p}v
ALTER TABLE {p}v ADD COLUMN z int
DROP TABLE {p}v
DROP VIEW {p}t
DROP VIEW {p}t_pkey
DROP INDEX {p}v
DROP VIEW IF EXISTS {p}t
DROP VIEW {p}nope
DROP VIEW IF EXISTS {p}nope, {p}counts
SELECT * FROM {p}counts
CREATE VIEW {p}on_v AS SELECT id FROM {p}v WHERE tens > 10
DROP TABLE {p}t
DROP VIEW {p}v
DROP VIEW {p}v, {p}on_v
SELECT * FROM {p}on_v
CREATE VIEW {p}v AS SELECT * FROM {p}t
CREATE VIEW {p}on_v AS SELECT id FROM {p}v
DROP TABLE {p}t CASCADE
SELECT * FROM {p}v
SELECT * FROM {p}on_v
SELECT count(*) FROM information_schema.tables WHERE table_name LIKE '{p}%'
"""

COLUMNS_FIXED = """
CREATE TABLE {p}a (id int, x text)
CREATE TABLE {p}b (id int, y text)
INSERT INTO {p}a VALUES (1, 'a1'), (2, 'a2')
INSERT INTO {p}b VALUES (1, 'b1')
CREATE VIEW {p}star AS SELECT * FROM {p}a
CREATE VIEW {p}pair AS SELECT * FROM {p}a JOIN {p}b USING (id)
CREATE VIEW {p}qualified AS SELECT {p}b.*, {p}a.x FROM {p}a, {p}b WHERE {p}a.id = {p}b.id
ALTER TABLE {p}a ADD COLUMN extra int DEFAULT 5
ALTER TABLE {p}b ADD COLUMN more int DEFAULT 6
SELECT * FROM {p}a ORDER BY id
SELECT * FROM {p}star ORDER BY id
SELECT * FROM {p}pair
SELECT * FROM {p}qualified
TRUNCATE {p}a
SELECT * FROM {p}star
SELECT * FROM {p}pair
"""


@pytest.mark.parametrize("script", [READING, DDL, COLUMNS_FIXED], ids=["reading", "ddl", "columns_fixed"])
def test_view_scripts_match_postgresql(both, script):
    ours, theirs, prefix = both
    run_script(ours, theirs, script, prefix)


def _run_pair(ours, theirs, sql: str, prefix: str):
    sql = sql.format(p=prefix)
    mine, expected = outcome(ours, sql), outcome(theirs, sql)
    assert mine == expected, sql
    return mine


def test_views_are_transactional_like_tables(sql_cluster, postgres_server):
    """CREATE, CREATE OR REPLACE and DROP VIEW are seen by others only once committed, and a rolled
    back one leaves nothing, on both servers alike (each step runs on a writer or a reader; the reader
    never reads a view the writer is changing, where PostgreSQL would wait for its lock)."""
    prefix = f"vw{next(_prefixes)}_"
    connections = [(sql_cluster.connect(), postgres_server.connect()) for _ in range(2)]
    (writer_ours, writer_theirs), (reader_ours, reader_theirs) = connections
    steps = [
        ("w", "CREATE TABLE {p}t (id int, v text)"),
        ("w", "INSERT INTO {p}t VALUES (1, 'one'), (2, 'two')"),
        ("w", "BEGIN"),
        ("w", "CREATE VIEW {p}v AS SELECT id FROM {p}t"),
        ("w", "SELECT * FROM {p}v ORDER BY id"),
        ("r", "SELECT count(*) FROM information_schema.tables WHERE table_name = '{p}v'"),
        ("w", "ROLLBACK"),
        ("w", "SELECT * FROM {p}v"),
        ("w", "CREATE VIEW {p}v AS SELECT id FROM {p}t"),
        ("w", "BEGIN"),
        ("w", "CREATE OR REPLACE VIEW {p}v AS SELECT id, v FROM {p}t WHERE id = 2"),
        ("w", "SELECT * FROM {p}v ORDER BY id"),
        ("w", "COMMIT"),
        ("r", "SELECT * FROM {p}v ORDER BY id"),
        ("w", "BEGIN"),
        ("w", "DROP VIEW {p}v"),
        ("w", "DROP TABLE {p}t"),
        ("w", "ROLLBACK"),
        ("r", "SELECT * FROM {p}v ORDER BY id"),
        ("w", "DROP VIEW {p}v"),
        ("r", "SELECT * FROM {p}v"),
        ("w", "DROP TABLE {p}t"),
    ]
    try:
        for who, sql in steps:
            ours, theirs = (writer_ours, writer_theirs) if who == "w" else (reader_ours, reader_theirs)
            _run_pair(ours, theirs, sql, prefix)
    finally:
        for pair in connections:
            for connection in pair:
                connection.close()


def test_writes_through_a_view_fail_naming_the_feature(sql_cluster):
    """PostgreSQL writes through a simple view; we refuse every write to a view with 0A000."""
    with sql_cluster.connect() as connection:
        connection.execute("CREATE TABLE vw_write_t (id int)")
        connection.execute("CREATE VIEW vw_write AS SELECT id FROM vw_write_t")
        for sql, verb in (("INSERT INTO vw_write VALUES (1)", "insert into"), ("UPDATE vw_write SET id = 2", "update"),
                          ("DELETE FROM vw_write", "delete from")):
            with pytest.raises(Exception) as error:
                connection.execute(sql)
            assert error.value.sqlstate == "0A000"
            assert f'cannot {verb} view "vw_write"' in str(error.value)
        connection.execute("DROP TABLE vw_write_t CASCADE")
        assert connection.execute("SELECT count(*) FROM pg_catalog.pg_class WHERE relname = 'vw_write'").fetchall() \
            == [(0,)]


def test_a_plan_is_remade_when_its_view_is_replaced(sql_cluster):
    """A prepared statement reading a view follows CREATE OR REPLACE and DROP of the view."""
    with sql_cluster.connect() as connection:
        connection.execute("CREATE TABLE vw_replan_t (id int, v text)")
        connection.execute("INSERT INTO vw_replan_t VALUES (1, 'a'), (2, 'b')")
        connection.execute("CREATE VIEW vw_replan AS SELECT id FROM vw_replan_t WHERE id = 1")
        query = "SELECT * FROM vw_replan ORDER BY 1"
        assert connection.execute(query, prepare=True).fetchall() == [(1,)]
        connection.execute("CREATE OR REPLACE VIEW vw_replan AS SELECT id FROM vw_replan_t")
        assert connection.execute(query, prepare=True).fetchall() == [(1,), (2,)]
        connection.execute("DROP VIEW vw_replan")
        with pytest.raises(Exception) as error:
            connection.execute(query, prepare=True)
        assert error.value.sqlstate == "42P01"
        connection.execute("DROP TABLE vw_replan_t")


def test_a_table_cannot_be_dropped_under_a_view_being_created(sql_cluster):
    """PostgreSQL would make the DROP wait for the CREATE VIEW's lock; here it fails with 40001 while
    the view's transaction is open, and with 2BP01 once the view is committed."""
    with sql_cluster.connect() as creator, sql_cluster.connect() as dropper:
        creator.execute("CREATE TABLE vw_race_t (id int)")
        creator.execute("BEGIN")
        creator.execute("CREATE VIEW vw_race AS SELECT id FROM vw_race_t")
        with pytest.raises(Exception) as error:
            dropper.execute("DROP TABLE vw_race_t")
        assert error.value.sqlstate == "40001"
        creator.execute("COMMIT")
        with pytest.raises(Exception) as error:
            dropper.execute("DROP TABLE vw_race_t")
        assert error.value.sqlstate == "2BP01"
        dropper.execute("BEGIN")
        dropper.execute("DROP VIEW vw_race")
        with pytest.raises(Exception) as error:
            creator.execute("CREATE VIEW vw_race_2 AS SELECT id FROM vw_race")
        assert error.value.sqlstate == "40001"
        dropper.execute("DROP TABLE vw_race_t")
        dropper.execute("COMMIT")


def test_a_view_cannot_come_to_read_itself(sql_cluster):
    """PostgreSQL accepts such a CREATE OR REPLACE and fails every later read (42P17); we refuse the
    statement itself with the same SQLSTATE, directly or through another view."""
    with sql_cluster.connect() as connection:
        connection.execute("CREATE TABLE vw_cycle_t (id int)")
        connection.execute("CREATE VIEW vw_cycle_1 AS SELECT id FROM vw_cycle_t")
        connection.execute("CREATE VIEW vw_cycle_2 AS SELECT id FROM vw_cycle_1")
        for sql in ("CREATE OR REPLACE VIEW vw_cycle_1 AS SELECT id FROM vw_cycle_1",
                    "CREATE OR REPLACE VIEW vw_cycle_1 AS SELECT id FROM vw_cycle_2"):
            with pytest.raises(Exception) as error:
                connection.execute(sql)
            assert error.value.sqlstate == "42P17"
        assert connection.execute("SELECT count(*) FROM vw_cycle_2").fetchall() == [(0,)]
        with pytest.raises(Exception) as error:
            connection.execute("DROP TABLE vw_cycle_t")
        assert error.value.sqlstate == "2BP01"
        assert error.value.diag.message_detail == ("view vw_cycle_1 depends on table vw_cycle_t\n"
                                                   "view vw_cycle_2 depends on view vw_cycle_1")
        connection.execute("DROP TABLE vw_cycle_t CASCADE")
