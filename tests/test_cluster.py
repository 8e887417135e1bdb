"""The local cluster: the pure layout (ports, commands, cluster.json and its migration, the alive
check, which role a compute node starts in), process management on real child processes, the whole
up/status/down cycle on stand-in nodes (tests/fake_node.py), and, when the real servers exist,
`aurora-db up` end to end."""

from __future__ import annotations

import importlib.util
import io
import json
import os
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
    PORT_SPAN,
    ROLE_PROXY,
    ROLE_READER,
    ROLE_STORAGE,
    ROLE_WRITER,
    ClusterError,
    Layout,
    Node,
    Processes,
    assign_start_roles,
    choose_port,
    choose_readers,
    cluster_status,
    cmdline_names_node,
    endpoints_of,
    format_status,
    layout_from_json,
    layout_to_json,
    load_layout,
    node_command,
    node_is_running,
    node_ports,
    nodes_to_start,
    plan_layout,
    port_is_free,
    record_roles,
    replan_compute,
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
    assert [(node.node_id, node.role, node.az, node_ports(node)) for node in layout.nodes] == [
        ("a1", ROLE_STORAGE, "a", [6011]), ("a2", ROLE_STORAGE, "a", [6012]),
        ("b1", ROLE_STORAGE, "b", [6013]), ("b2", ROLE_STORAGE, "b", [6014]),
        ("c1", ROLE_STORAGE, "c", [6015]), ("c2", ROLE_STORAGE, "c", [6016]),
        ("db1", ROLE_WRITER, "a", [6003, 6020]), ("db2", ROLE_READER, "b", [6004, 6021]),
        ("db3", ROLE_READER, "c", [6005, 6022]),
        ("proxy", ROLE_PROXY, None, [6000, 6001, 6002])]
    used = [port for node in layout.nodes for port in node_ports(node)]
    assert len(used) == len(set(used)), "no two processes share a port"


def test_the_most_readers_still_fit_between_the_fixed_ports():
    layout = plan_layout(6000, readers=6)
    assert [node.node_id for node in layout.compute_nodes] == [f"db{number}" for number in range(1, 8)]
    assert [node.az for node in layout.compute_nodes] == ["a", "b", "c", "a", "b", "c", "a"]
    assert [node.port for node in layout.compute_nodes] == list(range(6003, 6010)), "below storage's P+11"
    assert [node.admin_port for node in layout.compute_nodes] == list(range(6020, 6027))
    assert max(port for node in layout.nodes for port in node_ports(node)) == 6000 + PORT_SPAN - 1
    assert [node.node_id for node in plan_layout(6000, readers=0).compute_nodes] == ["db1"]
    with pytest.raises(ClusterError, match="--readers 7"):
        plan_layout(6000, readers=7)


def test_every_node_has_its_own_data_dir_and_log():
    layout = plan_layout(6000)
    assert layout.node("b2").data_dir == "storage-b2" and layout.node("b2").log_file == "logs/b2.log"
    assert layout.writer.data_dir == "db1" and layout.writer.log_file == "logs/db1.log"
    assert layout.proxy.data_dir == "proxy" and layout.proxy.log_file == "logs/proxy.log"


def test_a_port_too_close_to_the_top_is_refused():
    with pytest.raises(ClusterError, match="65536"):
        plan_layout(65510)
    plan_layout(65509)


def test_a_storage_node_command_names_the_other_five_as_peers():
    layout = plan_layout(6000)
    assert node_command(layout.node("c2"), layout, CLUSTER_DIR, 64, ["python", "-m", "aurora_db.cli"]) == [
        "python", "-m", "aurora_db.cli", "storage-node", "--node-id", "c2", "--az", "c",
        "--listen", "127.0.0.1:6016", "--data", "/clusters/one/storage-c2",
        "--peer", "a1=127.0.0.1:6011", "--peer", "a2=127.0.0.1:6012", "--peer", "b1=127.0.0.1:6013",
        "--peer", "b2=127.0.0.1:6014", "--peer", "c1=127.0.0.1:6015"]


