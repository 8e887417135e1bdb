"""The sans-I/O node: persist before ack, the epoch rule, truncation markers, replay (no sockets, no disk)."""

import pytest

from aurora_db import storage_protocol as sp
from aurora_db.constants import BATCH_RECORDS_MAX, PAGES_PER_PG
from storage_node.log_file import RecordEntry, TruncateEntry
from storage_node.node import Node, NodeMeta, entries_by_pg, replay_segment
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
    assert ready.meta == NodeMeta(epoch=2, lsn_floor=1006, truncations=((6, 1006),))
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
    assert again["ok"] and again["truncations"] == [[1, 100]], "a known range is answered at once"
    assert not node.has_ready(), "and writes nothing"
    # A PG this node first hears of now still refuses an old epoch's record inside the range.
    stale = RecordBuilder(first_lsn=50, last_lsn=49).heap_init(PAGES_PER_PG)
    node.step({"id": 4, "t": sp.APPEND, "epoch": 2, "pg": 1, "records": sealed([stale])}, "s")
    _, replies = persist_and_advance(node, disk)
    assert replies["s"]["scl"] == 0 and node.segments[1].scl == 0
    status = node.step({"id": 5, "t": sp.STATUS}, "st")
    assert status["truncations"] == [[1, 100]]


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
