"""Every limit and quorum constant of the system, named with its unit last.

Invariants are asserted where the constants are defined, so a bad edit fails at import time.
Aurora SIGMOD 2017, 2.1: V = 6 copies, two per AZ in three AZs; Vw = 4, Vr = 3.
A few limits may be overridden from the environment (named below, read once at import): each
must be a positive integer, or the process stops at import with a message naming the variable.
"""

import os


def _positive_int_from_env(name: str, default: int) -> int:
    """The integer in environment variable `name`, or `default` when it is unset or empty."""
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"environment variable {name}={text!r} is not an integer") from None
    if value <= 0:
        raise ValueError(f"environment variable {name}={value} must be positive")
    return value


# The PostgreSQL version the server reports (server_version, SHOW, version()).
SERVER_VERSION = "15.0"

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
FRAME_READ_CHUNK_BYTES = 256 * 1024  # bytes a storage connection asks of its socket per read, whole frames or not

# Compute node.
CACHE_PAGES_DEFAULT = 4096
CACHE_PAGES_MIN = 16
STATEMENT_ROWS_MAX = 10_000_000
# A restartable engine call (a query, a row change, a commit) first runs on the event loop, with
# no thread hand-off; one that would wait for storage, or outgrows either limit, is given up
# (its changes undone) and runs again on the engine thread, so the loop is never held long.
ENGINE_INLINE_BUDGET_MS = 5
ENGINE_INLINE_RECORDS_MAX = _positive_int_from_env("AURORA_DB_ENGINE_INLINE_RECORDS_MAX", 1024)
ENGINE_INLINE_MISSES_MAX = 8  # page misses of one inline call, each read outside the engine's turn

# Timeouts.
STORAGE_REQUEST_TIMEOUT_MS = 2_000
# A commit that gets no write quorum in this time fails (QuorumTimeout, outcome unknown); also how
# long a statement waits for LSN room or for VDL to advance. Override: AURORA_DB_COMMIT_TIMEOUT_MS
# (the fault tests set a few seconds so a lost quorum is reported quickly).
COMMIT_TIMEOUT_MS = _positive_int_from_env("AURORA_DB_COMMIT_TIMEOUT_MS", 30_000)
RECOVERY_TIMEOUT_MS = 60_000
RECONNECT_INTERVAL_MS = 200

# PostgreSQL protocol.
PGWIRE_STARTUP_BYTES_MAX = 10_000  # a startup packet; PostgreSQL's own limit
PGWIRE_MESSAGE_BYTES_MAX = 64 * 1024 * 1024  # one typed frontend message, length field included
PGWIRE_READ_CHUNK_BYTES = 64 * 1024  # bytes asked of the socket per read
PGWIRE_OUTPUT_BUFFER_BYTES_MAX = 1024 * 1024  # buffered replies written early once over this
PGWIRE_CONNECTIONS_MAX = 100  # PostgreSQL's default max_connections
PGWIRE_PREPARED_STATEMENTS_MAX = 10_000  # named prepared statements per connection
PGWIRE_PORTALS_MAX = 10_000  # open portals per connection
PGWIRE_STARTUP_TIMEOUT_MS = 60_000  # from connect to StartupMessage; PostgreSQL's authentication_timeout
PGWIRE_CLOSE_TIMEOUT_MS = 5_000  # to flush the last replies to a closing connection before dropping it
assert PGWIRE_STARTUP_BYTES_MAX <= PGWIRE_MESSAGE_BYTES_MAX
assert PGWIRE_READ_CHUNK_BYTES <= PGWIRE_OUTPUT_BUFFER_BYTES_MAX

# Writer -> storage shipping.
# Longest a finished MTR waits to be shipped when no commit (or cache eviction) needs it sooner. A
# commit ships at once, taking every MTR made before it: a longer wait only lets a transaction's
# statements ride with its commit (pgbench: 1.06 -> 0.85 ships per transaction at 2 -> 10 ms).
BOXCAR_DELAY_MS = 10
BOXCAR_RECORDS_MAX = BATCH_RECORDS_MAX  # records waiting to be shipped that make the writer ship at once
APPENDS_IN_FLIGHT_MAX = 2  # unanswered appends to one storage node: one in its fsync, one next; the rest
# waits in the queue and rides in the following request (fewer requests than 64 in flight: +20-30% pgbench TPS)
STREAM_HEARTBEAT_MS = 250  # a writer sends its state to readers at least this often
FOLLOW_IDLE_CHECK_MS = 1_000  # a reader that hears nothing this long asks storage whether a newer writer exists
assert FOLLOW_IDLE_CHECK_MS > 2 * STREAM_HEARTBEAT_MS
STORAGE_STATUS_TIMEOUT_MS = 500  # asking every storage node which epoch and writer it knows, at once
STARTUP_PROBE_MS = 2_000  # a node started as writer looks this long for a live writer already serving
ROLE_CHANGE_GRACE_MS = 100  # a fenced writer lets sessions report their own errors before it ends them
READER_FEEDBACK_INTERVAL_MS = 250  # a reader reports its oldest snapshot's xmin to its writer at most this often
FOLLOWER_UNACKED_SNAPSHOTS_MAX = 100_000  # snapshots sent to a reader that it has not acknowledged, at most
FOLLOWERS_MAX = 16  # readers following one writer's redo stream (Aurora: up to 15 replicas)
FOLLOWER_BUFFER_BYTES_MAX = 64 * 1024 * 1024  # unsent redo for one reader before it is disconnected
REPLICA_PENDING_RECORDS_MAX = 2 * LSN_ALLOCATION_LIMIT  # records a reader holds above the VDL it applied
SEND_QUEUE_RECORDS_MAX = 2 * LSN_ALLOCATION_LIMIT  # records queued for one node before it is "behind"
# A node whose acks decide the write quorum never owes more than LAL records (allocation stops at
# VDL + LAL), so only a node outside the quorum, falling ever further behind, is disconnected.
assert SEND_QUEUE_RECORDS_MAX > LSN_ALLOCATION_LIMIT
assert 4 * ENGINE_INLINE_RECORDS_MAX < LSN_ALLOCATION_LIMIT  # an inline call and its undo fit in LAL
CATCH_UP_RECORDS_PER_REQUEST = BATCH_RECORDS_MAX  # records resent to a segment behind, per append
assert CATCH_UP_RECORDS_PER_REQUEST <= BATCH_RECORDS_MAX  # a catch-up append is refused over the batch limit
assert RECENT_RECORDS_PER_PG_MAX >= LSN_ALLOCATION_LIMIT  # every record not yet durable can be resent

