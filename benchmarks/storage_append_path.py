"""A storage node's CPU per append, in-process: the sans-I/O path every record takes on each of
the six nodes, without sockets or fsync.

Feeds a Node (with its real log files, in a scratch directory) `--requests` append_many requests
shaped like pgbench's: `--records` records each, spread over four PGs. Each request goes through
what the server does with it: decode the frame, Node.step (validate, verify checksums, decode
records), Node.ready, write the log (fdatasync replaced by nothing: this measures CPU), Node.advance
(chain the records into their segments), encode the reply. Prints microseconds per request for
each phase and in all, the best of `--repeats` runs (the least disturbed by other processes).
Then the scrubber's checksum pass (log_file.damaged_entries) over the log files the run wrote:
microseconds per entry.

    .venv/bin/python -m benchmarks.storage_append_path [--requests 2000] [--repeats 5] [--records 10] [--json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from aurora_db import storage_protocol as sp
from aurora_db.constants import PAGES_PER_PG
from aurora_db.framing import decode_body, encode_frame
from storage_node.log_file import damaged_entries
from storage_node.server import LOG_DIR, Disk, _reply_frame
from tests.record_builder import RecordBuilder

PGS = 4
ROW = [12345, 7, -4321, " " * 84]  # a pgbench_accounts row


def requests(count: int, records_each: int) -> list[bytes]:
    """The frames: page inits first, then HOT updates round-robin over one page of each PG."""
    builder = RecordBuilder()
    pages = [PAGES_PER_PG * pg + 5 for pg in range(PGS)]
    frames = [_frame([builder.heap_init(page) for page in pages], 0)]
    for request_id in range(1, count + 1):
        records = [builder.record(pages[i % PGS], "heap_hot_update", (i, 1000 + request_id, i + 1, ROW))
                   for i in range(records_each)]
        frames.append(_frame(records, request_id))
    return frames


def _frame(records, request_id: int) -> bytes:
    by_pg: dict[int, list] = {}
    for record in records:
        by_pg.setdefault(record.pg, []).append(list(record.sealed()))
    return encode_frame({"id": request_id, "t": sp.APPEND_MANY, "epoch": 1,
                         "batches": [[pg, sealed] for pg, sealed in by_pg.items()]})


def run_once(frames: list[bytes]) -> dict[str, float]:
    """Seconds of CPU per phase over all frames, and per log entry of the scrubber's pass."""
    with tempfile.TemporaryDirectory() as scratch:
        disk = Disk(Path(scratch))
        node = disk.open("a1", "a")
        disk.log.sync = lambda: None  # CPU only
        phases = dict.fromkeys(("step", "persist", "advance", "frames"), 0.0)
        clock = time.process_time
        try:
            for frame in frames:
                t0 = clock()
                request = decode_body(frame[4:])
                t1 = clock()
                assert node.step(request, "token") is None
                t2 = clock()
                ready = node.ready()
                disk.persist(ready)
                t3 = clock()
                replies = node.advance(ready)
                t4 = clock()
                for _, reply in replies:
                    _reply_frame(reply)
                t5 = clock()
                phases["frames"] += (t1 - t0) + (t5 - t4)
                phases["step"] += t2 - t1
                phases["persist"] += t3 - t2
                phases["advance"] += t4 - t3
            log_bytes = [path.read_bytes() for path in sorted((Path(scratch) / LOG_DIR).iterdir())]
            t0 = clock()
            for data in log_bytes:
                assert damaged_entries(data) == 0
            scrub_s = clock() - t0
            entries = sum(len(lsns) for contents in disk.log.contents.values() for lsns in contents.lsns_by_pg.values())
            phases["scrub_per_entry"] = scrub_s / entries
        finally:
            disk.close()
    return phases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--records", type=int, default=10, help="records per request")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    frames = requests(args.requests, args.records)
    runs = [run_once(frames) for _ in range(args.repeats)]
    scrub_us = round(1e6 * min(run.pop("scrub_per_entry") for run in runs), 2)
    best = min(runs, key=lambda phases: sum(phases.values()))
    per_request_us = {phase: round(1e6 * seconds / len(frames), 1) for phase, seconds in best.items()}
    per_request_us["total"] = round(sum(per_request_us.values()), 1)
    if args.json:
        print(json.dumps({"records_per_request": args.records, "us_per_request": per_request_us,
                          "scrub_us_per_entry": scrub_us}))
        return
    print(f"{args.records} records per request, best of {args.repeats} runs of {len(frames)} requests:")
    for phase, micros in per_request_us.items():
        print(f"  {phase:8s} {micros:7.1f} us")
    print(f"scrubber's checksum pass over the log written: {scrub_us:.2f} us per entry")


if __name__ == "__main__":
    main()
