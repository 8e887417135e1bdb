"""The local cluster: the pure layout (ports, commands, cluster.json, the alive check), process
management on real child processes, the whole up/status/down cycle on stand-in nodes
(tests/fake_node.py), and, when the real servers exist, `aurora-db up` end to end."""

from __future__ import annotations

import importlib.util
import io
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import free_port_range
from aurora_db.cluster import (
    CLIENT_PORT_DEFAULT,
    ROLE_STORAGE,
    ROLE_WRITER,
    ClusterError,
    Layout,
    Node,
    Processes,
    choose_port,
    cluster_status,
    cmdline_names_node,
    format_status,
    layout_from_json,
    layout_to_json,
    load_layout,
    node_command,
    node_is_running,
    nodes_to_start,
    plan_layout,
    port_is_free,
    spawn,
    start_cluster,
    status_entry,
    stop_cluster,
)

CLUSTER_DIR = Path("/clusters/one")
FAKE_PROGRAM = (sys.executable, str(Path(__file__).with_name("fake_node.py")))
AURORA_DB = str(Path(sys.executable).with_name("aurora-db"))
FAKE_READY_TIMEOUT_S = 20
REAL_READY_TIMEOUT_S = 90
COMMAND_TIMEOUT_S = 180


# ---------------------------------------------------------------------------------------------
# Layout (pure)
# ---------------------------------------------------------------------------------------------

def test_ports_follow_the_fixed_offsets():
    layout = plan_layout(6000)
    assert [(node.node_id, node.role, node.az, node.port, node.admin_port) for node in layout.nodes] == [
        ("a1", ROLE_STORAGE, "a", 6011, None), ("a2", ROLE_STORAGE, "a", 6012, None),
        ("b1", ROLE_STORAGE, "b", 6013, None), ("b2", ROLE_STORAGE, "b", 6014, None),
        ("c1", ROLE_STORAGE, "c", 6015, None), ("c2", ROLE_STORAGE, "c", 6016, None),
        ("writer", ROLE_WRITER, "a", 6000, 6020)]
    used = {port for node in layout.nodes for port in (node.port, node.admin_port) if port}
    assert not used & set(range(6001, 6010)), "P+1..P+9 are reserved for the proxy and readers"


def test_every_node_has_its_own_data_dir_and_log():
    layout = plan_layout(6000)
    assert layout.node("b2").data_dir == "storage-b2" and layout.node("b2").log_file == "logs/b2.log"
    assert layout.writer.data_dir == "writer" and layout.writer.log_file == "logs/writer.log"


def test_a_port_too_close_to_the_top_is_refused():
    with pytest.raises(ClusterError, match="65516"):
        plan_layout(65516)
    plan_layout(65515)


def test_storage_node_command():
    layout = plan_layout(6000)
    assert node_command(layout.node("c2"), layout, CLUSTER_DIR, 64, ["python", "-m", "aurora_db.cli"]) == [
        "python", "-m", "aurora_db.cli", "storage-node", "--node-id", "c2", "--az", "c",
        "--listen", "127.0.0.1:6016", "--data", "/clusters/one/storage-c2"]


def test_writer_command_names_all_six_storage_nodes():
    layout = plan_layout(6000)
    assert node_command(layout.writer, layout, CLUSTER_DIR, 64, ["python", "-m", "aurora_db.cli"]) == [
        "python", "-m", "aurora_db.cli", "compute-node", "--role", "writer", "--node-id", "writer",
        "--listen", "127.0.0.1:6000", "--admin", "127.0.0.1:6020", "--cache-pages", "64",
        "--data", "/clusters/one/writer",
        "--storage", "a1=127.0.0.1:6011", "--storage", "a2=127.0.0.1:6012", "--storage", "b1=127.0.0.1:6013",
        "--storage", "b2=127.0.0.1:6014", "--storage", "c1=127.0.0.1:6015", "--storage", "c2=127.0.0.1:6016"]


def test_the_commands_parse_with_the_real_cli():
    from aurora_db.cli import build_parser

    layout = plan_layout(6000)
    for node in layout.nodes:
        args = build_parser().parse_args(node_command(node, layout, CLUSTER_DIR, 64, []))
        assert args.node_id == node.node_id


def test_a_new_cluster_takes_the_port_asked_for_and_an_old_one_keeps_its_own():
    assert choose_port(None, None) == CLIENT_PORT_DEFAULT
    assert choose_port(7000, None) == 7000
    existing = plan_layout(7000)
    assert choose_port(None, existing) == 7000
    assert choose_port(7000, existing) == 7000
    with pytest.raises(ClusterError, match="--port 7000"):
        choose_port(7100, existing)