def test_compute_node_commands_name_all_six_storage_nodes_and_their_role():
    layout = plan_layout(6000)
    storage = ["--storage", "a1=127.0.0.1:6011", "--storage", "a2=127.0.0.1:6012", "--storage", "b1=127.0.0.1:6013",
               "--storage", "b2=127.0.0.1:6014", "--storage", "c1=127.0.0.1:6015", "--storage", "c2=127.0.0.1:6016"]
    assert node_command(layout.writer, layout, CLUSTER_DIR, 64, ["python", "-m", "aurora_db.cli"]) == [
        "python", "-m", "aurora_db.cli", "compute-node", "--role", "writer", "--node-id", "db1", "--az", "a",
        "--listen", "127.0.0.1:6003", "--admin", "127.0.0.1:6020", "--cache-pages", "64",
        "--data", "/clusters/one/db1", *storage]
    assert node_command(layout.node("db3"), layout, CLUSTER_DIR, 64, ["aurora-db"]) == [
        "aurora-db", "compute-node", "--role", "reader", "--node-id", "db3", "--az", "c",
        "--listen", "127.0.0.1:6005", "--admin", "127.0.0.1:6022", "--cache-pages", "64",
        "--data", "/clusters/one/db3", *storage]


def test_the_proxy_command_names_every_compute_node():
    layout = plan_layout(6000, readers=1)
    assert node_command(layout.proxy, layout, CLUSTER_DIR, 64, ["aurora-db"]) == [
        "aurora-db", "proxy", "--node-id", "proxy", "--writer-listen", "127.0.0.1:6000",
        "--reader-listen", "127.0.0.1:6001", "--admin", "127.0.0.1:6002", "--data", "/clusters/one/proxy",
        "--node", "db1=127.0.0.1:6003:6020", "--node", "db2=127.0.0.1:6004:6021"]


def test_the_commands_parse_with_the_real_cli():
    from aurora_db.cli import build_parser

    layout = plan_layout(6000)
    for node in layout.nodes:
        args = build_parser().parse_args(node_command(node, layout, CLUSTER_DIR, 64, []))
        assert args.node_id == node.node_id
        if node.role == ROLE_STORAGE:
            assert args.peers == [(peer.node_id, "127.0.0.1", peer.port)
                                  for peer in layout.storage_nodes if peer is not node]


def test_a_new_cluster_takes_the_reader_count_asked_for_and_an_old_one_keeps_its_own():
    assert choose_readers(None, None) == 2
    assert choose_readers(0, None) == 0
    assert choose_readers(None, plan_layout(7000, readers=4)) == 4
    assert choose_readers(1, plan_layout(7000, readers=4)) == 1
    layout = plan_layout(7000, readers=4)
    layout.node("a1").pid = 77
    fewer = replan_compute(layout, 1)
    assert [node.node_id for node in fewer.nodes] == ["a1", "a2", "b1", "b2", "c1", "c2", "db1", "db2", "proxy"]
    assert fewer.node("a1").pid == 77, "storage nodes keep running through a change of readers"


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
    assert document["version"] == 2 and document["retired"] == []
    assert document["nodes"][1] == {"node_id": "a2", "role": "storage", "az": "a", "port": 6012, "admin_port": None,
                                    "data_dir": "storage-a2", "log_file": "logs/a2.log", "pid": 4242,
                                    "reader_port": None}
    with pytest.raises(ClusterError, match="version"):
        layout_from_json({**document, "version": 99})


def version_1_document(port: int) -> dict:
    """cluster.json as the previous aurora-db wrote it: six storage nodes and one compute node "writer"."""
    storage = [{"node_id": node_id, "role": "storage", "az": node_id[0], "port": port + 11 + index,
                "admin_port": None, "data_dir": f"storage-{node_id}", "log_file": f"logs/{node_id}.log",
                "pid": 1000 + index} for index, node_id in enumerate(("a1", "a2", "b1", "b2", "c1", "c2"))]
    writer = {"node_id": "writer", "role": "writer", "az": "a", "port": port, "admin_port": port + 20,
              "data_dir": "writer", "log_file": "logs/writer.log", "pid": 2000}
    return {"version": 1, "host": "127.0.0.1", "port": port, "nodes": storage + [writer]}


