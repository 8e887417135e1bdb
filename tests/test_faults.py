"""Fault tests on a real cluster: real processes on 127.0.0.1, killed with SIGKILL, restarted with
`aurora-db up` (aurora_db/local_cluster.py). Each test checks one promise of DESIGN.md 2, 3 and 6:

  V = 6, Vw = 4, Vr = 3. Lose a whole AZ (2 nodes): reads and writes go on. Lose an AZ plus one
  more node (3 nodes): reads go on, no data is lost, writes wait until a fourth segment is back.

Every wait polls a condition up to a generous deadline; no assertion depends on how fast the
machine is. Data is checked against what the test itself inserted (and had acknowledged).
"""

from __future__ import annotations

import dataclasses
import random
import shutil
import signal
import socket
import struct
import threading
import time

import psycopg
import pytest

from aurora_db.cluster import request_frame
from aurora_db.framing import encode_frame
from aurora_db.local_cluster import CONDITION_TIMEOUT_S, STORAGE_NODE_IDS, WRITER, LiveCluster, wait_until

SMALL_CACHE_PAGES = 16  # CACHE_PAGES_MIN: far less than the data, so reads go to storage
ROWS_PER_INSERT = 100
NOTE_CHARS = 150
SHORT_COMMIT_TIMEOUT_MS = 3_000  # a commit with no write quorum fails this fast (test 2)
LONG_COMMIT_TIMEOUT_MS = 300_000  # a commit waits this long: far beyond restarting a node
SOCKET_TIMEOUT_S = 30
THREAD_JOIN_TIMEOUT_S = 120


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------

@pytest.fixture
def make_cluster(tmp_path):
    """Start clusters on free ports; every one is brought down (and its leftovers SIGKILLed) after."""
    clusters: list[LiveCluster] = []

    def make(*, cache_pages: int | None = None, env: dict[str, str] | None = None) -> LiveCluster:
        cluster = LiveCluster(tmp_path / f"cluster{len(clusters)}", cache_pages=cache_pages, env=env)
        clusters.append(cluster)
        cluster.up()
        return cluster

    yield make
    for cluster in clusters:
        cluster.close()


def note_of(row_id: int) -> str:
    return f"row-{row_id:08d}-" + "x" * NOTE_CHARS


def create_rows_table(connection: psycopg.Connection) -> None:
    connection.execute("CREATE TABLE rows (id int PRIMARY KEY, grp int, note text)")


def insert_rows(connection: psycopg.Connection, ids: list[int]) -> None:
    """Insert rows (id, id % 7, note_of(id)), ROWS_PER_INSERT per statement, each statement committed."""
    for start in range(0, len(ids), ROWS_PER_INSERT):
        chunk = ids[start:start + ROWS_PER_INSERT]
        values = ", ".join(f"({row_id}, {row_id % 7}, '{note_of(row_id)}')" for row_id in chunk)
        connection.execute(f"INSERT INTO rows VALUES {values}")


def assert_rows_are(connection: psycopg.Connection, expected_ids: set[int]) -> None:
    """Every query shape we have answers exactly as the inserted rows say it must."""
    rows = connection.execute("SELECT id, grp, note FROM rows ORDER BY id").fetchall()
    assert [row[0] for row in rows] == sorted(expected_ids), "the set of rows differs from what was committed"
    assert all(grp == row_id % 7 and note == note_of(row_id) for row_id, grp, note in rows), "a row's content differs"
    count, total, low, high = connection.execute("SELECT count(*), sum(id), min(id), max(id) FROM rows").fetchone()
    assert (count, total) == (len(expected_ids), sum(expected_ids))
    assert (low, high) == (min(expected_ids), max(expected_ids))
    groups = connection.execute("SELECT grp, count(*) FROM rows GROUP BY grp ORDER BY grp").fetchall()
    expected_groups = {}
    for row_id in expected_ids:
        expected_groups[row_id % 7] = expected_groups.get(row_id % 7, 0) + 1
    assert groups == sorted(expected_groups.items())
    probes = random.Random(len(expected_ids)).sample(sorted(expected_ids), min(20, len(expected_ids)))
    for row_id in probes:  # point lookups through the primary key index
        assert connection.execute("SELECT note FROM rows WHERE id = %s", (row_id,)).fetchall() == [(note_of(row_id),)]
    missing = max(expected_ids) + 1
    assert connection.execute("SELECT note FROM rows WHERE id = %s", (missing,)).fetchall() == []


