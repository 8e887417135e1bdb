"""A real local cluster driven from Python, for fault tests, benchmarks and `aurora-db torture`: six
storage nodes, a writer, `readers` readers (none unless asked) and the proxy, started and stopped
with the real `aurora-db up | down | status` commands, and killed with real signals. Clients
connect through the proxy's writer endpoint, P.

Invariants: every cluster gets a range of ports that was free when it was created; `close()` always
runs `down` and then SIGKILLs any process of this cluster that is still alive (found by pid and
checked by its /proc cmdline, so a recycled pid is never signalled); waits poll a condition until a
generous deadline, never a fixed sleep, so a slow machine makes a test slower, not red.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path
from typing import Callable, TypeVar

import psycopg

from aurora_db.cluster import (DEFAULT_PROGRAM, LISTEN_HOST, PORT_SPAN, load_layout, node_is_running, port_is_free, reader_url,
                               read_proc_cmdline, request_frame)

PORT_RANGE_TRIES_MAX = 200
PORT_RANGE_LOW = 10_000  # cluster ports are chosen from here up to the ephemeral ports
EPHEMERAL_PORTS_LOW_DEFAULT = 32_768  # Linux's default, where /proc does not say
READY_TIMEOUT_S = 120  # per phase of `up`: storage nodes, the writer (recovery first), readers, proxy
COMMAND_TIMEOUT_S = 600  # `up` has four phases of READY_TIMEOUT_S plus stopping a failed start
STOP_TIMEOUT_S = 60
CONDITION_TIMEOUT_S = 90  # how long a test waits for a condition it expects to become true
POLL_INTERVAL_S = 0.1
CONNECT_TIMEOUT_S = 10
STORAGE_NODE_IDS = ("a1", "a2", "b1", "b2", "c1", "c2")
WRITER = "db1"  # the compute node `up` starts as the writer (its data directory has the same name)
PROXY = "proxy"

T = TypeVar("T")


class ClusterCommandFailed(Exception):
    """`aurora-db up/down/status` exited non-zero."""


def free_port_range() -> int:
    """A base port P such that P .. P+PORT_SPAN-1 are all free now, below the kernel's ephemeral
    ports: an outgoing connection (a client, a storage link) never takes one of them between this
    check and the cluster's bind."""
    for _ in range(PORT_RANGE_TRIES_MAX):
        base = random.randrange(PORT_RANGE_LOW, _ephemeral_ports_low() - PORT_SPAN)
        if all(port_is_free(base + offset) for offset in range(PORT_SPAN)):
            return base
    raise RuntimeError("no free range of ports found")


def _ephemeral_ports_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return EPHEMERAL_PORTS_LOW_DEFAULT


