"""Running a service (`cem eraser`, `cem alerts deliver`) until it is asked to stop."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable


def run_until_signalled(run: Callable[[], Awaitable[None]], stop: Callable[[], None]) -> None:
    """Run a service's loop until SIGTERM or SIGINT asks it to stop (it finishes what it holds)."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop)
        await run()

    asyncio.run(main())
