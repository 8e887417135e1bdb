"""A live storage node's CPU per append request over TCP: what a request costs on its own, and
what each record adds.

Starts one storage-node process (`aurora-db storage-node`, its data in a scratch directory),
raises it to epoch 1, then sends it `--requests` append_many requests at a steady `--rate` per
second on one connection, as the writer's link does, for each `--records` count in turn (a fresh
node each time). Every request is fsynced and answered, as under load. Prints the node's user and
system CPU per request (from /proc, so Linux only) and the rate it kept up with: the least of
`--repeats` runs, since the node's background work (coalescing, scrubbing) lands in some runs and
not others. The difference between two record counts is the cost of the records; what is left at
one record is the request's own: the round trip, the event loop's turns, the group fsync.

    .venv/bin/python -m benchmarks.storage_request_cost [--rate 400] [--requests 4000]
        [--records 1 8 30] [--repeats 3] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time

from aurora_db import storage_protocol as sp
from aurora_db.constants import FRAME_BYTES_MAX
from aurora_db.framing import FrameDecoder, encode_frame
from benchmarks.commit_latency import free_port, process_cpu_ticks
from benchmarks.storage_append_path import requests

START_TIMEOUT_S = 20


async def _connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        try:
            return await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


async def _drive(pid: int, port: int, frames: list[bytes], rate: int) -> dict[str, float]:
    """Send frames[0] (the page inits) and wait for its reply, then the rest at `rate` per second;
    the CPU counted is the node's from the first timed request to the last reply."""
    reader, writer = await _connect(port)
    decoder = FrameDecoder(FRAME_BYTES_MAX)

    async def replies(count: int) -> None:
        while count:
            data = await reader.read(1 << 16)
            if not data:
                raise ConnectionError("the storage node closed the connection")
            for reply in decoder.feed(data):
                if not reply.get("ok"):
                    raise RuntimeError(f"the storage node refused a request: {reply}")
                count -= 1

    writer.write(encode_frame({"id": 0, "t": sp.SET_EPOCH, "epoch": 1}) + frames[0])
    await replies(2)
    timed = frames[1:]
    answered = asyncio.create_task(replies(len(timed)))
    ticks_before, started = process_cpu_ticks(pid), time.perf_counter()
    for index, frame in enumerate(timed):
        delay = started + index / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        writer.write(frame)
    await answered
    ticks_after, elapsed = process_cpu_ticks(pid), time.perf_counter() - started
    writer.close()
    us_per_tick = 1e6 / os.sysconf("SC_CLK_TCK")
    return {"user_us": round((ticks_after[0] - ticks_before[0]) * us_per_tick / len(timed), 1),
            "system_us": round((ticks_after[1] - ticks_before[1]) * us_per_tick / len(timed), 1),
            "rate_kept": round(len(timed) / elapsed)}


def measure(records_each: int, count: int, rate: int) -> dict[str, float]:
    frames = requests(count, records_each)
    port = free_port()
    with tempfile.TemporaryDirectory() as data_dir:
        node = subprocess.Popen([sys.executable, "-m", "aurora_db.cli", "storage-node", "--node-id", "a1",
                                 "--az", "a", "--listen", f"127.0.0.1:{port}", "--data", data_dir],
                                stderr=subprocess.DEVNULL)
        try:
            return asyncio.run(_drive(node.pid, port, frames, rate))
        finally:
            node.terminate()
            node.wait(timeout=START_TIMEOUT_S)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=int, default=400, help="requests per second")
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--records", type=int, nargs="+", default=[1, 8, 30], help="records per request")
    parser.add_argument("--repeats", type=int, default=3, help="runs per record count; the least is kept")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results = {records: min((measure(records, args.requests, args.rate) for _ in range(args.repeats)),
                            key=lambda figures: figures["user_us"] + figures["system_us"])
               for records in args.records}
    if args.json:
        print(json.dumps({"rate": args.rate, "requests": args.requests, "cpu_per_request": results}))
        return
    print(f"one storage node, {args.requests} append_many requests at {args.rate}/s, fsync on, "
          f"the least of {args.repeats} runs:")
    for records, figures in results.items():
        print(f"  {records:3d} records: user {figures['user_us']:6.1f} us, system {figures['system_us']:6.1f} us "
              f"per request (kept {figures['rate_kept']}/s)")


if __name__ == "__main__":
    main()
