"""The `cem` command: operate the stream jobs and look at what they found."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from pydantic import SecretStr
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from pipeline.settings import ConfigError, Settings, load_settings

if TYPE_CHECKING:
    from pipeline.sources.settings import SourcesConfig

app = typer.Typer(help="cem-pipeline: watch customer friction live.", no_args_is_help=True, add_completion=False)
topics_app = typer.Typer(help="Kafka topics.", no_args_is_help=True)
alerts_app = typer.Typer(help="Friction alerts.", no_args_is_help=True)
config_app = typer.Typer(help="Configuration.", no_args_is_help=True)
kit_app = typer.Typer(help="The SQL kit: ready queries for analysts.", no_args_is_help=True)
dlq_app = typer.Typer(help="The dead-letter topic: list, export, replay.", no_args_is_help=True)
app.add_typer(topics_app, name="topics")
app.add_typer(alerts_app, name="alerts")
app.add_typer(config_app, name="config")
app.add_typer(kit_app, name="kit")
app.add_typer(dlq_app, name="dlq")
clickhouse_app = typer.Typer(help="ClickHouse users and access.", no_args_is_help=True)
app.add_typer(clickhouse_app, name="clickhouse")
# Logs and CI are not terminals: give tables room instead of rich's 80-column default.
# Text from data (event ids, summaries, reasons) is printed through escape(): rich would read
# "[...]" in it as markup (and fail on "[/]"), and ":name:" as an emoji code.
console = Console(width=None if sys.stdout.isatty() else 140, emoji=False)
err = Console(stderr=True, emoji=False)


def settings() -> Settings:
    try:
        return load_settings()
    except ConfigError as e:
        err.print(f"[red]config error[/red]: {escape(str(e))}")
        raise typer.Exit(2) from None


def fingerprint_secret_checked(s: Settings) -> None:
    """Exit if the development fingerprint secret is used outside the local stack; warn on it."""
    try:
        s.check_fingerprint_secret()
    except ConfigError as e:
        err.print(f"[red]config error[/red]: {escape(str(e))}")
        raise typer.Exit(2) from None
    if s.privacy.dev_secret:
        err.print(
            "[yellow]warning[/]: privacy.fingerprint_secret is the development default; it is accepted only while "
            "Kafka and ClickHouse are on this machine. Set your own (CEM_PRIVACY__FINGERPRINT_SECRET)"
        )


@config_app.command("check")
def config_check() -> None:
    """Validate the configuration and print it, secrets hidden."""
    s = settings()
    console.print_json(json.dumps(s.redacted()))
    fingerprint_secret_checked(s)


@topics_app.command("create")
def topics_create() -> None:
    """Create every topic cem uses (safe to re-run)."""
    from pipeline.kafka.admin import create_topics

    for name, what in create_topics(settings()):
        console.print(f"  {name:32} {what}")


@app.command()
def migrate(status: Annotated[bool, typer.Option("--status", help="List migrations, apply nothing.")] = False) -> None:
    """Apply ClickHouse migrations in order (safe to re-run)."""
    from sinks.clickhouse.client import connect
    from sinks.clickhouse.migrate import applied, discover, server_version
    from sinks.clickhouse.migrate import migrate as run

    s = settings()
    client = connect(s.clickhouse.as_role("admin"), "default")
    db = s.clickhouse.database
    if status:
        done = applied(client, db, s.clickhouse.cluster)
        version = server_version(client)
        on = f", cluster {s.clickhouse.cluster}" if s.clickhouse.cluster else ""
        console.print(f"ClickHouse {'.'.join(map(str, version))}, database {db}{on}")
        for m in discover():
            if m.version in done:
                mark = f"applied {done[m.version][2]:%Y-%m-%d %H:%M:%S}"
            elif m.requires and version < m.requires:
                mark = f"skipped: needs ClickHouse >= {'.'.join(map(str, m.requires))}"
            else:
                mark = "pending"
            console.print(f"  {m.version:04d}_{m.name:30} {mark}")
        return
    out = run(client, db, s.clickhouse.retention_days, cluster=s.clickhouse.cluster)
    console.print(
        f"applied {len(out.applied)} migration(s)" + "".join(f"\n  {m.version:04d}_{m.name}" for m in out.applied)
    )
    for m in out.skipped:
        need = ".".join(map(str, m.requires))
        console.print(f"skipped {m.version:04d}_{m.name}: needs ClickHouse >= {need} (applied once the server is)")
    console.print(f"retention: {out.retention}")


@app.command()
def erase(
    customer_id: Annotated[str, typer.Argument(help="The CRM customer id to forget.")],
    by: Annotated[str | None, typer.Option(help="Who asks (recorded in the receipt); default user@host.")] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the receipt.")] = 300.0,
) -> None:
    """Erase a customer everywhere (stream state, identity index, ClickHouse) and print the receipt."""
    from pipeline.ops.erase import default_requester, request_erasure

    s = settings()
    try:
        receipt = request_erasure(s, customer_id, by or default_requester(), timeout)
    except TimeoutError as e:
        err.print(f"[red]{escape(str(e))}[/]")
        raise typer.Exit(1) from None
    r = receipt.removed
    console.print(escape(f"erased customer {customer_id} (request {receipt.request_id}, subject {receipt.subject})"))
    console.print(escape(f"  requested by {receipt.requested_by} at {receipt.requested_at:%Y-%m-%d %H:%M:%S} UTC"))
    console.print(f"  completed at {receipt.completed_at:%Y-%m-%d %H:%M:%S} UTC, verified: {receipt.verified}")
    console.print(
        f"  removed: stream state {r.customer_state}, identity entries {r.identity_entries}, "
        f"timeline rows {r.timeline_rows}, alert rows {r.alert_rows}"
    )
    print(receipt.model_dump_json())


@clickhouse_app.command("users")
def clickhouse_users(
    xml_dir: Annotated[
        Path | None,
        typer.Option(help="ClickHouse < 20.5: the server's users.d directory; cem-users.xml is written there."),
    ] = None,
    show: Annotated[
        str | None, typer.Option("--print", help="Print the users as 'xml' or 'sql'; change nothing.")
    ] = None,
    network: Annotated[list[str] | None, typer.Option(help="Addresses the users may connect from.")] = None,
) -> None:
    """Create the writer, eraser and analyst users, each limited to cem's database."""
    from sinks.clickhouse.client import check_credentials, connect
    from sinks.clickhouse.migrate import server_version
    from sinks.clickhouse.users import SQL_USERS_SINCE, UsersError, users_from, users_sql, users_xml

    s = settings()
    ch, db, nets = s.clickhouse, s.clickhouse.database, network or ["127.0.0.1", "::1"]
    try:
        users = users_from(ch)
    except UsersError as e:
        err.print(f"[red]config error[/]: {escape(str(e))}")
        raise typer.Exit(2) from None
    if show is not None:
        print(users_xml(users, db, nets) if show == "xml" else ";\n".join(users_sql(users, db, nets)) + ";")
        return
    admin = connect(ch.as_role("admin"), "default")
    version = server_version(admin)
    if version >= SQL_USERS_SINCE:
        for stmt in users_sql(users, db, nets):
            admin.execute(stmt)
    elif xml_dir is None:
        err.print(
            f"[red]ClickHouse {'.'.join(map(str, version))} keeps users in its config files[/]: pass --xml-dir "
            "with the users.d directory next to the server's users.xml (or --print xml)"
        )
        raise typer.Exit(2)
    else:
        xml_dir.mkdir(parents=True, exist_ok=True)
        target = xml_dir / "cem-users.xml"
        target.write_text(users_xml(users, db, nets))
        target.chmod(0o640)
        console.print(escape(f"wrote {target}; waiting for the server to load it"))
    deadline = time.monotonic() + 30
    for u in users:
        while True:  # 18.16 reloads its users config every few seconds
            try:
                check_credentials(ch.model_copy(update={"user": u.name, "password": SecretStr(u.password)}))
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        console.print(escape(f"  {u.role:8} {u.name}: can log in"))


