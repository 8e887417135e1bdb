"""The sans-I/O node: persist before ack, the epoch rule, truncation markers, replay (no sockets, no disk);
read point leases and the horizon (PGMRPL), joining from peers, and page images served to peers."""

import dataclasses

import pytest

from aurora_db import pages
from aurora_db import storage_protocol as sp
from aurora_db.constants import (
    BATCH_RECORDS_MAX,
    PAGES_PER_PG,
    READ_POINT_CLIENTS_MAX,
    READ_POINT_LEASE_MS,
    READ_POINT_RENEW_MS,
)
from aurora_db.records import ChecksumMismatch
from storage_node import node as node_module
from storage_node.log_file import RecordEntry, TruncateEntry
from storage_node.node import BadRequest, Node, NodeMeta, entries_by_pg, replay_segment
from storage_node.page_image import PagePayload, write_image
from storage_node.segment import Segment
from tests.record_builder import RecordBuilder


def sealed(records):
    return [list(r.sealed()) for r in records]


def persist_and_advance(node, disk: list):
    """A perfect disk: the node's log, appended with what each Ready writes, in order."""
    ready = node.ready()
    disk.extend(ready.log_entries)
    return ready, dict(node.advance(ready))


def test_an_append_is_acked_only_after_advance():
    """DESIGN.md 10: persist before ack. The SCL does not move until the records are durable."""
    node, disk = Node("a1", "a", NodeMeta(epoch=1), {}), []
    builder = RecordBuilder()
    records = [builder.heap_init(0), builder.heap_insert(0, ["x"])]
    assert node.step({"id": 1, "t": sp.APPEND, "epoch": 1, "pg": 0, "records": sealed(records)}, "token-1") is None
    assert node.step({"id": 2, "t": sp.STATUS}, "token-2")["pgs"] == {}
    ready, replies = persist_and_advance(node, disk)
    assert [e.lsn for e in ready.log_entries] == [1, 2]
    assert replies == {"token-1": {"id": 1, "ok": True, "pg": 0, "scl": 2}}
    resend = node.step({"id": 3, "t": sp.APPEND, "epoch": 1, "pg": 0, "records": sealed(records)}, "token-3")
    assert resend == {"id": 3, "ok": True, "pg": 0, "scl": 2}  # already durable: answered at once
    assert not node.has_ready()


def test_a_newer_epoch_is_durable_before_anything_of_its_request():
    node, disk = Node("a1", "a", NodeMeta(epoch=3), {}), []
    reply = node.step({"id": 1, "t": sp.GET_PAGE, "epoch": 4, "pg": 0, "page_id": 1, "lsn": 0}, "t1")
    assert reply is None  # waits for the epoch to be durable
    stale = node.step({"id": 2, "t": sp.CHAIN, "epoch": 3, "pg": 0, "after_lsn": 0}, "t2")
    assert stale["error"] == sp.ERROR_STALE_EPOCH and stale["message"] == "request epoch 3 is older than volume epoch 4"
    ready, replies = persist_and_advance(node, disk)
    assert ready.meta == NodeMeta(epoch=4)
    assert replies == {"t1": {"id": 1, "ok": True, "page": None}} and node.meta.epoch == 4


def test_bad_requests_do_not_raise_the_epoch():
    node = Node("a1", "a", NodeMeta(epoch=1), {})
    reply = node.step({"id": 1, "t": sp.APPEND, "epoch": 9, "pg": 0, "records": [[1, b"\x00"]]}, "t")
    assert reply["error"] == sp.ERROR_CHECKSUM
    reply = node.step({"id": 2, "t": sp.GET_PAGE, "epoch": 9, "pg": 1, "page_id": 3, "lsn": 0}, "t")
    assert reply["error"] == sp.ERROR_BAD_REQUEST
    assert not node.has_ready() and node.accepted.epoch == 1