def wait_until(condition: Callable[[], T], what: str, timeout_s: float = CONDITION_TIMEOUT_S) -> T:
    """Poll `condition` until it returns something truthy; fail naming `what` after the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(POLL_INTERVAL_S)


class LiveCluster:
    """One cluster directory, its ports, and the environment its processes start with."""

    def __init__(self, directory: Path, *, cache_pages: int | None = None, env: dict[str, str] | None = None,
                 readers: int = 0, port: int | None = None):
        self.directory = Path(directory).resolve()
        self.port = port or free_port_range()
        self.cache_pages = cache_pages
        self.readers = readers
        self.env = {**os.environ, **(env or {})}
        self._pids_seen: set[int] = set()

    @classmethod
    def existing(cls, directory: Path) -> "LiveCluster":
        """A cluster an earlier `aurora-db up --data DIRECTORY` made: its own port and reader count."""
        layout = load_layout(Path(directory).resolve())
        if layout is None:
            raise ClusterCommandFailed(f"no cluster in {directory} (start one with aurora-db up --data {directory})")
        return cls(directory, readers=len(layout.readers), port=layout.port)

    # --- the real CLI -------------------------------------------------------------------------

    def _run(self, *arguments: str, timeout_s: float = COMMAND_TIMEOUT_S) -> subprocess.CompletedProcess:
        return subprocess.run([*DEFAULT_PROGRAM, *arguments], capture_output=True, text=True, timeout=timeout_s,
                              env=self.env)

    def up(self) -> str:
        """`aurora-db up --detach`: starts whatever is not running and waits until all of it is ready."""
        arguments = ["up", "--data", str(self.directory), "--port", str(self.port), "--readers", str(self.readers),
                     "--detach", "--ready-timeout", str(READY_TIMEOUT_S)]
        if self.cache_pages is not None:
            arguments += ["--cache-pages", str(self.cache_pages)]
        done = self._run(*arguments)
        self._remember_pids()
        if done.returncode != 0:
            raise ClusterCommandFailed(f"aurora-db up exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
        return done.stdout

    restart = up  # `up` again starts exactly what is not running

    def down(self) -> None:
        self._remember_pids()
        done = self._run("down", "--data", str(self.directory))
        if done.returncode != 0:
            raise ClusterCommandFailed(f"aurora-db down exited {done.returncode}:\n{done.stdout}\n{done.stderr}")

    def status_document(self) -> dict:
        """`aurora-db status --json`: {"data", "nodes": [...], "endpoints": {...}}."""
        done = self._run("status", "--data", str(self.directory), "--json")
        if done.returncode != 0:
            raise ClusterCommandFailed(f"aurora-db status exited {done.returncode}:\n{done.stderr}")
        return json.loads(done.stdout)

    def status(self) -> dict[str, dict]:
        """`aurora-db status --json`, by node id."""
        return {entry["node_id"]: entry for entry in self.status_document()["nodes"]}

    def failover(self, target: str | None = None) -> subprocess.CompletedProcess:
        """`aurora-db failover` (a planned switchover); the caller checks the exit code."""
        return self._run("failover", "--data", str(self.directory), *(["--target", target] if target else []))

    def replace_storage(self, old: str, new_id: str | None = None) -> subprocess.CompletedProcess:
        """`aurora-db replace-storage OLD`; the caller checks the exit code."""
        done = self._run("replace-storage", "--data", str(self.directory), old,
                         *(["--node-id", new_id] if new_id else []))
        self._remember_pids()
        return done

    # --- processes ----------------------------------------------------------------------------

    def _remember_pids(self) -> None:
        layout = load_layout(self.directory)
        if layout is not None:
            self._pids_seen.update(node.pid for node in layout.nodes if node.pid)

    def pid_of(self, node_id: str) -> int:
        layout = load_layout(self.directory)
        node = layout.node(node_id)
        assert node.pid is not None and node_is_running(node, self.directory), f"{node_id} is not running"
        self._pids_seen.add(node.pid)
        return node.pid

    def is_running(self, node_id: str) -> bool:
        layout = load_layout(self.directory)
        return node_is_running(layout.node(node_id), self.directory)

    def kill(self, node_id: str, signum: int = signal.SIGKILL) -> None:
        """Send `signum` to the node; for SIGKILL and SIGTERM, return once the process is gone."""
        pid = self.pid_of(node_id)
        os.kill(pid, signum)
        if signum in (signal.SIGKILL, signal.SIGTERM):
            wait_until(lambda: not self.is_running(node_id), f"{node_id} (pid {pid}) to exit", STOP_TIMEOUT_S)

    def close(self) -> None:
        """`down`, then SIGKILL whatever of this cluster survived it. Never raises."""
        with contextlib.suppress(Exception):
            self.down()
        for pid in self._pids_seen:
            argv = read_proc_cmdline(pid)
            if argv and any(argument.startswith(str(self.directory)) for argument in argv):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

    # --- clients ------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"postgresql://postgres@{LISTEN_HOST}:{self.port}/postgres"

    def connect(self, autocommit: bool = True) -> psycopg.Connection:
        return psycopg.connect(self.url, autocommit=autocommit, connect_timeout=CONNECT_TIMEOUT_S)

    def storage_port(self, node_id: str) -> int:
        return load_layout(self.directory).node(node_id).port

    @property
    def reader_url(self) -> str:
        return reader_url(self.port)

    def connect_reader(self) -> psycopg.Connection:
        return psycopg.connect(self.reader_url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S)

    def node_url(self, node_id: str) -> str:
        """A compute node's own PostgreSQL port, past the proxy."""
        return f"postgresql://postgres@{LISTEN_HOST}:{load_layout(self.directory).node(node_id).port}/postgres"

    @property
    def admin_port(self) -> int:
        """The admin port of the compute node started as the writer."""
        return load_layout(self.directory).writer.admin_port

    def admin_port_of(self, node_id: str) -> int:
        return load_layout(self.directory).node(node_id).admin_port

    def proxy_status(self) -> dict:
        reply = request_frame(load_layout(self.directory).proxy.admin_port, {"id": 1, "t": "status"})
        assert reply is not None and reply.get("ok"), f"the proxy's admin port did not answer: {reply!r}"
        return reply

    def log_text(self, node_id: str) -> str:
        path = self.directory / load_layout(self.directory).node(node_id).log_file
        return path.read_text(errors="replace") if path.exists() else ""

    def __enter__(self) -> "LiveCluster":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