def writer_admin_status(cluster: LiveCluster) -> dict:
    """The writer's own numbers from its admin port: vdl, lsn (last allocated), cache_misses, ..."""
    reply = request_frame(cluster.admin_port, {"id": 1, "t": "status"})
    assert reply is not None and reply.get("ok"), f"the writer's admin port did not answer: {reply!r}"
    return reply


def scls(entry: dict) -> dict[str, int]:
    return entry.get("scl") or {}


def kill_storage(cluster: LiveCluster, node_ids: tuple[str, ...]) -> None:
    for node_id in node_ids:
        cluster.kill(node_id, signal.SIGKILL)


# ---------------------------------------------------------------------------------------------
# 1. Lose a whole AZ: reads and commits go on
# ---------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_losing_a_whole_az_stops_neither_reads_nor_commits(make_cluster):
    """Aurora 2017, 2.1: 'we can lose a single AZ and one additional node without losing data
    availability [for reads], and lose any two nodes, including an AZ failure, and maintain write
    availability.' Kill -9 both storage nodes of AZ a: every commit still completes, and every row
    committed before is still read back, from storage (the cache holds 16 pages)."""
    cluster = make_cluster(cache_pages=SMALL_CACHE_PAGES)
    with cluster.connect() as connection:
        create_rows_table(connection)
        before = list(range(1, 2001))
        insert_rows(connection, before)

        kill_storage(cluster, ("a1", "a2"))
        misses_before = writer_admin_status(cluster)["cache_misses"]
        assert_rows_are(connection, set(before))
        assert writer_admin_status(cluster)["cache_misses"] > misses_before, "the reads did not reach storage"

        after = list(range(2001, 2601))
        insert_rows(connection, after)  # autocommit: each statement's commit waited for VDL
        for row_id in range(2601, 2611):  # single-row commits
            connection.execute("INSERT INTO rows VALUES (%s, %s, %s)", (row_id, row_id % 7, note_of(row_id)))
        with connection.transaction():  # one multi-statement transaction
            for row_id in range(2611, 2621):
                connection.execute("INSERT INTO rows VALUES (%s, %s, %s)", (row_id, row_id % 7, note_of(row_id)))
        assert_rows_are(connection, set(range(1, 2621)))

    status = cluster.status()
    assert [status[node_id]["state"] for node_id in STORAGE_NODE_IDS] == ["stopped"] * 2 + ["running"] * 4
    assert status[WRITER]["state"] == "running"


# ---------------------------------------------------------------------------------------------
# 2. Lose an AZ plus one: reads go on, a commit waits, then fails clearly or completes
# ---------------------------------------------------------------------------------------------

def commit_error_is_quorum_timeout(error: psycopg.Error) -> bool:
    return error.sqlstate == "08006" and "write quorum" in str(error)


