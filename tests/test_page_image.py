"""A PG's durable page image (storage_node/page_image.py): every page as of a base LSN in one file,
checksummed per entry and verified on every read, replaced only whole and atomically.

Aurora 2017, 3.3 (step 8 of the storage node): 'periodically validate CRC codes on pages';
a damaged page is reported (ChecksumMismatch), never served."""

import os

import pytest

from aurora_db import pages
from aurora_db.records import ChecksumMismatch
from storage_node.page_image import (
    HEADER_BYTES,
    DamagedImage,
    PageImage,
    PagePayload,
    image_files,
    image_path,
    write_image,
)


def heap_page(page_id: int, lsn: int, rows: int) -> pages.HeapPage:
    return pages.HeapPage(page_id, lsn, [[1, 0, [i, f"row {i} of page {page_id}"]] for i in range(rows)], 0)


def some_pages() -> list[pages.Page]:
    return [heap_page(7, 40, 3), heap_page(2, 11, 1), heap_page(5, 33, 6), pages.MetaPage(0, 9, {"k": "v"})]


def entry_offsets(image: PageImage) -> dict[int, tuple[int, int]]:
    """page id -> (offset, length) of its entry, from the file itself (sorted by page id after the header)."""
    data = image.path.read_bytes()
    header_length = int.from_bytes(data[4:8], "big")
    pos = HEADER_BYTES + header_length
    found = {}
    while pos < len(data):
        length = int.from_bytes(data[pos + 4:pos + 8], "big")
        page_id = int.from_bytes(data[pos + HEADER_BYTES:pos + HEADER_BYTES + 8], "big")
        found[page_id] = (pos, HEADER_BYTES + length)
        pos += HEADER_BYTES + length
    return found


