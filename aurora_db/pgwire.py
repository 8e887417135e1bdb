"""PostgreSQL frontend/backend protocol v3, sans I/O: client bytes in, messages out; replies as bytes.

Responsibilities: split a client's byte stream into frontend messages (the untyped startup phase,
then typed messages), encode the backend messages the compute node sends, and convert values
between Python objects and PostgreSQL's text and binary formats.
Invariants: no I/O here; the decoder checks a message's declared length against its limit before
buffering the body, and a ProtocolError leaves it failed for good (the byte stream can no longer be
trusted, so the connection closes); a DatabaseError from parameter decoding is an ordinary error of
one Bind and the connection goes on; a parameter's Python value never depends on whether the client
sent it in text or in binary.
PostgreSQL 15 documentation, chapter 55: 55.2 (Message Flow) and 55.7 (Message Formats).
"""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import enum
import fractions
import math
import re
import struct
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from aurora_db import errors
from aurora_db.constants import PGWIRE_MESSAGE_BYTES_MAX, PGWIRE_STARTUP_BYTES_MAX
from compute_node.backend import (
    BOOL_OID,
    BYTEA_OID,
    FLOAT4_OID,
    FLOAT8_OID,
    INT2_OID,
    INT4_OID,
    INT8_OID,
    NUMERIC_OID,
    TEXT_OID,
    UNKNOWN_OID,
    VARCHAR_OID,
    Column,
)

# Type OIDs that clients send parameters in (psycopg sends these in binary) but that backend.py
# does not name yet.
BPCHAR_OID = 1042
DATE_OID = 1082
TIMESTAMP_OID = 1114
TIMESTAMPTZ_OID = 1184
UUID_OID = 2950

PROTOCOL_VERSION_3_0 = 3 << 16
SSL_REQUEST_CODE = 80877103
GSSENC_REQUEST_CODE = 80877104
CANCEL_REQUEST_CODE = 80877102
SSL_REFUSED = b"N"  # the single byte that answers SSLRequest and GSSENCRequest

TEXT_FORMAT = 0
BINARY_FORMAT = 1

_INT16 = struct.Struct(">h")
_INT32 = struct.Struct(">i")
_UINT32 = struct.Struct(">I")
_INT64 = struct.Struct(">q")
_FLOAT32 = struct.Struct(">f")
_FLOAT64 = struct.Struct(">d")
_HEADER_BYTES = 5  # a typed message: one type byte, then an Int32 length that counts itself
_LENGTH_BYTES = 4


class ProtocolError(Exception):
    """The client's bytes are not a valid protocol stream. The connection must close (08P01)."""


# Frontend messages.


@dataclasses.dataclass(frozen=True, slots=True)
class StartupMessage:
    protocol_version: int  # major << 16 | minor
    parameters: dict[str, str]


@dataclasses.dataclass(frozen=True, slots=True)
class SSLRequest:
    pass


@dataclasses.dataclass(frozen=True, slots=True)
class GSSENCRequest:
    pass


@dataclasses.dataclass(frozen=True, slots=True)
class CancelRequest:
    process_id: int
    secret_key: int


@dataclasses.dataclass(frozen=True, slots=True)
class Query:
    sql: str


@dataclasses.dataclass(frozen=True, slots=True)
class Parse:
    statement_name: str
    sql: str
    param_oids: list[int]  # 0: let the server infer the type


@dataclasses.dataclass(frozen=True, slots=True)
class Bind:
    portal_name: str
    statement_name: str
    param_formats: list[int]
    param_values: list[bytes | None]
    result_formats: list[int]


@dataclasses.dataclass(frozen=True, slots=True)
class Describe:
    kind: str  # "S" a prepared statement, "P" a portal
    name: str


@dataclasses.dataclass(frozen=True, slots=True)
class Execute:
    portal_name: str
    rows_max: int  # 0: no limit


@dataclasses.dataclass(frozen=True, slots=True)
class Close:
    kind: str  # "S" a prepared statement, "P" a portal
    name: str


@dataclasses.dataclass(frozen=True, slots=True)
class Sync:
    pass


@dataclasses.dataclass(frozen=True, slots=True)
class Flush:
    pass


@dataclasses.dataclass(frozen=True, slots=True)
class Terminate:
    pass


@dataclasses.dataclass(frozen=True, slots=True)
class CopyData:
    data: bytes


@dataclasses.dataclass(frozen=True, slots=True)
class CopyDone:
    pass


@dataclasses.dataclass(frozen=True, slots=True)
class CopyFail:
    message: str


StartupPhaseMessage = StartupMessage | SSLRequest | GSSENCRequest | CancelRequest
CopyMessage = CopyData | CopyDone | CopyFail
TypedMessage = Query | Parse | Bind | Describe | Execute | Close | Sync | Flush | Terminate | CopyMessage
FrontendMessage = StartupPhaseMessage | TypedMessage


