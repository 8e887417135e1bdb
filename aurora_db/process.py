"""How a long-running process of the cluster (a compute node, the proxy) runs: on uvloop when it is
installed, with the garbage collector tuned for servers, until SIGTERM or SIGINT asks it to stop."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
from typing import Awaitable, Callable

# Allocations of container objects between young collections (CPython's default is 700), young
# collections per middle one, and middle ones per full one (CPython's: 10 and 10).
GC_THRESHOLDS = (20_000, 10, 10)
# Collections between two thaws of the frozen objects (see FreezingCollector): some 15 minutes
# for a storage node under pgbench, more for a quieter process.
THAW_AFTER_COLLECTIONS = 400
THAWED_RETRY_MS = 1000  # a full collection after a thaw that met another collection is tried again


class FreezingCollector:
    """Keeps the objects that survive a young collection out of later collections.

    A server holds millions of long-lived container objects (a compute node's cached pages and
    their rows, a storage node's records), none of them in cycles. CPython's collector walks them
    again in every full collection, and walks each once more on its way through the middle
    generation: with the default thresholds a busy storage node spent a fifth of its CPU time
    there, and a full collection stalled the writer for a third of a second. Under pgbench a
    storage node keeps each record (three tracked objects) until it is coalesced: when survivors
    were frozen only after a middle collection, each node spent some 280 ms of every 20 s in the
    collector, two thirds of it in the middle collection, which walks ten young collections'
    survivors again; freezing them after the young collection too, some 100 ms.

    So after each collection the survivors are frozen (gc.freeze: moved to the permanent
    generation, which collections skip; reference counting still frees them), and each
    long-lived object is walked once. The price: a cycle that was alive at a collection and dies
    later waits for the next thaw (so at most the cycles alive at one of the last
    THAW_AFTER_COLLECTIONS collections wait).

    Invariant: a cycle frozen this way is not lost, only collected late: every
    THAW_AFTER_COLLECTIONS collections the frozen objects are thawed into the oldest generation,
    nothing is frozen again until a full collection has walked them, and that collection is
    asked for at once (`collect_after_thaw_on`: the event loop runs it as soon as it can; a
    collection cannot start inside this callback). CPython's own trigger is no help here:
    gc.freeze resets its counts of collections, and a full collection waits until a quarter as
    many objects as the last one walked have survived middle collections since, which a heap of
    short-lived garbage may never reach."""

    def __init__(self, thaw_after: int = THAW_AFTER_COLLECTIONS):
        self.thaw_after = thaw_after
        self.collections = 0  # young and middle collections while freezing
        self.thawed = False  # waiting for a full collection to walk the thawed objects
        self.loop: asyncio.AbstractEventLoop | None = None  # runs that collection (collect_after_thaw_on)

    def __call__(self, phase: str, info: dict) -> None:
        if phase != "stop":
            return
        if info["generation"] == 2:
            self.thawed = False
            gc.freeze()
            return
        if self.thawed:
            return
        self.collections += 1
        if self.collections % self.thaw_after == 0:
            gc.unfreeze()
            self.thawed = True
            if self._loop_open():
                self.loop.call_soon_threadsafe(self.collect_thawed)  # any thread may collect
        else:
            gc.freeze()

    def collect_thawed(self) -> None:
        """On the loop: the full collection a thaw waits for. Another thread's collection under
        way makes gc.collect() return at once: then it is tried again a second later."""
        if self.thawed:
            gc.collect()
        if self.thawed and self._loop_open():
            self.loop.call_later(THAWED_RETRY_MS / 1000, self.collect_thawed)

    def _loop_open(self) -> bool:
        return self.loop is not None and not self.loop.is_closed()


def tune_garbage_collection() -> None:
    """Collect cycles less often than CPython's defaults, and freeze what survives a collection
    (FreezingCollector). Cycles still go: a young collection runs every 20,000 allocations
    instead of 700, and a full one walks the frozen objects after every THAW_AFTER_COLLECTIONS
    (once the process's loop is known: collect_after_thaw_on)."""
    gc.set_threshold(*GC_THRESHOLDS)
    if not any(isinstance(callback, FreezingCollector) for callback in gc.callbacks):
        gc.callbacks.append(FreezingCollector())


def collect_after_thaw_on(loop: asyncio.AbstractEventLoop) -> None:
    """Have `loop` run the full collection each thaw of the FreezingCollector waits for."""
    for callback in gc.callbacks:
        if isinstance(callback, FreezingCollector):
            callback.loop = loop


def yield_to_latency_critical_processes() -> bool:
    """Run this process (and the threads it starts later) under SCHED_BATCH, Linux's policy for
    throughput work: its wake-ups no longer preempt the process running on the CPU. A compute node
    answers its clients one statement at a time on one thread, so every preemption of it stalls
    every client; the processes that wake up because of it should wait for a CPU instead of taking
    its own. Measured on two CPUs under pgbench, against runs without it (README):
      - a storage node: its requests come batched (one group fsync answers a boxcar). In eight
        paired runs the storage nodes used less CPU per transaction in seven, and the median run
        made 13% more transactions per second;
      - the proxy: it wakes at every message it passes on, and preempted the writer some seven
        times per transaction. Through the proxy, in the steady state, 8 clients made 16% more
        transactions per second (medians of seven and five runs: 400 -> 466), with the writer
        preempted 0.7 instead of 6.7 times per transaction; one client's rate did not change (259
        and 258 per second). In benchmarks.pgbench_tpcb --through-proxy, with the storage nodes still
        coalescing the load, 10% more over three modes and two runs each, but scattered.
    Any process may lower itself to this policy; returns False where the platform has none."""
    if not hasattr(os, "sched_setscheduler") or not hasattr(os, "SCHED_BATCH"):
        return False
    try:
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
    except OSError:
        return False
    return True


def run_until_stopped(serve: Callable[[asyncio.Event], Awaitable[None]],
                      startup_errors: tuple[type[BaseException], ...], log: logging.Logger) -> int:
    """Run `serve(stop)`; SIGTERM and SIGINT set `stop`. Returns 0, or 1 after logging one of
    `startup_errors` (what keeps the process from starting: an address in use, no quorum...)."""
    tune_garbage_collection()
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass

    async def main() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        collect_after_thaw_on(loop)
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        try:
            await serve(stop)
        except startup_errors as error:
            log.error("cannot start: %s", error)
            return 1
        return 0

    return asyncio.run(main())
