"""The compute node process: recover the volume, then serve PostgreSQL clients and the admin port.

Startup is recovery (DESIGN.md 6): the writer takes a new epoch and finds VDL from storage before
it accepts a single client. The node keeps no durable state of its own; its --data directory is
only a working directory. The admin port answers {"t": "status"} frames for `aurora-db status`.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import os
import signal

from aurora_db.errors import DatabaseError
from aurora_db.framing import FrameError, encode_frame, read_frame
from compute_node import pg_server
from compute_node.engine import Engine
from compute_node.recovery import recover
from compute_node.session import EngineSession
from compute_node.storage_client import StorageClient

log = logging.getLogger("compute_node")


class Role(enum.Enum):
    RECOVERING = "recovering"
    WRITER = "writer"
    FENCED = "fenced"


ROLE_TRANSITIONS = {
    (Role.RECOVERING, "recovered"): Role.WRITER,
    (Role.WRITER, "newer_epoch_seen"): Role.FENCED,
    (Role.FENCED, "newer_epoch_seen"): Role.FENCED,
}


class ComputeNode:
    def __init__(self, args):
        self.args = args
        self.engine: Engine | None = None
        self.client = StorageClient(args.storage, on_ack=self._on_ack, on_forget=self._on_forget, on_fenced=self._on_fenced)
        self.role = Role.RECOVERING

    def _transition(self, event: str) -> None:
        self.role = ROLE_TRANSITIONS[(self.role, event)]  # a missing pair is a bug: KeyError

    def _on_ack(self, pg, node_id, scl):
        if self.engine:
            self.engine.log_writer.on_ack(pg, node_id, scl)

    def _on_forget(self, node_id):
        if self.engine:
            self.engine.log_writer.on_forget(node_id)

    def _on_fenced(self, reason):
        if self.engine:
            log.error("fenced: %s", reason)
            self._transition("newer_epoch_seen")
            self.engine.log_writer.on_fenced(reason)

    async def serve(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        host, port = self.args.listen
        admin = server = None
        try:
            if self.args.admin:
                admin = await asyncio.start_server(self._admin_connection, *self.args.admin)
            self.client.start()
            volume = await recover(self.client)
            self.engine = Engine(loop, self.client, volume, self.args.cache_pages)
            for link in self.client.links.values():  # SCLs heard during recovery, before the tracker
                if link.connected.is_set():
                    for pg, scl in link.last_scls.items():
                        self.engine.log_writer.on_ack(pg, link.node_id, scl)
            await self.engine.call(self.engine.open_volume)
            self._transition("recovered")
            server = await pg_server.serve(host, port, lambda: EngineSession(self.engine))
            log.info("writer ready on %s:%d (epoch %d, VDL %d)", host, port, volume.epoch, volume.vdl)
            await stop.wait()
        finally:
            for listener in (server, admin):
                if listener is not None:
                    listener.close()
            await self.client.stop()
            if self.engine:
                self.engine.shutdown()

    def status(self) -> dict:
        status = {"node_id": self.args.node_id, "role": self.role.value, "port": self.args.listen[1], "pid": os.getpid()}
        if self.engine:
            status.update(self.engine.status())
        return status

    async def _admin_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                request = await read_frame(reader)
                if request.get("t") == "status":
                    reply = {"id": request.get("id"), "ok": True, **self.status()}
                else:
                    reply = {"id": request.get("id"), "ok": False, "error": "bad_request",
                             "message": f"unknown request type {request.get('t')!r}"}
                writer.write(encode_frame(reply))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, FrameError):
            pass
        finally:
            writer.close()


def run(args) -> int:
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s {args.node_id} %(name)s %(levelname)s %(message)s")
    if args.data:
        os.makedirs(args.data, exist_ok=True)
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass

    async def main():
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        try:
            await ComputeNode(args).serve(stop)
        except DatabaseError as error:
            log.error("cannot start: %s", error)
            return 1
        return 0

    return asyncio.run(main())
