"""A segment's durable page image: every page of one PG as of a base LSN, in one file
DATA/pages/pg-<pg>.img (DESIGN.md 7, steps 5 and 7: coalescing, then garbage collection).

A segment is its image plus the log records above the image's base. Coalescing writes a new image
at a higher base; once it is durable, the records at or below that base are garbage.
Invariants:
  - An image holds, for each page of its PG that has a record at or below `base_lsn`, the page's
    version as of `base_lsn` (the page with every such record applied), and nothing else.
  - `base_lsn` is a record LSN of the PG's chain at or below a durable VDL (or 0 for an empty
    image), so no truncation can ever remove a record the image contains.
  - A file is replaced only whole and atomically: written under a temporary name, fsynced, renamed
    over the old one, and the directory fsynced. A reader of the old file keeps its descriptor.
  - Every entry carries a CRC-32 of its payload and of its header, verified on every read: a
    damaged page is reported (ChecksumMismatch), never served.

Layout: entries with the log's 16-byte header (storage_node/log_file.py), magic b"AI":
  HEADER  payload = msgpack [pg, base_lsn, vdl_hint, page_count]   (first entry, exactly once)
  PAGE    payload = page_id (8 bytes) | page lsn (8 bytes) | msgpack(pages.to_wire(page))
"""

from __future__ import annotations

import dataclasses
import os
import struct
import zlib
from pathlib import Path
from typing import Iterable

import msgpack

from aurora_db import pages, values
from aurora_db.records import ChecksumMismatch, checksum
from storage_node.log_file import fsync_directory

MAGIC = b"AI"
KIND_HEADER = 1
KIND_PAGE = 2
_HEADER = struct.Struct(">2sBBII")  # magic, kind, reserved, length, payload checksum
_HEADER_CRC = struct.Struct(">I")
_PAGE_PREFIX = struct.Struct(">QQ")  # page_id, page lsn
HEADER_BYTES = _HEADER.size + _HEADER_CRC.size
IMAGE_SUFFIX = ".img"


class DamagedImage(Exception):
    """An image file whose header does not verify: the segment must be rebuilt from a peer."""


@dataclasses.dataclass(frozen=True, slots=True)
class PagePayload:
    """One page as the image stores it: what a peer copies verbatim when it rebuilds."""

    page_id: int
    lsn: int
    crc: int
    payload: bytes  # _PAGE_PREFIX + values.packb(to_wire(page))

    @classmethod
    def of_page(cls, page: pages.Page) -> "PagePayload":
        payload = _PAGE_PREFIX.pack(page.page_id, page.lsn) + values.packb(pages.to_wire(page))
        return cls(page.page_id, page.lsn, checksum(payload), payload)

    @classmethod
    def verified(cls, crc: int, payload: bytes) -> "PagePayload":
        """From a peer: raises ChecksumMismatch if the payload does not match its checksum."""
        if not isinstance(payload, bytes) or len(payload) < _PAGE_PREFIX.size or checksum(payload) != crc:
            raise ChecksumMismatch("page payload does not match its checksum")
        page_id, lsn = _PAGE_PREFIX.unpack_from(payload)
        return cls(page_id, lsn, crc, payload)

    def page(self) -> pages.Page:
        return pages.from_wire(values.unpackb(self.payload[_PAGE_PREFIX.size:], strict_map_key=False))

    def wire(self) -> list:
        """The page as a get_page reply carries it (pages.to_wire), without building the page."""
        return values.unpackb(self.payload[_PAGE_PREFIX.size:], strict_map_key=False)


def _entry(kind: int, payload: bytes, payload_crc: int) -> bytes:
    header = _HEADER.pack(MAGIC, kind, 0, len(payload), payload_crc)
    return header + _HEADER_CRC.pack(zlib.crc32(header) & 0xFFFFFFFF) + payload


def image_path(directory: Path, pg: int) -> Path:
    return Path(directory) / f"pg-{pg}{IMAGE_SUFFIX}"


