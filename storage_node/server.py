"""The storage node's asyncio shell: sockets, disk and signals around the sans-I/O Node.

Responsibilities: accept connections and read frames (at most FRAME_BYTES_MAX; bad bytes close
that connection only); keep at most IN_FLIGHT_REQUESTS_MAX requests outstanding per connection,
answering them in the order received; run the group fsync; store the node's metadata (epoch, LSN
floor, truncation ranges and the epoch's writer address) in DATA/epoch atomically; keep one log for
all the node's segments in DATA/log and a page image per PG in DATA/pages; on start, open the
images, scan the log and rebuild every segment from its image and its entries; run the healer
(storage_node/healer.py: joining, gossip, coalescing, collection, scrubbing) beside it.
Invariants:
  - Persist before ack: a reply that depends on records, a truncation marker or a raised epoch is
    sent only after the write and fsync that cover it (Node.ready -> persist -> Node.advance).
  - Group fsync: the event loop persists a whole Ready (everything that arrived, from every
    connection, since the previous one) with one write and one fsync of the node's log, however
    many PGs it touches (a log per PG measured five times the fsync time for a commit that
    touches five PGs). It does so inline: while
    a write and fsync run, new requests wait in the sockets' kernel buffers and form the next
    group. Handing each group to a disk thread and back measured about a third slower per commit
    (two thread wake-ups per group on a node whose only job is this).
  - An fsync or write failure is fatal: the process stops (fsync is never retried).
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import json
import logging
import os
import signal
import sys
from pathlib import Path

from aurora_db import storage_protocol as sp
from aurora_db import truncation
from aurora_db.constants import (FRAME_BYTES_MAX, FRAME_READ_CHUNK_BYTES, IN_FLIGHT_REQUESTS_MAX,
                                 STORAGE_CONNECTIONS_MAX)
from aurora_db.framing import FrameDecoder, FrameError, encode_frame
from aurora_db.process import collect_after_thaw_on, tune_garbage_collection, yield_to_latency_critical_processes
from storage_node.healer import Healer
from storage_node.log_file import LogFile, fsync_directory
from storage_node.node import Node, NodeMeta, Ready, apply_truncations, entries_by_pg, replay_segment
from storage_node.page_image import DamagedImage, PageImage, image_files

log = logging.getLogger("storage_node")

META_FILE = "epoch"
LOG_DIR = "log"
PAGES_DIR = "pages"
OLD_LAYOUT_PREFIX = "pg-"  # a log per PG, before the node-wide log


# --- node metadata: DATA/epoch ----------------------------------------------------------------


def read_meta(data_dir: Path) -> NodeMeta:
    path = data_dir / META_FILE
    if not path.exists():
        return NodeMeta()
    stored = json.loads(path.read_text())  # written atomically: a parse error is real damage, stop
    return NodeMeta(epoch=int(stored["epoch"]), lsn_floor=int(stored.get("lsn_floor", 0)),
                    truncations=truncation.live(truncation.from_wire(stored.get("truncations", []))),
                    writer=stored.get("writer"))


def write_meta(data_dir: Path, meta: NodeMeta) -> None:
    """Atomically: write a temporary file, fsync it, rename it over the old one, fsync the directory."""
    path = data_dir / META_FILE
    tmp = data_dir / (META_FILE + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, json.dumps({"epoch": meta.epoch, "lsn_floor": meta.lsn_floor,
                                 "truncations": truncation.to_wire(meta.truncations),
                                 "writer": meta.writer}).encode() + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_directory(data_dir)


# --- the disk side ------------------------------------------------------------------------------


class OldLayout(Exception):
    """The data directory holds a log per PG, written by an earlier version of the storage node."""


class Disk:
    """The node's files, used only from the event loop's thread."""

    def __init__(self, data_dir: Path):
        self.data_dir = data_dir
        self.log: LogFile | None = None

    @property
    def pages_dir(self) -> Path:
        return self.data_dir / PAGES_DIR

    def open(self, node_id: str, az: str, *, has_peers: bool = False, clock_ms=lambda: 0.0) -> Node:
        """The node as its files left it. With peers, a data directory without metadata is an
        emptied (or new) member: it joins from its peers before it serves (gossip.decide_join)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        old = sorted(p.name for p in self.data_dir.iterdir() if p.name.startswith(OLD_LAYOUT_PREFIX))
        if old:
            raise OldLayout(f"{self.data_dir} holds logs per PG ({', '.join(old[:3])}...) of an earlier version; "
                            f"this version keeps one log per node in {LOG_DIR}/: start from a new data directory")
        joining = has_peers and not (self.data_dir / META_FILE).exists()
        meta = read_meta(self.data_dir)
        images = self._open_images()
        self.log, entries, report = LogFile.open(self.data_dir / LOG_DIR)
        log.info("log: %d entries, torn bytes cut %d, damaged entries skipped %d",
                 report.entries, report.torn_bytes_cut, report.bad_entries)
        floors = [e.lsn_floor for e in entries if getattr(e, "lsn_floor", None) is not None]
        if floors and max(floors) > meta.lsn_floor:  # cannot happen: the floor is persisted first
            log.error("a truncation floor %d in the log is above the stored floor %d", max(floors), meta.lsn_floor)
            meta = dataclasses.replace(meta, lsn_floor=max(floors))
        segments = {}
        by_pg = entries_by_pg(entries)
        for pg in sorted(by_pg.keys() | images.keys()):
            image, damaged = images.get(pg, (None, None))
            segment = segments[pg] = replay_segment(pg, by_pg.get(pg, []), image, truncation.pairs(meta.truncations))
            if damaged:
                segment.damaged = damaged
            apply_truncations(segment, meta.truncations)  # ranges told to the node before this PG existed
            log.info("PG %d: image at LSN %d, %d log entries, SCL %d, %d pending", pg, segment.base_lsn,
                     len(by_pg.get(pg, [])), segment.scl, segment.pending_count)
        return Node(node_id, az, meta, segments, clock_ms=clock_ms, joining=joining)

    def _open_images(self) -> dict[int, tuple[PageImage, str | None]]:
        """pg -> (its page image, why it is damaged or None). A damaged header leaves the PG with an
        empty image marked damaged: it serves nothing until copied from a peer."""
        images = {}
        for pg, path in sorted(image_files(self.pages_dir).items()):
            try:
                image, damaged_pages = PageImage.open(path)
            except DamagedImage as error:
                log.error("%s", error)
                images[pg] = (PageImage.empty(pg), str(error))
                continue
            reason = f"{path.name}: pages {damaged_pages[:5]} fail their checksums" if damaged_pages else None
            if reason:
                log.error("%s: the segment is copied from a peer", reason)
            images[pg] = (image, reason)
        return images

    def persist(self, ready: Ready) -> None:
        if ready.meta is not None:
            write_meta(self.data_dir, ready.meta)
        if ready.log_entries:
            self.log.append(ready.log_entries)
            self.log.sync()

    def close(self) -> None:
        if self.log is not None:
            self.log.close()


