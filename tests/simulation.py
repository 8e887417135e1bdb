"""A seeded simulation of the whole cluster in one process (DESIGN.md 11, step 2; the storage
healing issue): six real storage nodes (StorageServer, Healer, Disk with real log files and page
images under a temporary directory), writers running the real StorageClient, recover() and
LogWriter, all on one event loop whose clock is virtual, over an in-memory network.

Everything that happens follows from random.Random(seed): message delays, connection resets,
partitions, slow nodes, storage node crashes (with torn, unsynced log writes), whole-cluster power
loss, writer crashes, spurious failovers and racing candidates, and disk damage (flipped bytes in
page images and log files, a node restarted with an empty disk). The loop has no real I/O and no
real timers, so a seed replays exactly: AURORA_DB_SIM_SEED=<n> runs one seed again.

Checkers run at every quiescent instant of virtual time (the loop's idle point), at every
acknowledged commit and at every recovery:
  - no acknowledged commit lost: no truncation range any storage node holds covers an acknowledged
    commit, a record at or below a writer's VDL, or a record of the history a writer recovered
    (gossip and recovery spread every range to every node); every recovered VDL is at least the
    VDL of every older writer; every acknowledged commit is on the recovered volume chain;
  - the records at or below every writer's VDL stay complete (SCL) on a write quorum of their PG,
    or on three segments while one node is healing from disk damage (a read quorum meets them);
  - VDL never moves back within an epoch; a segment's SCL never moves back but by a truncation it
    holds; LSNs are never reused;
  - one writer per epoch: one recover() per epoch, and no two writers named for the same epoch by
    a write quorum of storage nodes;
  - pages read by writers (GetPage@LSN through the real client) equal an oracle that applies the
    surviving history;
  - two scrub passes after disk damage leave no damage behind (every checksum holds again);
  - with faults stopped: every recovery finishes within RECOVERY_BOUND_MS, a writer commits, and
    every segment of a PG converges to the same SCL and the same records above the highest base,
    and every page reads the same on every node as the oracle says.
Fault budget: crashes never lose durable data, so they are unlimited (up to three nodes down at
once); disk damage loses data, so at most one node is ever healing from it (Vw + Vr > V holds for
one lost copy, not for two).
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import contextlib
import contextvars
import dataclasses
import hashlib
import itertools
import logging
import os
import random
import selectors
import shutil
import struct
import traceback
from pathlib import Path
from typing import Callable

from aurora_db import pages, truncation, values
from aurora_db.constants import AZS, PAGES_PER_PG, SEGMENTS_PER_AZ, SEGMENTS_PER_PG, WRITE_QUORUM
from aurora_db.errors import CannotConnectNow, QuorumTimeout, StaleEpoch, StorageUnavailable
from aurora_db.quorum import DurabilityTracker
from aurora_db.records import Record
from compute_node import recovery
from compute_node.log_writer import LogWriter
from compute_node.storage_client import NodeUnreachable, RequestFailed, StorageClient
from storage_node import healer as healer_module
from storage_node.healer import Healer
from storage_node.log_file import ScanReport, scan
from storage_node.page_image import DamagedImage, PageImage
from storage_node.server import Disk, StorageServer, write_meta

# --- the simulated world's shape and pace (virtual milliseconds) --------------------------------

PGS = 3  # protection groups the workload writes
PAGES_PER_PG_USED = 2  # pages of each PG it writes
KEYS_PER_PAGE = 8  # meta_set keys: small pages, and later writes overwrite earlier ones
CHAOS_MS = 22_000  # faults are injected from the start until then
SETTLE_MS_MAX = 60_000  # after the final commit: the bound for every PG to converge
FINAL_COMMIT_MS = 30_000  # after the faults stop: the bound for some writer to commit to every page
RECOVERY_BOUND_MS = 10_000  # with every node up and the network whole: the bound for one recovery
FAULT_GAP_MS = (50, 900)  # pause between two faults
TXN_GAP_MS_MEAN = 45  # mean pause between two transactions of a writer
READ_FRACTION = 0.15  # of the workload's turns, page reads instead of commits
COMMIT_WAIT_MS = 5_000  # a transaction waits this long for VDL, then its outcome is unknown
STORAGE_DOWN_MS = (100, 4_000)  # a crashed storage node restarts after this long
STORAGE_DOWN_MAX = 3  # crashed storage nodes at once (writes stop at 3, reads and recovery wait)
FAILOVER_MS = (50, 1_500)  # a dead writer is replaced after this long
RACE_STAGGER_MS = (0, 40)  # between two racing candidates
FENCED_GRACE_MS = 100  # a fenced writer stops this long after it learns (ROLE_CHANGE_GRACE_MS)
LATENCY_MS = (0.1, 2.0)  # one message, one way
SLOW_LATENCY_MS = (20, 2_500)  # added to a slow node's messages
SLOW_MS = (300, 3_000)
PARTITION_MS = (200, 3_000)
IMAGE_HEADER_DAMAGE_CHANCE = 0.2  # of page image damage, in the image's header entry (else in a page)
LOG_FILE_BYTES_SIM = 16 * 1024  # small log files: sealed, scrubbed and collected within a run
COALESCE_RECORDS_MIN_SIM = 16  # coalesce small segments too (COALESCE_RECORDS_MIN is 20 000)
HELD_BYTES_MAX_SIM = 48 * 1024  # ... and when the node holds too much (HELD_BYTES_MAX is 64 MiB)
SCRUB_INTERVAL_MS_SIM = 5_000  # scrub often enough that damage heals within the convergence deadline
STORAGE_PORT = 7100
TRACE_LINES_KEPT = 200

PROFILES = {  # fault name: weight, per profile; a seed picks a profile, then jitters its weights
    "mixed": {
        "crash_storage": 20, "torn_write": 8, "reset_connection": 14, "partition": 8, "slow_node": 6,
        "crash_writer": 5, "spurious_failover": 4, "racing_candidates": 3, "isolate_writer": 3,
        "isolate_storage": 3, "power_loss": 1, "corrupt_image": 4, "corrupt_log": 3, "wipe_disk": 2,
    },
    "writer_races": {  # failovers that race: candidates seeing different quorums
        "racing_candidates": 30, "spurious_failover": 10, "slow_node": 10, "crash_writer": 5,
        "isolate_writer": 5, "crash_storage": 5, "partition": 5, "reset_connection": 5,
    },
}
PROFILE_CHANCES = {"mixed": 0.75, "writer_races": 0.25}
FAULT_WEIGHT_JITTER = (0.2, 3.0)
DATA_LOSS_FAULTS = ("corrupt_image", "corrupt_log", "wipe_disk")

NODE_STATS = ("records_from_peers", "coalesced_records", "images_written", "images_installed", "log_files_removed",
              "records_copied_forward", "scrub_passes", "damaged_found", "damaged_repaired")
RECOVERY_FAILURES = (CannotConnectNow, recovery.NewerEpochSeen, NodeUnreachable, RequestFailed, StaleEpoch)
ALARMS = ("contradict the chain", "above the stored floor", "no init record")  # error logs that mean a bug

LOST = ("every node that learns the range (gossip, or the next recovery) discards those records: "
        "acknowledged data is lost")

_process: contextvars.ContextVar[str] = contextvars.ContextVar("sim_process", default="sim")


class Violation(AssertionError):
    """A checker saw a broken promise."""


class SimCrash(Exception):
    """The simulated process died in the middle of a disk write."""


EXPECTED_TASK_ERRORS = (ConnectionError, TimeoutError, asyncio.IncompleteReadError, NodeUnreachable, RequestFailed,
                        SimCrash, healer_module.PeerError, QuorumTimeout, StaleEpoch, StorageUnavailable)


# --- virtual time -------------------------------------------------------------------------------


class _VirtualSelector(selectors.BaseSelector):
    """No file descriptor is ever ready: waiting for `timeout` only moves the virtual clock."""

    def __init__(self):
        self._keys: dict[int, selectors.SelectorKey] = {}
        self.on_idle: Callable[[float], None] | None = None

    def register(self, fileobj, events, data=None):
        fd = fileobj if isinstance(fileobj, int) else fileobj.fileno()
        key = self._keys[fd] = selectors.SelectorKey(fileobj, fd, events, data)
        return key

    def unregister(self, fileobj):
        return self._keys.pop(fileobj if isinstance(fileobj, int) else fileobj.fileno())

    def select(self, timeout=None):
        if timeout is None:
            raise Violation("simulation deadlock: nothing is scheduled and nothing is ready")
        if timeout > 0 and self.on_idle is not None:
            self.on_idle(timeout)
        return []

    def get_map(self):
        return self._keys

    def close(self):
        self._keys.clear()


class VirtualLoop(asyncio.SelectorEventLoop):
    """An event loop whose time() is virtual: when nothing is ready it jumps to the next timer,
    first calling `idle_hook` (the checkers: every callback of this instant has run)."""

    def __init__(self):
        self._now = 0.0
        selector = _VirtualSelector()
        super().__init__(selector=selector)
        selector.on_idle = self._advance
        self.idle_hook: Callable[[], None] | None = None

    def time(self) -> float:
        return self._now

    def _advance(self, timeout: float) -> None:
        if self.idle_hook is not None:
            self.idle_hook()
        self._now += timeout


async def _inline_to_thread(func, /, *args, **kwargs):
    """asyncio.to_thread without a thread: a thread's finish would land at a real-time moment."""
    return func(*args, **kwargs)