class _BodyReader:
    """Reads the fields of one message body; any shortfall or leftover is a ProtocolError."""

    def __init__(self, body: bytes, message_name: str):
        self._body = body
        self._offset = 0
        self._message_name = message_name

    def _take(self, count: int) -> bytes:
        end = self._offset + count
        if count < 0 or end > len(self._body):
            raise ProtocolError(f"{self._message_name} message is shorter than its fields")
        chunk = self._body[self._offset : end]
        self._offset = end
        return chunk

    def int16(self) -> int:
        return _INT16.unpack(self._take(2))[0]

    def int32(self) -> int:
        return _INT32.unpack(self._take(4))[0]

    def byte(self) -> str:
        return self._take(1).decode("latin-1")

    def string(self) -> str:
        end = self._body.find(b"\x00", self._offset)
        if end < 0:
            raise ProtocolError(f"{self._message_name} message has an unterminated string")
        raw = self._take(end - self._offset)
        self._offset += 1
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolError(f"{self._message_name} message has a string that is not UTF-8") from None

    def count(self) -> int:
        value = self.int16()
        if value < 0:
            raise ProtocolError(f"{self._message_name} message has a negative count")
        return value

    def rest(self) -> bytes:
        return self._take(len(self._body) - self._offset)

    def finish(self) -> None:
        if self._offset != len(self._body):
            raise ProtocolError(f"{self._message_name} message has {len(self._body) - self._offset} bytes left over")


def _parse_query(reader: _BodyReader) -> Query:
    return Query(reader.string())


def _parse_parse(reader: _BodyReader) -> Parse:
    name, sql = reader.string(), reader.string()
    oids = [reader.int32() & 0xFFFFFFFF for _ in range(reader.count())]
    return Parse(name, sql, oids)


def _parse_bind(body: bytes) -> Bind:
    """Bind, read in one pass over its body (a driver sends one with every statement); any fault
    is named as _BodyReader names it."""
    size = len(body)
    try:
        portal_end = body.index(0)
        statement_end = body.index(0, portal_end + 1)
        portal_name = body[:portal_end].decode("utf-8")
        statement_name = body[portal_end + 1 : statement_end].decode("utf-8")
        param_formats, offset = _format_codes_at(body, statement_end + 1)
        count, offset = _count_at(body, offset)
        values: list[bytes | None] = []
        for _ in range(count):
            (length,) = _INT32.unpack_from(body, offset)
            offset += 4
            if length == -1:
                values.append(None)
                continue
            end = offset + length
            if length < -1:
                raise ProtocolError("Bind message has a negative value length")
            if end > size:
                raise struct.error("a value past the end")
            values.append(body[offset:end])
            offset = end
        result_formats, offset = _format_codes_at(body, offset)
    except UnicodeDecodeError:
        raise ProtocolError("Bind message has a string that is not UTF-8") from None
    except ValueError:  # bytes.index: no terminator
        raise ProtocolError("Bind message has an unterminated string") from None
    except struct.error:
        raise ProtocolError("Bind message is shorter than its fields") from None
    if offset != size:
        raise ProtocolError(f"Bind message has {size - offset} bytes left over")
    return Bind(portal_name, statement_name, param_formats, values, result_formats)


def _count_at(body: bytes, offset: int) -> tuple[int, int]:
    """Bind's int16 count at `offset`, and the offset after it."""
    (count,) = _INT16.unpack_from(body, offset)
    if count < 0:
        raise ProtocolError("Bind message has a negative count")
    return count, offset + 2


def _format_codes_at(body: bytes, offset: int) -> tuple[list[int], int]:
    """A count, then that many int16 format codes, each text (0) or binary (1); and the offset
    after them."""
    count, offset = _count_at(body, offset)
    if not count:
        return [], offset
    codes = list(struct.unpack_from(f">{count}h", body, offset))
    if any(code not in (TEXT_FORMAT, BINARY_FORMAT) for code in codes):
        raise ProtocolError(f"unsupported format code in {codes}")
    return codes, offset + 2 * count


def _parse_describe(reader: _BodyReader) -> Describe:
    kind = reader.byte()
    if kind not in ("S", "P"):
        raise ProtocolError(f"invalid DESCRIBE message subtype {kind!r}")
    return Describe(kind, reader.string())


def _parse_execute(body: bytes) -> Execute:
    """Execute, read in one pass over its body (a driver sends one with every statement)."""
    end = body.find(0)
    if end < 0:
        raise ProtocolError("Execute message has an unterminated string")
    extra = len(body) - (end + 1 + _INT32.size)
    if extra:
        raise ProtocolError("Execute message is shorter than its fields" if extra < 0
                            else f"Execute message has {extra} bytes left over")
    try:
        portal_name = body[:end].decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError("Execute message has a string that is not UTF-8") from None
    return Execute(portal_name, max(_INT32.unpack_from(body, end + 1)[0], 0))


def _parse_close(reader: _BodyReader) -> Close:
    kind = reader.byte()
    if kind not in ("S", "P"):
        raise ProtocolError(f"invalid CLOSE message subtype {kind!r}")
    return Close(kind, reader.string())


def _read_whole(name: str, parse: Callable[[_BodyReader], TypedMessage]) -> Callable[[bytes], TypedMessage]:
    """A body parser from a _BodyReader one: every field read, nothing left over."""
    def parse_body(body: bytes) -> TypedMessage:
        reader = _BodyReader(body, name)
        message = parse(reader)
        reader.finish()
        return message
    return parse_body


