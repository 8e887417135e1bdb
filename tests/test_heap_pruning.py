"""HOT updates and page pruning (compute_node/heap.py): an UPDATE that changes no indexed column
stays on its page with no new index entry, and versions no snapshot can see are reclaimed, so a
table under steady updates stays the same size; yet every snapshot, on the writer or on a reader,
still sees the version it saw.

The first tests drive the redo ops and the prune planner directly; the rest run SQL on a real
cluster (pg_relation_size counts a table's heap pages)."""

from __future__ import annotations

import threading

import psycopg
import pytest

from aurora_db import pages
from aurora_db.cluster import request_frame
from aurora_db.records import Record
from compute_node.heap import REUSE_ENDED_VERSIONS_MIN, ReusablePages, chain, plan_prune
from aurora_db.local_cluster import LiveCluster, wait_until

COMMITTED, ABORTED, RUNNING = 1, 2, 0


class Page:
    """One heap page built by the shared apply function, as compute and storage build it."""

    def __init__(self):
        self.lsn = 0
        self.page = self.apply("heap_init", 0)

    def apply(self, op: str, *args) -> pages.HeapPage:
        self.lsn += 1
        record = Record(self.lsn, 7, self.lsn - 1, self.lsn - 1, self.lsn - 1, True, op, args)
        self.page = pages.apply(getattr(self, "page", None), record)
        return self.page

    def insert(self, xid: int, value) -> int:
        slot = self.page.free_slot()
        self.apply("heap_insert", slot, xid, [value])
        return slot

    def hot_update(self, slot: int, xid: int, value) -> int:
        new_slot = self.page.free_slot()
        self.apply("heap_hot_update", slot, xid, new_slot, [value])
        return new_slot

    def prune(self, statuses: dict[int, int], horizon: int) -> tuple | None:
        def dead(xmin, xmax):
            return statuses.get(xmin) == ABORTED or (0 < xmax < horizon and statuses.get(xmax) == COMMITTED)
        plan = plan_prune(self.page, dead)
        if plan is not None:
            self.apply("heap_prune", *plan)
        return plan


def values_of(page: pages.HeapPage, slot: int) -> list:
    return [entry[2][0] for _, entry in chain(page, slot)]


def same_after_the_wire(page: pages.HeapPage) -> None:
    copy = pages.from_wire(pages.to_wire(page))
    assert pages.to_wire(copy) == pages.to_wire(page)
    assert copy.used_bytes == page.used_bytes and copy.links == page.links and copy.heap_only == page.heap_only


def test_a_hot_chain_is_walked_from_its_root_and_pruning_redirects_the_root_past_dead_versions():
    page = Page()
    root = page.insert(10, "a")
    second = page.hot_update(root, 11, "b")
    third = page.hot_update(second, 12, "c")
    assert values_of(page.page, root) == ["a", "b", "c"]
    same_after_the_wire(page.page)
    used = page.page.used_bytes

    # 11 committed below the horizon: "a" is gone; 12 is still running, so "b" stays.
    plan = page.prune({10: COMMITTED, 11: COMMITTED, 12: RUNNING}, horizon=12)
    assert plan == ([root, second], [], [])
    assert page.page.tuples[root] == second  # a redirect: the index entry still finds the chain
    assert values_of(page.page, root) == ["b", "c"]
    assert page.page.used_bytes < used
    same_after_the_wire(page.page)

    plan = page.prune({10: COMMITTED, 11: COMMITTED, 12: COMMITTED}, horizon=13)
    assert plan == ([root, third], [], [second])
    assert values_of(page.page, root) == ["c"]
    assert page.page.free_slot() == second  # a freed heap-only slot is taken by the next tuple
    same_after_the_wire(page.page)


def test_a_chain_deleted_by_a_commit_below_the_horizon_leaves_a_dead_stub_and_frees_its_versions():
    page = Page()
    root = page.insert(10, "a")
    second = page.hot_update(root, 11, "b")
    page.apply("heap_set_xmax", second, 12)  # DELETE
    tail = page.insert(13, "other")
    assert page.prune({10: COMMITTED, 11: COMMITTED, 12: COMMITTED, 13: COMMITTED}, horizon=12) == ([root, second], [], [])
    assert page.prune({10: COMMITTED, 11: COMMITTED, 12: COMMITTED, 13: COMMITTED}, horizon=14) == ([], [root], [second])
    assert page.page.tuples[root] == pages.SLOT_DEAD and values_of(page.page, root) == []
    assert values_of(page.page, tail) == ["other"]
    same_after_the_wire(page.page)