@contextlib.contextmanager
def patched(network: "Network"):
    """The process-wide seams the simulation needs, restored afterwards: sockets, threads and
    fsync (durability is modelled by what a crash keeps), a small coalescing threshold and a short
    scrubbing interval."""
    saved = (asyncio.open_connection, asyncio.to_thread, os.fsync, os.fdatasync, healer_module.COALESCE_RECORDS_MIN,
             healer_module.SCRUB_INTERVAL_MS, healer_module.HELD_BYTES_MAX)
    asyncio.open_connection = network.open_connection
    asyncio.to_thread = _inline_to_thread
    os.fsync = os.fdatasync = lambda fd: None
    healer_module.COALESCE_RECORDS_MIN = COALESCE_RECORDS_MIN_SIM
    healer_module.SCRUB_INTERVAL_MS = SCRUB_INTERVAL_MS_SIM
    healer_module.HELD_BYTES_MAX = HELD_BYTES_MAX_SIM
    loggers = {name: logging.getLogger(name) for name in ("storage_node", "compute_node", "aurora_db")}
    levels = {name: lg.level for name, lg in loggers.items()}
    handler = _ErrorLog()
    for lg in loggers.values():
        lg.setLevel(logging.ERROR)
        lg.addHandler(handler)
    try:
        yield handler
    finally:
        (asyncio.open_connection, asyncio.to_thread, os.fsync, os.fdatasync,
         healer_module.COALESCE_RECORDS_MIN, healer_module.SCRUB_INTERVAL_MS, healer_module.HELD_BYTES_MAX) = saved
        for name, lg in loggers.items():
            lg.setLevel(levels[name])
            lg.removeHandler(handler)


class _ErrorLog(logging.Handler):
    """Error logs of the cores: expected ones (damage found) are kept for the report; the ones
    that mean a bug (ALARMS, or an exception logged) are failures."""

    def __init__(self):
        super().__init__(logging.ERROR)
        self.recent: collections.deque[str] = collections.deque(maxlen=20)
        self.alarms: list[str] = []
        self.clock: Callable[[], float] = lambda: 0.0
        self.process: Callable[[], str] = _process.get

    def emit(self, record: logging.LogRecord) -> None:
        text = f"{self.clock():9.1f} ms {self.process()} {record.name}: {record.getMessage()}"
        if record.exc_info:
            text += f" [{record.exc_info[1]!r}]"
        self.recent.append(text)
        if record.exc_info or any(alarm in record.getMessage() for alarm in ALARMS):
            self.alarms.append(text)


# --- the network ----------------------------------------------------------------------------------


class _Pipe:
    """One direction of a connection: bytes arrive in order, each write after its own delay."""

    def __init__(self, network: "Network", src: str, dst: str, reader: asyncio.StreamReader):
        self.network, self.src, self.dst, self.reader = network, src, dst, reader
        self.last_ms = 0.0
        self.broken = False
        self.eof = False

    def send(self, data: bytes) -> None:
        if self.broken or self.eof or not self.network.sim.alive(self.src):
            return
        net = self.network
        at_ms = max(net.sim.now_ms() + net.latency_ms(self.src, self.dst), self.last_ms)
        self.last_ms = at_ms
        net.loop.call_at(at_ms / 1000, self._deliver, data)

    def _deliver(self, data: bytes) -> None:
        if not self.broken and not self.eof:
            self.reader.feed_data(data)

    def finish(self) -> None:
        """EOF after the bytes in flight."""
        if self.broken or self.eof:
            return
        at_ms = max(self.network.sim.now_ms() + self.network.latency_ms(self.src, self.dst), self.last_ms)
        self.network.loop.call_at(at_ms / 1000, self._eof)

    def _eof(self) -> None:
        if not self.broken and not self.eof:
            self.eof = True
            self.reader.feed_eof()

    def reset(self) -> None:
        if not self.broken and not self.eof:
            self.broken = True
            self.reader.set_exception(ConnectionResetError(f"connection {self.src} -> {self.dst} reset"))


class _SimWriter:
    """The StreamWriter (and transport) of one end of a connection."""

    def __init__(self, connection: "_Connection", pipe: _Pipe, peer: str):
        self.connection, self.pipe, self.peer = connection, pipe, peer

    @property
    def transport(self) -> "_SimWriter":
        return self

    def write(self, data) -> None:
        if not self.connection.closed:
            self.pipe.send(bytes(data))

    async def drain(self) -> None:
        if self.connection.was_reset:
            raise ConnectionResetError("connection reset")

    def close(self) -> None:
        self.connection.close(self)

    def abort(self) -> None:
        self.connection.reset()

    def is_closing(self) -> bool:
        return self.connection.closed

    async def wait_closed(self) -> None:
        return None

    def get_extra_info(self, name, default=None):
        return (self.peer, 0) if name in ("peername", "sockname") else default


class _Connection:
    def __init__(self, network: "Network", client: str, server: str, limit: int):
        self.network = network
        self.id = next(network.ids)
        self.ends = (client, server)
        self.client_reader = asyncio.StreamReader(limit=limit)
        self.server_reader = asyncio.StreamReader(limit=limit)
        self.to_server = _Pipe(network, client, server, self.server_reader)
        self.to_client = _Pipe(network, server, client, self.client_reader)
        self.client_writer = _SimWriter(self, self.to_server, server)
        self.server_writer = _SimWriter(self, self.to_client, client)
        self.closed = False
        self.was_reset = False

    def close(self, writer: _SimWriter) -> None:
        """A graceful close by one end: its reader ends now, the other end's after the bytes in flight."""
        if self.closed:
            return
        self.closed = True
        self.network.connections.pop(self.id, None)
        if writer is self.client_writer:
            own, other = self.to_client, self.to_server
        else:
            own, other = self.to_server, self.to_client
        other.finish()
        self.network.loop.call_soon(own._eof)

    def reset(self) -> None:
        if self.closed and self.was_reset:
            return
        self.closed = self.was_reset = True
        self.network.connections.pop(self.id, None)
        self.to_server.reset()
        self.to_client.reset()


