"""Commit latency: how far a one-row autocommit INSERT is from what this machine can physically do.

A commit in our cluster is acknowledged only once 4 of 6 storage nodes have appended its redo
batch and fsynced it (DESIGN.md 3), and every hop is a TCP connection on 127.0.0.1. So, on one
machine, one commit costs at least one small synced append plus two loopback round trips
(client -> writer, writer -> storage). This script measures, in one run:

1. the physical floor: fdatasync of a 4 KiB append (p50, p99) on the filesystem that holds the
   cluster's data, and a loopback TCP round trip between two processes (p50, p99);
2. our cluster, started in a temporary directory on free ports and stopped at the end even on
   error: one client's commit latency (p50, p99, mean) of a one-row INSERT through psycopg 3 in
   autocommit mode, after a warm-up; the inserts per second of 8 clients (8 threads, one
   connection each); and what one commit costs between writer and storage (bytes, requests and
   redo records per insert, from the deltas of the writer's admin status counters);
3. the same two workloads against a scratch PostgreSQL 15 (fsync=on, synchronous_commit=on, other
   settings default), and the ratios ours / PostgreSQL.
Both servers get the same table, the same statement text and the same client (psycopg 3 over TCP on
127.0.0.1), so the client's own cost is the same on both sides. Run it on an otherwise idle machine:
the clients, the cluster's processes (six storage nodes, the writer, and the proxy, idle but for its
health checks) and PostgreSQL all share its CPUs.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import itertools
import json
import math
import multiprocessing
import os
import platform
import pwd
import random
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

import psycopg

from aurora_db.cluster import LISTEN_HOST, PORT_SPAN, load_layout, port_is_free, request_frame

# The physical floor
FSYNC_WRITE_BYTES = 4096
FSYNC_SAMPLES_MAX = 1000
FSYNC_DURATION_MAX_S = 5.0
PING_MESSAGE_BYTES = 64
PING_SAMPLES = 5000

# The insert workloads (the same for both servers)
TABLE_DDL = "CREATE TABLE bench (id BIGINT PRIMARY KEY, payload TEXT NOT NULL)"
INSERT_SQL = "INSERT INTO bench (id, payload) VALUES (%s, %s)"
PAYLOAD = "x" * 32
WARMUP_INSERTS = 100
SINGLE_CLIENT_INSERTS = 1000
CONCURRENT_CLIENTS = 8
CONCURRENT_DURATION_DEFAULT_S = 10.0

# Servers under test
CLUSTER_PORT_LOWEST = 20000
CLUSTER_PORT_HIGHEST = 60000
CLUSTER_PORT_ATTEMPTS_MAX = 50
CLUSTER_UP_TIMEOUT_S = 150
CLUSTER_DOWN_TIMEOUT_S = 60
WRITER_COUNTERS = ("storage_bytes_sent", "storage_requests_sent", "records_made")  # admin "status" fields
POSTGRES_BINDIR_GLOB = "/usr/lib/postgresql/*/bin"
POSTGRES_SETTINGS = {"fsync": "on", "synchronous_commit": "on", "listen_addresses": LISTEN_HOST}
POSTGRES_UNPRIVILEGED_USERS = ("postgres", "nobody")  # initdb refuses to run as root
POSTGRES_START_TIMEOUT_S = 30
POSTGRES_STOP_TIMEOUT_S = 15
POLL_INTERVAL_S = 0.1
PROFILE_STOP_TIMEOUT_S = 30
PROC_STAT = Path("/proc/stat")

NS_PER_MS = 1_000_000
MS_PER_S = 1000
RANK_EPSILON = 1e-9
US_PER_MS = 1000
US_PER_S = 1_000_000


@dataclasses.dataclass
class Figure:
    key: str  # the JSON name, unit last
    label: str
    value: float
    unit: str


@dataclasses.dataclass
class Latency:
    p50_ms: float
    p99_ms: float
    mean_ms: float


@dataclasses.dataclass
class SingleClientResult:
    latency: Latency
    inserts: int


@dataclasses.dataclass
class ConcurrentResult:
    inserts: int
    duration_s: float
    latency: Latency
    machine_cpu_busy_percent: float  # all CPUs, every process: is the machine itself the bottleneck?
    client_cpu_busy_percent: float  # this process (the 8 psycopg clients), in % of one core

    @property
    def inserts_per_s(self) -> float:
        return self.inserts / self.duration_s


@dataclasses.dataclass
class ServerRun:
    single: SingleClientResult
    concurrent: ConcurrentResult


def log(message: str) -> None:
    """Progress goes to stderr, so that --json leaves stdout to the result alone."""
    sys.stderr.write(f"[commit_latency] {message}\n")
    sys.stderr.flush()


# ----------------------------------------------------------------------------------------------
# Statistics
# ----------------------------------------------------------------------------------------------

def percentile(sorted_samples: list[int], fraction: float) -> int:
    """Nearest rank: the smallest sample with at least `fraction` of all samples at or below it."""
    assert sorted_samples and 0 < fraction <= 1, (len(sorted_samples), fraction)
    rank = max(1, math.ceil(len(sorted_samples) * fraction - RANK_EPSILON))  # 1000 * 0.99 is 990, not 991
    return sorted_samples[rank - 1]


def summarize(samples_ns: list[int]) -> Latency:
    ordered = sorted(samples_ns)
    return Latency(p50_ms=percentile(ordered, 0.50) / NS_PER_MS, p99_ms=percentile(ordered, 0.99) / NS_PER_MS,
                   mean_ms=statistics.fmean(ordered) / NS_PER_MS)


# ----------------------------------------------------------------------------------------------
# The physical floor
# ----------------------------------------------------------------------------------------------

def measure_fdatasync(directory: Path) -> list[int]:
    """Append 4 KiB and fdatasync, like a log append: the file grows, so its size is synced too."""
    block = os.urandom(FSYNC_WRITE_BYTES)
    path = directory / "fdatasync.probe"
    samples = []
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        deadline = time.monotonic() + FSYNC_DURATION_MAX_S
        while len(samples) < FSYNC_SAMPLES_MAX and time.monotonic() < deadline:
            started = time.perf_counter_ns()
            os.write(fd, block)
            os.fdatasync(fd)
            samples.append(time.perf_counter_ns() - started)
    finally:
        os.close(fd)
        path.unlink()
    return samples


def _echo_server(listener: socket.socket) -> None:
    """The other process of the ping-pong: echo fixed-size messages until the peer closes."""
    connection, _ = listener.accept()
    connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    with connection:
        while message := _receive_exactly(connection, PING_MESSAGE_BYTES):
            connection.sendall(message)


def _receive_exactly(connection: socket.socket, length: int) -> bytes:
    """`length` bytes, or b"" if the peer closed first."""
    chunks, received = [], 0
    while received < length:
        chunk = connection.recv(length - received)
        if not chunk:
            return b""
        chunks.append(chunk)
        received += len(chunk)
    return b"".join(chunks)


def measure_loopback_round_trip() -> list[int]:
    """A 64-byte ping-pong over TCP on 127.0.0.1 with another process (TCP_NODELAY, as our nodes use)."""
    with socket.create_server((LISTEN_HOST, 0)) as listener:
        echo = multiprocessing.get_context("fork").Process(target=_echo_server, args=(listener,), daemon=True)
        echo.start()
        samples = []
        try:
            with socket.create_connection(listener.getsockname()) as connection:
                connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                message = b"p" * PING_MESSAGE_BYTES
                for _ in range(PING_SAMPLES):
                    started = time.perf_counter_ns()
                    connection.sendall(message)
                    assert _receive_exactly(connection, PING_MESSAGE_BYTES) == message
                    samples.append(time.perf_counter_ns() - started)
        finally:
            echo.join(timeout=5)
            if echo.is_alive():
                echo.kill()
    return samples


# ----------------------------------------------------------------------------------------------
# The insert workloads (server-agnostic: a URL in, timings out)
# ----------------------------------------------------------------------------------------------

def connect(url: str) -> psycopg.Connection:
    return psycopg.connect(url, autocommit=True)


def create_table(url: str) -> None:
    with connect(url) as connection:
        connection.execute(TABLE_DDL)


def insert_timed(connection: psycopg.Connection, row_id: int) -> int:
    """One autocommit INSERT; returns its latency in ns, from send to the server's CommandComplete."""
    started = time.perf_counter_ns()
    connection.execute(INSERT_SQL, (row_id, PAYLOAD))
    return time.perf_counter_ns() - started


