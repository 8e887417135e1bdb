"""Readers and failover with real processes and real kills (DESIGN.md 5, 6): a cluster of six
storage nodes, a writer, two readers and the proxy, started with `aurora-db up`.

"The proxy performs failover: it detects a dead writer by health checks, promotes the reader with
the highest applied LSN, and points the writer endpoint at it. A returning old writer sees the
higher epoch and rejoins as a reader."
"""

from __future__ import annotations

import signal
import threading
import time

import psycopg
import pytest

from aurora_db.local_cluster import LiveCluster, wait_until

pytestmark = pytest.mark.slow

FAILOVER_BOUND_S = 30  # a test bound, far above the benchmark's figure: the test asserts that it ends
LOAD_WRITERS = 3


def ids_on(url: str, table: str) -> set[int]:
    with psycopg.connect(url, autocommit=True, connect_timeout=5) as connection:
        return {row[0] for row in connection.execute(f"SELECT id FROM {table}").fetchall()}


def holds(url: str, table: str, wanted: set[int], unwanted: set[int] = frozenset()) -> bool:
    """For wait_until: the node shows every `wanted` id and no `unwanted` one. A reader that is
    between two writers (it has not attached to the new one yet) refuses connections: not yet."""
    try:
        present = ids_on(url, table)
    except psycopg.OperationalError:
        return False
    return wanted <= present and not (unwanted & present)


class InsertLoad:
    """Threads inserting distinct ids through the writer endpoint, each on its own connection,
    reconnecting after any error. `acknowledged`: ids whose COMMIT was answered; `attempted`:
    every id ever sent (a commit whose answer was lost may or may not be there)."""

    def __init__(self, url: str, table: str, threads: int = LOAD_WRITERS):
        self.url, self.table = url, table
        self.acknowledged: set[int] = set()
        self.attempted: set[int] = set()
        self._ack_times: list[float] = []
        self.failures = 0
        self._lock = threading.Lock()
        self._next = iter(range(1, 10**9))
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def __enter__(self) -> "InsertLoad":
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)

    def acknowledged_since(self, moment: float) -> bool:
        with self._lock:
            return any(at > moment for at in self._ack_times)

    def _run(self) -> None:
        connection = None
        while not self._stop.is_set():
            with self._lock:
                row_id = next(self._next)
                self.attempted.add(row_id)
            try:
                if connection is None:
                    connection = psycopg.connect(self.url, autocommit=True, connect_timeout=5)
                connection.execute(f"INSERT INTO {self.table} VALUES (%s)", (row_id,))
                with self._lock:
                    self.acknowledged.add(row_id)
                    self._ack_times.append(time.monotonic())
            except psycopg.Error:
                with self._lock:
                    self.failures += 1
                if connection is not None:
                    connection.close()
                connection = None
                time.sleep(0.05)
        if connection is not None:
            connection.close()


def test_kill_9_of_the_writer_under_writes_loses_no_acknowledged_commit_and_a_paused_writer_never_commits_again(
        tmp_path):
    with LiveCluster(tmp_path / "cluster", readers=2) as cluster:
        cluster.up()
        with cluster.connect() as connection:
            connection.execute("CREATE TABLE acked (id int PRIMARY KEY)")

        # kill -9 of the writer while three sessions write through the writer endpoint
        with InsertLoad(cluster.url, "acked") as load:
            wait_until(lambda: len(load.acknowledged) >= 30, "the first commits")
            killed_at = time.monotonic()
            cluster.kill("db1")
            wait_until(lambda: load.acknowledged_since(killed_at), "a commit after the writer was killed",
                       FAILOVER_BOUND_S)
            time.sleep(1)  # a little more load on the new writer
        new_writer = cluster.proxy_status()["writer"]
        assert new_writer in ("db2", "db3")
        present = ids_on(cluster.url, "acked")
        assert load.acknowledged <= present, f"acknowledged commits lost: {sorted(load.acknowledged - present)[:10]}"
        assert present <= load.attempted  # nothing that no client sent
        survivor = "db3" if new_writer == "db2" else "db2"
        wait_until(lambda: holds(cluster.node_url(survivor), "acked", load.acknowledged),
                   "the remaining reader to hold every acknowledged commit")

        # the killed node comes back: as a reader, never as a second writer
        cluster.up()
        wait_until(lambda: cluster.status()["db1"]["role"] == "reader", "db1 to rejoin as a reader")
        assert cluster.status()[new_writer]["role"] == "writer"
        wait_until(lambda: holds(cluster.node_url("db1"), "acked", load.acknowledged),
                   "db1, back as a reader, to see every acknowledged commit")

        # SIGSTOP the writer: the proxy promotes a reader; the paused writer, woken, cannot commit
        old = psycopg.connect(cluster.node_url(new_writer), autocommit=True)
        old.execute("INSERT INTO acked VALUES (-1)")
        cluster.kill(new_writer, signal.SIGSTOP)
        try:
            reader = next(node for node in ("db1", "db2", "db3") if node != new_writer)
            wait_until(lambda: holds(cluster.node_url(reader), "acked", load.acknowledged | {-1}),
                       "a reader to serve every acknowledged row while the writer is paused")
            wait_until(lambda: cluster.proxy_status()["writer"] not in (None, new_writer),
                       "the proxy to promote a reader while the writer is paused", FAILOVER_BOUND_S)
            with cluster.connect() as connection:
                connection.execute("INSERT INTO acked VALUES (-2)")
        finally:
            cluster.kill(new_writer, signal.SIGCONT)
        with pytest.raises(psycopg.Error):
            old.execute("INSERT INTO acked VALUES (-3)")  # an error, never a false success
        old.close()
        wait_until(lambda: cluster.status()[new_writer]["role"] == "reader", "the paused writer to rejoin as a reader")
        assert -3 not in ids_on(cluster.url, "acked")
        assert {-1, -2} <= ids_on(cluster.url, "acked")
        wait_until(lambda: holds(cluster.node_url(new_writer), "acked", {-1, -2}, {-3}),
                   "the old writer, now a reader, to show the new writer's state")


