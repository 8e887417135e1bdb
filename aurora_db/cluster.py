"""`aurora-db up | down | status | failover`: a local cluster on 127.0.0.1 of six storage nodes, a
writer, readers and the proxy in front of them.

Responsibilities: the layout (ports, directories, commands; pure functions, unit-tested), kept with
every pid in DIR/cluster.json; starting the nodes in order (storage, each until it answers the
storage "status" request; the writer, until it answers SELECT 1 on its own port; the readers, until
each reports role reader; the proxy, until SELECT 1 works through the writer endpoint); stopping
them (proxy, readers, writer, storage); reporting each one's role, health, epoch, SCLs or VDL and
replica lag, each protection group's size and SCL on every storage node, and where the proxy's
endpoints point; asking the proxy for a planned switchover.
Invariants: a pid counts as a running node only if /proc/PID/cmdline names that node's id and data
directory, so a recycled pid is never signalled; cluster.json is replaced atomically after every
spawn and stop, so `down` finds whatever `up` started even if `up` died; children run in their own
session, so a terminal's Ctrl-C reaches only `up`, which stops them in order; ports never change
once a cluster exists; a compute node started while another compute node runs starts as a reader,
so `up` never starts a second writer (the proxy promotes one if the writer is gone).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterable, TextIO

from aurora_db.constants import CACHE_PAGES_DEFAULT, CACHE_PAGES_MIN, REPLACE_STORAGE_TIMEOUT_MS
from aurora_db.framing import FrameDecoder, FrameError, encode_frame
from aurora_db.storage_protocol import STATUS

LISTEN_HOST = "127.0.0.1"
CLIENT_PORT_DEFAULT = 5432
STORAGE_NODES = (("a1", "a"), ("a2", "a"), ("b1", "b"), ("b2", "b"), ("c1", "c"), ("c2", "c"))
# Ports: the proxy's writer endpoint is P itself, its reader endpoint P+1, its admin port P+2; compute
# node dbN listens on P+2+N and its admin port is P+19+N; storage a1..c2 on P+11..P+16.
READER_ENDPOINT_PORT_OFFSET = 1
PROXY_ADMIN_PORT_OFFSET = 2
COMPUTE_PORT_OFFSET = 3  # db1 on P+3, db2 on P+4, ...
STORAGE_PORT_OFFSET = 11
COMPUTE_ADMIN_PORT_OFFSET = 20  # db1's admin port P+20, db2's P+21, ...
READERS_DEFAULT = 2
READERS_MAX = 6
COMPUTE_NODES_MAX = 1 + READERS_MAX
PORT_SPAN = COMPUTE_ADMIN_PORT_OFFSET + COMPUTE_NODES_MAX  # P .. P+26: reserved whatever the reader count
COMPUTE_NODE_PREFIX = "db"
COMPUTE_AZS = ("a", "b", "c")  # db1 in a, db2 in b, db3 in c, db4 in a, ...
PROXY_NODE_ID = "proxy"
PORT_MIN = 1
PORT_MAX = 65535
assert READER_ENDPOINT_PORT_OFFSET < PROXY_ADMIN_PORT_OFFSET < COMPUTE_PORT_OFFSET
assert COMPUTE_PORT_OFFSET + COMPUTE_NODES_MAX <= STORAGE_PORT_OFFSET  # P+3..P+9
assert STORAGE_PORT_OFFSET + len(STORAGE_NODES) <= COMPUTE_ADMIN_PORT_OFFSET
assert not ({f"{COMPUTE_NODE_PREFIX}{number}" for number in range(1, COMPUTE_NODES_MAX + 1)} | {PROXY_NODE_ID}
            ) & {node_id for node_id, _ in STORAGE_NODES}

ROLE_STORAGE = "storage"
ROLE_WRITER = "writer"  # in the layout: the role a compute node is started in
ROLE_READER = "reader"
ROLE_PROXY = "proxy"
COMPUTE_ROLES = (ROLE_WRITER, ROLE_READER)
WRITER_ROLES_REPORTED = ("writer", "promoting", "recovering")  # a node that is, or is becoming, the writer
STATE_RUNNING = "running"
STATE_STOPPED = "stopped"
HEALTH_ANSWERING = "running"
HEALTH_SILENT = "not answering"
HEALTH_STOPPED = "stopped"
HEALTH_REBUILDING = "rebuilding"  # shown for a running storage node that rebuilds its segments from peers

LAYOUT_FILE = "cluster.json"
LAYOUT_VERSION = 2
LEGACY_LAYOUT_VERSION = 1  # one compute node "writer" on P, admin P+20: migrated on load
LOCK_FILE = ".cluster.lock"
LOGS_DIR = "logs"
DEFAULT_PROGRAM = (sys.executable, "-m", "aurora_db.cli")

READY_TIMEOUT_S = 60  # per phase: storage nodes, the writer (recovery first), the readers, the proxy
STOP_GRACE_S = 10  # SIGTERM, then this long, then SIGKILL
KILL_WAIT_S = 5
POLL_INTERVAL_S = 0.2
PROGRESS_INTERVAL_S = 5
STATUS_REQUEST_TIMEOUT_S = 2
ROLE_REQUEST_TIMEOUT_S = 1  # asking running compute nodes their role before starting or stopping others
SQL_CONNECT_TIMEOUT_S = 2
FAILOVER_REPLY_MARGIN_S = 10  # beyond the proxy's own limit on a switchover
LOG_TAIL_LINES = 30
STATUS_PGS_SHOWN_MAX = 4
SIZE_UNITS = ("B", "kB", "MB", "GB", "TB")
SIZE_UNIT_BYTES = 1024  # as PostgreSQL's pg_size_pretty counts: 1 kB = 1024 B

EXIT_OK = 0
EXIT_FAILURE = 1


class ClusterError(Exception):
    """An expected failure of up/down/status/failover; the message tells the user what to do."""


class StopRequested(Exception):
    """SIGINT or SIGTERM reached `up`."""


# ----------------------------------------------------------------------------------------------
# Layout (pure)
# ----------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Node:
    """One process of the cluster. data_dir and log_file are relative to the cluster directory.
    For a compute node, `role` is the role it is started in (the node itself reports its role now)."""

    node_id: str
    role: str
    az: str | None
    port: int
    admin_port: int | None
    data_dir: str
    log_file: str
    pid: int | None = None
    reader_port: int | None = None  # the proxy's reader endpoint

    @property
    def is_compute(self) -> bool:
        return self.role in COMPUTE_ROLES


@dataclasses.dataclass
class Layout:
    port: int  # the writer endpoint's port: the cluster's name on this machine
    nodes: list[Node]
    retired: list[Node] = dataclasses.field(default_factory=list)  # an earlier layout's processes, to stop
    cache_pages: int = CACHE_PAGES_DEFAULT  # every compute node's buffer cache, in pages

    def node(self, node_id: str) -> Node:
        return next(node for node in self.nodes if node.node_id == node_id)

    @property
    def storage_nodes(self) -> list[Node]:
        return [node for node in self.nodes if node.role == ROLE_STORAGE]

    @property
    def compute_nodes(self) -> list[Node]:
        return [node for node in self.nodes if node.is_compute]

    @property
    def writer(self) -> Node:
        """The compute node started (or to be started) as the writer."""
        return next((node for node in self.compute_nodes if node.role == ROLE_WRITER), self.compute_nodes[0])

    @property
    def readers(self) -> list[Node]:
        return [node for node in self.compute_nodes if node is not self.writer]

    @property
    def proxy(self) -> Node:
        return next(node for node in self.nodes if node.role == ROLE_PROXY)

    def start_order(self) -> list[Node]:
        return self.storage_nodes + [self.writer] + self.readers + [self.proxy]

    def stop_groups(self) -> list[list[Node]]:
        """The proxy first (no new clients), then the readers, the writer (and any process of an earlier
        layout), and last the storage nodes, so no compute node sees its storage vanish under it."""
        return [[self.proxy], self.readers, [self.writer] + self.retired, self.storage_nodes]


def check_port(client_port: int) -> None:
    highest = client_port + PORT_SPAN - 1
    if client_port < PORT_MIN or highest > PORT_MAX:
        raise ClusterError(f"--port {client_port} leaves no room: the cluster uses ports {client_port} to "
                           f"{highest}, which must lie within {PORT_MIN}..{PORT_MAX}")


def plan_compute(client_port: int, readers: int) -> list[Node]:
    """db1 (started as the writer) and `readers` readers, then the proxy in front of them."""
    if not 0 <= readers <= READERS_MAX:
        raise ClusterError(f"--readers {readers}: a cluster has 0 to {READERS_MAX} readers")
    nodes = []
    for index in range(1 + readers):
        node_id = f"{COMPUTE_NODE_PREFIX}{index + 1}"
        nodes.append(Node(node_id, ROLE_WRITER if index == 0 else ROLE_READER, COMPUTE_AZS[index % len(COMPUTE_AZS)],
                          client_port + COMPUTE_PORT_OFFSET + index, client_port + COMPUTE_ADMIN_PORT_OFFSET + index,
                          node_id, f"{LOGS_DIR}/{node_id}.log"))
    nodes.append(Node(PROXY_NODE_ID, ROLE_PROXY, None, client_port, client_port + PROXY_ADMIN_PORT_OFFSET,
                      PROXY_NODE_ID, f"{LOGS_DIR}/{PROXY_NODE_ID}.log",
                      reader_port=client_port + READER_ENDPOINT_PORT_OFFSET))
    return nodes


def plan_layout(client_port: int, readers: int = READERS_DEFAULT) -> Layout:
    check_port(client_port)
    nodes = [Node(node_id, ROLE_STORAGE, az, client_port + STORAGE_PORT_OFFSET + index, None,
                  f"storage-{node_id}", f"{LOGS_DIR}/{node_id}.log")
             for index, (node_id, az) in enumerate(STORAGE_NODES)]
    return Layout(client_port, nodes + plan_compute(client_port, readers))


def replan_compute(layout: Layout, readers: int) -> Layout:
    """The same storage nodes (and their pids); compute nodes and proxy planned anew (none may be running)."""
    return dataclasses.replace(layout, nodes=layout.storage_nodes + plan_compute(layout.port, readers))


def migrate_legacy_layout(document: dict) -> Layout:
    """Version 1 (one compute node "writer" on P, admin P+20) to version 2: the storage nodes, their
    data and pids are kept; the old writer is retired (stopped by the next up or down); compute nodes
    keep no durable state, so the new ones simply start."""
    port = int(document["port"])
    old = [Node(**node) for node in document["nodes"]]
    storage = [node for node in old if node.role == ROLE_STORAGE]
    planned = plan_layout(port)
    if [(node.node_id, node.port, node.data_dir) for node in storage] != [
            (node.node_id, node.port, node.data_dir) for node in planned.storage_nodes]:
        raise ClusterError(f"{LAYOUT_FILE} (version {LEGACY_LAYOUT_VERSION}) names storage nodes this aurora-db "
                           "does not know how to migrate")
    return Layout(port, storage + planned.compute_nodes + [planned.proxy],
                  [node for node in old if node.role != ROLE_STORAGE])


def layout_to_json(layout: Layout) -> dict:
    return {"version": LAYOUT_VERSION, "host": LISTEN_HOST, "port": layout.port, "cache_pages": layout.cache_pages,
            "nodes": [dataclasses.asdict(node) for node in layout.nodes],
            "retired": [dataclasses.asdict(node) for node in layout.retired]}


def layout_from_json(document: dict) -> Layout:
    version = document.get("version")
    try:
        if version == LEGACY_LAYOUT_VERSION:
            return migrate_legacy_layout(document)
        if version != LAYOUT_VERSION:
            raise ClusterError(f"{LAYOUT_FILE} has version {version!r}; this aurora-db reads versions "
                               f"{LEGACY_LAYOUT_VERSION} and {LAYOUT_VERSION}")
        return Layout(int(document["port"]), [Node(**node) for node in document["nodes"]],
                      [Node(**node) for node in document.get("retired", [])],
                      int(document.get("cache_pages", CACHE_PAGES_DEFAULT)))
    except (KeyError, TypeError, ValueError) as error:
        raise ClusterError(f"{LAYOUT_FILE} is malformed: {error}") from None


def choose_port(requested: int | None, existing: Layout | None) -> int:
    """A new cluster takes --port (default 5432); an existing one keeps its ports."""
    if existing is None:
        return CLIENT_PORT_DEFAULT if requested is None else requested
    if requested is not None and requested != existing.port:
        raise ClusterError(f"this cluster was created with --port {existing.port}; omit --port or pass "
                           f"--port {existing.port}")
    return existing.port


def choose_cache_pages(requested: int | None, existing: Layout | None) -> int:
    """A new cluster takes --cache-pages (default CACHE_PAGES_DEFAULT); an existing one keeps its
    own unless asked (a new size applies to the compute nodes started from then on)."""
    if requested is not None:
        if requested < CACHE_PAGES_MIN:
            raise ClusterError(f"--cache-pages {requested}: a compute node needs at least {CACHE_PAGES_MIN} pages")
        return requested
    return CACHE_PAGES_DEFAULT if existing is None else existing.cache_pages


def choose_readers(requested: int | None, existing: Layout | None) -> int:
    """A new cluster takes --readers (default 2); an existing one keeps its count unless asked."""
    if requested is not None:
        return requested
    return READERS_DEFAULT if existing is None else len(existing.readers)


def record_roles(layout: Layout, replies: dict[str, dict]) -> None:
    """Remember which compute node is the writer now (from the nodes' own status replies), so that the
    next start with no compute node running starts that one as the writer."""
    writers = [node for node in layout.compute_nodes
               if (replies.get(node.node_id) or {}).get("role") in WRITER_ROLES_REPORTED]
    if not writers:
        return
    newest = max(writers, key=lambda node: (replies[node.node_id].get("role") == ROLE_WRITER,
                                            replies[node.node_id].get("epoch") or -1))
    for node in layout.compute_nodes:
        node.role = ROLE_WRITER if node is newest else ROLE_READER


def assign_start_roles(layout: Layout, running: set[str]) -> None:
    """While any compute node runs, every compute node started joins as a reader: the cluster has a
    writer, or the proxy promotes one. With none running, the layout's writer starts as the writer."""
    writer = layout.writer
    any_running = any(node.node_id in running for node in layout.compute_nodes)
    for node in layout.compute_nodes:
        if node.node_id not in running:
            node.role = ROLE_READER if any_running or node is not writer else ROLE_WRITER


def node_ports(node: Node) -> list[int]:
    return [port for port in (node.port, node.reader_port, node.admin_port) if port is not None]


def node_command(node: Node, layout: Layout, cluster_dir: Path, cache_pages: int,
                 program: Iterable[str] = DEFAULT_PROGRAM) -> list[str]:
    data_dir = str(cluster_dir / node.data_dir)
    if node.role == ROLE_STORAGE:
        command = [*program, "storage-node", "--node-id", node.node_id, "--az", node.az,
                   "--listen", f"{LISTEN_HOST}:{node.port}", "--data", data_dir]
        for peer in layout.storage_nodes:
            if peer.node_id != node.node_id:
                command += ["--peer", f"{peer.node_id}={LISTEN_HOST}:{peer.port}"]
        return command
    if node.role == ROLE_PROXY:
        command = [*program, "proxy", "--node-id", node.node_id, "--writer-listen", f"{LISTEN_HOST}:{node.port}",
                   "--reader-listen", f"{LISTEN_HOST}:{node.reader_port}",
                   "--admin", f"{LISTEN_HOST}:{node.admin_port}", "--data", data_dir]
        for compute in layout.compute_nodes:
            command += ["--node", f"{compute.node_id}={LISTEN_HOST}:{compute.port}:{compute.admin_port}"]
        return command
    command = [*program, "compute-node", "--role", node.role, "--node-id", node.node_id, "--az", node.az,
               "--listen", f"{LISTEN_HOST}:{node.port}", "--admin", f"{LISTEN_HOST}:{node.admin_port}",
               "--cache-pages", str(cache_pages), "--data", data_dir]
    for storage in layout.storage_nodes:
        command += ["--storage", f"{storage.node_id}={LISTEN_HOST}:{storage.port}"]
    return command


def _argument_after(argv: list[str], flag: str) -> str | None:
    for index, argument in enumerate(argv[:-1]):
        if argument == flag:
            return argv[index + 1]
    return None


def cmdline_names_node(argv: list[str] | None, node: Node, cluster_dir: Path) -> bool:
    """Whether a process's argv is this node of this cluster (and not a recycled pid)."""
    if not argv:
        return False  # gone, or a zombie
    return (_argument_after(argv, "--node-id") == node.node_id
            and _argument_after(argv, "--data") == str(cluster_dir / node.data_dir))


def nodes_to_start(layout: Layout, running: set[str]) -> list[Node]:
    return [node for node in layout.start_order() if node.node_id not in running]


def writer_url(port: int) -> str:
    return f"postgresql://postgres@{LISTEN_HOST}:{port}/postgres"


def reader_url(port: int) -> str:
    return writer_url(port + READER_ENDPOINT_PORT_OFFSET)


def node_kind(node: Node) -> str:
    return "compute" if node.is_compute else node.role


def status_entry(node: Node, running: bool, reply: dict | None) -> dict:
    """One line of `status`: the layout's facts, plus the node's own numbers if it answered.
    A compute node's role is the one it reports (None when it does not answer). A storage node's
    `segments` (PG, as a string, -> scl, base, records, log_bytes, image_bytes, pages), `rebuilding`
    and `horizon` are None when its reply lacks them (a storage node older than these fields)."""
    answered = running and reply is not None and bool(reply.get("ok"))
    entry = {"node_id": node.node_id, "kind": node_kind(node), "role": None if node.is_compute else node.role,
             "az": node.az, "pid": node.pid if running else None, "port": node.port, "admin_port": node.admin_port,
             "state": STATE_RUNNING if running else STATE_STOPPED,
             "health": HEALTH_ANSWERING if answered else HEALTH_SILENT if running else HEALTH_STOPPED,
             "epoch": None}
    if node.role == ROLE_STORAGE:
        entry.update({"scl": None, "segments": None, "rebuilding": None, "horizon": None})
    elif node.is_compute:
        entry.update({"vdl": None, "applied_lsn": None, "replica_lag_ms": None, "replica_lag_lsn": None,
                      "promotion_tier": None})
    else:
        entry.update({"reader_port": node.reader_port, "writer_endpoint": None, "reader_endpoint": None,
                      "connections": None})
    if not answered:
        return entry
    entry["epoch"] = reply.get("epoch")
    if node.role == ROLE_STORAGE:
        entry["scl"] = {str(pg): scl for pg, scl in sorted((reply.get("pgs") or {}).items())}
        segments = reply.get("segments")
        if segments is not None:  # msgpack keys a map by int or str: PG numbers become strings, in order
            entry["segments"] = {str(pg): dict(segment)
                                 for pg, segment in sorted(segments.items(), key=lambda item: int(item[0]))}
        entry.update({"rebuilding": reply.get("rebuilding"), "horizon": reply.get("horizon")})
    elif node.is_compute:
        entry["role"] = reply.get("role")
        for name in ("vdl", "applied_lsn", "replica_lag_ms", "replica_lag_lsn", "promotion_tier"):
            entry[name] = reply.get(name)
    else:
        entry.update({"writer_endpoint": reply.get("writer"), "reader_endpoint": reply.get("readers"),
                      "connections": reply.get("connections")})
    return entry


def endpoints_of(layout: Layout, entries: list[dict]) -> dict:
    """Where the proxy's two endpoints point, from its status entry (None when it does not answer)."""
    proxy = next(entry for entry in entries if entry["node_id"] == layout.proxy.node_id)
    return {"writer": {"url": writer_url(layout.port), "port": layout.port, "node_id": proxy["writer_endpoint"]},
            "reader": {"url": reader_url(layout.port), "port": layout.proxy.reader_port,
                       "node_ids": proxy["reader_endpoint"]},
            "proxy_health": proxy["health"]}


def _progress_text(entry: dict) -> str:
    if entry.get("vdl") is not None or entry.get("applied_lsn") is not None:
        parts = [f"vdl {entry['vdl']}"] if entry.get("vdl") is not None else []
        if entry.get("applied_lsn") is not None:
            parts.append(f"applied {entry['applied_lsn']}")
        return " ".join(parts)
    if entry.get("connections") is not None:
        return f"{entry['connections']} connections"
    scl = entry.get("scl")
    if not scl:
        return ""
    shown = [f"{pg}:{value}" for pg, value in list(scl.items())[:STATUS_PGS_SHOWN_MAX]]
    more = len(scl) - STATUS_PGS_SHOWN_MAX
    return "scl " + " ".join(shown) + (f" (+{more} PGs)" if more > 0 else "")


def _lag_text(entry: dict) -> str | None:
    lag_ms, lag_lsn = entry.get("replica_lag_ms"), entry.get("replica_lag_lsn")
    if lag_ms is None and lag_lsn is None:
        return None
    return " / ".join(part for part in (None if lag_ms is None else f"{lag_ms:.1f} ms",
                                        None if lag_lsn is None else f"{lag_lsn} LSNs") if part)


def _health_text(entry: dict) -> str:
    return HEALTH_REBUILDING if entry["health"] == HEALTH_ANSWERING and entry.get("rebuilding") else entry["health"]


def _size_text(size_bytes: int) -> str:
    """512 B, 1.0 kB, 1.2 MB: one decimal in the largest unit that keeps the number below 1024."""
    value, unit = float(size_bytes), 0
    while round(value, 1) >= SIZE_UNIT_BYTES and unit < len(SIZE_UNITS) - 1:
        value /= SIZE_UNIT_BYTES
        unit += 1
    return f"{size_bytes} B" if unit == 0 else f"{value:.1f} {SIZE_UNITS[unit]}"


def _scl_text(entry: dict, pg: str) -> str:
    segment = (entry["segments"] or {}).get(pg)
    return "-" if segment is None else str(segment["scl"])


def format_protection_groups(entries: list[dict]) -> str:
    """A row per PG that any storage node reports a segment of: the most pages and the largest size
    (image plus log) among its segments, then each storage node's SCL ("-" where the node is down or
    holds no segment of the PG). Empty when no storage node reports segments."""
    from aurora_db.shell import format_table

    storage = [entry for entry in entries if entry["kind"] == ROLE_STORAGE]
    pgs = sorted({pg for entry in storage for pg in entry["segments"] or {}}, key=int)
    if not pgs:
        return ""
    rows = []
    for pg in pgs:
        segments = [entry["segments"][pg] for entry in storage if pg in (entry["segments"] or {})]
        rows.append([pg, str(max(segment["pages"] for segment in segments)),
                     _size_text(max(segment["image_bytes"] + segment["log_bytes"] for segment in segments)),
                     *(_scl_text(entry, pg) for entry in storage)])
    headers = ["PG", "pages", "size"] + [entry["node_id"] for entry in storage]
    return format_table(headers, rows, [True] * len(headers), title="protection groups")


def _endpoint_text(health: str, target: str | None) -> str:
    if health != HEALTH_ANSWERING:
        return f"? (proxy {health})"
    return target or "none"


def format_status(entries: list[dict], endpoints: dict | None = None) -> str:
    from aurora_db.shell import format_table

    headers = ["node", "role", "az", "pid", "port", "health", "epoch", "progress", "replica lag"]
    rows = [[entry["node_id"], entry["role"], entry["az"], _text(entry["pid"]), str(entry["port"]),
             _health_text(entry), _text(entry["epoch"]), _progress_text(entry), _lag_text(entry)]
            for entry in entries]
    text = format_table(headers, rows, [False, False, False, True, True, False, True, False, False])
    protection_groups = format_protection_groups(entries)
    if protection_groups:
        text += "\n" + protection_groups
    if endpoints is not None:
        health = endpoints["proxy_health"]
        readers = endpoints["reader"]["node_ids"]
        text += (f"\nwriter endpoint  {endpoints['writer']['url']}  -> "
                 f"{_endpoint_text(health, endpoints['writer']['node_id'])}\n"
                 f"reader endpoint  {endpoints['reader']['url']}  -> "
                 f"{_endpoint_text(health, ', '.join(readers) if readers else None)}\n")
    return text


def _text(value) -> str | None:
    return None if value is None else str(value)


# ----------------------------------------------------------------------------------------------
# cluster.json on disk
# ----------------------------------------------------------------------------------------------

def layout_path(cluster_dir: Path) -> Path:
    return cluster_dir / LAYOUT_FILE


def load_layout(cluster_dir: Path) -> Layout | None:
    try:
        text = layout_path(cluster_dir).read_text()
    except FileNotFoundError:
        return None
    try:
        return layout_from_json(json.loads(text))
    except json.JSONDecodeError as error:
        raise ClusterError(f"{layout_path(cluster_dir)} is not valid JSON: {error}") from None


def save_layout(cluster_dir: Path, layout: Layout) -> None:
    """Write to a temporary file, fsync, rename: a reader sees the old layout or the new, never half."""
    temporary = cluster_dir / (LAYOUT_FILE + ".tmp")
    with open(temporary, "w") as file:
        json.dump(layout_to_json(layout), file, indent=2)
        file.write("\n")
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, layout_path(cluster_dir))