def test_nothing_a_snapshot_may_see_is_pruned_and_an_aborted_update_leaves_the_old_version_reachable():
    page = Page()
    root = page.insert(10, "a")
    aborted = page.hot_update(root, 11, "b")
    statuses = {10: COMMITTED, 11: ABORTED}
    # The aborted version is still linked from a live one: it stays until the row is updated again.
    assert page.prune(statuses, horizon=100) is None
    assert values_of(page.page, root) == ["a", "b"]  # readers skip "b": its inserter aborted
    newer = page.hot_update(root, 12, "c")  # the next update relinks the root (xmax was an aborted id)
    assert values_of(page.page, root) == ["a", "c"]
    statuses[12] = COMMITTED
    assert page.prune(statuses, horizon=12) == ([], [], [aborted])  # "a" is seen by snapshots below 12
    assert values_of(page.page, root) == ["a", "c"]
    assert page.prune(statuses, horizon=13) == ([root, newer], [], [])
    assert values_of(page.page, root) == ["c"]


def test_a_link_whose_successor_was_not_made_by_the_old_versions_deleter_is_not_followed():
    page = Page()
    root = page.insert(10, "a")
    undone = page.hot_update(root, 11, "b")
    page.apply("heap_set_xmax", root, 0)  # the statement was undone: the old xmax is back
    page.apply("heap_set_xmax", undone, 11)
    assert values_of(page.page, root) == ["a"]
    assert page.prune({10: COMMITTED, 11: COMMITTED}, horizon=100) == ([], [], [undone])
    assert len(page.page.tuples) == 1 and root not in page.page.links  # the freed slot and its link are gone
    assert values_of(page.page, root) == ["a"]
    assert values_of(page.page, page.hot_update(root, 12, "c")) == ["c"]
    assert values_of(page.page, root) == ["a", "c"]
    same_after_the_wire(page.page)


def test_a_chain_ends_at_a_link_to_a_slot_beyond_the_page():
    """A page materialized before pruning dropped links to the slots it freed may hold one."""
    page = Page()
    root = page.insert(10, "a")
    page.page.tuples[root][1] = 11
    page.page.links[root] = 5
    assert values_of(page.page, root) == ["a"]


def test_a_page_is_pruned_for_new_rows_only_once_enough_versions_ended_on_it():
    reusable = ReusablePages()
    reusable.note(10, 1)  # one row moved off a full page (a bulk-loaded one): not worth a prune per insert
    assert reusable.candidates == []
    for _ in range(REUSE_ENDED_VERSIONS_MIN - 1):
        reusable.note(10, 1)  # more rows moved or deleted there
    assert reusable.candidates == [10]
    reusable.note(11, REUSE_ENDED_VERSIONS_MIN)  # a hot row's HOT versions, all left behind at once
    reusable.note(10, 1)
    assert reusable.candidates == [10, 11]


# --- SQL on a real cluster --------------------------------------------------------------------


@pytest.fixture
def cluster(sql_cluster):
    """The session's cluster (no readers: the writer's own snapshots alone hold pruning back)."""
    return sql_cluster


def relation_size(connection, name: str) -> int:
    size = connection.execute("SELECT pg_relation_size(%s::regclass)", (name,)).fetchone()[0]
    literal = connection.execute(f"SELECT pg_relation_size('{name}')").fetchone()[0]  # as psql users write it
    assert literal == size
    return size


def test_steady_updates_of_the_same_rows_keep_the_table_and_its_index_the_same_size(cluster):
    with cluster.connect() as connection:
        connection.execute("CREATE TABLE steady (id int PRIMARY KEY, n int NOT NULL, pad text)")
        connection.execute("INSERT INTO steady SELECT g, 0, %s FROM generate_series(1, 50) g", ("x" * 200,))
        def update_round(round_: int) -> None:
            connection.execute("UPDATE steady SET n = n + 1")
            connection.execute("UPDATE steady SET n = n + 1 WHERE id = %s", (round_ % 50 + 1,))

        for round_ in range(20):  # the table settles: room for two versions of every row, and some
            update_round(round_)
        table_before, index_before = relation_size(connection, "steady"), relation_size(connection, "steady_pkey")
        for round_ in range(20, 80):  # without pruning: 60 x 50 more versions, about 90 more pages
            update_round(round_)
        assert relation_size(connection, "steady") <= table_before + 8192
        # Index entries are never removed: the few updates that find no room on their page (not HOT)
        # add one each. 3,000 entries would take about 11 more pages; nearly all updates were HOT.
        assert relation_size(connection, "steady_pkey") <= index_before + 4 * 8192
        expected = [(i, 80 + sum(1 for r in range(80) if r % 50 + 1 == i)) for i in range(1, 51)]
        assert connection.execute("SELECT id, n FROM steady ORDER BY id").fetchall() == expected
        assert [connection.execute("SELECT id, n FROM steady WHERE id = %s", (i,)).fetchone()
                for i in range(1, 51)] == expected


