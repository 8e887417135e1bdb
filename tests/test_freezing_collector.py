"""The servers' garbage collector (aurora_db/process.py, FreezingCollector): what survives a
young or middle collection is frozen, so later collections skip it, and a cycle frozen on its way
is still collected, at the next thaw."""

from __future__ import annotations

import asyncio
import gc
import weakref

import pytest

from aurora_db.process import FreezingCollector, collect_after_thaw_on


class Node:
    """A container object that can be part of a cycle and be watched through a weak reference."""

    def __init__(self):
        self.other = None


def make_cycle() -> Node:
    first, second = Node(), Node()
    first.other, second.other = second, first
    return first


@pytest.fixture
def collector():
    """A FreezingCollector on its own, with nothing frozen before or after the test, and only the
    collections the test asks for (unless it enables automatic collection itself)."""
    gc.collect()
    gc.unfreeze()
    enabled, thresholds = gc.isenabled(), gc.get_threshold()
    gc.disable()
    installed = [callback for callback in gc.callbacks if isinstance(callback, FreezingCollector)]
    for callback in installed:
        gc.callbacks.remove(callback)
    collector = FreezingCollector(thaw_after=3)
    gc.callbacks.append(collector)
    try:
        yield collector
    finally:
        gc.callbacks.remove(collector)
        gc.callbacks.extend(installed)
        gc.set_threshold(*thresholds)
        if enabled:
            gc.enable()
        gc.unfreeze()
        gc.collect()


def test_survivors_of_a_young_collection_are_frozen(collector):
    kept = [Node() for _ in range(1000)]
    gc.collect(0)
    assert gc.get_freeze_count() >= len(kept), "the survivors skipped the middle generation"
    assert collector.collections == 1


def test_survivors_of_a_middle_collection_are_frozen(collector):
    kept = [Node() for _ in range(1000)]
    gc.collect(1)
    frozen = gc.get_freeze_count()
    assert frozen >= len(kept), "the survivors went to the permanent generation"
    assert collector.collections == 1
    del kept
    assert gc.get_freeze_count() <= frozen - 1000, "reference counting still frees frozen objects"


def test_a_cycle_frozen_while_alive_is_collected_after_the_thaw(collector):
    holder = make_cycle()
    cycle = weakref.ref(holder)
    gc.collect(1)  # the cycle is alive (this test holds it), so it survives and is frozen
    del holder
    assert cycle() is not None, "garbage now, but frozen: no collection looks at it"
    gc.collect(1)
    assert cycle() is not None and not collector.thawed
    gc.collect(1)  # the third middle collection thaws
    assert collector.thawed
    gc.collect(1)
    assert cycle() is not None, "nothing is frozen again until a full collection walked the thawed objects"
    gc.collect(2)
    assert cycle() is None, "the full collection after the thaw found the cycle"
    assert not collector.thawed, "and freezing goes on"
    kept = [Node() for _ in range(100)]
    gc.collect(1)
    assert gc.get_freeze_count() >= len(kept)


def test_collections_cpython_starts_itself_count_toward_the_thaw(collector):
    """gc.freeze resets CPython's counts of collections, so no middle collection comes on its own
    while everything is frozen: the thaw is counted in collections of any kind."""
    gc.set_threshold(100, 10, 10)
    gc.enable()
    for _ in range(100_000):
        make_cycle()  # garbage that only a collection frees: young collections start by themselves
        if collector.thawed:
            break
    assert collector.thawed


def test_a_thaw_asks_the_loop_for_the_full_collection(collector):
    """CPython's own trigger of a full collection may never come (too few objects survive middle
    collections): the process's loop runs it right after the thaw."""
    async def main() -> None:
        collect_after_thaw_on(asyncio.get_running_loop())
        holder = make_cycle()
        cycle = weakref.ref(holder)
        gc.collect(0)  # alive: frozen
        del holder
        gc.collect(0)
        gc.collect(0)  # the third collection thaws
        assert collector.thawed and cycle() is not None
        for _ in range(3):
            await asyncio.sleep(0)
        assert cycle() is None, "the loop's full collection found the cycle"
        assert not collector.thawed and collector.loop is asyncio.get_running_loop()

    asyncio.run(main())