def test_a_version_1_layout_keeps_its_storage_and_retires_its_writer():
    layout = layout_from_json(version_1_document(6000))
    assert layout.port == 6000
    assert [(node.node_id, node.port, node.data_dir, node.pid) for node in layout.storage_nodes] == [
        (node_id, 6011 + index, f"storage-{node_id}", 1000 + index)
        for index, node_id in enumerate(("a1", "a2", "b1", "b2", "c1", "c2"))], "storage data and pids kept"
    assert [node.node_id for node in layout.compute_nodes] == ["db1", "db2", "db3"]
    assert layout.proxy.port == 6000, "clients keep connecting to P, now the writer endpoint"
    assert [(node.node_id, node.pid) for node in layout.retired] == [("writer", 2000)]
    assert layout.stop_groups()[2] == [layout.writer, layout.retired[0]], "down stops the old writer too"
    again = layout_from_json(json.loads(json.dumps(layout_to_json(layout))))
    assert again == layout and json.loads(json.dumps(layout_to_json(layout)))["version"] == 2


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


def test_up_starts_storage_then_writer_readers_proxy_and_skips_what_runs():
    layout = plan_layout(6000)
    assert [node.node_id for node in nodes_to_start(layout, set())] == [
        "a1", "a2", "b1", "b2", "c1", "c2", "db1", "db2", "db3", "proxy"]
    running = {"a2", "b1", "b2", "c1", "c2", "db1", "db3", "proxy"}
    assert [node.node_id for node in nodes_to_start(layout, running)] == ["a1", "db2"]
    assert [[node.node_id for node in group] for group in layout.stop_groups()] == [
        ["proxy"], ["db2", "db3"], ["db1"], ["a1", "a2", "b1", "b2", "c1", "c2"]]


def test_a_compute_node_started_beside_a_running_one_is_a_reader():
    """`up` never starts a second writer: with any compute node running, the cluster has a writer
    or the proxy promotes one, so whatever starts joins as a reader."""
    layout = plan_layout(6000)
    assign_start_roles(layout, {"db2"})
    assert [node.role for node in layout.compute_nodes] == [ROLE_READER, ROLE_READER, ROLE_READER]

    layout = plan_layout(6000)
    assign_start_roles(layout, set())
    assert [node.role for node in layout.compute_nodes] == [ROLE_WRITER, ROLE_READER, ROLE_READER]


def test_the_writer_a_cluster_last_had_starts_as_the_writer_next_time():
    layout = plan_layout(6000)
    record_roles(layout, {"db1": {"role": "reader", "epoch": 4}, "db3": {"role": "writer", "epoch": 5}})
    assert layout.writer.node_id == "db3"
    assert [[node.node_id for node in group] for group in layout.stop_groups()][:3] == [
        ["proxy"], ["db1", "db2"], ["db3"]], "the real writer stops after the readers"
    assign_start_roles(layout, set())
    assert [node.role for node in layout.compute_nodes] == [ROLE_READER, ROLE_READER, ROLE_WRITER]

    record_roles(layout, {"db1": {"role": "writer", "epoch": 5}, "db3": {"role": "writer", "epoch": 6}})
    assert layout.writer.node_id == "db3", "a stale writer (older epoch) is not the writer"
    record_roles(layout, {"db2": None, "db3": None})
    assert layout.writer.node_id == "db3", "no answer: nothing learned"


def test_status_entries_show_numbers_only_for_nodes_that_answered():
    layout = plan_layout(6000)
    a1, writer, reader = layout.node("a1"), layout.writer, layout.node("db2")
    a1.pid, writer.pid, reader.pid = 11, 12, 13
    assert status_entry(a1, True, {"ok": True, "epoch": 3, "pgs": {1: 20, 0: 19}}) == {
        "node_id": "a1", "kind": "storage", "role": "storage", "az": "a", "pid": 11, "port": 6011,
        "admin_port": None, "state": "running", "health": "running", "epoch": 3, "scl": {"0": 19, "1": 20},
        "segments": None, "rebuilding": None, "horizon": None}
    assert status_entry(writer, True, {"ok": True, "role": "writer", "epoch": 3, "vdl": 20})["vdl"] == 20
    assert status_entry(reader, True, {"ok": True, "role": "reader", "epoch": 3, "vdl": 20, "applied_lsn": 18,
                                       "replica_lag_ms": 4.5, "replica_lag_lsn": 2, "promotion_tier": 1}) == {
        "node_id": "db2", "kind": "compute", "role": "reader", "az": "b", "pid": 13, "port": 6004,
        "admin_port": 6021, "state": "running", "health": "running", "epoch": 3, "vdl": 20, "applied_lsn": 18,
        "replica_lag_ms": 4.5, "replica_lag_lsn": 2, "promotion_tier": 1}
    assert status_entry(reader, True, {"ok": True, "role": "writer", "epoch": 4})["role"] == "writer", \
        "a compute node's role is the one it reports, not the one it was started in"
    unreachable = status_entry(writer, True, None)
    assert unreachable["state"] == "running" and unreachable["health"] == "not answering"
    assert unreachable["epoch"] is None and unreachable["vdl"] is None and unreachable["role"] is None
    stopped = status_entry(a1, False, None)
    assert stopped["state"] == "stopped" and stopped["health"] == "stopped"
    assert stopped["pid"] is None and stopped["scl"] is None and stopped["segments"] is None


