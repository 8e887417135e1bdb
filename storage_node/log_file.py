"""The append-only log of a storage node, for all its segments: files DATA/log/<seq>.log, rotated
at LOG_FILE_BYTES_MAX. A record names its page, and so its PG; a truncation marker is node-wide.

Responsibilities: append entries (one call, returns once written), fsync on a separate call so the
server can cover many appends with one fsync, and on open scan every file, verify every checksum
and hand back the entries in the order they were written. It knows which record LSNs each file
holds, so it can remove a file all of whose records are covered by their segments' page images
or copied forward into a newer file (garbage collection), and a scrubber can tell which records a
damaged file lost and rewrite it.
Invariants: entries are only ever appended, never changed, except that a scrubbed file whose
entries do not verify is rewritten whole and atomically with good copies in the same order (or
without a record no segment needs any more); every entry served was verified
(a record's checksum is the writer's own CRC of its body: records.open_sealed, end to end); a
torn tail (a partial entry or a bad checksum at the very end of the last file) is cut off with
ftruncate; a bad entry anywhere else is reported with logging.error and skipped, never served;
a file is fsynced before the next one is created, so only the last file can have a torn tail.

Entry layout: a 16-byte header, then the payload.
  magic b"AL" | kind (1 byte) | reserved 0 (1) | payload length (4) | payload checksum (4) | header checksum (4)
The header checksum (CRC-32 of the 12 bytes before it) lets a scan trust the length, and find the
next entry after a damaged header. Kinds:
  RECORD    payload = a redo record's body exactly as received; payload checksum = the sender's CRC.
  TRUNCATE  payload = msgpack [above_lsn, epoch, lsn_floor or None]: every record written before it
            with above_lsn < lsn <= lsn_floor (no upper bound if lsn_floor is None) is discarded.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import struct
import zlib
from pathlib import Path

import msgpack

from aurora_db.constants import LOG_ENTRY_BYTES_MAX, LOG_FILE_BYTES_MAX
from aurora_db.records import ChecksumMismatch, Record, checksum, open_sealed

log = logging.getLogger(__name__)

MAGIC = b"AL"
KIND_RECORD = 1
KIND_TRUNCATE = 2
_HEADER = struct.Struct(">2sBBII")  # magic, kind, reserved, length, payload checksum
_HEADER_CRC = struct.Struct(">I")
HEADER_BYTES = _HEADER.size + _HEADER_CRC.size
assert HEADER_BYTES == 16
LOG_SUFFIX = ".log"


@dataclasses.dataclass(slots=True)
class RecordEntry:
    """A redo record as it travels and rests: its decoded form, the sender's checksum and body.
    Never changed once made (not frozen only because that costs more per record)."""

    record: Record
    crc: int
    body: bytes

    @classmethod
    def from_sealed(cls, crc: int, body: bytes) -> "RecordEntry":
        """Verify and decode; raises ChecksumMismatch, or ValueError/TypeError for a bad body."""
        return cls(open_sealed(crc, body), crc, body)

    @property
    def lsn(self) -> int:
        return self.record.lsn


@dataclasses.dataclass(frozen=True, slots=True)
class TruncateEntry:
    """Discard every earlier record with above_lsn < lsn <= lsn_floor (lsn_floor None: no bound)."""

    above_lsn: int
    epoch: int
    lsn_floor: int | None


LogEntry = RecordEntry | TruncateEntry


@dataclasses.dataclass(slots=True)
class ScanReport:
    """What opening a log found: entries kept, a torn tail cut, damaged entries skipped."""

    entries: int = 0
    torn_bytes_cut: int = 0
    bad_entries: int = 0
    bad_bytes_skipped: int = 0


def encode_entry(entry: LogEntry) -> bytes:
    header, payload = _framed(entry)
    return header + payload


def _framed(entry: LogEntry) -> tuple[bytes, bytes]:
    """(the 16-byte header, the payload): a record's body is framed as it is, never copied."""
    if isinstance(entry, RecordEntry):
        kind, payload, payload_crc = KIND_RECORD, entry.body, entry.crc
    else:
        kind = KIND_TRUNCATE
        payload = msgpack.packb([entry.above_lsn, entry.epoch, entry.lsn_floor], use_bin_type=True)
        payload_crc = checksum(payload)
    assert len(payload) <= LOG_ENTRY_BYTES_MAX, f"log entry of {len(payload)} bytes"
    header = _HEADER.pack(MAGIC, kind, 0, len(payload), payload_crc)
    return header + _HEADER_CRC.pack(zlib.crc32(header) & 0xFFFFFFFF), payload


class _Bad(Exception):
    """An entry that does not verify. `end`: where it ends, if its header verified and it is whole."""

    def __init__(self, reason: str, end: int | None):
        super().__init__(reason)
        self.end = end


