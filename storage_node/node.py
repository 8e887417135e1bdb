"""The sans-I/O state of a storage node: its durable volume epoch and LSN floor, its segments by
PG, and the dispatch of storage-protocol requests (aurora_db/storage_protocol.py) to replies.

The shell drives it in the etcd/raft Ready/Advance style:
    reply = node.step(request, token)     # an answer now, or None: the answer waits for durability
    ready = node.ready()                  # what to persist: node metadata first, then log entries
    ... the shell writes and fsyncs all of it (one fsync of the node's one log for every waiting
        request, whatever PGs they touch) ...
    for token, reply in node.advance(ready): send(token, reply)
Invariants:
  - Persist before ack: records enter a segment only in `advance`, after their fsync, so no reply
    names an SCL that is not durable; truncation markers and a raised epoch are durable before the
    replies that depend on them.
  - Epoch rule: a request with an epoch older than the newest accepted one is refused
    ("stale_epoch"); one with a newer epoch raises it at once (so older ones are refused from then
    on), and nothing of that request is answered before the new epoch is durable. set_epoch is a
    claim: it is refused unless its epoch is newer than every accepted one, so of two writers
    recovering at once with the same epoch at most one can win a write quorum.
  - Truncation ranges are node-wide: every (above_lsn, lsn_floor] range the node was told of is in
    its durable metadata, reported in status and set_epoch replies, and applied to every segment,
    including one created later; telling the node a range it already holds writes nothing.
  - Queued work is applied in `advance` in arrival order, the order it was written to the logs,
    so a restart that replays the logs rebuilds the same segments and the same SCLs. Records
    copied forward (out of an old log file, by the healer) are written again after newer ones; a
    replay takes a copy as a duplicate, or in its original's place once that file is gone, and
    holds every out-of-order record until its chain is whole (replay_segment).
  - At most one Ready is outstanding. Queued work is bounded by the shell: at most
    STORAGE_CONNECTIONS_MAX x IN_FLIGHT_REQUESTS_MAX requests are ever waiting.
  - Horizon (PGMRPL, DESIGN.md 2): every compute node reports its lowest read point (`read_point`,
    a lease of READ_POINT_LEASE_MS). The horizon is the lowest live lease, never above the highest
    VDL the node's records name (a durable point no truncation reaches), and 0 until one lease
    period has passed since start (leases are not durable: a restarted node hears them again
    first). Segments coalesce and drop records only up to the horizon.
  - Peers (other storage nodes: gossip, rebuild) read without an epoch ("peer": True) and never
    raise it; what a node learns from peers (a newer epoch, truncation ranges) is queued and made
    durable like a request's, before any record taken from a peer enters a segment.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Callable

from aurora_db import pages, truncation
from aurora_db import storage_protocol as sp
from aurora_db.constants import (
    BATCH_RECORDS_MAX,
    CHAIN_RECORDS_MAX,
    IMAGE_CHUNK_BYTES_MAX,
    PAGE_ID_MAX,
    PENDING_RECORDS_MAX,
    READ_POINT_CLIENTS_MAX,
    READ_POINT_LEASE_MS,
    READ_RECORDS_BYTES_MAX,
    READ_RECORDS_MAX,
    WRITER_ADDRESS_BYTES_MAX,
)
from aurora_db.records import ChecksumMismatch, open_sealed, pg_of_page
from storage_node.log_file import LogEntry, RecordEntry, TruncateEntry
from storage_node.segment import BelowHorizon, BrokenPageChain, NotComplete, Segment

log = logging.getLogger(__name__)

_REPLAY_PENDING_UNBOUNDED = 1 << 62


class BadRequest(Exception):
    """The request is malformed: answered with "bad_request", the connection stays open."""


@dataclasses.dataclass(frozen=True, slots=True)
class NodeMeta:
    """What the node keeps outside its logs: the volume epoch and the highest LSN floor seen."""

    epoch: int = 0
    lsn_floor: int = 0
    truncations: tuple[truncation.Range, ...] = ()  # live (above_lsn, lsn_floor, epoch) ranges, in the order told
    writer: str | None = None  # "host:port" the epoch's writer named in set_epoch: where readers follow it


@dataclasses.dataclass(frozen=True, slots=True)
class _Append:
    token: Any
    request_id: Any
    batches: tuple[tuple[int, list[RecordEntry]], ...]  # (pg, records not yet held), PGs distinct
    many: bool  # an append_many: the reply names every PG's SCL


@dataclasses.dataclass(frozen=True, slots=True)
class _Truncate:
    token: Any
    request_id: Any
    above_lsn: int
    epoch: int
    lsn_floor: int | None


@dataclasses.dataclass(frozen=True, slots=True)
class _CopyForward:
    """Held records written again to the current log file, so an old file they pin can go: the
    segments already hold them, so nothing is applied and nobody waits for a reply."""

    entries: list[RecordEntry]


@dataclasses.dataclass(frozen=True, slots=True)
class _Deferred:
    """A request answered only once the epoch it raised is durable."""

    token: Any
    request: dict


_Op = _Append | _Truncate | _CopyForward | _Deferred


@dataclasses.dataclass(frozen=True, slots=True)
class Ready:
    meta: NodeMeta | None  # persist first (atomically), if not None
    log_entries: list[LogEntry]  # to append to the node's log, in order; then one fsync
    ops: list[_Op]
    last_op_seq: int  # every op queued up to this mark is durable once this Ready is advanced


def entries_by_pg(entries: list[LogEntry]) -> dict[int, list[LogEntry]]:
    """Split the node's log into each PG's entries, in the order written. A truncation marker is
    node-wide and discards only records written before it, so it goes to every PG seen so far."""
    by_pg: dict[int, list[LogEntry]] = {}
    for entry in entries:
        if isinstance(entry, RecordEntry):
            by_pg.setdefault(entry.record.pg, []).append(entry)
        else:
            for pg_entries in by_pg.values():
                pg_entries.append(entry)
    return by_pg


def apply_truncations(segment: Segment, truncations) -> None:
    """Make the segment's ranges the node's live ones: apply every range it does not hold yet, and
    stop refusing LSNs of a range that a newer epoch's range voided (aurora_db/truncation.py)."""
    for above_lsn, lsn_floor, _ in truncations:
        if (above_lsn, lsn_floor) not in segment.truncation_ranges:
            segment.truncate(above_lsn, lsn_floor)
    segment.retain_ranges(truncation.pairs(truncations))


