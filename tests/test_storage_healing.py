"""Storage nodes that heal themselves (DESIGN.md 7), tested with real processes, real files and real
signals: coalescing and garbage collection keep disk use bounded, scrubbing finds flipped bytes and
repairs them, an emptied node is rebuilt from its peers, and a paused node catches up by gossip.

Aurora 2017, 3.3: "the storage node ... gossip[s] with peers to fill gaps ... coalesce[s] log
records into new data pages ... periodically garbage collect[s] old versions ... periodically
validate[s] CRC codes on pages". The cluster's files are made small here (AURORA_DB_LOG_FILE_BYTES_MAX,
AURORA_DB_COALESCE_RECORDS_MIN, AURORA_DB_SCRUB_INTERVAL_MS) so that each mechanism runs within seconds.
"""

from __future__ import annotations

import shutil
import signal
import threading
from pathlib import Path

import pytest

from aurora_db.cluster import request_frame
from aurora_db.local_cluster import STORAGE_NODE_IDS, WRITER, LiveCluster, wait_until
from tests.test_faults import assert_rows_are, create_rows_table, insert_rows

SMALL_FILES = {"AURORA_DB_LOG_FILE_BYTES_MAX": "200000", "AURORA_DB_COALESCE_RECORDS_MIN": "500",
               "AURORA_DB_SCRUB_INTERVAL_MS": "2000"}
SMALL_CACHE_PAGES = 16  # the writer reads nearly every page from storage


@pytest.fixture
def cluster(tmp_path):
    with LiveCluster(tmp_path / "cluster", cache_pages=SMALL_CACHE_PAGES, env=SMALL_FILES) as live:
        live.up()
        yield live


def storage_status(cluster: LiveCluster, node_id: str) -> dict:
    reply = request_frame(cluster.storage_port(node_id), {"id": 1, "t": "status"})
    assert reply is not None and reply.get("ok"), f"{node_id} did not answer status: {reply!r}"
    return reply


def data_dir(cluster: LiveCluster, node_id: str) -> Path:
    return cluster.directory / f"storage-{node_id}"


def disk_bytes(directory: Path) -> int:
    return sum(path.stat().st_size for path in directory.rglob("*") if path.is_file())


def segments(status: dict) -> dict[int, dict]:
    return {int(pg): info for pg, info in status["segments"].items()}


def caught_up(cluster: LiveCluster, node_id: str, others: list[str]) -> bool:
    """node_id's SCL of every PG reaches the highest of the others'."""
    mine = segments(storage_status(cluster, node_id))
    theirs = [segments(storage_status(cluster, other)) for other in others]
    pgs = set().union(*theirs)
    return bool(pgs) and all(mine.get(pg, {}).get("scl", 0) >= max(t.get(pg, {}).get("scl", 0) for t in theirs)
                             for pg in pgs)


def collected(cluster: LiveCluster, node_id: str) -> bool:
    """The node wrote a page image and removed a log file it covers."""
    stats = storage_status(cluster, node_id)["stats"]
    return stats["images_written"] > 0 and stats["log_files_removed"] > 0


def update_rounds(cluster: LiveCluster, rows: int, rounds: int) -> None:
    """Add 1 to every counter `rounds` times; every row always shows every committed round."""
    with cluster.connect() as connection:
        start = connection.execute("SELECT min(n) FROM counters").fetchone()[0]
        for round_number in range(1, rounds + 1):
            connection.execute("UPDATE counters SET n = n + 1")
            assert connection.execute("SELECT count(*), min(n), max(n) FROM counters").fetchone() == (
                rows, start + round_number, start + round_number)