def test_an_open_snapshot_keeps_seeing_its_versions_while_others_update_the_row_many_times(cluster):
    with cluster.connect() as setup:
        setup.execute("CREATE TABLE held (id int PRIMARY KEY, n int NOT NULL, pad text)")
        setup.execute("INSERT INTO held VALUES (1, 0, %s), (2, 0, 'z')", ("y" * 500,))
    with cluster.connect() as old, cluster.connect() as writer:
        old.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        assert old.execute("SELECT n FROM held WHERE id = 1").fetchone() == (0,)
        for _ in range(200):  # far more versions than a page holds: pruning must run, and keep n = 0
            writer.execute("UPDATE held SET n = n + 1 WHERE id = 1")
        assert old.execute("SELECT n FROM held WHERE id = 1").fetchone() == (0,)
        assert old.execute("SELECT sum(n) FROM held").fetchone() == (0,)
        old.execute("ROLLBACK")
        assert writer.execute("SELECT n FROM held WHERE id = 1").fetchone() == (200,)
        grown = relation_size(writer, "held")
        for _ in range(200):  # no snapshot holds old versions now: the space comes back
            writer.execute("UPDATE held SET n = n + 1 WHERE id = 1")
        assert relation_size(writer, "held") == grown
        assert writer.execute("SELECT n FROM held WHERE id = 1").fetchone() == (400,)


def test_a_statement_given_up_halfway_and_run_again_leaves_no_versions_behind(tmp_path):
    """With a small inline limit every full-table UPDATE is undone halfway and run again on the
    engine thread: the versions it had made must go at once, or the rerun finds no room for HOT
    updates and the table grows round after round."""
    with LiveCluster(tmp_path / "cluster", env={"AURORA_DB_ENGINE_INLINE_RECORDS_MAX": "30"}) as cluster:
        cluster.up()
        with cluster.connect() as connection:
            connection.execute("CREATE TABLE redone (id int PRIMARY KEY, n int NOT NULL, pad text)")
            connection.execute("INSERT INTO redone SELECT g, 0, %s FROM generate_series(1, 100) g", ("x" * 200,))
            moved_before = request_frame(cluster.admin_port, {"id": 1, "t": "status"})["engine_calls_moved"]
            for round_ in range(40):
                connection.execute("UPDATE redone SET n = n + 1")
                if round_ == 9:
                    settled = relation_size(connection, "redone")
            moved = request_frame(cluster.admin_port, {"id": 1, "t": "status"})["engine_calls_moved"] - moved_before
            assert moved >= 40  # every UPDATE was given up inline at least once
            assert relation_size(connection, "redone") <= settled + 8192
            assert connection.execute("SELECT count(*), min(n), max(n) FROM redone").fetchone() == (100, 40, 40)


def test_of_two_equal_snapshots_the_one_that_lives_longer_still_holds_pruning_back(cluster):
    """Snapshots taken with nothing in between are equal; each is tracked on its own."""
    with cluster.connect() as setup:
        setup.execute("CREATE TABLE twins (id int PRIMARY KEY, n int NOT NULL, pad text)")
        setup.execute("INSERT INTO twins VALUES (1, 0, %s), (2, 0, 'z')", ("y" * 500,))
    with cluster.connect() as first, cluster.connect() as second, cluster.connect() as writer:
        first.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        assert first.execute("SELECT n FROM twins WHERE id = 1").fetchone() == (0,)
        second.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        assert second.execute("SELECT n FROM twins WHERE id = 1").fetchone() == (0,)
        first.execute("COMMIT")
        for _ in range(200):
            writer.execute("UPDATE twins SET n = n + 1 WHERE id = 1")
        assert second.execute("SELECT n FROM twins WHERE id = 1").fetchone() == (0,)
        assert second.execute("SELECT sum(n) FROM twins").fetchone() == (0,)
        second.execute("COMMIT")
        assert second.execute("SELECT n FROM twins WHERE id = 1").fetchone() == (200,)