def test_the_layout_survives_json():
    layout = plan_layout(6000)
    layout.node("a2").pid = 4242
    document = json.loads(json.dumps(layout_to_json(layout)))
    assert layout_from_json(document) == layout
    assert document["nodes"][1] == {"node_id": "a2", "role": "storage", "az": "a", "port": 6012, "admin_port": None,
                                    "data_dir": "storage-a2", "log_file": "logs/a2.log", "pid": 4242}
    with pytest.raises(ClusterError, match="version"):
        layout_from_json({**document, "version": 99})


def test_a_pid_counts_only_if_its_cmdline_names_the_node_and_its_data_dir():
    layout = plan_layout(6000)
    a1 = layout.node("a1")
    argv = node_command(a1, layout, CLUSTER_DIR, 64, ["python", "-m", "aurora_db.cli"])
    assert cmdline_names_node(argv, a1, CLUSTER_DIR)
    assert not cmdline_names_node(argv, layout.node("a2"), CLUSTER_DIR)
    assert not cmdline_names_node(argv, a1, Path("/clusters/two")), "the same node of another cluster"
    assert not cmdline_names_node(["bash"], a1, CLUSTER_DIR), "a recycled pid"
    assert not cmdline_names_node(None, a1, CLUSTER_DIR) and not cmdline_names_node([], a1, CLUSTER_DIR)


def test_the_alive_check_reads_proc_through_the_given_reader():
    layout = plan_layout(6000)
    a1 = layout.node("a1")
    argv = node_command(a1, layout, CLUSTER_DIR, 64, ["python", "-m", "aurora_db.cli"])
    proc = {100: argv, 200: ["sleep", "1000"]}
    assert not node_is_running(a1, CLUSTER_DIR, proc.get), "no pid recorded"
    a1.pid = 100
    assert node_is_running(a1, CLUSTER_DIR, proc.get)
    a1.pid = 200
    assert not node_is_running(a1, CLUSTER_DIR, proc.get)
    a1.pid = 300
    assert not node_is_running(a1, CLUSTER_DIR, proc.get)


def test_up_starts_storage_before_the_writer_and_skips_what_runs():
    layout = plan_layout(6000)
    assert [node.node_id for node in nodes_to_start(layout, set())] == ["a1", "a2", "b1", "b2", "c1", "c2", "writer"]
    assert [node.node_id for node in nodes_to_start(layout, {"a2", "b1", "b2", "c1", "c2"})] == ["a1", "writer"]
    assert [[node.node_id for node in group] for group in layout.stop_groups()] == [
        ["writer"], ["a1", "a2", "b1", "b2", "c1", "c2"]]


def test_status_entries_show_numbers_only_for_nodes_that_answered():
    layout = plan_layout(6000)
    a1, writer = layout.node("a1"), layout.writer
    a1.pid, writer.pid = 11, 12
    assert status_entry(a1, True, {"ok": True, "epoch": 3, "pgs": {1: 20, 0: 19}}) == {
        "node_id": "a1", "role": "storage", "az": "a", "pid": 11, "port": 6011, "admin_port": None,
        "state": "running", "epoch": 3, "scl": {"0": 19, "1": 20}}
    assert status_entry(writer, True, {"ok": True, "epoch": 3, "vdl": 20})["vdl"] == 20
    unreachable = status_entry(writer, True, None)
    assert unreachable["state"] == "running" and unreachable["epoch"] is None and unreachable["vdl"] is None
    stopped = status_entry(a1, False, None)
    assert stopped["state"] == "stopped" and stopped["pid"] is None and stopped["scl"] is None


def test_the_status_table_has_a_line_per_process():
    layout = plan_layout(6000)
    entries = [status_entry(node, False, None) for node in layout.nodes]
    entries[0] = status_entry(layout.node("a1"), True, {"ok": True, "epoch": 2, "pgs": {0: 5}})
    text = format_status(entries)
    assert text.splitlines()[0].split("|")[0].strip() == "node"
    assert len(text.splitlines()) == 2 + len(layout.nodes)
    assert "scl 0:5" in text


# ---------------------------------------------------------------------------------------------
# Processes
# ---------------------------------------------------------------------------------------------

def sleeper_node(tmp_path: Path, node_id: str, ignore_sigterm: bool = False) -> tuple[Node, list[str]]:
    node = Node(node_id, ROLE_STORAGE, "a", 1, None, f"storage-{node_id}", f"logs/{node_id}.log")
    code = ("import signal, time\n"
            + ("signal.signal(signal.SIGTERM, signal.SIG_IGN)\n" if ignore_sigterm else "")
            + "print('sleeping', flush=True)\ntime.sleep(600)\n")
    return node, [sys.executable, "-c", code, "--node-id", node_id, "--data", str(tmp_path / node.data_dir)]


