"""The proxy as a real process on real sockets (proxy/server.py; its decisions are unit-tested in
tests/test_proxy_routing.py).

1. Against stand-in compute nodes (tests/fake_node.py: real processes that answer the admin
   protocol, promote and demote, and tell a client which node it reached), started by the real
   `up` with the real proxy: routing of both endpoints, failover after kill -9 and after SIGSTOP,
   a failed promotion, a planned switchover with `aurora-db failover`.
2. A proxy with no compute node to reach: clients get a PostgreSQL error, not a hang.
3. In front of a real cluster (`aurora-db up --readers 0`): psycopg traffic through both endpoints
   (the reader endpoint falls back to the writer), and bad bytes or a client vanishing mid-message
   close only that connection.
"""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import struct
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from aurora_db.cluster import (Layout, Processes, load_layout, request_frame, start_cluster, stop_cluster)
from tests.conftest import free_port_range
from aurora_db.local_cluster import LiveCluster, wait_until
from tests.test_faults import GARBAGE, closed_by_peer, pg_startup, send_and_expect_close

FAKE_PROGRAM = (sys.executable, str(Path(__file__).with_name("fake_node.py")))
AURORA_DB = str(Path(sys.executable).with_name("aurora-db"))
READY_TIMEOUT_S = 30
FAILOVER_TIMEOUT_S = 30  # health checks (3 x (1 s timeout + 0.3 s interval)) and a promotion, with room
CONNECT_TIMEOUT_S = 5
COMMAND_TIMEOUT_S = 120
SOCKET_TIMEOUT_S = 10
PG_PROTOCOL_3 = 196608


def node_behind(url: str) -> str:
    """Which compute node a new connection to `url` reaches (a stand-in names itself at startup)."""
    with psycopg.connect(url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S) as connection:
        assert connection.execute("SELECT 1").fetchall() == [(1,)]
        return connection.info.parameter_status("aurora_node_id")


def admin_status(port: int) -> dict:
    reply = request_frame(port, {"id": 1, "t": "status"})
    assert reply is not None and reply.get("ok"), reply
    return reply


def url_of(port: int) -> str:
    return f"postgresql://postgres@127.0.0.1:{port}/postgres"


# ---------------------------------------------------------------------------------------------
# 1. The real proxy in front of stand-in compute nodes
# ---------------------------------------------------------------------------------------------

class StandIns:
    """A cluster of stand-in nodes and the real proxy, started by the real `up` in this process."""

    def __init__(self, directory: Path, layout: Layout, processes: Processes):
        self.directory, self.layout, self.processes = directory, layout, processes

    @property
    def writer_url(self) -> str:
        return url_of(self.layout.port)

    @property
    def reader_url(self) -> str:
        return url_of(self.layout.proxy.reader_port)

    def proxy(self) -> dict:
        return admin_status(self.layout.proxy.admin_port)

    def role_of(self, node_id: str) -> str | None:
        reply = request_frame(self.layout.node(node_id).admin_port, {"id": 1, "t": "status"}, timeout_s=1)
        return None if reply is None else reply.get("role")

    def signal(self, node_id: str, signum: int) -> None:
        os.kill(self.layout.node(node_id).pid, signum)
        if signum == signal.SIGKILL:
            self.processes.children[node_id].wait()  # reap it: `up` ran in this process

    def wait_for_writer(self, node_id: str) -> dict:
        return wait_until(lambda: (status := self.proxy())["writer"] == node_id and status,
                          f"the writer endpoint to point at {node_id}", FAILOVER_TIMEOUT_S)


