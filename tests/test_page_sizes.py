"""A page's size, as the writer decides what fits (aurora_db/pages.py): summed with one encoding
when a page is first asked, and kept up to date by every change after that."""

import datetime
import decimal

import pytest

from aurora_db import pages
from aurora_db.pages import BTreePage, HeapPage, key_bytes, packed_items_bytes, tuple_bytes
from aurora_db.records import Record
from aurora_db.values import packb


def row(i: int) -> list:
    return [i * 7919 - 10**9, "x" * (i % 41), decimal.Decimal(f"{i}.50"), None, datetime.date(2000 + i % 30, 1, 2)]


@pytest.mark.parametrize("count", [0, 1, 15, 16, 17, 300, 65535, 65536, 70000])
def test_one_encoding_sums_the_items_exactly_across_array_header_sizes(count):
    items = [row(i) for i in range(count)]
    assert packed_items_bytes(items) == sum(len(packb(item)) for item in items)
    keys = [tuple(item[:3]) for item in items]
    assert packed_items_bytes(keys) == sum(len(packb(list(key))) for key in keys)


def test_page_sizes_are_the_sums_of_their_tuples_and_keys():
    tuples = [[1, 0, row(i)] if i % 5 else None for i in range(200)]
    heap = HeapPage(1, 1, tuples)
    assert heap.used_bytes == pages.PAGE_HEADER_BYTES + sum(
        tuple_bytes(t[2]) if t is not None else pages.LINE_POINTER_BYTES for t in tuples)
    leaf = BTreePage(2, 1, True, [[i, f"k{i}"] for i in range(330)], [[1, i] for i in range(330)])
    assert leaf.used_bytes == pages.PAGE_HEADER_BYTES + sum(key_bytes(key) for key in leaf.keys)


def test_a_size_kept_up_to_date_equals_one_summed_afresh():
    leaf = BTreePage(2, 1, True, [[i] for i in range(0, 100, 2)], [[1, i] for i in range(50)])
    heap = HeapPage(1, 1, [[1, 0, row(i)] for i in range(10)])
    assert leaf.used_bytes and heap.used_bytes  # now known: the changes below keep them
    lsn = 2
    for key in (7, 51, 99):
        pos = sum(1 for k in leaf.keys if k < (key,))
        pages.apply(leaf, Record(lsn, 2, 0, 0, 0, True, "btree_insert", (pos, [key], [1, key])))
        lsn += 1
    pages.apply(heap, Record(lsn, 1, 0, 0, 0, True, "heap_insert", (10, 5, row(77))))
    pages.apply(heap, Record(lsn + 1, 1, 0, 0, 0, True, "heap_hot_update", (3, 6, 11, row(78))))
    for page in (leaf, heap):
        kept = page.used_bytes
        page._used_bytes = None
        assert page.used_bytes == kept