def run_single_client(url: str, ids: Iterator[int]) -> SingleClientResult:
    """Warm up (connection, prepared statement, caches), then time SINGLE_CLIENT_INSERTS commits."""
    with connect(url) as connection:
        for _ in range(WARMUP_INSERTS):
            insert_timed(connection, next(ids))
        samples = [insert_timed(connection, next(ids)) for _ in range(SINGLE_CLIENT_INSERTS)]
    return SingleClientResult(summarize(samples), len(samples))


def _client_loop(url: str, ids: Iterator[int], start: threading.Barrier, duration_s: float) -> list[int]:
    with connect(url) as connection:
        insert_timed(connection, next(ids))  # connected and warm before the clock starts
        start.wait()
        deadline = time.monotonic() + duration_s
        samples = []
        while time.monotonic() < deadline:
            samples.append(insert_timed(connection, next(ids)))
    return samples


def run_concurrent_clients(url: str, ids: Iterator[int], clients: int, duration_s: float) -> ConcurrentResult:
    """`clients` threads, one connection each, inserting as fast as they can for `duration_s`."""
    start = threading.Barrier(clients + 1)
    with ThreadPoolExecutor(max_workers=clients) as pool:
        futures = [pool.submit(_client_loop, url, ids, start, duration_s) for _ in range(clients)]
        start.wait()
        started, machine_before, client_before_s = time.perf_counter(), machine_cpu_ticks(), own_cpu_s()
        per_client = [future.result() for future in futures]  # re-raises a client's error
        elapsed_s = time.perf_counter() - started
        machine_after, client_cpu_s = machine_cpu_ticks(), own_cpu_s() - client_before_s
    samples = [sample for client_samples in per_client for sample in client_samples]
    busy_ticks, total_ticks = (after - before for before, after in zip(machine_before, machine_after))
    return ConcurrentResult(len(samples), elapsed_s, summarize(samples), 100 * busy_ticks / total_ticks,
                            100 * client_cpu_s / elapsed_s)


