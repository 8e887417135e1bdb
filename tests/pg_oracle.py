"""A scratch PostgreSQL server for tests: the shell's end-to-end target, and a correctness oracle.

Responsibilities: find the PostgreSQL binaries, initdb a throwaway cluster in a fresh temporary
directory, start it on 127.0.0.1 with trust authentication (user postgres), and stop it and remove
the directory when the test session ends.
Invariants: at most one server per test session (every module that imports the fixture shares it);
the server never runs as root (initdb refuses), so when the tests run as root the server runs as
the `postgres` system user, or `nobody`, with the directory handed to that user; if PostgreSQL is
not installed, every test that asks for the fixture is skipped, never failed.
"""

from __future__ import annotations

import atexit
import dataclasses
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg
import pytest

START_TIMEOUT_S = 30
STOP_TIMEOUT_S = 15
POLL_INTERVAL_S = 0.1
UNPRIVILEGED_USERS = ("postgres", "nobody")


@dataclasses.dataclass
class PostgresServer:
    host: str
    port: int
    user: str
    dbname: str
    base_dir: Path
    process: subprocess.Popen

    @property
    def url(self) -> str:
        return f"postgresql://{self.user}@{self.host}:{self.port}/{self.dbname}"

    def connect(self, **kwargs) -> psycopg.Connection:
        return psycopg.connect(self.url, autocommit=True, **kwargs)

    def execute(self, sql: str) -> list[tuple]:
        """Run one statement in its own connection; returns its rows ([] for a statement without rows)."""
        with self.connect() as connection:
            cursor = connection.execute(sql)
            return cursor.fetchall() if cursor.description else []

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)  # "fast" shutdown: abort sessions, exit cleanly
            try:
                self.process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.base_dir, ignore_errors=True)


def find_postgres_bindir() -> Path | None:
    """The directory holding initdb and postgres: from pg_config, else the newest Debian layout."""
    candidates = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        result = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False)
        if result.returncode == 0:
            candidates.append(result.stdout.strip())
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    for candidate in candidates:
        bindir = Path(candidate)
        if (bindir / "initdb").exists() and (bindir / "postgres").exists():
            return bindir
    return None


def _unprivileged_user() -> pwd.struct_passwd | None:
    """None when we are not root (run as ourselves); else the first system user that exists."""
    if os.geteuid() != 0:
        return None
    for name in UNPRIVILEGED_USERS:
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise RuntimeError(f"running as root and none of the users {UNPRIVILEGED_USERS} exists to run PostgreSQL")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _run_as(account: pwd.struct_passwd | None) -> dict:
    if account is None:
        return {}
    return {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}


def start_postgres() -> PostgresServer:
    bindir = find_postgres_bindir()
    if bindir is None:
        raise FileNotFoundError("PostgreSQL binaries (initdb, postgres) not found")
    account = _unprivileged_user()
    base_dir = Path(tempfile.mkdtemp(prefix="aurora-db-pg-oracle-"))
    data_dir, socket_dir = base_dir / "data", base_dir / "socket"
    socket_dir.mkdir()
    if account is not None:
        for path in (base_dir, socket_dir):
            os.chown(path, account.pw_uid, account.pw_gid)
    environment = {**os.environ, "LC_ALL": "C", "LANG": "C"}
    subprocess.run(
        [str(bindir / "initdb"), "-D", str(data_dir), "--auth=trust", "-U", "postgres", "--encoding=UTF8",
         "--locale=C", "--no-sync"],
        cwd=base_dir, env=environment, capture_output=True, check=True, **_run_as(account))
    port = _free_port()
    log = open(base_dir / "postgres.log", "ab")
    process = subprocess.Popen(
        [str(bindir / "postgres"), "-D", str(data_dir), "-p", str(port), "-k", str(socket_dir),
         "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"],
        cwd=base_dir, env=environment, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        start_new_session=True, **_run_as(account))
    log.close()
    server = PostgresServer("127.0.0.1", port, "postgres", "postgres", base_dir, process)
    _wait_until_accepting(server)
    return server


def _wait_until_accepting(server: PostgresServer) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        if server.process.poll() is not None:
            log = (server.base_dir / "postgres.log").read_text(errors="replace")
            raise RuntimeError(f"postgres exited with code {server.process.returncode}:\n{log}")
        try:
            server.execute("SELECT 1")
            return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                server.stop()
                raise TimeoutError(f"postgres did not accept connections within {START_TIMEOUT_S} s") from None
            time.sleep(POLL_INTERVAL_S)


_shared_server: PostgresServer | None = None


def shared_postgres() -> PostgresServer:
    """The session's one server, started on first use and stopped when the interpreter exits."""
    global _shared_server
    if _shared_server is None:
        _shared_server = start_postgres()
        atexit.register(_shared_server.stop)
    return _shared_server


@pytest.fixture(scope="session")
def postgres_server() -> PostgresServer:
    """A running PostgreSQL server shared by the whole session; skips the test if none is installed.

    Tests that create tables should use names of their own (or drop them): the server is shared."""
    if find_postgres_bindir() is None:
        pytest.skip("PostgreSQL is not installed (no initdb/postgres found)")
    return shared_postgres()