@dlq_app.command("list")
def dlq_list(reason: Annotated[str | None, typer.Option(help="Only this reason.")] = None) -> None:
    """Dead letters with their reasons, and a count per reason."""
    from collections import Counter

    from pipeline.ops.deadletter import read_dead_letters

    letters = read_dead_letters(settings(), reason)
    for x in letters:
        line = x.to_line()
        source = f"{line['source']:40}"
        console.print(f"  {escape(source)} [bold]{escape(x.reason)}[/] {escape(line['detail'])}")
    counts = Counter(x.reason for x in letters)
    console.print(escape(f"{len(letters)} dead letter(s): " + ", ".join(f"{k} {v}" for k, v in counts.most_common())))


@dlq_app.command("export")
def dlq_export(
    out: Annotated[Path, typer.Argument(help="JSON lines to edit, then `cem dlq replay --file`.")],
    reason: Annotated[str | None, typer.Option(help="Only this reason.")] = None,
) -> None:
    """Write dead letters to a file (readable by you only: it holds raw input), one
    {topic, key, value, reason, ...} per line, to fix by hand."""
    from pipeline.ops.deadletter import export, read_dead_letters

    n = export(read_dead_letters(settings(), reason), out)
    console.print(escape(f"wrote {n} dead letter(s) to {out} (mode 600)"))