def replay_segment(pg: int, entries: list[LogEntry], image=None, live_ranges=None) -> Segment:
    """Rebuild a segment from its page image and its log, in the order the entries were written
    (records the image covers are skipped). A marker discards what was written before it, as it
    did then; its range is remembered only if it is live (`live_ranges`: (above_lsn, lsn_floor)
    pairs; None: all), since records of a voided range were written after it was voided.

    Every record in the log is durable, so none is dropped for the pending map's limit here: a
    record copied forward comes after the newer records of its PG that wait for it."""
    segment = Segment(pg, image, pending_records_max=_REPLAY_PENDING_UNBOUNDED)
    batch: list[RecordEntry] = []
    for entry in entries:
        if isinstance(entry, RecordEntry):
            batch.append(entry)
            continue
        segment.add(batch)
        batch = []
        segment.truncate(entry.above_lsn, entry.lsn_floor,
                         remember=live_ranges is None or (entry.above_lsn, entry.lsn_floor) in live_ranges)
    segment.add(batch)
    segment.pending_records_max = PENDING_RECORDS_MAX  # for what arrives from now on
    return segment


def _int(request: dict, name: str, minimum: int = 0) -> int:
    value = request.get(name)
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise BadRequest(f"field {name!r} must be an integer >= {minimum}, got {value!r}")
    return value


