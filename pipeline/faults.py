"""Fault injection for the fault tests: make the worker behave the way faust sometimes does.

`CEM_FAULT_DROP_ONCE=<topic>:<partition>:<first>-<last>` makes the worker read those
offsets once without handing them to the stream, as faust's seek at the end of recovery did
before `pipeline/faust_consumer.py`. They are then never acknowledged, so the partition's
commits stop at the first of them: the watchdog reports it (`Pipeline._report_commit_holes`),
and a restart re-reads them. Unset in production; tests/integration/test_faults.py sets it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any

log = logging.getLogger("cem.faults")

ENV = "CEM_FAULT_DROP_ONCE"


def parse(spec: str) -> tuple[str, int, int, int]:
    """'topic:3:100-101' -> ('topic', 3, 100, 101)."""
    topic, partition, span = spec.rsplit(":", 2)
    first, _, last = span.partition("-")
    return topic, int(partition), int(first), int(last or first)


def install_drop_once(consumer: Any) -> None:
    """Wrap faust's consumer callback (before its fetcher starts) if the variable is set."""
    spec = os.environ.get(ENV)
    if not spec or getattr(consumer, "_cem_drop_once", False):
        return
    topic, partition, first, last = parse(spec)
    pending = set(range(first, last + 1))
    deliver: Callable[[Any], Awaitable[Any]] = consumer.callback

    async def callback(message: Any) -> Any:
        if message.topic == topic and message.partition == partition and message.offset in pending:
            pending.discard(message.offset)
            log.warning("fault injection: %s[%d]@%d read, not handed on", topic, partition, message.offset)
            return None
        return await deliver(message)

    consumer.callback = callback
    consumer._cem_drop_once = True