class Network:
    """In-memory connections between simulated processes, by (host, port) like the real ones."""

    def __init__(self, sim: "Simulation"):
        self.sim = sim
        self.loop = sim.loop
        self.ids = itertools.count(1)
        self.listeners: dict[tuple[str, int], "StorageProcess"] = {}
        self.connections: dict[int, _Connection] = {}
        self.partitions: dict[frozenset, float] = {}  # {a, b} -> until (ms)
        self.slow: dict[str, float] = {}  # node -> until (ms)

    def latency_ms(self, src: str, dst: str) -> float:
        rng, now = self.sim.rng, self.sim.now_ms()
        delay = rng.uniform(*LATENCY_MS)
        for name in (_base(src), _base(dst)):
            if self.slow.get(name, 0) > now:
                delay += rng.uniform(*SLOW_LATENCY_MS)
        return delay

    def partitioned(self, a: str, b: str) -> bool:
        return self.partitions.get(frozenset((_base(a), _base(b))), 0) > self.sim.now_ms()

    async def open_connection(self, host: str, port: int, *, limit: int = 2 ** 16, **_options):
        src = _process.get()
        listener = self.listeners.get((host, port))
        dst = listener.name if listener is not None else host
        if self.partitioned(src, dst):
            await asyncio.sleep(3.0)  # no answer: the caller's timeout fires first
            raise ConnectionRefusedError(f"{host}:{port} unreachable from {src}")
        await asyncio.sleep(self.latency_ms(src, dst) / 1000)
        listener = self.listeners.get((host, port))
        if listener is None or not self.sim.alive(src) or self.partitioned(src, listener.name):
            raise ConnectionRefusedError(f"{host}:{port} refused {src}")
        connection = _Connection(self, src, listener.name, limit)
        self.connections[connection.id] = connection
        listener.accept(connection.server_reader, connection.server_writer)
        return connection.client_reader, connection.client_writer

    def reset_all(self, process: str) -> None:
        for connection in list(self.connections.values()):
            if process in connection.ends:
                connection.reset()

    def reset_between(self, a: str, b: str) -> None:
        for connection in list(self.connections.values()):
            if {_base(end) for end in connection.ends} == {a, b}:
                connection.reset()


def _where(error: BaseException) -> str:
    """ ' at file:line in function' of the innermost frame that raised `error`."""
    frames = traceback.extract_tb(error.__traceback__)
    if not frames:
        return ""
    frame = frames[-1]
    return f" at {Path(frame.filename).name}:{frame.lineno} in {frame.name}: {frame.line}"


def _base(process: str) -> str:
    return process.split("#", 1)[0]


# --- storage nodes --------------------------------------------------------------------------------


class SimDisk(Disk):
    """The real Disk; when a crash is armed, the next persist dies half way: the metadata file
    may be replaced (it is written first, atomically), the log gets a torn, unsynced tail."""

    def __init__(self, process: "StorageProcess", data_dir: Path):
        super().__init__(data_dir)
        self.process = process

    def persist(self, ready) -> None:
        process = self.process
        if not process.crash_in_persist or not (ready.log_entries or ready.meta):
            return super().persist(ready)
        process.crash_in_persist = False
        rng = process.sim.rng
        if ready.meta is not None:
            if rng.random() < 0.4:
                raise SimCrash("died before writing anything")
            write_meta(self.data_dir, ready.meta)
        if ready.log_entries and rng.random() < 0.8:
            seq = self.log.current_seq
            size = self.log.path_of(seq).stat().st_size
            self.log.append(ready.log_entries)
            path = self.log.path_of(self.log.current_seq)
            start = size if self.log.current_seq == seq else 0
            os.truncate(path, rng.randint(start, path.stat().st_size))
        raise SimCrash("died in the middle of a log write")