_SYNC = Sync()


def _parse_sync(body: bytes) -> Sync:
    if body:
        raise ProtocolError(f"Sync message has {len(body)} bytes left over")
    return _SYNC


# Type byte -> the parser of the message's body.
_TYPED_PARSERS: dict[int, Callable[[bytes], TypedMessage]] = {
    ord("Q"): _read_whole("Query", _parse_query),
    ord("P"): _read_whole("Parse", _parse_parse),
    ord("B"): _parse_bind,
    ord("D"): _read_whole("Describe", _parse_describe),
    ord("E"): _parse_execute,
    ord("C"): _read_whole("Close", _parse_close),
    ord("S"): _parse_sync,
    ord("H"): _read_whole("Flush", lambda reader: Flush()),
    ord("X"): _read_whole("Terminate", lambda reader: Terminate()),
    ord("d"): _read_whole("CopyData", lambda reader: CopyData(reader.rest())),
    ord("c"): _read_whole("CopyDone", lambda reader: CopyDone()),
    ord("f"): _read_whole("CopyFail", lambda reader: CopyFail(reader.string())),
}


def _parse_startup_packet(body: bytes) -> StartupPhaseMessage:
    reader = _BodyReader(body, "startup")
    code = reader.int32() & 0xFFFFFFFF
    if code in (SSL_REQUEST_CODE, GSSENC_REQUEST_CODE):
        reader.finish()
        return SSLRequest() if code == SSL_REQUEST_CODE else GSSENCRequest()
    if code == CANCEL_REQUEST_CODE:
        process_id, secret_key = reader.int32() & 0xFFFFFFFF, reader.int32() & 0xFFFFFFFF
        reader.finish()
        return CancelRequest(process_id, secret_key)
    if code >> 16 != 3:
        raise ProtocolError(f"unsupported frontend protocol {code >> 16}.{code & 0xFFFF}: server supports 3.0")
    parameters = {}
    while (name := reader.string()) != "":
        parameters[name] = reader.string()
    reader.finish()
    return StartupMessage(code, parameters)


class DecoderPhase(enum.Enum):
    STARTUP = "startup"  # untyped packets: SSLRequest, GSSENCRequest, CancelRequest, StartupMessage
    TYPED = "typed"  # after the StartupMessage: a type byte, an Int32 length, a body
    FAILED = "failed"  # after a ProtocolError: nothing more is decoded


class FrontendDecoder:
    """Sans-I/O: bytes from one client in, frontend messages out, in order.

    Invariant: it holds only bytes fed and not yet decoded, and never waits for the body of a
    message whose declared length is over the limit of its phase."""

    def __init__(self, message_bytes_max: int = PGWIRE_MESSAGE_BYTES_MAX,
                 startup_bytes_max: int = PGWIRE_STARTUP_BYTES_MAX):
        self.message_bytes_max = message_bytes_max
        self.startup_bytes_max = startup_bytes_max
        self.phase = DecoderPhase.STARTUP
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[FrontendMessage]:
        """Take bytes; return every message they complete."""
        self.receive(data)
        messages = []
        while (message := self.next_message()) is not None:
            messages.append(message)
        return messages

    def receive(self, data: bytes) -> None:
        """Take bytes without decoding them yet; next_message() then yields one message at a time."""
        if self.phase is DecoderPhase.FAILED:
            raise ProtocolError("the decoder already failed")
        self._buffer += data

    def next_message(self) -> FrontendMessage | None:
        """The next whole message, or None until more bytes arrive."""
        try:
            if self.phase is DecoderPhase.STARTUP:
                message = self._next_startup_packet()
                if isinstance(message, StartupMessage):
                    self.phase = DecoderPhase.TYPED
                return message
            if self.phase is DecoderPhase.TYPED:
                return self._next_typed_message()
            raise ProtocolError("the decoder already failed")
        except ProtocolError:
            self.phase = DecoderPhase.FAILED
            self._buffer.clear()
            raise

    def next_is_sync(self) -> bool:
        """Is the next buffered message a Sync? (An Execute right before Sync may commit at once.)"""
        return self.phase is DecoderPhase.TYPED and self._buffer[:1] == b"S"

    def _next_startup_packet(self) -> StartupPhaseMessage | None:
        if len(self._buffer) < _LENGTH_BYTES:
            return None
        (length,) = _INT32.unpack_from(self._buffer)
        if not 8 <= length <= self.startup_bytes_max:
            raise ProtocolError(f"invalid length of startup packet: {length} bytes")
        if len(self._buffer) < length:
            return None
        body = bytes(self._buffer[_LENGTH_BYTES:length])
        del self._buffer[:length]
        return _parse_startup_packet(body)

    def _next_typed_message(self) -> TypedMessage | None:
        if len(self._buffer) < _HEADER_BYTES:
            if self._buffer and self._buffer[0] not in _TYPED_PARSERS:
                raise ProtocolError(f"invalid frontend message type {self._buffer[0]}")
            return None
        type_byte = self._buffer[0]
        (length,) = _INT32.unpack_from(self._buffer, 1)
        if type_byte not in _TYPED_PARSERS:
            raise ProtocolError(f"invalid frontend message type {type_byte}")
        if length < _LENGTH_BYTES:
            raise ProtocolError(f"invalid message length: {length}")
        if length > self.message_bytes_max:
            raise ProtocolError(f"message of {length} bytes exceeds the limit of {self.message_bytes_max}")
        end = 1 + length
        if len(self._buffer) < end:
            return None
        body = bytes(self._buffer[_HEADER_BYTES:end])
        del self._buffer[:end]
        return _TYPED_PARSERS[type_byte](body)