def test_a_spawned_node_has_its_own_session_and_appends_to_its_log(tmp_path):
    node, command = sleeper_node(tmp_path, "a1")
    (tmp_path / "logs").mkdir()
    (tmp_path / node.log_file).write_text("earlier run\n")
    child = spawn(command, tmp_path / node.log_file, tmp_path)
    node.pid = child.pid
    try:
        assert os.getsid(child.pid) == child.pid, "the node leads a session of its own"
        assert os.getsid(child.pid) != os.getsid(0), "a terminal's Ctrl-C does not reach it"
        deadline = time.monotonic() + 10
        # Wait for the program's own output: just after exec starts, /proc/PID/cmdline can still be empty.
        while "\nsleeping\n" not in (tmp_path / node.log_file).read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert (tmp_path / node.log_file).read_text().startswith("earlier run\n")
        assert node_is_running(node, tmp_path)
    finally:
        Processes(tmp_path, {node.node_id: child}).stop([node], io.StringIO())
    assert child.poll() is not None


def test_stop_escalates_to_sigkill_after_the_grace_period(tmp_path):
    node, command = sleeper_node(tmp_path, "b1", ignore_sigterm=True)
    child = spawn(command, tmp_path / node.log_file, tmp_path)
    node.pid = child.pid
    time.sleep(0.5)  # let it install its SIGTERM handler
    out = io.StringIO()
    started = time.monotonic()
    Processes(tmp_path, {node.node_id: child}).stop([node], out, grace_s=1)
    assert child.returncode == -signal.SIGKILL
    assert time.monotonic() - started >= 1
    assert "SIGKILL" in out.getvalue()


def test_a_port_with_a_listener_is_not_free():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        assert not port_is_free(listener.getsockname()[1])


# ---------------------------------------------------------------------------------------------
# up / status / down on stand-in nodes
# ---------------------------------------------------------------------------------------------

def fake_up(cluster_dir: Path, port: int | None, out: io.StringIO | None = None):
    return start_cluster(cluster_dir, port, 64, out or io.StringIO(), FAKE_READY_TIMEOUT_S, FAKE_PROGRAM)


@pytest.fixture
def cluster_dir(tmp_path):
    directory = tmp_path / "cluster"
    yield directory
    if (directory / "cluster.json").exists():
        stop_cluster(directory, io.StringIO(), grace_s=2)


def test_up_status_down_and_a_partial_restart(cluster_dir):
    port = free_port_range()
    _, first = fake_up(cluster_dir, port)
    stored = load_layout(cluster_dir)
    assert stored.port == port and all(node.pid for node in stored.nodes)
    assert "fake writer listening" in (cluster_dir / "logs" / "writer.log").read_text()

    status = {entry["node_id"]: entry for entry in cluster_status(cluster_dir)}
    assert all(entry["state"] == "running" and entry["epoch"] == 1 for entry in status.values())
    assert status["c2"]["scl"] == {"0": 7} and status["writer"]["vdl"] == 7

    # Kill a storage node and the writer: up starts exactly those two again, on the same ports.
    for node_id in ("b1", "writer"):
        os.kill(stored.node(node_id).pid, signal.SIGKILL)
        first.children[node_id].wait()  # reap it: `up` ran in this process
    out = io.StringIO()
    _, processes = fake_up(cluster_dir, None, out)
    assert sorted(processes.children) == ["b1", "writer"]
    assert "already running: a1 a2 b2 c1 c2" in out.getvalue()
    again = load_layout(cluster_dir)
    assert again.node("a1").pid == stored.node("a1").pid and again.node("b1").pid != stored.node("b1").pid
    assert [node.port for node in again.nodes] == [node.port for node in stored.nodes]

    out = io.StringIO()
    stop_cluster(cluster_dir, out)
    assert out.getvalue().index("stopping writer") < out.getvalue().index("stopping a1")
    assert all(entry["state"] == "stopped" and entry["epoch"] is None for entry in cluster_status(cluster_dir))
    assert all(node.pid is None for node in load_layout(cluster_dir).nodes)


def test_an_existing_cluster_refuses_another_port(cluster_dir):
    port = free_port_range()
    fake_up(cluster_dir, port)
    with pytest.raises(ClusterError, match=f"--port {port}"):
        fake_up(cluster_dir, port + 100)


def test_a_busy_port_is_named(cluster_dir):
    port = free_port_range()
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", port + 13))
        squatter.listen()
        with pytest.raises(ClusterError, match=f"port {port + 13} .*b1"):
            fake_up(cluster_dir, port)


