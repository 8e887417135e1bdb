"""Read a compute node's admin status, as `aurora-db status` does."""

import socket

from aurora_db.framing import FrameDecoder, encode_frame

ADMIN_TIMEOUT_S = 5


def writer_status(admin_port: int) -> dict:
    with socket.create_connection(("127.0.0.1", admin_port), timeout=ADMIN_TIMEOUT_S) as connection:
        connection.sendall(encode_frame({"id": 1, "t": "status"}))
        decoder = FrameDecoder()
        while True:
            data = connection.recv(65536)
            if not data:
                raise ConnectionError("admin port closed the connection")
            messages = decoder.feed(data)
            if messages:
                return messages[0]