@pytest.mark.slow
def test_losing_an_az_plus_one_fails_a_commit_with_a_clear_timeout_and_loses_nothing(make_cluster):
    """DESIGN.md 2: 'Lose an AZ plus one more node (3 nodes): reads go on, no data is lost, writes
    wait until a fourth segment is back.' With no fourth segment within the commit timeout, the
    commit fails with a timeout error naming the write quorum (its outcome is unknown, as when a
    connection drops during COMMIT). Once the nodes return, the database is consistent and usable:
    the unacknowledged transaction is all there or not at all, before and after a writer restart."""
    cluster = make_cluster(cache_pages=SMALL_CACHE_PAGES,
                           env={"AURORA_DB_COMMIT_TIMEOUT_MS": str(SHORT_COMMIT_TIMEOUT_MS)})
    committed = set(range(1, 1501))
    with cluster.connect() as connection:
        create_rows_table(connection)
        insert_rows(connection, sorted(committed))

    kill_storage(cluster, ("a1", "a2", "b1"))
    with cluster.connect() as connection:
        assert_rows_are(connection, committed)  # reads go on: one complete segment serves a page

    unknown = [5001, 5002, 5003]
    inserted = False
    with cluster.connect() as connection:
        with pytest.raises(psycopg.Error) as raised:
            with connection.transaction():
                for row_id in unknown:
                    connection.execute("INSERT INTO rows VALUES (%s, %s, %s)", (row_id, row_id % 7, note_of(row_id)))
                inserted = True
    assert inserted, f"an INSERT failed, not the COMMIT: {raised.value!r}"
    assert commit_error_is_quorum_timeout(raised.value), f"not a clear quorum timeout: {raised.value!r}"
    assert "not acknowledged by a write quorum" in str(raised.value), str(raised.value)

    # A transaction too big for the 16-page cache: its pages cannot be evicted (storage could not
    # give them back), so a statement fails with the same timeout, and ROLLBACK still ends it.
    big = list(range(7001, 9001))
    statement_done = False
    with cluster.connect() as connection:
        with pytest.raises(psycopg.Error) as raised:
            with connection.transaction():
                connection.execute("INSERT INTO rows VALUES " + ", ".join(
                    f"({row_id}, {row_id % 7}, '{note_of(row_id)}')" for row_id in big))
                statement_done = True
    assert commit_error_is_quorum_timeout(raised.value), f"not a clear quorum timeout: {raised.value!r}"
    assert cluster.is_running(WRITER), "a lost quorum must not crash the writer"

    cluster.restart()  # the three storage nodes come back and are caught up
    wait_until(lambda: (s := writer_admin_status(cluster))["vdl"] >= s["lsn"],
               "the writer's VDL to reach its last allocated LSN once a write quorum is back")

    def visible_unknown_rows() -> list[int]:
        with cluster.connect() as connection:
            return [row[0] for row in connection.execute(
                "SELECT id FROM rows WHERE id >= %s AND id <= %s ORDER BY id", (unknown[0], unknown[-1])).fetchall()]

    outcome = visible_unknown_rows()
    assert outcome in ([], unknown), f"a transaction is partly visible: {outcome}"
    if outcome:
        committed |= set(unknown)
    with cluster.connect() as connection:
        big_visible = connection.execute("SELECT count(*) FROM rows WHERE id >= %s AND id <= %s",
                                         (big[0], big[-1])).fetchone()[0]
        assert big_visible in (0, len(big)), f"{big_visible} of {len(big)} rows of one transaction are visible"
        assert statement_done or not big_visible, "a transaction that failed before COMMIT is visible"
        if big_visible:
            committed |= set(big)
        assert_rows_are(connection, committed)
        if not big_visible:  # rolled back: its keys are free again
            insert_rows(connection, big)
            committed |= set(big)
        insert_rows(connection, list(range(6001, 6101)))  # usable: commits complete again
        committed |= set(range(6001, 6101))
        assert_rows_are(connection, committed)

    cluster.kill(WRITER, signal.SIGKILL)
    cluster.restart()  # recovery decides every transaction from what storage holds
    with cluster.connect() as connection:
        assert_rows_are(connection, committed)


@pytest.mark.slow
def test_a_commit_without_a_write_quorum_waits_and_completes_when_a_fourth_segment_returns(make_cluster):
    """DESIGN.md 3: 'a commit is acknowledged to the client only when VDL >= its commit LSN'. With
    three storage nodes down the commit gets no acknowledgment; `up` brings them back, they are
    caught up from the writer's buffer, and the same commit then completes."""
    cluster = make_cluster(env={"AURORA_DB_COMMIT_TIMEOUT_MS": str(LONG_COMMIT_TIMEOUT_MS)})
    with cluster.connect() as connection:
        create_rows_table(connection)
        insert_rows(connection, list(range(1, 101)))

    kill_storage(cluster, ("a1", "b1", "c1"))  # one of every AZ
    outcome: dict[str, object] = {}

    def commit_one_row() -> None:
        try:
            with cluster.connect() as connection:
                connection.execute("INSERT INTO rows VALUES (%s, %s, %s)", (101, 101 % 7, note_of(101)))
            outcome["result"] = "committed"
        except Exception as error:  # reported by the assertion below
            outcome["result"] = error

    committer = threading.Thread(target=commit_one_row, daemon=True)
    committer.start()
    wait_until(lambda: (s := writer_admin_status(cluster))["lsn"] > s["vdl"],
               "the commit's records to be allocated and shipped")
    # VDL cannot pass the commit LSN with only three segments per PG: no acknowledgment yet.
    assert committer.is_alive() and "result" not in outcome, f"answered without a write quorum: {outcome}"
    with cluster.connect() as connection:  # reads go on meanwhile, and do not see the row
        assert connection.execute("SELECT count(*) FROM rows").fetchone() == (100,)

    cluster.restart()
    committer.join(THREAD_JOIN_TIMEOUT_S)
    assert not committer.is_alive(), "the commit did not complete after a fourth segment came back"
    assert outcome["result"] == "committed", outcome
    with cluster.connect() as connection:
        assert_rows_are(connection, set(range(1, 102)))


