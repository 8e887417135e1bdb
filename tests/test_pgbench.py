"""pgbench, unchanged, against the shared cluster: `pgbench -i` (COPY into tables without indexes,
VACUUM, ALTER TABLE ... ADD PRIMARY KEY), then the TPC-B-like run in each query mode with no
failed transaction, and the books balance afterwards (every transaction adds the same delta to one
account, one teller, one branch and the history)."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

PGBENCH_TIMEOUT_S = 300
RUN_SECONDS = 3
CLIENTS = 4

pytestmark = pytest.mark.skipif(shutil.which("pgbench") is None, reason="pgbench is not installed")


def pgbench(sql_cluster, *arguments: str) -> str:
    command = ["pgbench", "-h", sql_cluster.host, "-p", str(sql_cluster.port), "-U", sql_cluster.user,
               *arguments, sql_cluster.dbname]
    done = subprocess.run(command, capture_output=True, text=True, timeout=PGBENCH_TIMEOUT_S)
    assert done.returncode == 0, f"{' '.join(command)}: {done.stderr[-2000:]}"
    return done.stdout + done.stderr


def test_pgbench_initializes_and_runs_in_every_mode_and_the_books_balance(sql_cluster):
    pgbench(sql_cluster, "-i", "-s", "1", "-q")
    with sql_cluster.connect() as connection:
        assert connection.execute("SELECT count(*) FROM pgbench_accounts").fetchone() == (100_000,)
        assert connection.execute("SELECT count(*), sum(abalance) FROM pgbench_accounts WHERE aid BETWEEN 500 AND 599"
                                  ).fetchone() == (100, 0), "the primary key finds the loaded rows"
    for mode in ("simple", "extended", "prepared"):
        output = pgbench(sql_cluster, "-n", "-c", str(CLIENTS), "-T", str(RUN_SECONDS), "-M", mode)
        processed = int(re.search(r"number of transactions actually processed: (\d+)", output).group(1))
        failed = re.search(r"number of failed transactions: (\d+)", output)
        assert processed > 0 and (failed is None or failed.group(1) == "0"), output
    with sql_cluster.connect() as connection:
        sums = connection.execute(
            "SELECT (SELECT sum(abalance) FROM pgbench_accounts), (SELECT sum(tbalance) FROM pgbench_tellers),"
            " (SELECT sum(bbalance) FROM pgbench_branches), (SELECT sum(delta) FROM pgbench_history),"
            " (SELECT count(*) FROM pgbench_history)").fetchone()
        assert sums[0] == sums[1] == sums[2] == sums[3] and sums[4] > 0, sums
        for table in ("pgbench_accounts", "pgbench_tellers", "pgbench_branches", "pgbench_history"):
            connection.execute(f"DROP TABLE {table}")