# ----------------------------------------------------------------------------------------------
# CPU accounting (Linux /proc)
# ----------------------------------------------------------------------------------------------

def machine_cpu_ticks() -> tuple[int, int]:
    """(busy, total) clock ticks of all CPUs since boot, from the first line of /proc/stat."""
    user, nice, system, idle, iowait, irq, softirq, steal = map(int, PROC_STAT.read_text().split()[1:9])
    total = user + nice + system + idle + iowait + irq + softirq + steal
    return total - idle - iowait, total


def process_cpu_ticks(pid: int) -> tuple[int, int]:
    """(user, system) clock ticks a process has used so far (/proc/PID/stat, fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]), int(fields[12])


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds a process has used so far."""
    return sum(process_cpu_ticks(pid)) / os.sysconf("SC_CLK_TCK")


def own_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def processes_cpu_s(pids: list[int]) -> float:
    return sum(process_cpu_s(pid) for pid in pids)


# ----------------------------------------------------------------------------------------------
# Our cluster
# ----------------------------------------------------------------------------------------------

def cluster_ports(client_port: int) -> list[int]:
    return list(range(client_port, client_port + PORT_SPAN))


def choose_cluster_port() -> int:
    """A client port P such that every port of a cluster on P is free right now."""
    for _ in range(CLUSTER_PORT_ATTEMPTS_MAX):
        port = random.randint(CLUSTER_PORT_LOWEST, CLUSTER_PORT_HIGHEST)
        if all(port_is_free(candidate) for candidate in cluster_ports(port)):
            return port
    raise RuntimeError(f"no free port range found for a cluster in {CLUSTER_PORT_ATTEMPTS_MAX} attempts")


def aurora_db(*arguments: str, timeout_s: float) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "aurora_db.cli", *arguments], capture_output=True, text=True,
                          timeout=timeout_s, check=False)


@dataclasses.dataclass
class Cluster:
    url: str  # the writer's own port
    proxy_url: str  # the proxy's writer endpoint, where applications connect
    admin_port: int
    writer_pid: int
    storage_pids: list[int]


