"""`make bench-collector` (`python -m bench.collector`): the collector's throughput on one core
and its acknowledgement latency, on the local stack's Kafka (`make up`, or
CEM_KAFKA__BOOTSTRAP_SERVERS).

`cem collect` runs pinned to one CPU; this process, pinned to another, posts SDK-sized
batches (100 messages, as the Segment and RudderStack SDKs send) to /v1/batch:
  1. throughput: as many requests as `--concurrency` connections carry, for `--seconds`;
     events/s counts messages answered 200, i.e. acknowledged by Kafka (acks=all).
  2. latency: requests at a fixed rate of half that throughput (open loop: a slow answer
     does not slow the sending), each timed from send to answer; p50/p99/max.
Targets: >= 20,000 events/s; p99 <= 50 ms at half that rate. The broker shares the machine,
so on 2 cores the figures are a floor.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import subprocess
import sys
import time
import urllib.request
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import psutil  # type: ignore[import-untyped]

from bench.cleanup import namespaced
from pipeline.kafka.admin import create_topics
from pipeline.settings import Topics, load_settings

ROOT = Path(__file__).resolve().parent.parent
KEY = "bench-write-key-0123456789"
BATCH = 100


def bodies(n: int, batch: int) -> list[bytes]:
    """`n` distinct request bodies of `batch` messages, shaped as the SDKs send them."""
    t0 = datetime.now(UTC) - timedelta(hours=1)
    out = []
    for b in range(n):
        msgs = []
        for i in range(batch):
            k = b * batch + i
            common = {
                "messageId": str(uuid.uuid4()),
                "anonymousId": f"visitor-{k % 5000}",
                "timestamp": (t0 + timedelta(milliseconds=k)).isoformat(),
                "context": {"library": {"name": "analytics-python", "version": "2.4.0"}},
                "integrations": {},
            }
            if i % 4 == 0:
                props = {"form": "checkin/passenger-details", "fields": ["passport_number", "date_of_birth"]}
                msgs.append(common | {"type": "track", "event": "Form Submitted", "properties": props})
            elif i % 10 == 1:
                msgs.append(common | {"type": "identify", "userId": f"C-{k}", "traits": {"email": f"u{k}@example.com"}})
            else:
                msgs.append(common | {"type": "page", "name": "Check-in", "properties": {"path": f"/checkin/{k % 7}"}})
        out.append(json.dumps({"batch": msgs, "sentAt": datetime.now(UTC).isoformat()}).encode())
    return out


async def throughput(url: str, pool: list[bytes], seconds: float, concurrency: int) -> tuple[float, int]:
    headers = {"Authorization": "Basic " + base64.b64encode(f"{KEY}:".encode()).decode()}
    accepted = refused = 0
    deadline = time.monotonic() + seconds
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as http:

        async def client(c: int) -> None:
            nonlocal accepted, refused
            i = c
            while time.monotonic() < deadline:
                async with http.post(url, data=pool[i % len(pool)], headers=headers) as resp:
                    await resp.read()
                    if resp.status == 200:
                        accepted += BATCH
                    else:
                        refused += 1
                i += concurrency

        start = time.monotonic()
        await asyncio.gather(*(client(c) for c in range(concurrency)))
        elapsed = time.monotonic() - start
    return accepted / elapsed, refused


async def latency(url: str, pool: list[bytes], rate: float, seconds: float) -> list[float]:
    """Open loop: a request every BATCH/rate seconds, whatever the answers do."""
    headers = {"Authorization": "Basic " + base64.b64encode(f"{KEY}:".encode()).decode()}
    interval = BATCH / rate
    times: list[float] = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256)) as http:

        async def one(i: int) -> None:
            sent = time.monotonic()
            async with http.post(url, data=pool[i % len(pool)], headers=headers) as resp:
                await resp.read()
                assert resp.status == 200, resp.status
            times.append(time.monotonic() - sent)

        tasks = []
        start = time.monotonic()
        n = int(seconds / interval)
        for i in range(n):
            delay = start + i * interval - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(i)))
        await asyncio.gather(*tasks)
    return sorted(times)


def quantile(sorted_values: list[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=15.0, help="length of each phase")
    ap.add_argument("--concurrency", type=int, default=8, help="connections posting at once (phase 1)")
    ap.add_argument("--port", type=int, default=0, help="the collector's port (default: a free one)")
    ap.add_argument("--keep", action="store_true", help="keep the run's topics (removed by default)")
    args = ap.parse_args()

    tag = uuid.uuid4().hex[:6]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for name in Topics.model_fields:  # a namespace of its own: nothing else reads these topics
        env[f"CEM_KAFKA__TOPICS__{name.upper()}"] = f"bench-collector-{tag}.{name}"
    os.environ.update({k: v for k, v in env.items() if k.startswith("CEM_KAFKA__TOPICS__")})
    settings = load_settings()
    with namespaced(tag, settings, args.keep):  # its topics: a run writes a few million events to them
        create_topics(settings)
        rate, refused, busy, times = measure(args, env)
    p50, p99 = quantile(times, 0.50) * 1000, quantile(times, 0.99) * 1000
    print(f"collector, one core, batches of {BATCH}, {args.concurrency} connections, acks=all:")
    print(f"  throughput: {rate:,.0f} events/s acknowledged (target >= 20,000); refused requests: {refused}")
    print(
        f"  the collector used {busy:.0%} of its core meanwhile: {rate / max(busy, 0.01):,.0f} events per CPU-second "
        "(the rate of a core of its own; the machine is shared)"
    )
    print(
        f"  ack latency at {rate / 2:,.0f} events/s ({rate / 2 / BATCH:,.0f} requests/s): "
        f"p50 {p50:.1f} ms, p99 {p99:.1f} ms (target <= 50), max {times[-1] * 1000:.1f} ms, n={len(times)}"
    )


def measure(args: argparse.Namespace, env: dict[str, str]) -> tuple[float, int, float, list[float]]:
    """The collector started on its core, its throughput, its share of the core, and the ack
    latencies at half that rate; the collector stopped whatever happens."""
    port = args.port or _free_port()
    env |= {
        "CEM_COLLECTOR__WRITE_KEYS": json.dumps({"bench": KEY}),
        "CEM_COLLECTOR__PORT": str(port),
        "CEM_COLLECTOR__METRICS_PORT": "0",
    }
    collector = subprocess.Popen(
        [sys.executable, "-m", "pipeline.ops.cli", "collect", "--loglevel", "warning"], env=env, cwd=ROOT
    )
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) > 1:  # the collector on one core (the idlest: the machine may be shared), the load on another
        busy_now = psutil.cpu_percent(interval=1.0, percpu=True)
        idlest = sorted(cpus, key=lambda c: busy_now[c] if c < len(busy_now) else 100.0)
        os.sched_setaffinity(collector.pid, {idlest[0]})
        os.sched_setaffinity(0, {idlest[1]})
    url = f"http://127.0.0.1:{port}/v1/batch"
    try:
        _wait_ready(port, collector)
        pool = bodies(200, BATCH)
        asyncio.run(throughput(url, pool, 2.0, args.concurrency))  # warm up: connections, metadata
        cpu = psutil.Process(collector.pid)
        before = sum(cpu.cpu_times()[:2])
        rate, refused = asyncio.run(throughput(url, pool, args.seconds, args.concurrency))
        busy = (sum(cpu.cpu_times()[:2]) - before) / args.seconds  # share of its core the collector had
        times = asyncio.run(latency(url, pool, rate / 2, args.seconds))
    finally:
        collector.terminate()
        try:
            collector.wait(timeout=30)
        except subprocess.TimeoutExpired:
            collector.kill()
            collector.wait()
    return rate, refused, busy, times


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _wait_ready(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1):  # noqa: S310
                return
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the collector did not start") from None
            time.sleep(0.2)


if __name__ == "__main__":
    main()