@pytest.mark.slow
def test_steady_updates_keep_disk_use_bounded_and_the_data_right(cluster):
    """Garbage collection: log and page versions below every compute node's read point go (a few
    records that pin old log files are copied forward instead), so the bytes on disk stop growing
    under a steady update workload, and a restart reads them back."""
    rows = 300
    with cluster.connect() as connection:
        connection.execute("CREATE TABLE counters (id int PRIMARY KEY, n int)")
        connection.execute(f"INSERT INTO counters SELECT g, 0 FROM generate_series(1, {rows}) AS g")
    update_rounds(cluster, rows, 20)
    wait_until(lambda: collected(cluster, "a1"), "a1 to write a page image and remove a log file")
    sizes = []
    for _ in range(4):  # each batch of rounds writes as much log as the table's size, several times
        update_rounds(cluster, rows, 20)
        wait_until(lambda: storage_status(cluster, "a1")["stats"]["log_files_removed"] > 0, "collection")
        sizes.append(disk_bytes(data_dir(cluster, "a1")))
    status = storage_status(cluster, "a1")
    assert status["stats"]["records_copied_forward"] > 0, "the catalog's few records pin old files: copied"
    coalesce_records_min = int(SMALL_FILES["AURORA_DB_COALESCE_RECORDS_MIN"])
    assert status["horizon"] > 0 and all(info["base"] > 0 or info["records"] < coalesce_records_min
                                         for info in segments(status).values()), status  # few: copied forward
    assert max(sizes[1:]) < 2 * sizes[0] + 1_000_000, f"disk use keeps growing: {sizes}"
    held = sum(info["records"] for info in segments(status).values())
    assert held < 20 * rows * 4, f"{held} records still held in memory after collection"

    cluster.down()
    cluster.up()
    with cluster.connect() as connection:
        assert connection.execute("SELECT count(*), min(n), max(n) FROM counters").fetchone() == (rows, 100, 100)


def flip_byte(path: Path, offset: int) -> None:
    with path.open("r+b") as file:
        file.seek(offset)
        byte = file.read(1)
        file.seek(offset)
        file.write(bytes([byte[0] ^ 0xFF]))


