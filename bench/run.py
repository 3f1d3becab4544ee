"""`make bench` / `make bench-quick`: cem-pipeline measured against a ceiling and a baseline,
in one run, on the same pre-produced topics, on the local stack (`make up`).

  (a) bare    aiokafka consuming the touchpoints + orjson decoding: the ceiling for Python
  (a2)        a Faust agent that does no work: the ceiling of any Faust stage
  (a3) core   cem's own Python work per event without Faust or I/O (bench/core_ceiling.py)
  (a4) hot    the judge's time per event for one customer with a history of 1k, 4k, 16k events
  (a5) rules  the judge with the rule file against the two hard-coded detectors it replaced (bench/rules.py)
  (b) baseline the straightforward Faust pipeline in bench/baseline.py
  (c) cem     `cem worker`, until the last timeline row is in ClickHouse

Then, for cem: event -> alert latency at about half its measured rate, ClickHouse rows/s and
batch sizes, peak memory and memory above idle workers, catch-up time after a worker is
killed (full run only), and precision/recall of the alerts against the injected labels.
Prints a table and writes JSON to bench/results/.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import psutil  # type: ignore[import-untyped]
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from kafka.admin import NewTopic
from rich.console import Console
from rich.table import Table

from bench.cleanup import namespaced
from bench.core_ceiling import core_ceiling
from bench.hot_customer import hot_customer
from bench.rules import compare as compare_rules
from bench.workload import Workload, generate
from pipeline.kafka import clients
from pipeline.kafka.admin import create_topics, end_offsets, ensure_topics, producer, read_to_end, wait_until_processed
from pipeline.settings import Settings, Topics, load_settings
from sinks.clickhouse.client import connect
from sinks.clickhouse.migrate import migrate

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
console = Console(width=None if sys.stdout.isatty() else 120)


@dataclass
class Scale:
    name: str
    touchpoints: int
    customers: int
    baseline_cap_s: float  # stop the baseline after this long and report its rate so far
    latency_s: float
    kill: bool


FULL = Scale("full", 1_000_000, 100_000, 900, 30, True)
QUICK = Scale("quick", 60_000, 6_000, 60, 10, False)


@dataclass
class Run:
    tag: str
    env: dict[str, str]
    settings: Settings
    results: dict[str, Any] = field(default_factory=dict)


def namespace() -> Run:
    tag = uuid.uuid4().hex[:6]
    env = {
        "CEM_KAFKA__PARTITIONS": "8",
        "CEM_CLICKHOUSE__DATABASE": f"bench_{tag}",
        "CEM_WORKER__APP_ID": f"bench-{tag}",
        "CEM_WORKER__DATA_DIR": str(ROOT / ".local" / "bench" / tag),
        # the whole pre-produced month is a backlog read without event-time alignment across
        # topics: allow that much lateness, so that the results may not depend on read order
        "CEM_RULES__ALLOWED_LATENESS_DAYS": "30",
    }
    for name in Topics.model_fields:
        env[f"CEM_KAFKA__TOPICS__{name.upper()}"] = f"bench{tag}.{name}"
    os.environ.update(env)
    return Run(tag, {**os.environ, **env, "PYTHONPATH": str(ROOT)}, load_settings())


INPUTS = ("web", "callcenter", "booking", "profiles")


def create_bench_topics(settings: Settings) -> None:
    """cem's topics; the channel topics stamp what they append with the broker's clock
    (LogAppendTime), which is where the latency phase counts from."""
    append_time = {"message.timestamp.type": "LogAppendTime"}
    n = settings.kafka.partitions
    ensure_topics(settings, [NewTopic(t, n, 1, topic_configs=append_time) for t in settings.kafka.topics.channels])
    create_topics(settings)


def variant(run: Run, label: str, *, same_inputs: bool = True) -> Run:
    """Another cem deployment beside `run`: its own consumer groups, internal and output topics
    and ClickHouse database; the same input topics (or empty ones of its own)."""
    tag = f"{run.tag}{label}"
    env = dict(run.env) | {
        "CEM_CLICKHOUSE__DATABASE": f"bench_{tag}",
        "CEM_WORKER__APP_ID": f"bench-{tag}",
        "CEM_WORKER__DATA_DIR": str(ROOT / ".local" / "bench" / tag),
    }
    for name in Topics.model_fields:
        if not (same_inputs and name in INPUTS):
            env[f"CEM_KAFKA__TOPICS__{name.upper()}"] = f"bench{tag}.{name}"
    saved = dict(os.environ)
    try:
        os.environ.update(env)
        settings = load_settings()
    finally:
        os.environ.clear()
        os.environ.update(saved)
    create_topics(settings)
    migrate(connect(settings.clickhouse, "default"), settings.clickhouse.database)
    return Run(tag, env, settings)


def settle(run: Run, timeout_s: float = 120) -> None:
    """Wait until ClickHouse has finished merging what the last phase wrote, so that its
    merges do not take CPU from the next phase."""
    client = connect(run.settings.clickhouse, "default")
    deadline = time.monotonic() + timeout_s
    while int(client.execute("SELECT count() FROM system.merges")[0][0]) and time.monotonic() < deadline:
        time.sleep(1)
    client.disconnect()


def step(text: str) -> None:
    console.print(f"[bold]·[/] {text}")


# ---------------------------------------------------------------------------- producing
def produce(run: Run, records: Sequence[tuple[str, bytes | None, bytes]]) -> float:
    t = run.settings.kafka.topics
    names = {"cem.touchpoints.web": t.web, "cem.touchpoints.callcenter": t.callcenter,
             "cem.touchpoints.booking": t.booking, "cem.crm.profiles": t.profiles}  # fmt: skip
    prod = producer(run.settings)
    started = time.monotonic()
    for topic, key, value in records:
        prod.send(names[topic], key=key, value=value)
    prod.flush()
    prod.close()
    return time.monotonic() - started


# ---------------------------------------------------------------------------- (a) bare
async def bare_consume(run: Run, expected: int) -> float:
    t = run.settings.kafka.topics
    consumer = AIOKafkaConsumer(
        **clients.aiokafka(run.settings.kafka), enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for topic in t.channels for p in range(run.settings.kafka.partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        seen = 0
        started = time.monotonic()
        while seen < expected:
            batch = await consumer.getmany(timeout_ms=500, max_records=20_000)
            for records in batch.values():
                for rec in records:
                    orjson.loads(rec.value)
                seen += len(records)
        return time.monotonic() - started
    finally:
        await consumer.stop()


def faust_ceiling(run: Run, expected: int) -> dict[str, Any]:
    t = run.settings.kafka.topics
    out = ROOT / ".local" / "bench" / run.tag / "faust-ceiling.txt"
    out.parent.mkdir(parents=True, exist_ok=True)
    env = {**run.env, "BENCH_BOOTSTRAP": run.settings.kafka.bootstrap_servers, "BENCH_EXPECTED": str(expected),
           "BENCH_TOPICS": f"{t.web},{t.callcenter},{t.booking}", "BENCH_OUT": str(out),
           "BENCH_APP_ID": f"bench-ceiling-{run.tag}"}  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "-m", "bench.faust_ceiling", "worker", "-l", "warn", "--without-web"],
        env=env, cwd=ROOT, capture_output=True, timeout=1800, check=False,
    )  # fmt: skip
    if not out.exists():
        raise RuntimeError(f"faust ceiling run failed: {proc.stderr[-2000:]!r}")
    return {"touchpoints_per_s": int(out.read_text())}


# ---------------------------------------------------------------------------- processes
class Watched:
    """A child process with its peak memory sampled."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        log.parent.mkdir(parents=True, exist_ok=True)
        self.log = log
        self.proc = subprocess.Popen(args, env=env, cwd=ROOT, stdout=log.open("ab"), stderr=subprocess.STDOUT)  # noqa: S603
        self.peak_rss = 0
        STARTED.append(self)

    def sample(self) -> int:
        try:
            rss = int(psutil.Process(self.proc.pid).memory_info().rss)
        except psutil.Error:
            return 0
        self.peak_rss = max(self.peak_rss, rss)
        return rss

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


