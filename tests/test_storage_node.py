"""A real storage-node process over TCP: appends of two PGs, GetPage@LSN, the epoch fence,
SIGKILL and restart on the same data, bad bytes on one connection, concurrent group-fsynced appends,
and a writer link meeting a newer epoch."""

import asyncio
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

import pytest

from aurora_db import pages
from aurora_db import storage_protocol as sp
from aurora_db.constants import FRAME_BYTES_MAX, PAGES_PER_PG
from aurora_db.framing import FrameDecoder, encode_frame
from compute_node.storage_client import StorageClient
from tests.record_builder import RecordBuilder

START_TIMEOUT_S = 15
REPLY_TIMEOUT_S = 15


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class StorageProcess:
    def __init__(self, data_dir, node_id="a1"):
        self.data_dir = data_dir
        self.node_id = node_id
        self.port = free_port()
        self.process = None

    def start(self):
        self.stderr = open(self.data_dir.parent / f"{self.node_id}.stderr", "ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "aurora_db.cli", "storage-node", "--node-id", self.node_id, "--az", "a",
             "--listen", f"127.0.0.1:{self.port}", "--data", str(self.data_dir)],
            stderr=self.stderr)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.log()
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise AssertionError("storage node did not start:\n" + self.log())

    def log(self) -> str:
        return (self.data_dir.parent / f"{self.node_id}.stderr").read_text(errors="replace")

    def kill9(self):
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self):
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                raise

    def client(self) -> "Client":
        return Client(self.port)


class Client:
    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=REPLY_TIMEOUT_S)
        self.decoder = FrameDecoder()
        self.replies = {}
        self.next_id = 1

    def send(self, message) -> int:
        request_id = self.next_id
        self.next_id += 1
        self.sock.sendall(encode_frame({**message, "id": request_id}))
        return request_id

    def wait(self, request_id) -> dict:
        while request_id not in self.replies:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("closed by the storage node")
            for reply in self.decoder.feed(data):
                self.replies[reply["id"]] = reply
        return self.replies.pop(request_id)

    def call(self, message) -> dict:
        return self.wait(self.send(message))

    def close(self):
        self.sock.close()


@pytest.fixture
def node(tmp_path):
    process = StorageProcess(tmp_path / "a1").start()
    yield process
    process.stop()


def sealed(records):
    return [list(r.sealed()) for r in records]


def two_pg_workload():
    """Heap pages 3 (PG 0) and PAGES_PER_PG + 5 (PG 1), records interleaved like a writer's."""
    builder = RecordBuilder()
    page_a, page_b = 3, PAGES_PER_PG + 5
    records = [builder.heap_init(page_a), builder.heap_init(page_b)]
    for i in range(40):
        records.append(builder.heap_insert(page_a if i % 3 else page_b, [i, f"row {i}"]))
    records.append(builder.heap_set_xmax(page_a, 0, 9))
    return builder, records, page_a, page_b


def expected_page(records, page_id, read_point):
    page = None
    for r in sorted(records, key=lambda r: r.lsn):
        if r.page_id == page_id and r.lsn <= read_point:
            page = pages.apply(page, r)
    return pages.to_wire(page)


def append_all(client, records, epoch=1):
    by_pg = {}
    for r in records:
        by_pg.setdefault(r.pg, []).append(r)
    replies = [client.call({"t": sp.APPEND, "epoch": epoch, "pg": pg, "records": sealed(rs)}) for pg, rs in by_pg.items()]
    for reply in replies:
        assert reply["ok"], reply
    return replies


