"""The volume's free pages (compute_node/free_space.py): VACUUM gives the pages of dropped and
truncated relations to the free list once no snapshot can see them, and new pages are taken from
it before the volume grows, so a workload that creates and drops tables does not grow the volume;
yet nothing a live relation or an open snapshot reaches is ever reused.

The first tests drive the freelist redo ops directly; the rest run SQL on a real cluster
(pg_database_size counts the volume's pages in use)."""

from __future__ import annotations

import psycopg
import pytest

from aurora_db import pages
from aurora_db.cluster import request_frame
from aurora_db.local_cluster import LiveCluster, wait_until
from aurora_db.records import Record
from compute_node.free_space import runs_of

PAGE_BYTES = 8192


def test_page_ids_become_runs_of_consecutive_ids():
    assert runs_of([]) == []
    assert runs_of([7, 3, 4, 5, 9, 10]) == [[3, 3], [7, 1], [9, 2]]


def test_a_freelist_page_hands_out_its_runs_first_in_first_out_and_survives_the_wire():
    lsn = 0

    def apply(page, op, *args):
        nonlocal lsn
        lsn += 1
        return pages.apply(page, Record(lsn, 40, lsn - 1, lsn - 1, lsn - 1, True, op, args))

    page = apply(None, "freelist_init")
    page = apply(page, "freelist_push", [[100, 2], [7, 1]])
    page = apply(page, "freelist_set_next", 41)
    taken = []
    for _ in range(3):
        taken.append(page.runs[0][0])
        page = apply(page, "freelist_take")
    assert taken == [100, 101, 7] and page.runs == [] and page.next_page == 41
    page = apply(page, "freelist_push", [[5, 3]])
    copy = pages.from_wire(pages.to_wire(page))
    assert (copy.kind, copy.runs, copy.next_page, copy.lsn) == ("freelist", [[5, 3]], 41, page.lsn)


# --- SQL on a real cluster --------------------------------------------------------------------


@pytest.fixture
def cluster(sql_cluster):
    return sql_cluster


def database_bytes(connection) -> int:
    """The volume's pages in use, in bytes: it falls when VACUUM frees a dropped table's pages."""
    return connection.execute("SELECT pg_database_size('postgres')").fetchone()[0]


def volume_pages(cluster, connection) -> int:
    """The pages the volume ever grew to (the writer's admin status): it grows only when the free
    list has nothing to give. (The status has it while the meta page is cached: a statement that
    reads it first makes sure.)"""
    database_bytes(connection)
    reply = wait_until(lambda: request_frame(cluster.admin_port, {"id": 1, "t": "status"}), "the writer's status")
    return reply["volume_pages"]


def fill(connection, name: str, rows: int) -> None:
    connection.execute(f"CREATE TABLE {name} (id serial PRIMARY KEY, k int NOT NULL, pad text)")
    connection.execute(f"CREATE INDEX {name}_k ON {name} (k)")
    connection.execute(f"INSERT INTO {name} (k, pad) SELECT g %% 97, %s FROM generate_series(1, {rows}) g",
                       ("p" * 120,))