@contextlib.contextmanager
def cluster_lock(cluster_dir: Path):
    """One up/down at a time changes a cluster directory."""
    with open(cluster_dir / LOCK_FILE, "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ClusterError(f"another aurora-db up or down is working on {cluster_dir}") from None
        yield


# ----------------------------------------------------------------------------------------------
# Processes (I/O): spawn, alive check, stop
# ----------------------------------------------------------------------------------------------

def read_proc_cmdline(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return [part.decode(errors="replace") for part in raw.split(b"\0")[:-1]] or None


def node_is_running(node: Node, cluster_dir: Path,
                    read_cmdline: Callable[[int], list[str] | None] = read_proc_cmdline) -> bool:
    return node.pid is not None and cmdline_names_node(read_cmdline(node.pid), node, cluster_dir)


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers bind: TIME_WAIT is no obstacle
        try:
            probe.bind((LISTEN_HOST, port))
        except OSError:
            return False
    return True


def spawn(command: list[str], log_file: Path, cwd: Path) -> subprocess.Popen:
    """Start a node in its own session, its stdout and stderr appended to its log."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "ab") as log:
        log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} starting: {' '.join(command)}\n".encode())
        log.flush()
        return subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                cwd=cwd, start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})


class Processes:
    """How `up` and `down` see the cluster's processes: its own children by their Popen (which also
    reaps them), every other node by its pid and /proc cmdline."""

    def __init__(self, cluster_dir: Path, children: dict[str, subprocess.Popen] | None = None):
        self.cluster_dir = cluster_dir
        self.children = children if children is not None else {}

    def is_alive(self, node: Node) -> bool:
        child = self.children.get(node.node_id)
        if child is not None:
            return child.poll() is None
        return node_is_running(node, self.cluster_dir)

    def signal(self, node: Node, signum: int) -> None:
        if node.pid is None or not self.is_alive(node):
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(node.pid, signum)

    def stop(self, nodes: list[Node], out: TextIO, grace_s: float = STOP_GRACE_S) -> None:
        """SIGTERM every node, wait up to grace_s for all, SIGKILL the rest."""
        alive = [node for node in nodes if self.is_alive(node)]
        for node in alive:
            out.write(f"stopping {node.node_id} (pid {node.pid})\n")
            self.signal(node, signal.SIGTERM)
        remaining = self._wait_for_exit(alive, grace_s)
        for node in remaining:
            out.write(f"{node.node_id} did not stop within {grace_s} s: SIGKILL\n")
            self.signal(node, signal.SIGKILL)
        for node in self._wait_for_exit(remaining, KILL_WAIT_S):
            out.write(f"{node.node_id} (pid {node.pid}) survived SIGKILL\n")
        out.flush()

    def _wait_for_exit(self, nodes: list[Node], timeout_s: float) -> list[Node]:
        deadline = time.monotonic() + timeout_s
        remaining = [node for node in nodes if self.is_alive(node)]
        while remaining and time.monotonic() < deadline:
            time.sleep(POLL_INTERVAL_S)
            remaining = [node for node in remaining if self.is_alive(node)]
        return remaining


# ----------------------------------------------------------------------------------------------
# Asking nodes how they are
# ----------------------------------------------------------------------------------------------

def request_frame(port: int, message: dict, timeout_s: float = STATUS_REQUEST_TIMEOUT_S) -> dict | None:
    """One request on a fresh connection; None if the node does not answer with a frame in time."""
    try:
        with socket.create_connection((LISTEN_HOST, port), timeout=timeout_s) as connection:
            connection.settimeout(timeout_s)
            connection.sendall(encode_frame(message))
            decoder = FrameDecoder()
            while True:
                chunk = connection.recv(65536)
                if not chunk:
                    return None
                replies = decoder.feed(chunk)
                if replies:
                    return replies[0]
    except (OSError, FrameError):
        return None


def status_request() -> dict:
    return {"id": 1, "t": STATUS}


def ask_status(node: Node, timeout_s: float = STATUS_REQUEST_TIMEOUT_S) -> dict | None:
    """The storage "status" request on a storage node's port; the admin "status" on any other node's."""
    port = node.port if node.role == ROLE_STORAGE else node.admin_port
    reply = request_frame(port, status_request(), timeout_s)
    return reply if reply is not None and reply.get("ok") else None


def ask_statuses(nodes: list[Node], timeout_s: float = STATUS_REQUEST_TIMEOUT_S) -> dict[str, dict | None]:
    """Every node's status at once, so a paused node costs one timeout, not one each."""
    if not nodes:
        return {}
    with ThreadPoolExecutor(max_workers=len(nodes)) as pool:
        replies = pool.map(lambda node: ask_status(node, timeout_s), nodes)
        return {node.node_id: reply for node, reply in zip(nodes, replies)}


def answers_sql(port: int) -> bool:
    import psycopg

    try:
        with psycopg.connect(host=LISTEN_HOST, port=port, user="postgres", dbname="postgres", autocommit=True,
                             connect_timeout=SQL_CONNECT_TIMEOUT_S) as connection:
            connection.execute("SELECT 1").fetchall()
        return True
    except psycopg.Error:
        return False


def node_is_ready(node: Node) -> bool:
    """Storage: answers status. Writer: SELECT 1 on its own port. Reader: reports role reader and
    answers SELECT 1 on its own port (it has attached to the writer's redo stream). Proxy: answers
    status, and SELECT 1 works through the writer endpoint."""
    if node.role == ROLE_STORAGE:
        return ask_status(node) is not None
    if node.role == ROLE_WRITER:
        return answers_sql(node.port)
    if node.role == ROLE_READER:
        reply = ask_status(node)
        return reply is not None and reply.get("role") == ROLE_READER and answers_sql(node.port)
    return ask_status(node) is not None and answers_sql(node.port)


def running_compute_replies(layout: Layout, processes: "Processes") -> dict[str, dict | None]:
    return ask_statuses([node for node in layout.compute_nodes if processes.is_alive(node)], ROLE_REQUEST_TIMEOUT_S)


# ----------------------------------------------------------------------------------------------
# up
# ----------------------------------------------------------------------------------------------

class StartupFailed(Exception):
    def __init__(self, node: Node, reason: str):
        super().__init__(f"{node.node_id} {reason}")
        self.node = node


def wait_until_ready(nodes: list[Node], processes: Processes, what: str, timeout_s: float, out: TextIO,
                     is_ready: Callable[[Node], bool] = node_is_ready) -> None:
    """Poll every node until each is ready; raises StartupFailed for one that exits or stays silent."""
    started = time.monotonic()
    last_progress = started
    waiting = list(nodes)
    while waiting:
        for node in list(waiting):
            if not processes.is_alive(node):
                raise StartupFailed(node, "exited before it was ready")
            if is_ready(node):
                waiting.remove(node)
        if not waiting:
            break
        now = time.monotonic()
        if now - started > timeout_s:
            raise StartupFailed(waiting[0], f"was not ready within {timeout_s:g} s")
        if now - last_progress >= PROGRESS_INTERVAL_S:
            names = " ".join(node.node_id for node in waiting)
            out.write(f"  still waiting for {what}: {names} ({now - started:.0f} s)\n")
            out.flush()
            last_progress = now
        time.sleep(POLL_INTERVAL_S)


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return "(no log file)\n"
    return "".join(line + "\n" for line in text.splitlines()[-lines:])


def start_cluster(cluster_dir: Path, requested_port: int | None, requested_cache_pages: int | None, out: TextIO,
                  ready_timeout_s: float = READY_TIMEOUT_S, program: Iterable[str] = DEFAULT_PROGRAM,
                  requested_readers: int | None = None) -> tuple[Layout, Processes]:
    """Start whatever of the cluster is not running and wait until all of it is ready.

    Returns the layout and the children started here. On failure the children started here are
    stopped again and ClusterError says why (with the failing node's log tail)."""
    cluster_dir.mkdir(parents=True, exist_ok=True)
    with cluster_lock(cluster_dir):
        existing = load_layout(cluster_dir)
        port = choose_port(requested_port, existing)
        layout = existing or plan_layout(port, choose_readers(requested_readers, None))
        layout.cache_pages = cache_pages = choose_cache_pages(requested_cache_pages, existing)
        processes = Processes(cluster_dir)
        _retire_earlier_layout(layout, processes, cluster_dir, out)
        readers = choose_readers(requested_readers, layout)
        if readers != len(layout.readers):
            busy = [node.node_id for node in layout.compute_nodes + [layout.proxy] if processes.is_alive(node)]
            if busy:
                raise ClusterError(f"this cluster has {len(layout.readers)} readers and {' '.join(busy)} running; "
                                   f"stop it (aurora-db down) before changing --readers")
            layout = replan_compute(layout, readers)
        running = {node.node_id for node in layout.nodes if processes.is_alive(node)}
        record_roles(layout, running_compute_replies(layout, processes))
        assign_start_roles(layout, running)
        to_start = nodes_to_start(layout, running)
        _check_ports_free(to_start)
        for node in to_start:
            node.pid = None
        save_layout(cluster_dir, layout)
        if running:
            out.write(f"already running: {' '.join(sorted(running))}\n")
        phases = [(ROLE_STORAGE, "storage nodes", layout.storage_nodes),
                  (ROLE_WRITER, "the writer (recovery runs first)", None),
                  (ROLE_READER, "the readers", None),
                  (ROLE_PROXY, "the proxy (SELECT 1 through the writer endpoint)", [layout.proxy])]
        try:
            for role, what, wait_for in phases:
                starting = [node for node in to_start if node.role == role]
                _start_phase(starting, layout, processes, cluster_dir, cache_pages, program, what, ready_timeout_s,
                             out, wait_for=starting if wait_for is None else wait_for)
        except StartupFailed as failure:
            log = cluster_dir / failure.node.log_file
            out.write(f"\n{failure}. Last lines of {log}:\n{log_tail(log)}\n")
            with stop_signals_ignored():
                stop_started(layout, processes, cluster_dir, out)
            raise ClusterError(f"the cluster did not start: {failure}") from None
        except (StopRequested, KeyboardInterrupt):
            out.write("\ninterrupted: stopping what was started\n")
            with stop_signals_ignored():
                stop_started(layout, processes, cluster_dir, out)
            raise StopRequested from None
    return layout, processes


def _retire_earlier_layout(layout: Layout, processes: Processes, cluster_dir: Path, out: TextIO) -> None:
    """A cluster.json of an earlier version: write the new layout (the retired processes still listed,
    so a `down` finds them if this `up` dies), stop those processes, then forget them."""
    if not layout.retired:
        return
    out.write(f"{LAYOUT_FILE}: migrating to layout version {LAYOUT_VERSION} (storage data kept; the compute "
              f"nodes become {' '.join(node.node_id for node in layout.compute_nodes)} behind the proxy)\n")
    save_layout(cluster_dir, layout)
    processes.stop(layout.retired, out)
    layout.retired = []
    save_layout(cluster_dir, layout)


def _check_ports_free(nodes: list[Node]) -> None:
    for node in nodes:
        for port in node_ports(node):
            if not port_is_free(port):
                raise ClusterError(f"port {port} on {LISTEN_HOST} (for {node.node_id}) is already in use; "
                                   "stop whatever holds it or choose another --port for a new cluster")


def _start_phase(to_start: list[Node], layout: Layout, processes: Processes, cluster_dir: Path,
                 cache_pages: int, program: Iterable[str], what: str, ready_timeout_s: float, out: TextIO,
                 wait_for: list[Node]) -> None:
    for node in to_start:
        command = node_command(node, layout, cluster_dir, cache_pages, program)
        child = spawn(command, cluster_dir / node.log_file, cluster_dir)
        node.pid = child.pid
        processes.children[node.node_id] = child
        save_layout(cluster_dir, layout)
        out.write(f"started {node.node_id} (pid {child.pid}, port {node.port})\n")
    if not wait_for:
        return
    out.write(f"waiting for {what} (up to {ready_timeout_s:g} s)\n")
    out.flush()
    wait_until_ready(wait_for, processes, what, ready_timeout_s, out)


def stop_in_order(layout: Layout, processes: Processes, out: TextIO, only: set[str] | None = None,
                  grace_s: float = STOP_GRACE_S) -> None:
    """Proxy, readers, writer, storage; the writer is whichever compute node says so now."""
    record_roles(layout, running_compute_replies(layout, processes))
    for group in layout.stop_groups():
        processes.stop([node for node in group if only is None or node.node_id in only], out, grace_s)


def stop_started(layout: Layout, processes: Processes, cluster_dir: Path, out: TextIO) -> None:
    """Stop the children this `up` started, in order, and forget their pids."""
    stop_in_order(layout, processes, out, only=set(processes.children))
    for node in layout.nodes:
        if node.node_id in processes.children:
            node.pid = None
    save_layout(cluster_dir, layout)


def print_endpoints(layout: Layout, cluster_dir: Path, out: TextIO) -> None:
    url = writer_url(layout.port)
    out.write(f"\ncluster ready\n"
              f"  writer endpoint  {url}\n"
              f"  reader endpoint  {reader_url(layout.port)}\n"
              f"  connect with     aurora-db sql {url}   (add --reader for the reader endpoint)\n"
              f"  status           aurora-db status --data {cluster_dir}\n"
              f"  data directory   {cluster_dir}\n"
              f"  logs             {cluster_dir / LOGS_DIR}\n")
    out.flush()


def supervise(layout: Layout, processes: Processes, out: TextIO) -> None:
    """Foreground `up`: report children that exit; return when none is left (or a signal arrives)."""
    reported: set[str] = set()
    while True:
        for node_id, child in processes.children.items():
            if child.poll() is not None and node_id not in reported:
                reported.add(node_id)
                out.write(f"{node_id} exited with code {child.returncode}; see {layout.node(node_id).log_file}\n")
                out.flush()
        if len(reported) == len(processes.children):
            out.write("every process started here has exited\n")
            return
        time.sleep(POLL_INTERVAL_S)


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _raise_stop_requested(signum, frame) -> None:
    raise StopRequested(signal.Signals(signum).name)


@contextlib.contextmanager
def stop_signals_handled_as(handler):
    previous = {signum: signal.signal(signum, handler) for signum in STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, old_handler in previous.items():
            signal.signal(signum, old_handler)


def stop_signals_ignored():
    """Stopping is bounded (STOP_GRACE_S, then SIGKILL): a second Ctrl-C must not cut it short."""
    return stop_signals_handled_as(signal.SIG_IGN)


def run_up(args) -> int:
    cluster_dir = Path(args.data).resolve()
    out = sys.stdout
    ready_timeout_s = getattr(args, "ready_timeout", None) or READY_TIMEOUT_S
    with stop_signals_handled_as(_raise_stop_requested):
        try:
            layout, processes = start_cluster(cluster_dir, args.port, args.cache_pages, out, ready_timeout_s,
                                              requested_readers=getattr(args, "readers", None))
        except ClusterError as error:
            sys.stderr.write(f"aurora-db up: {error}\n")
            return EXIT_FAILURE
        except StopRequested:
            return EXIT_OK
        try:
            print_endpoints(layout, cluster_dir, out)
            if args.detach:
                return EXIT_OK
            if not processes.children:
                out.write("every process was already running: nothing to supervise (aurora-db down stops them)\n")
                return EXIT_OK
            out.write("running in the foreground; Ctrl-C stops the cluster\n")
            out.flush()
            supervise(layout, processes, out)
        except StopRequested:
            out.write("\nstopping the cluster\n")
    with stop_signals_ignored():
        stop_started(layout, processes, cluster_dir, out)
    return EXIT_OK


# ----------------------------------------------------------------------------------------------
# down, status and failover
# ----------------------------------------------------------------------------------------------

def require_layout(cluster_dir: Path) -> Layout:
    layout = load_layout(cluster_dir)
    if layout is None:
        raise ClusterError(f"no cluster in {cluster_dir} (no {LAYOUT_FILE}); start one with aurora-db up")
    return layout


def stop_cluster(cluster_dir: Path, out: TextIO, grace_s: float = STOP_GRACE_S) -> None:
    with cluster_lock(cluster_dir):
        layout = require_layout(cluster_dir)
        processes = Processes(cluster_dir)
        if not any(processes.is_alive(node) for node in layout.nodes + layout.retired):
            out.write("nothing was running\n")
        stop_in_order(layout, processes, out, grace_s=grace_s)
        for node in layout.nodes:
            node.pid = None
        layout.retired = []
        save_layout(cluster_dir, layout)


def run_down(args) -> int:
    try:
        stop_cluster(Path(args.data).resolve(), sys.stdout)
    except ClusterError as error:
        sys.stderr.write(f"aurora-db down: {error}\n")
        return EXIT_FAILURE
    return EXIT_OK


def cluster_status(cluster_dir: Path) -> list[dict]:
    """A status entry per node of the layout (and per still-running process of an earlier one)."""
    layout = require_layout(cluster_dir)
    processes = Processes(cluster_dir)
    running = [node for node in layout.nodes if processes.is_alive(node)]
    replies = ask_statuses(running)
    entries = [status_entry(node, node in running, replies.get(node.node_id)) for node in layout.nodes]
    for node in layout.retired:
        if processes.is_alive(node):
            entries.append({**status_entry(node, True, None), "role": "retired"})
    return entries


def run_status(args) -> int:
    cluster_dir = Path(args.data).resolve()
    try:
        layout = require_layout(cluster_dir)
        entries = cluster_status(cluster_dir)
    except ClusterError as error:
        sys.stderr.write(f"aurora-db status: {error}\n")
        return EXIT_FAILURE
    endpoints = endpoints_of(layout, entries)
    text = (json.dumps({"data": str(cluster_dir), "nodes": entries, "endpoints": endpoints}, indent=2) + "\n"
            if args.json else format_status(entries, endpoints))
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:  # `status | head`: the reader left, which is fine
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return EXIT_OK


def request_failover(cluster_dir: Path, target: str | None) -> dict:
    """Ask the proxy for a planned switchover; its reply once the switchover is done."""
    from proxy.server import SWITCHOVER_TIMEOUT_MS

    layout = require_layout(cluster_dir)
    proxy = layout.proxy
    if not Processes(cluster_dir).is_alive(proxy):
        raise ClusterError("the proxy is not running; start the cluster with aurora-db up")
    reply = request_frame(proxy.admin_port, {"id": 1, "t": "failover", "target": target},
                          SWITCHOVER_TIMEOUT_MS / 1000 + FAILOVER_REPLY_MARGIN_S)
    if reply is None:
        raise ClusterError(f"the proxy (admin port {proxy.admin_port}) did not answer")
    if not reply.get("ok"):
        raise ClusterError(f"failover not done: {reply.get('message') or reply.get('error')}")
    return reply


# ----------------------------------------------------------------------------------------------
# replace-storage: a dead storage node's place goes to a new one
# ----------------------------------------------------------------------------------------------

REPLACEMENT_PORT_OFFSETS = (10, 17, 18, 19)  # free ports of the cluster's range, for new storage nodes


def replacement_node(layout: Layout, old: Node, new_id: str | None) -> Node:
    """The new storage node: in the old one's AZ, on a free port of the cluster's range."""
    taken_ids = {node.node_id for node in layout.nodes}
    if new_id is None:
        new_id = next(f"{old.az}{n}" for n in itertools.count(1) if f"{old.az}{n}" not in taken_ids)
    if new_id in taken_ids or not new_id.replace("-", "").isalnum():
        raise ClusterError(f"{new_id!r} cannot name the new storage node: choose another --node-id")
    taken_ports = {port for node in layout.nodes for port in node_ports(node)}
    port = next((layout.port + offset for offset in REPLACEMENT_PORT_OFFSETS
                 if layout.port + offset not in taken_ports), None)
    if port is None:
        raise ClusterError("every port the cluster reserves for replacement storage nodes is taken")
    return Node(new_id, ROLE_STORAGE, old.az, port, None, f"storage-{new_id}", f"logs/{new_id}.log")


def replace_storage(cluster_dir: Path, old_id: str, new_id: str | None, out: TextIO,
                    ready_timeout_s: float = READY_TIMEOUT_S, program: Iterable[str] = DEFAULT_PROGRAM) -> dict:
    """Start a new storage node in a dead one's place and have the writer switch to it (see
    ComputeNode.replace_storage for why the switch is safe). The new node joins from the five
    others and copies their segments; the layout names it instead of the old one once the writer
    has switched, so every process started from then on uses the new set. The old node's data
    directory is left where it was."""
    with cluster_lock(cluster_dir):
        layout = require_layout(cluster_dir)
        old = next((node for node in layout.storage_nodes if node.node_id == old_id), None)
        if old is None:
            raise ClusterError(f"{old_id!r} is not a storage node of this cluster")
        processes = Processes(cluster_dir)
        if processes.is_alive(old):
            raise ClusterError(f"{old_id} is running: only a dead storage node is replaced (stop or kill it first)")
        replies = running_compute_replies(layout, processes)
        writer = next((node for node in layout.compute_nodes if (replies.get(node.node_id) or {}).get("role")
                       == ROLE_WRITER), None)
        if writer is None:
            raise ClusterError("no writer is running: start the cluster (aurora-db up) first")
        new = replacement_node(layout, old, new_id)
        _check_ports_free([new])
        planned = dataclasses.replace(layout, nodes=[node for node in layout.nodes if node is not old] + [new],
                                      retired=[])
        child = spawn(node_command(new, planned, cluster_dir, layout.cache_pages, program),
                      cluster_dir / new.log_file, cluster_dir)
        new.pid = child.pid
        processes.children[new.node_id] = child
        out.write(f"started {new.node_id} (pid {child.pid}, port {new.port}): it joins from its peers\n")
        out.flush()
        try:
            wait_until_ready([new], processes, f"{new.node_id} to answer", ready_timeout_s, out)
            reply = request_frame(writer.admin_port, {"id": 1, "t": "replace_storage", "old": old_id,
                                                      "new_id": new.node_id, "address": f"{LISTEN_HOST}:{new.port}"},
                                  REPLACE_STORAGE_TIMEOUT_MS / 1000 + FAILOVER_REPLY_MARGIN_S)
            if reply is None or not reply.get("ok"):
                raise ClusterError(f"the writer did not switch to {new.node_id}: "
                                   f"{(reply or {}).get('message', 'no answer')}")
        except (ClusterError, StartupFailed):
            processes.stop([new], out)
            raise
        save_layout(cluster_dir, planned)
    return reply


def run_replace_storage(args) -> int:
    cluster_dir = Path(args.data).resolve()
    try:
        reply = replace_storage(cluster_dir, args.old, args.node_id, sys.stdout)
    except ClusterError as error:
        sys.stderr.write(f"aurora-db replace-storage: {error}\n")
        return EXIT_FAILURE
    sys.stdout.write(f"storage node {reply['old']} -> {reply['new_id']}: the writer switched after "
                     f"{reply['duration_ms'] / 1000:.1f} s; the layout names {reply['new_id']} now\n")
    return EXIT_OK


def run_failover(args) -> int:
    try:
        reply = request_failover(Path(args.data).resolve(), args.target)
    except ClusterError as error:
        sys.stderr.write(f"aurora-db failover: {error}\n")
        return EXIT_FAILURE
    demoted = {True: "", False: f" ({reply.get('old_writer')} did not confirm its demotion)", None: ""}
    sys.stdout.write(f"writer {reply.get('old_writer') or 'none'} -> {reply.get('new_writer')} "
                     f"in {reply.get('duration_ms') or 0:.0f} ms{demoted.get(reply.get('demote_ok'), '')}\n")
    return EXIT_OK
