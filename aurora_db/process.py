"""How a long-running process of the cluster (a compute node, the proxy) runs: on uvloop when it is
installed, until SIGTERM or SIGINT asks it to stop."""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Awaitable, Callable


def run_until_stopped(serve: Callable[[asyncio.Event], Awaitable[None]],
                      startup_errors: tuple[type[BaseException], ...], log: logging.Logger) -> int:
    """Run `serve(stop)`; SIGTERM and SIGINT set `stop`. Returns 0, or 1 after logging one of
    `startup_errors` (what keeps the process from starting: an address in use, no quorum...)."""
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