@dlq_app.command("replay")
def dlq_replay(
    file: Annotated[Path | None, typer.Option("--file", help="An edited export: send its fixed values.")] = None,
    reason: Annotated[str | None, typer.Option(help="Without --file: replay only this reason.")] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Also send to topics other than the channel topics (e.g. the CRM topic).")
    ] = False,
) -> None:
    """Re-feed dead letters to the channel topics: fixed ones from a file, or the originals after
    fixing the cause. Messages for any other topic are refused, all of them, unless --force."""
    from pipeline.ops.deadletter import ReplayRefused, originals, read_dead_letters, read_fixed, replay

    s = settings()
    records = read_fixed(file) if file is not None else originals(read_dead_letters(s, reason))
    try:
        n = replay(s, records, force)
    except ReplayRefused as e:
        err.print(f"[red]refused[/]: {escape(str(e))}")
        raise typer.Exit(2) from None
    console.print(f"replayed {n} message(s)")


@kit_app.command("list")
def kit_list() -> None:
    """List the kit's queries and the question each answers."""
    from sinks.clickhouse.kit import QUERIES_DIR, queries

    for q in queries().values():
        console.print(f"  [bold]{escape(q.name)}[/]\n      {escape(q.question)}")
    console.print(escape(f"\nSQL files: {QUERIES_DIR}"))


@kit_app.command("run")
def kit_run(
    name: Annotated[str, typer.Argument(help="A query name from `cem kit list`.")],
    show_sql: Annotated[bool, typer.Option("--sql", help="Print the rendered SQL instead of running it.")] = False,
) -> None:
    """Run a kit query against ClickHouse and print the result as a table."""
    from sinks.clickhouse import kit
    from sinks.clickhouse.client import connect

    s = settings()
    qs = kit.queries()
    if name not in qs:
        err.print(f"[red]no query {escape(repr(name))}[/]; one of: {escape(', '.join(qs))}")
        raise typer.Exit(2)
    params = kit.default_params(s.clickhouse.database, s.rules.repeat_contact.window_days)
    if show_sql:
        print(qs[name].render(**params))
        return
    columns, rows = kit.run(connect(s.clickhouse.as_role("analyst")), qs[name], **params)
    table = Table(title=escape(qs[name].question), title_justify="left")
    for col in columns:
        table.add_column(escape(col))
    for row in rows:
        table.add_row(*(escape(str(v)) for v in row))
    console.print(table)


@app.command()
def report(
    out: Annotated[Path, typer.Option("--out", "-o", help="Where to write the HTML file.")] = Path(
        "friction-report.html"
    ),
) -> None:
    """Write a static HTML friction dashboard from ClickHouse."""
    from sinks.clickhouse.client import connect
    from sinks.report.build import build_report

    s = settings()
    result = build_report(
        connect(s.clickhouse.as_role("analyst")), s.clickhouse.database, s.rules.repeat_contact.window_days
    )
    out.write_text(result.html)
    console.print(escape(f"wrote {out} ({result.charts} charts, {len(result.html) // 1024} KiB)"))


