"""Storage healing: restart time against log size, a long redo chain before and after coalescing,
and disk bytes per row under steady updates.

1. **Writer restart time** (kill -9 of the writer to the first commit it accepts again, through
   its own port, `aurora-db up` starting it): with the volume after `pgbench -i -s 1` (about N =
   170,000 redo records) and after `pgbench -i -s 10` (about 10 N). Compute does no redo replay,
   so the two should be alike. Then one **storage node's restart** (kill -9 to its status showing
   every SCL it had), which replays its log files: the records above its page images.
2. **A page with a long redo chain** (in-process, the storage node's own Segment and page image
   files): one page changed by `--chain` records; GetPage@LSN with the segment's page cache empty,
   before coalescing (every record applied from the page's init) and after (the image's version).
3. **Disk bytes per row under steady updates**: `pgbench -i -s 1` then `pgbench -N -n` (updates of
   pgbench_accounts plus history inserts, no VACUUM or TRUNCATE between rounds) for `--rounds`
   rounds of `--seconds` each; after each round a storage node's bytes on disk divided by the rows
   in the database, split into its page images (the database itself: every row version, since
   dead versions are not reclaimed yet) and its log files (what garbage collection bounds).
4. **Pages reused after DROP**: `pgbench -i -s 1` run `--inits` times (each drops and reloads its
   tables, VACUUM in between); after each, the pages the volume ever grew to (the writer's
   `volume_pages`) and the pages in use (`pg_database_size`).

    .venv/bin/python -m benchmarks.storage_healing [--chain 10000] [--rounds 6] [--seconds 30] [--inits 6]
        [--only restart|chain|disk|reuse] [--json]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

import psycopg

from aurora_db.cluster import load_layout, request_frame
from benchmarks.commit_latency import aurora_db, choose_cluster_port
from benchmarks.pgbench_tpcb import pgbench_arguments, run_pgbench
from storage_node.page_image import PagePayload, write_image
from storage_node.log_file import RecordEntry
from storage_node.segment import Segment
from tests.record_builder import RecordBuilder

CLUSTER_TIMEOUT_S = 300
RESTART_TRIALS = 5
SETTLE_S = 20
CHAIN_DEFAULT = 10_000
ROUNDS_DEFAULT = 6
SECONDS_DEFAULT = 30
INITS_DEFAULT = 6
PGBENCH_CLIENTS = 4
COMMIT_TIMEOUT_S = 60


def log(message: str) -> None:
    print(f"[storage_healing] {message}", file=sys.stderr, flush=True)


class ClusterRun:
    def __init__(self, data_dir: Path):
        self.data_dir = data_dir
        self.port = choose_cluster_port()

    def up(self) -> None:
        done = aurora_db("up", "--data", str(self.data_dir), "--port", str(self.port), "--readers", "0", "--detach",
                         timeout_s=CLUSTER_TIMEOUT_S)
        if done.returncode != 0:
            raise RuntimeError(f"aurora-db up failed:\n{done.stdout}{done.stderr}")

    def down(self) -> None:
        aurora_db("down", "--data", str(self.data_dir), timeout_s=CLUSTER_TIMEOUT_S)

    @property
    def writer_url(self) -> str:
        writer = load_layout(self.data_dir).writer
        return f"postgresql://postgres@127.0.0.1:{writer.port}/postgres"

    def storage_statuses(self) -> list[dict]:
        layout = load_layout(self.data_dir)
        return [request_frame(node.port, {"id": 1, "t": "status"}) or {} for node in layout.storage_nodes]

    def storage_bytes(self) -> int:
        return sum(path.stat().st_size for node in load_layout(self.data_dir).storage_nodes
                   for path in (self.data_dir / f"storage-{node.node_id}").rglob("*") if path.is_file())


# --- 1. writer restart time ---------------------------------------------------------------------


def first_commit_after_restart(cluster: ClusterRun) -> float:
    """kill -9 the writer, start it again, and time until a commit succeeds on its port."""
    writer = load_layout(cluster.data_dir).writer
    os.kill(writer.pid, signal.SIGKILL)
    killed = time.monotonic()
    cluster.up()
    deadline = killed + COMMIT_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            with psycopg.connect(cluster.writer_url, autocommit=True, connect_timeout=2) as connection:
                connection.execute("INSERT INTO restart_probe VALUES (1)")
                return time.monotonic() - killed
        except psycopg.Error:
            time.sleep(0.02)
    raise RuntimeError("the writer accepted no commit after its restart")


def storage_node_restart(cluster: ClusterRun, node_id: str = "a1") -> tuple[float, int]:
    """kill -9 a storage node, start it again, and time until it answers status with every PG's
    SCL back where it was (its log replayed: the records above its page images). Returns the
    seconds and the bytes of its log files when it was killed."""
    layout = load_layout(cluster.data_dir)
    node = next(n for n in layout.storage_nodes if n.node_id == node_id)
    reply = request_frame(node.port, {"id": 1, "t": "status"})
    if reply is None or not reply.get("ok"):
        raise RuntimeError(f"storage node {node_id} did not answer status before the kill: {reply!r}")
    before = reply["pgs"]
    log_bytes = sum(path.stat().st_size for path in (cluster.data_dir / f"storage-{node_id}" / "log").iterdir())
    os.kill(node.pid, signal.SIGKILL)
    killed = time.monotonic()
    cluster.up()
    while time.monotonic() < killed + COMMIT_TIMEOUT_S:
        status = request_frame(node.port, {"id": 1, "t": "status"}) or {}
        pgs = status.get("pgs") or {}
        if pgs and all(pgs.get(pg, 0) >= scl for pg, scl in before.items()):
            return time.monotonic() - killed, log_bytes
        time.sleep(0.02)
    raise RuntimeError(f"storage node {node_id} did not come back with its segments")


def last_recovery_s(cluster: ClusterRun) -> float | None:
    """From the writer's log: its first line after its last start to "writer ready" (recovery and
    opening the volume; Python's start-up comes before the first line)."""
    text = (cluster.data_dir / load_layout(cluster.data_dir).writer.log_file).read_text(errors="replace")
    header = text.rfind("=== ")
    first = text.find("\n", header) + 1
    ready = text.find("writer ready on", first)
    if header < 0 or ready < 0:
        return None
    line_start = text.rfind("\n", 0, ready) + 1

    def stamp(at: int) -> datetime.datetime:
        return datetime.datetime.strptime(text[at:at + 23], "%Y-%m-%d %H:%M:%S,%f")

    return (stamp(line_start) - stamp(first)).total_seconds()