def _decode_at(data: bytes, pos: int) -> tuple[LogEntry, int]:
    """The entry at `pos` and the offset after it; raises _Bad."""
    if len(data) - pos < HEADER_BYTES:
        raise _Bad("partial header", None)
    magic, kind, reserved, length, payload_crc = _HEADER.unpack_from(data, pos)
    (header_crc,) = _HEADER_CRC.unpack_from(data, pos + _HEADER.size)
    if magic != MAGIC or header_crc != zlib.crc32(data[pos:pos + _HEADER.size]) & 0xFFFFFFFF:
        raise _Bad("bad header", None)
    if reserved != 0 or kind not in (KIND_RECORD, KIND_TRUNCATE) or length > LOG_ENTRY_BYTES_MAX:
        raise _Bad(f"bad header fields (kind {kind}, length {length})", None)
    end = pos + HEADER_BYTES + length
    if end > len(data):
        raise _Bad("partial payload", None)
    payload = bytes(data[pos + HEADER_BYTES:end])
    try:
        if kind == KIND_RECORD:
            return RecordEntry.from_sealed(payload_crc, payload), end
        if checksum(payload) != payload_crc:
            raise ChecksumMismatch("truncate marker checksum mismatch")
        above_lsn, epoch, lsn_floor = msgpack.unpackb(payload, raw=False)
        assert isinstance(above_lsn, int) and isinstance(epoch, int) and (lsn_floor is None or isinstance(lsn_floor, int))
        return TruncateEntry(above_lsn, epoch, lsn_floor), end
    except ChecksumMismatch as error:
        raise _Bad(str(error), end) from None
    except Exception as error:  # a body with a good checksum that does not decode: the sender's bug
        raise _Bad(f"undecodable payload: {error!r}", end) from None


def damaged_entries(data: bytes) -> int:
    """How many entries of a file's bytes fail their checksums (the scrubber's quick pass: CRCs
    only, nothing decoded; `scan` then finds which)."""
    damaged, pos, size = 0, 0, len(data)
    view = memoryview(data)  # checksummed in place: no copy of any entry
    unpack_header, unpack_crc, crc32 = _HEADER.unpack_from, _HEADER_CRC.unpack_from, zlib.crc32
    header_size = _HEADER.size
    while pos < size:
        if size - pos < HEADER_BYTES:
            return damaged + 1
        magic, kind, reserved, length, payload_crc = unpack_header(view, pos)
        (header_crc,) = unpack_crc(view, pos + header_size)
        end = pos + HEADER_BYTES + length
        if magic != MAGIC or header_crc != crc32(view[pos:pos + header_size]) or end > size:
            return damaged + 1  # the lengths after it cannot be trusted: scan resynchronizes
        if crc32(view[pos + HEADER_BYTES:end]) != payload_crc:
            damaged += 1
        pos = end
    return damaged


def _next_good_entry(data: bytes, start: int) -> int | None:
    """The first offset at or after `start` where a whole, verified entry begins."""
    pos = data.find(MAGIC, start)
    while pos != -1:
        try:
            _decode_at(data, pos)
            return pos
        except _Bad:
            pos = data.find(MAGIC, pos + 1)
    return None


def scan(data: bytes, *, is_last_file: bool, name: str, report: ScanReport) -> tuple[list[LogEntry], int]:
    """Verify every entry of one file's bytes. Returns (entries, length to keep).

    The length to keep is shorter than the data only for a torn tail of the last file."""
    entries: list[LogEntry] = []
    pos = 0
    while pos < len(data):
        try:
            entry, end = _decode_at(data, pos)
        except _Bad as bad:
            if bad.end is not None and (bad.end < len(data) or not is_last_file):
                log.error("%s: entry at offset %d is damaged (%s): skipped, never served", name, pos, bad)
                report.bad_entries += 1
                report.bad_bytes_skipped += bad.end - pos
                pos = bad.end
                continue
            resume = None if bad.end is not None else _next_good_entry(data, pos + 1)
            if resume is None and is_last_file:
                log.warning("%s: torn tail at offset %d (%s): cutting %d bytes", name, pos, bad, len(data) - pos)
                report.torn_bytes_cut += len(data) - pos
                return entries, pos
            skipped_to = len(data) if resume is None else resume
            log.error("%s: bytes %d..%d are damaged (%s): skipped, never served", name, pos, skipped_to, bad)
            report.bad_entries += 1
            report.bad_bytes_skipped += skipped_to - pos
            pos = skipped_to
            continue
        entries.append(entry)
        report.entries += 1
        pos = end
    return entries, len(data)


def _seq_of(path: Path) -> int:
    return int(path.name.removesuffix(LOG_SUFFIX))


def fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