STARTED: list[Watched] = []  # every child process: a run that fails stops them before its cleanup


def stop_started() -> None:
    for w in STARTED:
        w.stop()


def wait_for(
    count: Callable[[], int], target: int, procs: list[Watched], cap_s: float, label: str
) -> tuple[float, int]:
    """Poll until count() >= target (or cap_s passes); returns (seconds, count)."""
    started = time.monotonic()
    last_print = started
    n = 0
    while True:
        for p in procs:
            p.sample()
            if p.proc.poll() is not None:
                raise RuntimeError(f"{label}: process exited, see {p.log}")
        n = count()
        now = time.monotonic()
        if n >= target or now - started > cap_s:
            return now - started, n
        if now - last_print > 15:
            console.print(f"    {label}: {n:,}/{target:,} after {now - started:.0f}s")
            last_print = now
        time.sleep(0.5)


def ch_count(run: Run, sql: str) -> Callable[[], int]:
    client = connect(run.settings.clickhouse, "default")

    def count() -> int:
        try:
            return int(client.execute(sql)[0][0])
        except Exception:  # a table not there yet
            return 0

    return count


def stats(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/cem/stats/", timeout=5) as r:  # noqa: S310
        data: dict[str, Any] = json.loads(r.read())
        return data


def start_workers(run: Run, n: int, label: str) -> list[tuple[Watched, int]]:
    out = []
    for i in range(n):
        port = 6200 + i
        # a disk of its own per worker, as on separate machines (a RocksDB database has one owner)
        env = run.env | {"CEM_WORKER__DATA_DIR": f"{run.env['CEM_WORKER__DATA_DIR']}/w{i}"}
        w = Watched(
            [sys.executable, "-m", "pipeline.ops.cli", "worker", "--loglevel", "info", "--web-port", str(port)],
            env,
            ROOT / ".local" / "bench" / run.tag / f"{label}-worker{i}.log",
        )
        out.append((w, port))
    for w, port in out:
        deadline = time.monotonic() + 90
        while True:
            try:
                if stats(port)["ready"]:
                    break
            except OSError:
                pass
            if w.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"worker did not become ready, see {w.log}")
            time.sleep(0.3)
    return out


