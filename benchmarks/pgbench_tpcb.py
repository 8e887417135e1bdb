"""pgbench's TPC-B-like workload on our cluster and on PostgreSQL 15, one after the other, in one run.

What it measures: `pgbench -i -s SCALE` (load time), then, after a warm-up run that is not
measured (`--warmup-seconds`, so both servers start with the data in memory, as PostgreSQL has it
in shared buffers and the OS cache right after the load), `pgbench -c CLIENTS -j 2 -T SECONDS -M
MODE` for each protocol mode (simple, extended, prepared): transactions per second, average
latency and failed transactions, on both servers, and the ratio ours / PostgreSQL. pgbench itself
is the client, unchanged, so this is also a test that pgbench works. Both servers commit durably
(PostgreSQL with fsync and synchronous_commit on; ours on a 4-of-6 quorum of fsynced storage
nodes). Our writer gets a buffer cache of `--cache-pages` pages (enough for scale 10). pgbench
connects to our writer's own port, past the proxy, unless `--through-proxy` sends it through the
proxy's writer endpoint, where applications connect.

    .venv/bin/python -m benchmarks.pgbench_tpcb [--scale 10] [--clients 8] [--seconds 30]
        [--through-proxy] [--json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

from benchmarks.commit_latency import aurora_cluster, log, scratch_postgres

MODES = ("simple", "extended", "prepared")
SCALE_DEFAULT = 10
CLIENTS_DEFAULT = 8
THREADS = 2
DURATION_DEFAULT_S = 30
WARMUP_DEFAULT_S = 30
CACHE_PAGES_DEFAULT = 32768
INIT_TIMEOUT_S = 1800
RUN_GRACE_S = 120  # beyond the run's own duration, before pgbench is presumed stuck
# Where pgbench connects to our cluster, by --through-proxy: the JSON's name, and the printed one.
ENDPOINTS = {False: ("writer", "the writer's own port"), True: ("proxy", "the proxy's writer endpoint")}

_TPS = re.compile(r"^tps = ([0-9.]+)", re.M)
_LATENCY = re.compile(r"^latency average = ([0-9.]+) ms", re.M)
_FAILED = re.compile(r"^number of failed transactions: (\d+)", re.M)
_PROCESSED = re.compile(r"^number of transactions actually processed: (\d+)", re.M)


@dataclasses.dataclass
class ModeResult:
    mode: str
    tps: float
    latency_ms: float
    processed: int
    failed: int


def pgbench_arguments(url: str) -> list[str]:
    parts = urlsplit(url)
    return ["-h", parts.hostname, "-p", str(parts.port), "-U", parts.username or "postgres", parts.path.lstrip("/")]


def run_pgbench(arguments: list[str], timeout_s: float) -> str:
    completed = subprocess.run(["pgbench", *arguments], capture_output=True, text=True, timeout=timeout_s)
    if completed.returncode != 0:
        raise RuntimeError(f"pgbench {' '.join(arguments)} failed ({completed.returncode}):\n"
                           f"{completed.stdout[-2000:]}{completed.stderr[-2000:]}")
    return completed.stdout + completed.stderr


def initialize(url: str, scale: int) -> float:
    output = run_pgbench(["-i", "-s", str(scale), *pgbench_arguments(url)], INIT_TIMEOUT_S)
    match = re.search(r"done in ([0-9.]+) s", output)
    return float(match.group(1)) if match else float("nan")


def run_mode(url: str, mode: str, clients: int, seconds: int) -> ModeResult:
    output = run_pgbench(["-c", str(clients), "-j", str(THREADS), "-T", str(seconds), "-M", mode, "-n",
                          *pgbench_arguments(url)], seconds + RUN_GRACE_S)
    failed = _FAILED.search(output)
    return ModeResult(mode, float(_TPS.search(output).group(1)), float(_LATENCY.search(output).group(1)),
                      int(_PROCESSED.search(output).group(1)), int(failed.group(1)) if failed else 0)


def measure(url: str, name: str, scale: int, clients: int, seconds: int, warmup_s: int) -> dict:
    log(f"{name}: pgbench -i -s {scale}")
    init_s = initialize(url, scale)
    if warmup_s:
        log(f"{name}: warm-up, pgbench -M prepared, {clients} clients, {warmup_s} s (not measured)")
        run_mode(url, "prepared", clients, warmup_s)
    modes = []
    for mode in MODES:
        log(f"{name}: pgbench -M {mode}, {clients} clients, {seconds} s")
        modes.append(run_mode(url, mode, clients, seconds))
    return {"init_s": init_s, "modes": {m.mode: dataclasses.asdict(m) for m in modes}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=int, default=SCALE_DEFAULT)
    parser.add_argument("--clients", type=int, default=CLIENTS_DEFAULT)
    parser.add_argument("--seconds", type=int, default=DURATION_DEFAULT_S)
    parser.add_argument("--warmup-seconds", type=int, default=WARMUP_DEFAULT_S)
    parser.add_argument("--cache-pages", type=int, default=CACHE_PAGES_DEFAULT, help="our writer's buffer cache")
    parser.add_argument("--through-proxy", action="store_true",
                        help="connect to our proxy's writer endpoint instead of the writer's own port")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if shutil.which("pgbench") is None:
        print("pgbench is not installed", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="pgbench-tpcb-") as temp:
        base = Path(temp)
        with aurora_cluster(base, cache_pages=args.cache_pages) as cluster:
            url = cluster.proxy_url if args.through_proxy else cluster.url
            ours = measure(url, "ours", args.scale, args.clients, args.seconds, args.warmup_seconds)
        with scratch_postgres(base) as postgres_url:
            postgres = measure(postgres_url, "PostgreSQL", args.scale, args.clients, args.seconds,
                               args.warmup_seconds)
    result = {"scale": args.scale, "clients": args.clients, "seconds": args.seconds,
              "warmup_seconds": args.warmup_seconds, "cache_pages": args.cache_pages,
              "endpoint": ENDPOINTS[args.through_proxy][0], "ours": ours,
              "postgres": postgres,
              "ratio_tps": {mode: ours["modes"][mode]["tps"] / postgres["modes"][mode]["tps"] for mode in MODES}}
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"pgbench TPC-B, scale {args.scale}, {args.clients} clients, {args.seconds} s per mode, "
          f"ours on {ENDPOINTS[args.through_proxy][1]}")
    print(f"{'':10} {'ours tps':>10} {'lat ms':>8} {'failed':>7} {'pg tps':>10} {'lat ms':>8} {'ratio':>7}")
    for mode in MODES:
        o, p = ours["modes"][mode], postgres["modes"][mode]
        print(f"{mode:10} {o['tps']:10.1f} {o['latency_ms']:8.2f} {o['failed']:7d} {p['tps']:10.1f} "
              f"{p['latency_ms']:8.2f} {result['ratio_tps'][mode]:7.3f}")
    print(f"init: ours {ours['init_s']:.1f} s, PostgreSQL {postgres['init_s']:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