def log_records(cluster: ClusterRun) -> int:
    """Redo records the volume has allocated so far: the highest SCL (every LSN is one record)."""
    return max((max(status.get("pgs", {}).values(), default=0) for status in cluster.storage_statuses()), default=0)


def restart_times(base: Path) -> list[dict]:
    results = []
    cluster = ClusterRun(base / "restart")
    cluster.up()
    try:
        with psycopg.connect(cluster.writer_url, autocommit=True) as connection:
            connection.execute("CREATE TABLE restart_probe (n int)")
        for scale in (1, 10):
            log(f"pgbench -i -s {scale}")
            run_pgbench(["-i", "-s", str(scale), "-q", *pgbench_arguments(cluster.writer_url)], CLUSTER_TIMEOUT_S * 4)
            records = log_records(cluster)
            time.sleep(SETTLE_S)  # the storage nodes coalesce what the load wrote
            times, recoveries = [], []
            for _ in range(RESTART_TRIALS):
                times.append(first_commit_after_restart(cluster))
                recoveries.append(last_recovery_s(cluster))
            storage_s, storage_log_bytes = storage_node_restart(cluster)
            results.append({"scale": scale, "log_records": records, "restart_s": times,
                            "restart_median_s": statistics.median(times), "log_start_to_ready_s": recoveries,
                            "storage_node_restart_s": storage_s, "storage_node_log_bytes": storage_log_bytes})
            log(f"log of {records} records: restart {', '.join(f'{t:.2f}' for t in times)} s "
                f"(first log line to writer ready: {', '.join(f'{t:.2f}' for t in recoveries if t)} s); "
                f"storage node a1 with {storage_log_bytes / 1e6:.1f} MB of log back in {storage_s:.2f} s")
    finally:
        cluster.down()
    return results


# --- 2. a long redo chain --------------------------------------------------------------------


def long_chain(base: Path, chain: int) -> dict:
    builder = RecordBuilder()
    page_id = 1
    records = [builder.heap_init(page_id)]
    records += [builder.heap_insert(page_id, [n, "x" * 20]) for n in range(100)]
    records += [builder.heap_set_xmax(page_id, n % 100, n + 2) for n in range(chain - len(records))]
    segment = Segment(0, cache_pages_max=1)
    segment.add([RecordEntry.from_sealed(*record.sealed()) for record in records])
    other_page = 2
    segment.add([RecordEntry.from_sealed(*builder.heap_init(other_page).sealed())])

    def cold_read_ms(samples: int = 7) -> float:
        times = []
        for _ in range(samples):
            segment.get_page(other_page, segment.scl)  # evicts the page from the one-page cache
            started = time.perf_counter_ns()
            page = segment.get_page(page_id, segment.scl)
            times.append((time.perf_counter_ns() - started) / 1e6)
            assert page.lsn == records[-1].lsn
        return statistics.median(times)

    before_ms = cold_read_ms()
    new_base = segment.coalesce_point(segment.scl)
    payloads = [PagePayload.of_page(segment.get_page(p, new_base)) for p in segment.pages_changed(new_base)]
    segment.rebase(write_image(base / "pages", 0, new_base, 0, payloads))
    after_ms = cold_read_ms()
    log(f"page with {chain} records: cold GetPage {before_ms:.2f} ms before coalescing, {after_ms:.3f} ms after")
    return {"chain_records": chain, "before_ms": before_ms, "after_ms": after_ms}


