"""The compute node process: a writer or a reader, and the admin port.

A writer recovers the volume (DESIGN.md 6: a new epoch, VDL from storage) before it serves a
single statement, names its admin address with that epoch on storage, and streams its redo to
readers from the admin port (redo_stream.py). A reader asks storage which writer holds the newest
epoch, follows that writer's stream (replica.py), and serves reads at what it applied; while no
writer answers it goes on serving reads, and it finds the next writer by itself.
Roles change only along ROLE_TRANSITIONS: a reader is promoted (admin "promote": recovery under
a new epoch fences the old writer); a writer that storage refuses for a newer epoch, or that is
told to "demote", becomes a reader. A role change ends every client connection with a FATAL
error (their sessions belong to the engine that is gone) and starts a new engine; the node
keeps no durable state of its own (--data is only a working directory).
Admin frames (aurora_db/framing.py), one reply per request:
  {"t": "status"}   -> role, epoch, VDL, applied LSN, replica lag, ... (status())
  {"t": "promote"}  -> once this node is the writer (at once if it is already)
  {"t": "demote"}   -> once this node is a reader
  {"t": "follow"}   -> (a reader, on the writer) the connection becomes the redo stream
"""

from __future__ import annotations

import asyncio
import enum
import logging
import os

from aurora_db.constants import (
    FOLLOW_IDLE_CHECK_MS,
    READER_FEEDBACK_INTERVAL_MS,
    READ_QUORUM,
    RECONNECT_INTERVAL_MS,
    REPLACE_STORAGE_TIMEOUT_MS,
    ROLE_CHANGE_GRACE_MS,
    STARTUP_PROBE_MS,
    STORAGE_STATUS_TIMEOUT_MS,
    STREAM_HEARTBEAT_MS,
)
from aurora_db.errors import CannotConnectNow, DatabaseError, StaleEpoch
from aurora_db.framing import FrameError, encode_frame, read_frame, request_once
from aurora_db.process import run_until_stopped
from compute_node import pg_server
from compute_node.engine import Engine
from compute_node.recovery import recover
from compute_node.redo_stream import FEEDBACK, FOLLOW, RECORDS, STATE, RedoStream, wall_clock_ms
from compute_node.replica import ReplicaState, StreamBroken
from compute_node.session import EngineSession
from compute_node.storage_client import NodeUnreachable, RequestFailed, StorageClient

log = logging.getLogger("compute_node")

ADMIN_STATUS = "status"
ADMIN_PROMOTE = "promote"
ADMIN_DEMOTE = "demote"
ADMIN_REPLACE_STORAGE = "replace_storage"
REPLACE_CHECK_INTERVAL_MS = 50


class Role(enum.Enum):
    RECOVERING = "recovering"  # a writer starting: recovery comes before the first client
    WRITER = "writer"
    READER = "reader"
    PROMOTING = "promoting"  # a reader becoming the writer: recovery under a new epoch
    FENCED = "fenced"  # a writer that a newer epoch (or a demote) ended: becoming a reader


ROLE_TRANSITIONS = {
    (Role.RECOVERING, "recovered"): Role.WRITER,
    (Role.RECOVERING, "writer_exists"): Role.READER,  # started as writer while another one serves
    (Role.READER, "promote"): Role.PROMOTING,
    (Role.PROMOTING, "recovered"): Role.WRITER,
    (Role.PROMOTING, "promotion_failed"): Role.READER,
    (Role.WRITER, "newer_epoch_seen"): Role.FENCED,
    (Role.WRITER, "demote"): Role.FENCED,
    (Role.FENCED, "rejoined"): Role.READER,
}


