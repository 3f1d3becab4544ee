"""faust's Kafka consumer, with the seek after recovery made safe.

At the end of a table recovery (and after every rebalance) faust seeks the stream partitions
back to their committed offsets, then clears the streams' buffers and resumes the flow: what
was read before the seek is thrown away and read again. But the consumer's flow stays on
during that seek (it was turned on to read the changelogs), so the fetcher thread can be in
the middle of handing over a batch it fetched just before. It goes on after the seek,
moving faust's "read offset" past the batch's end; the same offsets then come back from the
seeked position and faust drops them as already read, while the buffers holding their first
copies are cleared. Nothing ever acknowledges those offsets, so the partition's commits stop
at the first of them, and the lag never clears (seen after every restart with a backlog:
`web[0]` committed at 3000, a batch 3000-8032 handed over across the seek, then 3000-8031
dropped; tests/integration/test_faults.py).

`SeekSafeConsumer.perform_seek` stops the flow first and waits until the fetcher has finished
the batch in hand, so the read offsets the seek sets are the last word. faust's own callers
resume the flow right after the seek, once the buffers are cleared.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any, ClassVar

import faust
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP, Message

log = logging.getLogger("cem.consumer")

#: how long a seek waits for the fetcher to finish the batch in hand (a batch takes well
#: under a second; when the fetcher is being restarted its generator may never finish)
DRAIN_WAIT_S = 10.0


class SeekSafeConsumer(faust_aiokafka.Consumer):
    """faust's aiokafka consumer; the seek waits for the fetcher's batch in hand."""

    #: batches the fetcher thread is handing over (from their first message to their end);
    #: written only in that thread, read in the worker's loop (reading an int is atomic)
    _batches_open = 0

    async def getmany(self, timeout: float) -> AsyncIterator[tuple[TP, Message]]:
        # Counted from the first message only: before it, faust's generator may wait for
        # the flow to resume, which is what perform_seek waits for in its turn.
        opened = False
        try:
            async for tp, message in super().getmany(timeout):
                if not opened:
                    self._batches_open += 1
                    opened = True
                # Checked again after counting: a seek may have stopped the flow and seen
                # no open batch between faust's own check of the flow and the count.
                if not self.flow_active:
                    break
                yield tp, message
        finally:
            if opened:
                self._batches_open -= 1

    async def perform_seek(self) -> None:
        # Stopping the flow makes the fetcher's batch end at its next message and its next
        # fetch return nothing; the callers of perform_seek resume the flow afterwards.
        self.stop_flow()
        deadline = time.monotonic() + DRAIN_WAIT_S
        while self._batches_open > 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        if self._batches_open > 0:
            log.warning("seeking while the fetcher still hands over a batch (waited %.0fs)", DRAIN_WAIT_S)
        await super().perform_seek()


class Transport(faust_aiokafka.Transport):
    Consumer: ClassVar[Any] = SeekSafeConsumer


class App(faust.App):
    """faust.App whose consumer is a SeekSafeConsumer (producers are unchanged)."""

    def _new_transport(self) -> Any:
        return Transport(self.conf.broker_consumer, self)
