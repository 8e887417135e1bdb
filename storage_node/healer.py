"""A storage node's background work (DESIGN.md 7, steps 3-5, 7 and 8), around the sans-I/O Node:
joining a volume from an empty disk, gossip with the PG's other segments, coalescing records into
page images, removing the log files they cover, and scrubbing files against their checksums.

Invariants:
  - Nothing learned from a peer is counted before it is durable here: records go through the
    node's queue and group fsync like an append; a copied page image is written and fsynced before
    the segment uses it; a learned epoch or truncation range is in the node's metadata first.
  - A segment's records are dropped only after a page image covering them is durable, and a log
    file is removed only when every record in it is covered (LogFile.remove_covered).
  - Images are written, installed and scrubbed for one PG at a time, under that PG's lock: a
    coalesce, a copy from a peer and a scrub never interleave on the same PG.
  - Every peer request has a deadline (PEER_REQUEST_TIMEOUT_MS); a dead peer only makes a round
    shorter. Pulled record batches are at most BATCH_RECORDS_MAX, images at most a PG.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
from pathlib import Path
from typing import Awaitable, Callable

from aurora_db import storage_protocol as sp
from aurora_db.constants import (
    BATCH_RECORDS_MAX,
    COALESCE_INTERVAL_MS,
    COALESCE_PAGES_PER_TURN,
    COALESCE_RECORDS_MIN,
    IMAGE_REWRITE_RATIO_MAX,
    GOSSIP_INTERVAL_MS,
    GOSSIP_RECORDS_PER_REQUEST,
    HELD_BYTES_MAX,
    LOG_FILES_RETAINED,
    PEER_REQUEST_TIMEOUT_MS,
    SCRUB_BYTES_PER_TURN,
    SCRUB_INTERVAL_MS,
)
from aurora_db.framing import FrameError, encode_frame, read_frame
from aurora_db.records import ChecksumMismatch, checksum
from storage_node.gossip import Pull, SegmentView, decide_join, plan_pulls, views_from_status
from storage_node.log_file import RecordEntry, ScanReport, damaged_entries, scan
from storage_node.node import BadRequest, Node, NodeMeta
from storage_node.page_image import PagePayload, PageImage, write_image
from storage_node.segment import BelowHorizon, NotComplete, Segment

log = logging.getLogger("storage_node.healer")


class PeerError(Exception):
    """A peer did not answer, or answered with an error."""

    def __init__(self, message: str, reply: dict | None = None):
        super().__init__(message)
        self.reply = reply or {}


class PeerLink:
    """One connection to a peer storage node, one request at a time, reopened on failure."""

    def __init__(self, node_id: str, host: str, port: int):
        self.node_id, self.host, self.port = node_id, host, port
        self._streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self._lock = asyncio.Lock()
        self._next_id = 0

    async def request(self, message: dict) -> dict:
        async with self._lock:
            try:
                async with asyncio.timeout(PEER_REQUEST_TIMEOUT_MS / 1000):
                    if self._streams is None:
                        self._streams = await asyncio.open_connection(self.host, self.port)
                    reader, writer = self._streams
                    self._next_id += 1
                    writer.write(encode_frame({"id": self._next_id, **message}))
                    reply = await read_frame(reader)
            except (OSError, TimeoutError, asyncio.IncompleteReadError, FrameError) as error:
                self.close()
                raise PeerError(f"peer {self.node_id}: {error!r}") from None
        if not reply.get("ok"):
            raise PeerError(f"peer {self.node_id}: {reply.get('error')}: {reply.get('message')}", reply)
        return reply

    def close(self) -> None:
        if self._streams is not None:
            self._streams[1].transport.abort()
            self._streams = None


class Healer:
    def __init__(self, node: Node, pages_dir: Path, log_file, peers: list[tuple[str, str, int]],
                 kick: Callable[[], None], durable: Callable[[int, NodeMeta], Awaitable[None]]):
        self.node = node
        self.pages_dir = pages_dir
        self.log = log_file
        self.peers = {node_id: PeerLink(node_id, host, port) for node_id, host, port in peers
                      if node_id != node.node_id}
        self._kick = kick  # the persist loop has work
        self._durable = durable  # wait until the node's queue up to a mark is durable
        self._locks: dict[int, asyncio.Lock] = {}
        self._peer_views: dict[str, dict[int, SegmentView]] = {}  # the previous gossip round's
        self._own_views: dict[int, SegmentView] = {}
        self._scrub_queue: collections.deque[tuple[str, int]] = collections.deque()  # the cycle's files left

    def lock(self, pg: int) -> asyncio.Lock:
        return self._locks.setdefault(pg, asyncio.Lock())

    async def run(self) -> None:
        if self.node.joining:
            await self.join()
        await asyncio.gather(self._every(GOSSIP_INTERVAL_MS, self.gossip_once),
                             self._every(COALESCE_INTERVAL_MS, self.coalesce_once),
                             self._every(SCRUB_INTERVAL_MS, self.scrub_once))

    @staticmethod
    async def _every(interval_ms: int, work: Callable[[], Awaitable[None]]) -> None:
        while True:
            await asyncio.sleep(interval_ms / 1000)
            try:
                await work()
            except (OSError, PeerError) as error:  # a disk error stops the node elsewhere; a peer's is passing
                log.warning("%s: %r", work.__name__, error)

    async def _persist(self) -> None:
        mark, meta = self.node.op_seq, self.node.accepted
        self._kick()
        await self._durable(mark, meta)

    # --- joining from an empty disk -----------------------------------------------------------

    async def join(self) -> None:
        """Learn the epoch and truncation ranges from a read quorum of peers, durably, then serve."""
        while True:
            replies = await self._statuses()
            decision = decide_join(replies, len(self.peers))
            if decision.done:
                break
            log.info("empty data directory: %d of %d peers answered, waiting for a read quorum that knows the volume",
                     len(replies), len(self.peers))
            await asyncio.sleep(GOSSIP_INTERVAL_MS / 1000)
        self.node.learn_from_peer(decision.epoch, decision.truncations, decision.writer)
        self.node.finish_joining()
        await self._persist()
        log.info("joined the volume at epoch %d with %d truncation ranges; segments are copied from peers now",
                 decision.epoch, len(decision.truncations))

    async def _statuses(self) -> dict[str, dict]:
        async def ask(peer: PeerLink):
            try:
                return peer.node_id, await peer.request({"t": sp.STATUS, "brief": True})
            except PeerError:
                return peer.node_id, None
        answers = await asyncio.gather(*(ask(peer) for peer in self.peers.values()))
        return {node_id: reply for node_id, reply in answers if reply is not None}

    # --- gossip (step 4) -----------------------------------------------------------------------

    async def gossip_once(self) -> None:
        replies = await self._statuses()
        learned = False
        for reply in replies.values():
            if not reply.get("rebuilding"):
                learned |= self.node.learn_from_peer(reply.get("epoch", 0), reply.get("truncations", []),
                                                     reply.get("writer"))
        if learned:
            await self._persist()
        now = {peer: views_from_status(reply) for peer, reply in replies.items() if not reply.get("rebuilding")}
        mine = {pg: SegmentView(s.scl, s.base_lsn, s.damaged is not None) for pg, s in self.node.segments.items()}
        pulls = plan_pulls(mine, now, self._peer_views, self._own_views)
        self._peer_views, self._own_views = now, mine
        for pull in pulls:
            try:
                await self.pull(pull)
            except PeerError as error:
                log.info("PG %d: pulling from %s: %s", pull.pg, pull.peer, error)

    async def pull(self, pull: Pull) -> None:
        peer = self.peers[pull.peer]
        if pull.image:
            await self.copy_image(pull.pg, peer)
        segment = self._segment(pull.pg)
        after = segment.scl
        while after < pull.upto_lsn:
            try:
                reply = await peer.request({"t": sp.READ_RECORDS, "peer": True, "pg": pull.pg, "after_lsn": after,
                                            "upto_lsn": pull.upto_lsn, "limit": GOSSIP_RECORDS_PER_REQUEST})
            except PeerError as error:
                if error.reply.get("error") == sp.ERROR_BELOW_HORIZON:  # collected there: copy its image
                    await self.copy_image(pull.pg, peer)
                    after = self._segment(pull.pg).scl
                    continue
                raise
            records = reply["records"]
            if not records:
                return
            try:
                for start in range(0, len(records), BATCH_RECORDS_MAX):
                    self.node.take_from_peer(pull.pg, records[start:start + BATCH_RECORDS_MAX])
                last_lsn = RecordEntry.from_sealed(*records[-1]).lsn
            except (ChecksumMismatch, BadRequest) as error:  # a damaged or malformed record: not ours to keep
                raise PeerError(f"peer {peer.node_id}: PG {pull.pg}: {error}") from None
            await self._persist()
            log.info("PG %d: took %d records in (%d, %d] from %s (SCL now %d)", pull.pg, len(records), after,
                     pull.upto_lsn, peer.node_id, self._segment(pull.pg).scl)
            after = last_lsn
            if not reply["more"]:
                return

    def _segment(self, pg: int) -> Segment:
        return self.node.segments.get(pg) or self.node.new_segment(pg)

    async def copy_image(self, pg: int, peer: PeerLink) -> None:
        """Copy a peer's page image of `pg` (rebuild, far behind, or a damaged image here)."""
        async with self.lock(pg):
            base_lsn, payloads, vdl_hint = 0, [], 0
            after_page_id = -1
            while True:
                reply = await peer.request({"t": sp.GET_IMAGE, "peer": True, "pg": pg, "base_lsn": base_lsn,
                                            "after_page_id": after_page_id})
                if base_lsn and reply["base_lsn"] != base_lsn:
                    raise PeerError(f"peer {peer.node_id}: image of PG {pg} moved during the copy")
                base_lsn, vdl_hint = reply["base_lsn"], reply["vdl_hint"]
                for crc, payload in reply["pages"]:
                    try:
                        payloads.append(PagePayload.verified(crc, payload))
                    except ChecksumMismatch:
                        raise PeerError(f"peer {peer.node_id}: a page of PG {pg} failed its checksum") from None
                if payloads:
                    after_page_id = payloads[-1].page_id
                if not reply["more"]:
                    break
            segment = self._segment(pg)
            if segment.damaged is None and base_lsn <= segment.base_lsn:
                return  # nothing newer than what this segment has
            image = await asyncio.to_thread(write_image, self.pages_dir, pg, base_lsn, vdl_hint, payloads)
            segment.install_image(image)
            self.node.stats["images_installed"] += 1
            if segment.damaged is None:
                log.info("PG %d: installed %s's page image at LSN %d (%d pages)", pg, peer.node_id, base_lsn,
                         len(payloads))
            else:
                log.error("PG %d: still damaged after the copy", pg)

    # --- coalescing and garbage collection (steps 5 and 7) --------------------------------------

    async def coalesce_once(self) -> None:
        """One round of steps 5 and 7: coalesce the segments worth it (plan_coalescing), copy the
        live records of old log files that are mostly garbage forward (files_to_empty), then
        remove the files nothing needs any more."""
        horizon = self.node.horizon()
        if horizon == 0:
            return
        plan = plan_coalescing(self.node.segments, horizon, held_bytes_max=HELD_BYTES_MAX)
        for pg in plan.coalesce:
            segment = self.node.segments[pg]
            new_base = segment.coalesce_point(horizon)
            if new_base is not None and segment.damaged is None:
                await self.coalesce(segment, new_base, plan.reasons[pg])
        bases = self._bases()
        weights = self.log.live_weights(bases, LOG_FILES_RETAINED)  # cached: walks only PGs whose base moved
        await self._copy_forward(files_to_empty(weights, self.node.segments, self.log.file_bytes_max // 2),
                                 weights, bases)
        removed = self.log.remove_covered(self._bases())
        if removed:
            self.node.stats["log_files_removed"] += len(removed)
            log.info("removed %d log files covered by page images or copied forward", len(removed))

    def _bases(self) -> dict[int, int]:
        return {pg: segment.base_lsn for pg, segment in self.node.segments.items()}

    async def _copy_forward(self, seqs: list[int], weights: dict[int, dict[int, int]], bases: dict[int, int]) -> None:
        """Write the live records of these files (oldest first; weights: LogFile.live_weights) into
        the current file; once that is durable, the files no longer need them. One round copies at
        most a file's worth: the copies are one write and one fsync of the persist loop, which
        holds requests back meanwhile; the next round takes the rest."""
        copied: list[tuple[int, int]] = []
        entries: list[RecordEntry] = []
        budget = self.log.file_bytes_max
        for seq in seqs:
            if budget <= 0:
                break
            for pg in weights[seq]:
                if not self.lock(pg).locked():
                    segment = self.node.segments[pg]
                    pg_entries = [entry for entry in map(segment.held, self.log.live_lsns(seq, pg, bases[pg]))
                                  if entry is not None]
                    copied.append((seq, pg))
                    entries += pg_entries
                    budget -= sum(len(entry.body) for entry in pg_entries)
        if not copied:
            return
        self.node.copy_forward(entries)
        await self._persist()
        for seq, pg in copied:
            self.log.release(seq, pg)
        log.info("copied %d records forward out of %d old log files", len(entries), len({seq for seq, _ in copied}))

    async def coalesce(self, segment: Segment, new_base: int, reason: str) -> bool:
        """Write the segment's image at `new_base` and drop the records it covers. False if the
        segment changed under it (a copy from a peer, damage): it is tried again next round."""
        async with self.lock(segment.pg):
            if new_base <= segment.base_lsn or segment.held(new_base) is None:
                return False  # a peer's image was installed while this waited for the lock
            image = segment.image
            changed = segment.pages_changed(new_base)
            fresh: dict[int, PagePayload] = {}
            for index, page_id in enumerate(changed):
                if segment.image is not image or segment.damaged is not None:
                    return False
                try:
                    page = segment.get_page(page_id, new_base)
                except (NotComplete, BelowHorizon):
                    return False
                assert page is not None, (segment.pg, page_id, new_base)
                fresh[page_id] = PagePayload.of_page(page)
                if index % COALESCE_PAGES_PER_TURN == COALESCE_PAGES_PER_TURN - 1:
                    await asyncio.sleep(0)  # requests go on between chunks
            vdl_hint = max(segment.vdl_hint, image.vdl_hint)
            try:
                new_image = await asyncio.to_thread(_write_merged, self.pages_dir, segment.pg, new_base, vdl_hint,
                                                    image, fresh)
            except ChecksumMismatch as error:  # a page of the old image went bad: repair it first
                segment.damaged = str(error)
                self.node.stats["damaged_found"] += 1
                log.error("PG %d: %s: the segment is copied from a peer", segment.pg, error)
                return False
            records = segment.records_to_coalesce(new_base)
            segment.rebase(new_image)
            self.node.stats["coalesced_records"] += records
            self.node.stats["images_written"] += 1
            log.info("PG %d: page image at LSN %d (%s: %d pages rewritten, %d records dropped)", segment.pg, new_base,
                     reason, len(fresh), records)
            return True

    # --- scrubbing (step 8) --------------------------------------------------------------------

    async def scrub_once(self) -> None:
        """One turn of the scrubber: verify the next files of the cycle (every log file, then every
        page image) until SCRUB_BYTES_PER_TURN were read, then repair what is damaged. A cycle
        that reaches its end counts as a pass (stats "scrub_passes"); the next turn starts a new
        one. Paced so that a node holding a big log does not spend its CPU re-reading it: files
        a cycle meets anew (written since it began) wait for the next cycle."""
        if not self._scrub_queue:
            self._scrub_queue = collections.deque(
                [("log", seq) for seq, _ in self.log.files_with_sizes()] + [("image", pg) for pg in self.node.segments])
        budget = SCRUB_BYTES_PER_TURN
        while self._scrub_queue and budget > 0:
            kind, key = self._scrub_queue.popleft()
            budget -= await (self._scrub_log(key) if kind == "log" else self._scrub_image(key))
        for pg, segment in list(self.node.segments.items()):
            if segment.damaged is not None:
                await self.repair_image(pg)
        if not self._scrub_queue:
            self.node.stats["scrub_passes"] += 1

    async def _scrub_log(self, seq: int) -> int:
        """Verify one log file as written so far (scrub_log_file); the bytes it read."""
        sizes = dict(self.log.files_with_sizes())
        if seq not in sizes:
            return 0  # removed meanwhile: covered by images or copied forward
        return await self.scrub_log_file(seq, sizes[seq])

    async def _scrub_image(self, pg: int) -> int:
        """Verify one segment's page image; the bytes it read."""
        segment = self.node.segments.get(pg)
        if segment is None:
            return 0
        async with self.lock(pg):
            if segment.damaged is not None or segment.image.page_count == 0:
                return 0
            damaged = await asyncio.to_thread(segment.image.verify_all)
            if damaged:
                segment.damaged = f"pages {damaged[:5]} of the image fail their checksums"
                self.node.stats["damaged_found"] += len(damaged)
                log.error("PG %d: scrub: %s: the segment is copied from a peer", pg, segment.damaged)
            return segment.image.file_bytes

    async def repair_image(self, pg: int) -> None:
        for peer in self.peers.values():
            try:
                await self.copy_image(pg, peer)
            except PeerError as error:
                log.info("PG %d: repair from %s: %s", pg, peer.node_id, error)
                continue
            segment = self.node.segments[pg]
            if segment.damaged is None:
                self.node.stats["damaged_repaired"] += 1
                log.info("PG %d: image repaired from %s", pg, peer.node_id)
                return

    async def scrub_log_file(self, seq: int, size: int | None) -> int:
        """Verify one log file (the current one up to `size`, what was written when asked); if
        entries fail, rewrite the file with good copies of the records still needed. Returns the
        bytes read."""
        path = self.log.path_of(seq)
        try:
            data = await asyncio.to_thread(path.read_bytes)
        except FileNotFoundError:
            return 0  # removed meanwhile: covered by images or copied forward
        if size is not None:
            data = data[:size]
        if not await asyncio.to_thread(damaged_entries, data):
            return len(data)
        report = ScanReport()
        entries, _ = await asyncio.to_thread(scan, data, is_last_file=False, name=str(path), report=report)
        if not report.bad_entries:
            return len(data)
        self.node.stats["damaged_found"] += report.bad_entries
        if seq == self.log.current_seq:
            self.log.seal_current()  # a file is rewritten only once nothing is appended to it
        found = {entry.lsn for entry in entries if isinstance(entry, RecordEntry)}
        repaired = list(entries)
        lost = 0
        for pg, lsns in self.log.contents[seq].lsns_by_pg.items():
            for lsn in lsns:
                if lsn in found:
                    continue
                copy = await self._good_copy(pg, lsn)
                if copy is not None:
                    repaired.append(copy)
                else:
                    lost += 1
        # Good copies go after every marker of the file: a record still needed is in no truncated range.
        self.node.stats["damaged_repaired"] += report.bad_entries
        if seq not in self.log.contents:
            log.error("%s: scrub found %d damaged entries; the file was removed meanwhile (covered by page "
                      "images or copied forward)", path.name, report.bad_entries)
            return len(data)
        self.log.rewrite(seq, repaired)
        log.error("%s: scrub found %d damaged entries: file rewritten with good copies (%d records no "
                  "segment needs any more left out)", path.name, report.bad_entries, lost)
        return len(data)

    async def _good_copy(self, pg: int, lsn: int) -> RecordEntry | None:
        """A verified copy of a record this node's log lost, if a segment still needs it: the one
        held in memory (checked against its checksum again), else a peer's."""
        segment = self.node.segments.get(pg)
        if segment is None or lsn <= segment.base_lsn or segment.in_truncated_range(lsn):
            return None
        held = segment.held(lsn)
        if held is not None and checksum(held.body) == held.crc:
            return held
        for peer in self.peers.values():
            with contextlib.suppress(PeerError, ChecksumMismatch):
                reply = await peer.request({"t": sp.READ_RECORDS, "peer": True, "pg": pg, "after_lsn": lsn - 1,
                                            "upto_lsn": lsn, "limit": 1})
                if reply["records"]:
                    entry = RecordEntry.from_sealed(*reply["records"][0])
                    if entry.lsn == lsn:
                        return entry
        return None


@dataclasses.dataclass(frozen=True, slots=True)
class CoalescePlan:
    coalesce: list[int]  # PGs to write a new image of, in this order
    reasons: dict[int, str]


def plan_coalescing(segments: dict[int, Segment], horizon: int, *, held_bytes_max: int) -> CoalescePlan:
    """Which segments write a new image this round. A new image rewrites the whole PG, so it is
    written only when it pays or memory demands it:
      - "worth": its records weigh at least 1/IMAGE_REWRITE_RATIO_MAX of its image (and are at
        least COALESCE_RECORDS_MIN), so image bytes written stay within the log's (worth_coalescing);
      - "memory": the node holds more than `held_bytes_max` of record bodies (then the PGs holding
        the most coalesce until it does not). This also bounds the log: a file is kept only while
        more than half of it is live (files_to_empty), so the log stays within twice the records
        held, plus the files retained.
    A segment coalesces only up to its coalesce point; damaged segments wait for their repair."""
    reasons: dict[int, str] = {}
    points = {pg: segment.coalesce_point(horizon) for pg, segment in segments.items() if segment.damaged is None}
    candidates = {pg: segments[pg] for pg, point in points.items() if point is not None}
    for pg, segment in candidates.items():
        if worth_coalescing(segment, points[pg]):
            reasons[pg] = "worth"
    held = sum(segment.held_bytes for pg, segment in segments.items() if pg not in reasons)
    for pg in sorted(candidates, key=lambda pg: candidates[pg].held_bytes, reverse=True):
        if held <= held_bytes_max:
            break
        if pg not in reasons:
            reasons[pg] = "memory"
            held -= candidates[pg].held_bytes
    return CoalescePlan(list(reasons), reasons)


def files_to_empty(weights: dict[int, dict[int, int]], segments: dict[int, Segment],
                   live_bytes_max: int) -> list[int]:
    """The old log files (weights: LogFile.live_weights, seq -> pg -> live bytes) whose live
    records weigh at most `live_bytes_max` (half a file), oldest first: their records are copied
    forward so that the file can go. Copying costs the records' bytes alone, but a file mostly
    live is kept rather than copied again and again; its records die when their PG coalesces. A
    file a damaged segment (or one this node no longer has) needs is left to the repair."""
    def repairing(pg: int) -> bool:
        segment = segments.get(pg)
        return segment is None or segment.damaged is not None

    needed_for_repair = {seq for seq, by_pg in weights.items() if any(map(repairing, by_pg))}
    return [seq for seq, by_pg in sorted(weights.items())
            if seq not in needed_for_repair and sum(by_pg.values()) <= live_bytes_max]


def worth_coalescing(segment: Segment, new_base: int) -> bool:
    """Enough records to coalesce: at least COALESCE_RECORDS_MIN, and record bytes of at least the
    image's (1/IMAGE_REWRITE_RATIO_MAX of it), since a new image rewrites all of it: the bytes
    written to images stay within the bytes of the log, and a page is materialized for a new image
    once for many records (pgbench: about 100 per accounts page, against 25 at a quarter)."""
    return (segment.records_to_coalesce(new_base) >= COALESCE_RECORDS_MIN
            and segment.held_bytes >= segment.image.file_bytes // IMAGE_REWRITE_RATIO_MAX)


def _write_merged(pages_dir: Path, pg: int, base_lsn: int, vdl_hint: int, old: PageImage,
                  fresh: dict[int, PagePayload]) -> PageImage:
    """The old image's pages (read and verified again) with `fresh` ones in place: a new image."""
    payloads = list(fresh.values())
    for page_id in old.page_ids:
        if page_id not in fresh:
            payloads.append(old.read(page_id))
    return write_image(pages_dir, pg, base_lsn, vdl_hint, payloads)
