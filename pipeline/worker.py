"""The worker process: faust hosts it (lifecycle, signals, web pages, timers) and two stages
of pipeline/engine/ do the work, each an aiokafka consumer group of its own:
stage A (`engine/resolve.py`, `<app_id>-resolve`) validates, resolves and re-keys by customer;
stage B (`engine/judge_stage.py`, `<app_id>-judge`) judges and writes. Why not faust's streams
and tables: docs/architecture.md.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import faust
from faust.app.base import BootStrategy

from pipeline.engine.context import Context
from pipeline.engine.judge_stage import JudgeStage
from pipeline.engine.resolve import ResolveStage
from pipeline.engine.sends import make_producer
from pipeline.kafka import clients
from pipeline.settings import Settings

log = logging.getLogger("cem.pipeline")

#: how long a stopping worker waits for the batches in hand to be written and committed
STOP_TIMEOUT_S = 60.0


class _Host(BootStrategy):
    """What faust starts: its web server and sensors; none of its Kafka clients. The stages
    have their own consumers and producers, so a faust consumer would only join a group with
    nothing to read (and rebalance it each time a worker comes or goes)."""

    enable_kafka = False


class App(faust.App):
    """faust hosts the worker: its lifecycle, signals, web pages and timers. Its stop first
    lets the stages finish the batches in hand."""

    BootStrategy = _Host
    pipeline: Pipeline

    async def on_first_start(self) -> None:
        # add_future is what faust starts its tasks with: an error crashes the worker
        await super().on_first_start()
        self.add_future(self.pipeline.ctx.index.follow())
        self.add_future(self.pipeline.run())

    async def _wait_for_table_recovery_completed(self) -> bool:
        return False  # no faust tables, nothing to recover: timers and web pages start at once

    async def on_stop(self) -> None:
        await self.pipeline.stop()
        await super().on_stop()


class Pipeline:
    """Builds the worker from one Settings object: the faust app that hosts it, the stages,
    the web pages and the health timer."""

    def __init__(self, settings: Settings) -> None:
        self.settings = s = settings
        self.ctx = ctx = Context(settings)
        self.stats = ctx.stats
        self.resolve = ResolveStage(ctx)
        self.judge = JudgeStage(ctx)
        self._main: asyncio.Task[None] | None = None
        self.app = app = App(
            s.worker.app_id,
            broker=[f"kafka://{h}" for h in clients.servers(s.kafka)],
            broker_credentials=clients.faust_credentials(s.kafka),
            store="memory://",
            broker_session_timeout=s.worker.session_timeout_s,
            broker_heartbeat_interval=max(0.5, s.worker.session_timeout_s / 5),
            web_host="127.0.0.1",
            web_bind="127.0.0.1",  # the stats, metrics and health endpoints stay on loopback
            web_port=s.worker.web_port,
            datadir=str(s.worker.data_dir),
        )
        app.pipeline = self
        app.task(self._watch_loop)

        async def stats_page(web: Any, request: Any) -> Any:
            self._refresh_ready()
            return web.json(self.stats.snapshot())

        async def metrics_page(web: Any, request: Any) -> Any:
            return web.bytes(self.stats.prometheus_text(), content_type="text/plain; version=0.0.4")

        async def live_page(web: Any, request: Any) -> Any:
            return web.json({"live": True})

        async def ready_page(web: Any, request: Any) -> Any:
            self._refresh_ready()
            return web.json({"ready": self.stats.ready}, status=200 if self.stats.ready else 503)

        async def tasks_page(web: Any, request: Any) -> Any:
            return web.text(_task_dump())

        app.page("/cem/stats/")(stats_page)
        app.page("/cem/debug/tasks")(tasks_page)
        app.page("/metrics")(metrics_page)
        app.page("/health/live")(live_page)
        app.page("/health/ready")(ready_page)
        app.timer(interval=5.0)(self._refresh_health)

    async def run(self) -> None:
        """Both stages, until the worker stops. An error that escapes a stage crashes the
        worker (faust does that for a failed task): a supervisor restarts it from the
        committed offsets, rather than leaving a worker that reads nothing."""
        self._main = asyncio.current_task()
        producer = self.ctx.producer = make_producer(self.settings)
        bulk = self.ctx.bulk_producer = make_producer(self.settings, bulk=True)
        await producer.start()
        await bulk.start()
        try:
            async with asyncio.TaskGroup() as stages:  # one failing stops the other
                stages.create_task(self.resolve.run(), name="resolve")
                stages.create_task(self.judge.run(), name="judge")
        finally:
            await producer.stop()  # sends what is buffered
            await bulk.stop()
            await self.ctx.close()

    async def _watch_loop(self) -> None:
        """How long the event loop goes without getting round to this task: every stage,
        timer and heartbeat of the worker shares the loop, so a long stretch of work without
        an `await` delays all of them (cem_loop_stalls_total, cem_loop_stall_seconds_max)."""
        tick = 0.05
        while True:
            started = time.monotonic()
            await asyncio.sleep(tick)
            late = time.monotonic() - started - tick
            self.stats.observe_loop(late)
            if late > 0.25:
                log.info("the event loop was held for %.0f ms", late * 1000)

    async def stop(self) -> None:
        """Let both stages finish and commit the batch in hand, then leave their groups."""
        self.ctx.stopping.set()
        main = self._main
        if main is not None and not main.done():
            try:
                await asyncio.wait_for(asyncio.shield(main), STOP_TIMEOUT_S)
            except TimeoutError:
                log.warning("the stages did not finish within %.0fs; stopping anyway", STOP_TIMEOUT_S)
            except Exception:  # already logged where it happened
                log.debug("a stage ended with an error", exc_info=True)

    def _refresh_ready(self) -> None:
        """Ready: the identity index loaded, the CRM profiles in it, both stages in their
        groups, every partition's state loaded and caught up."""
        source = self.resolve.source
        self.stats.ready = self.ctx.index.loaded.is_set() and source.joined and not source.held and self.judge.ready
        self.stats.identity_entries = self.ctx.index.count()
        self.stats.customers = sum(p.customers.count() for p in self.judge.parts.values())
        self.stats.partitions = sorted(self.judge.parts)

    async def _refresh_health(self) -> None:
        """Readiness and this worker's lag, for the metrics page."""
        self._refresh_ready()
        try:
            self.stats.lag = await self.resolve.source.lag() | self.judge.lag()
        except Exception as e:  # a rebalance under way: keep the last known lag
            log.debug("lag refresh failed: %s", e)


def _task_dump() -> str:
    """Where every coroutine of the worker waits: the first thing to look at when a worker
    stops moving."""
    tasks = asyncio.all_tasks()
    out = [f"=== {len(tasks)} tasks"]
    out.extend(f"{task.get_name()}:\n{_await_chain(task)}" for task in tasks)
    return "\n".join(out)


def _await_chain(task: asyncio.Task[Any]) -> str:
    """The frames a task is suspended in, outermost first, following each `await`."""
    lines: list[str] = []
    coro: Any = task.get_coro()
    while coro is not None and len(lines) < 40:
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None) or getattr(coro, "ag_frame", None)
        if frame is None:
            lines.append(f"    <{type(coro).__name__}> {coro!r}"[:300])
            break
        lines.append(f"    {frame.f_code.co_filename}:{frame.f_lineno} {frame.f_code.co_name}")
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None) or getattr(coro, "ag_await", None)
    return "\n".join(lines)