# --- the network side -------------------------------------------------------------------------


def _reply_frame(reply: dict) -> bytes:
    try:
        return encode_frame(reply)
    except FrameError as error:
        return encode_frame(sp.error(reply.get("id"), sp.ERROR_INTERNAL, str(error)))


class _Connection:
    """One client connection's replies, sent in the order its requests came: `owed` holds a slot
    per request not yet answered, filled when its reply is known (at once, or once what it
    depends on is durable); the filled slots at its head go out together, with one write."""

    __slots__ = ("writer", "owed", "progress")

    def __init__(self, writer: asyncio.StreamWriter):
        self.writer = writer
        self.owed: collections.deque[list] = collections.deque()  # [reply or None] per request, in order
        self.progress = asyncio.Event()  # set whenever replies went out

    def send_ready(self) -> None:
        frames = []
        owed = self.owed
        while owed and owed[0][0] is not None:
            frames.append(_reply_frame(owed.popleft()[0]))
        if frames:
            if not self.writer.is_closing():
                self.writer.write(b"".join(frames))
            self.progress.set()


class StorageServer:
    def __init__(self, node: Node, disk: Disk):
        self.node = node
        self.disk = disk
        self._work = asyncio.Event()
        # (op_seq, meta, future) of durable() calls: the healer's, at most one per healing loop.
        self._durable_waiters: list[tuple[int, NodeMeta, asyncio.Future]] = []
        self._connections: set[asyncio.Task] = set()
        self.broken_invariant = asyncio.get_running_loop().create_future()  # set: the node stops

    async def persist_forever(self) -> None:
        """The group fsync loop. Returns only by raising: a disk failure stops the node."""
        while True:
            await self._work.wait()
            self._work.clear()
            while self.node.has_ready():
                ready = self.node.ready()
                self.disk.persist(ready)  # blocks the loop for one write + fsync: see the docstring
                answered: dict[_Connection, None] = {}  # each connection once, in order
                for (connection, slot), reply in self.node.advance(ready):
                    slot[0] = reply
                    answered[connection] = None
                for connection in answered:
                    connection.send_ready()
                self._wake_durable_waiters()

    def kick(self) -> None:
        """Work was queued outside a request (by the healer): persist it."""
        self._work.set()

    async def durable(self, op_seq: int, meta: NodeMeta) -> None:
        """Wait until every op the node queued up to mark `op_seq` is durable and applied, and
        everything in `meta` (an earlier accepted metadata) is durable too."""
        if self._is_durable(op_seq, meta):
            return
        future = asyncio.get_running_loop().create_future()
        self._durable_waiters.append((op_seq, meta, future))
        await future

    def _is_durable(self, op_seq: int, meta: NodeMeta) -> bool:
        return self.node.durable_op_seq >= op_seq and self.node.meta_covers(meta)

    def _wake_durable_waiters(self) -> None:
        if not self._durable_waiters:
            return
        waiting = []
        for op_seq, meta, future in self._durable_waiters:
            if future.done():
                continue
            if self._is_durable(op_seq, meta):
                future.set_result(None)
            else:
                waiting.append((op_seq, meta, future))
        self._durable_waiters = waiting

    async def handle_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Read whatever bytes have come, take every whole frame in them, answer in order. No task
        or future per request: a request answered at once goes out at once if nothing is owed
        before it; one that waits for the disk is answered by persist_forever. Reading stops while
        IN_FLIGHT_REQUESTS_MAX replies are owed, or while the client does not take its replies."""
        peer = writer.get_extra_info("peername")
        if len(self._connections) >= STORAGE_CONNECTIONS_MAX:
            log.warning("refusing connection from %s: %d connections is the limit", peer, STORAGE_CONNECTIONS_MAX)
            writer.close()
            return
        task = asyncio.current_task()
        self._connections.add(task)
        connection = _Connection(writer)
        decoder = FrameDecoder(FRAME_BYTES_MAX)
        graceful = False
        try:
            while True:
                data = await reader.read(FRAME_READ_CHUNK_BYTES)
                if not data:
                    graceful = not decoder.buffered_bytes
                    if not graceful:
                        log.warning("connection from %s closed in the middle of a frame", peer)
                    break
                for request in decoder.feed(data):
                    while len(connection.owed) >= IN_FLIGHT_REQUESTS_MAX:
                        connection.progress.clear()
                        await connection.progress.wait()
                    self._take(connection, request)
                await writer.drain()
        except FrameError as error:
            log.warning("closing connection from %s: %s", peer, error)
        except (ConnectionError, OSError) as error:
            log.info("connection from %s: %s", peer, error)
        finally:
            try:
                while graceful and connection.owed and not writer.is_closing():  # answer what was asked
                    connection.progress.clear()
                    await connection.progress.wait()
                if graceful:
                    await writer.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                writer.close()
                self._connections.discard(task)

    def _take(self, connection: _Connection, request: dict) -> None:
        slot = [None]
        reply = self._step(request, (connection, slot))
        if reply is None:
            connection.owed.append(slot)  # answered once durable (persist_forever)
            self._work.set()
        elif connection.owed:
            slot[0] = reply  # answered now, sent after the replies owed before it
            connection.owed.append(slot)
        else:
            connection.writer.write(_reply_frame(reply))

    def _step(self, request: dict, token: tuple) -> dict | None:
        try:
            return self.node.step(request, token)
        except AssertionError as error:  # a broken invariant: stop loudly, do not limp on
            if not self.broken_invariant.done():
                self.broken_invariant.set_exception(error)
            raise
        except Exception as error:  # an unexpected failure of one request: answer "internal"
            log.exception("request %r failed", {k: request.get(k) for k in ("id", "t")})
            return sp.error(request.get("id"), sp.ERROR_INTERNAL, repr(error))

    async def close(self) -> None:
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)


async def serve(args) -> int:
    host, port = args.listen
    disk = Disk(Path(args.data))
    loop = asyncio.get_running_loop()
    collect_after_thaw_on(loop)
    peers = [peer for peer in getattr(args, "peers", None) or [] if peer[0] != args.node_id]
    try:
        node = disk.open(args.node_id, args.az, has_peers=bool(peers), clock_ms=lambda: loop.time() * 1000)
    except OldLayout as error:
        log.critical("cannot start: %s", error)
        return 1
    storage = StorageServer(node, disk)
    healer = Healer(node, disk.pages_dir, disk.log, peers, storage.kick, storage.durable)
    listener = await asyncio.start_server(storage.handle_connection, host, port)
    log.info("storage node %s (AZ %s) listening on %s:%d, epoch %d, %d PGs",
             args.node_id, args.az, host, port, node.meta.epoch, len(node.segments))
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    persister = loop.create_task(storage.persist_forever())
    healing = loop.create_task(healer.run())
    stopper = loop.create_task(stop.wait())
    await asyncio.wait([persister, healing, stopper, storage.broken_invariant], return_when=asyncio.FIRST_COMPLETED)
    exit_code = 0
    if healing.done():
        log.critical("stopping: background healing failed", exc_info=healing.exception())
        exit_code = 1
    elif persister.done():
        log.critical("stopping: the disk loop failed (a write or fsync error, or a broken invariant)",
                     exc_info=persister.exception())
        exit_code = 1
    elif storage.broken_invariant.done():
        log.critical("stopping: broken invariant", exc_info=storage.broken_invariant.exception())
        exit_code = 1
    else:
        log.info("stopping")
    persister.cancel()
    healing.cancel()
    stopper.cancel()
    listener.close()
    await storage.close()
    disk.close()
    return exit_code


def run(args) -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format=f"%(asctime)s storage-node {args.node_id} %(levelname)s %(name)s: %(message)s")
    tune_garbage_collection()
    yield_to_latency_critical_processes()
    try:
        import uvloop
    except ImportError:
        loop_factory = None
    else:
        loop_factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(serve(args))