@app.command()
def worker(
    web_port: Annotated[int | None, typer.Option(help="Port of this worker's web server.")] = None,
    loglevel: Annotated[str, typer.Option(help="Log level.")] = "warning",
) -> None:
    """Run a stream worker (add workers to scale out; each needs its own --web-port)."""
    import faulthandler
    import logging

    import faust

    from pipeline.engine import memory
    from pipeline.kafka.admin import preflight
    from pipeline.ops.logs import quiet_repeats
    from pipeline.worker import Pipeline
    from sinks.clickhouse.client import check_credentials

    faulthandler.enable()  # a crash in a C extension (RocksDB, the compressors) leaves its Python stack in the log
    if web_port is not None:
        os.environ["CEM_WORKER__WEB_PORT"] = str(web_port)
    # the lag probe reconnects every few seconds; its connection chatter is not news
    logging.getLogger("kafka").setLevel(logging.WARNING)
    s = settings()
    fingerprint_secret_checked(s)
    # Wrong credentials never heal: say so now rather than retry forever. (An unreachable
    # ClickHouse is different: the worker holds back and retries until it returns.)
    preflight(s)
    check_credentials(s.clickhouse)  # the writer only: erasure is `cem eraser`'s, with its own role
    pipeline = Pipeline(s)
    quiet_repeats(s.worker.log_repeats_every_s)
    memory.tune(s.worker.gc_full_every_s)
    worker = faust.Worker(pipeline.app, loglevel=loglevel)
    # faust's terminal spinner sets the root logger to DEBUG for good (at any log level from
    # warning up), so every debug call in faust, aiokafka and clickhouse-driver builds a log
    # record: ~5 % of the worker's time under load (py-spy, bench-quick). No spinner.
    worker.spinner = None
    worker.execute_from_commandline()


@app.command()
def produce(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="JSON lines of {topic, key, value}.")],
    wait_profiles: Annotated[
        bool, typer.Option(help="Send CRM profiles first and wait until the worker holds them.")
    ] = False,
) -> None:
    """Produce a file of messages to Kafka."""
    from pipeline.kafka.admin import producer, read_jsonl, send_all, send_in_order, wait_until_processed

    s = settings()
    records = list(read_jsonl(file, s))
    prod = producer(s)
    if wait_profiles:
        profiles = [r for r in records if r.topic == s.kafka.topics.profiles]
        records = [r for r in records if r.topic != s.kafka.topics.profiles]
        send_all(prod, profiles)
        wait_until_processed(s, timeout_s=120)
    n = send_in_order(prod, records, s.kafka.topics.profiles)
    prod.close()
    console.print(f"produced {n} message(s)")


@app.command()
def wait(timeout: Annotated[float, typer.Option(help="Seconds.")] = 600) -> None:
    """Wait until the worker has processed everything on its topics."""
    from pipeline.kafka.admin import wait_until_processed

    lag = wait_until_processed(settings(), timeout_s=timeout)
    console.print(f"processed (lag {lag.total})")


@app.command()
def timeline(customer_id: str, limit: Annotated[int, typer.Option(help="Rows at most.")] = 200) -> None:
    """Print a customer's experience timeline, friction marked."""
    from sinks.clickhouse.client import connect

    s = settings()
    rows = connect(s.clickhouse.as_role("analyst")).execute(
        f"SELECT occurred_at, channel, type, matter, place, agent_id, fields, friction, reentered_fields, "
        f"resolved_by, event_id FROM {s.clickhouse.database}.timeline WHERE customer_id = %(c)s "
        "ORDER BY occurred_at, channel, event_id LIMIT %(n)s",
        {"c": customer_id, "n": limit},
    )
    console.print(render_timeline(customer_id, rows))


