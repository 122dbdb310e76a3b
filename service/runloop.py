"""The one way gatequeue's long-running commands run: on asyncio, stopped by signals.

SIGTERM (Kubernetes, docker stop) and SIGINT (Ctrl-C) cancel the main task instead of
killing the process, so its clean-up runs: the worker re-queues what it still runs, the API
drains its connections, the embedded MongoDB is stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Awaitable, Callable


def run_until_signal(factory: Callable[[], Awaitable[None]]) -> int:
    """Run `factory()` to its end or until a signal cancels it; exit status 0 either way
    (a crash raises out of here)."""

    async def runner() -> None:
        loop = asyncio.get_running_loop()
        task = asyncio.ensure_future(factory())
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await task

    asyncio.run(runner())
    return 0