def test_dropped_tables_pages_are_reused_so_create_and_drop_rounds_do_not_grow_the_volume(cluster):
    with cluster.connect() as connection:
        fill(connection, "fs_keeper", 500)
        connection.execute("VACUUM")
        start, volume_start = database_bytes(connection), volume_pages(cluster, connection)
        fill(connection, "fs_churn", 3000)
        one_table = database_bytes(connection) - start
        assert one_table >= 40 * PAGE_BYTES  # heap, primary key, index, sequence
        for round_ in range(6):
            connection.execute("DROP TABLE fs_churn")
            connection.execute("VACUUM")
            assert database_bytes(connection) <= start + 2 * PAGE_BYTES  # the table's pages are free
            fill(connection, "fs_churn", 3000)
        assert database_bytes(connection) <= start + one_table + 4 * PAGE_BYTES
        # Without reuse the volume would have grown by six more tables.
        assert (volume_pages(cluster, connection) - volume_start) * PAGE_BYTES <= one_table + 4 * PAGE_BYTES
        assert connection.execute("SELECT count(*), sum(k), min(id), max(id) FROM fs_churn").fetchone() == (
            3000, sum(g % 97 for g in range(1, 3001)), 1, 3000)
        assert connection.execute("SELECT count(*) FROM fs_churn WHERE k = 5").fetchone()[0] == 31
        assert connection.execute("SELECT count(*), sum(k) FROM fs_keeper").fetchone() == (
            500, sum(g % 97 for g in range(1, 501)))
        assert connection.execute("SELECT id, k FROM fs_keeper WHERE id = 321").fetchone() == (321, 321 % 97)
        assert connection.execute("SELECT count(*) FROM fs_keeper WHERE k = 3").fetchone()[0] == 6
        connection.execute("DROP TABLE fs_churn")
        connection.execute("DROP TABLE fs_keeper")


def test_truncate_and_a_rolled_back_create_give_their_pages_back_but_a_rolled_back_drop_keeps_the_table(cluster):
    with cluster.connect() as connection:
        fill(connection, "fs_cycled", 2000)
        connection.execute("VACUUM")
        start = database_bytes(connection)
        for _ in range(4):
            connection.execute("TRUNCATE fs_cycled")
            connection.execute("INSERT INTO fs_cycled (k, pad) SELECT g % 97, 'q' FROM generate_series(1, 2000) g")
            connection.execute("VACUUM")
        assert database_bytes(connection) <= start + 2 * PAGE_BYTES
        assert connection.execute("SELECT count(*) FROM fs_cycled").fetchone()[0] == 2000

        connection.execute("BEGIN")
        fill(connection, "fs_never", 2000)
        connection.execute("ROLLBACK")
        connection.execute("VACUUM")
        assert database_bytes(connection) <= start + 2 * PAGE_BYTES

        connection.execute("BEGIN")
        connection.execute("DROP TABLE fs_cycled")
        connection.execute("ROLLBACK")
        connection.execute("VACUUM")
        fill(connection, "fs_after", 2000)  # would take the pages of fs_cycled, were they freed
        assert connection.execute("SELECT count(*), sum(k) FROM fs_cycled").fetchone() == (
            2000, sum(g % 97 for g in range(1, 2001)))
        assert connection.execute("SELECT count(*) FROM fs_cycled WHERE k = 11").fetchone()[0] == 21
        connection.execute("DROP TABLE fs_cycled")
        connection.execute("DROP TABLE fs_after")


def test_a_dropped_tables_pages_are_freed_only_once_no_snapshot_from_before_the_drop_is_open(cluster):
    """A statement reads a relation through its snapshot's catalog: pages stay until no snapshot
    that may still see the catalog row is open (the prune horizon, readers' included)."""
    with cluster.connect() as connection, cluster.connect() as old:
        fill(connection, "fs_seen", 1500)
        connection.execute("VACUUM")
        old.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        assert old.execute("SELECT count(*) FROM fs_seen").fetchone()[0] == 1500
        connection.execute("DROP TABLE fs_seen")
        before = database_bytes(connection)
        connection.execute("VACUUM")
        assert database_bytes(connection) == before
        old.execute("COMMIT")
        connection.execute("VACUUM")
        assert database_bytes(connection) < before - 20 * PAGE_BYTES
        with pytest.raises(psycopg.errors.UndefinedTable):
            connection.execute("SELECT count(*) FROM fs_seen")