# Storage node.
# A node's log file is closed and a new one started past this size: files are what garbage collection
# removes, so a node's log stays within about twice HELD_BYTES_MAX plus (LOG_FILES_RETAINED + 1) of
# them. Override: AURORA_DB_LOG_FILE_BYTES_MAX (tests use small files to see them collected and scrubbed).
LOG_FILE_BYTES_MAX = _positive_int_from_env("AURORA_DB_LOG_FILE_BYTES_MAX", 16 * 1024 * 1024)
LOG_ENTRY_BYTES_MAX = FRAME_BYTES_MAX  # one log entry's payload: a record never exceeds a frame
SEGMENT_CACHE_PAGES_MAX = 1024  # materialized latest page versions one segment keeps (LRU)
CHAIN_RECORDS_MAX = 200_000  # entries in one `chain` reply; the rest is asked for with "more"
CHAIN_ENTRY_BYTES_MAX = 32  # msgpack of [lsn, prev_volume, prev_pg, cpl]: three 9-byte ints and a bool
READ_RECORDS_MAX = 4096  # records in one `read_records` reply, whatever the caller's limit
READ_RECORDS_BYTES_MAX = FRAME_BYTES_MAX // 2  # record bodies in one `read_records` reply
WRITER_ADDRESS_BYTES_MAX = 256  # the "host:port" a writer names in set_epoch
STORAGE_CONNECTIONS_MAX = 256  # open connections to one storage node; more are closed at once
# Storage healing (DESIGN.md 7): leases on read points, coalescing, gossip, scrubbing.
READ_POINT_LEASE_MS = 10_000  # a compute node's reported read point holds collection back this long
READ_POINT_RENEW_MS = 1_000  # how often a compute node reports its read point to every storage node
READ_POINT_CLIENTS_MAX = 64  # leases one storage node keeps (compute nodes, and their restarts)
assert READ_POINT_LEASE_MS >= 5 * READ_POINT_RENEW_MS  # a few lost reports never expire a live lease
COALESCE_INTERVAL_MS = 500  # how often a storage node looks for segments to coalesce
# Records above a segment's base that make it write a new image (storage_node/healer.py,
# plan_coalescing, says when else it does). Override: AURORA_DB_COALESCE_RECORDS_MIN.
COALESCE_RECORDS_MIN = _positive_int_from_env("AURORA_DB_COALESCE_RECORDS_MIN", 20_000)
IMAGE_REWRITE_RATIO_MAX = 1  # ... and record bytes of at least 1/this of the image it rewrites
COALESCE_PAGES_PER_TURN = 64  # pages materialized per event-loop turn while coalescing
# Log files kept whatever they hold; records in older ones are coalesced or copied forward.
LOG_FILES_RETAINED = 2
# Record bodies a storage node holds above its images, all segments together: past it, the largest
# holders coalesce (so the log, memory and a restart's replay stay bounded). Override:
# AURORA_DB_HELD_BYTES_MAX.
HELD_BYTES_MAX = _positive_int_from_env("AURORA_DB_HELD_BYTES_MAX", 64 * 1024 * 1024)
IMAGE_CHUNK_BYTES_MAX = FRAME_BYTES_MAX // 4  # page payloads in one get_image reply
GOSSIP_INTERVAL_MS = 1_000  # how often a storage node compares its segments with its peers'
GOSSIP_RECORDS_PER_REQUEST = READ_RECORDS_MAX  # records pulled from a peer per request
PEER_REQUEST_TIMEOUT_MS = 5_000
# Pause between the scrubber's turns; each turn checks the CRCs of the next files of its cycle
# over the node's log files and page images, until it has read SCRUB_BYTES_PER_TURN (checking is
# cheap, but not free on a node that shares two CPUs: re-reading a whole log of 150 MB every turn
# took a fifth of a busy node's CPU). Override: AURORA_DB_SCRUB_INTERVAL_MS.
SCRUB_INTERVAL_MS = _positive_int_from_env("AURORA_DB_SCRUB_INTERVAL_MS", 30_000)
SCRUB_BYTES_PER_TURN = 32 * 1024 * 1024
REPLACE_STORAGE_TIMEOUT_MS = 600_000  # a new storage node has this long to copy its segments from peers
assert CHAIN_RECORDS_MAX * CHAIN_ENTRY_BYTES_MAX < FRAME_BYTES_MAX  # a full chain reply fits a frame
assert READ_RECORDS_BYTES_MAX + READ_RECORDS_MAX * 16 < FRAME_BYTES_MAX  # bodies plus [crc, ...] framing
assert BATCH_RECORDS_MAX <= PENDING_RECORDS_MAX  # one append never overflows an empty pending map by itself
