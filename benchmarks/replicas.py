"""Readers and failover: failover time, replica lag, and read throughput through the reader endpoint.

One run starts `aurora-db up --readers 2` (six storage nodes, a writer, two readers, the proxy) in a
temporary directory on free ports, and always stops it at the end. Then it measures:

1. **Failover time** (`--trials`, default 5): a client commits one-row INSERTs through the writer
   endpoint without pause; the current writer is killed with SIGKILL; the figure is the time from
   the kill to the next commit the writer endpoint acknowledges. After each trial `aurora-db up`
   starts the killed node again (it rejoins as a reader) and the next trial waits until the proxy
   sees two readers again.
2. **Replica lag at a steady write rate** (`--rate`, default 1000 commits/s, for `--seconds`):
   paced one-row INSERTs through the writer endpoint from several threads; meanwhile a probe
   commits a marker row every 50 ms and polls one reader, on its own port, until the row is there:
   the time from the COMMIT's acknowledgement to the first read that shows it (p50, p99). Each
   reader's own measurement of the stream (how old the writer's state was when it applied it) is
   printed too.
3. **Read throughput** through the reader endpoint: `pgbench -S` (a primary-key SELECT, scale 1,
   8 clients, `-M prepared`) against the reader endpoint with two readers, then with one (the
   other stopped), then with none (the endpoint falls back to the writer).

    .venv/bin/python -m benchmarks.replicas [--trials 5] [--rate 1000] [--seconds 10] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import psycopg

from aurora_db.cluster import LISTEN_HOST, load_layout, reader_url, request_frame, writer_url
from benchmarks.commit_latency import aurora_db, choose_cluster_port, percentile
from benchmarks.pgbench_tpcb import pgbench_arguments, run_pgbench

TRIALS_DEFAULT = 5
RATE_DEFAULT = 1000
SECONDS_DEFAULT = 10
LOAD_THREADS = 8
PROBE_INTERVAL_S = 0.05
PROBE_TIMEOUT_S = 10
FAILOVER_TIMEOUT_S = 60
CLUSTER_TIMEOUT_S = 180
PGBENCH_SCALE = 1
PGBENCH_CLIENTS = 8
PGBENCH_SECONDS = 15
SETTLE_TIMEOUT_S = 60


def log(message: str) -> None:
    print(f"[replicas] {message}", file=sys.stderr, flush=True)


class ClusterRun:
    def __init__(self, data_dir: Path):
        self.data_dir = data_dir
        self.port = choose_cluster_port()

    def up(self) -> None:
        done = aurora_db("up", "--data", str(self.data_dir), "--port", str(self.port), "--readers", "2", "--detach",
                         timeout_s=CLUSTER_TIMEOUT_S)
        if done.returncode != 0:
            raise RuntimeError(f"aurora-db up failed:\n{done.stdout}{done.stderr}")

    def down(self) -> None:
        aurora_db("down", "--data", str(self.data_dir), timeout_s=CLUSTER_TIMEOUT_S)

    def proxy_status(self) -> dict:
        reply = request_frame(load_layout(self.data_dir).proxy.admin_port, {"id": 1, "t": "status"})
        return reply or {}

    def node_status(self, node_id: str) -> dict:
        reply = request_frame(load_layout(self.data_dir).node(node_id).admin_port, {"id": 1, "t": "status"})
        return reply or {}

    def pid(self, node_id: str) -> int:
        return load_layout(self.data_dir).node(node_id).pid

    def node_url(self, node_id: str) -> str:
        return f"postgresql://postgres@{LISTEN_HOST}:{load_layout(self.data_dir).node(node_id).port}/postgres"

    def wait_for_readers(self, count: int) -> None:
        """Until the proxy has a writer and exactly `count` usable readers behind the reader endpoint."""
        deadline = time.monotonic() + SETTLE_TIMEOUT_S
        while True:
            status = self.proxy_status()
            usable = [] if status.get("reader_fallback_to_writer") else status.get("readers", [])
            if status.get("writer") and len(usable) == count:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"the proxy did not reach {count} usable readers: {status}")
            time.sleep(0.2)


def commit_forever(url: str, stop: threading.Event, acks: list[tuple[float, float]]) -> None:
    """One client committing through the writer endpoint without pause, reconnecting on errors;
    `acks` gets (sent, acknowledged) times of every commit."""
    connection, row = None, 0
    while not stop.is_set():
        row += 1
        try:
            if connection is None:
                connection = psycopg.connect(url, autocommit=True, connect_timeout=2)
            sent = time.monotonic()
            connection.execute("INSERT INTO failover_probe VALUES (%s)", (row,))
            acks.append((sent, time.monotonic()))
        except psycopg.Error:
            if connection is not None:
                connection.close()
            connection = None
            time.sleep(0.01)
    if connection is not None:
        connection.close()


def measure_failover(run: ClusterRun, trials: int) -> list[float]:
    with psycopg.connect(writer_url(run.port), autocommit=True) as connection:
        connection.execute("CREATE TABLE failover_probe (id bigint)")
    times_s = []
    for trial in range(trials):
        run.wait_for_readers(2)
        writer = run.proxy_status()["writer"]
        stop, acks = threading.Event(), []
        client = threading.Thread(target=commit_forever, args=(writer_url(run.port), stop, acks))
        client.start()
        try:
            while len(acks) < 20:
                time.sleep(0.01)
            killed_at = time.monotonic()
            os.kill(run.pid(writer), signal.SIGKILL)
            deadline = killed_at + FAILOVER_TIMEOUT_S
            while not acks or acks[-1][0] <= killed_at:  # a commit sent after the kill: not one in flight
                if time.monotonic() > deadline:
                    raise RuntimeError(f"no commit within {FAILOVER_TIMEOUT_S} s of killing {writer}")
                time.sleep(0.005)
            first = next(acknowledged for sent, acknowledged in acks if sent > killed_at)
        finally:
            stop.set()
            client.join()
        times_s.append(first - killed_at)
        log(f"failover {trial + 1}/{trials}: {writer} killed, first commit through the writer endpoint after "
            f"{1000 * (first - killed_at):.0f} ms (new writer {run.proxy_status().get('writer')})")
        run.up()  # the killed node comes back as a reader
    return times_s


def paced_writer(url: str, rate_per_thread: float, stop: threading.Event, done: list[int]) -> None:
    with psycopg.connect(url, autocommit=True) as connection:
        interval, next_at, count = 1 / rate_per_thread, time.monotonic(), 0
        while not stop.is_set():
            connection.execute("INSERT INTO lag_load VALUES (1)")
            count += 1
            next_at += interval
            pause = next_at - time.monotonic()
            if pause > 0:
                time.sleep(pause)
        done.append(count)


def visibility_lags(writer: str, reader: str, stop: threading.Event, lags_ms: list[float]) -> None:
    with psycopg.connect(writer, autocommit=True) as source, psycopg.connect(reader, autocommit=True) as replica:
        marker = 0
        while not stop.is_set():
            marker += 1
            source.execute("INSERT INTO lag_probe VALUES (%s)", (marker,))
            acknowledged = time.monotonic()
            while replica.execute("SELECT 1 FROM lag_probe WHERE id = %s", (marker,)).fetchone() is None:
                if time.monotonic() - acknowledged > PROBE_TIMEOUT_S:
                    raise RuntimeError(f"marker {marker} not visible on the reader after {PROBE_TIMEOUT_S} s")
            lags_ms.append(1000 * (time.monotonic() - acknowledged))
            time.sleep(PROBE_INTERVAL_S)


def measure_lag(run: ClusterRun, rate: float, seconds: float) -> dict:
    run.wait_for_readers(2)
    url = writer_url(run.port)
    with psycopg.connect(url, autocommit=True) as connection:
        connection.execute("CREATE TABLE lag_load (v int)")
        connection.execute("CREATE TABLE lag_probe (id int PRIMARY KEY)")
    reader = run.proxy_status()["readers"][0]
    stop, done, lags_ms = threading.Event(), [], []
    threads = [threading.Thread(target=paced_writer, args=(url, rate / LOAD_THREADS, stop, done))
               for _ in range(LOAD_THREADS)]
    threads.append(threading.Thread(target=visibility_lags, args=(url, run.node_url(reader), stop, lags_ms)))
    started = time.monotonic()
    for thread in threads:
        thread.start()
    time.sleep(seconds)
    stop.set()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - started
    stream = {node_id: run.node_status(node_id) for node_id in run.proxy_status()["readers"]}
    ordered = sorted(lags_ms)
    return {"commits_per_s": sum(done) / elapsed, "visibility_p50_ms": percentile(ordered, 0.5),
            "visibility_p99_ms": percentile(ordered, 0.99), "visibility_samples": len(ordered),
            "stream_lag_ms": {node_id: (status.get("replica_lag_p50_ms"), status.get("replica_lag_p99_ms"))
                              for node_id, status in stream.items()}}


def pgbench_select_tps(url: str) -> float:
    output = run_pgbench(["-S", "-n", "-M", "prepared", "-c", str(PGBENCH_CLIENTS), "-j", "2", "-T",
                          str(PGBENCH_SECONDS), *pgbench_arguments(url)], PGBENCH_SECONDS + 120)
    return float(output.split("tps = ")[1].split()[0])


def measure_reads(run: ClusterRun) -> dict:
    run.wait_for_readers(2)
    run_pgbench(["-i", "-s", str(PGBENCH_SCALE), *pgbench_arguments(writer_url(run.port))], 600)
    results = {}
    readers = list(run.proxy_status()["readers"])
    for count in (2, 1, 0):
        run.wait_for_readers(count)
        pgbench_select_tps(reader_url(run.port))  # unmeasured: fill the caches
        results[count] = pgbench_select_tps(reader_url(run.port))
        log(f"pgbench -S through the reader endpoint with {count} readers: {results[count]:.0f} TPS")
        if count:
            os.kill(run.pid(readers[count - 1]), signal.SIGKILL)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.replicas", description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=TRIALS_DEFAULT, help="failovers to time (default %(default)s)")
    parser.add_argument("--rate", type=float, default=RATE_DEFAULT, help="commits/s for the lag run (default %(default)g)")
    parser.add_argument("--seconds", type=float, default=SECONDS_DEFAULT, help="length of the lag run (default %(default)g)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    arguments = parser.parse_args(argv)
    load_average = os.getloadavg()[0]
    base_dir = Path(tempfile.mkdtemp(prefix="aurora-db-replicas-"))
    run = ClusterRun(base_dir / "cluster")
    try:
        run.up()
        lag = measure_lag(run, arguments.rate, arguments.seconds)
        failover_s = measure_failover(run, arguments.trials)
        reads = measure_reads(run)
    finally:
        run.down()
        shutil.rmtree(base_dir, ignore_errors=True)
    figures = {"failover_median_ms": 1000 * statistics.median(failover_s), "failover_max_ms": 1000 * max(failover_s),
               "failover_trials_ms": [round(1000 * s) for s in failover_s], **lag,
               "reader_endpoint_select_tps": {f"{count} readers": tps for count, tps in reads.items()}}
    if arguments.json:
        print(json.dumps({"cpus": os.cpu_count(), "load_average_1_min_at_start": load_average, **figures}, indent=2))
    else:
        print(f"{os.cpu_count()} CPUs, load average {load_average:.2f} at start")
        for name, value in figures.items():
            print(f"{name:32} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
