"""How a long-running process of the cluster (a compute node, the proxy) runs: on uvloop when it is
installed, with the garbage collector tuned for servers, until SIGTERM or SIGINT asks it to stop."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
from typing import Awaitable, Callable

# Allocations of container objects between young collections (CPython's default is 700), young
# collections per middle one, and middle ones per full one (CPython's: 10 and 10).
GC_THRESHOLDS = (20_000, 10, 10)


def tune_garbage_collection() -> None:
    """Collect cycles less often than CPython's defaults. A server holds millions of long-lived
    container objects (a compute node's cached pages and their rows, a storage node's records),
    none of them in cycles, and every collection of an older generation walks them all: with the
    defaults, a busy storage node spent a fifth of its CPU time there and the writer a tenth.
    Cycles still go: only later (a young collection every 20,000 allocations instead of 700)."""
    gc.set_threshold(*GC_THRESHOLDS)


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
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        try:
            await serve(stop)
        except startup_errors as error:
            log.error("cannot start: %s", error)
            return 1
        return 0

    return asyncio.run(main())