def flip(path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x04
    path.write_bytes(bytes(data))


def test_an_image_round_trips_every_page_exactly(tmp_path):
    written = some_pages()
    image = write_image(tmp_path, 3, 40, 38, [PagePayload.of_page(p) for p in written])
    assert (image.pg, image.base_lsn, image.vdl_hint) == (3, 40, 38)
    assert image.path == image_path(tmp_path, 3) and image.file_bytes == image.path.stat().st_size
    assert sorted(image.page_ids) == [0, 2, 5, 7] and image.page_count == 4
    for page in written:
        assert pages.to_wire(image.get(page.page_id)) == pages.to_wire(page)
        assert image.page_lsn(page.page_id) == page.lsn
        assert image.read(page.page_id).wire() == pages.to_wire(page)
    assert image.get(3) is None and image.page_lsn(3) is None
    reopened, damaged = PageImage.open(image.path)
    assert damaged == [] and (reopened.pg, reopened.base_lsn, reopened.vdl_hint) == (3, 40, 38)
    assert {p: pages.to_wire(reopened.get(p)) for p in reopened.page_ids} == \
        {p.page_id: pages.to_wire(p) for p in written}
    assert not list(tmp_path.glob("*.tmp")), "the temporary file is renamed, not left behind"
    image.close()
    reopened.close()


def test_a_page_payload_from_a_peer_is_verified():
    payload = PagePayload.of_page(heap_page(4, 20, 2))
    assert PagePayload.verified(payload.crc, payload.payload) == payload
    assert pages.to_wire(payload.page()) == pages.to_wire(heap_page(4, 20, 2))
    damaged = bytearray(payload.payload)
    damaged[-1] ^= 0x01
    for crc, body in ((payload.crc, bytes(damaged)), (payload.crc ^ 1, payload.payload), (payload.crc, b"short"),
                      (payload.crc, "not bytes")):
        with pytest.raises(ChecksumMismatch):
            PagePayload.verified(crc, body)


def test_an_empty_image_has_base_zero_and_no_page(tmp_path):
    image = PageImage.empty(1)
    assert (image.base_lsn, image.page_count, image.get(5)) == (0, 0, None) and image.verify_all() == []
    written = write_image(tmp_path, 1, 0, 0, [])
    reopened, damaged = PageImage.open(written.path)
    assert damaged == [] and reopened.page_count == 0 and reopened.base_lsn == 0


def test_a_flipped_byte_in_a_page_is_reported_never_served(tmp_path):
    """read raises, verify_all (the scrubber) names the page, and open leaves it out and reports it."""
    image = write_image(tmp_path, 0, 40, 40, [PagePayload.of_page(p) for p in some_pages()])
    offset, length = entry_offsets(image)[5]
    flip(image.path, offset + length - 3)  # inside page 5's encoded rows
    with pytest.raises(ChecksumMismatch, match="page 5"):
        image.read(5)
    with pytest.raises(ChecksumMismatch):
        image.get(5)
    assert pages.to_wire(image.get(7)) == pages.to_wire(heap_page(7, 40, 3)), "the other pages still serve"
    assert image.verify_all() == [5]
    reopened, damaged = PageImage.open(image.path)
    assert damaged == [5]
    assert sorted(reopened.page_ids) == [0, 2, 7] and reopened.get(5) is None


def test_a_flipped_byte_in_a_page_entrys_header_is_reported(tmp_path):
    image = write_image(tmp_path, 0, 40, 40, [PagePayload.of_page(p) for p in some_pages()])
    offset, _ = entry_offsets(image)[2]
    flip(image.path, offset + 5)  # the entry's length field: the rest of the file cannot be trusted
    with pytest.raises(ChecksumMismatch):
        image.read(2)
    assert 2 in image.verify_all()
    _, damaged = PageImage.open(image.path)
    assert damaged, "a page entry that does not verify is reported"


@pytest.mark.parametrize("where", ["entry header", "header payload", "cut inside the header"])
def test_a_damaged_image_header_is_a_damaged_image(tmp_path, where):
    """The header names the PG and the base: without it the image is useless (rebuilt from a peer).
    The shell (server.Disk._open_images) catches DamagedImage only: anything else stops the node."""
    image = write_image(tmp_path, 0, 40, 40, [PagePayload.of_page(p) for p in some_pages()])
    if where == "cut inside the header":
        image.path.write_bytes(image.path.read_bytes()[:HEADER_BYTES - 3])
    else:
        flip(image.path, 5 if where == "entry header" else HEADER_BYTES + 2)
    with pytest.raises(DamagedImage):
        PageImage.open(image.path)


def test_a_cut_image_reports_the_missing_pages(tmp_path):
    image = write_image(tmp_path, 0, 40, 40, [PagePayload.of_page(p) for p in some_pages()])
    offset, length = entry_offsets(image)[7]  # the last entry
    data = image.path.read_bytes()
    for cut in (offset, offset + length - 1):
        image.path.write_bytes(data[:cut])
        reopened, damaged = PageImage.open(image.path)
        assert damaged and sorted(reopened.page_ids) == [0, 2, 5], cut
        reopened.close()


def test_write_image_replaces_the_file_whole_and_an_old_reader_keeps_its_version(tmp_path):
    old = write_image(tmp_path, 0, 10, 10, [PagePayload.of_page(heap_page(1, 10, 1))])
    new = write_image(tmp_path, 0, 20, 20, [PagePayload.of_page(heap_page(1, 20, 4))])
    assert old.path == new.path and os.listdir(tmp_path) == [new.path.name]
    assert len(old.get(1).tuples) == 1, "an open image reads the file it opened"
    assert len(new.get(1).tuples) == 4
    reopened, _ = PageImage.open(new.path)
    assert reopened.base_lsn == 20 and len(reopened.get(1).tuples) == 4


def test_image_files_finds_every_pgs_image_and_ignores_the_rest(tmp_path):
    assert image_files(tmp_path / "missing") == {}
    for pg in (0, 12):
        write_image(tmp_path, pg, 5, 5, [])
    for name in ("pg-3.img.tmp", "pg-x.img", "pg-4.log", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    assert image_files(tmp_path) == {0: tmp_path / "pg-0.img", 12: tmp_path / "pg-12.img"}