@contextlib.contextmanager
def aurora_cluster(base_dir: Path, cache_pages: int | None = None) -> Iterator[Cluster]:
    """`aurora-db up --readers 0 --detach` in base_dir/cluster, on free ports; always `aurora-db down`
    at the end. `url` is the writer compute node's own port, past the proxy: the figures measure
    the writer and storage, as a client beside the writer sees them. `proxy_url` is the proxy's
    writer endpoint."""
    data_dir = base_dir / "cluster"
    port = choose_cluster_port()
    try:
        cache = ["--cache-pages", str(cache_pages)] if cache_pages is not None else []
        started = aurora_db("up", "--data", str(data_dir), "--port", str(port), "--readers", "0", "--detach", *cache,
                            timeout_s=CLUSTER_UP_TIMEOUT_S)
        if started.returncode != 0:
            raise RuntimeError(f"aurora-db up failed ({started.returncode}):\n{started.stdout}{started.stderr}")
        layout = load_layout(data_dir)
        writer = layout.writer
        yield Cluster(f"postgresql://postgres@{LISTEN_HOST}:{writer.port}/postgres",
                      f"postgresql://postgres@{LISTEN_HOST}:{layout.port}/postgres", writer.admin_port,
                      writer.pid, [node.pid for node in layout.storage_nodes])
    finally:
        if (data_dir / "cluster.json").exists():
            stopped = aurora_db("down", "--data", str(data_dir), timeout_s=CLUSTER_DOWN_TIMEOUT_S)
            if stopped.returncode != 0:
                log(f"aurora-db down failed ({stopped.returncode}):\n{stopped.stdout}{stopped.stderr}")


def writer_status(admin_port: int) -> dict:
    reply = request_frame(admin_port, {"id": 1, "t": "status"})
    if reply is None or not reply.get("ok"):
        raise RuntimeError(f"the writer's admin port {admin_port} did not answer status: {reply!r}")
    return reply


def counter_deltas(before: dict, after: dict) -> dict[str, int]:
    return {name: after[name] - before[name] for name in WRITER_COUNTERS}