# ---------------------------------------------------------------------------------------------
# 3. Kill -9 the writer under a concurrent workload
# ---------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Ledger:
    """What the clients know about every transaction they tried, by transaction number."""

    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)
    next_txn: int = 1
    acknowledged: dict[int, list[int]] = dataclasses.field(default_factory=dict)  # COMMIT answered OK
    unknown: dict[int, list[int]] = dataclasses.field(default_factory=dict)  # COMMIT sent, no answer
    never_committed: dict[int, list[int]] = dataclasses.field(default_factory=dict)  # died before COMMIT
    errors_before_kill: list[str] = dataclasses.field(default_factory=list)
    killed: bool = False

    def take_txn(self) -> int:
        with self.lock:
            txn = self.next_txn
            self.next_txn += 1
            return txn

    def record(self, bucket: dict[int, list[int]], txn: int, ids: list[int]) -> None:
        with self.lock:
            bucket[txn] = ids


ROWS_PER_TXN_MAX = 4
WORKLOAD_THREADS = 4
WRITER_KILL_ROUNDS = 3
ACKNOWLEDGED_BEFORE_KILL = 150  # per round: commits the workload has had answered before the kill


def run_client(cluster: LiveCluster, ledger: Ledger, seed: int) -> None:
    """Insert transactions until the connection breaks: single-row and multi-row autocommit
    statements, and BEGIN; INSERT ...; INSERT ...; COMMIT blocks whose rows belong together."""
    rng = random.Random(seed)
    try:
        connection = cluster.connect()
    except psycopg.Error as error:
        with ledger.lock:
            if not ledger.killed:
                ledger.errors_before_kill.append(f"connect: {error!r}")
        return
    with connection:
        while True:
            txn = ledger.take_txn()
            ids = [txn * 10 + part for part in range(rng.randint(1, ROWS_PER_TXN_MAX))]
            shape = rng.choice(("statement", "block", "block"))
            commit_sent = False
            try:
                if shape == "statement":
                    values = ", ".join(f"({row_id}, {txn}, {part})" for part, row_id in enumerate(ids))
                    commit_sent = True  # an autocommit statement is its own commit
                    connection.execute(f"INSERT INTO ledger VALUES {values}")
                else:
                    connection.execute("BEGIN")
                    for part, row_id in enumerate(ids):
                        connection.execute("INSERT INTO ledger VALUES (%s, %s, %s)", (row_id, txn, part))
                    commit_sent = True
                    connection.execute("COMMIT")
            except psycopg.Error as error:
                ledger.record(ledger.unknown if commit_sent else ledger.never_committed, txn, ids)
                with ledger.lock:
                    if not ledger.killed:
                        ledger.errors_before_kill.append(repr(error))
                return
            ledger.record(ledger.acknowledged, txn, ids)


def check_ledger(connection: psycopg.Connection, ledger: Ledger) -> tuple[int, int]:
    """Every acknowledged transaction is wholly there; an unanswered one is all there or absent;
    one that never sent COMMIT is absent; nothing else is there. Returns (unknown kept, unknown lost)."""
    present: dict[int, list[int]] = {}
    for row_id, txn, _part in connection.execute("SELECT id, txn, part FROM ledger ORDER BY id").fetchall():
        present.setdefault(txn, []).append(row_id)
    lost = {txn: ids for txn, ids in ledger.acknowledged.items() if present.get(txn) != ids}
    assert not lost, f"acknowledged transactions lost or torn (txn: expected ids): {dict(list(lost.items())[:5])}"
    torn = {txn: present[txn] for txn, ids in ledger.unknown.items() if txn in present and present[txn] != ids}
    assert not torn, f"unacknowledged transactions partly visible: {torn}"
    ghosts = {txn: present[txn] for txn in ledger.never_committed if txn in present}
    assert not ghosts, f"transactions that never sent COMMIT are visible: {ghosts}"
    known = ledger.acknowledged.keys() | ledger.unknown.keys()
    strangers = set(present) - known
    assert not strangers, f"rows of transactions nobody committed: {sorted(strangers)[:10]}"
    kept = sum(1 for txn in ledger.unknown if txn in present)
    lost_count = len(ledger.unknown) - kept
    for txn, ids in ledger.unknown.items():  # recovery decided: the outcome never changes again
        (ledger.acknowledged if txn in present else ledger.never_committed)[txn] = ids
    ledger.unknown.clear()
    return kept, lost_count