# ---------------------------------------------------------------------------- phases
def run_baseline(run: Run, wl: Workload, scale: Scale) -> dict[str, Any]:
    db = f"bench_{run.tag}"
    admin = connect(run.settings.clickhouse, "default")
    admin.execute(f"CREATE DATABASE IF NOT EXISTS {db}")
    admin.execute(
        f"CREATE TABLE IF NOT EXISTS {db}.baseline_rows (event_id String, customer_id String, "
        "occurred_at DateTime('UTC'), repeat UInt8) ENGINE = MergeTree() ORDER BY (customer_id, occurred_at)"
    )
    t = run.settings.kafka.topics
    env = {
        **run.env,
        "BENCH_BOOTSTRAP": run.settings.kafka.bootstrap_servers,
        "BENCH_TOPICS": f"{t.web},{t.callcenter},{t.booking}",
        "BENCH_PROFILES": t.profiles,
        "BENCH_DB": db,
        "BENCH_CH_PORT": str(run.settings.clickhouse.port),
        "BENCH_APP_ID": f"bench-baseline-{run.tag}",
        "BENCH_WEB_PORT": "6190",
    }
    proc = Watched(
        [sys.executable, "-m", "bench.baseline", "worker", "-l", "warn", "--without-web"],
        env,
        ROOT / ".local" / "bench" / run.tag / "baseline.log",
    )
    try:
        secs, n = wait_for(ch_count(run, f"SELECT count() FROM {db}.baseline_rows"), len(wl.touchpoints), [proc],
                           scale.baseline_cap_s, "baseline")  # fmt: skip
    finally:
        proc.stop()
    return {"seconds": round(secs, 1), "rows": n, "complete": n >= len(wl.touchpoints),
            "touchpoints_per_s": round(n / secs), "peak_rss_mib": proc.peak_rss >> 20}  # fmt: skip