def test_append_status_get_page_and_restart_after_sigkill(node):
    builder, records, page_a, page_b = two_pg_workload()
    client = node.client()
    assert client.call({"t": sp.SET_EPOCH, "epoch": 1, "writer": "127.0.0.1:7020"}) == {
        "id": 1, "ok": True, "epoch": 1, "lsn_floor": 0, "pgs": {}, "vdl_hint": 0, "truncations": [],
        "writer": "127.0.0.1:7020"}
    half = len(records) // 2
    append_all(client, records[half:])  # out of order: both PGs wait for the first half
    assert client.call({"t": sp.STATUS})["pgs"] == {0: 0, 1: 0}
    append_all(client, records[:half])
    last_a = max(r.lsn for r in records if r.pg == 0)
    last_b = max(r.lsn for r in records if r.pg == 1)
    status = client.call({"t": sp.STATUS})
    assert status["pgs"] == {0: last_a, 1: last_b} and status["epoch"] == 1 and status["node_id"] == "a1"

    def check_pages(client):
        for page_id, pg, read_points in ((page_a, 0, [r.lsn for r in records if r.pg == 0]),
                                         (page_b, 1, [r.lsn for r in records if r.pg == 1])):
            for read_point in read_points[::5] + [read_points[-1]]:
                reply = client.call({"t": sp.GET_PAGE, "epoch": 1, "pg": pg, "page_id": page_id, "lsn": read_point})
                assert reply["ok"] and reply["page"] == expected_page(records, page_id, read_point), read_point
        reply = client.call({"t": sp.GET_PAGE, "epoch": 1, "pg": 0, "page_id": page_a, "lsn": last_a + 1})
        assert reply["error"] == sp.ERROR_NOT_COMPLETE

    check_pages(client)
    chain = client.call({"t": sp.CHAIN, "epoch": 1, "pg": 1, "after_lsn": 0})
    assert [x[0] for x in chain["records"]] == [r.lsn for r in records if r.pg == 1]
    read = client.call({"t": sp.READ_RECORDS, "epoch": 1, "pg": 0, "after_lsn": 0, "upto_lsn": 10**9, "limit": 5})
    assert read["records"] == sealed([r for r in records if r.pg == 0][:5])

    node.kill9()
    node.start()
    client = node.client()
    status = client.call({"t": sp.STATUS})
    assert status["pgs"] == {0: last_a, 1: last_b}  # the same SCLs
    assert status["writer"] == "127.0.0.1:7020"  # the epoch's writer, for readers to find
    check_pages(client)


def test_stale_epoch_is_refused_naming_both_epochs_and_survives_restart(node):
    client = node.client()
    assert client.call({"t": sp.SET_EPOCH, "epoch": 4})["epoch"] == 4
    _, records, _, _ = two_pg_workload()
    reply = client.call({"t": sp.APPEND, "epoch": 3, "pg": 0, "records": sealed(records[:1])})
    assert reply["ok"] is False and reply["error"] == sp.ERROR_STALE_EPOCH
    assert "request epoch 3 is older than volume epoch 4" in reply["message"]
    assert client.call({"t": sp.STATUS})["pgs"] == {}  # nothing of the stale request was kept
    assert not client.call({"t": sp.SET_EPOCH, "epoch": 2})["ok"]
    node.kill9()
    node.start()
    client = node.client()
    assert client.call({"t": sp.STATUS})["epoch"] == 4
    reply = client.call({"t": sp.GET_PAGE, "epoch": 3, "pg": 0, "page_id": 3, "lsn": 0})
    assert reply["error"] == sp.ERROR_STALE_EPOCH
    reply = client.call({"t": sp.GET_PAGE, "epoch": 5, "pg": 0, "page_id": 3, "lsn": 0})  # newer: raises it
    assert reply == {"id": 3, "ok": True, "page": None}
    assert client.call({"t": sp.STATUS})["epoch"] == 5