@pytest.mark.slow
def test_writer_killed_under_load_keeps_every_acknowledged_commit_and_no_partial_transaction(make_cluster):
    """DESIGN.md 6: a restarted writer recovers from storage alone ('no redo replay on compute').
    Aurora 2017, 4.2.1: 'the database ... can ... acknowledge the commit only when the VDL ... is
    greater than or equal to the transaction's commit LSN' and on recovery 'undo' what is not
    durable. Kill -9 the writer while four clients insert; after `up`, every acknowledged commit is
    there and every other transaction is all-or-nothing. Three rounds on the same volume."""
    cluster = make_cluster(cache_pages=SMALL_CACHE_PAGES)  # after recovery, reads come from storage
    with cluster.connect() as connection:
        connection.execute("CREATE TABLE ledger (id int PRIMARY KEY, txn int, part int)")
    ledger = Ledger()
    restart_seconds = []
    unanswered_kept = unanswered_lost = 0
    for round_number in range(WRITER_KILL_ROUNDS):
        with ledger.lock:
            ledger.killed = False
            acknowledged_at_start = len(ledger.acknowledged)
        clients = [threading.Thread(target=run_client, args=(cluster, ledger, round_number * 100 + n), daemon=True)
                   for n in range(WORKLOAD_THREADS)]
        for client in clients:
            client.start()
        wait_until(lambda: len(ledger.acknowledged) - acknowledged_at_start >= ACKNOWLEDGED_BEFORE_KILL
                   or not any(client.is_alive() for client in clients),
                   f"round {round_number}: {ACKNOWLEDGED_BEFORE_KILL} commits acknowledged")
        with ledger.lock:
            ledger.killed = True
        assert not ledger.errors_before_kill, f"clients failed before the kill: {ledger.errors_before_kill[:5]}"
        cluster.kill(WRITER, signal.SIGKILL)
        for client in clients:
            client.join(THREAD_JOIN_TIMEOUT_S)
            assert not client.is_alive(), "a client did not notice that the writer died"

        started = time.monotonic()
        cluster.restart()
        with cluster.connect() as connection:
            connection.execute("INSERT INTO ledger VALUES (%s, %s, %s)", (-1 - round_number, -1 - round_number, 0))
        restart_seconds.append(time.monotonic() - started)
        ledger.acknowledged[-1 - round_number] = [-1 - round_number]
        with cluster.connect() as connection:
            kept, lost = check_ledger(connection, ledger)
        unanswered_kept += kept
        unanswered_lost += lost
    print(f"writer restart to first commit: {', '.join(f'{s:.1f} s' for s in restart_seconds)}; "
          f"{len(ledger.acknowledged)} transactions durable, of which {unanswered_kept} unanswered; "
          f"{unanswered_lost} unanswered ones rolled back")