def test_a_readers_open_snapshot_holds_back_the_writers_pruning(tmp_path):
    with LiveCluster(tmp_path / "cluster", readers=1) as cluster:
        cluster.up()
        _a_readers_snapshot_holds(cluster)


def _a_readers_snapshot_holds(cluster: LiveCluster) -> None:
    with cluster.connect() as setup:
        setup.execute("CREATE TABLE on_reader (id int PRIMARY KEY, n int NOT NULL, pad text)")
        setup.execute("INSERT INTO on_reader VALUES (1, 0, %s)", ("r" * 500,))
    wait_until(lambda: _reader_sees(cluster, "SELECT n FROM on_reader WHERE id = 1") == (0,),
               "the row to reach the reader")
    with psycopg.connect(cluster.node_url("db2"), autocommit=True) as reader, cluster.connect() as writer:
        reader.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        assert reader.execute("SELECT n FROM on_reader WHERE id = 1").fetchone() == (0,)
        for _ in range(200):
            writer.execute("UPDATE on_reader SET n = n + 1 WHERE id = 1")
        wait_until(lambda: _reader_sees(cluster, "SELECT n FROM on_reader WHERE id = 1") == (200,),
                   "the updates to reach the reader")
        assert reader.execute("SELECT n FROM on_reader WHERE id = 1").fetchone() == (0,)
        assert reader.execute("SELECT count(*) FROM on_reader").fetchone() == (1,)
        reader.execute("ROLLBACK")
        for _ in range(200):  # the reader holds nothing now: the writer prunes again, the table stops growing
            writer.execute("UPDATE on_reader SET n = n + 1 WHERE id = 1")
        grown = relation_size(writer, "on_reader")
        for _ in range(200):
            writer.execute("UPDATE on_reader SET n = n + 1 WHERE id = 1")
        assert relation_size(writer, "on_reader") <= grown + 8192


def _reader_sees(cluster, sql: str):
    try:
        with psycopg.connect(cluster.node_url("db2"), autocommit=True) as reader:
            return reader.execute(sql).fetchone()
    except psycopg.Error:
        return None