def test_truncate_writes_a_marker_to_every_pg_and_replay_matches():
    node, disk = Node("a1", "a", NodeMeta(epoch=1), {}), []
    builder = RecordBuilder()
    records = [builder.heap_init(0), builder.heap_init(PAGES_PER_PG)]
    records += [builder.heap_insert(0 if i % 2 else PAGES_PER_PG, [i]) for i in range(10)]
    for pg in (0, 1):
        node.step({"id": pg, "t": sp.APPEND, "epoch": 1, "pg": pg, "records": sealed([r for r in records if r.pg == pg])}, pg)
    node.step({"id": 9, "t": sp.TRUNCATE, "epoch": 2, "above_lsn": 6, "lsn_floor": 1006}, "truncate")
    ready, replies = persist_and_advance(node, disk)  # appends and the truncation in one group
    assert ready.meta == NodeMeta(epoch=2, lsn_floor=1006, truncations=((6, 1006, 2),))
    assert disk[-1] == TruncateEntry(6, 2, 1006)  # one marker for the whole node
    by_pg = entries_by_pg(disk)
    assert all(entries[-1] == TruncateEntry(6, 2, 1006) for entries in by_pg.values())
    assert replies["truncate"]["pgs"] == {0: 6, 1: 5}
    for pg, entries in by_pg.items():
        assert replay_segment(pg, entries).scl == node.segments[pg].scl
    late = node.step({"id": 10, "t": sp.APPEND, "epoch": 2, "pg": 0, "records": sealed(records[7:8])}, "late")
    assert records[7].pg == 0 and late == {"id": 10, "ok": True, "pg": 0, "scl": 6}  # inside the truncated range: discarded
    assert isinstance(entries_by_pg(disk)[0][0], RecordEntry)


def test_set_epoch_is_a_claim_only_one_writer_wins():
    """Two writers recovering at once with the same new epoch: the node accepts only the first."""
    node = Node("a1", "a", NodeMeta(epoch=3), {})
    assert node.step({"id": 1, "t": sp.SET_EPOCH, "epoch": 4}, "first") is None
    refused = node.step({"id": 2, "t": sp.SET_EPOCH, "epoch": 4}, "second")
    assert refused["error"] == sp.ERROR_EPOCH_CLAIMED and "already claimed" in refused["message"]


def test_truncation_ranges_are_node_wide_idempotent_and_reach_later_pgs():
    node, disk = Node("a1", "a", NodeMeta(epoch=1), {}), []
    builder = RecordBuilder()
    node.step({"id": 1, "t": sp.APPEND, "epoch": 1, "pg": 0, "records": sealed([builder.heap_init(0)])}, "a")
    node.step({"id": 2, "t": sp.TRUNCATE, "epoch": 2, "above_lsn": 1, "lsn_floor": 100}, "t")
    persist_and_advance(node, disk)
    again = node.step({"id": 3, "t": sp.TRUNCATE, "epoch": 2, "above_lsn": 1, "lsn_floor": 100}, "t2")
    assert again["ok"] and again["truncations"] == [[1, 100, 2]], "a known range is answered at once"
    assert not node.has_ready(), "and writes nothing"
    # A PG this node first hears of now still refuses an old epoch's record inside the range.
    stale = RecordBuilder(first_lsn=50, last_lsn=49).heap_init(PAGES_PER_PG)
    node.step({"id": 4, "t": sp.APPEND, "epoch": 2, "pg": 1, "records": sealed([stale])}, "s")
    _, replies = persist_and_advance(node, disk)
    assert replies["s"]["scl"] == 0 and node.segments[1].scl == 0
    status = node.step({"id": 5, "t": sp.STATUS}, "st")
    assert status["truncations"] == [[1, 100, 2]]


def test_append_many_makes_several_pgs_durable_with_one_reply():
    node, disk = Node("a1", "a", NodeMeta(epoch=1), {}), []
    builder = RecordBuilder()
    records = [builder.heap_init(0), builder.heap_init(PAGES_PER_PG), builder.heap_insert(0, ["x"])]
    batches = [[0, sealed([r for r in records if r.pg == 0])], [1, sealed([r for r in records if r.pg == 1])]]
    request = {"id": 1, "t": sp.APPEND_MANY, "epoch": 1, "batches": batches}
    assert node.step(request, "many") is None
    ready, replies = persist_and_advance(node, disk)
    assert len(ready.log_entries) == 3
    assert replies == {"many": {"id": 1, "ok": True, "scls": [[0, 3], [1, 2]]}}
    assert node.step({**request, "id": 2}, "again") == {"id": 2, "ok": True, "scls": [[0, 3], [1, 2]]}