def test_the_reader_endpoint_shows_only_states_the_writer_had_and_falls_back_to_the_writer(tmp_path):
    """Transfers keep the sum of balances constant and bump a counter in the same transaction: a
    reader must never show another sum (a torn transaction) or a smaller counter (going back)."""
    accounts, balance = 50, 100
    with LiveCluster(tmp_path / "cluster", readers=2) as cluster:
        cluster.up()
        with cluster.connect() as connection:
            connection.execute("CREATE TABLE bank (id int PRIMARY KEY, balance int)")
            connection.execute(f"INSERT INTO bank SELECT g, {balance} FROM generate_series(1, {accounts}) g")
            connection.execute("CREATE TABLE counter (id int PRIMARY KEY, n int)")
            connection.execute("INSERT INTO counter VALUES (1, 0)")
        with cluster.connect() as connection:
            connection.execute("INSERT INTO counter VALUES (2, 7)")
        wait_until(lambda: _reader_row(cluster) == (7,), "a committed row to reach the reader endpoint")

        stop = threading.Event()
        problems: list[str] = []

        def transfer(seed: int) -> None:
            with cluster.connect() as connection:
                step = 0
                while not stop.is_set():
                    step += 1
                    source, target = (seed + step) % accounts + 1, (seed + 3 * step) % accounts + 1
                    if source == target:
                        continue
                    try:
                        with connection.transaction():
                            connection.execute("UPDATE bank SET balance = balance - 1 WHERE id = %s", (source,))
                            connection.execute("UPDATE bank SET balance = balance + 1 WHERE id = %s", (target,))
                            connection.execute("UPDATE counter SET n = n + 1 WHERE id = 1")
                    except psycopg.errors.SerializationFailure:
                        pass

        def read(url: str) -> None:
            last = -1
            with psycopg.connect(url, autocommit=True) as connection:
                while not stop.is_set():
                    total, n = connection.execute(
                        "SELECT (SELECT sum(balance) FROM bank), (SELECT n FROM counter WHERE id = 1)").fetchone()
                    if total != accounts * balance:
                        problems.append(f"{url}: a torn transaction: sum {total}")
                    if n < last:
                        problems.append(f"{url}: back in time: {last} then {n}")
                    last = n

        threads = [threading.Thread(target=transfer, args=(seed,)) for seed in (1, 2)]
        threads += [threading.Thread(target=read, args=(url,))
                    for url in (cluster.reader_url, cluster.node_url("db2"), cluster.node_url("db3"))]
        for thread in threads:
            thread.start()
        time.sleep(4)
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
        assert problems == []
        with cluster.connect() as connection:
            final = connection.execute("SELECT n FROM counter WHERE id = 1").fetchone()
        wait_until(lambda: _reader_value(cluster.node_url("db2")) == final, "db2 to catch up with the writer")

        with cluster.connect_reader() as reader:
            assert reader.execute("SELECT pg_is_in_recovery()").fetchone() == (True,)
            with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
                reader.execute("UPDATE counter SET n = 0")

        cluster.kill("db2")
        cluster.kill("db3")
        wait_until(lambda: cluster.proxy_status()["reader_fallback_to_writer"], "the reader endpoint to fall back")
        with cluster.connect_reader() as reader:
            assert reader.execute("SELECT pg_is_in_recovery()").fetchone() == (False,)
            assert reader.execute("SELECT n FROM counter WHERE id = 2").fetchone() == (7,)


def _reader_row(cluster: LiveCluster):
    try:
        with cluster.connect_reader() as reader:
            return reader.execute("SELECT n FROM counter WHERE id = 2").fetchone()
    except psycopg.Error:
        return None


def _reader_value(url: str):
    with psycopg.connect(url, autocommit=True) as connection:
        return connection.execute("SELECT n FROM counter WHERE id = 1").fetchone()
