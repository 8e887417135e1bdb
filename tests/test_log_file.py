"""The node's log on disk: checksums end to end, torn tails cut, damage skipped and reported; files
removed once page images cover every record in them, and a damaged file rewritten whole."""

import logging
import os

import pytest

from aurora_db.constants import PAGES_PER_PG
from storage_node.log_file import HEADER_BYTES, LogFile, RecordEntry, ScanReport, TruncateEntry, encode_entry, scan
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


# --- garbage collection and scrubbing: which files go, and rewriting a file ------------------


def two_pg_entries(count: int) -> list[RecordEntry]:
    """Records of PG 0 (page 1) and PG 1 (page PAGES_PER_PG + 1), interleaved unevenly."""
    builder = RecordBuilder()
    records = [builder.heap_init(1), builder.heap_init(PAGES_PER_PG + 1)]
    for i in range(count - 2):
        page = PAGES_PER_PG + 1 if i % 3 == 2 else 1
        records.append(builder.heap_insert(page, [i, "y" * (i % 5)]))
    return [RecordEntry.from_sealed(*r.sealed()) for r in records]


def files_on_disk(directory) -> dict[int, list]:
    """seq -> entries, read back from each file independently of the LogFile's own bookkeeping."""
    out = {}
    for path in sorted(directory.glob("*.log")):
        entries, _ = scan(path.read_bytes(), is_last_file=False, name=path.name, report=ScanReport())
        out[int(path.stem)] = entries
    return out


def rotated_log(directory, count: int = 40):
    entries = two_pg_entries(count)
    entry_bytes = max(len(encode_entry(e)) for e in entries)
    log_file, _, _ = LogFile.open(directory, file_bytes_max=entry_bytes * 4)
    for i in range(0, count, 3):
        log_file.append(entries[i:i + 3])
    log_file.append([TruncateEntry(above_lsn=10**6, epoch=2, lsn_floor=None)])
    log_file.sync()
    return log_file, entries


@pytest.mark.parametrize("bases", [{0: 0, 1: 0}, {0: 12, 1: 9}, {0: 25}, {0: 30, 1: 31}, {0: 10**6, 1: 10**6}])
def test_remove_covered_removes_exactly_the_sealed_files_all_below_their_pgs_base(tmp_path, bases):
    """Aurora 2017, 3.3 step 7: garbage-collect what the page images cover, nothing more."""
    log_file, entries = rotated_log(tmp_path / "log")
    before = files_on_disk(tmp_path / "log")
    assert len(before) >= 6
    current = log_file.current_seq
    want = [seq for seq, found in before.items() if seq != current
            and all(e.lsn <= bases.get(e.record.pg, 0) for e in found if isinstance(e, RecordEntry))]
    assert log_file.remove_covered(bases) == want
    assert sorted(files_on_disk(tmp_path / "log")) == [seq for seq in before if seq not in want]
    assert current in files_on_disk(tmp_path / "log"), "the current file is never removed"
    assert log_file.remove_covered(bases) == []
    log_file.append(two_pg_entries(41)[40:])  # the log goes on after a removal
    log_file.sync()
    log_file.close()
    reopened, found, report = LogFile.open(tmp_path / "log")
    kept = [e for seq, es in before.items() if seq not in want for e in es] + two_pg_entries(41)[40:]
    assert found == kept and report.bad_entries == 0
    assert reopened.remove_covered(bases) == [], "a reopened log knows the same contents"
    reopened.close()


def test_live_weights_and_lsns_name_each_pg_s_records_above_its_base_in_every_old_file(tmp_path):
    log_file, entries = rotated_log(tmp_path / "log")
    files = files_on_disk(tmp_path / "log")
    older = sorted(files)[:-2]
    for bases in ({}, {0: 12}, {0: 10**6}, {0: 10**6, 1: 10**6}):
        want: dict[int, dict[int, list[int]]] = {}  # seq -> pg -> LSNs
        weights: dict[int, dict[int, int]] = {}
        for seq in older:
            for e in files[seq]:
                if isinstance(e, RecordEntry) and e.lsn > bases.get(e.record.pg, 0):
                    want.setdefault(seq, {}).setdefault(e.record.pg, []).append(e.lsn)
                    by_pg = weights.setdefault(seq, {})
                    by_pg[e.record.pg] = by_pg.get(e.record.pg, 0) + len(e.body)
        for _ in range(2):  # the second time from what the first weighed
            assert log_file.live_weights(bases, files_retained=2) == weights, bases
        assert {seq: {pg: log_file.live_lsns(seq, pg, bases.get(pg, 0)) for pg in by_pg}
                for seq, by_pg in weights.items()} == want, bases
    assert log_file.live_weights({}, files_retained=len(files)) == {}
    everything = log_file.live_weights({}, files_retained=0)
    assert log_file.current_seq not in everything, "the current file is never weighed: it is where copies go"
    log_file.close()