def test_rolled_back_hot_updates_leave_the_old_row_and_concurrent_updaters_lose_nothing(cluster):
    with cluster.connect() as connection:
        connection.execute("CREATE TABLE counters (id int PRIMARY KEY, n int NOT NULL)")
        connection.execute("INSERT INTO counters SELECT g, 0 FROM generate_series(1, 4) g")
        with pytest.raises(psycopg.errors.DivisionByZero):
            connection.execute("UPDATE counters SET n = n + 1 / (id - 4)")  # the last row fails: all undone
        connection.execute("UPDATE counters SET n = 100")
        connection.execute("BEGIN")
        connection.execute("UPDATE counters SET n = -1")
        connection.execute("ROLLBACK")
        connection.execute("BEGIN")
        connection.execute("UPDATE counters SET n = 7 WHERE id = 1")
        with pytest.raises(psycopg.errors.UniqueViolation):
            connection.execute("INSERT INTO counters VALUES (2, 0)")
        connection.execute("ROLLBACK")
        assert connection.execute("SELECT id, n FROM counters ORDER BY id").fetchall() == [(i, 100) for i in (1, 2, 3, 4)]

    def add(times: int) -> None:
        with cluster.connect() as connection:
            for _ in range(times):
                while True:
                    try:
                        connection.execute("UPDATE counters SET n = n + 1 WHERE id = 1")
                        break
                    except psycopg.errors.SerializationFailure:
                        continue

    threads = [threading.Thread(target=add, args=(150,)) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    with cluster.connect() as connection:
        assert connection.execute("SELECT n FROM counters WHERE id = 1").fetchone() == (700,)
        assert connection.execute("SELECT count(*) FROM counters").fetchone() == (4,)


def test_an_index_built_after_hot_updates_of_its_column_finds_each_rows_current_value(cluster):
    with cluster.connect() as connection:
        connection.execute("CREATE TABLE later (id int PRIMARY KEY, tag text NOT NULL)")
        connection.execute("INSERT INTO later SELECT g, 'old-' || g FROM generate_series(1, 100) g")
        connection.execute("UPDATE later SET tag = 'new-' || id")  # HOT: tag has no index yet
        connection.execute("UPDATE later SET tag = 'newest-' || id WHERE id <= 10")
        connection.execute("CREATE UNIQUE INDEX later_tag ON later (tag)")
        assert connection.execute("SELECT id FROM later WHERE tag = 'new-50'").fetchone() == (50,)
        assert connection.execute("SELECT id FROM later WHERE tag = 'newest-5'").fetchone() == (5,)
        assert connection.execute("SELECT count(*) FROM later WHERE tag = 'old-50'").fetchone() == (0,)
        assert connection.execute("SELECT count(*) FROM later WHERE tag = 'new-5'").fetchone() == (0,)
        with pytest.raises(psycopg.errors.UniqueViolation):
            connection.execute("INSERT INTO later VALUES (1000, 'newest-5')")
        connection.execute("INSERT INTO later VALUES (1000, 'new-5')")  # free: row 5 holds 'newest-5' now
        connection.execute("UPDATE later SET tag = 'moved' WHERE id = 1")  # not HOT: the index has tag
        assert connection.execute("SELECT id FROM later WHERE tag = 'moved'").fetchone() == (1,)
        assert connection.execute("SELECT count(*) FROM later WHERE tag = 'newest-1'").fetchone() == (0,)


def test_vacuum_removes_the_index_entries_of_deleted_rows_and_their_slots_take_new_rows(cluster):
    with cluster.connect() as connection:
        connection.execute("CREATE TABLE churn (id int PRIMARY KEY, tag text NOT NULL, pad text)")
        connection.execute("CREATE INDEX churn_tag ON churn (tag)")
        connection.execute("INSERT INTO churn SELECT g, 'tag-' || g, %s FROM generate_series(1, 600) g", ("p" * 100,))
        connection.execute("VACUUM churn")
        sizes = [relation_size(connection, name) for name in ("churn", "churn_pkey", "churn_tag")]
        with cluster.connect() as old:
            old.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
            assert old.execute("SELECT count(*) FROM churn").fetchone() == (600,)
            for round_ in range(3):  # delete most rows and put them back, VACUUM between
                connection.execute("DELETE FROM churn WHERE id > 100")
                connection.execute("VACUUM (VERBOSE) churn")
                if round_ == 0:  # the open snapshot still sees the deleted rows: VACUUM kept them
                    assert old.execute("SELECT count(*), sum(id) FROM churn").fetchone() == (600, 180300)
                    old.execute("ROLLBACK")
                    connection.execute("VACUUM churn")
                connection.execute("INSERT INTO churn SELECT g, 'tag-' || g, %s FROM generate_series(101, 600) g",
                                   ("q" * 100,))
        # The table: within a page (a freed slot keeps its line pointer); without VACUUM, 1,500 more rows.
        assert relation_size(connection, "churn") <= sizes[0] + 8192
        # The indexes: within a page each (without VACUUM, 1,500 more entries: about 8 more pages).
        # A leaf VACUUM emptied is unlinked and its keys come back through splits; an insert the
        # engine gave up and ran again (a loaded machine) leaves entries until the next VACUUM.
        now = [relation_size(connection, name) for name in ("churn_pkey", "churn_tag")]
        assert all(size <= before + 8192 for size, before in zip(now, sizes[1:])), (now, sizes)
        assert connection.execute("SELECT count(*), sum(id) FROM churn").fetchone() == (600, 180300)
        assert connection.execute("SELECT id FROM churn WHERE tag = 'tag-450'").fetchall() == [(450,)]
        assert connection.execute("SELECT pad FROM churn WHERE id = 450").fetchone() == ("q" * 100,)
        with pytest.raises(psycopg.errors.UniqueViolation):
            connection.execute("INSERT INTO churn VALUES (450, 'again', '')")
        connection.execute("BEGIN")  # rows of a transaction that aborted: VACUUM reclaims them too
        connection.execute("INSERT INTO churn SELECT g, 'gone-' || g, %s FROM generate_series(1001, 1500) g",
                           ("r" * 100,))
        connection.execute("ROLLBACK")
        connection.execute("VACUUM churn")
        connection.execute("INSERT INTO churn SELECT g, 'kept-' || g, %s FROM generate_series(1001, 1500) g",
                           ("r" * 100,))
        connection.execute("DELETE FROM churn WHERE id > 1000")
        assert relation_size(connection, "churn") <= sizes[0] + 8192 + 500 * 150  # room for one batch only
        with pytest.raises(psycopg.errors.UndefinedTable):
            connection.execute("VACUUM no_such_table")
        connection.execute("VACUUM")  # every table
        with connection.transaction():
            with pytest.raises(psycopg.errors.ActiveSqlTransaction):
                connection.execute("VACUUM churn")
