"""The segment log on disk: checksums end to end, torn tails cut, damage skipped and reported."""

import logging
import os

import pytest

from storage_node.log_file import HEADER_BYTES, LogFile, RecordEntry, TruncateEntry, encode_entry
from tests.record_builder import RecordBuilder


def make_entries(count: int) -> list[RecordEntry]:
    builder = RecordBuilder()
    records = [builder.heap_init(1)] + [builder.heap_insert(1, [i, "x" * (i % 7)]) for i in range(count - 1)]
    return [RecordEntry.from_sealed(*r.sealed()) for r in records]


def write_log(directory, entries) -> LogFile:
    log_file, existing, _ = LogFile.open(directory)
    assert existing == []
    log_file.append(entries)
    log_file.sync()
    log_file.close()
    return log_file


def only_file(directory):
    (path,) = list(directory.iterdir())
    return path


def test_entries_round_trip_with_the_senders_checksum(tmp_path):
    entries = make_entries(10) + [TruncateEntry(5, 2, 1000), TruncateEntry(3, 3, None)]
    write_log(tmp_path / "pg-0", entries)
    _, reopened, report = LogFile.open(tmp_path / "pg-0")
    assert reopened == entries and report.entries == 12 and report.torn_bytes_cut == 0
    data = only_file(tmp_path / "pg-0").read_bytes()
    first = entries[0]
    assert data[HEADER_BYTES:HEADER_BYTES + len(first.body)] == first.body  # the body exactly as received
    assert int.from_bytes(data[8:12], "big") == first.crc  # with the sender's CRC


def test_torn_tail_is_cut_at_every_byte_offset_of_the_last_entry(tmp_path):
    entries = make_entries(6)
    write_log(tmp_path / "pg-0", entries)
    path = only_file(tmp_path / "pg-0")
    full = path.read_bytes()
    last_start = len(full) - len(encode_entry(entries[-1]))
    for cut in range(last_start, len(full)):
        path.write_bytes(full[:cut])
        log_file, reopened, report = LogFile.open(tmp_path / "pg-0")
        log_file.close()
        assert reopened == entries[:-1], cut
        assert path.stat().st_size == last_start, cut
        assert report.torn_bytes_cut == cut - last_start


def test_torn_tail_of_garbage_or_a_bad_checksum_at_the_end_is_cut(tmp_path):
    entries = make_entries(4)
    write_log(tmp_path / "pg-0", entries)
    path = only_file(tmp_path / "pg-0")
    full = path.read_bytes()
    for tail in (b"\0" * 40, b"AL" + b"\x01" * 30):
        path.write_bytes(full + tail)
        log_file, reopened, _ = LogFile.open(tmp_path / "pg-0")
        log_file.close()
        assert reopened == entries and path.stat().st_size == len(full)
    damaged = bytearray(full)
    damaged[-1] ^= 0xFF  # the last entry's payload: a bad checksum at the very end
    path.write_bytes(bytes(damaged))
    _, reopened, _ = LogFile.open(tmp_path / "pg-0")
    assert reopened == entries[:-1]


@pytest.mark.parametrize("where", ["payload", "header"])
def test_a_flipped_byte_in_the_middle_is_skipped_and_reported(tmp_path, caplog, where):
    entries = make_entries(8)
    write_log(tmp_path / "pg-0", entries)
    path = only_file(tmp_path / "pg-0")
    data = bytearray(path.read_bytes())
    offset = sum(len(encode_entry(e)) for e in entries[:3])  # the 4th entry
    data[offset + (HEADER_BYTES + 2 if where == "payload" else 5)] ^= 0x10
    path.write_bytes(bytes(data))
    with caplog.at_level(logging.ERROR):
        log_file, reopened, report = LogFile.open(tmp_path / "pg-0")
    assert reopened == entries[:3] + entries[4:]  # never served, the rest is
    assert report.bad_entries == 1
    assert any(r.levelno == logging.ERROR and "damaged" in r.getMessage() for r in caplog.records)
    assert path.stat().st_size == len(data)  # damage in the middle is not cut
    log_file.append(make_entries(9)[8:])
    log_file.close()


def test_truncate_markers_survive_reopen_in_order(tmp_path):
    entries = make_entries(5)
    marker = TruncateEntry(above_lsn=3, epoch=4, lsn_floor=50_003)
    log_file, _, _ = LogFile.open(tmp_path / "pg-2")
    log_file.append(entries[:4])
    log_file.append([marker])
    log_file.append(entries[4:])
    log_file.sync()
    log_file.close()
    _, reopened, _ = LogFile.open(tmp_path / "pg-2")
    assert reopened == entries[:4] + [marker] + entries[4:]


def test_rotation_keeps_order_across_files_and_appends_after_reopen(tmp_path):
    entries = make_entries(40)
    entry_bytes = len(encode_entry(entries[5]))
    log_file, _, _ = LogFile.open(tmp_path / "pg-0", file_bytes_max=entry_bytes * 4)
    for i in range(0, 30, 7):
        log_file.append(entries[i:min(i + 7, 30)])
    log_file.sync()
    assert log_file.files >= 6
    log_file.close()
    log_file, reopened, _ = LogFile.open(tmp_path / "pg-0", file_bytes_max=entry_bytes * 4)
    assert reopened == entries[:30]
    log_file.append(entries[30:])
    log_file.sync()
    log_file.close()
    _, reopened, _ = LogFile.open(tmp_path / "pg-0")
    assert reopened == entries


def test_damage_at_the_end_of_an_older_file_is_skipped_not_cut(tmp_path, caplog):
    entries = make_entries(12)
    entry_bytes = max(len(encode_entry(e)) for e in entries)
    log_file, _, _ = LogFile.open(tmp_path / "pg-0", file_bytes_max=entry_bytes * 3)
    log_file.append(entries)
    log_file.sync()
    log_file.close()
    first = sorted((tmp_path / "pg-0").iterdir())[0]
    kept = first.read_bytes()
    first.write_bytes(kept[:-3])
    with caplog.at_level(logging.ERROR):
        _, reopened, report = LogFile.open(tmp_path / "pg-0")
    assert len(reopened) == len(entries) - 1 and report.bad_entries == 1
    assert first.stat().st_size == len(kept) - 3


def test_an_unsynced_write_is_just_bytes_until_sync(tmp_path):
    """append returns once written; sync is the separate call the server groups."""
    log_file, _, _ = LogFile.open(tmp_path / "pg-0")
    log_file.append(make_entries(2))
    assert log_file._dirty
    log_file.sync()
    assert not log_file._dirty
    log_file.close()
    assert os.path.getsize(only_file(tmp_path / "pg-0")) > 0