class StorageProcess:
    """One storage node: what serve() in storage_node/server.py runs, on the simulated network."""

    def __init__(self, sim: "Simulation", index: int):
        self.sim = sim
        self.node_id = f"n{index}"
        self.az = AZS[index // SEGMENTS_PER_AZ]
        self.host, self.port = self.node_id, STORAGE_PORT
        self.data_dir = sim.data_dir / self.node_id
        self.incarnation = 0
        self.name = self.node_id
        self.up = False
        self.node = None
        self.disk: SimDisk | None = None
        self.crash_in_persist = False
        self.wipe_on_restart = False
        self.restart_handle: asyncio.TimerHandle | None = None
        self.scl_snapshot: dict[int, int] = {}  # durable SCLs while down
        self.meta_snapshot = None

    def start(self) -> None:
        self.restart_handle = None
        if self.wipe_on_restart:
            self.wipe_on_restart = False
            shutil.rmtree(self.data_dir, ignore_errors=True)
        self.incarnation += 1
        self.name = f"{self.node_id}#{self.incarnation}"
        self.up = True
        self.sim.spawn(self.name, self.main(), f"{self.name}-main")

    async def main(self) -> None:
        loop = asyncio.get_running_loop()
        disk = self.disk = SimDisk(self, self.data_dir)
        node = disk.open(self.node_id, self.az, has_peers=True, clock_ms=lambda: loop.time() * 1000)
        disk.log.file_bytes_max = LOG_FILE_BYTES_SIM
        self.node = node
        server = self.server = StorageServer(node, disk)
        peers = [(p.node_id, p.host, p.port) for p in self.sim.storage if p is not self]
        healer = Healer(node, disk.pages_dir, disk.log, peers, server.kick, server.durable)
        self.sim.network.listeners[(self.host, self.port)] = self
        self.sim.trace(f"{self.name} up: epoch {node.meta.epoch}, SCLs {node.scls()}"
                       + (" (empty disk: joining)" if node.joining else ""))
        persister = asyncio.create_task(server.persist_forever())
        healing = asyncio.create_task(healer.run())
        await asyncio.wait([persister, healing, server.broken_invariant], return_when=asyncio.FIRST_COMPLETED)
        if persister.done() and isinstance(persister.exception(), SimCrash):
            self.sim.crash_storage(self, f"crashed in a disk write ({persister.exception()})")
            return
        for what, done in (("disk loop", persister), ("healer", healing), ("invariant", server.broken_invariant)):
            if done.done():
                error = done.exception()
                self.sim.fail(f"storage node {self.node_id} stopped: its {what} failed: {error!r}{_where(error)}")

    def accept(self, reader, writer) -> None:
        self.sim.spawn(self.name, self.server.handle_connection(reader, writer), f"{self.name}-conn")

    def scls(self) -> dict[int, int]:
        """SCL per PG: live, or the durable ones while down."""
        if self.up and self.node is not None:
            return {pg: segment.scl for pg, segment in self.node.segments.items()}
        return self.scl_snapshot

    def meta(self):
        return self.node.meta if self.up and self.node is not None else self.meta_snapshot


# --- writers ----------------------------------------------------------------------------------------


class WriterProcess:
    """A compute node becoming the writer: recover() under a new epoch, then a workload of small
    transactions (meta_set MTRs over a few pages, each ending in a CPL) and page reads."""

    def __init__(self, sim: "Simulation", index: int):
        self.sim = sim
        self.name = f"w{index}"
        self.state = "recovering"  # -> ready -> fenced | failed | crashed
        self.client: StorageClient | None = None
        self.log_writer: LogWriter | None = None
        self.volume: recovery.RecoveredVolume | None = None
        self.vdl_seen = 0
        self.page_tail: dict[int, int] = {}
        self.initialized: set[int] = set()
        self.recovered_chain: list[int] = []  # LSNs on the volume chain ending at the recovered VDL
        self.rng = random.Random(sim.rng.getrandbits(64))
        self.started_ms = sim.now_ms()

    @property
    def epoch(self) -> int | None:
        return self.volume.epoch if self.volume is not None else None

    @property
    def alive(self) -> bool:
        return self.state in ("recovering", "ready")

    async def main(self) -> None:
        sim = self.sim
        client = self.client = StorageClient(
            [(p.node_id, p.host, p.port) for p in sim.storage], on_ack=self._on_ack, on_forget=self._on_forget,
            on_fenced=self._on_fenced, is_writer=True, writer_address=f"{self.name}:5433")
        client._rng = random.Random(self.rng.getrandbits(64))  # peer choice, replayable
        client.start()
        try:
            volume = await recovery.recover(client)
        except RECOVERY_FAILURES as error:
            sim.trace(f"{self.name} recovery failed: {type(error).__name__}: {error}")
            self.state = "failed"
            sim.stop_writer(self)
            return
        self.volume = volume
        sim.on_recovered(self, volume)
        tracker = DurabilityTracker(vdl=volume.vdl, pg_tails=volume.pg_tails, lsn_floor=volume.lsn_floor)
        self.log_writer = LogWriter(asyncio.get_running_loop(), client, tracker)
        client.read_point_source = lambda: self.log_writer.vdl
        for link in client.links.values():  # as compute_node/server.py: SCLs heard during recovery
            if link.connected.is_set():
                for pg, scl in link.last_scls.items():
                    self.log_writer.on_ack(pg, link.node_id, scl)
        self.vdl_seen = tracker.vdl
        self.initialized, self.page_tail = sim.history.pages_at(volume.vdl)
        if self.state != "recovering":
            return  # fenced during recovery
        self.state = "ready"
        while self.state == "ready" and sim.workload_on:
            await asyncio.sleep(self.rng.expovariate(1 / TXN_GAP_MS_MEAN) / 1000)
            if self.state != "ready" or not sim.workload_on:
                break
            if self.rng.random() < READ_FRACTION:
                asyncio.create_task(self.read_page())
            else:
                asyncio.create_task(self.transaction())

    def _on_ack(self, pg: int, node_id: str, scl: int) -> None:
        if self.log_writer is not None:
            self.log_writer.on_ack(pg, node_id, scl)

    def _on_forget(self, node_id: str) -> None:
        if self.log_writer is not None:
            self.log_writer.on_forget(node_id)

    def _on_fenced(self, reason: str) -> None:
        if self.state != "ready":
            return  # as compute_node/server.py: only a writer is fenced
        self.state = "fenced"
        self.sim.trace(f"{self.name} (epoch {self.epoch}) fenced: {reason}")
        self.log_writer.on_fenced(reason)
        self.sim.loop.call_later(FENCED_GRACE_MS / 1000, self.sim.stop_writer, self)

    async def transaction(self, page_ids: list[int] | None = None) -> bool:
        """One MTR: a meta_set on each page (a meta_init first on a page never made), the last a
        CPL. True once acknowledged (VDL >= its commit LSN)."""
        log_writer, rng = self.log_writer, self.rng
        if page_ids is None:
            page_ids = rng.sample(self.sim.page_ids, rng.randint(1, 3))
        needed = len(page_ids) + sum(1 for page_id in page_ids if page_id not in self.initialized)
        if not log_writer.has_room(needed) or self.state != "ready":
            return False
        records: list[Record] = []
        for page_id in page_ids:
            if page_id not in self.initialized:
                records.append(log_writer.allocate(page_id, self.page_tail.get(page_id, 0), "meta_init", ()))
                self.page_tail[page_id] = records[-1].lsn
                self.initialized.add(page_id)
            value = next(self.sim.values)
            records.append(log_writer.allocate(page_id, self.page_tail[page_id], "meta_set",
                                               (f"k{rng.randrange(KEYS_PER_PAGE)}", value)))
            self.page_tail[page_id] = records[-1].lsn
        records = log_writer.finish_mtr(records)
        self.sim.history.add(self, records)
        commit = records[-1].lsn
        try:
            await log_writer.wait_durable(commit, timeout_ms=COMMIT_WAIT_MS)
        except (QuorumTimeout, StaleEpoch):
            return False
        self.sim.on_acknowledged(self, commit)
        return True

    async def read_page(self) -> None:
        """GetPage@LSN at the writer's read point of a PG, through the real client."""
        pg = self.rng.randrange(PGS)
        page_id = self.rng.choice(self.sim.page_ids[pg * PAGES_PER_PG_USED:(pg + 1) * PAGES_PER_PG_USED])
        read_point, complete = self.log_writer.read_point(pg)
        if read_point == 0:
            return
        try:
            wire = await self.client.get_page(pg, page_id, read_point, complete, timeout_ms=2_000)
        except (StorageUnavailable, StaleEpoch):
            return
        self.sim.check_page(f"{self.name} read page {page_id} at LSN {read_point}", wire,
                            self.sim.history.page(page_id, read_point))


# --- the surviving history: the oracle -------------------------------------------------------------


class History:
    """Every record any writer allocated, and the truncation ranges storage holds: the records
    not inside a range are the volume's history, and a page is the result of applying them."""

    def __init__(self):
        self.records: dict[int, Record] = {}
        self.writer_of: dict[int, str] = {}
        self.by_page: dict[int, list[int]] = collections.defaultdict(list)
        self.ranges: list[truncation.Range] = []  # every range any node held, void ones too

    def live_ranges(self) -> tuple[truncation.Range, ...]:
        """The ranges that hold: a void one (a losing candidate's, aurora_db/truncation.py) cuts nothing."""
        return truncation.live(self.ranges)

    def add(self, writer: WriterProcess, records: list[Record]) -> None:
        for record in records:
            if record.lsn in self.records:
                raise Violation(f"LSN {record.lsn} allocated twice: by {self.writer_of[record.lsn]} and {writer.name}")
            self.records[record.lsn] = record
            self.writer_of[record.lsn] = writer.name
            bisect.insort(self.by_page[record.page_id], record.lsn)

    def dead(self, lsn: int) -> truncation.Range | None:
        for live_range in self.live_ranges():
            if live_range[0] < lsn <= live_range[1]:
                return live_range
        return None

    def page(self, page_id: int, read_point: int):
        """The page's wire form at `read_point` (None if no surviving record made it)."""
        page = None
        for lsn in self.by_page.get(page_id, []):
            if lsn > read_point:
                break
            if self.dead(lsn) is None:
                page = pages.apply(page, self.records[lsn])
        return None if page is None else pages.to_wire(page)

    def pages_at(self, vdl: int) -> tuple[set[int], dict[int, int]]:
        """What a new writer's engine would read from its pages: which exist, and each one's last LSN."""
        initialized, tails = set(), {}
        for page_id, lsns in self.by_page.items():
            for lsn in lsns:
                if lsn <= vdl and self.dead(lsn) is None:
                    tails[page_id] = lsn
                    initialized.add(page_id)
        return initialized, tails

    def chain_from(self, vdl: int) -> set[int]:
        """The LSNs on the volume chain ending at `vdl` (prev_volume backlinks)."""
        chain, lsn = set(), vdl
        while lsn:
            record = self.records.get(lsn)
            if record is None:
                raise Violation(f"the volume chain from VDL {vdl} reaches LSN {lsn}, which no writer allocated")
            chain.add(lsn)
            lsn = record.prev_volume
        return chain


def _damage_left(data_dir: Path) -> str | None:
    """What a fresh open of the node's files would find damaged (None: every checksum holds)."""
    for path in sorted((data_dir / "pages").glob("pg-*.img")):
        try:
            image, damaged = PageImage.open(path)
        except DamagedImage as error:
            return str(error)
        image.close()
        if damaged:
            return f"{path.name}: pages {damaged[:5]} fail their checksums"
    for path in sorted((data_dir / "log").glob("*.log")):
        report = ScanReport()
        scan(path.read_bytes(), is_last_file=True, name=path.name, report=report)
        if report.bad_entries or report.torn_bytes_cut:
            return f"log file {path.name}: {report}"
    return None


def _normal(wire):
    """A page's wire form as it crosses the network (msgpack: tuples become lists)."""
    return None if wire is None else values.unpackb(values.packb(wire), strict_map_key=False)


@dataclasses.dataclass
class _DataLoss:
    node_id: str
    kind: str
    at_ms: float
    incarnation: int
    scrub_passes: int
    max_scls: dict[int, int]


@dataclasses.dataclass
class Result:
    seed: int
    digest: str
    sim_ms: float
    stats: collections.Counter


# --- the simulation ------------------------------------------------------------------------------------


class Simulation:
    def __init__(self, seed: int, data_dir: Path):
        self.seed = seed
        self.rng = random.Random(seed)
        self.data_dir = Path(data_dir)
        self.loop = VirtualLoop()
        self.loop.set_task_factory(self._task_factory)
        self.loop.set_exception_handler(self._loop_exception)
        self.network = Network(self)
        self.storage = [StorageProcess(self, index) for index in range(SEGMENTS_PER_PG)]
        self.writers: list[WriterProcess] = []
        self.page_ids = [pg * PAGES_PER_PG + k for pg in range(PGS) for k in range(PAGES_PER_PG_USED)]
        self.values = itertools.count(1)
        self.history = History()
        self.tasks: dict[str, list[asyncio.Task]] = collections.defaultdict(list)
        self.dead: set[str] = set()
        self.workload_on = True
        self.chaos_on = True
        self.failover_pending = False
        self.faults_stopped_ms = float("inf")
        self.stats: collections.Counter = collections.Counter()
        self.trace_lines: collections.deque[str] = collections.deque(maxlen=TRACE_LINES_KEPT)
        self.digest = hashlib.sha256()
        self.failures: list[str] = []
        self.errors: _ErrorLog | None = None
        self.pending_violation: Violation | None = None
        self.echo: Callable[[str], None] | None = None  # every trace line, as it happens
        # checker state
        self.acked: list[tuple[int, str, int]] = []  # (commit LSN, writer, epoch)
        self.epoch_writer: dict[int, str] = {}
        self.claims: dict[tuple[int, str], set[str]] = collections.defaultdict(set)
        self.durable_tails: dict[int, int] = {}
        self.metas_seen: dict[str, object] = {}
        self.data_loss: _DataLoss | None = None
        self.range_origin: dict[tuple[int, int], str] = {}
        self.scl_seen: dict[tuple[str, int], int] = {}

    # --- processes and tasks ---------------------------------------------------------------

    def now_ms(self) -> float:
        return self.loop.time() * 1000

    def alive(self, process: str) -> bool:
        return process not in self.dead

    def _task_factory(self, loop, coro, context=None):
        task = asyncio.Task(coro, loop=loop, context=context)
        task.add_done_callback(self._task_done)
        process = context.get(_process, "sim") if context is not None else _process.get()
        tasks = self.tasks[process]
        tasks.append(task)
        if len(tasks) > 512:
            tasks[:] = [t for t in tasks if not t.done()]
        if process in self.dead:
            task.cancel()
        return task

    def _task_done(self, task: asyncio.Task) -> None:
        if task.cancelled():
            return
        error = task.exception()
        if error is None or isinstance(error, EXPECTED_TASK_ERRORS):
            return
        if isinstance(error, Violation):
            self.pending_violation = self.pending_violation or error
        else:
            self.fail(f"task {task.get_name()} failed: {error!r}{_where(error)}")

    def spawn(self, process: str, coro, name: str) -> asyncio.Task:
        context = contextvars.copy_context()
        context.run(_process.set, process)
        return self.loop.create_task(coro, name=name, context=context)

    def kill(self, process: str) -> None:
        """The process is gone: its tasks end, its connections reset."""
        self.dead.add(process)
        for task in self.tasks.pop(process, []):
            task.cancel()
        self.network.reset_all(process)

    def _loop_exception(self, loop, context) -> None:
        error = context.get("exception")
        if isinstance(error, (asyncio.CancelledError, ConnectionError, NodeUnreachable, RequestFailed,
                              asyncio.InvalidStateError, SimCrash)):
            return
        self.failures.append(f"unhandled in the event loop: {context.get('message')}: {error!r}")

    def trace(self, text: str) -> None:
        line = f"{self.now_ms():9.1f} ms  {text}"
        self.trace_lines.append(line)
        self.digest.update(line.encode())
        if self.echo is not None:
            self.echo(line)

    def fail(self, text: str) -> None:
        self.failures.append(f"{self.now_ms():.1f} ms: {text}")

    # --- storage node lifecycle --------------------------------------------------------------

    def crash_storage(self, process: StorageProcess, why: str, down_ms: float | None = None) -> None:
        if not process.up:
            return
        self.stats["storage_crashes"] += 1
        self.trace(f"{process.name} {why}")
        node = process.node
        if self.chaos_on or self.workload_on:  # at the end, check_final counted them
            self._add_node_stats(node)
        process.scl_snapshot = {pg: s.scl for pg, s in node.segments.items()} if node is not None else {}
        process.meta_snapshot = node.meta if node is not None else process.meta_snapshot
        process.up = False
        if self.network.listeners.get((process.host, process.port)) is process:
            del self.network.listeners[(process.host, process.port)]
        self.kill(process.name)
        disk, process.node, process.disk = process.disk, None, None

        def close_files():  # after the cancelled tasks took their last step
            if disk is not None:
                disk.close()
            for segment in (node.segments.values() if node is not None else ()):
                segment.image.close()
        self.loop.call_soon(close_files)
        if self.chaos_on:
            delay_ms = down_ms if down_ms is not None else self.rng.uniform(*STORAGE_DOWN_MS)
            process.restart_handle = self.loop.call_later(delay_ms / 1000, process.start)

    def _add_node_stats(self, node) -> None:
        if node is not None:
            for name in NODE_STATS:
                self.stats[name] += node.stats.get(name, 0)

    # --- writer lifecycle --------------------------------------------------------------------

    def start_writer(self) -> WriterProcess:
        writer = WriterProcess(self, len(self.writers) + 1)
        self.writers.append(writer)
        self.stats["writers"] += 1
        self.trace(f"{writer.name} starts recovery")
        self.spawn(writer.name, writer.main(), f"{writer.name}-main")
        return writer

    def stop_writer(self, writer: WriterProcess, why: str | None = None) -> None:
        if why:
            self.trace(f"{writer.name} {why}")
        if writer.state in ("recovering", "ready"):
            writer.state = "crashed"
        self.kill(writer.name)

    async def supervise(self) -> None:
        """The proxy: when no writer is alive, start a new one after a failover delay."""
        while True:
            await asyncio.sleep(0.1)
            if not self.workload_on:
                return
            if not any(w.alive for w in self.writers) and not self.failover_pending:
                self.failover_pending = True
                await asyncio.sleep(self.rng.uniform(*FAILOVER_MS) / 1000)
                self.failover_pending = False
                if not any(w.alive for w in self.writers):
                    self.start_writer()

    # --- faults ----------------------------------------------------------------------------------

    async def chaos(self) -> None:
        """Faults of the seed's profile, with weights jittered per seed."""
        profile = self.rng.choices(list(PROFILE_CHANCES), list(PROFILE_CHANCES.values()))[0]
        self.trace(f"fault profile {profile}")
        names = list(PROFILES[profile])
        weights = [weight * self.rng.uniform(*FAULT_WEIGHT_JITTER) for weight in PROFILES[profile].values()]
        while self.now_ms() < CHAOS_MS:
            await asyncio.sleep(self.rng.uniform(*FAULT_GAP_MS) / 1000)
            fault = self.rng.choices(names, weights)[0]
            if fault in DATA_LOSS_FAULTS and self.data_loss is not None:
                continue  # one node healing from lost data at a time
            getattr(self, f"_fault_{fault}")()

    def _up_storage(self) -> list[StorageProcess]:
        return [p for p in self.storage if p.up and p.node is not None]

    def _fault_crash_storage(self) -> None:
        up = self._up_storage()
        if up and len(self.storage) - len(up) < STORAGE_DOWN_MAX:
            self.crash_storage(self.rng.choice(up), "crashed")

    def _fault_torn_write(self) -> None:
        up = self._up_storage()
        if up and len(self.storage) - len(up) < STORAGE_DOWN_MAX:
            process = self.rng.choice(up)
            process.crash_in_persist = True
            self.trace(f"{process.name} will crash in its next disk write")

    def _fault_power_loss(self) -> None:
        down_ms = self.rng.uniform(*STORAGE_DOWN_MS)
        for process in self._up_storage():
            self.crash_storage(process, "lost power with the whole cluster", down_ms=down_ms + self.rng.uniform(0, 200))

    def _fault_reset_connection(self) -> None:
        if self.network.connections:
            connection = self.network.connections[self.rng.choice(sorted(self.network.connections))]
            self.trace(f"connection {connection.ends[0]} -> {connection.ends[1]} reset")
            connection.reset()

    def _fault_partition(self) -> None:
        nodes = [p.node_id for p in self.storage]
        writers = [w.name for w in self.writers if w.alive]
        a = self.rng.choice(nodes + writers)
        b = self.rng.choice([n for n in nodes if n != a])
        until = self.now_ms() + self.rng.uniform(*PARTITION_MS)
        self.network.partitions[frozenset((a, b))] = until
        self.network.reset_between(a, b)
        self.trace(f"partition {a} | {b} until {until:.1f} ms")

    def _isolate(self, name: str) -> None:
        until = self.now_ms() + self.rng.uniform(*PARTITION_MS)
        for process in self.storage:
            if process.node_id != name:
                self.network.partitions[frozenset((name, process.node_id))] = until
                self.network.reset_between(name, process.node_id)
        self.trace(f"{name} cut off from every storage node until {until:.1f} ms")

    def _fault_isolate_writer(self) -> None:
        ready = [w for w in self.writers if w.state == "ready"]
        if ready:
            self._isolate(self.rng.choice(ready).name)
            if self.rng.random() < 0.5:
                self.trace("the proxy promotes a new writer")
                self.start_writer()

    def _fault_isolate_storage(self) -> None:
        self._isolate(self.rng.choice(self.storage).node_id)

    def _fault_slow_node(self) -> None:
        process = self.rng.choice(self.storage)
        until = self.now_ms() + self.rng.uniform(*SLOW_MS)
        self.network.slow[process.node_id] = until
        self.trace(f"{process.node_id} slow until {until:.1f} ms")

    def _fault_crash_writer(self) -> None:
        alive = [w for w in self.writers if w.alive]
        if alive:
            self.stop_writer(self.rng.choice(alive), "crashed")

    def _fault_spurious_failover(self) -> None:
        if any(w.state == "ready" for w in self.writers):
            self.trace("the proxy promotes a new writer while the old one runs")
            self.start_writer()

    def _fault_racing_candidates(self) -> None:
        """The writer dies (mostly) and two compute nodes recover at about the same time (the old
        writer restarting while the proxy promotes a reader): the second a few messages later."""
        ready = [w for w in self.writers if w.state == "ready"]
        if ready and self.rng.random() < 0.7:
            self.stop_writer(self.rng.choice(ready), "crashed")
        if self.rng.random() < 0.5:  # an AZ answers late: the candidates see different quorums
            until = self.now_ms() + self.rng.uniform(*SLOW_MS)
            for process in self.rng.sample(self.storage, SEGMENTS_PER_AZ):
                self.network.slow[process.node_id] = until
            self.trace(f"{SEGMENTS_PER_AZ} storage nodes slow until {until:.1f} ms")
        self.trace("two candidates recover at once")
        self._start_candidate()
        self.loop.call_later(self.rng.uniform(*RACE_STAGGER_MS) / 1000, self._start_candidate)

    def _start_candidate(self) -> None:
        """A candidate that (half the time) cannot reach one storage node for a while: two
        candidates then build their views from different quorums."""
        writer = self.start_writer()
        if self.rng.random() < 0.5:
            node_id = self.rng.choice(self.storage).node_id
            until = self.now_ms() + self.rng.uniform(*PARTITION_MS)
            self.network.partitions[frozenset((writer.name, node_id))] = until
            self.trace(f"partition {writer.name} | {node_id} until {until:.1f} ms")

    def _begin_data_loss(self, process: StorageProcess, kind: str) -> None:
        max_scls: dict[int, int] = {}
        for other in self.storage:
            for pg, scl in other.scls().items():
                max_scls[pg] = max(max_scls.get(pg, 0), scl)
        self.data_loss = _DataLoss(process.node_id, kind, self.now_ms(), process.incarnation,
                                   process.node.stats["scrub_passes"] if process.node is not None else 0, max_scls)
        self.stats[kind] += 1

    def _fault_corrupt_image(self) -> None:
        candidates = []
        for process in self._up_storage():
            for path in sorted((process.data_dir / "pages").glob("pg-*.img")):
                data = path.read_bytes()
                if len(data) >= 16:
                    (length,) = struct.unpack_from(">I", data, 4)
                    if 16 + length < len(data):
                        candidates.append((process, path, 16 + length, len(data)))
        if not candidates:
            return
        process, path, header_end, end = self.rng.choice(candidates)
        self._begin_data_loss(process, "corrupt_image")
        if self.rng.random() < IMAGE_HEADER_DAMAGE_CHANCE:
            self._flip(path, self.rng.randrange(header_end))
            self.trace(f"{process.name}: flipped a byte of the header of page image {path.name}")
        else:
            self._flip(path, self.rng.randrange(header_end, end))
            self.trace(f"{process.name}: flipped a byte of a page of page image {path.name}")

    def _fault_corrupt_log(self) -> None:
        candidates = []
        for process in self._up_storage():
            log_file = process.disk.log
            for seq in sorted(log_file.contents):
                path = log_file.path_of(seq)
                if path.exists() and path.stat().st_size:
                    candidates.append((process, path))
        if not candidates:
            return
        process, path = self.rng.choice(candidates)
        self._begin_data_loss(process, "corrupt_log")
        self._flip(path, self.rng.randrange(path.stat().st_size))
        self.trace(f"{process.name}: flipped a byte of log file {path.name}")

    def _fault_wipe_disk(self) -> None:
        up = self._up_storage()
        if not up or len(self.storage) - len(up) >= STORAGE_DOWN_MAX:
            return
        process = self.rng.choice(up)
        self._begin_data_loss(process, "wipe_disk")
        process.wipe_on_restart = True
        self.crash_storage(process, "crashed; it restarts with an empty disk")

    def _flip(self, path: Path, offset: int) -> None:
        with open(path, "r+b") as f:
            f.seek(offset)
            byte = f.read(1)[0]
            f.seek(offset)
            f.write(bytes([byte ^ (1 << self.rng.randrange(8))]))

    def _data_loss_healed(self) -> bool:
        """The damaged node holds again all that any node held when it was damaged (or all that
        survived truncation since), with every node up to compare, and a scrub (or a restart,
        which verifies every file) has passed over its files since."""
        loss = self.data_loss
        process = next(p for p in self.storage if p.node_id == loss.node_id)
        if any(not p.up or p.node is None or p.node.joining for p in self.storage):
            return False
        node = process.node
        if any(segment.damaged is not None for segment in node.segments.values()):
            return False
        passes_before = loss.scrub_passes if process.incarnation == loss.incarnation else 0
        if node.stats["scrub_passes"] < passes_before + 2:
            return False
        mine = process.scls()
        for pg, scl in loss.max_scls.items():
            best_now = max(p.scls().get(pg, 0) for p in self.storage)
            if mine.get(pg, 0) < min(scl, best_now):
                return False
        damage = _damage_left(process.data_dir)
        if damage is not None:
            raise Violation(f"{process.name}: two scrub passes over its files since the {loss.kind} at "
                            f"{loss.at_ms:.1f} ms, and damage is still there, unnoticed: {damage}")
        return True

    # --- checkers ----------------------------------------------------------------------------------

    def check_step(self) -> None:
        """At every quiescent instant of virtual time."""
        if self.pending_violation is not None:
            raise self.pending_violation
        if self.failures:
            raise Violation("; ".join(self.failures[:5]))
        self._poll_storage_metadata()
        for writer in self.writers:
            log_writer = writer.log_writer
            if log_writer is None or writer.state == "crashed" and writer.vdl_seen == log_writer.vdl:
                continue
            vdl = log_writer.vdl
            if vdl < writer.vdl_seen:
                raise Violation(f"{writer.name} (epoch {writer.epoch}): VDL moved back from {writer.vdl_seen} to {vdl}")
            if vdl > writer.vdl_seen:
                writer.vdl_seen = vdl
                self._check_durable_not_truncated(writer)
                for pg, tail in log_writer.tracker.durable_pg_tail.items():
                    if tail > self.durable_tails.get(pg, 0):
                        self.durable_tails[pg] = tail
        scls = [p.scls() for p in self.storage]
        self._check_scl_never_back(scls)
        if self.data_loss is not None and self._data_loss_healed():
            self.trace(f"{self.data_loss.node_id} healed from {self.data_loss.kind}")
            self.data_loss = None
        self._check_durable_on_quorum(scls)

    def _check_scl_never_back(self, scls: list[dict[int, int]]) -> None:
        """A segment's SCL only grows (segment.py), through crashes and restarts too, except by a
        truncation the node holds (down to at most its above_lsn), or on a node that lost data."""
        victim = self.data_loss.node_id if self.data_loss is not None else None
        for process, held in zip(self.storage, scls):
            node = process.node
            if node is None or not process.up:
                continue
            for pg, new in held.items():
                key = (process.node_id, pg)
                old = self.scl_seen.get(key, 0)
                self.scl_seen[key] = new
                if new >= old or process.node_id == victim:
                    continue
                if not any(new <= above_lsn < old for above_lsn, *_ in node.meta.truncations):
                    raise Violation(f"{process.name}: the SCL of PG {pg} moved back from {old} to {new}, and no "
                                    f"truncation the node holds explains it ({list(node.meta.truncations)})")

    def _poll_storage_metadata(self) -> None:
        for process in self.storage:
            meta = process.meta()
            if meta is None or self.metas_seen.get(process.node_id) is meta:
                continue
            self.metas_seen[process.node_id] = meta
            if meta.writer is not None:
                holders = self.claims[(meta.epoch, meta.writer)]
                holders.add(process.node_id)
                if len(holders) >= WRITE_QUORUM:
                    rivals = [writer for (epoch, writer), nodes in self.claims.items()
                              if epoch == meta.epoch and writer != meta.writer and len(nodes) >= WRITE_QUORUM]
                    if rivals:
                        raise Violation(f"epoch {meta.epoch} is claimed by {meta.writer} and {rivals[0]} "
                                        f"on write quorums")
            for held in meta.truncations:
                if tuple(held) not in self.history.ranges:
                    self._new_truncation(tuple(held), process.node_id)

    def _new_truncation(self, held: truncation.Range, node_id: str) -> None:
        above_lsn, lsn_floor, _ = held
        self.history.ranges.append(held)
        owner = next((w for w in self.writers if w.client is not None and w.client.truncations
                      and tuple(w.client.truncations[-1]) == held), None)
        origin = f"held by {node_id}" + (f", sent by {owner.name} at epoch {owner.client.epoch}" if owner else "")
        self.range_origin[held] = origin
        self.trace(f"truncation ({above_lsn}, {lsn_floor}] of epoch {held[2]} now {origin} "
                   f"({owner.state if owner else '?'})")
        for live_range in self.history.live_ranges():
            low, high, _ = live_range
            for lsn, writer, epoch in self.acked:
                if low < lsn <= high:
                    raise Violation(f"acknowledged commit {lsn} of {writer} (epoch {epoch}) lies in truncation range "
                                    f"({low}, {high}] ({self.range_origin[live_range]}): {LOST}")
        for writer in self.writers:
            self._check_durable_not_truncated(writer)

    def _check_durable_not_truncated(self, writer: WriterProcess) -> None:
        """No truncation range any node holds covers a record of the history a writer builds on:
        the chain it recovered (every record up to its recovered VDL that survived earlier
        truncations) or a record of its own at or below its VDL. Legitimate ranges never do: the
        chain skips them (the first record after a recovery names its VDL as prev_volume)."""
        if writer.volume is None:
            return
        chain = writer.recovered_chain
        first, last = writer.volume.lsn_floor, writer.log_writer.vdl if writer.log_writer else 0
        for live_range in self.history.live_ranges():
            above_lsn, lsn_floor, _ = live_range
            index = bisect.bisect_right(chain, above_lsn)
            if index < len(chain) and chain[index] <= lsn_floor:
                origin = self.range_origin[live_range]
                raise Violation(f"truncation range ({above_lsn}, {lsn_floor}] ({origin}) "
                                f"cuts record {chain[index]} out of the history {writer.name} (epoch {writer.epoch}) "
                                f"recovered (VDL {writer.volume.vdl}) and builds on: {LOST}")
            low, high = max(above_lsn, first), min(lsn_floor, last)
            if low < high:
                raise Violation(f"{writer.name} (epoch {writer.epoch}) has VDL {last}, but truncation range "
                                f"({above_lsn}, {lsn_floor}] ({self.range_origin[live_range]}) covers its "
                                f"durable records ({low}, {high}]: {LOST}")

    def _check_durable_on_quorum(self, scls: list[dict[int, int]]) -> None:
        if not self.durable_tails:
            return
        needed = WRITE_QUORUM - (1 if self.data_loss is not None else 0)
        for pg, tail in self.durable_tails.items():
            if sum(1 for held in scls if held.get(pg, 0) >= tail) < needed:
                holders = [p.node_id for p, held in zip(self.storage, scls) if held.get(pg, 0) >= tail]
                every = {p.node_id: held.get(pg, 0) for p, held in zip(self.storage, scls)}
                raise Violation(f"PG {pg}: records up to {tail} are at or below a writer's VDL, but only "
                                f"{holders} are complete to it (needed {needed}; SCLs {every}; "
                                f"data loss in progress: {self.data_loss})")

    def on_recovered(self, writer: WriterProcess, volume: recovery.RecoveredVolume) -> None:
        self.stats["recoveries"] += 1
        self.trace(f"{writer.name} recovered: epoch {volume.epoch}, VDL {volume.vdl}, VCL {volume.vcl}, "
                   f"floor {volume.lsn_floor}")
        if volume.epoch in self.epoch_writer:
            raise Violation(f"epoch {volume.epoch} recovered twice: by {self.epoch_writer[volume.epoch]} "
                            f"and {writer.name}")
        self.epoch_writer[volume.epoch] = writer.name
        for older in self.writers:
            if older.log_writer is not None and older.epoch < volume.epoch and older.log_writer.vdl > volume.vdl:
                raise Violation(f"{writer.name} recovered VDL {volume.vdl} (epoch {volume.epoch}), below the VDL "
                                f"{older.log_writer.vdl} that {older.name} (epoch {older.epoch}) reached")
        chain = self.history.chain_from(volume.vdl)
        writer.recovered_chain = sorted(chain)
        self._check_durable_not_truncated(writer)
        for lsn, name, epoch in self.acked:
            if epoch < volume.epoch and lsn not in chain:
                raise Violation(f"{writer.name} recovered VDL {volume.vdl} (epoch {volume.epoch}): acknowledged commit "
                                f"{lsn} of {name} (epoch {epoch}) is not on its volume chain")

    def on_acknowledged(self, writer: WriterProcess, lsn: int) -> None:
        self.stats["acknowledged"] += 1
        self.acked.append((lsn, writer.name, writer.epoch))
        self.digest.update(f"ack {writer.name} {lsn}".encode())
        dead_in = self.history.dead(lsn)
        if dead_in is not None:
            raise Violation(f"{writer.name} (epoch {writer.epoch}) acknowledged commit {lsn}, inside truncation "
                            f"range ({dead_in[0]}, {dead_in[1]}] ({self.range_origin[dead_in]}): {LOST}")
        for other in self.writers:
            if other.volume is not None and other.epoch > writer.epoch and other.volume.vdl < lsn:
                raise Violation(f"{writer.name} (epoch {writer.epoch}) acknowledged commit {lsn} after {other.name} "
                                f"recovered epoch {other.epoch} with VDL {other.volume.vdl}: the commit is lost")

    def check_page(self, what: str, wire, expected) -> None:
        self.stats["pages_checked"] += 1
        if _normal(wire) != _normal(expected):
            raise Violation(f"{what}: got {wire!r}, the surviving history says {expected!r}")

    # --- the run ---------------------------------------------------------------------------------------

    async def main(self) -> None:
        self.loop.idle_hook = self.check_step
        for process in self.storage:
            process.start()
        await asyncio.sleep(0.05)
        self.start_writer()
        supervisor = asyncio.create_task(self.supervise())
        await self.chaos()
        await self.settle(supervisor)

    async def settle(self, supervisor: asyncio.Task) -> None:
        """Faults stop; every node comes back; a writer commits to every page; then every segment
        of a PG must converge (DESIGN.md 7: gossip fills the gaps, scrubbing repairs damage)."""
        self.chaos_on = False
        self.trace("faults stop")
        self.faults_stopped_ms = self.now_ms()
        self.network.partitions.clear()
        self.network.slow.clear()
        for process in self.storage:
            process.crash_in_persist = False
            if not process.up:
                if process.restart_handle is not None:
                    process.restart_handle.cancel()
                process.start()
        writer = await self._final_writer()
        supervisor.cancel()
        self.workload_on = False
        self.trace(f"{writer.name} committed to every page; waiting for the segments to converge")
        deadline_ms = self.now_ms() + SETTLE_MS_MAX
        while self.now_ms() < deadline_ms:
            if self._converged(writer):
                break
            await asyncio.sleep(0.25)
        else:
            raise Violation(f"the segments did not converge within {SETTLE_MS_MAX} ms after the faults stopped: "
                            + self._convergence_report(writer))
        self.check_final(writer)

    async def _final_writer(self) -> WriterProcess:
        """DESIGN.md 6: recovery "must take about a second": with every node up and the network
        whole, a candidate still recovering RECOVERY_BOUND_MS later is stuck."""
        deadline_ms = self.now_ms() + FINAL_COMMIT_MS
        while self.now_ms() < deadline_ms:
            for candidate in self.writers:
                since_ms = max(candidate.started_ms, self.faults_stopped_ms)
                if candidate.state == "recovering" and self.now_ms() - since_ms > RECOVERY_BOUND_MS:
                    raise Violation(self._stuck_recovery(candidate, since_ms))
            ready = [w for w in self.writers if w.state == "ready"]
            if ready and await ready[-1].transaction(list(self.page_ids)):
                if ready[-1].state == "ready":
                    return ready[-1]
            await asyncio.sleep(0.2)
        states = {w.name: w.state for w in self.writers}
        raise Violation(f"no writer could commit within {FINAL_COMMIT_MS} ms after the faults stopped: {states}; "
                        f"storage: {[(p.node_id, p.up, p.scls()) for p in self.storage]}")

    def _stuck_recovery(self, candidate: WriterProcess, since_ms: float) -> str:
        client = candidate.client
        connected = [link.node_id for link in client.links.values() if link.connected.is_set()]
        epochs = {p.node_id: p.node.meta.epoch for p in self.storage if p.node is not None}
        return (f"{candidate.name} has been recovering for {self.now_ms() - since_ms:.0f} ms with every storage "
                f"node up and the network whole (since {since_ms:.1f} ms; started at {candidate.started_ms:.1f} "
                f"ms): it tries epoch {client.epoch}, storage holds epochs {epochs}, its links are connected to "
                f"{connected}")

    def _converged(self, writer: WriterProcess) -> bool:
        if self.data_loss is not None:
            return False  # a damaged file may still wait for its scrub
        tails = writer.log_writer.tracker.pg_tail
        if writer.log_writer.vdl < writer.log_writer.tracker.last_lsn:
            return False
        for process in self.storage:
            if not process.up or process.node is None or process.node.joining:
                return False
            for pg, tail in tails.items():
                segment = process.node.segments.get(pg)
                if segment is None or segment.scl != tail or segment.damaged is not None:
                    return False
        return True

    def _convergence_report(self, writer: WriterProcess) -> str:
        lines = [f"data loss not healed: {self.data_loss}",
                 f"writer {writer.name} (epoch {writer.epoch}) PG tails {writer.log_writer.tracker.pg_tail}, "
                 f"VDL {writer.log_writer.vdl}"]
        for process in self.storage:
            node = process.node
            if node is None:
                lines.append(f"{process.node_id}: down")
                continue
            lines.append(f"{process.node_id}: joining={node.joining} epoch={node.meta.epoch} "
                         f"segments={node.segment_summaries()}")
        return "\n".join(lines)

    def check_final(self, writer: WriterProcess) -> None:
        """Convergence: same SCL, same records above the highest base, same pages as the oracle."""
        for pg in range(PGS):
            segments = {p.node_id: p.node.segments[pg] for p in self.storage if pg in p.node.segments}
            if not segments:
                continue
            highest_base = max(s.base_lsn for s in segments.values())
            held = {}
            for node_id, segment in segments.items():
                entries, more = segment.read_records(highest_base, segment.scl, 10 ** 9, 10 ** 12)
                held[node_id] = [(e.lsn, e.crc) for e in entries]
            reference = next(iter(held.values()))
            for node_id, records in held.items():
                if records != reference:
                    raise Violation(f"PG {pg}: {node_id} holds other records above base {highest_base} than "
                                    f"{next(iter(held))}: {records[-5:]} vs {reference[-5:]}")
            read_point = writer.log_writer.tracker.read_point(pg)
            for page_id in self.page_ids[pg * PAGES_PER_PG_USED:(pg + 1) * PAGES_PER_PG_USED]:
                expected = self.history.page(page_id, read_point)
                for node_id, segment in segments.items():
                    try:
                        page = segment.get_page(page_id, read_point)
                    except Exception as error:
                        raise Violation(f"after convergence, {node_id} cannot read page {page_id} at LSN "
                                        f"{read_point}: {error!r}") from None
                    self.check_page(f"after convergence, {node_id} page {page_id} at LSN {read_point}",
                                    None if page is None else pages.to_wire(page), expected)
        for lsn, name, epoch in self.acked:
            if self.history.dead(lsn) is not None:
                raise Violation(f"acknowledged commit {lsn} of {name} (epoch {epoch}) was truncated")
        for process in self.storage:
            self._add_node_stats(process.node)
        self.stats["truncations"] = len(self.history.ranges)
        self.stats["truncations_by_failed_candidates"] = sum(
            1 for w in self.writers if w.volume is None and w.client is not None and w.client.truncations
            and tuple(w.client.truncations[-1]) in self.history.ranges)
        self.stats["fenced_writers"] = sum(1 for w in self.writers if w.state == "fenced")


def _shutdown(sim: Simulation) -> None:
    """End every process and close every file."""
    loop = sim.loop
    loop.idle_hook = None
    for process in sim.storage:
        if process.restart_handle is not None:
            process.restart_handle.cancel()
        if process.up:
            sim.chaos_on = False
            sim.crash_storage(process, "stopped at the end")
    for name in list(sim.tasks):
        sim.kill(name)
    pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
    for task in pending:
        task.cancel()
    with contextlib.suppress(BaseException):
        loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
    with contextlib.suppress(BaseException):
        loop.run_until_complete(asyncio.sleep(0))
    loop.close()


def run(seed: int, data_dir: Path, echo: Callable[[str], None] | None = None) -> Result:
    """Run one seed. Raises Violation (an AssertionError) naming what a checker saw. `echo`
    receives every trace line (faults, recoveries, truncations) as it happens."""
    sim = Simulation(seed, data_dir)
    sim.echo = echo
    with patched(sim.network) as errors:
        errors.clock = sim.now_ms
        sim.errors = errors
        asyncio.set_event_loop(sim.loop)
        try:
            sim.loop.run_until_complete(sim.main())
            if sim.failures:
                raise Violation("; ".join(sim.failures[:5]))
            if errors.alarms:
                raise Violation("error logs that mean a bug: " + "; ".join(errors.alarms[:5]))
        except Violation as violation:
            raise Violation(f"{violation}\n{report(sim)}") from None
        finally:
            _shutdown(sim)
            asyncio.set_event_loop(None)
    sim.stats["acked_total"] = len(sim.acked)
    return Result(seed, sim.digest.hexdigest(), sim.now_ms(), sim.stats)


def report(sim: Simulation) -> str:
    lines = [f"at {sim.now_ms():.1f} ms of virtual time; stats {dict(sim.stats)}",
             "writers (name, state, epoch, VDL): "
             f"{[(w.name, w.state, w.epoch, w.log_writer.vdl if w.log_writer else None) for w in sim.writers]}",
             f"storage: {[(p.node_id, 'up' if p.up else 'down', p.scls()) for p in sim.storage]}",
             "last events:", *sim.trace_lines]
    if sim.errors is not None and sim.errors.recent:
        lines += ["last error logs:", *sim.errors.recent]
    if sim.failures:
        lines += ["failures:", *sim.failures[:10]]
    return "\n".join(lines)