# ---------------------------------------------------------------------------------------------
# 4. A restarted storage node gets what it missed, and can then serve reads alone
# ---------------------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("source", ["writer_buffer", "peer_after_writer_restart"])
def test_a_restarted_storage_node_is_caught_up_and_then_serves_reads_without_its_peers(make_cluster, source):
    """DESIGN.md 6a: 'the writer keeps records not yet acknowledged by all six segments in a bounded
    buffer and resends them to a segment that reconnects behind'; DESIGN.md 4: a read is 'served by
    ONE segment whose SCL >= read point'. Kill -9 c1, commit rows it misses, restart it and wait for
    its SCL to reach the others'. Then kill three others (reads go on with c1 one of the three
    survivors, no write quorum), then the other two survivors: c1 alone answers every read.
    In the second case the writer is killed too and restarts with an empty buffer, so what c1
    missed can only come from a peer segment."""
    cluster = make_cluster(cache_pages=SMALL_CACHE_PAGES)
    committed = set(range(1, 501))
    with cluster.connect() as connection:
        create_rows_table(connection)
        insert_rows(connection, sorted(committed))

    cluster.kill("c1", signal.SIGKILL)
    missed = set(range(501, 2501))
    with cluster.connect() as connection:
        insert_rows(connection, sorted(missed))  # a write quorum of five: c1 misses all of it
    committed |= missed
    before_restart = cluster.status()
    assert before_restart["c1"]["state"] == "stopped"
    others_then = {pg: max(scls(before_restart[n]).get(pg, 0) for n in STORAGE_NODE_IDS if n != "c1")
                   for pg in scls(before_restart["a1"])}

    if source == "peer_after_writer_restart":
        cluster.kill(WRITER, signal.SIGKILL)
    cluster.restart()

    def c1_caught_up() -> bool:
        status = cluster.status()
        others = [n for n in STORAGE_NODE_IDS if n != "c1"]
        pgs = set().union(*(scls(status[n]) for n in others))
        return bool(pgs) and all(
            scls(status["c1"]).get(pg, 0) >= max(scls(status[n]).get(pg, 0) for n in others) for pg in pgs)

    wait_until(c1_caught_up, "c1's SCL to reach the other segments' SCLs")
    caught_up = scls(cluster.status()["c1"])
    assert all(caught_up.get(pg, 0) >= scl for pg, scl in others_then.items()), (caught_up, others_then)

    kill_storage(cluster, ("a1", "a2", "b1"))  # survivors: b2, c2 and the caught-up c1
    with cluster.connect() as connection:
        misses = writer_admin_status(cluster)["cache_misses"]
        assert_rows_are(connection, committed)
        assert writer_admin_status(cluster)["cache_misses"] > misses, "the reads did not reach storage"

    kill_storage(cluster, ("b2", "c2"))  # c1 is the only segment left: every page read is its answer
    with cluster.connect() as connection:
        misses = writer_admin_status(cluster)["cache_misses"]
        assert_rows_are(connection, committed)
        assert writer_admin_status(cluster)["cache_misses"] > misses, "the reads did not reach storage"

    cluster.restart()
    with cluster.connect() as connection:
        insert_rows(connection, list(range(2501, 2601)))
        assert_rows_are(connection, committed | set(range(2501, 2601)))


# ---------------------------------------------------------------------------------------------
# 5. Bad bytes close one connection, never a server
# ---------------------------------------------------------------------------------------------

PG_PROTOCOL_3 = 196608