# Backend messages.


def _message(type_byte: bytes, body: bytes = b"") -> bytes:
    return type_byte + _INT32.pack(len(body) + _LENGTH_BYTES) + body


def _cstring(text: str) -> bytes:
    return text.encode("utf-8") + b"\x00"


def encode_authentication_ok() -> bytes:
    return _message(b"R", _INT32.pack(0))


def encode_parameter_status(name: str, value: str) -> bytes:
    return _message(b"S", _cstring(name) + _cstring(value))


def encode_backend_key_data(process_id: int, secret_key: int) -> bytes:
    return _message(b"K", _UINT32.pack(process_id) + _UINT32.pack(secret_key))


def encode_negotiate_protocol_version(minor_version_newest: int, options_unrecognized: Sequence[str]) -> bytes:
    body = _INT32.pack(minor_version_newest) + _INT32.pack(len(options_unrecognized))
    return _message(b"v", body + b"".join(_cstring(option) for option in options_unrecognized))


def encode_ready_for_query(transaction_status: str) -> bytes:
    assert transaction_status in ("I", "T", "E"), transaction_status
    return _message(b"Z", transaction_status.encode("ascii"))


def encode_row_description(columns: Sequence[Column], formats: Sequence[int]) -> bytes:
    assert len(columns) == len(formats), (len(columns), len(formats))
    parts = [_INT16.pack(len(columns))]
    for column, format_code in zip(columns, formats):
        parts.append(_cstring(column.name))
        parts.append(struct.pack(">IhIhih", column.table_oid, column.column_number, column.type_oid,
                                 column.type_size, column.type_modifier, format_code))
    return _message(b"T", b"".join(parts))


def encode_data_row(values: Sequence[bytes | None]) -> bytes:
    parts = [_INT16.pack(len(values))]
    for value in values:
        if value is None:
            parts.append(_INT32.pack(-1))
        else:
            parts.append(_INT32.pack(len(value)))
            parts.append(value)
    return _message(b"D", b"".join(parts))


def encode_command_complete(tag: str) -> bytes:
    return _message(b"C", _cstring(tag))


def encode_empty_query_response() -> bytes:
    return _message(b"I")


def _notice_fields(severity: str, sqlstate: str, message: str, detail: str | None, hint: str | None,
                   context: str | None = None) -> bytes:
    fields = [(b"S", severity), (b"V", severity), (b"C", sqlstate), (b"M", message)]
    if detail is not None:
        fields.append((b"D", detail))
    if hint is not None:
        fields.append((b"H", hint))
    if context is not None:
        fields.append((b"W", context))
    return b"".join(code + _cstring(text) for code, text in fields) + b"\x00"


def encode_error_response(severity: str, sqlstate: str, message: str, *, detail: str | None = None,
                          hint: str | None = None, context: str | None = None) -> bytes:
    return _message(b"E", _notice_fields(severity, sqlstate, message, detail, hint, context))


def encode_database_error(error: errors.DatabaseError, *, severity: str | None = None) -> bytes:
    """The ErrorResponse that tells a client about `error`; severity FATAL when the connection ends.
    An error may carry a `context` attribute (PostgreSQL's CONTEXT line, e.g. where in COPY data)."""
    return encode_error_response(severity or error.severity, error.sqlstate, error.message,
                                 detail=error.detail, hint=error.hint, context=getattr(error, "context", None))


def encode_notice_response(severity: str, sqlstate: str, message: str, *,
                           detail: str | None = None, hint: str | None = None) -> bytes:
    return _message(b"N", _notice_fields(severity, sqlstate, message, detail, hint))


def encode_parse_complete() -> bytes:
    return _message(b"1")


def encode_bind_complete() -> bytes:
    return _message(b"2")


def encode_close_complete() -> bytes:
    return _message(b"3")


def encode_no_data() -> bytes:
    return _message(b"n")


def encode_portal_suspended() -> bytes:
    return _message(b"s")


def _encode_copy_response(type_byte: bytes, column_count: int, format_code: int) -> bytes:
    """CopyInResponse and CopyOutResponse: the overall format, then the same code for every column."""
    return _message(type_byte, bytes([format_code]) + _INT16.pack(column_count) + _INT16.pack(format_code) * column_count)


def encode_copy_in_response(column_count: int, format_code: int = TEXT_FORMAT) -> bytes:
    return _encode_copy_response(b"G", column_count, format_code)


def encode_copy_out_response(column_count: int, format_code: int = TEXT_FORMAT) -> bytes:
    return _encode_copy_response(b"H", column_count, format_code)


def encode_copy_data(data: bytes) -> bytes:
    return _message(b"d", data)


def encode_copy_done() -> bytes:
    return _message(b"c")


