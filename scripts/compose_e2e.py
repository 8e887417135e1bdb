"""The end-to-end test of docker-compose.yml: the cluster in real containers, failures by `docker kill`.

scripts/compose-e2e.sh runs it once the image is built. It brings the cluster up as a compose project
of its own, runs a write workload through the published writer endpoint that records every
acknowledged commit, and checks the promises of README "Test failover" one after another: the
writer killed (the writer endpoint commits again), an AZ's two storage nodes killed (reads and
writes go on), a third storage node killed (commits wait) and started again (they complete), the old
writer started again (it rejoins as a reader and cannot commit). At the end every acknowledged commit
must be present, through the writer endpoint and through the reader endpoint. Each step prints its
timings; the first failed check ends the run with exit status 1, after `down -v` in every case.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shlex
import socket
import subprocess
import sys
import threading
import time

import psycopg

WORKERS = 4
WORKER_PAUSE_S = 0.02  # between one worker's commits: about 150 commits/s in all, not a CPU-bound flood
RECONNECT_PAUSE_S = 0.1
CONNECT_TIMEOUT_S = 3
COMMANDS_TIMEOUT_S = 120  # any one docker or compose command
UP_TIMEOUT_S = 240  # compose up, health checks included (a first start also creates the volumes)
READY_TIMEOUT_S = 60
FAILOVER_TIMEOUT_S = 60
WARMUP_COMMITS = 50
AZ_WINDOW_S = 5  # how long writes must go on with one AZ down
AZ_WINDOW_COMMITS_MIN = 20
STALL_HOLD_S = 5  # how long commits must wait with three storage nodes down
STALL_SLACK_S = 1  # an ack this soon after the kill may be a commit that had its quorum already
RESUME_TIMEOUT_S = 60
REJOIN_TIMEOUT_S = 60
READER_CATCH_UP_TIMEOUT_S = 15
WORKLOAD_STOP_TIMEOUT_S = 45  # longer than a commit's own timeout (30 s)
POLL_S = 0.2
LOG_TAIL_LINES = 40
KILLED_AZ = "a"
THIRD_STORAGE_NODE = "b1"
SQLSTATE_READ_ONLY = "25006"
STORAGE_PORT = 7000  # inside the network, as docker-compose.yml has them
COMPUTE_ADMIN_PORT = 7020
PROXY_ADMIN_PORT = 7002

STARTED = float(os.environ.get("E2E_STARTED") or time.time())  # Unix time: the same clock as compose-e2e.sh's


class Failed(Exception):
    """A promise of the cluster did not hold (or the harness could not check it)."""


def log(message: str) -> None:
    print(f"[{time.time() - STARTED:7.1f}s] {message}", flush=True)


def check(condition: bool, message: str) -> None:
    if not condition:
        raise Failed(message)


def wait_for(predicate, timeout_s: float, what: str):
    """Poll until predicate() returns something true; that value. Failed after timeout_s."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise Failed(f"{what}: not within {timeout_s:g} s")
        time.sleep(POLL_S)


# ----------------------------------------------------------------------------------------------
# Docker
# ----------------------------------------------------------------------------------------------