def render_timeline(customer_id: str, rows: list[tuple[Any, ...]]) -> Table:
    table = Table(title=escape(f"Experience timeline of {customer_id}"), show_lines=False)
    for col in ("time (UTC)", "channel", "what happened", "friction", "event"):
        table.add_column(col)
    for at, channel, typ, matter, place, agent, fields, friction, reentered, resolved_by, event_id in rows:
        what = typ + (f" about {matter}" if matter else "")
        if agent:
            what += f" (agent {agent})"
        if fields:
            what += f" at {place}: entered {', '.join(fields)}"
        marks = []
        if "repeat_contact" in friction:
            marks.append("[bold red]REPEAT CONTACT[/]")
        if "re_entry" in friction:
            marks.append(f"[bold yellow]RE-ENTERED {escape(', '.join(reentered))}[/]")
        # the rule file's other rules, by name
        marks += [f"[bold magenta]{escape(r.upper())}[/]" for r in friction if r not in ("repeat_contact", "re_entry")]
        ident = "" if resolved_by == "customer_id" else f" (by {resolved_by})"
        table.add_row(
            f"{at:%Y-%m-%d %H:%M}", escape(channel), escape(what), " ".join(marks) or "-", escape(event_id + ident)
        )
    return table


@alerts_app.command("tail")
def alerts_tail(
    from_beginning: Annotated[bool, typer.Option("--from-beginning", help="Start at the oldest alert.")] = False,
    kind: Annotated[list[str] | None, typer.Option(help="A rule's name, e.g. repeat_contact (repeatable).")] = None,
    min_severity: Annotated[str | None, typer.Option(help="medium or high.")] = None,
    tier: Annotated[list[str] | None, typer.Option(help="Loyalty tier (repeatable).")] = None,
    matter: Annotated[list[str] | None, typer.Option(help="Matter or field (repeatable).")] = None,
    customer: Annotated[list[str] | None, typer.Option(help="Customer id (repeatable).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON alert per line, for scripts.")] = False,
    idle_timeout: Annotated[float, typer.Option(help="Stop after this many seconds without alerts (0: never).")] = 0,
) -> None:
    """Follow friction alerts as they are published, filtered."""
    from kafka import TopicPartition
    from pydantic import ValidationError

    from schemas.alert import FrictionAlert
    from sinks.delivery.config import Match

    s = settings()
    try:
        match = Match(kind=kind, min_severity=min_severity, tier=tier, matter=matter, customer=customer)
    except ValidationError as e:
        first = e.errors(include_url=False)[0]
        problem = f"{first['loc'][0]}: {first['msg']}"
        err.print(f"[red]bad filter[/]: {escape(problem)}")
        raise typer.Exit(2) from None
    topic = s.kafka.topics.alerts
    from pipeline.kafka.admin import consumer as kafka_consumer

    consumer = kafka_consumer(s)
    tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
    consumer.assign(tps)
    (consumer.seek_to_beginning if from_beginning else consumer.seek_to_end)(*tps)
    last = time.monotonic()
    try:
        while idle_timeout <= 0 or time.monotonic() - last < idle_timeout:
            for records in consumer.poll(timeout_ms=500).values():
                for rec in records:
                    last = time.monotonic()
                    try:
                        alert = FrictionAlert.model_validate_json(rec.value)
                    except ValidationError:
                        continue
                    if not match.matches(alert):
                        continue
                    if as_json:
                        print(alert.model_dump_json(), flush=True)
                    else:
                        console.print(render_alert(alert))
    except KeyboardInterrupt:
        pass
    finally:
        consumer.close()


def render_alert(alert: Any) -> str:
    """Rich markup for one alert; every value from the alert is escaped."""
    color = "red" if alert.severity == "high" else "yellow"
    tag = "[green]RETRACTED[/] " if alert.status == "retracted" else ""
    severity = escape(f"{alert.severity:6}")
    lines = [f"{alert.occurred_at:%Y-%m-%d %H:%M} [{color}]{severity}[/] {tag}{escape(alert.summary)}"]
    ctx = alert.context
    for c in ctx.previous_contacts:
        who = f"agent {c.agent_id}" if c.agent_id else "self-service"
        lines.append(escape(f"      earlier: {c.at:%m-%d %H:%M} {c.channel} {c.matter} {who} -> {c.outcome or '-'}"))
    if ctx.fields_given:
        given = ", ".join(f"{f.field} at {f.place} x{f.times}" for f in ctx.fields_given[:6])
        lines.append(escape(f"      already gave: {given}"))
    return "\n".join(lines)


