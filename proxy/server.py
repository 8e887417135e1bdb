"""The proxy process: a writer endpoint and a reader endpoint in front of the compute nodes.

The asyncio shell of proxy/routing.py, which decides everything: this module splices each client's
bytes to the compute node the router picks and back, checks every node's health on its admin port,
sends the promote and demote requests the router asks for, and answers its own admin port
({"t": "status"}; {"t": "failover", "target": ID or None}, answered when the switchover is done).
Invariants: client bytes pass unchanged and unparsed, except a first packet that no node can take
(answered with a PostgreSQL ErrorResponse) or a CancelRequest (sent to every node the endpoint
reaches); each direction of a connection holds at most SPLICE_BUFFER_BYTES_MAX in the proxy before
it waits for the receiver; a failure on one connection closes that connection only.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import struct
import time

from aurora_db.constants import PGWIRE_CLOSE_TIMEOUT_MS, PGWIRE_STARTUP_TIMEOUT_MS, RECOVERY_TIMEOUT_MS
from aurora_db.framing import FrameError, encode_frame, read_frame, request_once
from aurora_db.process import run_until_stopped, yield_to_latency_critical_processes
from aurora_db.pgwire import (CANCEL_REQUEST_CODE, SSL_REFUSED, FrontendDecoder, GSSENCRequest, ProtocolError,
                              SSLRequest, StartupMessage, encode_error_response)
from proxy.routing import (FAILURE_THRESHOLD_DEFAULT, HEALTH_INTERVAL_MS_DEFAULT, REPLICA_LAG_MS_MAX_DEFAULT,
                           CloseConnections, Demote, Endpoint, FailoverAbandoned, FailoverFinished, FailoverKind,
                           FailoverRefused, FailoverStarted, NoCandidate, Promote, PromotionFailed, Router,
                           RoutingConfig, WriterMoved)

log = logging.getLogger("proxy")

SPLICE_CHUNK_BYTES = 64 * 1024  # asked of a socket per read
SPLICE_BUFFER_BYTES_MAX = 256 * 1024  # per direction: bytes read and not yet taken by the receiver
READ_BUFFER_LIMIT_BYTES = SPLICE_BUFFER_BYTES_MAX // 4  # a StreamReader stops reading at twice its limit
WRITE_BUFFER_HIGH_BYTES = SPLICE_BUFFER_BYTES_MAX // 2  # over this, a write waits for the receiver (drain)
CONNECTIONS_MAX_DEFAULT = 1000  # client connections on both endpoints together; more are refused (53300)
HEALTH_TIMEOUT_MS_DEFAULT = 1000  # a status reply slower than this is a failed check
BACKEND_CONNECT_TIMEOUT_MS = 2_000
PROMOTE_TIMEOUT_MS = RECOVERY_TIMEOUT_MS + 30_000  # a promotion is a recovery, then opening the volume
DEMOTE_TIMEOUT_MS = 10_000
SWITCHOVER_TIMEOUT_MS = PROMOTE_TIMEOUT_MS + DEMOTE_TIMEOUT_MS + 5_000
ADMIN_CONNECTIONS_MAX = 64
CANCEL_REQUEST_BYTES = 16
assert 2 * READ_BUFFER_LIMIT_BYTES + WRITE_BUFFER_HIGH_BYTES <= SPLICE_BUFFER_BYTES_MAX
assert SPLICE_CHUNK_BYTES <= WRITE_BUFFER_HIGH_BYTES
assert SWITCHOVER_TIMEOUT_MS > PROMOTE_TIMEOUT_MS + DEMOTE_TIMEOUT_MS  # the router hears both replies first

SQLSTATE_CANNOT_CONNECT_NOW = "57P03"
SQLSTATE_TOO_MANY_CONNECTIONS = "53300"
MS_PER_S = 1000


@dataclasses.dataclass(frozen=True)
class NodeAddress:
    node_id: str
    host: str
    port: int  # its PostgreSQL port
    admin_port: int


@dataclasses.dataclass(frozen=True)
class ProxyConfig:
    node_id: str
    writer_listen: tuple[str, int]
    reader_listen: tuple[str, int]
    admin_listen: tuple[str, int]
    nodes: tuple[NodeAddress, ...]
    routing: RoutingConfig = RoutingConfig()
    health_timeout_ms: int = HEALTH_TIMEOUT_MS_DEFAULT
    connections_max: int = CONNECTIONS_MAX_DEFAULT

    def __post_init__(self) -> None:
        ids = [node.node_id for node in self.nodes]
        if not ids or len(set(ids)) != len(ids):
            raise ValueError(f"the proxy needs at least one compute node, each id once (got {ids})")
        if self.health_timeout_ms <= 0 or self.connections_max <= 0:
            raise ValueError("health timeout and connection limit must be positive")


def monotonic_ms() -> float:
    return time.monotonic() * MS_PER_S


def is_cancel_request(packet: bytes) -> bool:
    return len(packet) == CANCEL_REQUEST_BYTES and struct.unpack_from(">II", packet) == (CANCEL_REQUEST_BYTES,
                                                                                          CANCEL_REQUEST_CODE)


async def close_writer(writer: asyncio.StreamWriter) -> None:
    """Flush and close; a peer that does not take the last bytes in time is cut off."""
    writer.close()
    try:
        await asyncio.wait_for(writer.wait_closed(), PGWIRE_CLOSE_TIMEOUT_MS / MS_PER_S)
    except (TimeoutError, OSError):
        writer.transport.abort()


class AdminLink:
    """A kept-open admin connection to one compute node for its health checks; reopened after a failure."""

    def __init__(self, address: NodeAddress, timeout_ms: int):
        self.address = address
        self.timeout_ms = timeout_ms
        self._streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self._next_id = 1

    async def status(self) -> dict | None:
        try:
            async with asyncio.timeout(self.timeout_ms / MS_PER_S):
                if self._streams is None:
                    self._streams = await asyncio.open_connection(self.address.host, self.address.admin_port)
                reader, writer = self._streams
                request_id, self._next_id = self._next_id, self._next_id + 1
                writer.write(encode_frame({"id": request_id, "t": "status"}))
                reply = await read_frame(reader)
            if reply.get("id") != request_id:
                raise FrameError(f"reply to request {reply.get('id')!r}, expected {request_id}")
            return reply
        except (TimeoutError, OSError, asyncio.IncompleteReadError, FrameError):
            self.close()  # a late reply must never be taken for the next request's
            return None

    def close(self) -> None:
        if self._streams is not None:
            self._streams[1].transport.abort()
            self._streams = None


class Splice:
    """One client connection and the backend connection it was given."""

    def __init__(self, client: asyncio.StreamWriter, backend: asyncio.StreamWriter):
        self.client = client
        self.backend = backend

    def abort(self) -> None:
        self.client.transport.abort()
        self.backend.transport.abort()


async def pump(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    """Copy until the source ends; drain after each chunk, so a slow receiver slows the sender."""
    try:
        while data := await source.read(SPLICE_CHUNK_BYTES):
            sink.write(data)
            await sink.drain()
    except (OSError, RuntimeError):  # reset, or writing to a transport already closed
        pass


class Proxy:
    def __init__(self, config: ProxyConfig):
        self.config = config
        self.addresses = {node.node_id: node for node in config.nodes}
        self.router = Router(self.addresses, config.routing, monotonic_ms())
        self.splices: dict[tuple[str, Endpoint], set[Splice]] = {
            (node_id, endpoint): set() for node_id in self.addresses for endpoint in Endpoint}
        self.client_connections = 0
        self.admin_connections = 0
        self.started_at = time.time()
        self._tasks: set[asyncio.Task] = set()
        self._switchover: asyncio.Future | None = None

    async def serve(self, stop: asyncio.Event) -> None:
        servers = []
        try:
            for endpoint, (host, port) in ((Endpoint.WRITER, self.config.writer_listen),
                                           (Endpoint.READER, self.config.reader_listen)):
                servers.append(await asyncio.start_server(
                    lambda reader, writer, endpoint=endpoint: self._client(endpoint, reader, writer),
                    host, port, limit=READ_BUFFER_LIMIT_BYTES))
            servers.append(await asyncio.start_server(self._admin_connection, *self.config.admin_listen))
            for node_id in self.addresses:
                self._spawn(self._check_loop(node_id))
            self._spawn(self._tick_loop())
            log.info("proxy ready: writer endpoint %s:%d, reader endpoint %s:%d, admin %s:%d, nodes %s",
                     *self.config.writer_listen, *self.config.reader_listen, *self.config.admin_listen,
                     " ".join(self.addresses))
            await stop.wait()
        finally:
            for server in servers:
                server.close()
            for task in list(self._tasks):
                task.cancel()
            for splices in self.splices.values():
                for splice in list(splices):
                    splice.abort()

    def _spawn(self, coroutine) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.critical("proxy task failed", exc_info=task.exception())
            os._exit(1)  # a broken invariant: stop loudly rather than route on a wrong state

    # --- health and actions ---------------------------------------------------------------

    async def _check_loop(self, node_id: str) -> None:
        link = AdminLink(self.addresses[node_id], self.config.health_timeout_ms)
        interval_s = self.config.routing.health_interval_ms / MS_PER_S
        try:
            while True:
                started = time.monotonic()
                status = await link.status()
                self._apply(self.router.on_check(node_id, status, monotonic_ms()))
                await asyncio.sleep(max(0.0, interval_s - (time.monotonic() - started)))
        finally:
            link.close()

    async def _tick_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.routing.health_interval_ms / MS_PER_S)
            self._apply(self.router.tick(monotonic_ms()))

    def _apply(self, actions) -> None:
        for action in actions:
            if isinstance(action, Promote):
                log.warning("promoting %s", action.node_id)
                self._spawn(self._promote(action.node_id))
            elif isinstance(action, Demote):
                log.warning("demoting %s", action.node_id)
                self._spawn(self._demote(action.node_id))
            elif isinstance(action, CloseConnections):
                splices = list(self.splices[(action.node_id, action.endpoint)])
                for splice in splices:
                    splice.abort()
                if splices:
                    log.warning("closed %d %s-endpoint connections to %s", len(splices), action.endpoint.value,
                                action.node_id)
            elif isinstance(action, WriterMoved):
                log.warning("writer endpoint: %s -> %s", action.old or "none", action.new or "none")
            elif isinstance(action, FailoverStarted):
                log.warning("failover (%s) started: %s", action.kind.value, action.reason)
            elif isinstance(action, NoCandidate):
                log.error("failover: no healthy reader to promote; waiting for a writer or a reader")
            elif isinstance(action, PromotionFailed):
                log.error("promoting %s failed: %s", action.node_id, action.reason)
            elif isinstance(action, FailoverFinished):
                record = action.record
                outage = "" if record.outage_ms is None else (
                    f"; {record.outage_ms:.0f} ms since {record.old_writer} last answered a health check")
                log.warning("failover (%s) done: writer %s -> %s in %.0f ms from detection to new writer%s",
                            record.kind.value, record.old_writer or "none", record.new_writer, record.duration_ms,
                            outage)
                if record.kind is FailoverKind.PLANNED:
                    self._answer_switchover({"ok": True, **with_wall_clock(record.to_json())})
            elif isinstance(action, FailoverAbandoned):
                log.warning("failover (%s) abandoned: %s", action.kind.value, action.reason)
                if action.kind is FailoverKind.PLANNED:
                    self._answer_switchover({"ok": False, "error": "promotion_failed", "message": action.reason})
            else:
                raise AssertionError(f"unknown action {action!r}")

    async def _promote(self, node_id: str) -> None:
        address = self.addresses[node_id]
        reply = await request_once(address.host, address.admin_port, {"t": "promote"}, PROMOTE_TIMEOUT_MS)
        self._apply(self.router.on_promoted(node_id, reply, monotonic_ms()))

    async def _demote(self, node_id: str) -> None:
        address = self.addresses[node_id]
        reply = await request_once(address.host, address.admin_port, {"t": "demote"}, DEMOTE_TIMEOUT_MS)
        if not reply.get("ok"):
            log.warning("demoting %s failed: %s %s", node_id, reply.get("error"), reply.get("message", ""))
        self._apply(self.router.on_demoted(node_id, reply, monotonic_ms()))

    def _answer_switchover(self, reply: dict) -> None:
        if self._switchover is not None and not self._switchover.done():
            self._switchover.set_result(reply)
        self._switchover = None


    # --- clients --------------------------------------------------------------------------

    async def _client(self, endpoint: Endpoint, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.client_connections += 1
        try:
            if self.client_connections > self.config.connections_max:
                await self._refuse(reader, writer, b"", SQLSTATE_TOO_MANY_CONNECTIONS,
                                   f"too many connections to the proxy (limit {self.config.connections_max})")
                return
            try:
                first = await asyncio.wait_for(reader.read(SPLICE_CHUNK_BYTES), PGWIRE_STARTUP_TIMEOUT_MS / MS_PER_S)
            except (TimeoutError, OSError):
                first = b""
            if not first:
                writer.transport.abort()
                return
            if is_cancel_request(first):
                await self._forward_cancel(endpoint, first)
                writer.transport.abort()
                return
            backend = await self._open_backend(endpoint)
            if backend is None:
                what = "writer" if endpoint is Endpoint.WRITER else "compute node"
                await self._refuse(reader, writer, first, SQLSTATE_CANNOT_CONNECT_NOW,
                                   f"no {what} available behind the {endpoint.value} endpoint")
                return
            node_id, backend_reader, backend_writer = backend
            try:
                await self._splice(endpoint, node_id, first, reader, writer, backend_reader, backend_writer)
            finally:
                self.router.close_connection(node_id, endpoint)
        finally:
            self.client_connections -= 1

    async def _open_backend(self, endpoint: Endpoint):
        """A connection to the node the router picks; another pick (reader endpoint) if it cannot be reached."""
        tried: set[str] = set()
        while (node_id := self.router.open_connection(endpoint, exclude=tried)) is not None:
            address = self.addresses[node_id]
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(address.host, address.port, limit=READ_BUFFER_LIMIT_BYTES),
                    BACKEND_CONNECT_TIMEOUT_MS / MS_PER_S)
                return node_id, reader, writer
            except (TimeoutError, OSError) as error:
                self.router.close_connection(node_id, endpoint)
                log.warning("%s endpoint: cannot reach %s: %s", endpoint.value, node_id, error)
                tried.add(node_id)
        return None

    async def _splice(self, endpoint: Endpoint, node_id: str, first: bytes, client_reader, client_writer,
                      backend_reader, backend_writer) -> None:
        splice = Splice(client_writer, backend_writer)
        self.splices[(node_id, endpoint)].add(splice)
        for writer in (client_writer, backend_writer):
            writer.transport.set_write_buffer_limits(high=WRITE_BUFFER_HIGH_BYTES)
        tasks = []
        try:
            backend_writer.write(first)
            loop = asyncio.get_running_loop()
            tasks = [loop.create_task(pump(client_reader, backend_writer)),
                     loop.create_task(pump(backend_reader, client_writer))]
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            self.splices[(node_id, endpoint)].discard(splice)
            await asyncio.gather(close_writer(client_writer), close_writer(backend_writer))

    async def _refuse(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, first: bytes,
                      sqlstate: str, message: str) -> None:
        """Answer the startup like a server that cannot take the client: SSL refused, then a FATAL error."""
        decoder = FrontendDecoder()
        data = first
        try:
            while True:
                for packet in decoder.feed(data):
                    if isinstance(packet, (SSLRequest, GSSENCRequest)):
                        writer.write(SSL_REFUSED)
                    elif isinstance(packet, StartupMessage):
                        writer.write(encode_error_response("FATAL", sqlstate, message))
                        return
                    else:
                        return  # a CancelRequest: nothing to answer
                await writer.drain()
                data = await asyncio.wait_for(reader.read(SPLICE_CHUNK_BYTES), PGWIRE_STARTUP_TIMEOUT_MS / MS_PER_S)
                if not data:
                    return
        except (ProtocolError, TimeoutError, OSError):
            return
        finally:
            await close_writer(writer)

    async def _forward_cancel(self, endpoint: Endpoint, packet: bytes) -> None:
        """A CancelRequest names a backend by its key, not by node: every node the endpoint reaches gets it."""
        targets = ([self.router.writer] if endpoint is Endpoint.WRITER else self.router.reader_endpoint_nodes()
                   + [self.router.writer])
        for node_id in dict.fromkeys(node_id for node_id in targets if node_id is not None):
            address = self.addresses[node_id]
            try:
                _, writer = await asyncio.wait_for(asyncio.open_connection(address.host, address.port),
                                                   BACKEND_CONNECT_TIMEOUT_MS / MS_PER_S)
                writer.write(packet)
                await close_writer(writer)
            except (TimeoutError, OSError):
                pass

    # --- admin port -----------------------------------------------------------------------

    async def _admin_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.admin_connections += 1
        try:
            if self.admin_connections > ADMIN_CONNECTIONS_MAX:
                return
            while True:
                request = await read_frame(reader)
                reply = await self._admin_reply(request)
                writer.write(encode_frame({"id": request.get("id"), **reply}))
                await writer.drain()
        except (asyncio.IncompleteReadError, OSError, FrameError):
            pass
        finally:
            self.admin_connections -= 1
            writer.transport.abort()

    async def _admin_reply(self, request: dict) -> dict:
        kind = request.get("t")
        if kind == "status":
            return {"ok": True, **self.status()}
        if kind == "failover":
            return await self._planned_failover(request.get("target"))
        return {"ok": False, "error": "bad_request", "message": f"unknown request type {kind!r}"}

    async def _planned_failover(self, target) -> dict:
        if target is not None and not isinstance(target, str):
            return {"ok": False, "error": "bad_request", "message": f"target must be a node id, not {target!r}"}
        try:
            actions = self.router.switch_over(target, monotonic_ms())
        except FailoverRefused as error:
            return {"ok": False, "error": "failover_refused", "message": str(error)}
        waiter = self._switchover = asyncio.get_running_loop().create_future()
        self._apply(actions)
        try:
            return await asyncio.wait_for(asyncio.shield(waiter), SWITCHOVER_TIMEOUT_MS / MS_PER_S)
        except TimeoutError:
            return {"ok": False, "error": "timeout", "message": f"not done within {SWITCHOVER_TIMEOUT_MS} ms"}

    def status(self) -> dict:
        snapshot = self.router.snapshot()
        for node_id, node in snapshot["nodes"].items():
            address = self.addresses[node_id]
            node.update({"host": address.host, "port": address.port, "admin_port": address.admin_port})
        return {"node_id": self.config.node_id, "role": "proxy", "pid": os.getpid(),
                "port": self.config.writer_listen[1], "reader_port": self.config.reader_listen[1],
                "writer": snapshot["writer"], "readers": snapshot["readers"],
                "reader_fallback_to_writer": snapshot["reader_fallback_to_writer"],
                "connections": self.client_connections, "connections_max": self.config.connections_max,
                "promoting": snapshot["promoting"],
                "failover": None if snapshot["failover"] is None else with_wall_clock(snapshot["failover"]),
                "failovers": [with_wall_clock(document) for document in snapshot["failovers"]],
                "nodes": snapshot["nodes"],
                "config": {"health_interval_ms": self.config.routing.health_interval_ms,
                           "health_timeout_ms": self.config.health_timeout_ms,
                           "failure_threshold": self.config.routing.failure_threshold,
                           "replica_lag_ms_max": self.config.routing.replica_lag_ms_max},
                "started_at": self.started_at}


def with_wall_clock(document: dict) -> dict:
    """A failover record with its monotonic times (the router's clock) as Unix times."""
    offset_ms = time.time() * MS_PER_S - monotonic_ms()
    document = dict(document)
    for name in ("started", "finished"):
        value = document.pop(f"{name}_ms")
        document[f"{name}_at"] = None if value is None else (value + offset_ms) / MS_PER_S
    return document


def config_from_args(args) -> ProxyConfig:
    """`aurora-db proxy` flags; one left out (None) takes its default."""
    def given(value, default):
        return default if value is None else value

    routing = RoutingConfig(
        failure_threshold=given(args.failure_threshold, FAILURE_THRESHOLD_DEFAULT),
        health_interval_ms=given(args.health_interval_ms, HEALTH_INTERVAL_MS_DEFAULT),
        replica_lag_ms_max=given(args.replica_lag_ms_max, REPLICA_LAG_MS_MAX_DEFAULT))
    return ProxyConfig(
        node_id=args.node_id, writer_listen=args.writer_listen, reader_listen=args.reader_listen,
        admin_listen=args.admin,
        nodes=tuple(NodeAddress(node_id, host, port, admin_port) for node_id, host, port, admin_port in args.node),
        routing=routing, health_timeout_ms=given(args.health_timeout_ms, HEALTH_TIMEOUT_MS_DEFAULT),
        connections_max=given(args.connections_max, CONNECTIONS_MAX_DEFAULT))


def run(args) -> int:
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s {args.node_id} %(name)s %(levelname)s %(message)s")
    try:
        config = config_from_args(args)
    except ValueError as error:
        log.error("cannot start: %s", error)
        return 1
    if args.data:
        os.makedirs(args.data, exist_ok=True)
    yield_to_latency_critical_processes()  # passing bytes on must not preempt the writer it serves
    return run_until_stopped(lambda stop: Proxy(config).serve(stop), (OSError,), log)
