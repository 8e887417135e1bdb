"""The writer's connections to the six storage nodes: requests, record shipping, catch-up.

One `NodeLink` per storage node keeps a connection open (reconnecting every RECONNECT_INTERVAL_MS),
matches replies to requests by id, and ships append batches in LSN order per PG. On every
(re)connect the link first raises the node to the writer's epoch and truncation point, then
resends what the node lacks: from the writer's bounded buffer of recent records, or, when that
does not reach back far enough, from a peer segment that has them (this is how a restarted
storage node catches up until gossip exists); while no connected peer has them, the link drops
and reconnects every RECONNECT_INTERVAL_MS until one does.
Invariants: acks feed the DurabilityTracker only; a node's queue is bounded (a node too far
behind is disconnected and caught up on reconnect); a "stale_epoch" reply fences this writer.
Read points (PGMRPL, DESIGN.md 2): every READ_POINT_RENEW_MS the client tells every connected
storage node the lowest LSN it may still read at: the lowest read point of a page read under way,
or else the engine's (`read_point_source`: the writer's VDL, a reader's applied VDL; read points
only grow). Storage collects page versions only below every such lease.
"""

from __future__ import annotations

import asyncio
import collections
import os
import itertools
import logging
import random
from typing import Callable

from aurora_db import storage_protocol as sp
from aurora_db import truncation
from aurora_db.constants import (
    APPENDS_IN_FLIGHT_MAX,
    BATCH_RECORDS_MAX,
    CATCH_UP_RECORDS_PER_REQUEST,
    FRAME_BYTES_MAX,
    FRAME_READ_CHUNK_BYTES,
    RECENT_RECORDS_PER_PG_MAX,
    READ_POINT_RENEW_MS,
    RECONNECT_INTERVAL_MS,
    SEND_QUEUE_RECORDS_MAX,
    STORAGE_REQUEST_TIMEOUT_MS,
)
from aurora_db.errors import StaleEpoch, StorageUnavailable
from aurora_db.framing import FrameDecoder, FrameError, encode_frame
from aurora_db.records import Record

log = logging.getLogger(__name__)

REQUEST_EXPIRY_CHECK_MS = 100  # how late a request's timeout may be noticed


class RequestFailed(Exception):
    """A storage node answered a request with an error."""

    def __init__(self, node_id: str, code: str, message: str):
        super().__init__(f"{node_id}: {code}: {message}")
        self.node_id = node_id
        self.code = code


class NodeUnreachable(Exception):
    """No connection to the node, or it did not answer in time."""


class CatchUpStalled(NodeUnreachable):
    """No connected peer holds the records this node lacks yet (after a writer restart the peers'
    links reconnect at the same moment as this one): drop the link, reconnect and try again."""