def encode_parameter_description(param_oids: Sequence[int]) -> bytes:
    return _message(b"t", _INT16.pack(len(param_oids)) + b"".join(_UINT32.pack(oid) for oid in param_oids))


# Text output, as PostgreSQL 15 prints values with DateStyle ISO and TimeZone UTC.

_FLOAT8_FIXED_EXPONENT_LIMIT = 15  # float8out: DBL_DIG; a larger decimal exponent prints as 1e+15
_FLOAT4_FIXED_EXPONENT_LIMIT = 6  # float4out: FLT_DIG
_FIXED_EXPONENT_MIN = -4  # both: a smaller decimal exponent prints as 1e-05
_FLOAT4_DIGITS_MAX = 9  # any float4 round-trips through 9 significant digits
_FLOAT8_DIGITS_MAX = 17  # any float8 round-trips through 17 significant digits


def _format_shortest(value: float, digits: str, exponent: int, fixed_exponent_limit: int) -> str:
    """Place the shortest round-trip `digits` (first digit at 10**exponent) as Ryu's to_chars does."""
    sign = "-" if math.copysign(1.0, value) < 0 else ""
    if _FIXED_EXPONENT_MIN <= exponent < fixed_exponent_limit:
        if exponent < 0:
            return f"{sign}0.{'0' * (-exponent - 1)}{digits}"
        whole, fraction = digits[: exponent + 1].ljust(exponent + 1, "0"), digits[exponent + 1 :]
        return f"{sign}{whole}.{fraction}" if fraction else f"{sign}{whole}"
    mantissa = f"{digits[0]}.{digits[1:]}" if len(digits) > 1 else digits
    return f"{sign}{mantissa}e{'-' if exponent < 0 else '+'}{abs(exponent):02d}"


def _decimal_digits(number: decimal.Decimal) -> tuple[str, int]:
    """Significant digits of a nonzero decimal, trailing zeros removed, and the exponent of the first."""
    _, digit_tuple, exponent = number.as_tuple()
    digits = "".join(map(str, digit_tuple)).lstrip("0")
    return digits.rstrip("0"), len(digits) + exponent - 1


def _shortest_digits(value: float, below: float, above: float, significant_min: int,
                     significant_max: int) -> tuple[str, int]:
    """The fewest significant digits of a decimal strictly closer to `value` than to its neighbours
    `below` and `above`, nearest to `value` among those: Ryu as PostgreSQL builds it, which accepts
    neither bound (Python's repr accepts both, so it is shorter by a digit in rare ties)."""
    exact = fractions.Fraction(value)
    low = (exact + fractions.Fraction(below)) / 2
    high = (exact + fractions.Fraction(above)) / 2 if math.isfinite(above) else exact + (exact - low)
    for significant in range(significant_min, significant_max + 1):
        nearest = decimal.Decimal(f"{value:.{significant - 1}e}")
        step = decimal.Decimal(1).scaleb(nearest.adjusted() - significant + 1)
        candidates = sorted((nearest, nearest - step, nearest + step),
                            key=lambda candidate: abs(fractions.Fraction(candidate) - exact))
        for candidate in candidates:
            if low < fractions.Fraction(candidate) < high:
                return _decimal_digits(candidate)
    raise AssertionError(f"no decimal of {significant_max} digits reads back as {value!r}")


def _format_special(value: float) -> str | None:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    if value == 0.0:
        return "-0" if math.copysign(1.0, value) < 0 else "0"
    return None


def format_float8(value: float) -> str:
    """float8out: the shortest digits that read back exactly; 1.0 -> '1', 1e20 -> '1e+20'."""
    special = _format_special(value)
    if special is not None:
        return special
    magnitude = abs(value)
    significant_min = len(_decimal_digits(decimal.Decimal(repr(magnitude)))[0])
    digits, exponent = _shortest_digits(magnitude, math.nextafter(magnitude, 0.0),
                                        math.nextafter(magnitude, math.inf), significant_min, _FLOAT8_DIGITS_MAX)
    return _format_shortest(value, digits, exponent, _FLOAT8_FIXED_EXPONENT_LIMIT)


def _round_to_float4(value: float) -> float:
    return _FLOAT32.unpack(_FLOAT32.pack(value))[0]


def _float4_from_bits(bits: int) -> float:
    return _FLOAT32.unpack(_UINT32.pack(bits))[0]


def format_float4(value: float) -> str:
    """float4out: the shortest digits that read back as the same float4; 0.1 stays '0.1'."""
    special = _format_special(value)
    if special is not None:
        return special
    try:
        magnitude = abs(_round_to_float4(value))
    except OverflowError:
        return format_float8(value)
    (bits,) = _UINT32.unpack(_FLOAT32.pack(magnitude))
    digits, exponent = _shortest_digits(magnitude, _float4_from_bits(bits - 1), _float4_from_bits(bits + 1),
                                        1, _FLOAT4_DIGITS_MAX)
    return _format_shortest(value, digits, exponent, _FLOAT4_FIXED_EXPONENT_LIMIT)