class Cluster:
    def __init__(self, compose: list[str], project: str, writer_port: int, reader_port: int):
        self.compose_command = [*compose, "-p", project]
        self.writer_port = writer_port
        self.reader_port = reader_port

    def compose(self, *args: str, check_status: bool = True, timeout_s: float = COMMANDS_TIMEOUT_S):
        return run([*self.compose_command, *args], check_status, timeout_s)

    def container(self, service: str) -> str:
        container_id = self.compose("ps", "-a", "-q", service).stdout.strip()  # -a: v2 lists stopped ones only so
        check(bool(container_id), f"no container for service {service}")
        return container_id

    def container_name(self, service: str) -> str:
        return run(["docker", "inspect", "-f", "{{.Name}}", self.container(service)]).stdout.strip().lstrip("/")

    def docker_kill(self, service: str) -> float:
        """Kill a service's container (SIGKILL); the time just before, as the start of the outage."""
        name = self.container_name(service)
        started = time.monotonic()
        run(["docker", "kill", name])
        log(f"  docker kill {name}")
        return started

    def docker_start(self, service: str) -> float:
        name = self.container_name(service)
        started = time.monotonic()
        run(["docker", "start", name])
        log(f"  docker start {name}")
        return started

    def state(self, service: str) -> str:
        return run(["docker", "inspect", "-f", "{{.State.Status}}", self.container(service)]).stdout.strip()

    def exec(self, service: str, *command: str):
        return self.compose("exec", "-T", service, *command, check_status=False)

    def node_status(self, service: str, kind: str, port: int) -> dict | None:
        """A node's own status reply, asked from inside its container; None if it does not answer."""
        result = self.exec(service, "aurora-db-docker", "health", kind, str(port), "--json")
        try:
            return json.loads(result.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            return None

    def proxy_status(self) -> dict:
        return self.node_status("proxy", "proxy", PROXY_ADMIN_PORT) or {}

    def compute_status(self, service: str) -> dict:
        return self.node_status(service, "compute", COMPUTE_ADMIN_PORT) or {}

    def storage_healthy(self, service: str) -> bool:
        return self.exec(service, "aurora-db-docker", "health", "storage", str(STORAGE_PORT)).returncode == 0

    def diagnostics(self) -> None:
        print("\n--- docker compose ps", flush=True)
        print(self.compose("ps", check_status=False).stdout, flush=True)
        print(f"--- last {LOG_TAIL_LINES} log lines of each service", flush=True)
        result = self.compose("logs", "--no-color", "--tail", str(LOG_TAIL_LINES), check_status=False)
        print(result.stdout + result.stderr, flush=True)


def run(command: list[str], check_status: bool = True, timeout_s: float = COMMANDS_TIMEOUT_S):
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise Failed(f"`{shlex.join(command)}` did not finish within {timeout_s:g} s") from None
    if check_status and result.returncode != 0:
        raise Failed(f"`{shlex.join(command)}` exited with {result.returncode}: {result.stderr.strip()}")
    return result


def port_is_free(port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


# ----------------------------------------------------------------------------------------------
# SQL through the published endpoints
# ----------------------------------------------------------------------------------------------

def connect(port: int) -> psycopg.Connection:
    return psycopg.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres", autocommit=True,
                           connect_timeout=CONNECT_TIMEOUT_S)


def query(port: int, sql: str, params=()) -> list[tuple] | None:
    """Rows (none for a statement that returns none), or None if it failed (the error is printed)."""
    try:
        with connect(port) as connection:
            cursor = connection.execute(sql, params)
            return cursor.fetchall() if cursor.description is not None else []
    except psycopg.Error as error:
        log(f"  port {port}: {type(error).__name__}: {str(error).strip()}")
        return None


class Workload:
    """WORKERS clients committing one-row inserts through the writer endpoint, each on its own
    connection (a new one after any error). Every commit is recorded: its id, when it was sent and
    when it was acknowledged, or the error it got (then its outcome is unknown)."""

    def __init__(self, port: int):
        self.port = port
        self.ids = itertools.count(1)
        self.lock = threading.Lock()
        self.acks: list[tuple[float, float, int]] = []  # (sent, acknowledged, id), in order of ack
        self.errors: list[tuple[float, int, str]] = []  # (when, id, what)
        self.attempted: set[int] = set()
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self._work, args=(worker,), daemon=True) for worker in range(WORKERS)]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def stop(self) -> bool:
        """Stop the workers, letting each finish its commit in flight; whether all stopped in time."""
        self.stopping.set()
        deadline = time.monotonic() + WORKLOAD_STOP_TIMEOUT_S
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return not any(thread.is_alive() for thread in self.threads)

    def _work(self, worker: int) -> None:
        connection = None
        while not self.stopping.is_set():
            if connection is None:
                try:
                    connection = connect(self.port)
                except psycopg.Error:
                    time.sleep(RECONNECT_PAUSE_S)
                    continue
            row_id = next(self.ids)
            with self.lock:
                self.attempted.add(row_id)
            sent = time.monotonic()
            try:
                connection.execute("INSERT INTO e2e (id, worker) VALUES (%s, %s)", (row_id, worker))
            except psycopg.Error as error:
                with self.lock:
                    self.errors.append((time.monotonic(), row_id, f"{error.sqlstate or type(error).__name__}"))
                connection.close()
                connection = None
                time.sleep(RECONNECT_PAUSE_S)
                continue
            with self.lock:
                self.acks.append((sent, time.monotonic(), row_id))
            time.sleep(WORKER_PAUSE_S)
        if connection is not None:
            connection.close()

    def acked(self) -> list[tuple[float, float, int]]:
        with self.lock:
            return list(self.acks)

    def errors_since(self, when: float) -> list[tuple[float, int, str]]:
        with self.lock:
            return [error for error in self.errors if error[0] >= when]

    def first_ack_sent_after(self, when: float) -> tuple[float, float, int] | None:
        return next((ack for ack in self.acked() if ack[0] >= when), None)

    def first_ack_after(self, when: float) -> tuple[float, float, int] | None:
        return next((ack for ack in self.acked() if ack[1] >= when), None)

    def last_ack_before(self, when: float) -> tuple[float, float, int] | None:
        before = [ack for ack in self.acked() if ack[1] < when]
        return before[-1] if before else None

    def acks_between(self, start: float, end: float) -> list[tuple[float, float, int]]:
        return [ack for ack in self.acked() if start <= ack[1] < end]


