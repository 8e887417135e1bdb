"""A stand-in for `aurora-db storage-node` and `aurora-db compute-node`, for testing `up`/`down`/
`status` without the real servers: it parses the very argv `up` builds (with the real CLI parser)
and answers just what `up` and `status` ask.

storage-node: answers the storage "status" request (epoch 1, one PG with SCL 7).
compute-node: answers a PostgreSQL startup and any simple query with one row (1), and the admin
"status" frame (epoch 1, vdl 7). If FAKE_NODE_FAIL names this node's id, it prints an error and
exits 3 instead, to test a node that dies while starting.
"""

from __future__ import annotations

import asyncio
import os
import struct
import sys

from aurora_db.cli import build_parser
from aurora_db.framing import encode_frame, read_frame

FAKE_EPOCH = 1
FAKE_LSN = 7
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


async def serve_postgres(reader, writer) -> None:
    try:
        while True:  # startup, after any number of SSL/GSS requests (each refused with 'N')
            length, code = struct.unpack(">II", await reader.readexactly(8))
            await reader.readexactly(length - 8)
            if code not in (SSL_REQUEST_CODE, GSSENC_REQUEST_CODE):
                break
            writer.write(b"N")
        writer.write(message(b"R", struct.pack(">I", 0)))
        for name, value in (("server_version", "15.0"), ("client_encoding", "UTF8"),
                            ("standard_conforming_strings", "on")):
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
    host, port = args.listen
    if args.command == "storage-node":
        status = {"node_id": args.node_id, "az": args.az, "epoch": FAKE_EPOCH, "pgs": {0: FAKE_LSN}}
        servers = [await asyncio.start_server(lambda r, w: serve_frames(r, w, status), host, port)]
    else:
        admin_host, admin_port = args.admin
        status = {"node_id": args.node_id, "role": "writer", "epoch": FAKE_EPOCH, "vdl": FAKE_LSN, "port": port}
        servers = [await asyncio.start_server(serve_postgres, host, port),
                   await asyncio.start_server(lambda r, w: serve_frames(r, w, status), admin_host, admin_port)]
    print(f"fake {args.node_id} listening", flush=True)
    await asyncio.gather(*(server.serve_forever() for server in servers))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
