"""`aurora-db up | down | status`: a local cluster of six storage nodes and a writer on 127.0.0.1.

Responsibilities: the layout (ports, directories, commands; pure functions, unit-tested), kept with
every pid in DIR/cluster.json; starting the nodes (storage first, each until it answers the storage
"status" request, then the writer until it answers SELECT 1); stopping them (writer first); and
reporting each one's state, epoch and SCLs or VDL.
Invariants: a pid counts as a running node only if /proc/PID/cmdline names that node's id and data
directory, so a recycled pid is never signalled; cluster.json is replaced atomically after every
spawn and stop, so `down` finds whatever `up` started even if `up` died; children run in their own
session, so a terminal's Ctrl-C reaches only `up`, which stops them in order; ports never change
once a cluster exists.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterable, TextIO

from aurora_db.framing import FrameDecoder, FrameError, encode_frame
from aurora_db.storage_protocol import STATUS

LISTEN_HOST = "127.0.0.1"
CLIENT_PORT_DEFAULT = 5432
STORAGE_NODES = (("a1", "a"), ("a2", "a"), ("b1", "b"), ("b2", "b"), ("c1", "c"), ("c2", "c"))
STORAGE_PORT_OFFSET = 11  # a1 listens on P+11, ..., c2 on P+16
RESERVED_PORT_OFFSETS = range(1, 10)  # P+1..P+9: the proxy and readers (a later issue)
WRITER_ADMIN_PORT_OFFSET = 20
WRITER_NODE_ID = "writer"
WRITER_AZ = "a"
PORT_MIN = 1
PORT_MAX = 65535
assert STORAGE_PORT_OFFSET > RESERVED_PORT_OFFSETS[-1]
assert STORAGE_PORT_OFFSET + len(STORAGE_NODES) <= WRITER_ADMIN_PORT_OFFSET

ROLE_STORAGE = "storage"
ROLE_WRITER = "writer"
STATE_RUNNING = "running"
STATE_STOPPED = "stopped"

LAYOUT_FILE = "cluster.json"
LAYOUT_VERSION = 1
LOCK_FILE = ".cluster.lock"
LOGS_DIR = "logs"
DEFAULT_PROGRAM = (sys.executable, "-m", "aurora_db.cli")

READY_TIMEOUT_S = 60  # per phase: the storage nodes, then the writer (which runs recovery first)
STOP_GRACE_S = 10  # SIGTERM, then this long, then SIGKILL
KILL_WAIT_S = 5
POLL_INTERVAL_S = 0.2
PROGRESS_INTERVAL_S = 5
STATUS_REQUEST_TIMEOUT_S = 2
SQL_CONNECT_TIMEOUT_S = 2
LOG_TAIL_LINES = 30
STATUS_PGS_SHOWN_MAX = 4

EXIT_OK = 0
EXIT_FAILURE = 1


class ClusterError(Exception):
    """An expected failure of up/down/status; the message tells the user what to do."""


class StopRequested(Exception):
    """SIGINT or SIGTERM reached `up`."""


# ----------------------------------------------------------------------------------------------
# Layout (pure)
# ----------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Node:
    """One process of the cluster. data_dir and log_file are relative to the cluster directory."""

    node_id: str
    role: str
    az: str
    port: int
    admin_port: int | None
    data_dir: str
    log_file: str
    pid: int | None = None


@dataclasses.dataclass
class Layout:
    port: int  # the writer's client port: the cluster's name on this machine
    nodes: list[Node]

    def node(self, node_id: str) -> Node:
        return next(node for node in self.nodes if node.node_id == node_id)

    @property
    def storage_nodes(self) -> list[Node]:
        return [node for node in self.nodes if node.role == ROLE_STORAGE]

    @property
    def writer(self) -> Node:
        return next(node for node in self.nodes if node.role == ROLE_WRITER)

    def start_order(self) -> list[Node]:
        return self.storage_nodes + [self.writer]

    def stop_groups(self) -> list[list[Node]]:
        """Writer first, so it never sees its storage vanish under it; then all storage nodes."""
        return [[self.writer], self.storage_nodes]


def plan_layout(client_port: int) -> Layout:
    highest = client_port + WRITER_ADMIN_PORT_OFFSET
    if client_port < PORT_MIN or highest > PORT_MAX:
        raise ClusterError(f"--port {client_port} leaves no room: the cluster uses ports {client_port} to "
                           f"{highest}, which must lie within {PORT_MIN}..{PORT_MAX}")
    nodes = [Node(node_id, ROLE_STORAGE, az, client_port + STORAGE_PORT_OFFSET + index, None,
                  f"storage-{node_id}", f"{LOGS_DIR}/{node_id}.log")
             for index, (node_id, az) in enumerate(STORAGE_NODES)]
    nodes.append(Node(WRITER_NODE_ID, ROLE_WRITER, WRITER_AZ, client_port, client_port + WRITER_ADMIN_PORT_OFFSET,
                      WRITER_NODE_ID, f"{LOGS_DIR}/{WRITER_NODE_ID}.log"))
    return Layout(client_port, nodes)


def layout_to_json(layout: Layout) -> dict:
    return {"version": LAYOUT_VERSION, "host": LISTEN_HOST, "port": layout.port,
            "nodes": [dataclasses.asdict(node) for node in layout.nodes]}


def layout_from_json(document: dict) -> Layout:
    if document.get("version") != LAYOUT_VERSION:
        raise ClusterError(f"{LAYOUT_FILE} has version {document.get('version')!r}; this aurora-db reads "
                           f"version {LAYOUT_VERSION}")
    try:
        return Layout(int(document["port"]), [Node(**node) for node in document["nodes"]])
    except (KeyError, TypeError) as error:
        raise ClusterError(f"{LAYOUT_FILE} is malformed: {error}") from None


def choose_port(requested: int | None, existing: Layout | None) -> int:
    """A new cluster takes --port (default 5432); an existing one keeps its ports."""
    if existing is None:
        return CLIENT_PORT_DEFAULT if requested is None else requested
    if requested is not None and requested != existing.port:
        raise ClusterError(f"this cluster was created with --port {existing.port}; omit --port or pass "
                           f"--port {existing.port}")
    return existing.port


def node_ports(node: Node) -> list[int]:
    return [node.port] + ([node.admin_port] if node.admin_port is not None else [])


def node_command(node: Node, layout: Layout, cluster_dir: Path, cache_pages: int,
                 program: Iterable[str] = DEFAULT_PROGRAM) -> list[str]:
    data_dir = str(cluster_dir / node.data_dir)
    if node.role == ROLE_STORAGE:
        return [*program, "storage-node", "--node-id", node.node_id, "--az", node.az,
                "--listen", f"{LISTEN_HOST}:{node.port}", "--data", data_dir]
    command = [*program, "compute-node", "--role", "writer", "--node-id", node.node_id,
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


def status_entry(node: Node, running: bool, reply: dict | None) -> dict:
    """One line of `status`: the layout's facts, plus the node's own numbers if it answered."""
    entry = {"node_id": node.node_id, "role": node.role, "az": node.az, "pid": node.pid if running else None,
             "port": node.port, "admin_port": node.admin_port,
             "state": STATE_RUNNING if running else STATE_STOPPED, "epoch": None}
    entry["scl" if node.role == ROLE_STORAGE else "vdl"] = None
    if reply is not None and reply.get("ok"):
        entry["epoch"] = reply.get("epoch")
        if node.role == ROLE_STORAGE:
            entry["scl"] = {str(pg): scl for pg, scl in sorted((reply.get("pgs") or {}).items())}
        else:
            entry["vdl"] = reply.get("vdl")
    return entry


def _progress_text(entry: dict) -> str:
    if entry.get("vdl") is not None:
        return f"vdl {entry['vdl']}"
    scl = entry.get("scl")
    if not scl:
        return ""
    shown = [f"{pg}:{value}" for pg, value in list(scl.items())[:STATUS_PGS_SHOWN_MAX]]
    more = len(scl) - STATUS_PGS_SHOWN_MAX
    return "scl " + " ".join(shown) + (f" (+{more} PGs)" if more > 0 else "")


def format_status(entries: list[dict]) -> str:
    from aurora_db.shell import format_table

    headers = ["node", "role", "az", "pid", "port", "state", "epoch", "progress"]
    rows = [[entry["node_id"], entry["role"], entry["az"], _text(entry["pid"]), str(entry["port"]),
             entry["state"], _text(entry["epoch"]), _progress_text(entry)] for entry in entries]
    return format_table(headers, rows, [False, False, False, True, True, False, True, False])


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


def ask_status(node: Node) -> dict | None:
    """The storage "status" request on a storage node's port; the admin "status" on the writer's."""
    port = node.port if node.role == ROLE_STORAGE else node.admin_port
    reply = request_frame(port, status_request())
    return reply if reply is not None and reply.get("ok") else None


def writer_answers_sql(port: int) -> bool:
    import psycopg

    try:
        with psycopg.connect(host=LISTEN_HOST, port=port, user="postgres", dbname="postgres", autocommit=True,
                             connect_timeout=SQL_CONNECT_TIMEOUT_S) as connection:
            connection.execute("SELECT 1").fetchall()
        return True
    except psycopg.Error:
        return False


def node_is_ready(node: Node) -> bool:
    if node.role == ROLE_STORAGE:
        return ask_status(node) is not None
    return writer_answers_sql(node.port)


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


def start_cluster(cluster_dir: Path, requested_port: int | None, cache_pages: int, out: TextIO,
                  ready_timeout_s: float = READY_TIMEOUT_S, program: Iterable[str] = DEFAULT_PROGRAM
                  ) -> tuple[Layout, Processes]:
    """Start whatever of the cluster is not running and wait until all of it is ready.

    Returns the layout and the children started here. On failure the children started here are
    stopped again and ClusterError says why (with the failing node's log tail)."""
    cluster_dir.mkdir(parents=True, exist_ok=True)
    with cluster_lock(cluster_dir):
        existing = load_layout(cluster_dir)
        port = choose_port(requested_port, existing)
        layout = existing or plan_layout(port)
        processes = Processes(cluster_dir)
        running = {node.node_id for node in layout.nodes if processes.is_alive(node)}
        to_start = nodes_to_start(layout, running)
        _check_ports_free(to_start)
        for node in to_start:
            node.pid = None
        save_layout(cluster_dir, layout)
        if running:
            out.write(f"already running: {' '.join(sorted(running))}\n")
        try:
            _start_phase([node for node in to_start if node.role == ROLE_STORAGE], layout, processes,
                         cluster_dir, cache_pages, program, "storage nodes", ready_timeout_s, out,
                         wait_for=layout.storage_nodes)
            _start_phase([node for node in to_start if node.role == ROLE_WRITER], layout, processes,
                         cluster_dir, cache_pages, program, "the writer (recovery runs first)", ready_timeout_s,
                         out, wait_for=[layout.writer])
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
    out.write(f"waiting for {what} (up to {ready_timeout_s:g} s)\n")
    out.flush()
    wait_until_ready(wait_for, processes, what, ready_timeout_s, out)


def stop_started(layout: Layout, processes: Processes, cluster_dir: Path, out: TextIO) -> None:
    """Stop the children this `up` started, writer first, and forget their pids."""
    for group in layout.stop_groups():
        processes.stop([node for node in group if node.node_id in processes.children], out)
    for node in layout.nodes:
        if node.node_id in processes.children:
            node.pid = None
    save_layout(cluster_dir, layout)


def print_endpoints(layout: Layout, cluster_dir: Path, out: TextIO) -> None:
    url = writer_url(layout.port)
    out.write(f"\ncluster ready\n"
              f"  writer endpoint  {url}\n"
              f"  connect with     aurora-db sql {url}\n"
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
            layout, processes = start_cluster(cluster_dir, args.port, args.cache_pages, out, ready_timeout_s)
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
# down and status
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
        if not any(processes.is_alive(node) for node in layout.nodes):
            out.write("nothing was running\n")
        for group in layout.stop_groups():
            processes.stop(group, out, grace_s)
        for node in layout.nodes:
            node.pid = None
        save_layout(cluster_dir, layout)


def run_down(args) -> int:
    try:
        stop_cluster(Path(args.data).resolve(), sys.stdout)
    except ClusterError as error:
        sys.stderr.write(f"aurora-db down: {error}\n")
        return EXIT_FAILURE
    return EXIT_OK


def cluster_status(cluster_dir: Path) -> list[dict]:
    layout = require_layout(cluster_dir)
    processes = Processes(cluster_dir)
    entries = []
    for node in layout.nodes:
        running = processes.is_alive(node)
        entries.append(status_entry(node, running, ask_status(node) if running else None))
    return entries


def run_status(args) -> int:
    cluster_dir = Path(args.data).resolve()
    try:
        entries = cluster_status(cluster_dir)
    except ClusterError as error:
        sys.stderr.write(f"aurora-db status: {error}\n")
        return EXIT_FAILURE
    text = (json.dumps({"data": str(cluster_dir), "nodes": entries}, indent=2) + "\n" if args.json
            else format_status(entries))
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:  # `status | head`: the reader left, which is fine
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return EXIT_OK