@pytest.mark.parametrize("batches, message", [
    ([], "non-empty list"),
    ([[0, []]], "non-empty list"),
    ([[0, "x"], [0, "y"]], "twice"),
])
def test_a_malformed_append_many_is_refused_whole(batches, message):
    node = Node("a1", "a", NodeMeta(epoch=1), {})
    reply = node.step({"id": 1, "t": sp.APPEND_MANY, "epoch": 1, "batches": batches}, "token")
    assert reply["ok"] is False and reply["error"] == sp.ERROR_BAD_REQUEST and message in reply["message"]
    assert not node.has_ready()


def test_append_many_over_the_batch_limit_is_refused():
    node = Node("a1", "a", NodeMeta(epoch=1), {})
    builder = RecordBuilder()
    records = sealed([builder.heap_init(0)] + [builder.heap_insert(0, [i]) for i in range(BATCH_RECORDS_MAX)])
    reply = node.step({"id": 1, "t": sp.APPEND_MANY, "epoch": 1, "batches": [[0, records]]}, "token")
    assert reply["error"] == sp.ERROR_BAD_REQUEST and "exceed" in reply["message"]


def test_set_epoch_names_the_epochs_writer_and_a_newer_epoch_forgets_it():
    """Readers find the writer to follow from storage: the writer of the newest epoch."""
    node, disk = Node("a1", "a", NodeMeta(epoch=1), {}), []
    assert node.step({"id": 1, "t": sp.SET_EPOCH, "epoch": 2, "writer": "127.0.0.1:7020"}, "t1") is None
    assert node.step({"id": 2, "t": sp.STATUS}, "t2")["writer"] is None  # not durable yet
    ready, replies = persist_and_advance(node, disk)
    assert ready.meta == NodeMeta(epoch=2, writer="127.0.0.1:7020")
    assert replies["t1"]["writer"] == "127.0.0.1:7020"
    assert node.step({"id": 3, "t": sp.STATUS}, "t3")["writer"] == "127.0.0.1:7020"
    node.step({"id": 4, "t": sp.GET_PAGE, "epoch": 3, "pg": 0, "page_id": 1, "lsn": 0}, "t4")
    persist_and_advance(node, disk)
    assert node.meta == NodeMeta(epoch=3, writer=None)  # epoch 3's writer has not named itself
    bad = node.step({"id": 5, "t": sp.SET_EPOCH, "epoch": 4, "writer": 7020}, "t5")
    assert bad["error"] == sp.ERROR_BAD_REQUEST and node.accepted.epoch == 3


def test_a_readers_page_read_neither_checks_nor_raises_the_epoch():
    """A read point at or below an old epoch's VDL stays valid under every later epoch."""
    node, disk = Node("a1", "a", NodeMeta(epoch=5), {}), []
    builder = RecordBuilder()
    node.step({"id": 1, "t": sp.APPEND, "epoch": 5, "pg": 0, "records": sealed([builder.heap_init(1)])}, "t1")
    persist_and_advance(node, disk)
    for epoch in (4, 9):
        reply = node.step({"id": 2, "t": sp.GET_PAGE, "epoch": epoch, "pg": 0, "page_id": 1, "lsn": 1,
                           "reader": True}, "t2")
        assert reply["ok"] and reply["page"] is not None
    assert node.step({"id": 3, "t": sp.GET_PAGE, "epoch": 4, "pg": 0, "page_id": 1, "lsn": 1}, "t3")["error"] == \
        sp.ERROR_STALE_EPOCH
    assert not node.has_ready() and node.accepted.epoch == 5


# --- read points and the horizon (PGMRPL) ----------------------------------------------------


class FakeClock:
    def __init__(self, now_ms: float = 5_000.0):
        self.now_ms = now_ms

    def __call__(self) -> float:
        return self.now_ms


