"""The judge's ClickHouse output: the sink's lifecycle and its contract with the batch loop.

Contract (after snuba and quix-streams): the judge buffers a batch's rows (`Pending`), and
calls `write` when they are due (by size or age); `write` returns once every row is in
ClickHouse or, refused for good, in the dead-letter topic. It retries transient failures
(the server away) until they pass, so nothing after it, and no offset, is committed before
the rows are written; it raises only when the worker stops (`Stopping`), and then nothing is
committed and the batch is judged again after the restart.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import orjson

from pipeline.engine import memory
from pipeline.engine.context import Context
from pipeline.engine.decode import Rejected
from sinks.clickhouse.client import connect
from sinks.clickhouse.writer import ClickHouseSink, Columns, Refused


class ClickHouseOutput:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self._sink: ClickHouseSink | None = None

    async def write(self, timeline: Columns, alerts: list[tuple[Any, ...]]) -> None:
        refused: list[Refused] = []
        await self.ctx.retrying("ClickHouse write", self._write_once, timeline, alerts, refused)
        if refused:
            letters = [self._dead_letter(r) for r in refused]
            await self.ctx.retrying("dead-letter the rows ClickHouse refused", self._send_letters, letters)
            self.ctx.stats.counters["clickhouse_rows_refused"] += len(refused)
        self.ctx.stats.observe_gc(memory.settle())  # what is held now stays

    def _dead_letter(self, r: Refused) -> tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]:
        """A row ClickHouse will never take, for the dead-letter topic under the position of
        the message it came from, so that the partition goes on."""
        row = orjson.dumps(dict(zip(r.columns, r.row, strict=True)))
        source = _Source(r.value("_topic"), r.value("_partition"), r.value("_offset"),
                         str(r.value("customer_id")).encode(), row)  # fmt: skip
        return self.ctx.dead_letter(source, Rejected("clickhouse_refused", r.table, r.reason))

    async def _send_letters(self, letters: list[tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]]) -> None:
        sends = self.ctx.sends()
        for key, value, headers in letters:
            await sends.send(self.ctx.settings.kafka.topics.deadletter, value, key=key, headers=headers)
        await sends.done()

    async def _write_once(self, timeline: Columns, alerts: list[tuple[Any, ...]], refused: list[Refused]) -> None:
        sink = self._sink or self._connect_sink()
        started = time.monotonic()
        try:
            refused[:] = await asyncio.to_thread(sink.write, timeline, alerts)
        except Exception:
            self.ctx.stats.counters["clickhouse_errors"] += 1
            sink.client.disconnect()  # a fresh connection for the retry
            self._sink = None
            raise
        stats = self.ctx.stats
        stats.observe_write(len(timeline) + len(alerts), time.monotonic() - started)
        stats.counters["timeline_rows_written"] += len(timeline)
        stats.counters["alert_rows_written"] += len(alerts)

    def _connect_sink(self) -> ClickHouseSink:
        cfg = self.ctx.settings.clickhouse
        self._sink = ClickHouseSink(connect(cfg, cfg.database), cfg.database)
        return self._sink


@dataclass
class _Source:
    """Where a dead letter comes from, as `Context.dead_letter` reads it off a record."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
