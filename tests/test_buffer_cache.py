"""The buffer cache's eviction rules (DESIGN.md 4): bounded, and never losing a page storage cannot
give back yet."""

import pytest

from aurora_db.errors import QuorumTimeout
from aurora_db.pages import MetaPage
from compute_node.buffer_cache import BufferCache


class Volume:
    """Pages as storage would serve them, and a VDL the test moves."""

    def __init__(self):
        self.vdl = 0
        self.fetched = []
        self.waits = 0

    def fetch(self, page_id):
        self.fetched.append(page_id)
        return MetaPage(page_id, lsn=0)

    def wait_durable(self):
        self.waits += 1
        if self.waits > 3:
            raise QuorumTimeout("no quorum")
        self.vdl += 100


def new_cache(volume, capacity=16):
    return BufferCache(capacity, volume.fetch, lambda: volume.vdl, volume.wait_durable)


def test_the_cache_is_bounded_and_reads_evicted_pages_back_from_storage():
    volume = Volume()
    cache = new_cache(volume)
    for page_id in range(40):
        cache.get(page_id)
    assert len(cache) == 16
    cache.get(0)
    assert volume.fetched.count(0) == 2, "an evicted page comes back from storage"


def test_a_page_above_vdl_is_never_evicted():
    volume = Volume()
    cache = new_cache(volume)
    dirty = cache.get(1000)
    dirty.lsn = 50  # changed by a record not yet durable
    for page_id in range(40):
        cache.put(MetaPage(page_id, lsn=0))
    assert 1000 in cache


def test_pinned_pages_stay_and_an_mtr_may_overflow_without_waiting():
    volume = Volume()
    cache = new_cache(volume)
    for page_id in range(16):
        cache.put(MetaPage(page_id, lsn=10))  # all above VDL 0
        cache.pin(page_id)
    cache.get(99, may_wait=False)
    assert len(cache) == 17 and volume.waits == 0


def test_a_read_waits_for_acks_when_every_page_is_above_vdl():
    volume = Volume()
    cache = new_cache(volume)
    for page_id in range(16):
        cache.put(MetaPage(page_id, lsn=50))
    cache.get(99)
    assert volume.waits == 1 and len(cache) == 16


def test_a_lost_quorum_is_an_error_not_unbounded_growth():
    volume = Volume()
    cache = new_cache(volume)
    for page_id in range(16):
        cache.put(MetaPage(page_id, lsn=10_000))
    with pytest.raises(QuorumTimeout):
        cache.get(99)
    assert len(cache) == 16