def node_with_vdl_hint(vdl_hint: int, clock, **kwargs) -> Node:
    """A node holding PG 0's records 1..vdl_hint+2, the last naming VDL `vdl_hint`."""
    node = Node("a1", "a", NodeMeta(epoch=1), {}, clock_ms=clock, **kwargs)
    builder = RecordBuilder()
    records = [builder.heap_init(0)] + [builder.heap_insert(0, [i]) for i in range(vdl_hint + 1)]
    records = [dataclasses.replace(r, vdl=min(r.lsn - 1, vdl_hint)) for r in records]
    node.segments[0] = Segment(0)
    node.segments[0].add([RecordEntry.from_sealed(*r.sealed()) for r in records])
    assert node.vdl_hint() == vdl_hint
    return node


def read_point(node, client: str, lsn: int) -> dict:
    return node.step({"id": 1, "t": sp.READ_POINT, "client": client, "lsn": lsn}, None)


def test_the_horizon_is_zero_for_one_lease_period_after_start():
    """Leases are not durable: a restarted node must hear every live reader's read point first."""
    clock = FakeClock()
    node = node_with_vdl_hint(20, clock)
    assert read_point(node, "writer", 12) == {"id": 1, "ok": True, "horizon": 0}
    clock.now_ms += READ_POINT_LEASE_MS - 1
    assert node.horizon() == 0
    clock.now_ms += 1
    assert node.horizon() == 12
    assert read_point(node, "writer", 15)["horizon"] == 15, "a renewal replaces the client's read point"


def test_the_horizon_is_the_lowest_live_lease_never_above_the_vdl_hint():
    clock = FakeClock()
    node = node_with_vdl_hint(20, clock)
    clock.now_ms += READ_POINT_LEASE_MS
    assert node.horizon() == 20, "no reader: only the known durable point bounds collection"
    read_point(node, "writer", 30)
    assert node.horizon() == 20
    read_point(node, "replica-1", 14)
    read_point(node, "replica-2", 17)
    assert node.horizon() == 14


def test_a_stale_clients_expired_lease_no_longer_holds_the_horizon():
    clock = FakeClock()
    node = node_with_vdl_hint(20, clock)
    clock.now_ms += READ_POINT_LEASE_MS
    read_point(node, "gone", 3)
    read_point(node, "live", 18)
    assert node.horizon() == 3
    for _ in range(10):
        clock.now_ms += READ_POINT_RENEW_MS
        read_point(node, "live", 18)
    assert node.horizon() == 3, "a lease lives READ_POINT_LEASE_MS"
    clock.now_ms += 1
    assert node.horizon() == 18


def test_more_read_point_clients_than_the_limit_are_refused():
    clock = FakeClock()
    node = node_with_vdl_hint(20, clock)
    for i in range(READ_POINT_CLIENTS_MAX):
        assert read_point(node, f"c{i}", 10)["ok"]
    refused = read_point(node, "one-too-many", 10)
    assert refused["ok"] is False and refused["error"] == sp.ERROR_BAD_REQUEST
    assert read_point(node, "c0", 11)["ok"], "a known client renews"
    clock.now_ms += READ_POINT_LEASE_MS + 1
    assert read_point(node, "one-too-many", 10)["ok"], "expired leases make room"


@pytest.mark.parametrize("request_", [{"client": "", "lsn": 1}, {"client": 7, "lsn": 1}, {"client": "c", "lsn": -1},
                                      {"lsn": 1}])
def test_a_malformed_read_point_is_refused(request_):
    node = Node("a1", "a", NodeMeta(epoch=1), {})
    assert node.step({"id": 1, "t": sp.READ_POINT, **request_}, None)["error"] == sp.ERROR_BAD_REQUEST


# --- a node that started empty: joining ------------------------------------------------------


