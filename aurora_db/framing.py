"""Length-prefixed msgpack frames: the storage protocol's and the admin port's wire format.

A frame is a 4-byte big-endian length followed by that many bytes of one msgpack map.
Invariant: the decoder never buffers more than one frame plus its header; a length above
FRAME_BYTES_MAX or bytes that are not a msgpack map raise FrameError, and the shell closes
that one connection.
"""

import asyncio
import struct

from aurora_db import values
from aurora_db.constants import FRAME_BYTES_MAX, FRAME_HEADER_BYTES

_HEADER = struct.Struct(">I")


class FrameError(Exception):
    """The peer sent bytes that are not a valid frame; close the connection."""


def encode_frame(message: dict, *, frame_bytes_max: int = FRAME_BYTES_MAX) -> bytes:
    body = values.packb(message)
    if len(body) > frame_bytes_max:
        raise FrameError(f"frame of {len(body)} bytes exceeds the limit of {frame_bytes_max}")
    return _HEADER.pack(len(body)) + body


def decode_body(body: bytes) -> dict:
    try:
        message = values.unpackb(body, strict_map_key=False)
    except Exception as error:  # msgpack raises several unrelated types for bad input
        raise FrameError(f"frame is not valid msgpack: {error}") from None
    if not isinstance(message, dict):
        raise FrameError("frame is not a msgpack map")
    return message


class FrameDecoder:
    """Sans-I/O: feed bytes in, take whole messages out."""

    def __init__(self, frame_bytes_max: int = FRAME_BYTES_MAX):
        self.frame_bytes_max = frame_bytes_max
        self._buffer = bytearray()

    @property
    def buffered_bytes(self) -> int:
        """Bytes of a frame not yet whole (at end of stream: a frame cut short)."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[dict]:
        self._buffer += data
        messages = []
        while len(self._buffer) >= FRAME_HEADER_BYTES:
            (length,) = _HEADER.unpack_from(self._buffer)
            if length > self.frame_bytes_max:
                raise FrameError(f"frame of {length} bytes exceeds the limit of {self.frame_bytes_max}")
            end = FRAME_HEADER_BYTES + length
            if len(self._buffer) < end:
                break
            body = bytes(self._buffer[FRAME_HEADER_BYTES:end])
            del self._buffer[:end]
            messages.append(decode_body(body))
        return messages


async def read_frame(reader: asyncio.StreamReader, frame_bytes_max: int = FRAME_BYTES_MAX) -> dict:
    """Read one frame; raises asyncio.IncompleteReadError on EOF and FrameError on bad bytes."""
    header = await reader.readexactly(FRAME_HEADER_BYTES)
    (length,) = _HEADER.unpack(header)
    if length > frame_bytes_max:
        raise FrameError(f"frame of {length} bytes exceeds the limit of {frame_bytes_max}")
    return decode_body(await reader.readexactly(length))


async def request_once(host: str, port: int, message: dict, timeout_ms: float) -> dict:
    """One request on a fresh connection (an admin port's); an error reply of our own if there is
    no answer within `timeout_ms`: {"ok": False, "error": "timeout" or "unreachable", "message"}."""
    try:
        async with asyncio.timeout(timeout_ms / 1000):
            reader, writer = await asyncio.open_connection(host, port)
            try:
                writer.write(encode_frame({"id": 1, **message}))
                return await read_frame(reader)
            finally:
                writer.transport.abort()
    except TimeoutError:
        return {"ok": False, "error": "timeout", "message": f"no reply within {timeout_ms:g} ms"}
    except (OSError, asyncio.IncompleteReadError, FrameError) as error:
        return {"ok": False, "error": "unreachable", "message": str(error) or type(error).__name__}