def _format_utc_offset(offset: datetime.timedelta) -> str:
    seconds = int(offset.total_seconds())
    sign = "-" if seconds < 0 else "+"
    hours, rest = divmod(abs(seconds), 3600)
    minutes, seconds = divmod(rest, 60)
    text = f"{sign}{hours:02d}"
    if minutes or seconds:
        text += f":{minutes:02d}"
    if seconds:
        text += f":{seconds:02d}"
    return text


def format_timestamp(value: datetime.datetime) -> str:
    """timestamp and timestamptz as PostgreSQL prints them with DateStyle ISO and TimeZone UTC: the
    fraction without trailing zeros, '+00' for timestamptz."""
    aware = value.tzinfo is not None
    if aware:
        value = value.astimezone(datetime.timezone.utc).replace(tzinfo=None)
    text = f"{value.year:04d}-{value.month:02d}-{value.day:02d} {value.hour:02d}:{value.minute:02d}:{value.second:02d}"
    if value.microsecond:
        text += f".{value.microsecond:06d}".rstrip("0")
    return text + "+00" if aware else text


def format_text(value: Any, type_oid: int) -> str | bytes:
    """A non-NULL value's text form; bytes when it is already encoded."""
    if isinstance(value, bool):
        return "t" if value else "f"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return format_float4(value) if type_oid == FLOAT4_OID else format_float8(value)
    if isinstance(value, str):
        return value
    if isinstance(value, decimal.Decimal):
        return format(value, "f")
    if isinstance(value, datetime.datetime):
        return format_timestamp(value)
    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, (bytes, bytearray, memoryview)):
        return b"\\x" + bytes(value).hex().encode("ascii")
    return str(value)


def encode_text_value(value: Any, type_oid: int) -> bytes:
    text = format_text(value, type_oid)
    return text if isinstance(text, bytes) else text.encode("utf-8")


def _encode_binary_text(value: Any) -> bytes:
    return (value if isinstance(value, str) else str(value)).encode("utf-8")


def _encode_binary_numeric(value: Any) -> bytes:
    """numeric_send: base-10000 digits, weight of the first, sign, display scale."""
    value = decimal.Decimal(value)
    if value.is_nan():
        return struct.pack(">hhHH", 0, 0, 0xC000, 0)
    if value.is_infinite():
        return struct.pack(">hhHH", 0, 0, 0xD000 if value > 0 else 0xF000, 0)
    sign, digit_tuple, exponent = value.as_tuple()
    dscale = max(-exponent, 0)
    digits = "".join(map(str, digit_tuple)) + "0" * max(exponent, 0)
    whole_length = len(digits) - dscale  # digits before the decimal point (may be <= 0)
    pad_front = (-whole_length) % 4
    digits = "0" * pad_front + digits
    whole_length += pad_front
    digits += "0" * ((-len(digits)) % 4)
    groups = [int(digits[i:i + 4]) for i in range(0, len(digits), 4)]
    weight = whole_length // 4 - 1
    while groups and groups[0] == 0:
        groups.pop(0)
        weight -= 1
    while groups and groups[-1] == 0:
        groups.pop()
    if not groups:
        weight = 0
    header = struct.pack(">hhHH", len(groups), weight, _NUMERIC_SIGN_NEGATIVE if sign and groups else 0, dscale)
    return header + struct.pack(f">{len(groups)}H", *groups)


def _encode_binary_date(value: Any) -> bytes:
    if isinstance(value, datetime.datetime):
        value = value.date()
    return _INT32.pack((value - _POSTGRES_EPOCH.date()).days)


