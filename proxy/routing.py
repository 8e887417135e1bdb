"""The proxy's routing core: where each endpoint's next connection goes, and when to fail over.

Sans-I/O and synchronous: health-check results, connection opens and closes, promote and demote
replies and ticks come in, each with the time; actions come out (promote, demote, close
connections, report) for the asyncio shell in proxy/server.py to carry out. DESIGN.md 6: "The
proxy performs failover: it detects a dead writer by health checks, promotes the reader with the
highest applied LSN, and points the writer endpoint at it."
Invariants: a node is down after `failure_threshold` consecutive failed checks and up again after
one success; the writer endpoint points only at an up node that itself reports role writer, the one
with the highest epoch; at most one promotion is in flight; a planned switchover demotes the old
writer only once the new one is promoted, so there is never a moment without a writer able to commit.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Iterable, Union

FAILURE_THRESHOLD_DEFAULT = 3
HEALTH_INTERVAL_MS_DEFAULT = 300
REPLICA_LAG_MS_MAX_DEFAULT = 1000
PROMOTION_TIER_DEFAULT = 1  # what a node that does not report its tier counts as
FAILOVERS_KEPT_MAX = 100  # finished failovers remembered for the admin status; older ones are dropped
LSN_UNKNOWN = -1

ROLE_WRITER = "writer"
ROLE_READER = "reader"
ROLE_PROMOTING = "promoting"
ROLE_RECOVERING = "recovering"
ROLES_BECOMING_WRITER = (ROLE_PROMOTING, ROLE_RECOVERING)  # while one is up, nothing else is promoted


class Health(enum.Enum):
    UNKNOWN = "unknown"  # no check has answered yet, and fewer than failure_threshold failed
    UP = "up"
    DOWN = "down"


class Endpoint(enum.Enum):
    WRITER = "writer"
    READER = "reader"


class FailoverKind(enum.Enum):
    AUTOMATIC = "automatic"  # the writer was lost
    PLANNED = "planned"  # an operator asked for a switchover


class FailoverRefused(Exception):
    """A planned switchover that cannot start now; the message says why."""


@dataclasses.dataclass(frozen=True)
class RoutingConfig:
    failure_threshold: int = FAILURE_THRESHOLD_DEFAULT  # consecutive failed checks that make a node down
    health_interval_ms: int = HEALTH_INTERVAL_MS_DEFAULT
    replica_lag_ms_max: float = REPLICA_LAG_MS_MAX_DEFAULT  # a reader lagging more serves no new connection

    def __post_init__(self) -> None:
        if self.failure_threshold < 1:
            raise ValueError(f"failure threshold must be at least 1, not {self.failure_threshold}")
        if self.health_interval_ms <= 0:
            raise ValueError(f"health interval must be positive, not {self.health_interval_ms} ms")
        if self.replica_lag_ms_max < 0:
            raise ValueError(f"replica lag limit must not be negative, not {self.replica_lag_ms_max} ms")

    @property
    def writer_grace_ms(self) -> int:
        """How long no node may report role writer before a failover, when no known writer went down."""
        return self.failure_threshold * self.health_interval_ms


# ----------------------------------------------------------------------------------------------
# Actions: what the shell is to do
# ----------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Promote:
    node_id: str


@dataclasses.dataclass(frozen=True)
class Demote:
    node_id: str


@dataclasses.dataclass(frozen=True)
class CloseConnections:
    """Close every client connection this endpoint routed to the node."""

    node_id: str
    endpoint: Endpoint


@dataclasses.dataclass(frozen=True)
class WriterMoved:
    old: str | None
    new: str | None


@dataclasses.dataclass(frozen=True)
class FailoverStarted:
    kind: FailoverKind
    old_writer: str | None
    reason: str


@dataclasses.dataclass(frozen=True)
class NoCandidate:
    """A failover is due but no healthy reader can be promoted; reported once per failover."""

    old_writer: str | None


@dataclasses.dataclass(frozen=True)
class PromotionFailed:
    node_id: str
    reason: str


@dataclasses.dataclass
class FailoverRecord:
    kind: FailoverKind
    old_writer: str | None
    started_ms: float  # automatic: when the writer was found lost; planned: when it was asked for
    old_writer_seen_ms: float | None = None  # the old writer's last successful check before the failover
    target: str | None = None  # planned only
    new_writer: str | None = None
    finished_ms: float | None = None
    failed_candidates: list[str] = dataclasses.field(default_factory=list)
    demote_ok: bool | None = None  # planned only: whether the old writer accepted the demotion
    awaiting_demote: str | None = None  # planned only: the old writer, until its demote reply
    excluded: set[str] = dataclasses.field(default_factory=set)  # failed this round; skipped until all have
    candidate_reported_missing: bool = False

    @property
    def duration_ms(self) -> float | None:
        return None if self.finished_ms is None else self.finished_ms - self.started_ms

    @property
    def outage_ms(self) -> float | None:
        """From the old writer's last answer to the new writer: the longest the endpoint had no writer."""
        if self.finished_ms is None or self.old_writer_seen_ms is None:
            return None
        return self.finished_ms - self.old_writer_seen_ms

    def to_json(self) -> dict:
        return {"kind": self.kind.value, "old_writer": self.old_writer, "new_writer": self.new_writer,
                "target": self.target, "started_ms": self.started_ms, "finished_ms": self.finished_ms,
                "duration_ms": self.duration_ms, "outage_ms": self.outage_ms,
                "failed_candidates": list(self.failed_candidates), "demote_ok": self.demote_ok}