class NodeLink:
    """One storage node: a connection, pipelined requests, and an ordered queue of append batches."""

    def __init__(self, client: "StorageClient", node_id: str, host: str, port: int):
        self.client = client
        self.node_id = node_id
        self.host = host
        self.port = port
        self.az: str | None = None
        self.connected = asyncio.Event()
        self._writer: asyncio.StreamWriter | None = None
        self._unsent: list[bytes] = []  # frames for the current connection, written once per loop turn
        self._replies: dict[int, tuple[asyncio.Future, float]] = {}  # id -> (reply, deadline in loop time)
        self._ids = itertools.count(1)
        self._queue: collections.deque[tuple[int, list]] = collections.deque()  # (pg, sealed records)
        self._queued_records = 0
        self._shipping = False  # caught up on this connection: queued records may go
        self._pump_soon = False  # a _pump is scheduled for the end of this loop turn
        # Appends sent on the current connection and not answered: id -> deadline in loop time.
        # At most APPENDS_IN_FLIGHT_MAX; answered by _on_append_reply, not by a waiting task.
        self._appends: dict[int, float] = {}
        self._task: asyncio.Task | None = None
        self._resync_now = False
        self.last_scls: dict[int, int] = {}

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"link-{self.node_id}")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._drop_connection()

    # --- requests -----------------------------------------------------------------------------

    async def request(self, message: dict, timeout_ms: int = STORAGE_REQUEST_TIMEOUT_MS) -> dict:
        if not self.connected.is_set() or self._writer is None:
            raise NodeUnreachable(f"{self.node_id} is not connected")
        return await self._send_request(message, timeout_ms)

    async def _send_request(self, message: dict, timeout_ms: int) -> dict:
        if self._writer is None:  # dropped between two requests of a handshake or catch-up
            raise NodeUnreachable(f"{self.node_id} is not connected")
        request_id = next(self._ids)
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._replies[request_id] = (future, loop.time() + timeout_ms / 1000)
        try:
            frame = encode_frame({**message, "id": request_id})
            self._send_frame(frame)
            self.client.bytes_sent += len(frame)
            self.client.requests_sent += 1
            reply = await future  # _expire_requests fails it at its deadline
        except (asyncio.TimeoutError, ConnectionError, OSError) as error:
            raise NodeUnreachable(f"{self.node_id}: {type(error).__name__} {error}") from None
        finally:
            self._replies.pop(request_id, None)
        if not reply.get("ok"):
            code = reply.get("error", sp.ERROR_INTERNAL)
            if code == sp.ERROR_STALE_EPOCH:
                self.client.on_fenced(self.node_id, reply.get("message", ""))
            raise RequestFailed(self.node_id, code, reply.get("message", ""))
        return reply

    def _send_frame(self, frame: bytes) -> None:
        """Queue a frame and write every frame queued in this loop turn with one write: the
        appends of a boxcar (one per PG) and catch-up requests cost one send, not one each."""
        if not self._unsent:
            asyncio.get_running_loop().call_soon(self._write_unsent)
        self._unsent.append(frame)

    def _write_unsent(self) -> None:
        if self._unsent and self._writer is not None:
            self._writer.write(b"".join(self._unsent))
        self._unsent.clear()

    # --- shipping -----------------------------------------------------------------------------

    def enqueue(self, pg: int, sealed: list) -> None:
        if not self.connected.is_set():
            return  # caught up from the recent buffer or a peer on reconnect
        if self._queued_records + len(sealed) > SEND_QUEUE_RECORDS_MAX:
            log.warning("%s is %d records behind; reconnecting to catch it up", self.node_id, self._queued_records)
            self._drop_connection()
            return
        self._queue.append((pg, sealed))
        self._queued_records += len(sealed)
        if self._shipping and not self._pump_soon:
            self._pump_soon = True  # after the current callback: a boxcar's PGs ride in one request
            asyncio.get_running_loop().call_soon(self._pump)

    def _pump(self) -> None:
        """Send what is queued as append_many requests of at most BATCH_RECORDS_MAX records, each
        carrying the batches of several PGs, while fewer than APPENDS_IN_FLIGHT_MAX await their
        replies: what queues meanwhile (the commits of other sessions) rides in the next request,
        sent when a reply frees a slot. A node persists everything that arrived during its fsync as
        one group anyway, so this costs no latency, and it saves requests, replies and sends on
        both sides. Order within a PG is kept (requests are answered in order); order across PGs
        does not matter, since each segment builds its own chain. A slow node's records wait in
        the bounded queue, and a node that overflows it is disconnected and caught up (a slow node
        outside the write quorum never holds VDL back, so LAL alone would not bound what it is
        owed). No task per request: this runs from the loop's callbacks, and replies are handled
        where they are read (_receive), which on a busy writer saves several task switches per
        storage node and boxcar."""
        self._pump_soon = False
        if not self._shipping or self._writer is None:
            return
        deadline = asyncio.get_running_loop().time() + STORAGE_REQUEST_TIMEOUT_MS * 5 / 1000
        frames = []
        while self._queue and len(self._appends) < APPENDS_IN_FLIGHT_MAX:
            request_id = next(self._ids)
            message = {"t": sp.APPEND_MANY, "epoch": self.client.epoch, "batches": self._take_request(),
                       "id": request_id}
            try:
                frame = encode_frame(message)
            except FrameError:
                # Rows and keys are bounded so that a full batch always fits a frame: this is a bug.
                log.critical("an append of %d records does not fit a frame",
                             sum(len(b[1]) for b in message["batches"]), exc_info=True)
                os._exit(70)
            self._appends[request_id] = deadline
            frames.append(frame)
            self.client.bytes_sent += len(frame)
            self.client.requests_sent += 1
        if frames:
            self._writer.write(b"".join(frames))

    def _take_request(self) -> list[list]:
        """Up to BATCH_RECORDS_MAX queued records, as [pg, records] batches (each PG once, in
        queue order); the rest of a queue entry that does not fit goes back to the front."""
        by_pg: dict[int, list] = {}
        room = BATCH_RECORDS_MAX
        while self._queue and room:
            pg, sealed = self._queue.popleft()
            if len(sealed) > room:
                self._queue.appendleft((pg, sealed[room:]))
                sealed = sealed[:room]
            self._queued_records -= len(sealed)
            by_pg.setdefault(pg, []).extend(sealed)
            room -= len(sealed)
        return [[pg, sealed] for pg, sealed in by_pg.items()]

    def _on_append_reply(self, reply: dict) -> None:
        """An append of the current connection was answered: its SCLs go to the tracker, and its
        slot to what is queued. A failure drops the connection (the node is caught up afresh on
        the next one); a stale epoch fences this writer."""
        if not reply.get("ok"):
            code = reply.get("error", sp.ERROR_INTERNAL)
            if code == sp.ERROR_STALE_EPOCH:
                self.client.on_fenced(self.node_id, reply.get("message", ""))
            log.warning("append to %s failed: %s", self.node_id,
                        RequestFailed(self.node_id, code, reply.get("message", "")))
            self._drop_connection()
            return
        try:
            scls = [(int(pg), int(scl)) for pg, scl in reply["scls"]]
        except (KeyError, TypeError, ValueError):
            log.warning("append to %s: a reply without its SCLs: %.200r", self.node_id, reply)
            self._drop_connection()
            return
        for pg, scl in scls:
            self._on_scl(pg, scl)
        if reply.get("pending_dropped"):
            log.warning("%s dropped %d records it could not hold yet; reconnecting to catch it up",
                        self.node_id, reply["pending_dropped"])
            self.resync()
            return
        if self._queue:
            self._pump()

    # --- connection ---------------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(self.host, self.port, limit=FRAME_BYTES_MAX), STORAGE_REQUEST_TIMEOUT_MS / 1000)
            except (OSError, asyncio.TimeoutError):
                await asyncio.sleep(RECONNECT_INTERVAL_MS / 1000)
                continue
            self._writer = writer
            receiver = asyncio.get_running_loop().create_task(self._receive(reader))
            expirer = asyncio.get_running_loop().create_task(self._expire_requests())
            try:
                await self._handshake()
                self.connected.set()
                await self._catch_up()
                self._shipping = True
                self._pump()
                await receiver
            except (NodeUnreachable, RequestFailed, ConnectionError, OSError) as error:
                log.info("link to %s: %s", self.node_id, error)
            finally:
                self._drop_connection()
                for task in (receiver, expirer):
                    task.cancel()
            if not self._resync_now:
                await asyncio.sleep(RECONNECT_INTERVAL_MS / 1000)
            self._resync_now = False

    async def _handshake(self) -> None:
        """Raise the node to this writer's epoch and truncation point before anything else.

        Repeated until neither changed meanwhile, so a node that connects while recovery is
        choosing them can never be left with records a truncation should have dropped."""
        while True:
            epoch, truncations = self.client.epoch, list(self.client.truncations)
            reply = await self._send_request({"t": sp.STATUS}, STORAGE_REQUEST_TIMEOUT_MS)
            self.az = reply.get("az")
            if not self.client.is_writer:
                break  # a reader only reads: it never raises an epoch or truncates
            self.client.newest_epoch_seen = max(self.client.newest_epoch_seen, reply["epoch"])
            if epoch is not None and reply["epoch"] > epoch:
                # Its SCLs count a newer writer's records: never let them into this writer's VDL.
                message = f"the node holds epoch {reply['epoch']}, newer than this writer's {epoch}"
                self.client.on_fenced(self.node_id, message)
                raise RequestFailed(self.node_id, sp.ERROR_STALE_EPOCH, message)
            if epoch is not None and reply["epoch"] < epoch:
                try:
                    reply = await self._send_request({"t": sp.SET_EPOCH, "epoch": epoch,
                                                      "writer": self.client.writer_address},
                                                     STORAGE_REQUEST_TIMEOUT_MS)
                except RequestFailed as error:
                    if error.code != sp.ERROR_EPOCH_CLAIMED:  # raised meanwhile by our own requests: fine
                        raise
            held = truncation.pairs(truncation.from_wire(reply.get("truncations")))
            for above_lsn, lsn_floor, range_epoch in truncations:
                if (above_lsn, lsn_floor) not in held:
                    reply = await self._send_request(
                        {"t": sp.TRUNCATE, "epoch": epoch, "above_lsn": above_lsn, "lsn_floor": lsn_floor,
                         "range_epoch": range_epoch}, STORAGE_REQUEST_TIMEOUT_MS)
            if (epoch, truncations) == (self.client.epoch, self.client.truncations):
                break
        self._report_scls(reply)

    def resync(self) -> None:
        """Reconnect now: handshake again and catch up (after recovery changed epoch or tails)."""
        self._resync_now = True
        self._drop_connection()

    def _report_scls(self, reply: dict) -> None:
        self.client.tracker_forget(self.node_id)
        self.last_scls = {}
        for pg, scl in reply.get("pgs", {}).items():
            self._on_scl(int(pg), scl)

    def _on_scl(self, pg: int, scl: int) -> None:
        """Every SCL this node reports: kept per link (recovery watches it) and fed to the tracker."""
        if scl > self.last_scls.get(pg, -1):
            self.last_scls[pg] = scl
        self.client.on_ack(pg, self.node_id, scl)

    async def _catch_up(self) -> None:
        """Send this node every record it lacks up to what the writer has sent so far."""
        for pg, tail in self.client.sent_tails().items():
            scl = self.last_scls.get(pg, 0)
            while scl < tail:
                sealed = self.client.recent_after(pg, scl)
                if sealed is None:
                    sealed = await self.client.fetch_from_peer(pg, scl, tail, exclude=self.node_id)
                if not sealed:
                    raise CatchUpStalled(f"{self.node_id}: PG {pg} is complete to {scl}, the writer sent up to "
                                         f"{tail}, and no connected peer has the records in between yet")
                reply = await self._send_request(
                    {"t": sp.APPEND, "epoch": self.client.epoch, "pg": pg, "records": sealed},
                    STORAGE_REQUEST_TIMEOUT_MS * 5)
                self._on_scl(pg, reply["scl"])
                if reply["scl"] <= scl:
                    raise CatchUpStalled(f"{self.node_id}: PG {pg} did not advance past {scl} on catch-up")
                scl = reply["scl"]

    async def _receive(self, reader: asyncio.StreamReader) -> None:
        """Take every whole reply in whatever bytes came (a node answers a boxcar's appends, and
        anything else that was owed, with one write), until the connection closes."""
        decoder = FrameDecoder(FRAME_BYTES_MAX)
        try:
            while True:
                data = await reader.read(FRAME_READ_CHUNK_BYTES)
                if not data:
                    log.info("connection to %s closed", self.node_id)
                    return
                for reply in decoder.feed(data):
                    request_id = reply.get("id")
                    if self._appends.pop(request_id, None) is not None:
                        self._on_append_reply(reply)
                        continue
                    future, _ = self._replies.get(request_id, (None, 0))
                    if future is not None and not future.done():
                        future.set_result(reply)
        except (ConnectionError, OSError, FrameError) as error:
            log.info("connection to %s closed: %s", self.node_id, error)

    async def _expire_requests(self) -> None:
        """Fail every request past its deadline (one timer per connection instead of one per request)."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(REQUEST_EXPIRY_CHECK_MS / 1000)
            now = loop.time()
            for future, deadline in list(self._replies.values()):
                if deadline < now and not future.done():
                    future.set_exception(asyncio.TimeoutError("no reply within its deadline"))
            if any(deadline < now for deadline in self._appends.values()):
                log.warning("append to %s failed: no reply within its deadline", self.node_id)
                self._drop_connection()

    def _drop_connection(self) -> None:
        was_connected = self.connected.is_set()
        self.connected.clear()
        self._shipping = False
        self._appends.clear()  # answered on no later connection: the node is caught up afresh
        self._queue.clear()
        self._queued_records = 0
        self._unsent.clear()  # never written to the next connection: their requests fail below
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        for future, _ in self._replies.values():
            if not future.done():
                future.set_exception(ConnectionError(f"connection to {self.node_id} lost"))
        if was_connected:
            self.client.tracker_forget(self.node_id)


class StorageClient:
    """All six links, the writer's epoch, the recent-records buffer and the ack callback."""

    def __init__(self, peers: list[tuple[str, str, int]], *, on_ack: Callable[[int, str, int], None],
                 on_forget: Callable[[str], None], on_fenced: Callable[[str], None], is_writer: bool = True,
                 writer_address: str | None = None):
        self.links = {node_id: NodeLink(self, node_id, host, port) for node_id, host, port in peers}
        self.learners: set[str] = set()  # links outside every quorum until they replace a member
        self.is_writer = is_writer  # a reader's client only reads pages, at the epoch it was told
        self.writer_address = writer_address  # named with every epoch this writer claims
        self.epoch: int | None = None
        self.newest_epoch_seen = 0  # the highest epoch any node reported in a handshake
        self.truncations: list[truncation.Range] = []  # every live (above_lsn, lsn_floor, epoch), this epoch's last
        self._on_ack = on_ack
        self._on_forget = on_forget
        self._on_fenced = on_fenced
        self._recent: dict[int, collections.deque[tuple[int, int, list]]] = collections.defaultdict(
            lambda: collections.deque(maxlen=RECENT_RECORDS_PER_PG_MAX))
        self._sent_tail: dict[int, int] = {}
        self._rng = random.Random()
        self.bytes_sent = 0  # frames written to all storage nodes, for the benchmarks
        self.requests_sent = 0
        self.read_point_source: Callable[[], int] | None = None  # set once an engine reads
        self._reads_in_flight: collections.Counter[int] = collections.Counter()  # read point -> page reads
        self._lease_name = f"compute-{os.getpid()}-{id(self):x}"
        self._lease_task: asyncio.Task | None = None

    def start(self) -> None:
        for link in self.links.values():
            link.start()
        self._lease_task = asyncio.get_running_loop().create_task(self._report_read_points(), name="read-points")

    async def stop(self) -> None:
        if self._lease_task is not None:
            self._lease_task.cancel()
        await asyncio.gather(*(link.stop() for link in self.links.values()))

    def lowest_read_point(self) -> int | None:
        """The lease to report: no page read of this client will ask below it."""
        if self.read_point_source is None:
            return None
        lowest = self.read_point_source()
        if self._reads_in_flight:
            lowest = min(lowest, min(self._reads_in_flight))
        return lowest

    async def _report_read_points(self) -> None:
        while True:
            await asyncio.sleep(READ_POINT_RENEW_MS / 1000)
            lsn = self.lowest_read_point()
            if lsn is None:
                continue
            message = {"t": sp.READ_POINT, "client": self._lease_name, "lsn": lsn}
            results = await asyncio.gather(*(link.request(message) for link in self.links.values()
                                             if link.connected.is_set()), return_exceptions=True)
            for result in results:
                if isinstance(result, Exception) and not isinstance(result, (NodeUnreachable, RequestFailed,
                                                                                 TimeoutError, ConnectionError)):
                    raise result

    # callbacks from links
    def on_ack(self, pg: int, node_id: str, scl: int) -> None:
        if node_id not in self.learners:  # a learner's acks count only once it is a member
            self._on_ack(pg, node_id, scl)

    def tracker_forget(self, node_id: str) -> None:
        if node_id not in self.learners:
            self._on_forget(node_id)

    # --- membership change (DESIGN.md 7: replace a dead storage node) ----------------------------

    def add_learner(self, node_id: str, host: str, port: int) -> NodeLink:
        """A storage node that receives every record from now on but is in no quorum yet."""
        assert node_id not in self.links, node_id
        self.learners.add(node_id)
        link = self.links[node_id] = NodeLink(self, node_id, host, port)
        link.start()
        return link

    async def replace_member(self, old: str, learner: str) -> None:
        """The learner takes `old`'s place in every quorum: `old`'s link closes and its acks are
        forgotten; the learner's SCLs count from now on. The caller has checked that the learner
        holds every record a quorum holds (see ComputeNode.replace_storage)."""
        assert learner in self.learners and old in self.links and old not in self.learners, (old, learner)
        link = self.links.pop(old)
        self._on_forget(old)
        self.learners.discard(learner)
        for pg, scl in self.links[learner].last_scls.items():
            self._on_ack(pg, learner, scl)
        await link.stop()

    async def drop_learner(self, node_id: str) -> None:
        if node_id in self.learners:
            self.learners.discard(node_id)
            await self.links.pop(node_id).stop()

    def on_fenced(self, node_id: str, message: str) -> None:
        self._on_fenced(f"{node_id} refused this writer: {message}")

    # --- shipping -----------------------------------------------------------------------------

    def seed_tails(self, pg_tails: dict[int, int]) -> None:
        """After recovery: the durable tail of every PG, which every segment must reach."""
        self._sent_tail.update(pg_tails)

    def ship(self, records: list[Record]) -> list[list]:
        """Send one MTR's records (or several) to every segment of their PGs, batched per PG.
        Returns each record's sealed form [crc, body], in the order given."""
        by_pg: dict[int, list] = {}
        sealed_all = []
        for record in records:
            crc, body = record.sealed()
            pair = [crc, body]
            sealed_all.append(pair)
            by_pg.setdefault(record.pg, []).append(pair)
            self._recent[record.pg].append((record.lsn, record.prev_pg, pair))
            self._sent_tail[record.pg] = record.lsn
        for pg, sealed in by_pg.items():
            for link in self.links.values():
                link.enqueue(pg, sealed)
        return sealed_all

    def sent_tails(self) -> dict[int, int]:
        return dict(self._sent_tail)

    def recent_after(self, pg: int, scl: int) -> list | None:
        """Records of `pg` above `scl` from the buffer, or None if the buffer does not reach back
        to `scl` (its oldest record's predecessor in the PG chain is above `scl`)."""
        recent = self._recent.get(pg)
        if not recent:
            return None
        oldest_lsn, oldest_prev_pg, _ = recent[0]
        if oldest_lsn > scl and oldest_prev_pg > scl:
            return None
        return [sealed for lsn, _, sealed in recent if lsn > scl][:CATCH_UP_RECORDS_PER_REQUEST]

    async def fetch_from_peer(self, pg: int, after: int, upto: int, exclude: str) -> list:
        for link in self._shuffled(exclude):
            try:
                reply = await link.request({"t": sp.READ_RECORDS, "epoch": self.epoch, "pg": pg, "after_lsn": after,
                                            "upto_lsn": upto, "limit": CATCH_UP_RECORDS_PER_REQUEST})
            except (NodeUnreachable, RequestFailed):
                continue
            if reply["records"]:
                return reply["records"]
        return []

    def _shuffled(self, exclude: str | None = None) -> list[NodeLink]:
        links = [link for node_id, link in self.links.items() if node_id != exclude and link.connected.is_set()]
        self._rng.shuffle(links)
        return links

    # --- reads --------------------------------------------------------------------------------

    async def get_page(self, pg: int, page_id: int, read_point: int, complete: list[str],
                       timeout_ms: int = 3 * STORAGE_REQUEST_TIMEOUT_MS) -> list | None:
        """GetPage@LSN from one segment complete to `read_point` (DESIGN.md 4: no quorum read).

        Segments known complete are tried first, then any connected one (it refuses with
        not_complete if it is behind); with none connected, wait for one until the deadline."""
        self._reads_in_flight[read_point] += 1
        try:
            return await self._get_page(pg, page_id, read_point, complete, timeout_ms)
        finally:
            self._reads_in_flight[read_point] -= 1
            if not self._reads_in_flight[read_point]:
                del self._reads_in_flight[read_point]

    async def _get_page(self, pg: int, page_id: int, read_point: int, complete: list[str], timeout_ms: int) -> list | None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_ms / 1000
        errors: list[str] = []
        while loop.time() < deadline:
            candidates = [self.links[n] for n in complete if n in self.links and self.links[n].connected.is_set()]
            self._rng.shuffle(candidates)
            candidates += [link for link in self._shuffled() if link not in candidates]
            for link in candidates:
                try:
                    request = {"t": sp.GET_PAGE, "epoch": self.epoch, "pg": pg, "page_id": page_id, "lsn": read_point}
                    if not self.is_writer:
                        request["reader"] = True
                    reply = await link.request(request)
                    return reply["page"]
                except RequestFailed as error:
                    if error.code == sp.ERROR_STALE_EPOCH:
                        raise StaleEpoch(str(error)) from None
                    if error.code == sp.ERROR_BELOW_HORIZON:  # only if this node's lease lapsed (paused > 10 s)
                        raise StorageUnavailable(f"page {page_id} at LSN {read_point}: {error}") from None
                    errors.append(str(error))
                except NodeUnreachable as error:
                    errors.append(str(error))
            await asyncio.sleep(RECONNECT_INTERVAL_MS / 1000 / 4)
        raise StorageUnavailable(f"no segment of PG {pg} could serve page {page_id} at LSN {read_point} "
                                 f"within {timeout_ms} ms: " + "; ".join(errors[-6:]))

    async def wait_connected(self, count: int, timeout_ms: int) -> list[NodeLink]:
        deadline = asyncio.get_running_loop().time() + timeout_ms / 1000
        while True:
            links = [link for link in self.links.values() if link.connected.is_set()]
            if len(links) >= count or asyncio.get_running_loop().time() > deadline:
                return links
            await asyncio.sleep(0.05)
