"""`aurora-db torture`: run workloads against a real cluster under a nemesis, then check them.

For each workload in turn: create its table, run `--clients` clients for `--seconds` while the
nemesis injects its planned faults, heal the cluster (every node running, none paused), perform the
workload's final reads (retried until they succeed; every attempt is in the history), and check
the history. The output directory gets one history file per workload (JSON lines) and
`results.json`; the exit status is 0 only when every verdict is valid.

Invariants: the cluster is healed before any final read; a cluster this command started is
stopped and removed on the way out (kept with --keep); every fault injected is in the results.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

import psycopg

from aurora_db.cluster import reader_url, writer_url
from aurora_db.local_cluster import STORAGE_NODE_IDS, LiveCluster
from aurora_db.torture.client import Connections, Progress, Rejected, outcome_of
from aurora_db.torture.history import FAIL, INFO, OK, History, counts
from aurora_db.torture.nemesis import FAULT_KINDS, Nemesis, plan_faults
from aurora_db.torture.workloads import WORKLOADS, Workload

log = logging.getLogger(__name__)

CLIENTS_DEFAULT = 5
SECONDS_DEFAULT = 60
READERS_DEFAULT = 1
OPERATION_TIMEOUT_S = 20  # longer than a quorum outage the nemesis makes; then the outcome is unknown
RETRY_PAUSE_S = 0.2  # after a failed operation, before the client's next one
SETUP_TIMEOUT_S = 120
FINAL_READ_TIMEOUT_S = 180  # the healed cluster has this long to answer the final reads
FINAL_READ_PROCESS = 1_000_000  # the final reads' process numbers start here, apart from the clients'
EXIT_OK, EXIT_CHECK_FAILED, EXIT_ERROR = 0, 1, 2


@dataclasses.dataclass(slots=True)
class Settings:
    seconds: float
    seed: int
    workloads: list[str]
    clients: int
    readers: int
    faults: tuple[str, ...]
    output: Path
    data: Path | None
    keep: bool


async def _attempt(workload: Workload, connections: Connections, history: History, process: int, f: str,
                   value) -> tuple[str, bool]:
    """One operation, recorded in the history: (its outcome, whether the connections broke). After
    anything but success or an expected refusal, the connections are dropped."""
    history.invoke(process, f, value)
    progress = Progress()
    try:
        async with asyncio.timeout(OPERATION_TIMEOUT_S):
            result = await workload.apply(connections, f, value, progress)
    except Rejected as refusal:  # an expected refusal: the connection is clean
        history.complete(process, FAIL, value, refusal.reason)
        return FAIL, False
    except Exception as error:
        type_, text = outcome_of(error, progress)
        history.complete(process, type_, value, text)
        await connections.drop()
        return type_, True
    history.complete(process, OK, result)
    return OK, False


async def _client(workload: Workload, connections: Connections, history: History, index: int, clients: int,
                  rng: random.Random, deadline: float) -> None:
    """One client: operations back to back until the deadline. After an operation of unknown
    outcome the client goes on as a new process (Jepsen's rule), since the old one may still act."""
    process = index
    while time.monotonic() < deadline:
        f, value = workload.generate(rng)
        type_, broke = await _attempt(workload, connections, history, process, f, value)
        if type_ == INFO:
            process += clients
        if broke:
            await asyncio.sleep(RETRY_PAUSE_S)


async def _final_reads(workload: Workload, connections: Connections, history: History, process: int) -> None:
    """Each final operation, tried until it succeeds (each try is its own process)."""
    deadline = time.monotonic() + FINAL_READ_TIMEOUT_S
    for f, value in workload.final_operations():
        while (await _attempt(workload, connections, history, process, f, value))[0] != OK:
            process += 1
            if time.monotonic() > deadline:
                raise RuntimeError(f"the final read did not succeed within {FINAL_READ_TIMEOUT_S} s: "
                                   f"{history.events[-1].get('error')}")
            await asyncio.sleep(RETRY_PAUSE_S)


async def _setup(workload: Workload, url: str) -> None:
    deadline = time.monotonic() + SETUP_TIMEOUT_S
    while True:
        try:
            async with await psycopg.AsyncConnection.connect(url, autocommit=True, connect_timeout=5) as connection:
                for statement in workload.setup_statements:
                    await connection.execute(statement)
            return
        except psycopg.Error as error:
            if time.monotonic() > deadline:
                raise
            log.info("setting up %s: %s; retrying", workload.name, error)
            await asyncio.sleep(1)


async def run_workload(cluster: LiveCluster, name: str, settings: Settings, out) -> dict:
    workload = WORKLOADS[name]()
    await _setup(workload, writer_url(cluster.port))
    seed = random.Random(f"{settings.seed}/{name}").randrange(2**63)
    plan = plan_faults(seed, settings.seconds, list(STORAGE_NODE_IDS), settings.faults, settings.readers)
    history = History()
    started_ns = time.monotonic_ns()
    deadline = time.monotonic() + settings.seconds
    nemesis = Nemesis(cluster, plan, started_ns)
    nemesis_task = asyncio.create_task(nemesis.run())
    reader = reader_url(cluster.port) if settings.readers else None
    pools = [Connections(writer_url(cluster.port), reader) for _ in range(settings.clients)]
    await asyncio.gather(*(_client(workload, pools[index], history, index, settings.clients,
                                   random.Random(f"{seed}/{index}"), deadline)
                           for index in range(settings.clients)))
    await nemesis_task
    await nemesis.heal()
    for pool in pools:
        await pool.drop()
    final = Connections(writer_url(cluster.port), None)
    try:
        await _final_reads(workload, final, history, FINAL_READ_PROCESS)
    finally:
        await final.drop()
    elapsed_s = (time.monotonic_ns() - started_ns) / 1e9
    verdict = await asyncio.to_thread(workload.check, history.events)
    history_path = settings.output / f"{name}-history.jsonl"
    history.write(history_path)
    result = {"workload": name, "valid": verdict.get("valid"), "seconds": round(elapsed_s, 1),
              "operations": counts(history.events), "faults": [record.to_json() for record in nemesis.records],
              "verdict": verdict, "history": str(history_path)}
    _print_result(result, out)
    return result


def _print_result(result: dict, out) -> None:
    valid = result["valid"]
    word = "valid" if valid else "INVALID" if valid is False else "UNKNOWN"
    tally = result["operations"]
    out.write(f"{result['workload']}: {word}  ({tally['ok']} ok, {tally['fail']} fail, {tally['info']} info; "
              f"{len(result['faults'])} faults; {result['seconds']} s)\n")
    for record in result["faults"]:
        healed = f"healed at {record['healed_s']:.1f} s" if record["healed_s"] is not None else "not healed"
        error = f"  [{record['error']}]" if record["error"] else ""
        out.write(f"    {record['injected_s']:6.1f} s  {record['kind']:<24} {','.join(record['nodes']):<12} "
                  f"{healed}{error}\n")
    if not valid:
        out.write("    " + json.dumps(result["verdict"], default=str)[:2000] + "\n")
    out.flush()


async def torture(settings: Settings, out) -> int:
    settings.output.mkdir(parents=True, exist_ok=True)
    scratch = None
    if settings.data is not None:
        cluster = LiveCluster.existing(settings.data)
        settings.readers = cluster.readers
    else:
        scratch = Path(tempfile.mkdtemp(prefix="aurora-torture-"))
        cluster = LiveCluster(scratch, readers=settings.readers)
    out.write(f"torture: seed {settings.seed}, {settings.seconds:g} s per workload, {settings.clients} clients, "
              f"cluster {cluster.directory} (writer endpoint port {cluster.port}), output {settings.output}\n")
    out.flush()
    results = []
    try:
        await asyncio.to_thread(cluster.up)
        for name in settings.workloads:
            results.append(await run_workload(cluster, name, settings, out))
    finally:
        if scratch is not None:
            await asyncio.to_thread(cluster.close)
            if settings.keep:
                out.write(f"cluster data kept in {scratch}\n")
            else:
                shutil.rmtree(scratch, ignore_errors=True)
    summary = {"seed": settings.seed, "seconds_per_workload": settings.seconds, "clients": settings.clients,
               "valid": all(result["valid"] for result in results), "workloads": results}
    (settings.output / "results.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    out.write(f"torture: {'every workload is valid' if summary['valid'] else 'a CHECK FAILED'} "
              f"(seed {settings.seed}); results in {settings.output / 'results.json'}\n")
    return EXIT_OK if summary["valid"] else EXIT_CHECK_FAILED


def settings_from(args) -> Settings:
    workloads = list(WORKLOADS) if args.workload in (None, ["all"]) else args.workload
    faults = FAULT_KINDS if args.faults is None else tuple(kind for kind in args.faults.split(",") if kind)
    return Settings(seconds=args.seconds, seed=args.seed if args.seed is not None else random.randrange(2**31),
                    workloads=workloads, clients=args.clients, readers=args.readers, faults=faults,
                    output=Path(args.output or f"torture-{time.strftime('%Y%m%d-%H%M%S')}").resolve(),
                    data=Path(args.data).resolve() if args.data else None, keep=args.keep)


def run(args) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = settings_from(args)
    unknown = [kind for kind in settings.faults if kind not in FAULT_KINDS]
    if unknown:
        sys.stderr.write(f"aurora-db torture: unknown fault {unknown[0]!r}; choose from {', '.join(FAULT_KINDS)}\n")
        return EXIT_ERROR
    with contextlib.suppress(KeyboardInterrupt):
        try:
            return asyncio.run(torture(settings, sys.stdout))
        except Exception as error:
            sys.stderr.write(f"aurora-db torture: {type(error).__name__}: {error}\n")
            return EXIT_ERROR
    return EXIT_ERROR