def test_a_joining_node_answers_only_status_read_points_and_peers():
    clock = FakeClock()
    node = node_with_vdl_hint(5, clock, joining=True)
    builder = RecordBuilder(first_lsn=100, last_lsn=7, pg_tails={0: 7})
    for request in ({"t": sp.APPEND, "epoch": 1, "pg": 0, "records": sealed([builder.heap_init(1)])},
                    {"t": sp.GET_PAGE, "epoch": 1, "pg": 0, "page_id": 0, "lsn": 3},
                    {"t": sp.GET_PAGE, "epoch": 1, "pg": 0, "page_id": 0, "lsn": 3, "reader": True},
                    {"t": sp.SET_EPOCH, "epoch": 2},
                    {"t": sp.TRUNCATE, "epoch": 2, "above_lsn": 3, "lsn_floor": 100},
                    {"t": sp.CHAIN, "epoch": 1, "pg": 0, "after_lsn": 0}):
        reply = node.step({"id": 1, **request}, "t")
        assert reply["ok"] is False and reply["error"] == sp.ERROR_JOINING, request["t"]
    status = node.step({"id": 2, "t": sp.STATUS}, "t")
    assert status["ok"] and status["rebuilding"] is True and status["horizon"] == 0
    peer_read = node.step({"id": 3, "t": sp.READ_RECORDS, "peer": True, "pg": 0, "after_lsn": 0, "upto_lsn": 3,
                           "limit": 10}, "t")
    assert peer_read["ok"] and len(peer_read["records"]) == 3
    image = node.step({"id": 4, "t": sp.GET_IMAGE, "peer": True, "pg": 0, "base_lsn": 0, "after_page_id": 0}, "t")
    assert image["ok"] and image["pages"] == []
    assert read_point(node, "writer", 4)["ok"]
    clock.now_ms += 2 * READ_POINT_LEASE_MS
    assert node.horizon() == 0, "a joining node collects nothing"
    assert not node.has_ready(), "nothing is written while joining: not even the metadata"


def test_a_joining_nodes_metadata_is_written_once_it_joins():
    """The metadata file marks a member's data directory: written only after the node learned the
    volume, so a crash while joining leaves a node that joins again."""
    node, disk = Node("a1", "a", NodeMeta(), {}, joining=True), []
    node.learn_from_peer(4, [(10, 1010, 4)], "w:1")
    node.finish_joining()
    ready, _ = persist_and_advance(node, disk)
    assert ready.meta == NodeMeta(epoch=4, lsn_floor=1010, truncations=((10, 1010, 4),), writer="w:1")
    assert disk == [TruncateEntry(10, 4, 1010)]
    assert not node.has_ready()
    assert node.step({"id": 1, "t": sp.STATUS}, "t")["rebuilding"] is False

    empty_volume = Node("a2", "a", NodeMeta(), {}, joining=True)
    assert not empty_volume.has_ready()
    empty_volume.finish_joining()  # a new volume: nothing learned, but the directory is a member's now
    assert empty_volume.has_ready()
    ready, _ = persist_and_advance(empty_volume, [])
    assert ready.meta == NodeMeta() and not empty_volume.has_ready()
    assert not Node("a3", "a", NodeMeta(), {}).has_ready(), "a member's metadata is on disk already"


# --- what peers tell: epochs, truncation ranges, records -------------------------------------


def test_learn_from_peer_makes_a_newer_epoch_and_new_ranges_durable_without_replies():
    node, disk = Node("a1", "a", NodeMeta(epoch=2), {}), []
    builder = RecordBuilder()
    records = [builder.heap_init(0)] + [builder.heap_insert(0, [i]) for i in range(9)]
    node.step({"id": 1, "t": sp.APPEND, "epoch": 2, "pg": 0, "records": sealed(records)}, "a")
    persist_and_advance(node, disk)
    assert node.learn_from_peer(1, [], None) is False, "an older epoch teaches nothing"
    assert node.learn_from_peer(3, [(6, 1006, 3)], "w3:1") is True
    assert node.accepted.epoch == 3 and node.segments[0].scl == 10, "nothing applies before it is durable"
    ready, replies = persist_and_advance(node, disk)
    assert replies == {} and ready.meta == NodeMeta(epoch=3, lsn_floor=1006, truncations=((6, 1006, 3),), writer="w3:1")
    assert disk[-1] == TruncateEntry(6, 3, 1006) and node.segments[0].scl == 6
    assert node.learn_from_peer(3, [(6, 1006, 3)], "w3:1") is False and not node.has_ready()
    stale = node.step({"id": 2, "t": sp.CHAIN, "epoch": 2, "pg": 0, "after_lsn": 0}, "s")
    assert stale["error"] == sp.ERROR_STALE_EPOCH


