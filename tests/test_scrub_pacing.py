"""The scrubber's pace (storage_node/healer.py, Healer.scrub_once): each turn verifies the next
files of its cycle until it has read SCRUB_BYTES_PER_TURN, so a node with a big log does not
re-read all of it every turn; a pass is counted when a cycle ends, and damage is still found."""

from __future__ import annotations

import asyncio

from aurora_db.constants import PAGES_PER_PG
from storage_node import healer as healer_module
from storage_node.healer import Healer
from storage_node.log_file import LogFile, RecordEntry, encode_entry
from storage_node.node import Node, NodeMeta
from tests.record_builder import RecordBuilder

FILES = 6


def log_of_files(directory, files: int) -> tuple[LogFile, int]:
    """A log of `files` sealed files plus the current one; returns it and one file's size."""
    builder = RecordBuilder()
    entries = [RecordEntry(r, *r.sealed()) for r in [builder.heap_init(PAGES_PER_PG)] +
               [builder.heap_insert(PAGES_PER_PG, ["x" * 200]) for _ in range(4 * files)]]
    file_bytes = 4 * len(encode_entry(entries[-1]))
    log_file, _, _ = LogFile.open(directory, file_bytes_max=file_bytes)
    for entry in entries:
        log_file.append([entry])
    log_file.sync()
    return log_file, file_bytes


async def no_durability(mark, meta) -> None:
    return None


def test_each_turn_reads_about_its_budget_and_a_pass_is_a_whole_cycle(tmp_path, monkeypatch):
    log_file, file_bytes = log_of_files(tmp_path / "log", FILES)
    sealed = len(log_file.contents) - 1
    assert sealed >= FILES - 1
    healer = Healer(Node("a1", "a", NodeMeta(epoch=1), {}), tmp_path / "pages", log_file, [], lambda: None,
                    no_durability)
    monkeypatch.setattr(healer_module, "SCRUB_BYTES_PER_TURN", 2 * file_bytes - 1)  # two files a turn
    turns = 0
    while healer.node.stats["scrub_passes"] == 0:
        asyncio.run(healer.scrub_once())
        turns += 1
        assert turns <= len(log_file.contents), "every turn verifies at least one file"
    assert 1 < turns < len(log_file.contents), "several files a turn, and several turns a pass"
    monkeypatch.setattr(healer_module, "SCRUB_BYTES_PER_TURN", 10**9)
    asyncio.run(healer.scrub_once())
    assert healer.node.stats["scrub_passes"] == 2, "with room for everything, a turn is a whole pass"


def test_a_damaged_entry_is_found_by_the_turn_that_reaches_its_file(tmp_path, monkeypatch):
    log_file, file_bytes = log_of_files(tmp_path / "log", FILES)
    last_sealed = sorted(log_file.contents)[-2]
    path = log_file.path_of(last_sealed)
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF  # inside the last entry's payload
    path.write_bytes(bytes(data))
    healer = Healer(Node("a1", "a", NodeMeta(epoch=1), {}), tmp_path / "pages", log_file, [], lambda: None,
                    no_durability)
    monkeypatch.setattr(healer_module, "SCRUB_BYTES_PER_TURN", 1)  # one file a turn
    found_at = None
    for turn in range(1, len(log_file.contents) + 1):
        asyncio.run(healer.scrub_once())
        if healer.node.stats["damaged_found"] and found_at is None:
            found_at = turn
    assert found_at == sorted(log_file.contents).index(last_sealed) + 1