@pytest.mark.slow
def test_flipped_bytes_are_found_never_served_and_repaired(cluster):
    """Scrubbing: a byte flipped in a log file and one in a page image of a1 are detected, the log
    file is rewritten with good copies and the image copied from a peer; then, with every
    other segment dead, a1 alone answers every read right; restarted, it finds no damage left."""
    committed = set(range(1, 3001))
    with cluster.connect() as connection:
        create_rows_table(connection)
        insert_rows(connection, sorted(committed))
    node = data_dir(cluster, "a1")
    wait_until(lambda: list((node / "pages").glob("pg-*.img")), "a1 to have a page image")
    image = max((node / "pages").glob("pg-*.img"), key=lambda p: p.stat().st_size)
    current = sorted((node / "log").glob("*.log"))[-1]  # never removed while it is the current file
    before = storage_status(cluster, "a1")["stats"]
    flip_byte(image, image.stat().st_size // 2)
    flip_byte(current, current.stat().st_size // 2)

    def repaired() -> bool:
        stats = storage_status(cluster, "a1")["stats"]
        return (stats["damaged_found"] >= before["damaged_found"] + 2
                and stats["damaged_repaired"] >= before["damaged_repaired"] + 2
                and not any(info["damaged"] for info in segments(storage_status(cluster, "a1")).values()))

    wait_until(repaired, "a1's scrubber to find and repair both flipped bytes")
    with cluster.connect() as connection:  # one more write so every segment's SCL passes the reads' point
        insert_rows(connection, [3001])
    committed.add(3001)
    wait_until(lambda: caught_up(cluster, "a1", [n for n in STORAGE_NODE_IDS if n != "a1"]), "a1 to be complete")

    for node_id in STORAGE_NODE_IDS[1:]:
        cluster.kill(node_id, signal.SIGKILL)
    with cluster.connect() as connection:  # a1 is the only segment left: every page read is its answer
        assert_rows_are(connection, committed)

    cluster.kill("a1", signal.SIGKILL)
    cluster.up()
    assert "damaged entries skipped 0" in cluster.log_text("a1").rsplit("listening on", 2)[-2]
    with cluster.connect() as connection:
        assert_rows_are(connection, committed)


@pytest.mark.slow
def test_an_emptied_node_is_rebuilt_from_its_peers_and_then_two_others_can_die(cluster):
    """Rebuild: a1's data directory is wiped (a replaced disk) while writes go on; started again it
    learns the epoch from its peers, copies their page images and the records above them, and
    becomes complete. The writer is restarted too, so it has no records of its own to resend:
    everything a1 holds comes from its peers. Then two other nodes die: nothing is lost, and
    commits go on. Then a1 alone answers every read."""
    committed = set(range(1, 3001))
    with cluster.connect() as connection:
        create_rows_table(connection)
        insert_rows(connection, sorted(committed))
    wait_until(lambda: collected(cluster, "a2"), "a2 to collect records into page images")
    cluster.kill("a1", signal.SIGKILL)
    shutil.rmtree(data_dir(cluster, "a1"))
    with cluster.connect() as connection:
        insert_rows(connection, list(range(3001, 4001)))
    committed |= set(range(3001, 4001))
    cluster.kill(WRITER, signal.SIGKILL)

    cluster.up()
    wait_until(lambda: caught_up(cluster, "a1", [n for n in STORAGE_NODE_IDS if n != "a1"]),
               "a1 to be rebuilt to its peers' SCLs")
    status = storage_status(cluster, "a1")
    assert not status["rebuilding"] and status["epoch"] == storage_status(cluster, "b1")["epoch"]
    assert status["stats"]["images_installed"] > 0, "a1 did not copy a page image from a peer"

    cluster.kill("b1", signal.SIGKILL)
    cluster.kill("c1", signal.SIGKILL)
    with cluster.connect() as connection:
        insert_rows(connection, list(range(4001, 4101)))
        committed |= set(range(4001, 4101))
        assert_rows_are(connection, committed)

    wait_until(lambda: caught_up(cluster, "a1", ["a2", "b2", "c2"]), "a1 to hold the last commits")
    for node_id in ("a2", "b2", "c2"):
        cluster.kill(node_id, signal.SIGKILL)
    with cluster.connect() as connection:
        assert_rows_are(connection, committed)


@pytest.mark.slow
def test_a_paused_storage_node_catches_up_by_gossip_alone(cluster):
    """Gossip: c2 is paused (SIGSTOP) while rows are committed, then the writer is killed, so no
    compute node can resend what c2 missed. Resumed, c2 fills its gaps from its peers; then it alone
    answers every read right."""
    committed = set(range(1, 501))
    with cluster.connect() as connection:
        create_rows_table(connection)
        insert_rows(connection, sorted(committed))
    cluster.kill("c2", signal.SIGSTOP)
    try:
        with cluster.connect() as connection:
            insert_rows(connection, list(range(501, 3001)))
        committed |= set(range(501, 3001))
        cluster.kill(WRITER, signal.SIGKILL)
    finally:
        cluster.kill("c2", signal.SIGCONT)
    others = [n for n in STORAGE_NODE_IDS if n != "c2"]
    wait_until(lambda: caught_up(cluster, "c2", others), "c2 to catch up from its peers")
    assert storage_status(cluster, "c2")["stats"]["records_from_peers"] > 0

    cluster.up()  # the writer again
    for node_id in others:
        cluster.kill(node_id, signal.SIGKILL)
    with cluster.connect() as connection:
        assert_rows_are(connection, committed)


@pytest.mark.slow
def test_a_dead_storage_node_is_replaced_by_a_new_one_while_writes_go_on(cluster):
    """Membership change: c2 dies for good; `aurora-db replace-storage c2` starts c3 (a new id and
    port), which copies its segments from its peers, and the writer switches c2's place to it while
    a client keeps committing. Then a1 and b1 die too: commits go on only if c3 counts in the write
    quorum (a2, b2, c1, c3). Every acknowledged row is there, and a restarted cluster uses c3."""
    with cluster.connect() as connection:
        create_rows_table(connection)
        insert_rows(connection, list(range(1, 1001)))
    acknowledged = set(range(1, 1001))
    stop = threading.Event()
    errors: list[BaseException] = []

    def keep_committing() -> None:
        try:
            with cluster.connect() as connection:
                row_id = 1001
                while not stop.is_set():
                    insert_rows(connection, [row_id])
                    acknowledged.add(row_id)
                    row_id += 1
        except BaseException as error:  # the assertion below reports it
            errors.append(error)

    writer_thread = threading.Thread(target=keep_committing)
    writer_thread.start()
    try:
        cluster.kill("c2", signal.SIGKILL)
        done = cluster.replace_storage("c2")
        assert done.returncode == 0, done.stdout + done.stderr
        assert "c2 -> c3" in done.stdout
        cluster.kill("a1", signal.SIGKILL)
        cluster.kill("b1", signal.SIGKILL)
        count = len(acknowledged)
        wait_until(lambda: len(acknowledged) > count + 50, "commits with a2, b2, c1 and c3 as the quorum")
    finally:
        stop.set()
        writer_thread.join()
    assert not errors, errors
    with cluster.connect() as connection:
        assert_rows_are(connection, acknowledged)

    cluster.down()
    cluster.up()
    status = cluster.status()
    assert "c3" in status and "c2" not in status
    for node_id in ("a1", "b1"):  # c3 is in every quorum the writer can form now
        cluster.kill(node_id, signal.SIGKILL)
    with cluster.connect() as connection:
        insert_rows(connection, [10**6])
        assert_rows_are(connection, acknowledged | {10**6})
