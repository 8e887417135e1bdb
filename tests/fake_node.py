"""A stand-in for `aurora-db storage-node`, `compute-node` and `proxy`, for testing `up`/`down`/
`status` without the real servers: it parses the very argv `up` builds (with the real CLI parser)
and answers just what `up` and `status` ask.

storage-node: answers the storage "status" request (epoch 1, one PG with SCL 7).
compute-node: answers a PostgreSQL startup (with a ParameterStatus "aurora_node_id" naming itself,
so a test sees which node a proxy endpoint reached) and any simple query with one row (1), and the
admin "status" frame (its --role and --promotion-tier, epoch 1, vdl 7; a reader also applied_lsn 7
and a lag of 0). "promote" makes it "promoting" for FAKE_PROMOTE_S, then the writer with an epoch
taken from the wall clock in ms (so a later promotion always has a higher epoch); "demote" makes it
a reader. If FAKE_PROMOTE_FAIL names it, its promotions fail.
proxy: the same PostgreSQL answers on both endpoints, and an admin "status" saying the writer
endpoint points at its first --node and the reader endpoint at the others; with
FAKE_NODE_REAL_PROXY set, the real proxy runs instead (in front of stand-in compute nodes).
If FAKE_NODE_FAIL names this node's id, it prints an error and exits 3 instead, to test a node
that dies while starting.
"""

from __future__ import annotations

import asyncio
import os
import struct
import sys
import time

from aurora_db.cli import build_parser
from aurora_db.framing import encode_frame, read_frame

FAKE_EPOCH = 1
FAKE_LSN = 7
FAKE_PROMOTE_S = 0.2  # a stand-in's "recovery"
MS_PER_S = 1000
SSL_REQUEST_CODE = 80877103
GSSENC_REQUEST_CODE = 80877104


def message(kind: bytes, body: bytes = b"") -> bytes:
    return kind + struct.pack(">I", len(body) + 4) + body


async def serve_frames(reader, writer, reply_fields: dict) -> None:
    try:
        while True:
            request = await read_frame(reader)
            writer.write(encode_frame({"id": request.get("id"), "ok": True, **reply_fields}))
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        writer.close()


async def serve_admin(reader, writer, node: dict) -> None:
    """A compute node's admin port: status, and promote/demote that change the role it reports."""
    try:
        while True:
            request = await read_frame(reader)
            if request.get("t") == "promote":
                if os.environ.get("FAKE_PROMOTE_FAIL") == node["node_id"]:
                    reply = {"ok": False, "error": "recovery_failed", "message": "failing on purpose"}
                else:
                    if node["role"] != "writer":
                        node["role"] = "promoting"
                        await asyncio.sleep(FAKE_PROMOTE_S)
                        node.update(role="writer", epoch=int(time.time() * MS_PER_S), replica_lag_ms=None)
                    reply = {"ok": True, "role": "writer", "epoch": node["epoch"]}
            elif request.get("t") == "demote":
                node.update(role="reader", replica_lag_ms=0.0)
                reply = {"ok": True}
            else:
                reply = {"ok": True, **node}
            writer.write(encode_frame({"id": request.get("id"), **reply}))
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        writer.close()


async def serve_postgres(reader, writer, node_id: str = "") -> None:
    try:
        while True:  # startup, after any number of SSL/GSS requests (each refused with 'N')
            length, code = struct.unpack(">II", await reader.readexactly(8))
            await reader.readexactly(length - 8)
            if code not in (SSL_REQUEST_CODE, GSSENC_REQUEST_CODE):
                break
            writer.write(b"N")
        writer.write(message(b"R", struct.pack(">I", 0)))
        for name, value in (("server_version", "15.0"), ("client_encoding", "UTF8"),
                            ("standard_conforming_strings", "on"), ("aurora_node_id", node_id)):
            writer.write(message(b"S", name.encode() + b"\0" + value.encode() + b"\0"))
        writer.write(message(b"K", struct.pack(">II", os.getpid(), 1)))
        writer.write(message(b"Z", b"I"))
        while True:
            kind = await reader.readexactly(1)
            (length,) = struct.unpack(">I", await reader.readexactly(4))
            await reader.readexactly(length - 4)
            if kind == b"X":
                break
            column = b"?column?\0" + struct.pack(">IhIhih", 0, 0, 23, 4, -1, 0)
            writer.write(message(b"T", struct.pack(">h", 1) + column))
            writer.write(message(b"D", struct.pack(">hi", 1, 1) + b"1"))
            writer.write(message(b"C", b"SELECT 1\0"))
            writer.write(message(b"Z", b"I"))
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    writer.close()


async def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if os.environ.get("FAKE_NODE_FAIL") == args.node_id:
        print(f"fake {args.node_id}: failing on purpose", flush=True)
        return 3
    if args.command == "proxy":
        (host, port), (reader_host, reader_port), (admin_host, admin_port) = (
            args.writer_listen, args.reader_listen, args.admin)
        node_ids = [node_id for node_id, *_ in args.node]
        status = {"node_id": args.node_id, "role": "proxy", "port": port, "writer": node_ids[0],
                  "readers": node_ids[1:] or node_ids[:1], "connections": 0}
        servers = [await asyncio.start_server(serve_postgres, host, port),
                   await asyncio.start_server(serve_postgres, reader_host, reader_port),
                   await asyncio.start_server(lambda r, w: serve_frames(r, w, status), admin_host, admin_port)]
    elif args.command == "storage-node":
        host, port = args.listen
        status = {"node_id": args.node_id, "az": args.az, "epoch": FAKE_EPOCH, "pgs": {0: FAKE_LSN}}
        servers = [await asyncio.start_server(lambda r, w: serve_frames(r, w, status), host, port)]
    else:
        (host, port), (admin_host, admin_port) = args.listen, args.admin
        status = {"node_id": args.node_id, "role": args.role, "az": args.az, "epoch": FAKE_EPOCH, "vdl": FAKE_LSN,
                  "port": port, "pid": os.getpid(), "promotion_tier": args.promotion_tier}
        if args.role == "reader":
            status.update({"applied_lsn": FAKE_LSN, "replica_lag_ms": 0.0, "replica_lag_lsn": 0})
        servers = [await asyncio.start_server(lambda r, w: serve_postgres(r, w, args.node_id), host, port),
                   await asyncio.start_server(lambda r, w: serve_admin(r, w, status), admin_host, admin_port)]
    print(f"fake {args.node_id} listening", flush=True)
    await asyncio.gather(*(server.serve_forever() for server in servers))
    return 0


if __name__ == "__main__":
    arguments = build_parser().parse_args(sys.argv[1:])
    if arguments.command == "proxy" and os.environ.get("FAKE_NODE_REAL_PROXY"):
        from proxy.server import run

        sys.exit(run(arguments))
    sys.exit(asyncio.run(main(sys.argv[1:])))