@dataclasses.dataclass(frozen=True)
class FailoverFinished:
    record: FailoverRecord


@dataclasses.dataclass(frozen=True)
class FailoverAbandoned:
    kind: FailoverKind
    old_writer: str | None
    reason: str


Action = Union[Promote, Demote, CloseConnections, WriterMoved, FailoverStarted, NoCandidate, PromotionFailed,
               FailoverFinished, FailoverAbandoned]


# ----------------------------------------------------------------------------------------------
# The router
# ----------------------------------------------------------------------------------------------

STATUS_FIELD_TYPES = {"role": (str,), "epoch": (int,), "applied_lsn": (int,), "promotion_tier": (int,),
                      "replica_lag_ms": (int, float)}


def status_is_usable(status: dict, node_id: str) -> bool:
    """A successful reply from this very node, whose fields the router reads have the right types
    (a missing one is None); anything else counts as a failed check."""
    if not status.get("ok", True) or status.get("node_id") not in (None, node_id):
        return False
    return all(status.get(name) is None or (isinstance(status[name], types) and not isinstance(status[name], bool))
               for name, types in STATUS_FIELD_TYPES.items())


@dataclasses.dataclass
class NodeState:
    node_id: str
    health: Health = Health.UNKNOWN
    failures: int = 0  # consecutive failed checks
    status: dict | None = None  # the last status the node itself reported
    seen_ms: float | None = None  # when it last answered a check
    connections: dict[Endpoint, int] = dataclasses.field(
        default_factory=lambda: {endpoint: 0 for endpoint in Endpoint})

    def reported(self, name: str):
        return None if self.status is None else self.status.get(name)

    @property
    def role(self) -> str | None:
        return self.reported("role")

    @property
    def epoch(self) -> int | None:
        return self.reported("epoch")

    @property
    def promotion_order(self) -> tuple:
        """Lowest tier first, then the highest applied LSN, then the node id."""
        tier = self.reported("promotion_tier")
        applied = self.reported("applied_lsn")
        return (PROMOTION_TIER_DEFAULT if tier is None else tier, -(LSN_UNKNOWN if applied is None else applied),
                self.node_id)

    @property
    def open_connections(self) -> int:
        return sum(self.connections.values())