class ComputeNode:
    def __init__(self, args):
        self.args = args
        self.role = Role.RECOVERING if args.role == "writer" else Role.READER
        self.engine: Engine | None = None
        self.client: StorageClient | None = None
        self.stream: RedoStream | None = None  # a writer's redo stream to its readers
        self.following: str | None = None  # a reader: the writer's admin address it follows now
        advertised = args.advertise_admin or args.admin
        self.admin_address = f"{advertised[0]}:{advertised[1]}" if advertised else None  # named on storage
        self.pg_context = pg_server.ServerContext(self._new_session, pg_server.SERVER_VERSION,
                                                  pg_server.PGWIRE_CONNECTIONS_MAX)
        self._follower: asyncio.Task | None = None  # a reader's stream
        self._writer_tasks: list[asyncio.Task] = []  # a writer's heartbeats and check for a newer epoch
        self._role_change: asyncio.Lock | None = None  # one role change at a time (made on the loop)
        self._tasks: set[asyncio.Task] = set()

    def _transition(self, event: str) -> None:
        old = self.role
        self.role = ROLE_TRANSITIONS[(self.role, event)]  # a missing pair is a bug: KeyError
        log.info("role %s -> %s (%s)", old.value, self.role.value, event)

    def _new_session(self) -> EngineSession:
        if self.engine is None or self.role not in (Role.WRITER, Role.READER):
            what = "changing role" if self.role in (Role.PROMOTING, Role.FENCED) else \
                "waiting for a writer to follow" if self.role is Role.READER else "recovering the volume"
            raise CannotConnectNow(f"the database system is not accepting connections: this node is {what}")
        return EngineSession(self.engine)

    # --- storage callbacks (loop thread) -------------------------------------------------------

    def _on_ack(self, pg, node_id, scl):
        if self.engine:
            self.engine.log_writer.on_ack(pg, node_id, scl)

    def _on_forget(self, node_id):
        if self.engine:
            self.engine.log_writer.on_forget(node_id)

    def _on_fenced(self, reason):
        if self.engine and self.role is Role.WRITER:
            log.error("fenced: %s", reason)
            self._transition("newer_epoch_seen")
            self.engine.log_writer.on_fenced(reason)
            self._spawn(self._rejoin_as_reader())

    def _spawn(self, coroutine) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- lifetime ------------------------------------------------------------------------------

    async def serve(self, stop: asyncio.Event) -> None:
        self._role_change = asyncio.Lock()
        host, port = self.args.listen
        admin = server = None
        try:
            if self.args.admin:
                admin = await asyncio.start_server(self._admin_connection, *self.args.admin)
            server = await pg_server.serve(host, port, self._new_session, context=self.pg_context)
            if self.role is Role.RECOVERING and await self._live_writer_elsewhere():
                self._transition("writer_exists")
            if self.role is Role.RECOVERING:
                await self._become_writer()
            else:
                self._start_following()
            await stop.wait()
        finally:
            for listener in (server, admin):
                if listener is not None:
                    listener.close()
            for task in list(self._tasks):
                task.cancel()
            await self._stop_engine()

    async def _become_writer(self) -> None:
        """Recover the volume under a new epoch and take writes (from RECOVERING or PROMOTING)."""
        client = StorageClient(self.args.storage, on_ack=self._on_ack, on_forget=self._on_forget,
                               on_fenced=self._on_fenced, is_writer=True, writer_address=self.admin_address)
        self.client = client
        client.start()
        volume = await recover(client)
        engine = Engine(asyncio.get_running_loop(), client, volume, self.args.cache_pages)
        self.engine = engine
        client.read_point_source = lambda: engine.log_writer.vdl
        for link in client.links.values():  # SCLs heard during recovery, before the tracker
            if link.connected.is_set():
                for pg, scl in link.last_scls.items():
                    engine.log_writer.on_ack(pg, link.node_id, scl)
        stream = RedoStream(asyncio.get_running_loop(), volume.epoch, engine.log_writer.tracker,
                            engine.transactions.snapshot)
        engine.log_writer.on_shipped = stream.publish  # before the first MTR: readers miss no record
        engine.log_writer.on_vdl_advanced = stream.notify
        engine.transactions.on_end = stream.notify
        engine.transactions.readers_xmin = stream.readers_xmin
        self.stream = stream
        await engine.call(engine.open_volume)
        self._transition("recovered")
        loop = asyncio.get_running_loop()
        self._writer_tasks = [loop.create_task(self._heartbeats(stream)),
                              loop.create_task(self._watch_epoch(client, volume.epoch))]
        host, port = self.args.listen
        log.info("writer ready on %s:%d (epoch %d, VDL %d)", host, port, volume.epoch, volume.vdl)

    async def _live_writer_elsewhere(self) -> bool:
        """Does storage name another writer for the newest epoch, and does it answer as writer?
        Then this node, started as a writer (a restart of an old writer, say), joins as a reader
        instead of taking the volume from a healthy writer."""
        client = StorageClient(self.args.storage, on_ack=lambda *a: None, on_forget=lambda n: None,
                               on_fenced=lambda reason: None, is_writer=False)
        client.start()
        try:
            await client.wait_connected(READ_QUORUM, STARTUP_PROBE_MS)
            address, epoch = await self._find_writer(client)
        finally:
            await client.stop()
        if address is None or address == self.admin_address:
            return False
        host, _, port = address.rpartition(":")
        reply = await request_once(host, int(port), {"t": ADMIN_STATUS}, STARTUP_PROBE_MS)
        if reply.get("role") == Role.WRITER.value and reply.get("epoch") == epoch:
            log.warning("%s is the writer of epoch %d and answers: starting as a reader", address, epoch)
            return True
        return False

    @staticmethod
    async def _heartbeats(stream: RedoStream) -> None:
        """A writer's state to its readers at least every STREAM_HEARTBEAT_MS."""
        while True:
            await asyncio.sleep(STREAM_HEARTBEAT_MS / 1000)
            stream.heartbeat()

    async def _watch_epoch(self, client: StorageClient, epoch: int) -> None:
        """A writer that has nothing to write never hears that a newer epoch took over: ask."""
        while True:
            await asyncio.sleep(FOLLOW_IDLE_CHECK_MS / 1000)
            _, newest = await self._find_writer(client)
            if newest > epoch:
                self._on_fenced(f"storage holds epoch {newest}, newer than this writer's {epoch}")
                return

    async def _stop_engine(self) -> None:
        """Drop the engine, the redo stream and the storage client (a role change, or the end)."""
        for task in [self._follower, *self._writer_tasks]:
            if task is not None and task is not asyncio.current_task():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        self._follower, self._writer_tasks = None, []
        self.following = None
        if self.stream is not None:
            self.stream.close()
            self.stream = None
        if self.client is not None:
            await self.client.stop()
            self.client = None
        if self.engine is not None:
            self.engine.shutdown()
            self.engine = None

    def _end_connections(self, message: str) -> None:
        ended = self.pg_context.terminate_all(StaleEpoch(message))
        if ended:
            log.info("ended %d client connections: %s", ended, message)

    # --- role changes --------------------------------------------------------------------------

    async def promote(self) -> dict:
        async with self._role_change:
            if self.role is Role.WRITER:
                return {"ok": True, "role": self.role.value, "epoch": self.engine.volume.epoch}
            if self.role is not Role.READER:
                return {"ok": False, "error": "bad_state", "message": f"cannot promote a node that is {self.role.value}"}
            self._transition("promote")
            self._end_connections("this reader is being promoted to writer: connect again")
            await self._stop_engine()
            try:
                await self._become_writer()
            except Exception as error:  # whatever recovery met: go back to following, never stay stuck
                log.error("promotion failed: %r", error)
                await self._stop_engine()
                self._transition("promotion_failed")
                self._start_following()
                return {"ok": False, "error": "promotion_failed", "message": str(error)}
            return {"ok": True, "role": self.role.value, "epoch": self.engine.volume.epoch}

    async def demote(self) -> dict:
        async with self._role_change:
            if self.role is Role.WRITER:
                self._transition("demote")
                self.engine.log_writer.on_fenced("demoted by an operator")
                await self._rejoin_locked("this writer was demoted: connect again through the writer endpoint")
            return {"ok": True, "role": self.role.value}

    async def replace_storage(self, request: dict) -> dict:
        """Replace a dead storage node with a new one (another node id and address), writes going on.

        The new node has joined from its peers (storage_node/gossip.py) and is copying their
        segments. It is added as a learner: it receives every record from now on, in no quorum.
        Once it holds, for every PG, everything a write quorum holds (its SCL >= the PG's PGCL),
        it takes the old node's place in the same turn of the event loop: no ack is counted between
        the check and the switch.
        Why this is safe: the old set and the new one share five nodes, and the old node is dead.
        A record counted durable before the switch is on 4 of the old six, so on 3 of the shared
        five; any 3 of the new six either include the new node, which holds it, or are 3 of the
        shared five, which meet those 3 (3 + 3 > 5). A record counted after the switch is on 4 of
        the new six, so on 3 of the shared five: a writer still using the old set (a compute node
        started before the change) reads 3 of the five live old nodes and meets them too. Epoch
        claims overlap the same way, so one writer per epoch holds. One replacement at a time."""
        if self.role is not Role.WRITER or self.engine is None or self.client is None:
            return {"ok": False, "error": "not_writer", "message": f"this node is {self.role.value}"}
        client = self.client
        old, new_id, address = request.get("old"), request.get("new_id"), request.get("address")
        if old not in client.links or old in client.learners:
            return {"ok": False, "error": "bad_request", "message": f"{old!r} is not a storage node of this writer"}
        if not isinstance(new_id, str) or not new_id or new_id in client.links:
            return {"ok": False, "error": "bad_request", "message": f"{new_id!r} is not a new storage node id"}
        host, _, port = str(address).rpartition(":")
        if not host or not port.isdigit():
            return {"ok": False, "error": "bad_request", "message": f"address {address!r} is not HOST:PORT"}
        if client.learners:
            return {"ok": False, "error": "busy", "message": f"{', '.join(client.learners)} is replacing a node now"}
        loop = asyncio.get_running_loop()
        started = loop.time()
        link = client.add_learner(new_id, host, int(port))
        log.info("replacing storage node %s with %s at %s: waiting for it to hold what a quorum holds",
                 old, new_id, address)
        try:
            while True:
                behind = {pg: lsn for pg, lsn in self.engine.log_writer.quorum_points().items()
                          if link.last_scls.get(pg, 0) < lsn}
                if not behind:
                    await client.replace_member(old, new_id)
                    break
                if (loop.time() - started) * 1000 > REPLACE_STORAGE_TIMEOUT_MS:
                    raise TimeoutError(f"{new_id} still lacks records of PGs {sorted(behind)[:8]} after "
                                       f"{REPLACE_STORAGE_TIMEOUT_MS} ms")
                await asyncio.sleep(REPLACE_CHECK_INTERVAL_MS / 1000)
        except Exception as error:
            await client.drop_learner(new_id)
            log.error("replacing %s with %s failed: %r", old, new_id, error)
            return {"ok": False, "error": "not_replaced", "message": str(error)}
        duration_ms = (loop.time() - started) * 1000
        log.warning("storage node %s replaced by %s (%s) after %.0f ms", old, new_id, address, duration_ms)
        return {"ok": True, "old": old, "new_id": new_id, "duration_ms": duration_ms}

    async def _rejoin_as_reader(self) -> None:
        async with self._role_change:
            if self.role is Role.FENCED:
                await self._rejoin_locked("this node is no longer the writer (a newer epoch took over): "
                                          "connect again through the writer endpoint")

    async def _rejoin_locked(self, message: str) -> None:
        """FENCED -> READER: give sessions a moment to report their own errors, end them, follow."""
        await asyncio.sleep(ROLE_CHANGE_GRACE_MS / 1000)
        self._end_connections(message)
        await self._stop_engine()
        self._transition("rejoined")
        self._start_following()

    # --- a reader following the writer ---------------------------------------------------------

    def _start_following(self) -> None:
        client = StorageClient(self.args.storage, on_ack=self._on_ack, on_forget=self._on_forget,
                               on_fenced=lambda reason: None, is_writer=False)
        self.client = client
        client.start()
        self._follower = asyncio.get_running_loop().create_task(self._follow_forever(client), name="follow")

    async def _follow_forever(self, client: StorageClient) -> None:
        """Find the newest writer, follow its stream; on any break, wait and find it again. Reads
        go on meanwhile at what was applied."""
        last_failure = None
        while True:
            address, epoch = await self._find_writer(client)
            if address is not None and address != self.admin_address:
                try:
                    await self._follow(client, address)
                    last_failure = None
                except Exception as error:  # the stream ends; reads go on at what was applied
                    failure = f"redo stream from {address}: {error!r}"
                    log.log(logging.INFO if failure != last_failure else logging.DEBUG, "%s", failure)
                    last_failure = failure  # the same failure every RECONNECT_INTERVAL_MS is logged once
                finally:
                    self.following = None
            await asyncio.sleep(RECONNECT_INTERVAL_MS / 1000)

    async def _find_writer(self, client: StorageClient) -> tuple[str | None, int]:
        """The admin address of the writer of the newest epoch any reachable storage node knows
        (from the brief status peers gossip with: a full one summarizes every segment, and this
        runs every FOLLOW_IDLE_CHECK_MS on every compute node)."""
        async def ask(link):
            try:
                return await link.request({"t": "status", "brief": True}, STORAGE_STATUS_TIMEOUT_MS)
            except (NodeUnreachable, RequestFailed):
                return None

        replies = await asyncio.gather(*(ask(link) for link in client.links.values() if link.connected.is_set()))
        best: tuple[int, str | None] = (-1, None)
        for reply in replies:
            if reply is None:
                continue
            epoch, writer = reply.get("epoch", 0), reply.get("writer")
            if epoch > best[0] or (epoch == best[0] and best[1] is None):
                best = (epoch, writer)
        return best[1], best[0]

    async def _follow(self, client: StorageClient, address: str) -> None:
        host, _, port = address.rpartition(":")
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, int(port)),
                                                FOLLOW_IDLE_CHECK_MS / 1000)
        try:
            held_xmin = self.engine.transactions.oldest_xmin() if self.engine is not None else None
            writer.write(encode_frame({"t": FOLLOW, "id": 1, "xmin": held_xmin}))  # snapshots held from before
            hello = await asyncio.wait_for(read_frame(reader), FOLLOW_IDLE_CHECK_MS / 1000)
            if not hello.get("ok"):
                raise StreamBroken(f"it does not stream redo: {hello.get('message')}")
            state = ReplicaState(hello, wall_clock_ms())
            if self.engine is None:
                client.epoch = state.epoch
                self.engine = Engine(asyncio.get_running_loop(), client, None, self.args.cache_pages, replica=state)
            else:
                if state.applied_lsn < self.engine.replica.applied_lsn:  # never go back in time
                    raise StreamBroken(f"it starts at VDL {state.applied_lsn}, below the applied "
                                       f"{self.engine.replica.applied_lsn}")
                client.epoch = state.epoch
                await self.engine.restart_stream(state)
            engine = self.engine
            client.read_point_source = lambda: engine.log_writer.vdl  # a reader reads at what it applied
            self.following = address
            log.info("following the writer at %s (epoch %d) from VDL %d", address, state.epoch, state.applied_lsn)
            await self._apply_frames(client, reader, writer, state, address)
        finally:
            writer.close()

    async def _apply_frames(self, client: StorageClient, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                            state: ReplicaState, address: str) -> None:
        """Until the stream ends, or storage holds a newer epoch than the writer followed (asked
        every FOLLOW_IDLE_CHECK_MS, frames or not: a writer cut off from storage may still send).
        Reports the oldest snapshot its queries hold at least every READER_FEEDBACK_INTERVAL_MS
        (a state frame comes every STREAM_HEARTBEAT_MS at least)."""
        loop = asyncio.get_running_loop()
        next_check = loop.time() + FOLLOW_IDLE_CHECK_MS / 1000
        next_feedback = loop.time()
        frame_read = loop.create_task(read_frame(reader))  # never cancelled mid-frame: one read at a time
        try:
            while True:
                done, _ = await asyncio.wait({frame_read}, timeout=max(0.0, next_check - loop.time()))
                if loop.time() >= next_check:
                    next_check = loop.time() + FOLLOW_IDLE_CHECK_MS / 1000
                    _, epoch = await self._find_writer(client)
                    if epoch > state.epoch:
                        log.info("epoch %d has a newer writer than %s: leaving it", epoch, address)
                        return
                if not done:
                    continue
                frame = frame_read.result()
                frame_read = loop.create_task(read_frame(reader))
                kind = frame.get("t")
                if kind == RECORDS:
                    state.on_records(frame["records"])
                elif kind == STATE:
                    await self.engine.apply_stream(frame, wall_clock_ms())
                    if loop.time() >= next_feedback:  # having applied it: it acknowledges the frame's snapshot
                        next_feedback = loop.time() + READER_FEEDBACK_INTERVAL_MS / 1000
                        writer.write(encode_frame({"t": FEEDBACK, "seq": frame["seq"],
                                                   "xmin": self.engine.transactions.oldest_xmin()}))
        finally:
            frame_read.cancel()

    # --- admin port ----------------------------------------------------------------------------

    def status(self) -> dict:
        status = {"node_id": self.args.node_id, "role": self.role.value, "az": self.args.az,
                  "port": self.args.listen[1], "admin_port": self.args.admin[1] if self.args.admin else None,
                  "pid": os.getpid(), "promotion_tier": self.args.promotion_tier,
                  "following": self.following, "readers_following": self.stream.followers if self.stream else 0,
                  "client_connections": self.pg_context.connections_open}
        if self.engine:
            status.update(self.engine.status())
        return status

    async def _admin_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                request = await read_frame(reader)
                kind = request.get("t")
                if kind == FOLLOW:
                    if self.role is Role.WRITER and self.stream is not None:
                        await self._serve_follower(reader, writer, self.stream, request.get("xmin"))
                        return
                    reply = {"ok": False, "error": "not_writer", "message": f"this node is {self.role.value}"}
                elif kind == ADMIN_STATUS:
                    reply = {"ok": True, **self.status()}
                elif kind == ADMIN_PROMOTE:
                    reply = await self.promote()
                elif kind == ADMIN_DEMOTE:
                    reply = await self.demote()
                elif kind == ADMIN_REPLACE_STORAGE:
                    reply = await self.replace_storage(request)
                else:
                    reply = {"ok": False, "error": "bad_request", "message": f"unknown request type {kind!r}"}
                writer.write(encode_frame({"id": request.get("id"), **reply}))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, FrameError):
            pass
        finally:
            writer.close()

    @staticmethod
    async def _serve_follower(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, stream: RedoStream,
                              held_xmin) -> None:
        """The connection carries the redo stream until the reader goes; the reader sends only its
        feedback (a malformed frame ends the connection: FrameError, KeyError, ValueError).
        `held_xmin`: the oldest snapshot a reader that followed before still holds, if any."""
        if not stream.subscribe(writer.transport, held_xmin if isinstance(held_xmin, int) else None):
            writer.write(encode_frame({"ok": False, "error": "too_many_readers", "message": "follower limit reached"}))
            return
        try:
            while True:
                frame = await read_frame(reader)
                if frame.get("t") != FEEDBACK:
                    raise FrameError(f"a follower sent {frame.get('t')!r}")
                stream.feedback(writer.transport, int(frame["seq"]), int(frame["xmin"]))
        except (KeyError, ValueError, TypeError) as error:
            log.warning("a follower sent a malformed feedback frame: %r", error)
        finally:
            stream.unsubscribe(writer.transport)


def run(args) -> int:
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s {args.node_id} %(name)s %(levelname)s %(message)s")
    if args.data:
        os.makedirs(args.data, exist_ok=True)
    return run_until_stopped(lambda stop: ComputeNode(args).serve(stop), (DatabaseError,), log)