def segment(scl: int, pages: int, image_bytes: int, log_bytes: int) -> dict:
    """A storage node's report of one segment, as its status reply carries it."""
    return {"scl": scl, "base": scl - 2, "records": 2, "log_bytes": log_bytes, "image_bytes": image_bytes,
            "pages": pages}


def test_a_storage_entry_carries_its_segments_keyed_by_pg_in_order():
    layout = plan_layout(6000)
    a1 = layout.node("a1")
    a1.pid = 11
    segments = {10: segment(20, 1, 8192, 100), "2": segment(21, 3, 8192, 0), 0: segment(19, 9, 73728, 512)}
    entry = status_entry(a1, True, {"ok": True, "epoch": 3, "pgs": {0: 19, 10: 20, 2: 21}, "rebuilding": False,
                                    "horizon": 15, "segments": segments})
    assert list(entry["segments"]) == ["0", "2", "10"], "int or str keys from msgpack: strings, by PG number"
    assert entry["segments"]["10"] == segment(20, 1, 8192, 100)
    assert (entry["rebuilding"], entry["horizon"]) == (False, 15)
    assert json.loads(json.dumps(entry)) == entry, "--json prints it unchanged"


def storage_entries_with_segments() -> tuple[Layout, list[dict]]:
    """a1 holds PGs 0 and 1; a2 only PG 0 (it rebuilds from its peers); b1 does not answer; the other
    storage nodes are stopped; the compute nodes and the proxy too."""
    layout = plan_layout(6000)
    replies = {"a1": {"ok": True, "epoch": 2, "pgs": {0: 40, 1: 12}, "rebuilding": False, "horizon": 30,
                      "segments": {0: segment(40, 12, 1_000_000, 258_291), 1: segment(12, 1, 300, 212)}},
               "a2": {"ok": True, "epoch": 2, "pgs": {0: 25}, "rebuilding": True, "horizon": 0,
                      "segments": {"0": segment(25, 7, 57_344, 900)}}}
    for node_id in ("a1", "a2", "b1"):
        layout.node(node_id).pid = 100
    entries = [status_entry(node, node.pid is not None, replies.get(node.node_id)) for node in layout.nodes]
    return layout, entries


def test_status_shows_each_pgs_size_and_every_storage_nodes_scl():
    _, entries = storage_entries_with_segments()
    text = format_status(entries)
    lines = text.splitlines()
    title = next(index for index, line in enumerate(lines) if line.strip() == "protection groups")
    assert lines[title - 1] == "" and lines[title - 2].startswith(" proxy "), "after the node table"
    header, _, pg0, pg1 = lines[title + 1:title + 5]
    assert [cell.strip() for cell in header.split("|")] == ["PG", "pages", "size", "a1", "a2", "b1", "b2", "c1", "c2"]
    assert [cell.strip() for cell in pg0.split("|")] == ["0", "12", "1.2 MB", "40", "25", "-", "-", "-", "-"]
    assert [cell.strip() for cell in pg1.split("|")] == ["1", "1", "512 B", "12", "-", "-", "-", "-", "-"], \
        "a node without the PG, one not answering and stopped ones show '-'"
    assert len(lines) == title + 5, "a row per PG, nothing after"


def test_a_rebuilding_storage_node_says_so_in_the_node_table():
    _, entries = storage_entries_with_segments()
    health = {line.split("|")[0].strip(): line.split("|")[5].strip() for line in format_status(entries).splitlines()
              if "|" in line}
    assert (health["a1"], health["a2"], health["b1"], health["b2"]) == (
        "running", "rebuilding", "not answering", "stopped")