def test_truncate_is_durable_and_reported(node):
    builder, records, page_a, _ = two_pg_workload()
    client = node.client()
    append_all(client, records)
    vdl = records[20].lsn
    reply = client.call({"t": sp.TRUNCATE, "epoch": 2, "above_lsn": vdl, "lsn_floor": vdl + 1000})
    tails = {pg: max(r.lsn for r in records if r.pg == pg and r.lsn <= vdl) for pg in (0, 1)}
    assert reply["ok"] and reply["pgs"] == tails and reply["lsn_floor"] == vdl + 1000
    late = client.call({"t": sp.APPEND, "epoch": 1, "pg": 0, "records": sealed(records[-1:])})
    assert late["error"] == sp.ERROR_STALE_EPOCH
    node.kill9()
    node.start()
    client = node.client()
    status = client.call({"t": sp.STATUS})
    assert status["pgs"] == tails and status["epoch"] == 2 and status["lsn_floor"] == vdl + 1000
    reply = client.call({"t": sp.GET_PAGE, "epoch": 2, "pg": 0, "page_id": page_a, "lsn": tails[0]})
    assert reply["page"] == expected_page(records, page_a, tails[0])


def test_bad_bytes_close_only_that_connection(node):
    good = node.client()
    _, records, _, _ = two_pg_workload()
    append_all(good, records[:10])
    for garbage in (struct.pack(">I", 5) + b"\xc1\xc1\xc1\xc1\xc1",  # not msgpack
                    struct.pack(">I", 3) + b"\x93\x01\x02",  # msgpack, but not a map
                    struct.pack(">I", FRAME_BYTES_MAX + 1)):  # oversize length header
        bad = socket.create_connection(("127.0.0.1", node.port), timeout=REPLY_TIMEOUT_S)
        bad.sendall(garbage)
        assert bad.recv(100) == b""  # closed by the node
        bad.close()
        assert good.call({"t": sp.STATUS})["ok"]
    assert good.call({"t": "no_such_request", "epoch": 1})["error"] == sp.ERROR_BAD_REQUEST
    corrupt = sealed(records[10:11])
    corrupt[0][0] ^= 1
    assert good.call({"t": sp.APPEND, "epoch": 1, "pg": 0, "records": corrupt})["error"] == sp.ERROR_CHECKSUM
    append_all(good, records[10:])
    assert node.process.poll() is None


def test_concurrent_appends_from_many_connections_are_acked_and_durable(node):
    """Group fsync: every ack follows the fsync that covers its records; all survive SIGKILL."""
    connections, per_connection, batch = 8, 30, 4
    builder = RecordBuilder()
    streams = []
    for c in range(connections):
        page_id = c * PAGES_PER_PG  # one PG per connection: each stream is its own chain
        stream = [builder.heap_init(page_id)]
        stream += [builder.heap_insert(page_id, [c, i]) for i in range(per_connection * batch - 1)]
        streams.append(stream)
    failures = []

    def writer(stream):
        try:
            client = node.client()
            ids = [client.send({"t": sp.APPEND, "epoch": 1, "pg": stream[0].pg, "records": sealed(stream[i:i + batch])})
                   for i in range(0, len(stream), batch)]  # pipelined
            scls = [client.wait(request_id)["scl"] for request_id in ids]
            assert scls == sorted(scls) and scls[-1] == stream[-1].lsn
        except Exception as error:  # reported below
            failures.append(error)

    threads = [threading.Thread(target=writer, args=(stream,)) for stream in streams]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not failures, failures
    stats = node.client().call({"t": sp.STATUS})["stats"]
    assert stats["durable_requests"] == connections * per_connection
    assert stats["durable_batches"] < stats["durable_requests"]  # fsyncs were shared
    node.kill9()
    node.start()
    scls = node.client().call({"t": sp.STATUS})["pgs"]
    assert scls == {stream[0].pg: stream[-1].lsn for stream in streams}


def test_sigterm_stops_cleanly(tmp_path):
    process = StorageProcess(tmp_path / "b1", node_id="b1").start()
    process.client().call({"t": sp.SET_EPOCH, "epoch": 1})
    process.stop()
    assert process.process.returncode == 0
    assert "stopping" in process.log()
    assert os.path.exists(tmp_path / "b1" / "epoch")