def _encode_binary_timestamp(value: Any) -> bytes:
    if value.tzinfo is not None:
        value = value.astimezone(datetime.timezone.utc).replace(tzinfo=None)
    delta = value - _POSTGRES_EPOCH
    return _INT64.pack((delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds)


_BINARY_ENCODERS: dict[int, Callable[[Any], bytes]] = {
    NUMERIC_OID: _encode_binary_numeric,
    DATE_OID: _encode_binary_date,
    TIMESTAMP_OID: _encode_binary_timestamp,
    TIMESTAMPTZ_OID: _encode_binary_timestamp,
    BOOL_OID: lambda value: b"\x01" if value else b"\x00",
    INT2_OID: _INT16.pack,
    INT4_OID: _INT32.pack,
    INT8_OID: _INT64.pack,
    FLOAT4_OID: _FLOAT32.pack,
    FLOAT8_OID: _FLOAT64.pack,
    TEXT_OID: _encode_binary_text,
    VARCHAR_OID: _encode_binary_text,
    BPCHAR_OID: _encode_binary_text,
    UNKNOWN_OID: _encode_binary_text,
    BYTEA_OID: bytes,
}


def binary_output_supported(type_oid: int) -> bool:
    return type_oid in _BINARY_ENCODERS


def encode_binary_value(value: Any, type_oid: int) -> bytes:
    """A non-NULL value in binary; a type without a binary encoder here falls back to its text bytes."""
    encoder = _BINARY_ENCODERS.get(type_oid)
    return encoder(value) if encoder is not None else encode_text_value(value, type_oid)


def expand_formats(formats: Sequence[int], count: int, what: str) -> list[int]:
    """Bind's format rule: no code means all text, one code applies to all, else one per item."""
    if not formats:
        return [TEXT_FORMAT] * count
    if len(formats) == 1:
        return [formats[0]] * count
    if len(formats) != count:
        raise errors.ProtocolViolation(f"bind message has {len(formats)} {what} formats but {count} {what}s")
    return list(formats)


def result_formats(columns: Sequence[Column] | None, requested: Sequence[int]) -> list[int]:
    """The format each result column is sent in. A column asked in binary whose type has no binary
    encoder here is sent in text, and its RowDescription says so."""
    if columns is None:
        return []
    formats = expand_formats(requested, len(columns), "result column")
    return [
        BINARY_FORMAT if format_code == BINARY_FORMAT and binary_output_supported(column.type_oid) else TEXT_FORMAT
        for column, format_code in zip(columns, formats)
    ]


class RowEncoder:
    """Encodes result rows as DataRow messages, each column in its chosen format."""

    def __init__(self, columns: Sequence[Column], formats: Sequence[int]):
        assert len(columns) == len(formats), (len(columns), len(formats))
        self._encoders = [
            (encode_binary_value if format_code == BINARY_FORMAT else encode_text_value, column.type_oid)
            for column, format_code in zip(columns, formats)
        ]

    def encode(self, row: Sequence[Any]) -> bytes:
        if len(row) != len(self._encoders):
            raise ValueError(f"row has {len(row)} values but the result has {len(self._encoders)} columns")
        return encode_data_row([
            None if value is None else encode(value, type_oid)
            for value, (encode, type_oid) in zip(row, self._encoders)
        ])


# Parameter input. Text parameters of an integer, float or bool type become int, float and bool;
# every other type stays the str the client sent. Binary parameters become the same value their
# text form would have.

_TYPE_NAMES = {
    BOOL_OID: "boolean", INT2_OID: "smallint", INT4_OID: "integer", INT8_OID: "bigint",
    FLOAT4_OID: "real", FLOAT8_OID: "double precision", NUMERIC_OID: "numeric", BYTEA_OID: "bytea",
    DATE_OID: "date", TIMESTAMP_OID: "timestamp", TIMESTAMPTZ_OID: "timestamptz", UUID_OID: "uuid",
}
_INT_RANGES = {INT2_OID: (-(2**15), 2**15 - 1), INT4_OID: (-(2**31), 2**31 - 1), INT8_OID: (-(2**63), 2**63 - 1)}
_INT_TEXT = re.compile(r"[ \t\n\r\v\f]*[+-]?[0-9]+[ \t\n\r\v\f]*")
_FLOAT_TEXT = re.compile(
    r"[ \t\n\r\v\f]*[+-]?(?:(?P<mantissa>[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|inf|infinity|nan)[ \t\n\r\v\f]*",
    re.IGNORECASE,
)
_BOOL_WORDS_TRUE = ("true", "yes")  # any nonempty prefix, as boolin accepts
_BOOL_WORDS_FALSE = ("false", "no")
_DAYS_INFINITY = (2**31 - 1, -(2**31))
_MICROSECONDS_INFINITY = (2**63 - 1, -(2**63))
_POSTGRES_EPOCH = datetime.datetime(2000, 1, 1)
_NUMERIC_SIGN_NEGATIVE = 0x4000
_NUMERIC_SPECIALS = {0xC000: "NaN", 0xD000: "Infinity", 0xF000: "-Infinity"}
_NUMERIC_DIGITS_MAX = 10_000  # base-10000 digits of one binary numeric parameter


def _type_name(type_oid: int) -> str:
    return _TYPE_NAMES.get(type_oid, f"oid {type_oid}")


def _invalid_syntax(type_oid: int, text: str) -> errors.InvalidTextRepresentation:
    return errors.InvalidTextRepresentation(f'invalid input syntax for type {_type_name(type_oid)}: "{text}"')


def _out_of_range(type_oid: int, text: str) -> errors.NumericValueOutOfRange:
    return errors.NumericValueOutOfRange(f'value "{text}" is out of range for type {_type_name(type_oid)}')


def _parse_int(text: str, type_oid: int) -> int:
    if not _INT_TEXT.fullmatch(text):
        raise _invalid_syntax(type_oid, text)
    value = int(text)
    low, high = _INT_RANGES[type_oid]
    if not low <= value <= high:
        raise _out_of_range(type_oid, text)
    return value


def _parse_float(text: str, type_oid: int) -> float:
    match = _FLOAT_TEXT.fullmatch(text)
    if match is None:
        raise _invalid_syntax(type_oid, text)
    value = float(text)
    mantissa = match.group("mantissa")
    if mantissa is None:  # inf, infinity, nan
        return value
    overflowed = math.isinf(value)
    underflowed = value == 0.0 and mantissa.strip("0.") != ""
    if type_oid == FLOAT4_OID and not overflowed and not underflowed:
        try:
            rounded = _round_to_float4(value)
        except OverflowError:
            overflowed = True
        else:
            underflowed = rounded == 0.0 and value != 0.0
            value = rounded
    if overflowed or underflowed:
        raise _out_of_range(type_oid, text)
    return value


def _parse_bool(text: str, type_oid: int) -> bool:
    word = text.strip(" \t\n\r\v\f").lower()
    if word in ("1", "on") or any(word and full.startswith(word) for full in _BOOL_WORDS_TRUE):
        return True
    if word in ("0", "off") or any(word and full.startswith(word) for full in _BOOL_WORDS_FALSE):
        return False
    raise _invalid_syntax(type_oid, text)


_TEXT_PARSERS: dict[int, Callable[[str, int], Any]] = {
    INT2_OID: _parse_int, INT4_OID: _parse_int, INT8_OID: _parse_int,
    FLOAT4_OID: _parse_float, FLOAT8_OID: _parse_float,
    BOOL_OID: _parse_bool,
}


def _decode_utf8(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise errors.InvalidTextRepresentation('invalid byte sequence for encoding "UTF8"') from None


def _unpacker(layout: struct.Struct) -> Callable[[bytes], Any]:
    return lambda raw: layout.unpack(raw)[0]


def _numeric_text(raw: bytes) -> str:
    ndigits, weight, sign, dscale = struct.unpack_from(">hhHH", raw)
    if not 0 <= ndigits <= _NUMERIC_DIGITS_MAX or len(raw) != 8 + 2 * ndigits:
        raise ValueError("numeric length")
    if sign in _NUMERIC_SPECIALS:
        return _NUMERIC_SPECIALS[sign]
    digits = struct.unpack_from(f">{ndigits}H", raw, 8)
    if any(digit > 9999 for digit in digits) or sign not in (0, _NUMERIC_SIGN_NEGATIVE):
        raise ValueError("numeric digits")
    coefficient = "".join(f"{digit:04d}" for digit in digits) or "0"
    exponent = (weight - ndigits + 1) * 4
    value = decimal.Decimal(f"{'-' if sign else ''}{coefficient}e{exponent}")
    context = decimal.Context(prec=len(coefficient) + abs(exponent) + dscale + 1)
    return format(value.quantize(decimal.Decimal(1).scaleb(-dscale), context=context), "f")


def _date_text(raw: bytes) -> str:
    (days,) = _INT32.unpack(raw)
    if days in _DAYS_INFINITY:
        return "infinity" if days > 0 else "-infinity"
    return (_POSTGRES_EPOCH + datetime.timedelta(days=days)).date().isoformat()


def _timestamp_text(raw: bytes, suffix: str = "") -> str:
    (microseconds,) = _INT64.unpack(raw)
    if microseconds in _MICROSECONDS_INFINITY:
        return "infinity" if microseconds > 0 else "-infinity"
    return (_POSTGRES_EPOCH + datetime.timedelta(microseconds=microseconds)).isoformat(sep=" ") + suffix


_BINARY_PARSERS: dict[int, Callable[[bytes], Any]] = {
    INT2_OID: _unpacker(_INT16),
    INT4_OID: _unpacker(_INT32),
    INT8_OID: _unpacker(_INT64),
    FLOAT4_OID: _unpacker(_FLOAT32),
    FLOAT8_OID: _unpacker(_FLOAT64),
    BOOL_OID: lambda raw: {b"\x00": False, b"\x01": True}[raw],
    TEXT_OID: _decode_utf8,
    VARCHAR_OID: _decode_utf8,
    BPCHAR_OID: _decode_utf8,
    UNKNOWN_OID: _decode_utf8,
    BYTEA_OID: lambda raw: "\\x" + raw.hex(),
    NUMERIC_OID: _numeric_text,
    DATE_OID: _date_text,
    TIMESTAMP_OID: _timestamp_text,
    TIMESTAMPTZ_OID: lambda raw: _timestamp_text(raw, "+00"),
    UUID_OID: lambda raw: str(uuid.UUID(bytes=raw)),
}


def decode_parameter(raw: bytes | None, format_code: int, type_oid: int, position: int) -> Any:
    """One Bind parameter as a Python value; `position` counts from 1 for error messages."""
    if raw is None:
        return None
    if format_code == TEXT_FORMAT:
        text = _decode_utf8(raw)
        parse = _TEXT_PARSERS.get(type_oid)
        return parse(text, type_oid) if parse is not None else text
    parse_binary = _BINARY_PARSERS.get(type_oid)
    if parse_binary is None:
        raise errors.FeatureNotSupported(f"binary format is not supported for parameter {position} "
                                         f"of type {_type_name(type_oid)}")
    try:
        return parse_binary(raw)
    except (struct.error, ValueError, KeyError, OverflowError, decimal.InvalidOperation):
        raise errors.InvalidTextRepresentation(f"incorrect binary data format in bind parameter {position}",
                                               detail=f"type {_type_name(type_oid)}, {len(raw)} bytes") from None


def decode_parameters(values: Sequence[bytes | None], formats: Sequence[int], param_oids: Sequence[int], *,
                      statement_name: str = "") -> list[Any]:
    """Every Bind parameter, typed by the prepared statement's param_oids."""
    if len(values) != len(param_oids):
        raise errors.ProtocolViolation(f'bind message supplies {len(values)} parameters, but prepared statement '
                                       f'"{statement_name}" requires {len(param_oids)}')
    expanded = expand_formats(formats, len(values), "parameter")
    return [
        decode_parameter(raw, format_code, type_oid, position)
        for position, (raw, format_code, type_oid) in enumerate(zip(values, expanded, param_oids), start=1)
    ]