def test_status_names_where_each_endpoint_points():
    layout = plan_layout(6000)
    layout.proxy.pid = 20
    entries = [status_entry(node, False, None) for node in layout.nodes[:-1]]
    entries.append(status_entry(layout.proxy, True, {"ok": True, "writer": "db1", "readers": ["db2", "db3"],
                                                     "connections": 4}))
    endpoints = endpoints_of(layout, entries)
    assert endpoints["writer"] == {"url": "postgresql://postgres@127.0.0.1:6000/postgres", "port": 6000,
                                   "node_id": "db1"}
    assert endpoints["reader"] == {"url": "postgresql://postgres@127.0.0.1:6001/postgres", "port": 6001,
                                   "node_ids": ["db2", "db3"]}
    text = format_status(entries, endpoints)
    assert "writer endpoint  postgresql://postgres@127.0.0.1:6000/postgres  -> db1" in text
    assert "reader endpoint  postgresql://postgres@127.0.0.1:6001/postgres  -> db2, db3" in text
    silent = [status_entry(node, False, None) for node in layout.nodes]
    assert "-> ? (proxy stopped)" in format_status(silent, endpoints_of(layout, silent))


def test_the_status_table_has_a_line_per_process():
    layout = plan_layout(6000)
    entries = [status_entry(node, False, None) for node in layout.nodes]
    entries[0] = status_entry(layout.node("a1"), True, {"ok": True, "epoch": 2, "pgs": {0: 5}})
    entries[7] = status_entry(layout.node("db2"), True, {"ok": True, "role": "reader", "applied_lsn": 9,
                                                         "replica_lag_ms": 12.25, "replica_lag_lsn": 3})
    text = format_status(entries)
    assert text.splitlines()[0].split("|")[0].strip() == "node"
    assert len(text.splitlines()) == 2 + len(layout.nodes), "replies without segments: no protection groups table"
    assert "scl 0:5" in text and "applied 9" in text and "12.2 ms / 3 LSNs" in text


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

def fake_up(cluster_dir: Path, port: int | None, out: io.StringIO | None = None, readers: int | None = None,
            cache_pages: int | None = 64):
    return start_cluster(cluster_dir, port, cache_pages, out or io.StringIO(), FAKE_READY_TIMEOUT_S, FAKE_PROGRAM,
                         requested_readers=readers)


def cache_pages_of(pid: int) -> int:
    arguments = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    return int(arguments[arguments.index(b"--cache-pages") + 1])


@pytest.fixture
def cluster_dir(tmp_path):
    directory = tmp_path / "cluster"
    yield directory
    if (directory / "cluster.json").exists():
        stop_cluster(directory, io.StringIO(), grace_s=2)


def test_up_status_down_and_a_partial_restart(cluster_dir):
    port = free_port_range()
    out = io.StringIO()
    _, first = fake_up(cluster_dir, port, out)
    stored = load_layout(cluster_dir)
    assert stored.port == port and all(node.pid for node in stored.nodes)
    assert "fake db1 listening" in (cluster_dir / "logs" / "db1.log").read_text()
    started = [line.split()[1] for line in out.getvalue().splitlines() if line.startswith("started ")]
    assert started == ["a1", "a2", "b1", "b2", "c1", "c2", "db1", "db2", "db3", "proxy"]

    status = {entry["node_id"]: entry for entry in cluster_status(cluster_dir)}
    assert all(entry["state"] == "running" and entry["health"] == "running" for entry in status.values())
    assert all(status[node_id]["epoch"] == 1 for node_id in ("a1", "c2", "db1", "db2", "db3"))
    assert status["c2"]["scl"] == {"0": 7} and status["db1"]["vdl"] == 7 and status["db1"]["role"] == "writer"
    assert status["db2"]["role"] == "reader" and status["db2"]["replica_lag_ms"] == 0.0
    assert status["proxy"]["writer_endpoint"] == "db1" and status["proxy"]["reader_endpoint"] == ["db2", "db3"]

    # Kill a storage node and the writer: up starts exactly those two again, on the same ports; the
    # readers still run, so the old writer comes back as a reader (the proxy promotes one of them).
    for node_id in ("b1", "db1"):
        os.kill(stored.node(node_id).pid, signal.SIGKILL)
        first.children[node_id].wait()  # reap it: `up` ran in this process
    out = io.StringIO()
    _, processes = fake_up(cluster_dir, None, out)
    assert sorted(processes.children) == ["b1", "db1"]
    assert "already running: a1 a2 b2 c1 c2 db2 db3 proxy" in out.getvalue()
    again = load_layout(cluster_dir)
    assert again.node("a1").pid == stored.node("a1").pid and again.node("b1").pid != stored.node("b1").pid
    assert [node.port for node in again.nodes] == [node.port for node in stored.nodes]
    assert again.node("db1").role == ROLE_READER
    assert {entry["node_id"]: entry for entry in cluster_status(cluster_dir)}["db1"]["role"] == "reader"

    out = io.StringIO()
    stop_cluster(cluster_dir, out)
    order = [line.split()[1] for line in out.getvalue().splitlines() if line.startswith("stopping ")]
    assert order.index("proxy") < order.index("db2") < order.index("a1")
    assert all(entry["state"] == "stopped" and entry["epoch"] is None for entry in cluster_status(cluster_dir))
    assert all(node.pid is None for node in load_layout(cluster_dir).nodes)


