"""Shared fixtures: one real local cluster per test session for the SQL tests, and the
PostgreSQL 15 oracle (tests/pg_oracle.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from aurora_db.cluster import load_layout
from aurora_db.local_cluster import free_port_range
from tests.pg_oracle import postgres_server  # noqa: F401  (re-exported fixture)

CLUSTER_COMMAND_TIMEOUT_S = 180


def aurora_db(*arguments: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run the real CLI in a subprocess, as a user would."""
    return subprocess.run([sys.executable, "-m", "aurora_db.cli", *arguments], capture_output=True, text=True,
                          timeout=CLUSTER_COMMAND_TIMEOUT_S, check=check)


class SqlCluster:
    """A running local cluster, started with `aurora-db up --readers 0`: six storage nodes, a writer
    and the proxy. Clients connect to the proxy's writer endpoint, P."""

    host = "127.0.0.1"
    user = "postgres"
    dbname = "postgres"

    def __init__(self, data_dir, port: int, cache_pages: int):
        self.data_dir = str(data_dir)
        self.port = port
        self.cache_pages = cache_pages

    def up(self) -> None:
        result = aurora_db("up", "--data", self.data_dir, "--port", str(self.port), "--readers", "0", "--detach",
                           "--cache-pages", str(self.cache_pages), check=False)
        if result.returncode != 0:
            raise RuntimeError(f"aurora-db up failed:\n{result.stdout}\n{result.stderr}")

    def down(self) -> None:
        aurora_db("down", "--data", self.data_dir, check=False)

    @property
    def url(self) -> str:
        return f"postgresql://{self.user}@{self.host}:{self.port}/{self.dbname}"

    def connect(self, **kwargs) -> psycopg.Connection:
        return psycopg.connect(self.url, autocommit=True, **kwargs)

    @property
    def admin_port(self) -> int:
        """The admin port of the compute node started as the writer."""
        return load_layout(Path(self.data_dir)).writer.admin_port


@pytest.fixture(scope="session")
def sql_cluster(tmp_path_factory):
    """One cluster for the whole session, with a small buffer cache so reads really reach storage."""
    cluster = SqlCluster(tmp_path_factory.mktemp("sql-cluster"), free_port_range(), cache_pages=64)
    cluster.up()
    yield cluster
    cluster.down()
