"""Row locks with PostgreSQL's behaviour, against a real cluster with concurrent sessions: a writer
that meets a row (or key) another open transaction changed waits for it to end; READ COMMITTED then
goes on with the newest version, REPEATABLE READ fails with 40001; a cycle of waits fails with 40P01.
"""

from __future__ import annotations

import concurrent.futures
import itertools

import psycopg
import pytest

BLOCKED_S = 0.5  # a statement still unfinished after this long is waiting for a lock
FINISH_S = 30

_names = itertools.count()


def run(connection, sql, params=None):
    return connection.execute(sql, params).fetchall()


def table(connection, rows: int = 1) -> str:
    name = f"locks_{next(_names)}"
    connection.execute(f"CREATE TABLE {name} (id int PRIMARY KEY, v int)")
    if rows:
        connection.execute(f"INSERT INTO {name} VALUES " + ", ".join(f"({i}, 0)" for i in range(1, rows + 1)))
    return name


def assert_waits(future: concurrent.futures.Future) -> None:
    with pytest.raises(concurrent.futures.TimeoutError):
        future.result(timeout=BLOCKED_S)


@pytest.fixture
def pool():
    with concurrent.futures.ThreadPoolExecutor(2) as executor:
        yield executor


def test_concurrent_increments_both_count(sql_cluster, pool):
    """Lost-update prevention: two concurrent `UPDATE t SET v = v + 1` both count."""
    with sql_cluster.connect() as first, sql_cluster.connect() as second:
        name = table(first)
        first.execute("BEGIN")
        first.execute(f"UPDATE {name} SET v = v + 1 WHERE id = 1")
        waiting = pool.submit(second.execute, f"UPDATE {name} SET v = v + 1")
        assert_waits(waiting)
        with sql_cluster.connect() as reader:
            assert run(reader, f"SELECT v FROM {name}") == [(0,)]  # a reader never waits
        first.execute("COMMIT")
        assert waiting.result(timeout=FINISH_S).rowcount == 1
        assert run(first, f"SELECT v FROM {name}") == [(2,)]


def test_many_concurrent_increments_all_count(sql_cluster, pool):
    with sql_cluster.connect() as setup:
        name = table(setup)

    def increments(count):
        with sql_cluster.connect() as connection:
            for _ in range(count):
                connection.execute(f"UPDATE {name} SET v = v + 1 WHERE id = 1")

    list(pool.map(increments, [25, 25]))
    with sql_cluster.connect() as connection:
        assert run(connection, f"SELECT v, count(*) FROM {name} GROUP BY v") == [(50, 1)]


def test_the_waiter_proceeds_on_the_old_row_when_the_holder_rolls_back(sql_cluster, pool):
    with sql_cluster.connect() as first, sql_cluster.connect() as second:
        name = table(first)
        first.execute("BEGIN")
        first.execute(f"UPDATE {name} SET v = 100 WHERE id = 1")
        waiting = pool.submit(second.execute, f"UPDATE {name} SET v = v + 1 WHERE id = 1")
        assert_waits(waiting)
        first.execute("ROLLBACK")
        assert waiting.result(timeout=FINISH_S).rowcount == 1
        assert run(first, f"SELECT v FROM {name}") == [(1,)]


def test_a_delete_waits_and_then_deletes_nothing_already_deleted(sql_cluster, pool):
    with sql_cluster.connect() as first, sql_cluster.connect() as second:
        name = table(first, rows=2)
        first.execute("BEGIN")
        first.execute(f"DELETE FROM {name} WHERE id = 1")
        waiting = pool.submit(second.execute, f"DELETE FROM {name}")
        assert_waits(waiting)
        first.execute("COMMIT")
        assert waiting.result(timeout=FINISH_S).rowcount == 1
        assert run(first, f"SELECT count(*) FROM {name}") == [(0,)]