def test_a_dropped_indexs_pages_go_to_the_next_index_build(cluster):
    with cluster.connect() as connection:
        fill(connection, "fs_indexed", 4000)
        connection.execute("CREATE INDEX fs_indexed_pad ON fs_indexed (pad, k)")  # about 70 pages, built bottom up
        for _ in range(3):
            connection.execute("DROP INDEX fs_indexed_pad")
            connection.execute("VACUUM")
            before = volume_pages(cluster, connection)
            connection.execute("CREATE INDEX fs_indexed_pad ON fs_indexed (pad, k)")
            assert volume_pages(cluster, connection) <= before + 1
            assert connection.execute("SELECT count(*) FROM fs_indexed WHERE pad = %s AND k = 5",
                                      ("p" * 120,)).fetchone()[0] == sum(1 for g in range(1, 4001) if g % 97 == 5)
        plan = "\n".join(row[0] for row in connection.execute(
            "EXPLAIN SELECT count(*) FROM fs_indexed WHERE pad = 'x' AND k = 5").fetchall())
        assert "fs_indexed_pad" in plan
        connection.execute("DROP TABLE fs_indexed")


def test_vacuum_unlinks_index_leaves_it_empties_so_a_queue_keeps_its_index_small(cluster):
    """Rows enter at one end of the key range and leave at the other: without unlinking, every
    round would leave another run of empty leaves behind."""
    with cluster.connect() as connection:
        connection.execute("CREATE TABLE fs_queue (id serial PRIMARY KEY, body text)")
        connection.execute("INSERT INTO fs_queue (body) SELECT %s FROM generate_series(1, 2000)", ("b" * 60,))
        connection.execute("VACUUM fs_queue")
        index_start = connection.execute("SELECT pg_relation_size('fs_queue_pkey')").fetchone()[0]
        for round_ in range(1, 9):
            connection.execute("DELETE FROM fs_queue WHERE id <= %s", (round_ * 1000,))
            connection.execute("INSERT INTO fs_queue (body) SELECT %s FROM generate_series(1, 1000)", ("b" * 60,))
            connection.execute("VACUUM fs_queue")
        assert connection.execute("SELECT pg_relation_size('fs_queue_pkey')").fetchone()[0] <= index_start + 3 * PAGE_BYTES
        low, high = 8001, 10000
        assert connection.execute("SELECT count(*), min(id), max(id) FROM fs_queue").fetchone() == (2000, low, high)
        assert [row[0] for row in connection.execute(
            "SELECT id FROM fs_queue WHERE id BETWEEN 7990 AND 8010 ORDER BY id").fetchall()] == list(range(low, 8011))
        assert connection.execute("SELECT id FROM fs_queue WHERE id = 9500").fetchone() == (9500,)
        connection.execute("INSERT INTO fs_queue (id, body) VALUES (5, 'back'), (7999, 'in the gap')")
        assert [row[0] for row in connection.execute("SELECT id FROM fs_queue WHERE id < 8003 ORDER BY id")] == [
            5, 7999, 8001, 8002]
        connection.execute("DROP TABLE fs_queue")


def test_pg_database_size_knows_only_this_database(cluster):
    with cluster.connect() as connection:
        with pytest.raises(psycopg.errors.InvalidCatalogName):
            connection.execute("SELECT pg_database_size('nope')")


def test_free_pages_survive_a_writer_crash_and_are_reused_after_it(tmp_path):
    with LiveCluster(tmp_path / "cluster") as cluster:
        cluster.up()
        with cluster.connect() as connection:
            fill(connection, "fs_first", 4000)  # room for "fs_stays" and "fs_second" both
            connection.execute("DROP TABLE fs_first")
            connection.execute("VACUUM")
            fill(connection, "fs_stays", 300)  # its commits make VACUUM's records durable too (VDL)
            start = database_bytes(connection)
            volume_start = volume_pages(cluster, connection)
        cluster.kill("db1")
        cluster.restart()
        with cluster.connect() as connection:
            assert database_bytes(connection) == start
            fill(connection, "fs_second", 3000)
            assert database_bytes(connection) >= start + 40 * PAGE_BYTES
            assert volume_pages(cluster, connection) <= volume_start + 2  # it came from the free list
            assert connection.execute("SELECT count(*), sum(k) FROM fs_second").fetchone() == (
                3000, sum(g % 97 for g in range(1, 3001)))
            assert connection.execute("SELECT count(*), max(id) FROM fs_stays").fetchone() == (300, 300)
