"""Redo log records: the only thing the writer sends to storage.

A record is a physiological change to one page (DESIGN.md 3), with three backlinks (6a):
`prev_volume` (the record allocated just before it, in any PG), `prev_pg` (the previous record of
its PG) and `prev_page` (the previous record of its page); `cpl` marks the last record of an MTR;
`vdl` is the writer's VDL when it allocated the record: every record at or below it was already on
a write quorum, so recovery may start its chain walk there (DESIGN.md 6a).
Invariants: lsn > prev_volume >= 0, lsn > prev_pg >= 0, lsn > prev_page >= 0; the body is the
msgpack encoding of the record's fields and its CRC-32C-style checksum (zlib.crc32) travels with it
on the wire and on disk, and is verified on every read. The args (row values, keys: most of a
record's bytes) are encoded once more on their own inside the body, so a storage node reads a
record's header without decoding them; they are decoded only when the record is applied.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import sys
import zlib

import msgpack

from aurora_db import values
from aurora_db.constants import PAGES_PER_PG


_ARGS_FIELD = 7  # where a body's field list keeps the args (Record.encode)


def pg_of_page(page_id: int) -> int:
    """The protection group that holds a page: PGs are fixed, contiguous page ranges."""
    return page_id // PAGES_PER_PG


class ChecksumMismatch(Exception):
    """A record's body does not match its checksum: it was damaged on disk or on the wire."""


class LazyArgs(collections.abc.Sequence):
    """A decoded record's args, still encoded inside the record's body (kept by reference, so a
    storage node holds each body once): decoded on each use (once per apply), never kept."""

    __slots__ = ("body",)

    def __init__(self, body: bytes):
        self.body = body

    @property
    def blob(self) -> bytes:
        """The args' own encoding, as the body carries it."""
        return _unpack(self.body)[_ARGS_FIELD]

    def decoded(self) -> list:
        """Every arg, decoded now: take them once where several are needed (pages.apply). Every
        storage node decodes every record's args once more when it coalesces (_unpack: 2.2 -> 1.5
        us a record)."""
        return _unpack(self.blob)

    def __iter__(self):
        return iter(self.decoded())

    def __len__(self) -> int:
        return len(self.decoded())

    def __getitem__(self, index):
        return self.decoded()[index]

    def __eq__(self, other) -> bool:
        return isinstance(other, collections.abc.Sequence) and tuple(self) == tuple(other)

    def __repr__(self) -> str:
        return f"LazyArgs({tuple(self)!r})"


@dataclasses.dataclass(slots=True)
class Record:
    """Never changed once made (`dataclasses.replace` makes a new one). Not a frozen dataclass only
    because that costs a microsecond more per record made, on the writer and on every storage node."""

    lsn: int
    page_id: int
    prev_volume: int
    prev_pg: int
    prev_page: int
    cpl: bool
    op: str
    args: tuple | LazyArgs
    vdl: int = 0

    @property
    def pg(self) -> int:
        return pg_of_page(self.page_id)

    def encode(self) -> bytes:
        args = self.args.blob if isinstance(self.args, LazyArgs) else values.packb(list(self.args))
        return values.packb(
            [self.lsn, self.page_id, self.prev_volume, self.prev_pg, self.prev_page, self.cpl, self.op, args, self.vdl])

    def sealed(self) -> tuple[int, bytes]:
        """(checksum, body): the form that crosses the network and lands on disk."""
        body = self.encode()
        return checksum(body), body


def _unpack(data) -> object:
    """values.unpackb's decoding, with its options spelled out: every storage node decodes every
    record's header on arrival and its args again when it coalesces, and the wrapper's keyword
    arguments cost twice the decoding of a record's header (0.55 against 0.27 us; they were a fifth
    of Node.step in benchmarks/storage_append_path)."""
    return msgpack.unpackb(data, raw=False, use_list=True, ext_hook=values.unpack_value)


def checksum(body: bytes) -> int:
    return zlib.crc32(body) & 0xFFFFFFFF


def decode(body: bytes) -> Record:
    """The record's header; its args stay encoded in `body` (LazyArgs). Every storage node decodes
    every record (_unpack)."""
    lsn, page_id, prev_volume, prev_pg, prev_page, cpl, op, args, vdl = _unpack(body)
    args = LazyArgs(body) if type(args) is bytes else tuple(args)  # a list: an older writer's record
    return Record(lsn, page_id, prev_volume, prev_pg, prev_page, bool(cpl), sys.intern(op), args, vdl)


def open_sealed(crc: int, body: bytes) -> Record:
    """Verify and decode; raises ChecksumMismatch on damage."""
    if checksum(body) != crc:
        raise ChecksumMismatch(f"record checksum mismatch (stored {crc:#010x}, computed {checksum(body):#010x})")
    return decode(body)