@pytest.fixture
def standins(tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_NODE_REAL_PROXY", "1")
    directory = tmp_path / "cluster"

    def start(readers: int = 2, **env: str) -> StandIns:
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        layout, processes = start_cluster(directory, free_port_range(), 64, io.StringIO(), READY_TIMEOUT_S,
                                          FAKE_PROGRAM, requested_readers=readers)
        return StandIns(directory, layout, processes)

    yield start
    if (directory / "cluster.json").exists():
        for node in load_layout(directory).nodes:  # nothing stays paused, or it would not stop
            if node.pid is not None and Processes(directory).is_alive(node):
                os.kill(node.pid, signal.SIGCONT)
        stop_cluster(directory, io.StringIO(), grace_s=2)


def test_the_writer_endpoint_reaches_the_writer_and_the_reader_endpoint_spreads_over_readers(standins):
    cluster = standins(readers=2)
    assert node_behind(cluster.writer_url) == "db1"
    held = [psycopg.connect(cluster.reader_url, autocommit=True) for _ in range(4)]
    try:
        reached = [connection.info.parameter_status("aurora_node_id") for connection in held]
        assert sorted(reached) == ["db2", "db2", "db3", "db3"], "spread evenly"
        status = cluster.proxy()
        assert status["writer"] == "db1" and status["readers"] == ["db2", "db3"]
        assert status["connections"] == 4
        assert status["nodes"]["db2"]["connections"] == {"writer": 0, "reader": 2}
        assert status["nodes"]["db1"]["health"] == "up" and status["nodes"]["db1"]["status"]["role"] == "writer"
    finally:
        for connection in held:
            connection.close()
    wait_until(lambda: cluster.proxy()["connections"] == 0, "the proxy to count the closed connections")


def test_the_reader_endpoint_falls_back_to_the_writer_when_no_reader_is_up(standins):
    cluster = standins(readers=1)
    assert node_behind(cluster.reader_url) == "db2"
    cluster.signal("db2", signal.SIGKILL)
    wait_until(lambda: cluster.proxy()["readers"] == ["db1"], "the reader endpoint to fall back to the writer")
    assert node_behind(cluster.reader_url) == "db1"
    assert cluster.proxy()["reader_fallback_to_writer"]


def test_kill_9_of_the_writer_promotes_the_best_reader_and_up_brings_it_back_as_a_reader(standins):
    cluster = standins(readers=2)
    cluster.signal("db1", signal.SIGKILL)
    status = cluster.wait_for_writer("db2")  # same tier and LSN: the lower node id
    assert node_behind(cluster.writer_url) == "db2"
    assert cluster.role_of("db2") == "writer"
    failover = status["failovers"][-1]
    assert (failover["kind"], failover["old_writer"], failover["new_writer"]) == ("automatic", "db1", "db2")
    assert 0 < failover["duration_ms"] < FAILOVER_TIMEOUT_S * 1000
    assert status["readers"] == ["db3"]
    assert "failover (automatic) done: writer db1 -> db2" in (cluster.directory / "logs" / "proxy.log").read_text()

    out = io.StringIO()
    start_cluster(cluster.directory, None, 64, out, READY_TIMEOUT_S, FAKE_PROGRAM)
    assert "started db1" in out.getvalue() and "started db2" not in out.getvalue()
    assert cluster.role_of("db1") == "reader", "a returning node never starts as a second writer"
    wait_until(lambda: cluster.proxy()["readers"] == ["db1", "db3"], "db1 to serve reads again")
    assert load_layout(cluster.directory).writer.node_id == "db2"


def test_a_failed_promotion_is_retried_with_the_next_reader(standins):
    cluster = standins(readers=2, FAKE_PROMOTE_FAIL="db2")
    cluster.signal("db1", signal.SIGKILL)
    status = cluster.wait_for_writer("db3")
    assert status["failovers"][-1]["failed_candidates"] == ["db2"]
    assert cluster.role_of("db2") == "reader"
    assert "promoting db2 failed" in (cluster.directory / "logs" / "proxy.log").read_text()


def test_a_paused_writer_is_replaced_and_told_to_step_down_when_it_wakes(standins):
    """The issue's SIGSTOP case, as far as the proxy goes: a paused writer answers no health check,
    so a reader is promoted; the proxy closes the connections it had routed to the paused writer;
    once resumed, the old writer (an older epoch) is demoted."""
    cluster = standins(readers=1)
    held = psycopg.connect(cluster.writer_url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S)
    try:
        assert held.info.parameter_status("aurora_node_id") == "db1"
        cluster.signal("db1", signal.SIGSTOP)
        cluster.wait_for_writer("db2")
        with pytest.raises(psycopg.OperationalError):
            held.execute("SELECT 1")  # closed by the proxy: never an answer from the paused writer
    finally:
        cluster.signal("db1", signal.SIGCONT)
        held.close()
    wait_until(lambda: cluster.role_of("db1") == "reader", "the old writer to be demoted")
    assert node_behind(cluster.writer_url) == "db2"
    wait_until(lambda: cluster.proxy()["readers"] == ["db1"], "the old writer to serve reads")


def test_a_planned_switchover_with_aurora_db_failover(standins):
    cluster = standins(readers=2)
    done = subprocess.run([AURORA_DB, "failover", "--data", str(cluster.directory), "--target", "db3"],
                          capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("writer db1 -> db3 in ") and done.stdout.rstrip().endswith(" ms")
    assert cluster.proxy()["writer"] == "db3" and node_behind(cluster.writer_url) == "db3"
    assert cluster.role_of("db1") == "reader", "demoted after db3 was promoted"
    record = cluster.proxy()["failovers"][-1]
    assert (record["kind"], record["old_writer"], record["new_writer"], record["demote_ok"]) == (
        "planned", "db1", "db3", True)

    refused = subprocess.run([AURORA_DB, "failover", "--data", str(cluster.directory), "--target", "db3"],
                             capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)
    assert refused.returncode == 1 and "db3 is already the writer" in refused.stderr

    wait_until(lambda: cluster.proxy()["readers"] == ["db1", "db2"], "the demoted writer to serve reads")
    shown = subprocess.run([AURORA_DB, "status", "--data", str(cluster.directory), "--json"],
                           capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)
    document = json.loads(shown.stdout)
    assert document["endpoints"]["writer"]["node_id"] == "db3"
    assert document["endpoints"]["reader"]["node_ids"] == ["db1", "db2"]
    roles = {entry["node_id"]: entry["role"] for entry in document["nodes"]}
    assert (roles["db1"], roles["db2"], roles["db3"], roles["proxy"]) == ("reader", "reader", "writer", "proxy")

    back = subprocess.run([AURORA_DB, "failover", "--data", str(cluster.directory), "--target", "db1"],
                          capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)
    assert back.returncode == 0 and back.stdout.startswith("writer db3 -> db1 in "), back.stderr


# ---------------------------------------------------------------------------------------------
# 2. No compute node to reach
# ---------------------------------------------------------------------------------------------

@pytest.fixture
def lonely_proxy(tmp_path):
    """A real proxy whose only compute node does not exist; yields its base port P."""
    port = free_port_range()
    log = open(tmp_path / "proxy.log", "wb")
    child = subprocess.Popen([sys.executable, "-m", "aurora_db.cli", "proxy", "--writer-listen", f"127.0.0.1:{port}",
                              "--reader-listen", f"127.0.0.1:{port + 1}", "--admin", f"127.0.0.1:{port + 2}",
                              "--node", f"db1=127.0.0.1:{port + 3}:{port + 4}", "--connections-max", "2",
                              "--data", str(tmp_path / "proxy")], stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: request_frame(port + 2, {"id": 1, "t": "status"}, timeout_s=1), "the proxy to answer",
                   READY_TIMEOUT_S)
        yield port
    finally:
        child.terminate()
        child.wait(timeout=COMMAND_TIMEOUT_S)
        log.close()


def first_reply(port: int, *, ssl_request: bool) -> bytes:
    """The bytes a server sends back to a startup (after an SSLRequest, if asked), until it closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=SOCKET_TIMEOUT_S) as sock:
        received = b""
        if ssl_request:
            sock.sendall(struct.pack("!ii", 8, 80877103))
            received = sock.recv(1)
        parameters = b"user\0postgres\0database\0postgres\0\0"
        sock.sendall(struct.pack("!ii", 8 + len(parameters), PG_PROTOCOL_3) + parameters)
        while chunk := sock.recv(65536):
            received += chunk
        return received


def test_with_no_node_to_reach_a_client_gets_57P03_and_the_connection_closes(lonely_proxy):
    port = lonely_proxy
    with pytest.raises(psycopg.OperationalError, match="no writer available"):
        psycopg.connect(url_of(port), connect_timeout=CONNECT_TIMEOUT_S)
    with pytest.raises(psycopg.OperationalError, match="no compute node available"):
        psycopg.connect(url_of(port + 1), connect_timeout=CONNECT_TIMEOUT_S)
    reply = first_reply(port, ssl_request=True)
    assert reply[:2] == b"NE" and b"C57P03\0" in reply and b"SFATAL\0" in reply
    assert first_reply(port + 1, ssl_request=False)[:1] == b"E"
    status = admin_status(port + 2)
    assert status["writer"] is None and status["readers"] == [] and status["connections"] == 0


def test_past_the_connection_limit_a_client_gets_53300(lonely_proxy):
    port = lonely_proxy
    silent = [socket.create_connection(("127.0.0.1", port), timeout=SOCKET_TIMEOUT_S) for _ in range(2)]
    try:
        wait_until(lambda: admin_status(port + 2)["connections"] == 2, "the proxy to count two clients")
        reply = first_reply(port + 1, ssl_request=False)
        assert b"C53300\0" in reply and b"too many connections" in reply
    finally:
        for sock in silent:
            sock.close()
    wait_until(lambda: admin_status(port + 2)["connections"] == 0, "the slots to free up")
    assert b"C57P03\0" in first_reply(port, ssl_request=False)


# ---------------------------------------------------------------------------------------------
# 3. In front of a real cluster
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def real_cluster(tmp_path_factory):
    cluster = LiveCluster(tmp_path_factory.mktemp("proxied"), readers=0)
    try:
        cluster.up()
        yield cluster
    finally:
        cluster.close()


ROWS = 2000
NOTE = "n" * 200  # 2000 rows of 200 characters: a result larger than the proxy's buffers


@pytest.mark.slow
def test_psycopg_traffic_passes_through_both_endpoints(real_cluster):
    with real_cluster.connect() as writer:
        writer.execute("CREATE TABLE proxied (id int PRIMARY KEY, note text)")
        with writer.cursor() as cursor:
            cursor.executemany("INSERT INTO proxied VALUES (%s, %s)", [(row_id, NOTE) for row_id in range(ROWS)])
        assert writer.execute("SELECT note FROM proxied WHERE id = %s", (7,)).fetchall() == [(NOTE,)]
        with real_cluster.connect_reader() as reader:
            rows = reader.execute("SELECT id, note FROM proxied ORDER BY id").fetchall()
            assert rows == [(row_id, NOTE) for row_id in range(ROWS)], "a large result arrives whole"
            status = real_cluster.proxy_status()
            assert status["writer"] == "db1" and status["readers"] == ["db1"] and status["reader_fallback_to_writer"]
            assert status["nodes"]["db1"]["connections"] == {"writer": 1, "reader": 1}
    shell = subprocess.run([AURORA_DB, "sql", "--port", str(real_cluster.port), "--reader", "-c",
                            "SELECT count(*) FROM proxied"], capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)
    assert shell.returncode == 0 and str(ROWS) in shell.stdout, shell.stderr


@pytest.mark.slow
def test_bad_bytes_or_a_client_vanishing_mid_message_close_only_that_connection(real_cluster):
    """DESIGN.md 10: bad bytes are an expected failure handled at the edge. Whatever one client
    sends, or however it leaves, the clients beside it on either endpoint go on."""
    bystanders = [real_cluster.connect(), real_cluster.connect_reader()]
    try:
        for port in (real_cluster.port, real_cluster.port + 1):
            send_and_expect_close(port, GARBAGE)
            send_and_expect_close(port, GARBAGE, after_startup=True)
            send_and_expect_close(port, b"\xfe" + struct.pack("!i", 4), after_startup=True)
            vanishing = pg_startup(port)
            vanishing.sendall(b"Q" + struct.pack("!i", 100) + b"SELECT 1, ")  # 14 of 101 bytes, then gone
            vanishing.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            vanishing.close()  # a reset, mid-message
            half_startup = socket.create_connection(("127.0.0.1", port), timeout=SOCKET_TIMEOUT_S)
            half_startup.sendall(struct.pack("!i", 40))
            half_startup.close()
            for bystander in bystanders:
                assert bystander.execute("SELECT 1").fetchall() == [(1,)]
        admin = socket.create_connection(("127.0.0.1", real_cluster.port + 2), timeout=SOCKET_TIMEOUT_S)
        admin.sendall(struct.pack("!I", 4) + b"\xc1\xc1\xc1\xc1")  # a frame that is not msgpack
        assert closed_by_peer(admin)
        wait_until(lambda: real_cluster.proxy_status()["connections"] == len(bystanders),
                   "the proxy to let go of every closed connection")
        with real_cluster.connect() as newcomer:
            assert newcomer.execute("SELECT 1").fetchall() == [(1,)]
    finally:
        for bystander in bystanders:
            bystander.close()


@pytest.mark.slow
def test_status_shows_the_endpoints_and_a_switchover_needs_a_reader(real_cluster):
    shown = subprocess.run([AURORA_DB, "status", "--data", str(real_cluster.directory)], capture_output=True,
                           text=True, timeout=COMMAND_TIMEOUT_S)
    assert shown.returncode == 0
    assert f"writer endpoint  postgresql://postgres@127.0.0.1:{real_cluster.port}/postgres  -> db1" in shown.stdout
    assert f"reader endpoint  postgresql://postgres@127.0.0.1:{real_cluster.port + 1}/postgres  -> db1" in shown.stdout
    document = real_cluster.status_document()
    db1 = next(entry for entry in document["nodes"] if entry["node_id"] == "db1")
    assert (db1["role"], db1["port"], db1["admin_port"]) == ("writer", real_cluster.port + 3, real_cluster.port + 20)
    refused = real_cluster.failover()
    assert refused.returncode == 1 and "no healthy reader to promote" in refused.stderr


@pytest.mark.skipif(not hasattr(os, "SCHED_BATCH"), reason="SCHED_BATCH is Linux's")
def test_the_proxy_yields_the_cpu_to_the_writer(real_cluster):
    """The proxy's wake-ups must not preempt the writer, which serves every client on one thread;
    the writer keeps the default policy (process.py)."""
    layout = load_layout(real_cluster.directory)
    assert os.sched_getscheduler(layout.proxy.pid) == os.SCHED_BATCH
    assert os.sched_getscheduler(layout.writer.pid) == os.SCHED_OTHER


# ---------------------------------------------------------------------------------------------
# 4. A real cluster with readers
# ---------------------------------------------------------------------------------------------

def commits_through(cluster: LiveCluster, row_id: int) -> bool:
    try:
        with cluster.connect() as connection:
            connection.execute("INSERT INTO failover_rows VALUES (%s)", (row_id,))
        return True
    except psycopg.Error:
        return False


@pytest.mark.slow
def test_a_cluster_with_readers_switches_over_and_fails_over_through_the_proxy(tmp_path):
    """DESIGN.md 6: the proxy promotes a reader and points the writer endpoint at it; clients keep
    using the same two ports throughout, and every acknowledged commit is still there."""
    with LiveCluster(tmp_path / "readers", readers=2) as cluster:
        cluster.up()
        document = cluster.status_document()
        roles = {entry["node_id"]: entry["role"] for entry in document["nodes"]}
        assert (roles["db1"], roles["db2"], roles["db3"]) == ("writer", "reader", "reader")
        wait_until(lambda: cluster.status_document()["endpoints"]["reader"]["node_ids"] == ["db2", "db3"],
                   "the proxy to send reader-endpoint sessions to both readers")
        with cluster.connect() as connection:
            connection.execute("CREATE TABLE failover_rows (id int PRIMARY KEY)")
            connection.execute("INSERT INTO failover_rows VALUES (1)")
        acknowledged = {1}

        def reader_sees_all() -> bool:
            with cluster.connect_reader() as reader:
                return {row[0] for row in reader.execute("SELECT id FROM failover_rows").fetchall()} == acknowledged

        wait_until(reader_sees_all, "the reader endpoint to see the committed row")

        switched = cluster.failover("db2")
        assert switched.returncode == 0, switched.stderr
        assert cluster.proxy_status()["writer"] == "db2"
        assert commits_through(cluster, 2)
        acknowledged.add(2)

        cluster.kill("db2")
        wait_until(lambda: commits_through(cluster, 3), "a commit through the writer endpoint after kill -9")
        acknowledged.add(3)
        assert cluster.proxy_status()["writer"] in ("db1", "db3")
        with cluster.connect() as connection:
            assert {row[0] for row in connection.execute("SELECT id FROM failover_rows").fetchall()} == acknowledged
        wait_until(reader_sees_all, "the remaining reader to see every acknowledged commit")
