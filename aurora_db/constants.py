"""Every limit and quorum constant of the system, named with its unit last.

Invariants are asserted where the constants are defined, so a bad edit fails at import time.
Aurora SIGMOD 2017, 2.1: V = 6 copies, two per AZ in three AZs; Vw = 4, Vr = 3.
"""

SEGMENTS_PER_PG = 6
AZS = ("a", "b", "c")
SEGMENTS_PER_AZ = 2
WRITE_QUORUM = 4
READ_QUORUM = 3
assert SEGMENTS_PER_AZ * len(AZS) == SEGMENTS_PER_PG
assert WRITE_QUORUM + READ_QUORUM > SEGMENTS_PER_PG  # a read quorum always meets the last write
assert 2 * WRITE_QUORUM > SEGMENTS_PER_PG  # two write quorums always overlap
assert SEGMENTS_PER_PG - SEGMENTS_PER_AZ >= WRITE_QUORUM  # lose an AZ: writes go on
assert SEGMENTS_PER_PG - SEGMENTS_PER_AZ - 1 >= READ_QUORUM  # lose an AZ + 1: reads go on

# Storage protocol framing: a 4-byte big-endian length, then one msgpack map.
FRAME_BYTES_MAX = 16 * 1024 * 1024
FRAME_HEADER_BYTES = 4

# Pages and protection groups.
PAGE_BYTES_MAX = 8192  # a page's estimated encoded size never exceeds this
PAGES_PER_PG = 4096  # a PG holds a fixed, bounded page range: page_id // PAGES_PER_PG
PAGE_ID_MAX = 2**40

# Log sequence numbers count records: every redo record takes the next integer.
LSN_ALLOCATION_LIMIT = 50_000  # LAL: the writer never allocates beyond VDL + LAL
BATCH_RECORDS_MAX = 512  # records in one append request
PENDING_RECORDS_MAX = 100_000  # records a segment holds that arrived ahead of a gap
RECENT_RECORDS_PER_PG_MAX = 50_000  # records the writer keeps to resend to a segment behind
IN_FLIGHT_REQUESTS_MAX = 1024  # requests a connection may have outstanding

# Compute node.
CACHE_PAGES_DEFAULT = 4096
CACHE_PAGES_MIN = 16
STATEMENT_ROWS_MAX = 10_000_000

# Timeouts.
STORAGE_REQUEST_TIMEOUT_MS = 2_000
COMMIT_TIMEOUT_MS = 30_000  # a commit that gets no write quorum in this time fails
RECOVERY_TIMEOUT_MS = 60_000
RECONNECT_INTERVAL_MS = 200
