"""The storage protocol: requests from compute nodes (and tools) to a storage node, over frames.

Every request is a map with "id" (an int the reply echoes; requests on one connection may be
pipelined, at most IN_FLIGHT_REQUESTS_MAX outstanding; a client matches replies by id. The storage
node answers in the order received, but a client should not depend on it), "t" (the request type)
and, for every type except "status", "epoch" (the sender's volume epoch).

Epoch rule (DESIGN.md 2): a request whose epoch is older than the node's epoch is refused with
error "stale_epoch" ("request epoch 3 is older than volume epoch 4"); a newer one raises the
node's epoch at once (older requests are refused from then on) and durably (fsync) before any
reply to that request. A malformed request never raises the epoch. set_epoch is a claim: it is
refused with "epoch_claimed" unless its epoch is newer than every epoch the node accepted.

Requests and their successful replies ({"id", "ok": True, ...}):
  status                                   -> node_id, az, epoch, lsn_floor, pgs: {pg: scl}, vdl_hint,
                                              truncations, writer, stats
  set_epoch   epoch, [writer]              -> epoch, lsn_floor, pgs: {pg: scl}, vdl_hint, truncations,
                                              writer (durable before the reply)
                                              writer: "host:port" of the new epoch's writer (its admin
                                              port, where readers follow its redo stream), or None;
                                              kept with the epoch, forgotten when a newer epoch comes
                                              vdl_hint: the highest writer VDL named by a held record
                                              truncations: every [above_lsn, lsn_floor] range the node
                                              was told of (node-wide, durable)
  append      epoch, pg, records: [[crc, body], ...]  (at most BATCH_RECORDS_MAX, any order)
                                           -> pg, scl       (every record and the SCL durable)
                                              [pending_dropped: n] records that arrived ahead of a gap
                                              and did not fit the pending map: resend them later.
                                              Records already held, or inside a truncated range, are
                                              acknowledged without being stored again.
  append_many epoch, batches: [[pg, records], ...]  (each PG once; at most BATCH_RECORDS_MAX records
                                              in all): the appends of several PGs in one request, one
                                              reply and one fsync
                                           -> scls: [[pg, scl], ...], [pending_dropped: n] (as append;
                                              an error refuses the whole request)
  get_page    epoch, pg, page_id, lsn, [reader]
                                           -> page: pages.to_wire(page) or None (no record of the page
                                              at or below lsn); the page as of read point `lsn`.
                                              error "not_complete" if the segment's SCL < lsn. SCL is
                                              always a record LSN of this PG, so a reader asks at its
                                              PG read point: the PG's last record at or below VDL.
                                              reader: True marks a reader compute node's read: its
                                              epoch is neither checked nor raised (a read point at or
                                              below an old epoch's VDL stays valid under every later
                                              epoch: recovery truncates only above the new VDL, which
                                              is at least the old one).
  chain       epoch, pg, after_lsn         -> records: [[lsn, prev_volume, prev_pg, cpl], ...] for the
                                              segment's records with after_lsn < lsn <= scl,
                                              last_at_or_below: highest lsn <= after_lsn held (or 0),
                                              scl, more: True if CHAIN_RECORDS_MAX cut the list short
                                              (ask again after the last LSN returned)
  read_records epoch, pg, after_lsn, upto_lsn, limit
                                           -> records: [[crc, body], ...] with after < lsn <= upto and
                                              lsn <= scl, in LSN order, at most min(limit,
                                              READ_RECORDS_MAX) and READ_RECORDS_BYTES_MAX of bodies;
                                              scl, more: True if a limit cut the list short
  truncate    epoch, above_lsn, [lsn_floor], [range_epoch]
                                           -> pgs: {pg: scl}, epoch, lsn_floor
                                              Every PG of the node drops records with
                                              above_lsn < lsn <= lsn_floor, and keeps refusing records in
                                              that range if they arrive later (an older epoch's); records
                                              above lsn_floor (the new epoch's) are kept, so repeating a
                                              truncation is harmless. Without lsn_floor: every record
                                              above above_lsn is dropped, now only. A PG's SCL becomes
                                              min(SCL, its highest chain LSN <= above_lsn); the first new
                                              record of a PG must name that PG's last record at or below
                                              above_lsn as prev_pg. The range, the epoch and the highest
                                              lsn_floor are durable before the reply.
                                              range_epoch (default: epoch) is the epoch of the recovery
                                              that made the range. Ranges are kept and reported as
                                              [above_lsn, lsn_floor, range_epoch]; one that a newer
                                              epoch's range voids is dropped (aurora_db/truncation.py).

  read_point  client, lsn                  -> horizon
                                              A compute node's lowest read point (PGMRPL): a lease of
                                              READ_POINT_LEASE_MS, renewed every READ_POINT_RENEW_MS.
                                              No epoch: a stale node's lease only holds collection back.
                                              horizon: the LSN up to which this node may collect.
  get_image   pg, base_lsn, after_page_id, peer: True
                                           -> base_lsn, vdl_hint, page_count, epoch, more,
                                              pages: [[crc, payload], ...] (page_image.PagePayload)
                                              A peer copying this segment's page image, in chunks of
                                              about IMAGE_CHUNK_BYTES_MAX: first with base_lsn 0, then
                                              with the base the first reply named.
  "peer": True on read_records or get_image marks another storage node's read (gossip, rebuild):
  no epoch is checked or raised.
  status also answers segments: {pg: {scl, base, records, log_bytes, image_bytes, pages, damaged}},
  horizon, and rebuilding (the node started empty and is learning the volume from its peers).
  status with brief: True (a peer's gossip round, every second) answers only epoch, writer,
  rebuilding, pgs, truncations and segments: {pg: {scl, base, damaged}}: nothing that costs a
  pass over a segment's pages.

Failed replies: {"id", "ok": False, "error": code, "message": text}. Codes: stale_epoch,
not_complete, bad_request (malformed, or records that contradict the segment's chain), checksum
(a received record did not match its checksum: nothing of that append was stored), internal,
below_horizon (with base_lsn: a read point or records below the segment's page image, collected),
image_changed (with base_lsn), joining (an emptied node still learning the volume from its peers).
Bytes that are not a frame, or a frame over FRAME_BYTES_MAX, close that connection only.
"""

STATUS = "status"
SET_EPOCH = "set_epoch"
APPEND = "append"
APPEND_MANY = "append_many"
GET_PAGE = "get_page"
CHAIN = "chain"
READ_RECORDS = "read_records"
TRUNCATE = "truncate"
READ_POINT = "read_point"
GET_IMAGE = "get_image"

ERROR_STALE_EPOCH = "stale_epoch"
ERROR_EPOCH_CLAIMED = "epoch_claimed"  # set_epoch for an epoch the node already accepted
ERROR_NOT_COMPLETE = "not_complete"
ERROR_BAD_REQUEST = "bad_request"
ERROR_CHECKSUM = "checksum"
ERROR_INTERNAL = "internal"
ERROR_BELOW_HORIZON = "below_horizon"  # the versions or records asked for were garbage-collected
ERROR_IMAGE_CHANGED = "image_changed"  # a rebuilding peer's image copy must start again
ERROR_JOINING = "joining"  # an emptied node has not yet learned the volume from its peers


def ok(request_id, **fields) -> dict:
    return {"id": request_id, "ok": True, **fields}


def error(request_id, code: str, message: str, **fields) -> dict:
    return {"id": request_id, "ok": False, "error": code, "message": message, **fields}