def test_an_existing_cluster_keeps_its_cache_size_when_up_restarts_a_compute_node(cluster_dir):
    """`up --cache-pages N` is remembered: a writer killed and started again by a plain `up` gets
    N pages, not the default; a new size given later applies to what starts from then on."""
    _, first = fake_up(cluster_dir, free_port_range(), readers=0, cache_pages=96)
    stored = load_layout(cluster_dir)
    assert stored.cache_pages == 96 and cache_pages_of(stored.node("db1").pid) == 96
    os.kill(stored.node("db1").pid, signal.SIGKILL)
    first.children["db1"].wait()
    _, second = fake_up(cluster_dir, None, cache_pages=None)
    assert sorted(second.children) == ["db1"] and cache_pages_of(load_layout(cluster_dir).node("db1").pid) == 96
    os.kill(load_layout(cluster_dir).node("db1").pid, signal.SIGKILL)
    second.children["db1"].wait()
    fake_up(cluster_dir, None, cache_pages=200)
    assert load_layout(cluster_dir).cache_pages == 200 and cache_pages_of(load_layout(cluster_dir).node("db1").pid) == 200
    with pytest.raises(ClusterError, match="at least"):
        fake_up(cluster_dir, None, cache_pages=1)


def test_up_migrates_a_version_1_cluster_and_stops_its_old_writer(cluster_dir):
    """Storage nodes of the old layout keep running (same ids, ports, data); the old writer, which
    holds the client port, is stopped; db1 and the proxy take over, clients still connect to P."""
    port = free_port_range()
    old = layout_from_json(version_1_document(port))
    cluster_dir.mkdir()
    old_writer = old.retired[0]
    command = [*FAKE_PROGRAM, "compute-node", "--role", "writer", "--node-id", "writer",
               "--listen", f"127.0.0.1:{port}", "--admin", f"127.0.0.1:{port + 20}", "--data",
               str(cluster_dir / "writer"), "--storage", "a1=127.0.0.1:1"]
    child = spawn(command, cluster_dir / old_writer.log_file, cluster_dir)
    document = version_1_document(port)
    for node in document["nodes"]:
        node["pid"] = child.pid if node["node_id"] == "writer" else None
    (cluster_dir / "cluster.json").write_text(json.dumps(document))
    deadline = time.monotonic() + FAKE_READY_TIMEOUT_S
    while "listening" not in (cluster_dir / old_writer.log_file).read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    out = io.StringIO()
    try:
        fake_up(cluster_dir, None, out, readers=0)
    finally:
        if child.poll() is None:
            child.kill()
        child.wait()
    assert "migrating to layout version 2" in out.getvalue() and "stopping writer" in out.getvalue()
    assert child.returncode is not None
    layout = load_layout(cluster_dir)
    assert json.loads((cluster_dir / "cluster.json").read_text())["version"] == 2
    assert [node.node_id for node in layout.nodes] == ["a1", "a2", "b1", "b2", "c1", "c2", "db1", "proxy"]
    assert layout.retired == [] and layout.proxy.port == port