def longest_gap_ms(acks: list[tuple[float, float, int]], start: float, end: float) -> float:
    times = [start] + sorted(ack[1] for ack in acks) + [end]
    return max(later - earlier for earlier, later in zip(times, times[1:])) * 1000


# ----------------------------------------------------------------------------------------------
# The steps
# ----------------------------------------------------------------------------------------------

def step_up(cluster: Cluster) -> None:
    log("step 1: docker compose up -d (six storage nodes, db1 the writer, db2 and db3 readers, the proxy)")
    cluster.compose("down", "-v", check_status=False)  # what an interrupted run may have left
    for port in (cluster.writer_port, cluster.reader_port):
        check(port_is_free(port), f"port {port} on 127.0.0.1 is in use; set E2E_WRITER_PORT/E2E_READER_PORT")
    started = time.monotonic()
    cluster.compose("up", "-d", "--no-build", timeout_s=UP_TIMEOUT_S)

    def ready():
        status = cluster.proxy_status()
        return (status.get("writer") == "db1" and sorted(status.get("readers") or []) == ["db2", "db3"]
                and query(cluster.writer_port, "SELECT 1") == [(1,)])

    wait_for(ready, READY_TIMEOUT_S, "the proxy naming db1 the writer and db2, db3 the readers")
    log(f"  cluster up in {time.monotonic() - started:.1f} s: writer endpoint 127.0.0.1:{cluster.writer_port} -> db1, "
        f"reader endpoint 127.0.0.1:{cluster.reader_port} -> db2, db3")


def step_workload(cluster: Cluster) -> Workload:
    log(f"step 2: a write workload: {WORKERS} clients committing one-row inserts through the writer endpoint")
    check(query(cluster.writer_port, "CREATE TABLE e2e (id bigint PRIMARY KEY, worker int NOT NULL)") is not None,
          "CREATE TABLE through the writer endpoint failed")
    workload = Workload(cluster.writer_port)
    workload.start()
    wait_for(lambda: len(workload.acked()) >= WARMUP_COMMITS, READY_TIMEOUT_S, f"{WARMUP_COMMITS} commits")
    log(f"  {len(workload.acked())} commits acknowledged")
    return workload


def step_kill_writer(cluster: Cluster, workload: Workload) -> tuple[str, str, float]:
    old_writer = cluster.proxy_status().get("writer")
    check(old_writer is not None, "the proxy names no writer")
    log(f"step 3: docker kill the writer ({old_writer}): the writer endpoint commits again after failover")
    killed = cluster.docker_kill(old_writer)
    dead = time.monotonic()  # a commit sent from now on cannot have reached the old writer
    last = workload.last_ack_before(killed)
    first = wait_for(lambda: workload.first_ack_sent_after(dead), FAILOVER_TIMEOUT_S,
                     "a commit through the writer endpoint after the writer was killed")
    new_writer = wait_for(lambda: (w := cluster.proxy_status().get("writer")) not in (None, old_writer) and w,
                          READY_TIMEOUT_S, "the proxy naming a new writer")
    check(cluster.state(old_writer) != "running", f"{old_writer} was restarted by Docker after docker kill")
    failover_s = first[1] - killed
    gap = f"; the last commit before it was acknowledged {killed - last[1]:.2f} s before the kill" if last else ""
    log(f"  failover {old_writer} -> {new_writer}: first commit acknowledged {failover_s:.2f} s after docker kill{gap}")
    log(f"  {len(workload.errors_since(killed))} commits failed meanwhile (connections to {old_writer} were cut: "
        "outcome unknown, retried as new inserts)")
    return old_writer, new_writer, failover_s