# --- 3. disk bytes per row --------------------------------------------------------------------


def disk_per_row(base: Path, rounds: int, seconds: int) -> list[dict]:
    cluster = ClusterRun(base / "disk")
    cluster.up()
    samples = []
    try:
        run_pgbench(["-i", "-s", "1", "-q", *pgbench_arguments(cluster.writer_url)], CLUSTER_TIMEOUT_S)
        updates = 0
        for round_number in range(rounds + 1):
            if round_number:
                output = run_pgbench(["-N", "-n", "-c", str(PGBENCH_CLIENTS), "-T", str(seconds),
                                      *pgbench_arguments(cluster.writer_url)], seconds + CLUSTER_TIMEOUT_S)
                updates += int(next(line.split(":")[1] for line in output.splitlines()
                                    if "number of transactions actually processed" in line).split("/")[0])
            with psycopg.connect(cluster.writer_url, autocommit=True) as connection:
                rows = sum(connection.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
                           for table in ("pgbench_accounts", "pgbench_branches", "pgbench_tellers", "pgbench_history"))
            time.sleep(2)  # one coalescing pass over what the round wrote
            total = cluster.storage_bytes() / 6
            segments = [info for status in cluster.storage_statuses() for info in (status.get("segments") or {}).values()]
            held = sum(info.get("records", 0) for info in segments) / 6
            images = sum(info.get("image_bytes", 0) for info in segments) / 6
            samples.append({"round": round_number, "updates": updates, "rows": rows, "node_disk_bytes": total,
                            "bytes_per_row": total / rows, "image_bytes_per_row": images / rows,
                            "log_bytes_per_row": (total - images) / rows, "records_in_memory": held})
            log(f"round {round_number}: {updates} update transactions, {rows} rows; per storage node "
                f"{total / 1e6:.1f} MB = {total / rows:.0f} B per row: page images {images / rows:.0f}, "
                f"log {(total - images) / rows:.0f}; {held:.0f} records held in memory")
    finally:
        cluster.down()
    return samples


def pages_reused(base: Path, inits: int) -> list[dict]:
    cluster = ClusterRun(base / "reuse")
    cluster.up()
    samples = []
    try:
        for run in range(1, inits + 1):
            run_pgbench(["-i", "-s", "1", "-q", *pgbench_arguments(cluster.writer_url)], CLUSTER_TIMEOUT_S)
            with psycopg.connect(cluster.writer_url, autocommit=True) as connection:
                in_use = connection.execute("SELECT pg_database_size('postgres')").fetchone()[0] // 8192
                writer = load_layout(cluster.data_dir).writer
                volume = request_frame(writer.admin_port, {"id": 1, "t": "status"})["volume_pages"]
            samples.append({"run": run, "volume_pages": volume, "pages_in_use": in_use})
            log(f"after pgbench -i run {run}: the volume grew to {volume} pages, {in_use} in use")
    finally:
        cluster.down()
    return samples


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--chain", type=int, default=CHAIN_DEFAULT)
    parser.add_argument("--rounds", type=int, default=ROUNDS_DEFAULT)
    parser.add_argument("--seconds", type=int, default=SECONDS_DEFAULT)
    parser.add_argument("--inits", type=int, default=INITS_DEFAULT)
    parser.add_argument("--only", choices=["restart", "chain", "disk", "reuse"], default=None)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="aurora-healing-"))
    results: dict = {}
    try:
        if args.only in (None, "chain"):
            results["long_chain"] = long_chain(base, args.chain)
        if args.only in (None, "restart"):
            results["restart"] = restart_times(base)
        if args.only in (None, "disk"):
            results["disk"] = disk_per_row(base, args.rounds, args.seconds)
        if args.only in (None, "reuse"):
            results["reuse"] = pages_reused(base, args.inits)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print(json.dumps(results, indent=2) if args.json else json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
