"""The storage protocol: requests from compute nodes (and tools) to a storage node, over frames.

Every request is a map with "id" (an int the reply echoes; requests on one connection may be
pipelined and are answered in the order received), "t" (the request type) and, for every type
except "status", "epoch" (the sender's volume epoch).

Epoch rule (DESIGN.md 2): a request whose epoch is older than the node's stored epoch is refused
with error "stale_epoch"; a newer one raises the stored epoch durably (fsync) before anything else.

Requests and their successful replies ({"id", "ok": True, ...}):
  status                                   -> node_id, az, epoch, pgs: {pg: scl}
  set_epoch   epoch                        -> epoch, pgs: {pg: scl}      (durable before the reply)
  append      epoch, pg, records: [[crc, body], ...]
                                           -> pg, scl       (every record and the SCL durable)
  get_page    epoch, pg, page_id, lsn      -> page: pages.to_wire(page) or None
                                              error "not_complete" if the segment's SCL < lsn
  chain       epoch, pg, after_lsn         -> records: [[lsn, prev_volume, prev_pg, cpl], ...] for the
                                              segment's records with after_lsn < lsn <= scl,
                                              last_at_or_below: highest lsn <= after_lsn held (or 0)
  read_records epoch, pg, after_lsn, upto_lsn, limit
                                           -> records: [[crc, body], ...] with after < lsn <= upto,
                                              in LSN order, at most `limit`
  truncate    epoch, above_lsn             -> pgs: {pg: scl}  (every PG of the node drops records
                                              with lsn > above_lsn; recorded durably with the epoch)

Failed replies: {"id", "ok": False, "error": code, "message": text}. Codes: stale_epoch,
not_complete, bad_request, checksum (a received record did not match its checksum), internal.
"""

STATUS = "status"
SET_EPOCH = "set_epoch"
APPEND = "append"
GET_PAGE = "get_page"
CHAIN = "chain"
READ_RECORDS = "read_records"
TRUNCATE = "truncate"

ERROR_STALE_EPOCH = "stale_epoch"
ERROR_NOT_COMPLETE = "not_complete"
ERROR_BAD_REQUEST = "bad_request"
ERROR_CHECKSUM = "checksum"
ERROR_INTERNAL = "internal"


def ok(request_id, **fields) -> dict:
    return {"id": request_id, "ok": True, **fields}


def error(request_id, code: str, message: str) -> dict:
    return {"id": request_id, "ok": False, "error": code, "message": message}