def test_take_from_peer_queues_only_missing_records_and_they_count_once_durable():
    node, disk = Node("a1", "a", NodeMeta(epoch=1), {}), []
    builder = RecordBuilder()
    records = [builder.heap_init(0)] + [builder.heap_insert(0, [i]) for i in range(9)]
    node.step({"id": 1, "t": sp.APPEND, "epoch": 1, "pg": 0, "records": sealed(records[:4])}, "a")
    persist_and_advance(node, disk)
    assert node.take_from_peer(0, sealed(records)) == 6
    assert node.segments[0].scl == 4 and node.stats["records_from_peers"] == 6
    ready, replies = persist_and_advance(node, disk)
    assert [e.lsn for e in ready.log_entries] == list(range(5, 11)) and replies == {}
    assert node.segments[0].scl == 10
    assert node.take_from_peer(0, sealed(records)) == 0 and not node.has_ready()
    damaged = sealed(records[:1])
    damaged[0][0] ^= 1
    with pytest.raises(ChecksumMismatch):
        node.take_from_peer(0, damaged)
    with pytest.raises(BadRequest):
        node.take_from_peer(1, sealed(records[:1]))  # a record of PG 0 offered as PG 1's


def test_op_seq_marks_what_a_ready_made_durable():
    """The healer waits for durable_op_seq to reach the mark of what it queued."""
    node, disk = Node("a1", "a", NodeMeta(epoch=1), {}), []
    builder = RecordBuilder()
    records = [builder.heap_init(0), builder.heap_insert(0, ["x"]), builder.heap_insert(0, ["y"])]
    node.step({"id": 1, "t": sp.APPEND, "epoch": 1, "pg": 0, "records": sealed(records[:1])}, "a")
    node.take_from_peer(0, sealed(records[1:2]))
    assert (node.op_seq, node.durable_op_seq) == (2, 0)
    ready = node.ready()
    assert ready.last_op_seq == 2
    node.step({"id": 2, "t": sp.APPEND, "epoch": 1, "pg": 0, "records": sealed(records[2:])}, "b")
    assert node.op_seq == 3
    node.advance(ready)
    assert node.durable_op_seq == 2 and node.segments[0].scl == 2
    persist_and_advance(node, disk)
    assert node.durable_op_seq == 3 and node.segments[0].scl == 3


# --- page images: status, collected reads, copying an image to a peer ------------------------


def node_with_image(directory, pages_count: int = 6) -> tuple[Node, list]:
    """PG 0 with `pages_count` heap pages coalesced at the last init-and-fill record, two records above."""
    builder = RecordBuilder()
    records = []
    for page_id in range(pages_count):
        records += [builder.heap_init(page_id)] + [builder.heap_insert(page_id, [i, "z" * 50]) for i in range(4)]
    base = records[-1].lsn
    records += [builder.heap_insert(0, ["above"]), builder.heap_insert(1, ["above"])]
    segment = Segment(0)
    segment.add([RecordEntry.from_sealed(*r.sealed()) for r in records])
    payloads = [PagePayload.of_page(segment.get_page(p, base)) for p in segment.pages_changed(base)]
    segment.rebase(write_image(directory, 0, base, 0, payloads))
    return Node("a1", "a", NodeMeta(epoch=1), {0: segment}), records


def get_image(node, base_lsn: int, after_page_id: int) -> dict:
    return node.step({"id": 1, "t": sp.GET_IMAGE, "peer": True, "pg": 0, "base_lsn": base_lsn,
                      "after_page_id": after_page_id}, None)