def test_a_node_that_dies_while_starting_fails_up_and_shows_its_log(cluster_dir, monkeypatch):
    monkeypatch.setenv("FAKE_NODE_FAIL", "writer")
    out = io.StringIO()
    with pytest.raises(ClusterError, match="writer exited before it was ready"):
        fake_up(cluster_dir, free_port_range(), out)
    assert "fake writer: failing on purpose" in out.getvalue()
    assert "stopping a1" in out.getvalue()
    assert all(entry["state"] == "stopped" for entry in cluster_status(cluster_dir))


# ---------------------------------------------------------------------------------------------
# The real thing
# ---------------------------------------------------------------------------------------------

REAL_SERVERS_MISSING = [module for module in ("storage_node.server", "compute_node.server")
                        if importlib.util.find_spec(module) is None]


def aurora_db(*arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run([AURORA_DB, *arguments], capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)


@pytest.mark.slow
@pytest.mark.skipif(bool(REAL_SERVERS_MISSING), reason=f"not written yet: {', '.join(REAL_SERVERS_MISSING)}")
def test_real_cluster_up_status_down_and_restart(tmp_path):
    """Data survives down and up; a partly running cluster gets only its missing processes back."""
    import psycopg

    data, port = str(tmp_path / "cluster"), free_port_range()
    try:
        started = aurora_db("up", "--data", data, "--port", str(port), "--detach",
                            "--ready-timeout", str(REAL_READY_TIMEOUT_S))
        assert started.returncode == 0, started.stdout + started.stderr
        assert f"postgresql://postgres@127.0.0.1:{port}/postgres" in started.stdout
        url = f"postgresql://postgres@127.0.0.1:{port}/postgres"
        with psycopg.connect(url, autocommit=True) as connection:
            connection.execute("CREATE TABLE kept (id int PRIMARY KEY, note text)")
            connection.execute("INSERT INTO kept VALUES (1, 'survives')")

        status = json.loads(aurora_db("status", "--data", data, "--json").stdout)
        by_id = {entry["node_id"]: entry for entry in status["nodes"]}
        assert all(entry["state"] == "running" for entry in by_id.values())
        assert by_id["writer"]["vdl"] is not None and by_id["a1"]["scl"]

        layout = load_layout(Path(data).resolve())
        for node_id in ("c1", "writer"):
            os.kill(layout.node(node_id).pid, signal.SIGKILL)
        restarted = aurora_db("up", "--data", data, "--detach", "--ready-timeout", str(REAL_READY_TIMEOUT_S))
        assert restarted.returncode == 0, restarted.stdout + restarted.stderr
        assert "started c1" in restarted.stdout and "started a1" not in restarted.stdout

        stopped = aurora_db("down", "--data", data)
        assert stopped.returncode == 0, stopped.stderr
        status = json.loads(aurora_db("status", "--data", data, "--json").stdout)
        assert all(entry["state"] == "stopped" for entry in status["nodes"])

        again = aurora_db("up", "--data", data, "--detach", "--ready-timeout", str(REAL_READY_TIMEOUT_S))
        assert again.returncode == 0, again.stdout + again.stderr
        with psycopg.connect(url, autocommit=True) as connection:
            assert connection.execute("SELECT note FROM kept WHERE id = 1").fetchall() == [("survives",)]
    finally:
        aurora_db("down", "--data", data)


@pytest.mark.slow
@pytest.mark.skipif(bool(REAL_SERVERS_MISSING), reason=f"not written yet: {', '.join(REAL_SERVERS_MISSING)}")
def test_real_cluster_in_the_foreground_stops_everything_on_sigint(tmp_path):
    data, port = str(tmp_path / "cluster"), free_port_range()
    up = subprocess.Popen([AURORA_DB, "up", "--data", data, "--port", str(port),
                           "--ready-timeout", str(REAL_READY_TIMEOUT_S)],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        seen = ""
        deadline = time.monotonic() + COMMAND_TIMEOUT_S
        while "Ctrl-C stops the cluster" not in seen and time.monotonic() < deadline and up.poll() is None:
            seen += up.stdout.readline()
        assert "Ctrl-C stops the cluster" in seen, seen
        layout = load_layout(Path(data).resolve())
        up.send_signal(signal.SIGINT)
        assert up.wait(timeout=COMMAND_TIMEOUT_S) == 0
        assert not any(node_is_running(node, Path(data).resolve()) for node in layout.nodes)
    finally:
        if up.poll() is None:
            up.kill()
        aurora_db("down", "--data", data)