def step_kill_az(cluster: Cluster, workload: Workload) -> None:
    nodes = [f"storage-{KILLED_AZ}1", f"storage-{KILLED_AZ}2"]
    log(f"step 4: docker kill both storage nodes of AZ {KILLED_AZ} ({', '.join(nodes)}): reads and writes go on")
    killed = min(cluster.docker_kill(node) for node in nodes)
    window_end = killed + AZ_WINDOW_S
    time.sleep(max(0.0, window_end - time.monotonic()))
    acks = workload.acks_between(killed, window_end)
    check(len(acks) >= AZ_WINDOW_COMMITS_MIN,
          f"only {len(acks)} commits in the {AZ_WINDOW_S} s after AZ {KILLED_AZ} went down")
    log(f"  writes go on: {len(acks)} commits in {AZ_WINDOW_S} s (longest wait between two acks "
        f"{longest_gap_ms(acks, killed, window_end):.0f} ms), {len(workload.errors_since(killed))} failed")
    recent = acks[-1][2]
    count = query(cluster.writer_port, "SELECT count(*) FROM e2e")
    check(count is not None and count[0][0] >= len(workload.acked()) - WORKERS,
          f"SELECT count(*) through the writer endpoint: {count}")
    row = wait_for(lambda: query(cluster.reader_port, "SELECT id FROM e2e WHERE id = %s", (recent,)),
                   READER_CATCH_UP_TIMEOUT_S, f"row {recent} through the reader endpoint")
    check(row == [(recent,)], f"row {recent} through the reader endpoint: {row}")
    log(f"  reads go on: count(*) = {count[0][0]} through the writer endpoint; row {recent} (committed "
        f"with AZ {KILLED_AZ} down) through the reader endpoint")


def step_stall(cluster: Cluster, workload: Workload) -> float:
    node = f"storage-{THIRD_STORAGE_NODE}"
    log(f"step 5: docker kill a third storage node ({node}): commits wait; docker start it: they complete")
    killed = cluster.docker_kill(node)
    time.sleep(STALL_HOLD_S)
    late = workload.acks_between(killed + STALL_SLACK_S, time.monotonic())
    check(not late, f"{len(late)} commits were acknowledged with only 3 of 6 storage nodes up "
                    f"(ids {[ack[2] for ack in late[:5]]})")
    errors = workload.errors_since(killed)
    check(not errors, f"commits failed instead of waiting: {errors[:5]}")
    log(f"  commits wait: none acknowledged in the {STALL_HOLD_S} s with 3 of 6 storage nodes up, none failed")
    started = cluster.docker_start(node)
    first = wait_for(lambda: workload.first_ack_after(started), RESUME_TIMEOUT_S,
                     f"a commit after docker start {node}")
    last = workload.last_ack_before(killed + STALL_SLACK_S)
    stall_s = first[1] - (last[1] if last else killed)
    waited = [ack for ack in workload.acks_between(started, time.monotonic()) if ack[0] < started]
    check(bool(waited), "no commit sent during the stall was acknowledged after the restart")
    check(not workload.errors_since(killed), f"commits failed: {workload.errors_since(killed)[:5]}")
    log(f"  they complete: the first {first[1] - started:.2f} s after docker start; commits stalled "
        f"{stall_s:.2f} s in all; {len(waited)} commits sent during the stall were acknowledged")
    return stall_s


def step_restore_az(cluster: Cluster) -> None:
    nodes = [f"storage-{KILLED_AZ}1", f"storage-{KILLED_AZ}2"]
    log(f"step 6: docker start {', '.join(nodes)}: AZ {KILLED_AZ} comes back")
    started = min(cluster.docker_start(node) for node in nodes)
    wait_for(lambda: all(cluster.storage_healthy(node) for node in nodes), READY_TIMEOUT_S,
             f"{', '.join(nodes)} answering")
    log(f"  both answer {time.monotonic() - started:.1f} s after docker start")