def test_a_file_whose_records_were_copied_forward_is_removed_and_the_copies_replay(tmp_path):
    """Copying PG 1's records of an old file into the current one, then releasing them, frees that
    file once PG 0's records in it are covered; a reopened log still holds every PG 1 record."""
    log_file, entries = rotated_log(tmp_path / "log")
    oldest = min(files_on_disk(tmp_path / "log"))
    assert set(log_file.live_weights({}, files_retained=1)[oldest]) == {0, 1}
    pg1_lsns = log_file.live_lsns(oldest, 1, 0)
    by_lsn = {e.lsn: e for e in entries if isinstance(e, RecordEntry) and e.record.pg == 1}
    log_file.append([by_lsn[lsn] for lsn in pg1_lsns])
    log_file.sync()
    bases = {0: max(log_file.live_lsns(oldest, 0, 0))}
    assert oldest not in log_file.remove_covered(bases), "PG 1's records still pin it"
    log_file.release(oldest, 1)
    assert oldest in log_file.remove_covered(bases)
    log_file.close()
    _, found, report = LogFile.open(tmp_path / "log")
    assert report.bad_entries == 0
    assert {e.lsn for e in found if isinstance(e, RecordEntry) and e.record.pg == 1} == set(by_lsn)


def test_files_with_sizes_and_seal_current(tmp_path):
    """The scrubber reads sealed files whole and the current one only up to what was written."""
    log_file, _ = rotated_log(tmp_path / "log")
    current = log_file.current_seq
    on_disk = files_on_disk(tmp_path / "log")
    size = log_file.path_of(current).stat().st_size
    assert log_file.files_with_sizes() == [(seq, size if seq == current else None) for seq in sorted(on_disk)]
    log_file.seal_current()
    assert log_file.current_seq == current + 1
    assert log_file.files_with_sizes()[-2:] == [(current, None), (current + 1, 0)]
    log_file.seal_current()  # the new current file is empty: nothing to seal
    assert log_file.current_seq == current + 1
    log_file.close()


def test_rewrite_replaces_a_damaged_sealed_file_with_good_copies_in_order(tmp_path):
    """The scrubber's repair: the file's verified entries plus good copies; it then scans clean."""
    log_file, entries = rotated_log(tmp_path / "log")
    seq = sorted(log_file.contents)[1]
    original = files_on_disk(tmp_path / "log")[seq]
    path = log_file.path_of(seq)
    data = bytearray(path.read_bytes())
    data[len(encode_entry(original[0])) + HEADER_BYTES + 3] ^= 0x20  # the second entry's payload
    path.write_bytes(bytes(data))
    report = ScanReport()
    survivors, _ = scan(path.read_bytes(), is_last_file=False, name=path.name, report=report)
    assert report.bad_entries == 1 and survivors == [original[0]] + original[2:]
    with pytest.raises(AssertionError):
        log_file.rewrite(log_file.current_seq, survivors)  # the current file is never rewritten
    log_file.rewrite(seq, original)
    report = ScanReport()
    assert scan(path.read_bytes(), is_last_file=False, name=path.name, report=report)[0] == original
    assert report.bad_entries == 0 and not list((tmp_path / "log").glob("*.tmp"))
    log_file.close()
    _, found, report = LogFile.open(tmp_path / "log")
    assert found == entries + [TruncateEntry(10**6, 2, None)] and report.bad_entries == 0


def test_a_rewrite_without_a_record_no_segment_needs_updates_what_the_file_holds(tmp_path):
    log_file, _ = rotated_log(tmp_path / "log")
    seq = sorted(log_file.contents)[0]
    original = files_on_disk(tmp_path / "log")[seq]
    pg1 = [e for e in original if e.record.pg == 1]
    assert pg1 and any(e.record.pg == 0 for e in original)
    highest_pg0 = max(e.lsn for e in original if e.record.pg == 0)
    assert seq not in log_file.remove_covered({0: highest_pg0})  # PG 1's records keep it
    log_file.rewrite(seq, [e for e in original if e.record.pg == 0])  # PG 1's were lost, and are covered elsewhere
    assert log_file.remove_covered({0: highest_pg0}) == [seq]
    log_file.close()


def test_the_scrubbers_quick_pass_counts_damaged_entries_by_checksum_alone():
    from storage_node.log_file import damaged_entries

    entries = make_entries(6)
    data = b"".join(encode_entry(entry) for entry in entries)
    assert damaged_entries(data) == 0
    flipped = bytearray(data)
    flipped[HEADER_BYTES + 2] ^= 0xFF  # inside the first entry's payload
    assert damaged_entries(bytes(flipped)) == 1
    assert damaged_entries(data[:-3]) == 1, "a cut entry counts"