class Node:
    def __init__(self, node_id: str, az: str, meta: NodeMeta, segments: dict[int, Segment], *,
                 clock_ms: Callable[[], float] = lambda: 0.0, joining: bool = False):
        self.node_id = node_id
        self.az = az
        self.meta = meta  # durable
        self.accepted = meta  # >= meta: raised by requests, durable after the next Ready
        self.segments = segments
        self.clock_ms = clock_ms
        self.started_ms = clock_ms()
        # An empty data directory in a volume that has data: until the epoch and truncation ranges
        # are learned from a read quorum of peers, nothing but status and peer reads is answered.
        self.joining = joining
        self._leases: dict[str, tuple[int, float]] = {}  # client -> (read point, expiry ms)
        self._queued: list[_Op] = []
        self.op_seq = 0  # ops queued so far (a mark: `durable_op_seq` reaches it once they are durable)
        self.durable_op_seq = 0
        self._meta_unwritten = joining  # an emptied node's metadata file is written when it joins
        self._ready_outstanding = False
        self.stats = {"durable_batches": 0, "durable_requests": 0,  # group fsync at work: requests per batch
                      "records_from_peers": 0, "coalesced_records": 0, "images_written": 0,
                      "images_installed": 0, "log_files_removed": 0, "records_copied_forward": 0, "scrub_passes": 0,
                      "damaged_found": 0, "damaged_repaired": 0}

    # --- input --------------------------------------------------------------------------------

    def step(self, request: dict, token: Any) -> dict | None:
        """Take one request. Returns its reply now, or None: advance() will return it with `token`."""
        request_id = request.get("id")
        try:
            return self._step(request, token, request_id)
        except BadRequest as error:
            return sp.error(request_id, sp.ERROR_BAD_REQUEST, str(error))
        except ChecksumMismatch as error:
            return sp.error(request_id, sp.ERROR_CHECKSUM, str(error))

    def _step(self, request: dict, token: Any, request_id: Any) -> dict | None:
        kind = request.get("t")
        if kind == sp.STATUS:
            return self._answer(request)
        if kind == sp.READ_POINT:
            return self._take_lease(request, request_id)
        if kind not in (sp.SET_EPOCH, sp.APPEND, sp.APPEND_MANY, sp.GET_PAGE, sp.CHAIN, sp.READ_RECORDS, sp.TRUNCATE,
                        sp.GET_IMAGE):
            raise BadRequest(f"unknown request type {kind!r}")
        if request.get("peer") is True and kind in (sp.READ_RECORDS, sp.GET_IMAGE):  # a peer's: epochs do not apply
            self._validate_read(kind, request)
            return self._answer(request)
        if kind == sp.GET_IMAGE:
            raise BadRequest("get_image is a peer's request: it must carry peer: true")
        if self.joining:
            return sp.error(request_id, sp.ERROR_JOINING,
                            f"storage node {self.node_id} started empty and is learning the volume from its peers")
        if kind == sp.GET_PAGE and request.get("reader") is True:  # a reader's read: epochs do not apply
            self._validate_read(kind, request)
            return self._answer(request)
        epoch = _int(request, "epoch")
        if epoch < self.accepted.epoch:
            return sp.error(request_id, sp.ERROR_STALE_EPOCH,
                            f"request epoch {epoch} is older than volume epoch {self.accepted.epoch}")
        if kind == sp.SET_EPOCH and epoch == self.accepted.epoch:
            return sp.error(request_id, sp.ERROR_EPOCH_CLAIMED, f"epoch {epoch} is already claimed")
        if kind == sp.SET_EPOCH:
            writer = request.get("writer")
            if writer is not None and not (isinstance(writer, str) and len(writer) <= WRITER_ADDRESS_BYTES_MAX):
                raise BadRequest(f"field 'writer' must be a HOST:PORT string, got {writer!r}")
            self._raise_epoch(epoch, writer)
            self._queue(_Deferred(token, request))
            return None
        if kind in (sp.APPEND, sp.APPEND_MANY):
            many = kind == sp.APPEND_MANY
            batches = self._validate_appends(request, many)
            self._raise_epoch(epoch)
            fresh = []
            for pg, entries in batches:
                segment = self.segments.get(pg)
                if segment is not None:
                    entries = segment.fresh(entries)
                fresh.append((pg, entries))
            if not any(entries for _, entries in fresh) and epoch <= self.meta.epoch:  # all already durable
                return self._append_reply(request_id, many, [[pg, self._scl(pg)] for pg, _ in fresh], 0)
            self._queue(_Append(token, request_id, tuple(fresh), many))
            return None
        if kind == sp.TRUNCATE:
            above_lsn = _int(request, "above_lsn")
            lsn_floor = request.get("lsn_floor")
            if lsn_floor is not None:
                lsn_floor = _int(request, "lsn_floor", minimum=above_lsn)
            range_epoch = request.get("range_epoch", epoch)
            if not isinstance(range_epoch, int) or isinstance(range_epoch, bool) or not 0 <= range_epoch <= epoch:
                raise BadRequest(f"field 'range_epoch' must be an integer in 0..{epoch}, got {range_epoch!r}")
            self._raise_epoch(epoch)
            if lsn_floor is not None:
                known = (above_lsn, lsn_floor) in truncation.pairs(self.accepted.truncations)
                if known and (above_lsn, lsn_floor) in truncation.pairs(self.meta.truncations) and epoch <= self.meta.epoch:
                    return self._truncate_reply(request_id)  # already durable: nothing to write
                if not known and not self._accept_range((above_lsn, lsn_floor, range_epoch)):
                    return self._truncate_reply(request_id)  # void: a newer epoch's range is below it
            self._queue(_Truncate(token, request_id, above_lsn, range_epoch, lsn_floor))
            return None
        self._validate_read(kind, request)
        self._raise_epoch(epoch)
        if epoch > self.meta.epoch:
            self._queue(_Deferred(token, request))
            return None
        return self._answer(request)

    def _raise_epoch(self, epoch: int, writer: str | None = None) -> None:
        """A newer epoch forgets the old epoch's writer address; set_epoch names the new one."""
        if epoch > self.accepted.epoch:
            log.info("volume epoch %d -> %d (durable before any reply of that request)", self.accepted.epoch, epoch)
            self.accepted = dataclasses.replace(self.accepted, epoch=epoch, writer=writer)

    def _validate_appends(self, request: dict, many: bool) -> list[tuple[int, list[RecordEntry]]]:
        """(pg, records) of an append, or of each batch of an append_many: at most
        BATCH_RECORDS_MAX records in all, each batch non-empty, no PG twice."""
        if not many:
            return [(_int(request, "pg"), self._validate_batch(request.get("pg"), request.get("records")))]
        batches = request.get("batches")
        if not isinstance(batches, list) or not batches or not all(isinstance(b, list) and len(b) == 2 for b in batches):
            raise BadRequest("field 'batches' must be a non-empty list of [pg, records]")
        total = sum(len(records) if isinstance(records, list) else 0 for _, records in batches)
        if total > BATCH_RECORDS_MAX:
            raise BadRequest(f"{total} records in one append_many exceed the limit of {BATCH_RECORDS_MAX}")
        pgs = [pg for pg, _ in batches]
        if len(set(map(repr, pgs))) != len(pgs):
            raise BadRequest("a PG appears twice in one append_many")
        return [(pg, self._validate_batch(pg, records)) for pg, records in batches]

    def _validate_batch(self, pg, sealed) -> list[RecordEntry]:
        if not isinstance(pg, int) or isinstance(pg, bool) or pg < 0:
            raise BadRequest(f"field 'pg' must be an integer >= 0, got {pg!r}")
        if not isinstance(sealed, list) or not sealed:
            raise BadRequest("field 'records' must be a non-empty list of [crc, body]")
        if len(sealed) > BATCH_RECORDS_MAX:
            raise BadRequest(f"{len(sealed)} records in one append exceed the limit of {BATCH_RECORDS_MAX}")
        entries = []
        ops = pages.OPS
        in_order = True
        last_lsn = 0
        for item in sealed:  # every record of every append on every node: kept lean
            if type(item) is not list or len(item) != 2:  # noqa: E721 (exact types: no bool)
                raise BadRequest("each record must be [crc, body] with an integer crc and a binary body")
            crc, body = item
            if type(crc) is not int or type(body) is not bytes:  # noqa: E721
                raise BadRequest("each record must be [crc, body] with an integer crc and a binary body")
            try:
                record = open_sealed(crc, body)
            except ChecksumMismatch:
                raise
            except Exception as error:
                raise BadRequest(f"record body does not decode: {error!r}") from None
            lsn, page_id = record.lsn, record.page_id
            if type(page_id) is not int or not 0 <= page_id < PAGE_ID_MAX:  # noqa: E721
                raise BadRequest(f"record {lsn} names page {page_id}, outside 0..{PAGE_ID_MAX}")
            if pg_of_page(page_id) != pg:
                raise BadRequest(f"record {lsn} is for page {page_id} of PG {record.pg}, not PG {pg}")
            prev_volume, prev_pg, prev_page = record.prev_volume, record.prev_pg, record.prev_page
            if not (type(lsn) is int and type(prev_volume) is int and type(prev_pg) is int  # noqa: E721 (no bool)
                    and type(prev_page) is int and 0 <= prev_volume < lsn and 0 <= prev_pg < lsn
                    and 0 <= prev_page < lsn):
                raise BadRequest(f"record {lsn} has backlinks that do not point below it")
            if record.op not in ops:
                raise BadRequest(f"record {lsn} has unknown op {record.op!r}")
            entries.append(RecordEntry(record, crc, body))
            in_order = in_order and lsn > last_lsn
            last_lsn = lsn
        if not in_order:  # written and applied in LSN order: fewer pending records
            entries.sort(key=_entry_lsn)
        return entries

    def _validate_read(self, kind: str, request: dict) -> None:
        if kind == sp.GET_PAGE:
            pg, page_id = _int(request, "pg"), _int(request, "page_id")
            _int(request, "lsn")
            if pg_of_page(page_id) != pg:
                raise BadRequest(f"page {page_id} belongs to PG {pg_of_page(page_id)}, not PG {pg}")
        elif kind == sp.CHAIN:
            _int(request, "pg"), _int(request, "after_lsn")
        elif kind == sp.READ_RECORDS:
            _int(request, "pg"), _int(request, "after_lsn"), _int(request, "upto_lsn"), _int(request, "limit")
        elif kind == sp.GET_IMAGE:
            _int(request, "pg"), _int(request, "base_lsn"), _int(request, "after_page_id", minimum=-1)

    def _queue(self, op: _Op) -> None:
        self._queued.append(op)
        self.op_seq += 1

    def finish_joining(self) -> None:
        """The emptied node learned the volume from its peers: it answers everything from now on,
        and its metadata file (which marks the data directory as a member's) is written next."""
        self.joining = False

    # --- read points (PGMRPL) -------------------------------------------------------------------

    def _take_lease(self, request: dict, request_id) -> dict:
        client, lsn = request.get("client"), _int(request, "lsn")
        if not isinstance(client, str) or not 0 < len(client) <= WRITER_ADDRESS_BYTES_MAX:
            raise BadRequest(f"field 'client' must be a short string, got {client!r}")
        now_ms = self.clock_ms()
        self._expire_leases(now_ms)
        if client not in self._leases and len(self._leases) >= READ_POINT_CLIENTS_MAX:
            return sp.error(request_id, sp.ERROR_BAD_REQUEST, f"{READ_POINT_CLIENTS_MAX} read point leases is the limit")
        self._leases[client] = (lsn, now_ms + READ_POINT_LEASE_MS)
        return sp.ok(request_id, horizon=self.horizon())

    def _expire_leases(self, now_ms: float) -> None:
        for client, (_, expiry_ms) in list(self._leases.items()):
            if expiry_ms < now_ms:
                del self._leases[client]

    def horizon(self) -> int:
        """The LSN up to which segments may coalesce and drop records (see the module docstring)."""
        now_ms = self.clock_ms()
        if self.joining or now_ms - self.started_ms < READ_POINT_LEASE_MS:
            return 0
        self._expire_leases(now_ms)
        return min([self.vdl_hint(), *(lsn for lsn, _ in self._leases.values())])

    # --- what peers tell (gossip, rebuild) -----------------------------------------------------

    def _accept_range(self, new: truncation.Range) -> bool:
        """Add a range to the accepted metadata, keeping only live ones. False if it is void."""
        ranges = truncation.live(self.accepted.truncations + (new,))
        if new not in ranges:
            return False
        self.accepted = dataclasses.replace(self.accepted, lsn_floor=max(new[1], self.accepted.lsn_floor),
                                            truncations=ranges)
        return True

    def learn_from_peer(self, epoch: int, truncations, writer: str | None) -> bool:
        """A peer's epoch and truncation ranges: queued to be durable with the next Ready (and the
        ranges applied to every segment then). True if anything was new."""
        learned = False
        if epoch > self.accepted.epoch:
            self._raise_epoch(epoch, writer)
            learned = True
        for above_lsn, lsn_floor, range_epoch in truncation.from_wire(truncations):
            if (above_lsn, lsn_floor) in truncation.pairs(self.accepted.truncations):
                continue
            if self._accept_range((above_lsn, lsn_floor, range_epoch)):
                self._queue(_Truncate(None, None, above_lsn, range_epoch, lsn_floor))
                learned = True
        return learned

    def take_from_peer(self, pg: int, sealed: list) -> int:
        """Records a peer holds and this segment lacks: verified, then queued like an append (no
        reply). Returns how many were queued. Raises ChecksumMismatch or BadRequest."""
        entries = self._validate_batch(pg, sealed)
        segment = self.segments.get(pg)
        if segment is not None:
            entries = segment.fresh(entries)
        if entries:
            self._queue(_Append(None, None, ((pg, entries),), False))
            self.stats["records_from_peers"] += len(entries)
        return len(entries)

    def copy_forward(self, entries: list[RecordEntry]) -> None:
        """Queue held records to be written again (see _CopyForward); durable with the next Ready."""
        if entries:
            self._queue(_CopyForward(entries))
            self.stats["records_copied_forward"] += len(entries)

    def segment_summaries(self) -> dict[int, dict]:
        return {pg: {"scl": segment.scl, "base": segment.base_lsn, "records": segment.records_held,
                     "log_bytes": segment.held_bytes, "image_bytes": segment.image.file_bytes,
                     "pages": segment.page_count(), "damaged": segment.damaged is not None}
                for pg, segment in sorted(self.segments.items())}

    # --- answers from the durable state --------------------------------------------------------

    def scls(self) -> dict[int, int]:
        return {pg: segment.scl for pg, segment in sorted(self.segments.items())}

    def vdl_hint(self) -> int:
        """The highest writer VDL any held record names: recovery's known-durable starting point."""
        return max((segment.vdl_hint for segment in self.segments.values()), default=0)

    def _truncate_reply(self, request_id) -> dict:
        return sp.ok(request_id, pgs=self.scls(), epoch=self.meta.epoch, lsn_floor=self.meta.lsn_floor,
                     truncations=truncation.to_wire(self.meta.truncations))

    def new_segment(self, pg: int) -> Segment:
        """A segment for a PG this node has not held yet: every known truncation range applies to it."""
        segment = self.segments[pg] = Segment(pg)
        apply_truncations(segment, self.meta.truncations)
        return segment

    def _answer(self, request: dict) -> dict:
        request_id, kind = request.get("id"), request.get("t")
        if kind == sp.STATUS and request.get("brief") is True:  # a peer's gossip round: SCLs, bases, metadata
            return sp.ok(request_id, epoch=self.meta.epoch, writer=self.meta.writer, rebuilding=self.joining,
                         pgs=self.scls(), truncations=truncation.to_wire(self.meta.truncations),
                         segments={pg: {"scl": s.scl, "base": s.base_lsn, "damaged": s.damaged is not None}
                                   for pg, s in self.segments.items()})
        if kind == sp.STATUS:
            return sp.ok(request_id, node_id=self.node_id, az=self.az, epoch=self.meta.epoch,
                         lsn_floor=self.meta.lsn_floor, pgs=self.scls(), vdl_hint=self.vdl_hint(),
                         truncations=truncation.to_wire(self.meta.truncations), writer=self.meta.writer,
                         stats=dict(self.stats), segments=self.segment_summaries(), horizon=self.horizon(),
                         rebuilding=self.joining)
        if kind == sp.SET_EPOCH:
            return sp.ok(request_id, epoch=self.meta.epoch, lsn_floor=self.meta.lsn_floor, pgs=self.scls(),
                         vdl_hint=self.vdl_hint(), truncations=truncation.to_wire(self.meta.truncations),
                         writer=self.meta.writer)
        pg = request["pg"]
        segment = self.segments.get(pg) or Segment(pg)
        try:
            return self._answer_read(kind, request, request_id, pg, segment)
        except BelowHorizon as error:
            return sp.error(request_id, sp.ERROR_BELOW_HORIZON, str(error), base_lsn=segment.base_lsn)

    def _answer_read(self, kind: str, request: dict, request_id, pg: int, segment: Segment) -> dict:
        if kind == sp.GET_IMAGE:
            return self._image_chunk(request, request_id, segment)
        if kind == sp.GET_PAGE:
            try:
                page = segment.get_page(request["page_id"], request["lsn"])
            except NotComplete as error:
                return sp.error(request_id, sp.ERROR_NOT_COMPLETE, str(error))
            except BelowHorizon:
                raise
            except BrokenPageChain as error:
                log.error("PG %d: %s", pg, error)
                return sp.error(request_id, sp.ERROR_INTERNAL, str(error))
            except Exception as error:  # a record whose args do not apply: the writer's bug, not ours
                log.exception("PG %d: applying the records of page %d failed", pg, request["page_id"])
                return sp.error(request_id, sp.ERROR_INTERNAL, f"applying page {request['page_id']}: {error!r}")
            return sp.ok(request_id, page=None if page is None else pages.to_wire(page))
        if kind == sp.CHAIN:
            records, last_at_or_below, more = segment.chain(request["after_lsn"], CHAIN_RECORDS_MAX)
            return sp.ok(request_id, records=records, last_at_or_below=last_at_or_below, scl=segment.scl, more=more)
        assert kind == sp.READ_RECORDS, kind
        limit = min(request["limit"], READ_RECORDS_MAX)
        entries, more = segment.read_records(request["after_lsn"], request["upto_lsn"], limit, READ_RECORDS_BYTES_MAX)
        return sp.ok(request_id, records=[[e.crc, e.body] for e in entries], scl=segment.scl, more=more)

    def _image_chunk(self, request: dict, request_id, segment: Segment) -> dict:
        """Pages of the segment's image after `after_page_id`, for a peer rebuilding this PG. The
        peer names the base it started with: if the image moved on meanwhile, it starts again."""
        image = segment.image
        if segment.damaged is not None:
            return sp.error(request_id, sp.ERROR_NOT_COMPLETE, f"segment of PG {segment.pg} is being repaired")
        if request["base_lsn"] not in (0, image.base_lsn):
            return sp.error(request_id, sp.ERROR_IMAGE_CHANGED,
                            f"the image of PG {segment.pg} is at LSN {image.base_lsn} now", base_lsn=image.base_lsn)
        out, size, more = [], 0, False
        for page_id in sorted(p for p in image.page_ids if p > request["after_page_id"]):
            if out and size >= IMAGE_CHUNK_BYTES_MAX:
                more = True
                break
            try:
                payload = image.read(page_id)
            except ChecksumMismatch as error:
                segment.damaged = str(error)
                return sp.error(request_id, sp.ERROR_NOT_COMPLETE, f"segment of PG {segment.pg} is being repaired")
            out.append([payload.crc, payload.payload])
            size += len(payload.payload)
        return sp.ok(request_id, base_lsn=image.base_lsn, vdl_hint=image.vdl_hint, pages=out, more=more,
                     page_count=image.page_count, epoch=self.meta.epoch)

    # --- durability ---------------------------------------------------------------------------

    def has_ready(self) -> bool:
        return bool(self._queued) or self._meta_to_write()

    def _meta_to_write(self) -> bool:
        """A joining node writes no metadata: its file marks the directory as a member's."""
        return not self.joining and (self.accepted != self.meta or self._meta_unwritten)

    def meta_covers(self, target: NodeMeta) -> bool:
        """Is everything in `target` (an earlier `accepted`) durable now?"""
        live = truncation.live(self.meta.truncations + target.truncations)  # a target range may be void by now
        return self.meta.epoch >= target.epoch and truncation.pairs(live) <= truncation.pairs(self.meta.truncations)

    def ready(self) -> Ready:
        """Everything queued since the last Ready: the shell persists it, fsyncs, then calls advance."""
        assert not self._ready_outstanding, "advance() the previous Ready first"
        self._ready_outstanding = True
        ops, self._queued = self._queued, []
        entries: list[LogEntry] = []
        for op in ops:
            if isinstance(op, _Append):
                for _, batch in op.batches:
                    entries.extend(batch)
            elif isinstance(op, _CopyForward):
                entries.extend(op.entries)
            elif isinstance(op, _Truncate):
                entries.append(TruncateEntry(op.above_lsn, op.epoch, op.lsn_floor))
        return Ready(self.accepted if self._meta_to_write() else None, entries, ops, self.op_seq)

    def advance(self, ready: Ready) -> list[tuple[Any, dict]]:
        """The Ready is durable: apply it in order and return the replies it was holding."""
        assert self._ready_outstanding
        self._ready_outstanding = False
        if ready.meta is not None:
            assert ready.meta.epoch >= self.meta.epoch and ready.meta.lsn_floor >= self.meta.lsn_floor
            self.meta = ready.meta
            self._meta_unwritten = False
        self.durable_op_seq = ready.last_op_seq
        self.stats["durable_batches"] += 1
        self.stats["durable_requests"] += len(ready.ops)
        replies = []
        for op in ready.ops:
            if isinstance(op, _Append):
                reply = self._apply_append(op)
            elif isinstance(op, _Truncate):
                live = truncation.pairs(self.meta.truncations)
                for segment in self.segments.values():
                    segment.truncate(op.above_lsn, op.lsn_floor)
                    segment.retain_ranges(live)
                reply = self._truncate_reply(op.request_id)
            elif isinstance(op, _CopyForward):
                continue
            else:
                reply = self._answer(op.request)
            if op.token is not None:  # None: learned from a peer, nobody waits for a reply
                replies.append((op.token, reply))
        return replies

    def _apply_append(self, op: _Append) -> dict:
        scls, dropped = [], 0
        for pg, entries in op.batches:
            segment = self.segments.get(pg) or self.new_segment(pg)
            result = segment.add(entries)
            if result.conflicts:
                log.error("PG %d: refused %d records that contradict the chain: %s", pg, len(result.conflicts),
                          "; ".join(result.conflicts[:5]))
                return sp.error(op.request_id, sp.ERROR_BAD_REQUEST,
                                f"PG {pg}: {len(result.conflicts)} records contradict the chain: "
                                + "; ".join(result.conflicts[:5]))
            if result.dropped:
                log.warning("PG %d: pending map over its limit of %d records: dropped %d (the writer resends)",
                            pg, segment.pending_records_max, len(result.dropped))
            scls.append([pg, segment.scl])
            dropped += len(result.dropped)
        return self._append_reply(op.request_id, op.many, scls, dropped)

    @staticmethod
    def _append_reply(request_id, many: bool, scls: list[list[int]], dropped: int) -> dict:
        """scls: [pg, scl] pairs, as the reply carries them."""
        reply = sp.ok(request_id, scls=scls) if many else \
            sp.ok(request_id, pg=scls[0][0], scl=scls[0][1])
        if dropped:
            reply["pending_dropped"] = dropped
        return reply

    def _scl(self, pg: int) -> int:
        segment = self.segments.get(pg)
        return segment.scl if segment is not None else 0


def _entry_lsn(entry: RecordEntry) -> int:
    return entry.record.lsn