def run_cem(run: Run, wl: Workload, workers: int, label: str) -> tuple[dict[str, Any], list[tuple[Watched, int]]]:
    """`workers` workers from launch until every touchpoint's row is in ClickHouse. Progress
    is read from the workers' counters (a count over the growing table every half second
    would cost ClickHouse more than the inserts), then checked in ClickHouse."""
    db = run.settings.clickhouse.database
    launched = time.monotonic()
    procs = start_workers(run, workers, label)
    ready_s = time.monotonic() - launched

    def written() -> int:
        try:
            snaps = [stats(port) for _, port in procs]
        except OSError:
            return 0
        return sum(s["timeline_rows_written"] - s["row_rewrites"] for s in snaps)

    secs, _ = wait_for(written, len(wl.touchpoints), [w for w, _ in procs], 3600, label)
    count = ch_count(run, f"SELECT uniqExact(event_id) FROM {db}.timeline_versions")
    more, n = wait_for(count, len(wl.touchpoints), [w for w, _ in procs], 600, label)
    secs += ready_s + more
    rss_end = sum(w.sample() for w, _ in procs)
    snaps = [stats(port) for _, port in procs]
    write_s = sum(s.get("clickhouse_write_seconds", 0.0) for s in snaps)
    batches = sum(s["clickhouse_batches"] for s in snaps)
    rows = sum(s["timeline_rows_written"] + s["alert_rows_written"] for s in snaps)
    return {
        "workers": workers,
        "seconds": round(secs, 1),
        "startup_seconds": round(ready_s, 1),
        "touchpoints": n,
        "touchpoints_per_s": round(n / secs),
        "clickhouse_rows": rows,
        "clickhouse_rows_per_s": round(rows / secs),
        "clickhouse_batches": batches,
        "clickhouse_batch_rows_avg": round(rows / batches) if batches else 0,
        "peak_rss_mib": sum(w.peak_rss for w, _ in procs) >> 20,
        "rss_end_mib": rss_end >> 20,
        "customers_held": sum(s["customers"] for s in snaps),
        "snapshots_written": sum(s["snapshots_written"] for s in snaps),
        "snapshot_mib": round(sum(s["snapshot_bytes"] for s in snaps) / 2**20, 1),
        "write_seconds": round(write_s, 1),
    }, procs


