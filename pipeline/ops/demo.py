"""`cem demo`: the whole product on one screen, end to end, on the real local stack."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from pipeline.kafka.admin import (
    Record,
    configured_topic,
    consumer_lag,
    create_topics,
    producer,
    read_jsonl,
    send_all,
    wait_until_processed,
)
from pipeline.ops.workload import generate
from pipeline.settings import Settings
from sinks.clickhouse.client import connect
from sinks.clickhouse.migrate import migrate

STORY_CUSTOMER = "C-1042"

# A few messages no producer should send, to show the dead-letter topic at work.
BAD_INPUT = [
    ("cem.touchpoints.web", b'{"event_id": "bad-1", "occurred_at": "2026-03-03T10:00:00Z", "type": "form_submit"'),
    ("cem.touchpoints.callcenter", b'{"event_id": "bad-2", "occurred_at": "2026-03-03T10:00:00", "type": "call", '
     b'"customer_id": "C-1042", "reason": "refund_status"}'),
    ("cem.touchpoints.booking", b'{"event_id": "bad-3", "occurred_at": "2026-03-03T10:00:00Z", '
     b'"type": "booking_created"}'),
]  # fmt: skip


def _stats(port: int) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/cem/stats/", timeout=2) as resp:  # noqa: S310
            data: dict[str, Any] = json.loads(resp.read())
            return data
    except OSError:
        return None


def start_worker(settings: Settings, log_path: Path) -> subprocess.Popen[bytes]:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "pipeline.ops.cli", "worker", "--loglevel", "warning"],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=os.environ.copy(),
        )


def wait_worker_ready(proc: subprocess.Popen[bytes], port: int, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while _stats(port) is None:
        if proc.poll() is not None:
            raise RuntimeError(f"the worker exited with code {proc.returncode}; see its log")
        if time.monotonic() > deadline:
            raise TimeoutError("the worker did not become ready")
        time.sleep(0.5)


def stop_worker(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)  # graceful: flushes and commits
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()


def run_demo(settings: Settings, story: Path, customers: int, console: Console) -> None:
    t0 = time.monotonic()
    console.rule("[bold]cem-pipeline demo")
    console.print("[bold]1.[/] Kafka topics and ClickHouse tables")
    create_topics(settings)
    db = settings.clickhouse.database
    ch = connect(settings.clickhouse.as_role("admin"), "default")
    migrate(ch, db, settings.clickhouse.retention_days)
    console.print("[bold]2.[/] Starting a stream worker")
    log_path = Path(".local/logs/demo-worker.log")
    proc = start_worker(settings, log_path)
    try:
        wait_worker_ready(proc, settings.worker.web_port)
        console.print(f"   worker ready (log: {log_path})")
        console.print(
            f"[bold]3.[/] Feeding the airline story ({escape(story.name)}) and {customers} generated customers"
        )
        prod = producer(settings)
        records = list(read_jsonl(story, settings))
        workload_path = Path(".local/demo-workload.jsonl")
        workload_path.parent.mkdir(parents=True, exist_ok=True)
        with workload_path.open("w") as fh:
            for line in generate(customers):
                fh.write(json.dumps(line) + "\n")
        records += list(read_jsonl(workload_path, settings))
        profiles = [r for r in records if r.topic == settings.kafka.topics.profiles]
        touches = [r for r in records if r.topic != settings.kafka.topics.profiles]
        send_all(prod, profiles)
        console.print(f"   {len(profiles)} CRM profiles sent; waiting until the worker holds them")
        wait_until_processed(settings, timeout_s=300)
        bad = [Record(configured_topic(settings, t), None, v) for t, v in BAD_INPUT]
        n = send_all(prod, touches + bad)
        prod.close()
        console.print(f"   {n} touchpoints sent ({len(bad)} of them malformed on purpose)")
        _wait_with_progress(settings, n, console)
        console.print(f"[bold]4.[/] Summary ({time.monotonic() - t0:.0f}s so far)")
        _summary(settings, ch, console, _stats(settings.worker.web_port) or {})
    finally:
        stop_worker(proc)
    console.rule(f"[bold]demo finished in {time.monotonic() - t0:.0f}s")


def _wait_with_progress(settings: Settings, total: int, console: Console) -> None:
    columns = (
        TextColumn("   processing"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("judge", total=total)
        t = settings.kafka.topics

        def show(lag: Any) -> None:
            pending = sum(lag.by_topic.get(name, 0) for name in (*t.channels, t.by_customer))
            progress.update(task, completed=max(0, total - min(total, pending)))

        wait_until_processed(settings, timeout_s=900, on_progress=show)
        progress.update(task, completed=total)


def _summary(settings: Settings, ch: Any, console: Console, stats: dict[str, Any]) -> None:
    db = settings.clickhouse.database
    ((rows, customers),) = ch.execute(f"SELECT count(), uniqExact(customer_id) FROM {db}.timeline")
    by_channel = ch.execute(f"SELECT channel, count() FROM {db}.timeline GROUP BY channel ORDER BY channel")
    flagged = ch.execute(
        f"SELECT countIf(has(friction, 'repeat_contact')), countIf(has(friction, 're_entry')) FROM {db}.timeline"
    )[0]
    alerts = ch.execute(
        f"SELECT kind, severity, count() FROM {db}.friction_alerts WHERE status = 'open' "
        "GROUP BY kind, severity ORDER BY kind, severity"
    )
    retracted = ch.execute(f"SELECT count() FROM {db}.friction_alerts WHERE status = 'retracted'")[0][0]
    dlq = consumer_lag(settings, [settings.kafka.topics.deadletter])  # no group reads it: lag = size
    console.print(
        f"   [bold]{rows}[/] touchpoints in the timeline for [bold]{customers}[/] customers "
        f"({escape(', '.join(f'{c}: {n}' for c, n in by_channel))})"
    )
    console.print(f"   flagged: {flagged[0]} repeat contacts, {flagged[1]} touchpoints with re-entered data")
    console.print(
        f"   dead-letter topic: {dlq.total} invalid message(s) "
        f"(this run: {escape(', '.join(f'{k}: {v}' for k, v in stats.get('deadletter', {}).items())) or 'none'}); "
        f"duplicates dropped this run: {stats.get('duplicates', 0)}  (.venv/bin/cem dlq list)"
    )
    table = Table(title="Open friction alerts", title_justify="left")
    for col in ("kind", "severity", "count"):
        table.add_column(col)
    for kind, severity, count in alerts:
        table.add_row(escape(kind), escape(severity), str(count))
    table.add_row("(retracted by late events)", "", str(retracted))
    console.print(table)
    from pipeline.ops.cli import render_timeline

    story = ch.execute(
        f"SELECT occurred_at, channel, type, matter, place, agent_id, fields, friction, reentered_fields, "
        f"resolved_by, event_id FROM {db}.timeline WHERE customer_id = %(c)s ORDER BY occurred_at, channel, event_id",
        {"c": STORY_CUSTOMER},
    )
    console.print(render_timeline(STORY_CUSTOMER, story))
    example = ch.execute(
        f"SELECT summary FROM {db}.friction_alerts WHERE customer_id = %(c)s AND status = 'open' "
        "ORDER BY count DESC, occurred_at LIMIT 1",
        {"c": STORY_CUSTOMER},
    )
    if example:
        console.print(f"   example alert: [italic]{escape(example[0][0])}[/]")
    console.print("   [bold]next[/]")
    console.print("     ops:       .venv/bin/cem alerts tail --from-beginning")
    console.print("     analysts:  .venv/bin/cem kit list   (ready SQL: repeat rate, FCR/OCR, re-entry by place, ...)")
    console.print("                .venv/bin/cem kit run repeat_rate_and_fcr_by_matter_week")
    console.print("                .venv/bin/cem report -o friction-report.html   (a static dashboard)")
    console.print(
        f"                clickhouse-client --port {settings.clickhouse.port} "
        f"-q 'SELECT * FROM {db}.kpi_daily_view LIMIT 10'   (docs/analysts.md: every table and column)"
    )