@alerts_app.command("routes")
def alerts_routes(
    config: Annotated[Path | None, typer.Option(help="Routing file (default config/alerts.yaml).")] = None,
) -> None:
    """Validate config/alerts.yaml and list its routes."""
    from sinks.delivery.config import DEFAULT_ALERTS_CONFIG, WebhookDestination, load_alerts_config

    try:
        cfg = load_alerts_config(config or DEFAULT_ALERTS_CONFIG)
    except ConfigError as e:
        err.print(f"[red]config error[/]: {escape(str(e))}")
        raise typer.Exit(2) from None
    for route in cfg.routes:
        crit = {k: v for k, v in route.match.model_dump().items() if v is not None} or "every alert"
        console.print(f"  [bold]{escape(route.name)}[/]  match {escape(str(crit))}")
        for dest_id, dest in zip(route.destination_ids(), route.to, strict=True):
            where = getattr(dest, "url", "") or getattr(dest, "topic", "")
            note = ""
            if isinstance(dest, WebhookDestination):  # names the variables, never their values
                note = escape(f" (signed with ${dest.secret_env})") if dest.secret_env else " [yellow](UNSIGNED)[/]"
            console.print(escape(f"      -> {dest_id}: {dest.type} {where}") + note)


@alerts_app.command("deliver")
def alerts_deliver(
    config: Annotated[Path | None, typer.Option(help="Routing file (default config/alerts.yaml).")] = None,
    loglevel: Annotated[str, typer.Option(help="Log level.")] = "info",
) -> None:
    """Deliver alerts to the routes' destinations (its own consumer group; safe to restart)."""
    from pipeline.ops.delivery import run_delivery
    from pipeline.ops.logs import service_logging
    from sinks.delivery.config import DEFAULT_ALERTS_CONFIG, load_alerts_config

    s = settings()
    service_logging(loglevel, s.worker.log_repeats_every_s)
    try:
        cfg = load_alerts_config(config or DEFAULT_ALERTS_CONFIG)
    except ConfigError as e:
        err.print(f"[red]config error[/]: {escape(str(e))}")
        raise typer.Exit(2) from None
    with _as_service():
        run_delivery(s, cfg)


@app.command()
def eraser(
    config: Annotated[
        Path | None, typer.Option(help="The alert routing file whose delivery ledger erasures clean.")
    ] = None,
    loglevel: Annotated[str, typer.Option(help="Log level.")] = "info",
) -> None:
    """Finish erasures: delete the customers' ClickHouse rows as the eraser role (which the
    worker never holds), clean the delivery ledger, write the receipts. Run one beside the workers."""
    import logging

    from pipeline.ops.eraser import run_eraser
    from pipeline.ops.logs import service_logging
    from sinks.clickhouse.client import check_credentials
    from sinks.delivery.config import DEFAULT_ALERTS_CONFIG, load_alerts_config

    s = settings()
    service_logging(loglevel, s.worker.log_repeats_every_s)
    logging.getLogger("kafka").setLevel(logging.WARNING)
    path = config or DEFAULT_ALERTS_CONFIG
    try:
        ledger = load_alerts_config(path).delivery.ledger_topic if path.exists() else None
    except ConfigError as e:
        err.print(f"[red]config error[/]: {escape(str(e))}")
        raise typer.Exit(2) from None
    check_credentials(s.clickhouse.as_role("eraser"))
    with _as_service():
        run_eraser(s, *([ledger] if ledger else []))


@app.command()
def collect(
    port: Annotated[int | None, typer.Option(help="Port to listen on (default: collector.port).")] = None,
    loglevel: Annotated[str, typer.Option(help="Log level.")] = "info",
) -> None:
    """Run the HTTP collector that tracking SDKs post to (the Segment / RudderStack API): web
    touchpoints to Kafka, answered once Kafka has them (docs/sources.md)."""
    import asyncio

    from pipeline.ops.signals import run_until_signalled
    from pipeline.sources.collector import serve

    if port is not None:
        os.environ["CEM_COLLECTOR__PORT"] = str(port)
    s, sources = _sources_service(loglevel)
    if not s.collector.write_keys:
        err.print("[red]config error[/]: collector.write_keys is empty: no SDK could send (CEM_COLLECTOR__WRITE_KEYS)")
        raise typer.Exit(2)
    stop = asyncio.Event()
    with _as_service():
        run_until_signalled(lambda: serve(s, sources, stop), stop.set)