@contextlib.contextmanager
def writer_profile(output: Path | None, writer_pid: int, duration_s: float) -> Iterator[None]:
    """If asked, `py-spy record` the writer (raw collapsed stacks) for the body's duration."""
    if output is None:
        yield
        return
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    recorder = subprocess.Popen([py_spy, "record", "-o", str(output), "--format", "raw", "-p", str(writer_pid),
                                 "-d", str(max(1, int(duration_s)))], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
    try:
        yield
    finally:
        try:
            recorder.wait(timeout=PROFILE_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            recorder.send_signal(signal.SIGINT)  # py-spy writes what it has on SIGINT
            recorder.wait()
        log(f"writer profile written to {output} (py-spy exit code {recorder.returncode})")


# ----------------------------------------------------------------------------------------------
# A scratch PostgreSQL
# ----------------------------------------------------------------------------------------------

def postgres_bindir() -> Path:
    for candidate in sorted(Path("/").glob(POSTGRES_BINDIR_GLOB.lstrip("/")), reverse=True):
        if (candidate / "initdb").exists() and (candidate / "postgres").exists():
            return candidate
    raise FileNotFoundError(f"PostgreSQL binaries not found in {POSTGRES_BINDIR_GLOB}")


def postgres_account() -> pwd.struct_passwd | None:
    """None if we are not root (run as ourselves); else the first unprivileged user that exists."""
    if os.geteuid() != 0:
        return None
    for name in POSTGRES_UNPRIVILEGED_USERS:
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise RuntimeError(f"running as root and none of {POSTGRES_UNPRIVILEGED_USERS} exists to run PostgreSQL")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((LISTEN_HOST, 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def scratch_postgres(base_dir: Path) -> Iterator[str]:
    """initdb + postgres in base_dir/postgres with durable commits; yields its URL; always stopped."""
    bindir, account = postgres_bindir(), postgres_account()
    home = base_dir / "postgres"
    socket_dir = home / "socket"
    socket_dir.mkdir(parents=True)
    run_as = {} if account is None else {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}
    if account is not None:
        os.chmod(base_dir, 0o711)  # mkdtemp made it 0700: the server's user must reach its home inside
        for path in (home, socket_dir):
            os.chown(path, account.pw_uid, account.pw_gid)
    environment = {**os.environ, "LC_ALL": "C", "LANG": "C"}
    subprocess.run([str(bindir / "initdb"), "-D", str(home / "data"), "--auth=trust", "-U", "postgres",
                    "--encoding=UTF8", "--locale=C", "--no-sync"],  # --no-sync: initdb only; the server syncs
                   cwd=home, env=environment, capture_output=True, check=True, **run_as)
    port = free_port()
    settings = [argument for name, value in POSTGRES_SETTINGS.items() for argument in ("-c", f"{name}={value}")]
    with open(home / "postgres.log", "ab") as server_log:
        server = subprocess.Popen([str(bindir / "postgres"), "-D", str(home / "data"), "-p", str(port),
                                   "-k", str(socket_dir), *settings],
                                  cwd=home, env=environment, stdout=server_log, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL, start_new_session=True, **run_as)
    url = f"postgresql://postgres@{LISTEN_HOST}:{port}/postgres"
    try:
        wait_until_accepting(url, server, home / "postgres.log")
        yield url
    finally:
        stop_postgres(server)


def wait_until_accepting(url: str, server: subprocess.Popen, server_log: Path) -> None:
    deadline = time.monotonic() + POSTGRES_START_TIMEOUT_S
    while True:
        if server.poll() is not None:
            raise RuntimeError(f"postgres exited with code {server.returncode}:\n{server_log.read_text()}")
        try:
            with connect(url) as connection:
                connection.execute("SELECT 1")
            return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"postgres did not accept connections in {POSTGRES_START_TIMEOUT_S} s") from None
            time.sleep(POLL_INTERVAL_S)


def stop_postgres(server: subprocess.Popen) -> None:
    if server.poll() is None:
        server.send_signal(signal.SIGINT)  # fast shutdown
        try:
            server.wait(timeout=POSTGRES_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def postgres_settings(url: str) -> dict[str, str]:
    """What the server says it runs with, so the report shows durability was really on."""
    with connect(url) as connection:
        rows = connection.execute("SELECT name, setting FROM pg_settings WHERE name = ANY(%s)",
                                  (["fsync", "synchronous_commit", "wal_sync_method", "server_version"],)).fetchall()
    return dict(rows)


# ----------------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------------

def measure_floor(base_dir: Path) -> list[Figure]:
    log("physical floor: fdatasync of 4 KiB appends, loopback TCP ping-pong")
    fsync = summarize(measure_fdatasync(base_dir))
    ping = summarize(measure_loopback_round_trip())
    return [
        Figure("fdatasync_p50_ms", "fdatasync of a 4 KiB append, p50", fsync.p50_ms, "ms"),
        Figure("fdatasync_p99_ms", "fdatasync of a 4 KiB append, p99", fsync.p99_ms, "ms"),
        Figure("loopback_rtt_p50_us", "loopback TCP round trip (64 B, 2 processes), p50",
               ping.p50_ms * US_PER_MS, "us"),
        Figure("loopback_rtt_p99_us", "loopback TCP round trip (64 B, 2 processes), p99",
               ping.p99_ms * US_PER_MS, "us"),
        Figure("commit_floor_ms", "floor for our commit: fdatasync p50 + 2 loopback RTT p50",
               fsync.p50_ms + 2 * ping.p50_ms, "ms"),
    ]


def measure_ours(base_dir: Path, duration_s: float, profile: Path | None) -> tuple[ServerRun, list[Figure]]:
    log("our cluster: starting (aurora-db up --detach)")
    with aurora_cluster(base_dir) as cluster:
        create_table(cluster.url)
        ids = itertools.count(1)
        log(f"our cluster: single client, {WARMUP_INSERTS} warm-up + {SINGLE_CLIENT_INSERTS} inserts")
        before = writer_status(cluster.admin_port)
        single = run_single_client(cluster.url, ids)
        middle = writer_status(cluster.admin_port)
        log(f"our cluster: {CONCURRENT_CLIENTS} clients for {duration_s:g} s")
        writer_cpu_before_s = process_cpu_s(cluster.writer_pid)
        storage_cpu_before_s = processes_cpu_s(cluster.storage_pids)
        with writer_profile(profile, cluster.writer_pid, duration_s):
            concurrent = run_concurrent_clients(cluster.url, ids, CONCURRENT_CLIENTS, duration_s)
        writer_cpu_s = process_cpu_s(cluster.writer_pid) - writer_cpu_before_s
        storage_cpu_s = processes_cpu_s(cluster.storage_pids) - storage_cpu_before_s
        after = writer_status(cluster.admin_port)
    log("our cluster: stopped")
    single_inserts = WARMUP_INSERTS + single.inserts  # the counters also saw the warm-up
    per_single = {name: delta / single_inserts for name, delta in counter_deltas(before, middle).items()}
    concurrent_inserts = concurrent.inserts + CONCURRENT_CLIENTS  # and each client's one warm-up insert
    per_concurrent = {name: delta / concurrent_inserts for name, delta in counter_deltas(middle, after).items()}
    figures = [
        Figure("storage_bytes_per_insert", "writer->storage bytes per insert (1 client)",
               per_single["storage_bytes_sent"], "B"),
        Figure("storage_requests_per_insert", "writer->storage requests per insert (1 client)",
               per_single["storage_requests_sent"], "requests"),
        Figure("redo_records_per_insert", "redo records per insert (1 client)", per_single["records_made"],
               "records"),
        Figure("storage_bytes_per_insert_8_clients",
               f"writer->storage bytes per insert ({CONCURRENT_CLIENTS} clients)",
               per_concurrent["storage_bytes_sent"], "B"),
        Figure("storage_requests_per_insert_8_clients",
               f"writer->storage requests per insert ({CONCURRENT_CLIENTS} clients)",
               per_concurrent["storage_requests_sent"], "requests"),
        Figure("writer_cpu_busy_percent_8_clients", f"writer process CPU busy ({CONCURRENT_CLIENTS} clients)",
               100 * writer_cpu_s / concurrent.duration_s, "% of one core"),
        Figure("storage_cpu_busy_percent_8_clients",
               f"6 storage nodes' CPU busy, summed ({CONCURRENT_CLIENTS} clients)",
               100 * storage_cpu_s / concurrent.duration_s, "% of one core"),
        Figure("writer_cpu_per_insert_us_8_clients", f"writer CPU per insert ({CONCURRENT_CLIENTS} clients)",
               writer_cpu_s / concurrent_inserts * US_PER_S, "us"),
    ]
    return ServerRun(single, concurrent), figures


def measure_postgres(base_dir: Path, duration_s: float) -> ServerRun:
    log("PostgreSQL: initdb and start (fsync=on, synchronous_commit=on)")
    with scratch_postgres(base_dir) as url:
        settings = postgres_settings(url)
        assert settings["fsync"] == "on" and settings["synchronous_commit"] == "on", settings
        create_table(url)
        ids = itertools.count(1)
        log(f"PostgreSQL {settings['server_version']}: single client, then {CONCURRENT_CLIENTS} clients")
        single = run_single_client(url, ids)
        concurrent = run_concurrent_clients(url, ids, CONCURRENT_CLIENTS, duration_s)
    log("PostgreSQL: stopped")
    return ServerRun(single, concurrent)


def workload_figures(prefix: str, name: str, run: ServerRun) -> list[Figure]:
    single, concurrent = run.single.latency, run.concurrent
    single_rate = MS_PER_S / single.mean_ms
    return [
        Figure(f"{prefix}_commit_p50_ms", f"{name}: 1-client commit latency, p50", single.p50_ms, "ms"),
        Figure(f"{prefix}_commit_p99_ms", f"{name}: 1-client commit latency, p99", single.p99_ms, "ms"),
        Figure(f"{prefix}_commit_mean_ms", f"{name}: 1-client commit latency, mean", single.mean_ms, "ms"),
        Figure(f"{prefix}_inserts_per_s_1_client", f"{name}: 1-client inserts per second (1000 / mean)",
               single_rate, "inserts/s"),
        Figure(f"{prefix}_inserts_per_s_8_clients", f"{name}: {CONCURRENT_CLIENTS}-client inserts per second",
               concurrent.inserts_per_s, "inserts/s"),
        Figure(f"{prefix}_commit_p50_ms_8_clients", f"{name}: {CONCURRENT_CLIENTS}-client commit latency, p50",
               concurrent.latency.p50_ms, "ms"),
        Figure(f"{prefix}_commit_p99_ms_8_clients", f"{name}: {CONCURRENT_CLIENTS}-client commit latency, p99",
               concurrent.latency.p99_ms, "ms"),
        Figure(f"{prefix}_speedup_8_clients", f"{name}: {CONCURRENT_CLIENTS}-client / 1-client inserts per second",
               concurrent.inserts_per_s / single_rate, "x"),
        Figure(f"{prefix}_machine_cpu_busy_percent_8_clients",
               f"{name}: whole machine CPU busy ({CONCURRENT_CLIENTS} clients)",
               concurrent.machine_cpu_busy_percent, f"% of {os.cpu_count()} CPUs"),
        Figure(f"{prefix}_client_cpu_busy_percent_8_clients",
               f"{name}: benchmark client process CPU busy ({CONCURRENT_CLIENTS} clients)",
               concurrent.client_cpu_busy_percent, "% of one core"),
    ]


def ratio_figures(ours: ServerRun, postgres: ServerRun) -> list[Figure]:
    return [
        Figure("ratio_commit_p50", "ours / PostgreSQL: 1-client commit latency p50",
               ours.single.latency.p50_ms / postgres.single.latency.p50_ms, "x"),
        Figure("ratio_commit_p99", "ours / PostgreSQL: 1-client commit latency p99",
               ours.single.latency.p99_ms / postgres.single.latency.p99_ms, "x"),
        Figure("ratio_commit_mean", "ours / PostgreSQL: 1-client commit latency mean",
               ours.single.latency.mean_ms / postgres.single.latency.mean_ms, "x"),
        Figure("ratio_inserts_per_s_8_clients", f"ours / PostgreSQL: {CONCURRENT_CLIENTS}-client inserts per second",
               ours.concurrent.inserts_per_s / postgres.concurrent.inserts_per_s, "x"),
    ]


def run_benchmark(duration_s: float, parent_dir: str | None, profile: Path | None) -> list[Figure]:
    base_dir = Path(tempfile.mkdtemp(prefix="aurora-db-bench-", dir=parent_dir))
    try:
        figures = measure_floor(base_dir)
        ours, ours_figures = measure_ours(base_dir, duration_s, profile)
        postgres = measure_postgres(base_dir, duration_s)
    finally:
        shutil.rmtree(base_dir, ignore_errors=True)
    return (figures + workload_figures("ours", "ours", ours) + ours_figures
            + workload_figures("postgres", "PostgreSQL", postgres) + ratio_figures(ours, postgres))


def format_value(value: float) -> str:
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:#.3g}" if abs(value) < 1 else f"{value:.2f}"


def format_table(figures: list[Figure]) -> str:
    rows = [("figure", "value", "unit")] + [(figure.label, format_value(figure.value), figure.unit)
                                            for figure in figures]
    widths = [max(len(row[column]) for row in rows) for column in range(3)]
    lines = [f"{label:<{widths[0]}}  {value:>{widths[1]}}  {unit}" for label, value, unit in rows]
    lines.insert(1, "-" * (sum(widths) + 4))
    return "\n".join(lines)


def machine_description(duration_s: float, load_average: float) -> dict:
    return {"cpus": os.cpu_count(), "load_average_1_min_at_start": load_average,
            "python": platform.python_version(), "platform": platform.platform(),
            "concurrent_clients": CONCURRENT_CLIENTS, "concurrent_duration_s": duration_s,
            "single_client_inserts": SINGLE_CLIENT_INSERTS, "warmup_inserts": WARMUP_INSERTS}


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.commit_latency",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=CONCURRENT_DURATION_DEFAULT_S,
                        help=f"duration of each {CONCURRENT_CLIENTS}-client run (default %(default)g)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    parser.add_argument("--dir", default=None,
                        help="where to make the temporary directory (its filesystem is the one measured)")
    parser.add_argument("--profile-writer", type=Path, default=None, metavar="FILE",
                        help="py-spy record the writer during the 8-client run (raw collapsed stacks)")
    arguments = parser.parse_args(argv)
    if arguments.seconds <= 0:
        parser.error("--seconds must be positive")
    return arguments


def main(argv: list[str] | None = None) -> int:
    arguments = parse_arguments(argv)
    load_average = os.getloadavg()[0]  # other work on the machine skews every figure: show it
    figures = run_benchmark(arguments.seconds, arguments.dir, arguments.profile_writer)
    if arguments.json:
        document = {"machine": machine_description(arguments.seconds, load_average),
                    "figures": {figure.key: figure.value for figure in figures},
                    "units": {figure.key: figure.unit for figure in figures}}
        print(json.dumps(document, indent=2))
    else:
        print(f"{os.cpu_count()} CPUs, load average {load_average:.2f} at start; "
              f"{CONCURRENT_CLIENTS}-client runs of {arguments.seconds:g} s\n")
        print(format_table(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