def pg_startup(port: int) -> socket.socket:
    """A raw PostgreSQL connection, through startup to its first ReadyForQuery."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=SOCKET_TIMEOUT_S)
    parameters = b"user\0postgres\0database\0postgres\0\0"
    sock.sendall(struct.pack("!ii", 8 + len(parameters), PG_PROTOCOL_3) + parameters)
    received = b""
    while True:
        while len(received) >= 5 and len(received) >= 1 + struct.unpack("!i", received[1:5])[0]:
            kind, length = received[:1], struct.unpack("!i", received[1:5])[0]
            received = received[1 + length:]
            if kind == b"Z":
                return sock
            assert kind != b"E", "startup failed"
        chunk = sock.recv(65536)
        assert chunk, "the server closed a good connection during startup"
        received += chunk


def closed_by_peer(sock: socket.socket) -> bool:
    """Read (and drop: an ErrorResponse may come first) until the server closes the connection."""
    sock.settimeout(SOCKET_TIMEOUT_S)
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        pass
    except TimeoutError:
        return False
    finally:
        sock.close()
    return True


def send_and_expect_close(port: int, payload: bytes, *, after_startup: bool = False) -> None:
    sock = pg_startup(port) if after_startup else socket.create_connection(("127.0.0.1", port), timeout=SOCKET_TIMEOUT_S)
    try:
        sock.sendall(payload)
    except (BrokenPipeError, ConnectionResetError):  # closed even before we finished: fine
        sock.close()
        return
    assert closed_by_peer(sock), f"port {port} kept a connection open after {payload[:16]!r}..."


OVERSIZE_LENGTH = 0x7FFF_FFF0
GARBAGE = bytes(random.Random(7).randrange(256) for _ in range(4096))


@pytest.mark.slow
def test_garbage_and_oversize_frames_close_only_that_connection(make_cluster):
    """DESIGN.md 10: expected failures (bad bytes) are handled at the edge: bytes that break a
    protocol, or a frame over its limit, close that one connection; the server goes on serving
    the clients it has and the ones that come next. Checked on the writer's PostgreSQL port, its
    admin port, and a storage node's port."""
    cluster = make_cluster()
    bystander = cluster.connect()  # a client connected before, and still served after
    bystander.execute("CREATE TABLE rows (id int PRIMARY KEY, grp int, note text)")
    committed = {1}
    insert_rows(bystander, [1])

    # PostgreSQL port: a bad startup packet, an oversize one, and after startup an unknown message
    # type, an oversize message and plain garbage.
    port = cluster.port
    send_and_expect_close(port, struct.pack("!ii", 8, 0x1234_5678))
    send_and_expect_close(port, struct.pack("!ii", OVERSIZE_LENGTH, PG_PROTOCOL_3) + b"user\0")
    send_and_expect_close(port, GARBAGE)
    send_and_expect_close(port, b"\xfe" + struct.pack("!i", 4), after_startup=True)
    send_and_expect_close(port, b"Q" + struct.pack("!i", OVERSIZE_LENGTH) + b"SELECT 1", after_startup=True)
    send_and_expect_close(port, GARBAGE, after_startup=True)

    # Admin port and a storage node: a frame that is not msgpack, a frame over FRAME_BYTES_MAX, garbage.
    for frame_port in (cluster.admin_port, cluster.storage_port("b2")):
        send_and_expect_close(frame_port, struct.pack("!I", 4) + b"\xc1\xc1\xc1\xc1")
        send_and_expect_close(frame_port, struct.pack("!I", 0xFFFF_FFFF) + b"\x00" * 64)
        send_and_expect_close(frame_port, encode_frame({"id": 1, "t": "status"})[:4] + GARBAGE)
        assert request_frame(frame_port, {"id": 2, "t": "status"})["ok"], f"port {frame_port} stopped answering"

    assert all(entry["state"] == "running" for entry in cluster.status().values())
    for row_id in range(2, 12):  # the writer still commits through every storage node
        insert_rows(bystander, [row_id])
        committed.add(row_id)
    assert_rows_are(bystander, committed)
    with cluster.connect() as newcomer:
        assert_rows_are(newcomer, committed)
    bystander.close()

    def b2_takes_records() -> bool:  # a commit waits for 4 of 6 nodes: b2 and a1 may each lag a moment
        status = cluster.status()
        return bool(scls(status["b2"])) and scls(status["b2"]) == scls(status["a1"])

    wait_until(b2_takes_records, "b2's SCLs to equal a1's (b2 stopped taking records?)")


# ---------------------------------------------------------------------------------------------
# 6. The storage is the database
# ---------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_the_storage_is_the_database(make_cluster):
    """Aurora 2017, 3.2: 'the log is the database'; DESIGN.md 1: no page is ever written from
    compute to storage. With a 16-page cache and far more data, every query is answered from pages
    storage rebuilt from redo; then the writer is stopped, its working directory deleted, and a new
    writer finds all of it on storage."""
    cluster = make_cluster(cache_pages=SMALL_CACHE_PAGES)
    expected = set(range(1, 4001))
    with cluster.connect() as connection:
        create_rows_table(connection)
        insert_rows(connection, sorted(expected))
        deleted = set(range(100, 4001, 50))
        connection.execute("DELETE FROM rows WHERE id >= 100 AND id % 50 = 0")
        expected -= deleted
        status = writer_admin_status(cluster)
        assert status["cache_pages"] <= 2 * SMALL_CACHE_PAGES, status  # bounded (pins may add a few)
        misses = status["cache_misses"]
        assert_rows_are(connection, expected)
        assert writer_admin_status(cluster)["cache_misses"] - misses > SMALL_CACHE_PAGES, "reads did not reach storage"
        assert connection.execute("SELECT id FROM rows WHERE id >= 120 AND id <= 160 ORDER BY id DESC LIMIT 3"
                                  ).fetchall() == [(i,) for i in sorted(expected & set(range(120, 161)))[::-1][:3]]

    cluster.kill(WRITER, signal.SIGTERM)  # a clean stop; then its working directory goes
    shutil.rmtree(cluster.directory / WRITER)
    assert not (cluster.directory / WRITER).exists()
    cluster.restart()
    with cluster.connect() as connection:
        assert_rows_are(connection, expected)
        insert_rows(connection, [5000])
        assert_rows_are(connection, expected | {5000})
