"""The nemesis: faults on a schedule drawn from a seed, injected into a real local cluster.

`plan_faults` is pure: the same seed, length and storage node ids give the same schedule. Faults
never overlap: each one is injected, held for its duration, then healed, and the next starts after
a quiet gap, so the database is always given the chance to recover and every fault of the plan
ends before the run does. Targets that depend on the cluster's state (which compute node is the
writer now) are resolved when the fault is injected, and the log records the node it hit.

Kinds: kill -9 and restart of the writer, of a reader, of one to three storage nodes; SIGSTOP and
SIGCONT of any one node (storage, compute or the proxy); a planned switchover.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import signal
import time

from aurora_db.cluster import ROLE_READER, ROLE_WRITER, ask_statuses, load_layout
from aurora_db.local_cluster import ClusterCommandFailed, LiveCluster

log = logging.getLogger(__name__)

KILL_WRITER = "kill-writer"
KILL_READER = "kill-reader"
KILL_STORAGE = "kill-storage"
PAUSE = "pause"
SWITCHOVER = "switchover"
FAULT_KINDS = (KILL_WRITER, KILL_READER, KILL_STORAGE, PAUSE, SWITCHOVER)
FAULTS_NEEDING_A_READER = (KILL_READER, SWITCHOVER)

QUIET_S = (2.0, 5.0)  # between a fault's heal and the next fault
HOLD_S = (1.0, 6.0)  # how long a node stays dead or paused
HEAL_TRIES_MAX = 3  # `aurora-db up` attempts to bring every node back after a fault
STORAGE_KILLED_MAX = 3  # three of six: commits wait, nothing acknowledged is lost
TAIL_S = 3.0  # no fault starts this close to the end of the run
PAUSE_TARGETS = ("writer", "reader", "proxy", "storage")


class HealFailed(Exception):
    """The cluster could not be brought back: the run cannot go on."""


@dataclasses.dataclass(frozen=True, slots=True)
class Fault:
    """One planned fault. `storage` names the storage nodes of a kill-storage or a storage pause;
    `role` the compute role or the proxy a pause hits."""
    at_s: float
    kind: str
    hold_s: float
    storage: tuple[str, ...] = ()
    role: str | None = None

    def describe(self) -> str:
        target = ",".join(self.storage) or self.role or ""
        return f"{self.kind}{' ' + target if target else ''}"


def plan_faults(seed: int, seconds: float, storage_ids: list[str], kinds: tuple[str, ...] = FAULT_KINDS,
                readers: int = 1) -> list[Fault]:
    """The schedule for a run of `seconds`: non-overlapping faults, each healed before the next."""
    rng = random.Random(seed)
    allowed = [kind for kind in kinds if readers > 0 or kind not in FAULTS_NEEDING_A_READER]
    faults: list[Fault] = []
    at_s = rng.uniform(*QUIET_S)
    while allowed and at_s < seconds - TAIL_S:
        kind = rng.choice(allowed)
        hold_s = 0.0 if kind == SWITCHOVER else min(rng.uniform(*HOLD_S), max(0.0, seconds - TAIL_S - at_s))
        storage: tuple[str, ...] = ()
        role = None
        if kind == KILL_STORAGE:
            storage = tuple(sorted(rng.sample(storage_ids, rng.randint(1, STORAGE_KILLED_MAX))))
        elif kind == PAUSE:
            role = rng.choice([target for target in PAUSE_TARGETS if readers > 0 or target != "reader"])
            if role == "storage":
                storage, role = (rng.choice(storage_ids),), None
        faults.append(Fault(round(at_s, 3), kind, round(hold_s, 3), storage, role))
        at_s += hold_s + rng.uniform(*QUIET_S)
    return faults


@dataclasses.dataclass(slots=True)
class FaultRecord:
    """What the nemesis did: times in seconds since the run started (monotonic clock)."""
    kind: str
    nodes: list[str]
    injected_s: float
    healed_s: float | None = None
    error: str | None = None

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


class Nemesis:
    """Runs a plan against a LiveCluster. Blocking cluster commands run in threads, so the
    workload's clients keep going while a node restarts."""

    def __init__(self, cluster: LiveCluster, plan: list[Fault], started_ns: int):
        self.cluster = cluster
        self.plan = plan
        self.started_ns = started_ns
        self.records: list[FaultRecord] = []
        self._paused: set[str] = set()

    def _now_s(self) -> float:
        return (time.monotonic_ns() - self.started_ns) / 1e9

    async def run(self) -> None:
        for fault in self.plan:
            await asyncio.sleep(max(0.0, fault.at_s - self._now_s()))
            record = FaultRecord(fault.describe(), [], round(self._now_s(), 3))
            self.records.append(record)
            try:
                await self._inject(fault, record)
            except Exception as error:  # a fault that could not be injected is reported, not fatal
                record.error = f"{type(error).__name__}: {error}"
                log.warning("nemesis: %s failed: %s", fault.describe(), record.error)
            await self.heal()
            record.healed_s = round(self._now_s(), 3)

    async def _inject(self, fault: Fault, record: FaultRecord) -> None:
        if fault.kind == SWITCHOVER:
            done = await asyncio.to_thread(self.cluster.failover)
            record.nodes = [await asyncio.to_thread(self._current, ROLE_WRITER) or "?"]
            if done.returncode != 0:
                record.error = (done.stderr or done.stdout).strip()[-300:]
            return
        nodes = list(fault.storage) if fault.storage else [await asyncio.to_thread(self._target, fault)]
        record.nodes = nodes
        signum = signal.SIGSTOP if fault.kind == PAUSE else signal.SIGKILL
        for node_id in nodes:
            await asyncio.to_thread(self.cluster.kill, node_id, signum)
            if signum == signal.SIGSTOP:
                self._paused.add(node_id)
        await asyncio.sleep(fault.hold_s)

    def _target(self, fault: Fault) -> str:
        role = {KILL_WRITER: ROLE_WRITER, KILL_READER: ROLE_READER}.get(fault.kind, fault.role)
        if role == "proxy":
            return load_layout(self.cluster.directory).proxy.node_id
        node_id = self._current(role)
        if node_id is None:
            raise RuntimeError(f"no running compute node is a {role} now")
        return node_id

    def _current(self, role: str) -> str | None:
        """A compute node that reports `role` now (the first in the layout's order)."""
        layout = load_layout(self.cluster.directory)
        replies = ask_statuses(layout.compute_nodes)
        return next((node_id for node_id, reply in replies.items() if reply and reply.get("role") == role), None)

    async def heal(self) -> None:
        """SIGCONT every paused node, then start whatever is not running (`aurora-db up`)."""
        for node_id in sorted(self._paused):
            await asyncio.to_thread(self.cluster.kill, node_id, signal.SIGCONT)
        self._paused.clear()
        for attempt in range(1, HEAL_TRIES_MAX + 1):
            try:
                await asyncio.to_thread(self.cluster.up)
                return
            except ClusterCommandFailed as error:
                log.warning("nemesis: restart attempt %d failed: %s", attempt, error)
        raise HealFailed(f"the cluster did not come back after {HEAL_TRIES_MAX} attempts of aurora-db up")