@contextlib.contextmanager
def _as_service() -> Iterator[None]:
    """Around a long-running command's work: a connection whose peer went away (EPIPE) is the
    service's error, logged with its traceback. Left to click, it would be taken for the
    output's reader gone (`cem ... | head`), and the service would end without a word."""
    import logging

    try:
        yield
    except BrokenPipeError:
        logging.getLogger("cem").exception("a connection was closed under the service")
        raise typer.Exit(1) from None


def _sources_service(loglevel: str) -> tuple[Settings, SourcesConfig]:
    """What `cem collect` and `cem adapt` start with: logging, the settings and the sources
    file (a config error ends the command with its sentence, exit code 2)."""
    import logging

    from pipeline.ops.logs import service_logging
    from pipeline.sources.settings import load_sources_config

    s = settings()
    service_logging(loglevel, s.worker.log_repeats_every_s)
    logging.getLogger("aiokafka").setLevel(logging.WARNING)
    try:
        return s, load_sources_config(s.collector.sources_file)
    except ConfigError as e:
        err.print(f"[red]config error[/]: {escape(str(e))}")
        raise typer.Exit(2) from None


@app.command()
def adapt(loglevel: Annotated[str, typer.Option(help="Log level.")] = "info") -> None:
    """Turn Amazon Connect contact records and CloudEvents on their raw topics into touchpoints
    (docs/sources.md). Run one or more beside the workers."""
    from pipeline.ops.signals import run_until_signalled
    from pipeline.sources.adapt import Adapter

    s, sources = _sources_service(loglevel)
    adapter = Adapter(s, sources)
    with _as_service():
        run_until_signalled(adapter.run, adapter.stop)


@app.command()
def generate(
    out: Annotated[Path, typer.Argument(help="Where to write the JSON lines.")],
    customers: Annotated[int, typer.Option(help="How many customers.")] = 2000,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 7,
) -> None:
    """Write a generated workload (profiles + touchpoints with friction injected)."""
    from pipeline.ops.workload import generate as gen

    n = 0
    with out.open("w") as fh:
        for line in gen(customers, seed):
            fh.write(json.dumps(line) + "\n")
            n += 1
    console.print(escape(f"wrote {n} lines to {out}"))


@app.command()
def demo(
    customers: Annotated[int, typer.Option(help="Customers in the generated workload.")] = 3000,
    story: Annotated[Path, typer.Option(help="The worked example to feed first.")] = Path(
        "scenarios/airline_story.jsonl"
    ),
) -> None:
    """End to end: topics, migrations, a worker, the airline story + a workload, a summary."""
    from pipeline.ops.demo import run_demo

    run_demo(settings(), story, customers, console)


from pipeline.ops.rules_cli import rules_app  # noqa: E402  (it reads this module's console and settings)

app.add_typer(rules_app, name="rules")


def main() -> None:
    import logging

    from clickhouse_driver.errors import NetworkError

    from pipeline.kafka.admin import KafkaUnavailable
    from sinks.clickhouse.client import ClickHouseUnavailable, tls_problem

    # SIGPIPE stays ignored, as Python leaves it: the services (worker, collector, delivery)
    # write to sockets whose peer may close at any moment, and with SIGPIPE's default action
    # such a write killed the process without a word (a worker died when the broker restarted).
    # A reader of the output that goes away (`cem ... | head`) ends the command quietly with
    # exit code 1 (click does it); for the services, see _as_service.
    # clickhouse-driver logs a failed connection with its traceback; where nothing else
    # handles logs (a short command, before the worker sets up its own), the sentence below says it
    logging.getLogger("clickhouse_driver").addHandler(logging.NullHandler())
    try:
        app()
    except (KafkaUnavailable, ClickHouseUnavailable) as e:  # a sentence, not a traceback
        err.print(f"[red]error[/]: {escape(str(e))}")
        sys.exit(3)
    except NetworkError as e:
        err.print(f"[red]error[/]: {escape(tls_problem(e) or f'ClickHouse: {e}')}")
        sys.exit(3)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())  # type: ignore[func-returns-value]