def test_changing_the_reader_count_needs_the_compute_nodes_stopped(cluster_dir):
    port = free_port_range()
    fake_up(cluster_dir, port, readers=1)
    with pytest.raises(ClusterError, match="before changing --readers"):
        fake_up(cluster_dir, None, readers=2)
    stop_cluster(cluster_dir, io.StringIO())
    fake_up(cluster_dir, None, readers=0)
    assert [node.node_id for node in load_layout(cluster_dir).compute_nodes] == ["db1"]


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
    monkeypatch.setenv("FAKE_NODE_FAIL", "db1")
    out = io.StringIO()
    with pytest.raises(ClusterError, match="db1 exited before it was ready"):
        fake_up(cluster_dir, free_port_range(), out)
    assert "fake db1: failing on purpose" in out.getvalue()
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
        started = aurora_db("up", "--data", data, "--port", str(port), "--readers", "0", "--detach",
                            "--ready-timeout", str(REAL_READY_TIMEOUT_S))
        assert started.returncode == 0, started.stdout + started.stderr
        assert f"postgresql://postgres@127.0.0.1:{port}/postgres" in started.stdout
        assert f"postgresql://postgres@127.0.0.1:{port + 1}/postgres" in started.stdout
        url = f"postgresql://postgres@127.0.0.1:{port}/postgres"
        with psycopg.connect(url, autocommit=True) as connection:
            connection.execute("CREATE TABLE kept (id int PRIMARY KEY, note text)")
            connection.execute("INSERT INTO kept VALUES (1, 'survives')")

        deadline = time.monotonic() + REAL_READY_TIMEOUT_S
        while True:  # a storage node outside the write quorum of those commits may still be catching up
            status = json.loads(aurora_db("status", "--data", data, "--json").stdout)
            by_id = {entry["node_id"]: entry for entry in status["nodes"]}
            if all(by_id[node]["scl"] for node in ("a1", "a2", "b1", "b2", "c1", "c2")) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert all(entry["state"] == "running" and entry["health"] == "running" for entry in by_id.values())
        assert by_id["db1"]["vdl"] is not None and by_id["db1"]["role"] == "writer" and by_id["a1"]["scl"]
        assert by_id["db1"]["port"] == port + 3 and by_id["db1"]["admin_port"] == port + 20
        assert status["endpoints"]["writer"]["node_id"] == "db1"
        assert status["endpoints"]["reader"]["node_ids"] == ["db1"], "no readers: the writer serves reads"
        with psycopg.connect(f"postgresql://postgres@127.0.0.1:{port + 3}/postgres", autocommit=True) as direct:
            assert direct.execute("SELECT note FROM kept").fetchall() == [("survives",)], "db1's own port"

        layout = load_layout(Path(data).resolve())
        for node_id in ("c1", "db1"):
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
    up = subprocess.Popen([AURORA_DB, "up", "--data", data, "--port", str(port), "--readers", "0",
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


def test_a_replacement_storage_node_takes_the_next_id_of_its_az_and_a_reserved_free_port():
    from aurora_db.cluster import REPLACEMENT_PORT_OFFSETS, replacement_node

    layout = plan_layout(CLIENT_PORT_DEFAULT, 2)
    old = layout.node("c2")
    first = replacement_node(layout, old, None)
    assert (first.node_id, first.role, first.az) == ("c3", ROLE_STORAGE, "c")
    assert first.port == CLIENT_PORT_DEFAULT + REPLACEMENT_PORT_OFFSETS[0]
    assert first.data_dir == "storage-c3" and first.log_file == "logs/c3.log"
    layout.nodes.append(first)
    second = replacement_node(layout, layout.node("a1"), None)
    assert (second.node_id, second.port) == ("a3", CLIENT_PORT_DEFAULT + REPLACEMENT_PORT_OFFSETS[1])
    every_port = {port for node in layout.nodes for port in node_ports(node)}
    assert second.port not in every_port
    with pytest.raises(ClusterError):
        replacement_node(layout, old, "b1")  # an id already in use
    for offset in REPLACEMENT_PORT_OFFSETS[1:]:
        layout.nodes.append(replacement_node(layout, old, None))
    with pytest.raises(ClusterError, match="every port"):
        replacement_node(layout, old, None)