def rules_rows(rules: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(a5): each variant's judge rate, and its ratio to the hard-coded detectors'."""
    base, *others = rules["variants"]
    note = f"in process, {rules['touchpoints']:,} touchpoints, best of {rules['repeat']} interleaved rounds"
    rows = [("(a5) judge, hard-coded detectors", f"{base['touchpoints_per_s']:,}/s", note)]
    for v in others:
        ratio = v["touchpoints_per_s"] / max(1, base["touchpoints_per_s"])
        rows.append((f"(a5) judge, {v['variant']}", f"{v['touchpoints_per_s']:,}/s", f"{ratio:.2f}x the hard-coded"))
    return rows


def idle_rss(run: Run) -> int:
    """RSS of a worker that holds nothing: what memory per customer is measured against."""
    empty = variant(run, "idle", same_inputs=False)
    procs = start_workers(empty, 1, "idle")
    time.sleep(2)
    rss = sum(w.sample() for w, _ in procs)
    for w, _ in procs:
        w.stop()
    return rss


def precision_recall(run: Run, wl: Workload) -> dict[str, Any]:
    client = connect(run.settings.clickhouse)
    rows = client.execute(
        f"SELECT kind, customer_id, if(kind = 'repeat_contact', matter, field) FROM {run.settings.clickhouse.database}"
        ".friction_alerts WHERE status = 'open' AND kind IN ('repeat_contact', 're_entry')"
    )  # the workload labels these two kinds; the rule file's other rules are not scored here
    found = {(str(k), str(c), str(s)) for k, c, s in rows}
    hit = found & wl.labels
    return {
        "labels": len(wl.labels),
        "detected": len(found),
        "precision": round(len(hit) / len(found), 4) if found else 0.0,
        "recall": round(len(hit) / len(wl.labels), 4) if wl.labels else 0.0,
    }


CHANNELS = ("cem.touchpoints.web", "cem.touchpoints.callcenter", "cem.touchpoints.booking")  # the workload's names


@dataclass
class Phase:
    """What a latency phase sent and what came of it."""

    rate_per_s: float  # achieved
    touchpoints: int
    appended: dict[str, int]  # event id -> when the broker appended it (LogAppendTime)
    published: dict[str, tuple[int, str]]  # alert id -> (its first publication, the trigger's event id)
    since: Callable[[str], list[Any]]  # the records a topic got since the phase began


def paced_phase(run: Run, rate: float, seconds: float, prefix: str) -> Phase:
    """New customers (ids starting with `prefix`) with the benchmark's own mix of traffic:
    their CRM profiles in first, then their touchpoints at `rate` per second, until every
    worker has caught up."""
    t = run.settings.kafka.topics
    wl = generate(int(rate * seconds), max(1_000, int(rate * seconds / 10)), seed=5, prefix=prefix)
    names = dict(zip(CHANNELS, t.channels, strict=True))
    produce(run, wl.profiles)
    wait_until_processed(run.settings, timeout_s=300)
    starts = {topic: end_offsets(run.settings, topic) for topic in [*t.channels, t.by_customer, t.alerts]}
    achieved = asyncio.run(_paced(run, [(names[topic], value) for topic, _, value in wl.touchpoints], rate))
    wait_until_processed(run.settings, timeout_s=300)

    def since(topic: str) -> list[Any]:
        return [r for r in read_to_end(run.settings, topic) if r.offset >= starts[topic].get(r.partition, 0)]

    appended = {orjson.loads(r.value)["event_id"]: r.timestamp for topic in t.channels for r in since(topic)}
    published: dict[str, tuple[int, str]] = {}
    for rec in since(t.alerts):
        alert = orjson.loads(rec.value)
        if alert["trigger_event_id"] in appended:
            published.setdefault(alert["alert_id"], (rec.timestamp, alert["trigger_event_id"]))
    return Phase(achieved, len(wl.touchpoints), appended, published, since)


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return round(values[min(len(values) - 1, int(p * len(values)))], 1) if values else float("nan")


def latency(run: Run, rate: float, seconds: float) -> dict[str, Any]:
    """Event -> alert latency with the benchmark's own mix of traffic, for new customers, at
    `rate` touchpoints/s. An event counts from the moment the broker appended it to its
    topic (the bench's topics keep LogAppendTime, so the load generator's own queueing is
    not counted) to the moment the worker published the alert it triggered."""
    phase = paced_phase(run, rate, seconds, f"L{run.tag}")
    lat = [float(at - phase.appended[trigger]) for at, trigger in phase.published.values()]
    return {"rate_per_s": round(phase.rate_per_s), "touchpoints": phase.touchpoints, "alerts": len(lat),
            "p50_ms": pct(lat, 0.5), "p99_ms": pct(lat, 0.99), "max_ms": round(max(lat), 1) if lat else None,
            "mean_ms": round(statistics.fmean(lat), 1) if lat else None}  # fmt: skip


async def _paced(run: Run, records: list[tuple[str, bytes]], rate: float) -> float:
    """Send (topic, value) records at `rate` per second, in 5 ms ticks through producer
    batches (a message at a time, the generator would take a core of its own at this rate)."""
    prod = AIOKafkaProducer(**clients.aiokafka(run.settings.kafka), linger_ms=0, acks=1)
    await prod.start()
    try:
        partitions = {topic: sorted(await prod.partitions_for(topic)) for topic, _ in records}
        acks = []
        started = time.monotonic()
        sent = 0
        while sent < len(records):
            due = min(len(records), int((time.monotonic() - started) * rate) + 1)
            batches: dict[tuple[str, int], Any] = {}
            for i in range(sent, due):
                topic, value = records[i]
                key = (topic, partitions[topic][i % len(partitions[topic])])
                batch = batches.get(key)
                if batch is None:
                    batch = batches[key] = prod.create_batch()
                batch.append(key=None, value=value, timestamp=None)
            for (topic, partition), batch in batches.items():
                batch.close()
                acks.append(await prod.send_batch(batch, topic, partition=partition))
            sent = due
            await asyncio.sleep(0.005)
        await asyncio.gather(*acks)
        return len(records) / (time.monotonic() - started)
    finally:
        await prod.stop()


def catch_up_after_kill(run: Run, procs: list[tuple[Watched, int]], extra: Workload) -> dict[str, Any]:
    db = run.settings.clickhouse.database
    count = ch_count(run, f"SELECT uniqExact(event_id) FROM {db}.timeline_versions")
    base = count()
    produce(run, extra.touchpoints)
    target = base + len(extra.touchpoints)
    wait_for(count, base + len(extra.touchpoints) // 2, [w for w, _ in procs], 600, "before kill")
    victim, _ = procs[0]
    victim.stop(signal.SIGKILL)
    killed = time.monotonic()
    restarted = start_workers(run, 1, "restarted")
    secs, n = wait_for(count, target, [w for w, _ in restarted], 900, "after kill")
    for w, _ in restarted:
        w.stop()
    return {"backlog": len(extra.touchpoints), "caught_up": n >= target,
            "seconds_from_kill": round(time.monotonic() - killed, 1), "seconds_from_ready": round(secs, 1)}  # fmt: skip


# ---------------------------------------------------------------------------- report
def report(run: Run, scale: Scale) -> Path:
    r = run.results
    a, b, c = r["bare"], r["baseline"], r["cem"]
    table = Table(title=f"cem-pipeline benchmark ({scale.name}: {r['workload']['touchpoints']:,} touchpoints, "
                        f"{r['workload']['customers']:,} customers)", title_justify="left")  # fmt: skip
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_column("note")
    c1 = r.get("cem_one")
    one = [("(c1) cem-pipeline, one worker", f"{c1['touchpoints_per_s']:,}/s",
            f"{c1['seconds']}s incl. {c1['startup_seconds']}s start-up")] if c1 else []  # fmt: skip
    rows = [
        ("(a) bare aiokafka + orjson", f"{a['touchpoints_per_s']:,}/s", "ceiling for Python here"),
        ("(a2) Faust stream, no work", f"{r['faust_ceiling']['touchpoints_per_s']:,}/s",
         "one take_events agent + orjson: any Faust stage"),
        ("(a3) cem's core, no Faust", f"{r['core']['touchpoints_per_s']:,}/s",
         "us/event: " + ", ".join(f"{k} {v}" for k, v in r["core"]["us_per_touchpoint"].items())),
        ("(a4) hottest customer, judge us/event", " / ".join(map(str, r["hot_customer"]["us_per_event"].values())),
         f"after {' / '.join(f'{k:,}' for k in r['hot_customer']['us_per_event'])} events of one customer "
         f"(flat: per-customer caps); {r['hot_customer']['events_kept']:,} kept"),
        *rules_rows(r["rules"]),
        ("(b) baseline Faust pipeline", f"{b['touchpoints_per_s']:,}/s",
         "" if b["complete"] else f"stopped after {b['seconds']}s ({b['rows']:,} rows)"),
        *one,
        ("(c) cem-pipeline end to end", f"{c['touchpoints_per_s']:,}/s",
         f"{c['workers']} worker(s), {c['seconds']}s incl. {c['startup_seconds']}s start-up"),
        ("c / a", f"{c['touchpoints_per_s'] / a['touchpoints_per_s']:.3f}", "target >= 0.1"),
        ("c / b", f"{c['touchpoints_per_s'] / max(1, b['touchpoints_per_s']):.2f}", "floor >= 3"),
        ("latency p50 / p99 (event -> alert)", f"{r['latency']['p50_ms']} / {r['latency']['p99_ms']} ms",
         f"at {r['latency']['rate_per_s']:,}/s (~50% of c), {r['latency']['alerts']} alerts"),
        ("ClickHouse rows/s", f"{c['clickhouse_rows_per_s']:,}", f"avg batch {c['clickhouse_batch_rows_avg']:,} rows"),
        ("peak memory (cem workers)", f"{c['peak_rss_mib']} MiB", f"baseline {b['peak_rss_mib']} MiB"),
        ("memory above idle workers", f"{c['rss_above_idle_mib']:,} MiB",
         f"idle: {c['rss_idle_mib']} MiB each; {c['customers_held']:,} customers held (bounded: make bench-scale)"),
        ("snapshots of the state", f"{c['snapshots_written']}", f"{c['snapshot_mib']} MiB written"),
        ("precision / recall", f"{r['quality']['precision']} / {r['quality']['recall']}",
         f"{r['quality']['detected']} detected, {r['quality']['labels']} labels"),
    ]  # fmt: skip
    if "kill" in r:
        k = r["kill"]
        rows.append(("catch-up after SIGKILL", f"{k['seconds_from_kill']} s",
                     f"backlog {k['backlog']:,}; caught up: {k['caught_up']}"))  # fmt: skip
    for row in rows:
        table.add_row(*row)
    console.print(table)
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{time.strftime('%Y%m%d-%H%M%S')}-{scale.name}.json"
    path.write_text(json.dumps(r, indent=2))
    console.print(f"results: {path.relative_to(ROOT)}")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="about a minute: 60k touchpoints")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="cem workers for (c), one per core by default; (c1) always runs one")  # fmt: skip
    parser.add_argument("--touchpoints", type=int, help="override the scale's touchpoints")
    parser.add_argument("--customers", type=int, help="override the scale's customers")
    parser.add_argument("--keep", action="store_true",
                        help="keep the run's topics, databases and worker data (removed by default)")  # fmt: skip
    args = parser.parse_args()
    scale = QUICK if args.quick else FULL
    if args.touchpoints:
        scale.touchpoints = args.touchpoints
    if args.customers:
        scale.customers = args.customers
    run = namespace()
    with namespaced(run.tag, run.settings, args.keep, stop=stop_started, say=step):
        measure(run, scale, args)


def measure(run: Run, scale: Scale, args: argparse.Namespace) -> None:
    step(f"generating {scale.touchpoints:,} touchpoints over {scale.customers:,} customers")
    t0 = time.monotonic()
    wl = generate(scale.touchpoints, scale.customers)
    run.results["workload"] = {"touchpoints": len(wl.touchpoints), "customers": wl.customers,
                               "profiles": len(wl.profiles), "labels": len(wl.labels),
                               "generate_seconds": round(time.monotonic() - t0, 1)}  # fmt: skip
    step(f"creating topics and pre-producing ({len(wl.profiles):,} profiles, {len(wl.touchpoints):,} touchpoints)")
    create_bench_topics(run.settings)
    migrate(connect(run.settings.clickhouse, "default"), run.settings.clickhouse.database)
    secs = produce(run, wl.profiles + wl.touchpoints)
    run.results["workload"]["produce_per_s"] = round((len(wl.profiles) + len(wl.touchpoints)) / secs)
    step("(a) bare consumption")
    secs = asyncio.run(bare_consume(run, len(wl.touchpoints)))
    run.results["bare"] = {"seconds": round(secs, 2), "touchpoints_per_s": round(len(wl.touchpoints) / secs)}
    step("(a2) Faust's own ceiling: take_events + orjson, nothing else")
    run.results["faust_ceiling"] = faust_ceiling(run, len(wl.touchpoints))
    step("(a3) cem's own work without Faust or I/O: decode, resolve, re-key, judge, state on disk, rows, snapshot")
    run.results["core"] = asyncio.run(core_ceiling(run.settings, len(wl.profiles), len(wl.touchpoints)))
    step("(a4) the hottest customer: the judge's time per event as one customer's history grows")
    run.results["hot_customer"] = hot_customer()
    step("(a5) the judge with the rule file against the two hard-coded detectors it replaced")
    run.results["rules"] = compare_rules(*((50_000, 5_000, 3) if args.quick else (200_000, 20_000, 5)))
    step("(b) baseline Faust pipeline")
    run.results["baseline"] = run_baseline(run, wl, scale)
    settle(run)
    idle = idle_rss(run)
    if args.workers > 1:
        step("(c1) cem-pipeline with one worker")
        one = variant(run, "one")
        run.results["cem_one"], procs = run_cem(one, wl, 1, "one")
        for w, _ in procs:
            w.stop()
        settle(run)
    step(f"(c) cem-pipeline with {args.workers} worker(s)")
    run.results["cem"], procs = run_cem(run, wl, args.workers, "main")
    c = run.results["cem"]
    c["rss_idle_mib"] = idle >> 20
    # the state is on disk, and memory holds bounded caches of it: what the workers hold above
    # idle ones is no longer a cost per customer (make bench-scale measures the growth)
    c["rss_above_idle_mib"] = max(0, c["rss_end_mib"] - args.workers * c["rss_idle_mib"])
    run.results["quality"] = precision_recall(run, wl)
    rate = c["touchpoints_per_s"] * 0.5
    # (c) ends when the last row is in ClickHouse; the workers still commit after that.
    # Latency is measured from the steady state, not during that tail.
    wait_until_processed(run.settings, timeout_s=600)
    settle(run)
    step(f"latency at {rate:,.0f} touchpoints/s for {scale.latency_s:.0f}s")
    run.results["latency"] = latency(run, rate, scale.latency_s)
    try:
        if scale.kill:
            step("catch-up after a worker is killed")
            extra = generate(max(20_000, scale.touchpoints // 5), max(2_000, scale.customers // 5), seed=99, prefix="K")
            run.results["kill"] = catch_up_after_kill(run, procs, extra)
    finally:
        for w, _ in procs:
            w.stop()
    report(run, scale)


if __name__ == "__main__":
    main()