def test_a_data_directory_of_the_old_per_pg_layout_is_refused_not_read_as_empty(tmp_path):
    """Logs per PG (pg-N/) from an earlier version must not look like an empty node to a writer."""
    (tmp_path / "c1" / "pg-0").mkdir(parents=True)
    (tmp_path / "c1" / "pg-0" / "00000001.log").write_bytes(b"old records")
    process = StorageProcess(tmp_path / "c1", node_id="c1")
    with pytest.raises(AssertionError):
        process.start()
    assert process.process.wait(10) == 1
    assert "one log per node" in process.log()
    assert (tmp_path / "c1" / "pg-0" / "00000001.log").read_bytes() == b"old records"


def test_every_acked_scl_survives_sigkill_in_the_middle_of_appends(node):
    """Persist before ack: whatever SCL an ack named is there after kill -9, even mid-stream."""
    builder = RecordBuilder()
    streams = []
    for c in range(4):
        page_id = c * PAGES_PER_PG
        streams.append([builder.heap_init(page_id)] + [builder.heap_insert(page_id, [c, i]) for i in range(2000)])
    acked = {stream[0].pg: 0 for stream in streams}
    lock = threading.Lock()
    some_acked = threading.Event()

    def writer(stream):
        client = node.client()
        try:
            for i in range(0, len(stream), 8):
                reply = client.call({"t": sp.APPEND, "epoch": 1, "pg": stream[0].pg, "records": sealed(stream[i:i + 8])})
                with lock:
                    acked[stream[0].pg] = max(acked[stream[0].pg], reply["scl"])
                if i >= 8 * 20:
                    some_acked.set()
        except (ConnectionError, OSError):
            pass  # killed

    threads = [threading.Thread(target=writer, args=(stream,)) for stream in streams]
    for thread in threads:
        thread.start()
    assert some_acked.wait(30)
    node.kill9()
    for thread in threads:
        thread.join(30)
    with lock:
        acked_at_kill = dict(acked)
    assert any(0 < scl < stream[-1].lsn for scl, stream in zip(acked_at_kill.values(), streams))  # mid-stream
    node.start()
    scls = node.client().call({"t": sp.STATUS})["pgs"]
    for pg, scl in acked_at_kill.items():
        assert scls.get(pg, 0) >= scl, (pg, scls, acked_at_kill)


async def test_a_writer_whose_epoch_is_older_than_a_nodes_is_fenced_and_never_counts_its_scls(node):
    """A replaced writer whose link reconnects must not take the new writer's SCLs for its own
    records' durability: that would acknowledge commits the new writer's recovery threw away."""
    client = node.client()
    client.call({"t": sp.SET_EPOCH, "epoch": 5, "writer": "127.0.0.1:7021"})
    append_all(client, two_pg_workload()[1], epoch=5)
    acks, fenced = [], []
    old_writer = StorageClient([("a1", "127.0.0.1", node.port)], on_ack=lambda *ack: acks.append(ack),
                               on_forget=lambda node_id: None, on_fenced=fenced.append, is_writer=True,
                               writer_address="127.0.0.1:7020")
    old_writer.epoch = 3
    old_writer.start()
    try:
        deadline = time.monotonic() + REPLY_TIMEOUT_S
        while not fenced and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
    finally:
        await old_writer.stop()
    assert fenced and "epoch 5" in fenced[0]
    assert acks == []
    assert client.call({"t": sp.STATUS})["writer"] == "127.0.0.1:7021"  # the old writer changed nothing


@pytest.mark.skipif(not hasattr(os, "SCHED_BATCH"), reason="SCHED_BATCH is Linux's")
def test_a_storage_node_runs_under_the_batch_scheduling_policy(node):
    """Its wake-ups must not preempt a compute node on the same machine (process.py)."""
    node.client().call({"id": 1, "t": sp.STATUS})
    assert os.sched_getscheduler(node.process.pid) == os.SCHED_BATCH