class Router:
    """The routing state of one proxy. Every method that takes `now_ms` may return actions."""

    def __init__(self, node_ids: Iterable[str], config: RoutingConfig = RoutingConfig(), now_ms: float = 0):
        ids = list(node_ids)
        assert ids and len(set(ids)) == len(ids), ids
        self.config = config
        self.nodes = {node_id: NodeState(node_id) for node_id in ids}
        self.order = sorted(ids)
        self.writer: str | None = None  # where the writer endpoint points
        self.last_writer: str | None = None  # where writer-endpoint connections were last routed
        self.writer_missing_since_ms: float | None = now_ms  # no writer is known at the start
        self.promoting: str | None = None
        self.failover: FailoverRecord | None = None  # in progress
        self.failovers: list[FailoverRecord] = []  # finished, oldest first
        self.demote_sent: set[str] = set()  # stale writers already told to demote
        self._reader_turn = 0

    # --- health ---------------------------------------------------------------------------

    def on_check(self, node_id: str, status: dict | None, now_ms: float) -> list[Action]:
        """A health check finished: the node's status reply, or None if it failed or timed out."""
        node = self.nodes[node_id]
        if status is not None and not status_is_usable(status, node_id):
            status = None  # an error, another process answering on this node's port, or nonsense
        if status is None:
            node.failures += 1
            if node.failures >= self.config.failure_threshold:
                node.health = Health.DOWN
        else:
            node.failures = 0
            node.health = Health.UP
            node.status = dict(status)
            node.seen_ms = now_ms
            if node.role != ROLE_WRITER:
                self.demote_sent.discard(node_id)
        return self.tick(now_ms)

    def tick(self, now_ms: float) -> list[Action]:
        actions: list[Action] = []
        self._update_writer(now_ms, actions)
        self._demote_stale_writers(actions)
        self._maybe_fail_over(now_ms, actions)
        return actions

    # --- connections ----------------------------------------------------------------------

    def reader_pool(self) -> list[str]:
        """Up readers whose lag is known and within the limit, by node id."""
        return [node_id for node_id in self.order if self._usable_reader(self.nodes[node_id])]

    def open_connection(self, endpoint: Endpoint, exclude: Iterable[str] = ()) -> str | None:
        """The node a new connection to `endpoint` goes to (counted as open), or None if there is none."""
        excluded = set(exclude)
        writer = self.writer if self.writer not in excluded else None
        if endpoint is Endpoint.WRITER:
            chosen = writer
        else:
            pool = [node_id for node_id in self.reader_pool() if node_id not in excluded]
            if pool:
                start = self._reader_turn % len(pool)
                rotation = pool[start:] + pool[:start]
                chosen = min(rotation, key=lambda node_id: self.nodes[node_id].open_connections)  # first of equals
                self._reader_turn += 1
            else:
                chosen = writer  # no usable reader: the writer serves reads too
        if chosen is not None:
            self.nodes[chosen].connections[endpoint] += 1
        return chosen

    def close_connection(self, node_id: str, endpoint: Endpoint) -> None:
        node = self.nodes[node_id]
        assert node.connections[endpoint] > 0, (node_id, endpoint)
        node.connections[endpoint] -= 1

    # --- promotion replies ----------------------------------------------------------------

    def on_promoted(self, node_id: str, reply: dict | None, now_ms: float) -> list[Action]:
        """The promote request to `node_id` ended: its reply, or None if there was none."""
        assert self.promoting == node_id, (self.promoting, node_id)
        self.promoting = None
        actions: list[Action] = []
        failover = self.failover
        if reply is not None and reply.get("ok") and reply.get("role", ROLE_WRITER) == ROLE_WRITER:
            node = self.nodes[node_id]
            node.health, node.failures = Health.UP, 0
            node.status = {**(node.status or {}), "role": ROLE_WRITER}
            if reply.get("epoch") is not None:
                node.status["epoch"] = reply["epoch"]
            self._update_writer(now_ms, actions)
            if failover is not None and failover.kind is FailoverKind.PLANNED:
                failover.new_writer = node_id
                if failover.old_writer is not None and failover.old_writer != node_id:
                    failover.awaiting_demote = failover.old_writer
                    self.demote_sent.add(failover.old_writer)
                    actions.append(Demote(failover.old_writer))
                else:
                    self._finish(failover, now_ms, actions)
            return actions
        reason = "no reply" if reply is None else f"{reply.get('error', 'error')}: {reply.get('message', '')}".strip()
        actions.append(PromotionFailed(node_id, reason))
        if failover is not None:
            failover.failed_candidates.append(node_id)
            failover.excluded.add(node_id)
            if failover.kind is FailoverKind.PLANNED:
                self.failover = None
                actions.append(FailoverAbandoned(failover.kind, failover.old_writer,
                                                 f"promoting {node_id} failed ({reason})"))
        self._update_writer(now_ms, actions)  # the next candidate is tried on a later tick
        return actions

    def on_demoted(self, node_id: str, reply: dict | None, now_ms: float) -> list[Action]:
        """The demote request to `node_id` ended. A node that confirms is a reader from now on (its lag
        unknown until its next check), so a switchover back to it need not wait for that check."""
        actions: list[Action] = []
        node = self.nodes[node_id]
        if reply is not None and reply.get("ok") and node.status is not None:
            node.status = {**node.status, "role": ROLE_READER, "replica_lag_ms": None}
            self.demote_sent.discard(node_id)
            self._update_writer(now_ms, actions)
        failover = self.failover
        if failover is not None and failover.awaiting_demote == node_id:
            failover.awaiting_demote = None
            failover.demote_ok = bool(reply is not None and reply.get("ok"))
            self._finish(failover, now_ms, actions)
        return actions

    # --- planned switchover ---------------------------------------------------------------

    def switch_over(self, target: str | None, now_ms: float) -> list[Action]:
        """Promote `target` (default: the best candidate), then demote the current writer."""
        if self.failover is not None:
            raise FailoverRefused(f"a {self.failover.kind.value} failover is already in progress"
                                  + (f" (promoting {self.promoting})" if self.promoting else ""))
        if self.promoting is not None:
            raise FailoverRefused(f"a promotion of {self.promoting} is still in flight")
        if target is None:
            candidates = self.candidates()
            if not candidates:
                raise FailoverRefused("no healthy reader to promote")
            target = candidates[0]
        elif target not in self.nodes:
            raise FailoverRefused(f"no compute node {target!r}; the proxy knows {', '.join(self.order)}")
        elif target == self.writer:
            raise FailoverRefused(f"{target} is already the writer")
        elif self.nodes[target].health is not Health.UP:
            raise FailoverRefused(f"{target} is not healthy ({self.nodes[target].health.value})")
        elif self.nodes[target].role != ROLE_READER:
            raise FailoverRefused(f"{target} is {self.nodes[target].role}, not a reader")
        self.failover = FailoverRecord(FailoverKind.PLANNED, self.writer, now_ms, target=target)
        self.promoting = target
        return [FailoverStarted(FailoverKind.PLANNED, self.writer, f"switchover to {target} requested"),
                Promote(target)]

    def candidates(self, exclude: Iterable[str] = ()) -> list[str]:
        """Up readers in promotion order: lowest tier, then highest applied LSN, then node id."""
        excluded = set(exclude)
        eligible = [node for node in self.nodes.values()
                    if node.health is Health.UP and node.role == ROLE_READER and node.node_id not in excluded]
        return [node.node_id for node in sorted(eligible, key=lambda node: node.promotion_order)]

    # --- the admin view -------------------------------------------------------------------

    def reader_endpoint_nodes(self) -> list[str]:
        pool = self.reader_pool()
        return pool or ([self.writer] if self.writer is not None else [])

    def snapshot(self) -> dict:
        return {"writer": self.writer, "readers": self.reader_endpoint_nodes(),
                "reader_fallback_to_writer": not self.reader_pool() and self.writer is not None,
                "promoting": self.promoting,
                "failover": None if self.failover is None else self.failover.to_json(),
                "failovers": [record.to_json() for record in self.failovers],
                "nodes": {node_id: self._node_json(node) for node_id, node in sorted(self.nodes.items())}}

    @staticmethod
    def _node_json(node: NodeState) -> dict:
        return {"health": node.health.value, "failures": node.failures, "status": node.status,
                "connections": {endpoint.value: node.connections[endpoint] for endpoint in Endpoint}}

    # --- internals ------------------------------------------------------------------------

    def _usable_reader(self, node: NodeState) -> bool:
        lag_ms = node.reported("replica_lag_ms")
        return (node.health is Health.UP and node.role == ROLE_READER and lag_ms is not None
                and lag_ms <= self.config.replica_lag_ms_max)

    def _best_writer(self) -> str | None:
        writers = [node for node in self.nodes.values() if node.health is Health.UP and node.role == ROLE_WRITER]
        if not writers:
            return None
        return min(writers, key=lambda node: (-(node.epoch if node.epoch is not None else -1), node.node_id)).node_id

    def _update_writer(self, now_ms: float, actions: list[Action]) -> None:
        best = self._best_writer()
        if best != self.writer:
            actions.append(WriterMoved(self.writer, best))
            if best is not None and self.last_writer not in (None, best):
                actions.append(CloseConnections(self.last_writer, Endpoint.WRITER))  # they would fail anyway
            self.writer = best
            if best is not None:
                self.last_writer = best
        if best is None:
            if self.writer_missing_since_ms is None:
                self.writer_missing_since_ms = now_ms
            return
        self.writer_missing_since_ms = None
        failover = self.failover
        if failover is None or failover.kind is not FailoverKind.AUTOMATIC:
            return
        if best == failover.old_writer:
            if self.promoting is None:  # it came back before anyone was promoted
                self.failover = None
                actions.append(FailoverAbandoned(failover.kind, failover.old_writer, f"{best} answers as writer again"))
            return
        failover.new_writer = best
        self._finish(failover, now_ms, actions)

    def _demote_stale_writers(self, actions: list[Action]) -> None:
        """A writer whose epoch was superseded is told to step down (it would learn it from storage too)."""
        if self.writer is None or self.nodes[self.writer].epoch is None:
            return
        newest = self.nodes[self.writer].epoch
        for node_id in self.order:
            node = self.nodes[node_id]
            if (node_id != self.writer and node.health is Health.UP and node.role == ROLE_WRITER
                    and node.epoch is not None and node.epoch < newest and node_id not in self.demote_sent):
                self.demote_sent.add(node_id)
                actions.append(Demote(node_id))

    def _maybe_fail_over(self, now_ms: float, actions: list[Action]) -> None:
        if self.writer is not None or self.promoting is not None:
            return
        if self.failover is not None and self.failover.kind is FailoverKind.PLANNED:
            return
        if any(node.health is Health.UP and node.role in ROLES_BECOMING_WRITER for node in self.nodes.values()):
            return  # a node is already on its way to being the writer
        lost = self.last_writer is not None and self.nodes[self.last_writer].health is Health.DOWN
        assert self.writer_missing_since_ms is not None
        if not lost and now_ms - self.writer_missing_since_ms < self.config.writer_grace_ms:
            return
        failover = self.failover
        if failover is None:
            seen_ms = None if self.last_writer is None else self.nodes[self.last_writer].seen_ms
            failover = self.failover = FailoverRecord(FailoverKind.AUTOMATIC, self.last_writer, now_ms, seen_ms)
            reason = (f"writer {self.last_writer} is down" if lost
                      else f"no node reported role writer for {self.config.writer_grace_ms} ms")
            actions.append(FailoverStarted(FailoverKind.AUTOMATIC, self.last_writer, reason))
        candidates = self.candidates(exclude=failover.excluded)
        if not candidates and failover.excluded:
            failover.excluded.clear()  # every candidate failed once: start the round again
            candidates = self.candidates()
        if not candidates:
            if not failover.candidate_reported_missing:
                failover.candidate_reported_missing = True
                actions.append(NoCandidate(failover.old_writer))
            return
        self.promoting = candidates[0]
        actions.append(Promote(candidates[0]))

    def _finish(self, failover: FailoverRecord, now_ms: float, actions: list[Action]) -> None:
        assert failover is self.failover, (failover, self.failover)
        failover.finished_ms = now_ms
        self.failover = None
        self.failovers.append(failover)
        del self.failovers[:-FAILOVERS_KEPT_MAX]
        actions.append(FailoverFinished(failover))