def step_old_writer(cluster: Cluster, workload: Workload, old_writer: str, new_writer: str) -> None:
    log(f"step 7: docker start the old writer ({old_writer}): it rejoins as a reader and cannot commit")
    started = cluster.docker_start(old_writer)
    status = wait_for(lambda: (s := cluster.compute_status(old_writer)).get("role") == "reader" and s.get("following")
                      and s, REJOIN_TIMEOUT_S, f"{old_writer} reporting role reader, following a writer")
    log(f"  {old_writer} reports role reader, epoch {status.get('epoch')}, following {status.get('following')} "
        f"({time.monotonic() - started:.1f} s after docker start)")
    recovery = cluster.exec(old_writer, "aurora-db", "sql", "-c", "SELECT pg_is_in_recovery()")
    check(recovery.returncode == 0 and any(line.strip() == "t" for line in recovery.stdout.splitlines()),
          f"SELECT pg_is_in_recovery() on {old_writer}: {recovery.stdout}{recovery.stderr}")
    insert = cluster.exec(old_writer, "aurora-db", "sql", "-c", "INSERT INTO e2e (id, worker) VALUES (-1, -1)")
    output = insert.stdout + insert.stderr
    check(insert.returncode != 0 and SQLSTATE_READ_ONLY in output,
          f"an INSERT on {old_writer} did not fail with {SQLSTATE_READ_ONLY}: {output.strip()}")
    log(f"  docker compose exec {old_writer} aurora-db sql: pg_is_in_recovery() = t; INSERT fails: "
        f"{output.strip().splitlines()[-1]}")
    proxy = cluster.proxy_status()
    check(proxy.get("writer") == new_writer, f"the proxy's writer is {proxy.get('writer')}, expected {new_writer}")
    wait_for(lambda: workload.first_ack_sent_after(started), READY_TIMEOUT_S, "commits after the old writer came back")
    wait_for(lambda: old_writer in (cluster.proxy_status().get("readers") or []), READY_TIMEOUT_S,
             f"the reader endpoint including {old_writer}")
    log(f"  the writer endpoint stays on {new_writer} and commits go on; the reader endpoint includes {old_writer}")


def step_verify(cluster: Cluster, workload: Workload) -> None:
    log("step 8: stop the workload; every acknowledged commit is present, through both endpoints")
    check(workload.stop(), f"a workload client is still waiting after {WORKLOAD_STOP_TIMEOUT_S} s")
    acked = {ack[2] for ack in workload.acked()}
    unknown = {error[1] for error in workload.errors}
    for name, port in (("writer", cluster.writer_port), ("reader", cluster.reader_port)):
        def present():
            rows = query(port, "SELECT id FROM e2e")
            return rows is not None and not acked - {row[0] for row in rows} and rows

        try:
            rows = wait_for(present, READER_CATCH_UP_TIMEOUT_S, "")
        except Failed:
            rows = query(port, "SELECT id FROM e2e") or []
            missing = sorted(acked - {row[0] for row in rows})
            raise Failed(f"{len(missing)} acknowledged commits missing through the {name} endpoint: {missing[:20]}")
        ids = {row[0] for row in rows}
        strangers = ids - workload.attempted
        check(not strangers, f"rows nobody inserted through the {name} endpoint: {sorted(strangers)[:20]}")
        log(f"  {name} endpoint: all {len(acked)} acknowledged commits present ({len(ids)} rows; "
            f"{len(unknown & ids)} of the {len(unknown)} failed commits, whose outcome was unknown, made it)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--compose", required=True, help='the compose command, e.g. "docker compose"')
    parser.add_argument("--project", required=True)
    parser.add_argument("--writer-port", type=int, required=True)
    parser.add_argument("--reader-port", type=int, required=True)
    args = parser.parse_args()
    os.environ.update({"AURORA_WRITER_PORT": str(args.writer_port), "AURORA_READER_PORT": str(args.reader_port)})
    cluster = Cluster(shlex.split(args.compose), args.project, args.writer_port, args.reader_port)
    workload = None
    timings = {}
    status = 1
    passed = 0
    try:
        step_up(cluster)
        passed += 1
        workload = step_workload(cluster)
        passed += 1
        old_writer, new_writer, timings["failover_s"] = step_kill_writer(cluster, workload)
        passed += 1
        step_kill_az(cluster, workload)
        passed += 1
        timings["stall_s"] = step_stall(cluster, workload)
        passed += 1
        step_restore_az(cluster)
        passed += 1
        step_old_writer(cluster, workload, old_writer, new_writer)
        passed += 1
        step_verify(cluster, workload)
        passed += 1
        status = 0
    except Failed as failure:
        log(f"FAILED: {failure}")
        cluster.diagnostics()
    except KeyboardInterrupt:
        log("interrupted")
    finally:
        if workload is not None:
            workload.stopping.set()  # a client still waiting for a commit is a daemon thread: not waited for
        started = time.monotonic()
        cluster.compose("down", "-v", check_status=False)
        log(f"docker compose down -v ({time.monotonic() - started:.1f} s)")
    summary = ", ".join(f"{name} {value:.2f}" for name, value in timings.items())
    log(f"{'PASSED' if status == 0 else 'FAILED'} ({summary})")
    print(f"compose-e2e: {passed} passed, {0 if status == 0 else 1} failed", flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