class PageImage:
    """An open image: its base, and an index from page id to where the page lies in the file.

    Reads are positional (os.pread) and verify the entry's checksums every time."""

    def __init__(self, pg: int, base_lsn: int = 0, vdl_hint: int = 0, path: Path | None = None):
        self.pg = pg
        self.base_lsn = base_lsn
        self.vdl_hint = vdl_hint
        self.path = path
        self._fd: int | None = None
        self._index: dict[int, tuple[int, int, int, int]] = {}  # page_id -> (offset, length, crc, lsn)
        self._header_bytes = 0
        self.file_bytes = 0

    @classmethod
    def empty(cls, pg: int) -> "PageImage":
        """The image of a PG with no coalesced page: base 0, no file."""
        return cls(pg)

    @classmethod
    def open(cls, path: Path) -> tuple["PageImage", list[int]]:
        """Open and verify every entry. Returns the image and the page ids whose entries are
        damaged (left out of the index: never served). Raises DamagedImage if the header is."""
        data = Path(path).read_bytes()
        try:
            kind, payload, _, end = _decode(data, 0)
            if kind != KIND_HEADER:
                raise ChecksumMismatch("first entry is not a header")
            pg, base_lsn, vdl_hint, page_count = msgpack.unpackb(payload, raw=False)
        except (_BadEntry, ChecksumMismatch, ValueError, TypeError) as error:
            raise DamagedImage(f"{path}: image header damaged: {error}") from None
        image = cls(pg, base_lsn, vdl_hint, Path(path))
        image._header_bytes = end
        damaged: list[int] = []
        pos = end
        while pos < len(data):
            try:
                kind, payload, crc, end = _decode(data, pos)
            except _BadEntry as bad:
                damaged.append(bad.page_id if bad.page_id is not None else -1)
                if bad.end is None:
                    break  # the length cannot be trusted: the rest is unreadable
                pos = bad.end
                continue
            page_id, lsn = _PAGE_PREFIX.unpack_from(payload)
            image._index[page_id] = (pos, end - pos, crc, lsn)
            pos = end
        if len(image._index) + len(damaged) < page_count:
            damaged.append(-1)  # entries missing at the end (a cut file)
        image._fd = os.open(path, os.O_RDONLY)
        image.file_bytes = len(data)
        return image, damaged

    # --- reads --------------------------------------------------------------------------------

    @property
    def page_ids(self) -> Iterable[int]:
        return self._index.keys()

    @property
    def page_count(self) -> int:
        return len(self._index)

    def page_lsn(self, page_id: int) -> int | None:
        entry = self._index.get(page_id)
        return entry[3] if entry is not None else None

    def read(self, page_id: int) -> PagePayload | None:
        """The page's stored payload, verified now; raises ChecksumMismatch if it is damaged."""
        entry = self._index.get(page_id)
        if entry is None:
            return None
        offset, length, crc, lsn = entry
        data = os.pread(self._fd, length, offset)
        try:
            kind, payload, payload_crc, _ = _decode(data, 0)
        except _BadEntry as bad:
            raise ChecksumMismatch(f"PG {self.pg} image: page {page_id} at offset {offset}: {bad}") from None
        if kind != KIND_PAGE or payload_crc != crc or _PAGE_PREFIX.unpack_from(payload) != (page_id, lsn):
            raise ChecksumMismatch(f"PG {self.pg} image: page {page_id} at offset {offset} is not the page indexed")
        return PagePayload(page_id, lsn, crc, payload)

    def get(self, page_id: int) -> pages.Page | None:
        payload = self.read(page_id)
        return payload.page() if payload is not None else None

    def verify_all(self) -> list[int]:
        """Re-read every entry from disk (scrubbing): the page ids that no longer verify, and -1
        if the header does not (the next open would refuse the whole image)."""
        damaged = []
        if self._fd is not None and not self._header_verifies():
            damaged.append(-1)
        for page_id in list(self._index):
            try:
                self.read(page_id)
            except ChecksumMismatch:
                damaged.append(page_id)
        return damaged

    def _header_verifies(self) -> bool:
        data = os.pread(self._fd, self._header_bytes, 0)
        try:
            kind, payload, _, _ = _decode(data, 0)
            return kind == KIND_HEADER and msgpack.unpackb(payload, raw=False)[:3] == [self.pg, self.base_lsn,
                                                                                       self.vdl_hint]
        except (_BadEntry, ValueError, TypeError):
            return False

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class _BadEntry(Exception):
    def __init__(self, reason: str, end: int | None, page_id: int | None = None):
        super().__init__(reason)
        self.end = end
        self.page_id = page_id


def _decode(data: bytes, pos: int) -> tuple[int, bytes, int, int]:
    """(kind, payload, payload crc, end) of the entry at `pos`; raises _BadEntry."""
    if len(data) - pos < HEADER_BYTES:
        raise _BadEntry("partial header", None)
    magic, kind, reserved, length, payload_crc = _HEADER.unpack_from(data, pos)
    (header_crc,) = _HEADER_CRC.unpack_from(data, pos + _HEADER.size)
    if magic != MAGIC or header_crc != zlib.crc32(data[pos:pos + _HEADER.size]) & 0xFFFFFFFF or reserved != 0:
        raise _BadEntry("bad header", None)
    end = pos + HEADER_BYTES + length
    if end > len(data):
        raise _BadEntry("partial payload", None)
    payload = bytes(data[pos + HEADER_BYTES:end])
    if checksum(payload) != payload_crc:
        page_id = _PAGE_PREFIX.unpack_from(payload)[0] if kind == KIND_PAGE and length >= _PAGE_PREFIX.size else None
        raise _BadEntry("payload checksum mismatch", end, page_id)
    return kind, payload, payload_crc, end


def write_image(directory: Path, pg: int, base_lsn: int, vdl_hint: int,
                payloads: Iterable[PagePayload]) -> PageImage:
    """Write a PG's whole image atomically and durably, then open it (blocking file I/O: the
    server calls it from a thread). The previous image file, if any, is replaced."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = image_path(directory, pg)
    tmp = path.with_name(path.name + ".tmp")
    payloads = sorted(payloads, key=lambda p: p.page_id)
    header = msgpack.packb([pg, base_lsn, vdl_hint, len(payloads)], use_bin_type=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        chunk = bytearray(_entry(KIND_HEADER, header, checksum(header)))
        for payload in payloads:
            chunk += _entry(KIND_PAGE, payload.payload, payload.crc)
            if len(chunk) >= 1 << 20:
                _write_all(fd, chunk)
                chunk = bytearray()
        _write_all(fd, chunk)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_directory(directory)
    image, damaged = PageImage.open(path)
    assert not damaged, f"{path}: freshly written image does not verify: {damaged}"
    return image


def remove_image(directory: Path, pg: int) -> None:
    path = image_path(directory, pg)
    if path.exists():
        path.unlink()
        fsync_directory(Path(directory))


def _write_all(fd: int, data: bytearray) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def image_files(directory: Path) -> dict[int, Path]:
    """pg -> image path, for every image in the directory (temporary files are ignored)."""
    directory = Path(directory)
    if not directory.exists():
        return {}
    found = {}
    for path in directory.iterdir():
        name = path.name
        if name.startswith("pg-") and name.endswith(IMAGE_SUFFIX) and name[3:-len(IMAGE_SUFFIX)].isdigit():
            found[int(name[3:-len(IMAGE_SUFFIX)])] = path
    return found