def test_get_image_hands_a_peer_every_page_in_chunks(tmp_path, monkeypatch):
    node, records = node_with_image(tmp_path, pages_count=6)
    monkeypatch.setattr(node_module, "IMAGE_CHUNK_BYTES_MAX", 300)  # a few pages per reply
    base_lsn, after, copied, replies = 0, -1, [], 0  # as the healer copies: page 0 is a page too
    while True:
        reply = get_image(node, base_lsn, after)
        assert reply["ok"] and reply["page_count"] == 6 and reply["epoch"] == 1
        base_lsn = reply["base_lsn"]
        copied += [PagePayload.verified(crc, payload) for crc, payload in reply["pages"]]
        after = copied[-1].page_id
        replies += 1
        if not reply["more"]:
            break
    assert replies > 1 and base_lsn == node.segments[0].base_lsn == records[-3].lsn
    assert [p.page_id for p in copied] == list(range(6)), "each page once, in page id order"
    copy = write_image(tmp_path / "peer", 0, base_lsn, reply["vdl_hint"], copied)
    for page_id in range(6):
        assert pages.to_wire(copy.get(page_id)) == pages.to_wire(node.segments[0].image.get(page_id))


def test_get_image_says_image_changed_when_the_base_moved_during_a_copy(tmp_path):
    node, records = node_with_image(tmp_path)
    base = node.segments[0].base_lsn
    reply = get_image(node, base - 5, 2)
    assert reply["ok"] is False and reply["error"] == sp.ERROR_IMAGE_CHANGED and reply["base_lsn"] == base
    assert get_image(node, base, 2)["ok"] and get_image(node, 0, 2)["ok"]


def test_get_image_is_a_peers_request_and_a_damaged_image_is_not_served(tmp_path):
    node, _ = node_with_image(tmp_path)
    plain = node.step({"id": 1, "t": sp.GET_IMAGE, "epoch": 1, "pg": 0, "base_lsn": 0, "after_page_id": -1}, None)
    assert plain["error"] == sp.ERROR_BAD_REQUEST
    image = node.segments[0].image
    data = bytearray(image.path.read_bytes())
    data[-1] ^= 0x01  # the last page's entry
    image.path.write_bytes(bytes(data))
    reply = get_image(node, 0, 0)
    assert reply["ok"] is False and reply["error"] == sp.ERROR_NOT_COMPLETE
    assert node.segments[0].damaged is not None
    assert node.step({"id": 2, "t": sp.STATUS}, None)["segments"][0]["damaged"] is True


@pytest.mark.parametrize("request_", [
    {"t": sp.GET_PAGE, "epoch": 1, "pg": 0, "page_id": 0, "lsn": -1},
    {"t": sp.CHAIN, "epoch": 1, "pg": 0, "after_lsn": 0},
    {"t": sp.READ_RECORDS, "peer": True, "pg": 0, "after_lsn": 0, "upto_lsn": 10**6, "limit": 9},
], ids=["get_page", "chain", "read_records"])
def test_reads_below_a_segments_base_are_answered_below_horizon(tmp_path, request_):
    """storage_protocol: below_horizon (with base_lsn) for a read point or records below the image:
    the reader knows to read at a newer point, the peer to copy the image."""
    node, records = node_with_image(tmp_path)
    base = node.segments[0].base_lsn
    if request_["t"] == sp.GET_PAGE:
        request_ = {**request_, "lsn": base - 1}
    reply = node.step({"id": 1, **request_}, None)
    assert reply["ok"] is False and reply["error"] == sp.ERROR_BELOW_HORIZON and reply["base_lsn"] == base
    page = node.step({"id": 2, "t": sp.GET_PAGE, "epoch": 1, "pg": 0, "page_id": 0, "lsn": records[-1].lsn}, None)
    assert page["page"][3][0][-1][2] == ["above"]


def test_status_summarizes_each_segment(tmp_path):
    node, records = node_with_image(tmp_path, pages_count=3)
    segment = node.segments[0]
    status = node.step({"id": 1, "t": sp.STATUS}, None)
    assert status["segments"] == {0: {
        "scl": records[-1].lsn, "base": records[-3].lsn, "records": 2,
        "log_bytes": sum(len(r.sealed()[1]) for r in records[-2:]), "image_bytes": segment.image.path.stat().st_size,
        "pages": 3, "damaged": False}}


