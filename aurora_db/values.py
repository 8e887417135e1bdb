"""The msgpack encoding of the engine's values that msgpack lacks: numeric, date, timestamp[tz].

Used by every msgpack encoder and decoder that carries row values or B-tree keys (records, frames,
page sizes). Numeric travels as its exact str() (its scale kept: '1.50' stays '1.50'), date as int32
days since 2000-01-01, timestamp and timestamptz as int64 microseconds since 2000-01-01 (UTC), as
PostgreSQL stores them. Invariant: unpack(pack(v)) == v with the same type and scale, so a B-tree
key compares the same before and after its page crosses the wire.
"""

from __future__ import annotations

import datetime
import decimal
import struct
import threading

import msgpack

EXT_NUMERIC = 1
EXT_DATE = 2
EXT_TIMESTAMP = 3
EXT_TIMESTAMPTZ = 4
_EPOCH = datetime.datetime(2000, 1, 1)
_EPOCH_UTC = _EPOCH.replace(tzinfo=datetime.timezone.utc)
_EPOCH_ORDINAL = _EPOCH.toordinal()
_INT32 = struct.Struct(">i")
_INT64 = struct.Struct(">q")
_MICROSECONDS_PER_DAY = 86_400_000_000


def _microseconds(delta: datetime.timedelta) -> int:
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def pack_value(value):
    """msgpack's `default`: the engine's numeric, date and timestamp values as extension types."""
    if isinstance(value, decimal.Decimal):
        return msgpack.ExtType(EXT_NUMERIC, str(value).encode("ascii"))
    if isinstance(value, datetime.datetime):
        if value.tzinfo is None:
            return msgpack.ExtType(EXT_TIMESTAMP, _INT64.pack(_microseconds(value - _EPOCH)))
        return msgpack.ExtType(EXT_TIMESTAMPTZ, _INT64.pack(_microseconds(value - _EPOCH_UTC)))
    if isinstance(value, datetime.date):
        return msgpack.ExtType(EXT_DATE, _INT32.pack(value.toordinal() - _EPOCH_ORDINAL))
    raise TypeError(f"cannot store a value of type {type(value).__name__}")


def unpack_value(code: int, data: bytes):
    """msgpack's `ext_hook`: the inverse of pack_value."""
    if code == EXT_NUMERIC:
        return decimal.Decimal(data.decode("ascii"))
    if code == EXT_DATE:
        return datetime.date.fromordinal(_INT32.unpack(data)[0] + _EPOCH_ORDINAL)
    if code == EXT_TIMESTAMP:
        return _EPOCH + datetime.timedelta(microseconds=_INT64.unpack(data)[0])
    if code == EXT_TIMESTAMPTZ:
        return _EPOCH_UTC + datetime.timedelta(microseconds=_INT64.unpack(data)[0])
    return msgpack.ExtType(code, data)


_packers = threading.local()  # a Packer per thread: making one costs more than most packings


def packb(value) -> bytes:
    try:
        packer = _packers.packer
    except AttributeError:
        packer = _packers.packer = msgpack.Packer(use_bin_type=True, default=pack_value)
    return packer.pack(value)  # resets its buffer after each value, and after an error too


def unpackb(body: bytes, **options):
    return msgpack.unpackb(body, raw=False, ext_hook=unpack_value, **options)