@dataclasses.dataclass(slots=True)
class FileContents:
    """What one log file holds: each PG's record LSNs and body sizes, in the order written."""

    lsns_by_pg: dict[int, list[int]] = dataclasses.field(default_factory=dict)
    bytes_by_pg: dict[int, list[int]] = dataclasses.field(default_factory=dict)  # parallel to lsns_by_pg
    highest_by_pg: dict[int, int] = dataclasses.field(default_factory=dict)  # each PG's highest LSN here
    # pg -> (base, records, live bytes) last weighed: a sealed file is weighed again only when its
    # PG's base moved, not on every round (weighing walks every record).
    _weighed: dict[int, tuple[int, int, int]] = dataclasses.field(default_factory=dict)

    def add(self, entry: LogEntry) -> None:
        if isinstance(entry, RecordEntry):
            record = entry.record
            pg, lsn = record.pg, record.lsn
            lsns = self.lsns_by_pg.get(pg)
            if lsns is None:
                self.lsns_by_pg[pg] = [lsn]
                self.bytes_by_pg[pg] = [len(entry.body)]
                self.highest_by_pg[pg] = lsn
                return
            lsns.append(lsn)
            self.bytes_by_pg[pg].append(len(entry.body))
            if lsn > self.highest_by_pg[pg]:
                self.highest_by_pg[pg] = lsn

    def covered(self, bases: dict[int, int]) -> bool:
        """Every record is at or below its PG's base (in a durable page image): the file is garbage."""
        return all(highest <= bases.get(pg, 0) for pg, highest in self.highest_by_pg.items())

    def live_bytes(self, pg: int, base: int) -> int:
        """The body bytes of PG `pg`'s records here above `base`."""
        lsns = self.lsns_by_pg.get(pg, [])
        weighed = self._weighed.get(pg)
        if weighed is not None and weighed[:2] == (base, len(lsns)):
            return weighed[2]
        live = sum(size for lsn, size in zip(lsns, self.bytes_by_pg[pg]) if lsn > base) if lsns else 0
        self._weighed[pg] = (base, len(lsns), live)
        return live

    def forget(self, pg: int) -> None:
        for by_pg in (self.lsns_by_pg, self.bytes_by_pg, self.highest_by_pg, self._weighed):
            by_pg.pop(pg, None)