def test_a_losing_candidates_range_is_void_once_the_winners_range_is_known():
    """Seed 281 of the simulation: candidate w13 left its range (600, 700] of epoch 13 on one node
    only; w14, which never saw it, recovered with the floor 650 and wrote records above it. Once
    the node learns w14's range, w13's is void: the node stops refusing w14's LSNs, never passes
    w13's range on, and a restart does not bring it back."""
    node, disk = Node("a1", "a", NodeMeta(epoch=12), {}), []
    builder = RecordBuilder()
    node.step({"id": 1, "t": sp.APPEND, "epoch": 12, "pg": 0, "records": sealed([builder.heap_init(0)])}, "a")
    node.step({"id": 2, "t": sp.TRUNCATE, "epoch": 13, "above_lsn": 600, "lsn_floor": 700}, "loser")
    persist_and_advance(node, disk)
    assert node.meta.truncations == ((600, 700, 13),) and node.segments[0].in_truncated_range(660)
    node.step({"id": 3, "t": sp.TRUNCATE, "epoch": 14, "above_lsn": 600, "lsn_floor": 650}, "winner")
    ready, replies = persist_and_advance(node, disk)
    assert ready.meta.truncations == ((600, 650, 14),) and replies["winner"]["truncations"] == [[600, 650, 14]]
    assert not node.segments[0].in_truncated_range(660), "the winner's LSNs above its floor are taken again"
    assert node.segments[0].in_truncated_range(640)
    assert node.learn_from_peer(14, [(600, 700, 13)], None) is False, "a peer's void range is not taken"
    late = node.step({"id": 4, "t": sp.TRUNCATE, "epoch": 14, "above_lsn": 600, "lsn_floor": 700, "range_epoch": 13},
                     "resent")
    assert late["ok"] and late["truncations"] == [[600, 650, 14]] and not node.has_ready()
    by_pg = entries_by_pg(disk)
    replayed = replay_segment(0, by_pg[0], None, {(600, 650)})
    assert replayed.truncation_ranges == [(600, 650)], "the void marker in the log is not remembered"


def test_copied_forward_records_are_written_again_and_a_replay_without_the_originals_rebuilds_the_segment():
    """The healer copies records that pin an old log file into the current one. The node writes
    them without a reply and without changing a segment; a replay that finds the copies after the
    newer records they precede (the old file removed) holds those newer records, however many,
    until the copies complete their chain: nothing is dropped for the pending limit."""
    node, disk = Node("a1", "a", NodeMeta(epoch=1), {}), []
    builder = RecordBuilder()
    records = [builder.heap_init(0)] + [builder.heap_insert(0, [i]) for i in range(29)]
    node.step({"id": 1, "t": sp.APPEND, "epoch": 1, "pg": 0, "records": sealed(records[:10])}, "old file")
    persist_and_advance(node, disk)
    old_file = list(disk)
    node.step({"id": 2, "t": sp.APPEND, "epoch": 1, "pg": 0, "records": sealed(records[10:])}, "newer file")
    persist_and_advance(node, disk)
    segment = node.segments[0]
    before = (segment.scl, segment.records_held, segment.held_bytes)
    node.copy_forward([segment.held(lsn) for lsn in range(1, 11)])
    ready, replies = persist_and_advance(node, disk)
    assert [e.lsn for e in ready.log_entries] == list(range(1, 11)) and replies == {}
    assert (segment.scl, segment.records_held, segment.held_bytes) == before
    assert node.stats["records_copied_forward"] == 10
    without_old_file = disk[len(old_file):]
    assert [e.lsn for e in without_old_file] == list(range(11, 31)) + list(range(1, 11))
    original = node_module.PENDING_RECORDS_MAX
    try:
        node_module.PENDING_RECORDS_MAX = 5  # fewer than the 20 records that wait for the copies
        replayed = replay_segment(0, without_old_file)
    finally:
        node_module.PENDING_RECORDS_MAX = original
    assert replayed.scl == 30 and replayed.records_held == 30 and replayed.pending_count == 0
    assert replayed.pending_records_max == 5, "the limit applies again to what arrives after the replay"
    assert replay_segment(0, disk).scl == 30, "with the originals too, the copies are duplicates"