def test_a_multi_row_update_that_waits_midway_leaves_no_duplicate_versions(sql_cluster, pool):
    """Statement undo: rows 1-4 were updated before the wait at row 5; the restart must not see or
    keep those first versions."""
    with sql_cluster.connect() as first, sql_cluster.connect() as second:
        name = table(first, rows=10)
        first.execute("BEGIN")
        first.execute(f"UPDATE {name} SET v = v + 100 WHERE id = 5")
        second.execute("BEGIN")
        waiting = pool.submit(second.execute, f"UPDATE {name} SET v = v + 1")
        assert_waits(waiting)
        first.execute("COMMIT")
        assert waiting.result(timeout=FINISH_S).rowcount == 10
        assert run(second, f"SELECT id, v FROM {name} ORDER BY id") == [
            (i, 101 if i == 5 else 1) for i in range(1, 11)]
        second.execute("COMMIT")
        assert run(first, f"SELECT count(*), sum(v) FROM {name}") == [(10, 110)]
        assert run(first, f"SELECT count(*) FROM {name} WHERE id = 3") == [(1,)]


def test_repeatable_read_fails_with_40001_after_the_holder_commits(sql_cluster, pool):
    with sql_cluster.connect() as first, sql_cluster.connect() as second:
        name = table(first)
        second.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        assert run(second, "SHOW transaction_isolation") == [("repeatable read",)]
        assert run(second, f"SELECT v FROM {name}") == [(0,)]  # the transaction's snapshot
        first.execute("BEGIN")
        first.execute(f"UPDATE {name} SET v = 7 WHERE id = 1")
        waiting = pool.submit(second.execute, f"UPDATE {name} SET v = v + 1 WHERE id = 1")
        assert_waits(waiting)
        first.execute("COMMIT")
        with pytest.raises(psycopg.errors.SerializationFailure, match="concurrent update"):
            waiting.result(timeout=FINISH_S)
        second.execute("ROLLBACK")
        assert run(second, f"SELECT v FROM {name}") == [(7,)]


def test_repeatable_read_keeps_its_snapshot_and_proceeds_when_the_holder_rolls_back(sql_cluster, pool):
    with sql_cluster.connect() as first, sql_cluster.connect() as second:
        name = table(first, rows=2)
        second.execute("BEGIN")
        second.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        assert run(second, f"SELECT sum(v) FROM {name}") == [(0,)]
        first.execute(f"UPDATE {name} SET v = 5 WHERE id = 2")  # committed after the snapshot
        assert run(second, f"SELECT sum(v) FROM {name}") == [(0,)]
        first.execute("BEGIN")
        first.execute(f"UPDATE {name} SET v = 9 WHERE id = 1")
        waiting = pool.submit(second.execute, f"UPDATE {name} SET v = v + 1 WHERE id = 1")
        assert_waits(waiting)
        first.execute("ROLLBACK")
        assert waiting.result(timeout=FINISH_S).rowcount == 1
        second.execute("COMMIT")
        assert run(second, "SHOW transaction_isolation") == [("read committed",)]
        assert run(first, f"SELECT id, v FROM {name} ORDER BY id") == [(1, 1), (2, 5)]