class LogFile:
    """A node's log. Not thread-safe: the server calls it from the event loop's thread only."""

    def __init__(self, directory: Path, *, file_bytes_max: int = LOG_FILE_BYTES_MAX):
        self.directory = Path(directory)
        self.file_bytes_max = file_bytes_max
        self._fd: int | None = None
        self._seq = 0
        self._size = 0
        self._dirty = False
        self.contents: dict[int, FileContents] = {}  # seq -> what the file holds

    @classmethod
    def open(cls, directory: Path, *, file_bytes_max: int = LOG_FILE_BYTES_MAX) -> tuple["LogFile", list[LogEntry], ScanReport]:
        """Open (creating the directory if needed), scan and verify; the torn tail is cut here."""
        directory = Path(directory)
        if not directory.exists():
            directory.mkdir(parents=True)
            fsync_directory(directory.parent)
        log_file = cls(directory, file_bytes_max=file_bytes_max)
        report = ScanReport()
        entries: list[LogEntry] = []
        paths = log_file._paths()
        for index, path in enumerate(paths):
            data = path.read_bytes()
            is_last = index == len(paths) - 1
            found, keep = scan(data, is_last_file=is_last, name=str(path.relative_to(directory.parent)), report=report)
            entries.extend(found)
            contents = log_file.contents[_seq_of(path)] = FileContents()
            for entry in found:
                contents.add(entry)
            if keep < len(data):
                assert is_last
                os.truncate(path, keep)
                fd = os.open(path, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        if paths:
            log_file._seq = _seq_of(paths[-1])
            log_file._open_current()
        else:
            log_file._start_file(1)
        return log_file, entries, report

    def _paths(self) -> list[Path]:
        paths = [p for p in self.directory.iterdir() if p.name.endswith(LOG_SUFFIX) and p.name[:-len(LOG_SUFFIX)].isdigit()]
        return sorted(paths, key=_seq_of)

    def _path(self, seq: int) -> Path:
        return self.directory / f"{seq:08d}{LOG_SUFFIX}"

    @property
    def current_seq(self) -> int:
        return self._seq

    def _open_current(self) -> None:
        self._fd = os.open(self._path(self._seq), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._size = os.fstat(self._fd).st_size

    def _start_file(self, seq: int) -> None:
        """Make `seq` the current file; the previous one was fsynced, so only the last can be torn."""
        self._seq = seq
        self.contents.setdefault(seq, FileContents())
        self._open_current()
        fsync_directory(self.directory)

    def append(self, entries: list[LogEntry]) -> None:
        """Write entries in order; returns once written (not durable: call sync). An entry larger
        than file_bytes_max gets a file of its own."""
        assert self._fd is not None, "log is closed"
        chunk = bytearray()
        contents = self.contents[self._seq]
        for entry in entries:
            header, payload = _framed(entry)  # the payload is copied once, into the chunk
            written = self._size + len(chunk)
            if written + HEADER_BYTES + len(payload) > self.file_bytes_max and written > 0:
                self._write(chunk)
                chunk = bytearray()
                self._rotate()
                contents = self.contents[self._seq]
            chunk += header
            chunk += payload
            contents.add(entry)
        self._write(chunk)

    def _write(self, chunk: bytearray) -> None:
        if chunk:
            _write_all(self._fd, bytes(chunk))
            self._size += len(chunk)
            self._dirty = True

    def _rotate(self) -> None:
        os.fsync(self._fd)
        os.close(self._fd)
        self._dirty = False
        self._start_file(self._seq + 1)

    def sync(self) -> None:
        """Make every appended entry durable: fdatasync writes the data and the file size it needs
        (not the times), as PostgreSQL's WAL does on Linux. A failure is fatal to the caller (never
        retried)."""
        if self._dirty:
            os.fdatasync(self._fd)
            self._dirty = False

    @property
    def files(self) -> int:
        return len(self._paths())

    # --- garbage collection and scrubbing -------------------------------------------------------

    def remove_covered(self, bases: dict[int, int]) -> list[int]:
        """Remove every file but the current one whose records are all covered by their PG's
        durable page image (bases: pg -> base LSN). Truncation markers need no file: the node's
        metadata keeps every range. Returns the sequence numbers removed."""
        removed = [seq for seq, contents in sorted(self.contents.items())
                   if seq != self._seq and contents.covered(bases)]
        for seq in removed:
            with contextlib.suppress(FileNotFoundError):
                self._path(seq).unlink()
            del self.contents[seq]
        if removed:
            fsync_directory(self.directory)
        return removed

    def _old_files(self, files_retained: int) -> list[tuple[int, FileContents]]:
        """The sealed files older than the newest `files_retained`, oldest first."""
        return [(seq, self.contents[seq]) for seq in sorted(self.contents)[:-files_retained or None]
                if seq != self._seq]

    def live_weights(self, bases: dict[int, int], files_retained: int) -> dict[int, dict[int, int]]:
        """What keeps the files older than the newest `files_retained` from removal: seq -> {pg:
        body bytes of that PG's records above its base there}. Coalescing a PG past its records
        here, or copying them into the current file (live_lsns, then `release`), frees the file.
        Cheap when few bases moved since the last call (FileContents caches each PG's weight)."""
        weights: dict[int, dict[int, int]] = {}
        for seq, contents in self._old_files(files_retained):
            for pg, highest in contents.highest_by_pg.items():
                base = bases.get(pg, 0)
                if highest > base:
                    weights.setdefault(seq, {})[pg] = contents.live_bytes(pg, base)
        return weights

    def live_lsns(self, seq: int, pg: int, base: int) -> list[int]:
        """PG `pg`'s record LSNs in file `seq` above `base`, in the order written."""
        return [lsn for lsn in self.contents[seq].lsns_by_pg.get(pg, []) if lsn > base]

    def release(self, seq: int, pg: int) -> None:
        """PG `pg`'s records in sealed file `seq` are durable in a newer file too (copied forward):
        they no longer keep the file. A reopened log scans the file again and names them again,
        which only means they are copied once more; a replay takes the duplicate copies once."""
        assert seq != self._seq, "records are copied forward out of sealed files only"
        contents = self.contents.get(seq)
        if contents is not None:
            contents.forget(pg)

    def files_with_sizes(self) -> list[tuple[int, int | None]]:
        """(seq, bytes written so far for the current file, None for a sealed one), oldest first:
        the scrubber reads each from another thread, the current one only up to that size."""
        return [(seq, self._size if seq == self._seq else None) for seq in sorted(self.contents)]

    def path_of(self, seq: int) -> Path:
        return self._path(seq)

    def rewrite(self, seq: int, entries: list[LogEntry]) -> None:
        """Replace a sealed file with these entries (a scrubbed file's good copies, in the original
        order) atomically and durably."""
        assert seq != self._seq, "the current file is never rewritten"
        path = self._path(seq)
        tmp = path.with_name(path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            _write_all(fd, b"".join(encode_entry(entry) for entry in entries))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        fsync_directory(self.directory)
        contents = self.contents[seq] = FileContents()
        for entry in entries:
            contents.add(entry)

    def seal_current(self) -> None:
        """Start a new file now (the scrubber verifies only sealed files)."""
        if self._size:
            self._rotate()

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