def test_default_transaction_isolation_and_session_characteristics(sql_cluster):
    with sql_cluster.connect() as connection:
        connection.execute("SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        assert run(connection, "SHOW default_transaction_isolation") == [("repeatable read",)]
        assert run(connection, "SHOW transaction_isolation") == [("repeatable read",)]
        connection.execute("SET default_transaction_isolation = 'read committed'")
        connection.execute("BEGIN")
        assert run(connection, "SHOW transaction_isolation") == [("read committed",)]
        connection.execute("SELECT 1")
        with pytest.raises(psycopg.errors.ActiveSqlTransaction):
            connection.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        connection.execute("ROLLBACK")


def test_opposite_lock_order_is_a_deadlock_one_fails_with_40P01(sql_cluster, pool):
    with sql_cluster.connect() as first, sql_cluster.connect() as second:
        name = table(first, rows=2)
        first.execute("BEGIN")
        second.execute("BEGIN")
        first.execute(f"UPDATE {name} SET v = v + 1 WHERE id = 1")
        second.execute(f"UPDATE {name} SET v = v + 10 WHERE id = 2")
        waiting = pool.submit(first.execute, f"UPDATE {name} SET v = v + 1 WHERE id = 2")
        assert_waits(waiting)
        with pytest.raises(psycopg.errors.DeadlockDetected):
            second.execute(f"UPDATE {name} SET v = v + 10 WHERE id = 1")
        # The failed transaction is aborted at once: the other goes on before its ROLLBACK.
        assert waiting.result(timeout=FINISH_S).rowcount == 1
        second.execute("ROLLBACK")
        first.execute("COMMIT")
        assert run(first, f"SELECT id, v FROM {name} ORDER BY id") == [(1, 1), (2, 1)]


def test_a_concurrent_insert_of_the_same_key_waits_then_23505_or_success(sql_cluster, pool):
    with sql_cluster.connect() as first, sql_cluster.connect() as second:
        name = table(first, rows=0)
        first.execute("BEGIN")
        first.execute(f"INSERT INTO {name} VALUES (1, 1)")
        waiting = pool.submit(second.execute, f"INSERT INTO {name} VALUES (1, 2)")
        assert_waits(waiting)
        first.execute("COMMIT")
        with pytest.raises(psycopg.errors.UniqueViolation):
            waiting.result(timeout=FINISH_S)

        first.execute("BEGIN")
        first.execute(f"INSERT INTO {name} VALUES (2, 1)")
        waiting = pool.submit(second.execute, f"INSERT INTO {name} VALUES (2, 2)")
        assert_waits(waiting)
        first.execute("ROLLBACK")
        waiting.result(timeout=FINISH_S)
        assert run(first, f"SELECT id, v FROM {name} ORDER BY id") == [(1, 1), (2, 2)]


def test_an_insert_waits_for_a_delete_of_its_key(sql_cluster, pool):
    with sql_cluster.connect() as first, sql_cluster.connect() as second:
        name = table(first)
        first.execute("BEGIN")
        first.execute(f"DELETE FROM {name} WHERE id = 1")
        waiting = pool.submit(second.execute, f"INSERT INTO {name} VALUES (1, 5)")
        assert_waits(waiting)
        first.execute("COMMIT")
        waiting.result(timeout=FINISH_S)
        assert run(first, f"SELECT id, v FROM {name}") == [(1, 5)]


def test_a_select_never_waits(sql_cluster):
    with sql_cluster.connect() as first, sql_cluster.connect() as second:
        name = table(first)
        first.execute("BEGIN")
        first.execute(f"UPDATE {name} SET v = 3 WHERE id = 1")
        assert run(second, f"SELECT v FROM {name} WHERE id = 1") == [(0,)]
        first.execute("COMMIT")


def test_lock_timeout_ends_a_wait_with_55P03(sql_cluster):
    with sql_cluster.connect() as first, sql_cluster.connect() as second:
        name = table(first)
        first.execute("BEGIN")
        first.execute(f"UPDATE {name} SET v = 3 WHERE id = 1")
        second.execute("SET lock_timeout = '200ms'")
        with pytest.raises(psycopg.errors.LockNotAvailable):
            second.execute(f"UPDATE {name} SET v = 4 WHERE id = 1")
        first.execute("COMMIT")
        assert run(second, f"SELECT v FROM {name}") == [(3,)]


def test_copy_waits_for_a_key_being_inserted(sql_cluster, pool):
    with sql_cluster.connect() as first, sql_cluster.connect() as second:
        name = table(first, rows=0)
        first.execute("BEGIN")
        first.execute(f"INSERT INTO {name} VALUES (2, 0)")

        def copy_rows():
            with second.cursor().copy(f"COPY {name} FROM STDIN") as copy:
                copy.write("1\t1\n2\t2\n3\t3\n")

        waiting = pool.submit(copy_rows)
        assert_waits(waiting)
        first.execute("ROLLBACK")
        waiting.result(timeout=FINISH_S)
        assert run(first, f"SELECT id, v FROM {name} ORDER BY id") == [(1, 1), (2, 2), (3, 3)]
