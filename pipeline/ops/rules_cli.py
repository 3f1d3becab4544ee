"""`cem rules`: check the rule file, preview a rule over the history, backfill it (docs/rules.md)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.markup import escape
from rich.table import Table

from pipeline.ops.rules_preview import Preview, PreviewAlert, preview, rule_sql
from pipeline.settings import ConfigError, Settings
from processors.model import MICROS_PER_DAY, MICROS_PER_SECOND, AlertDraft, Rules
from processors.rules import KnownEntryRule, RuleFile, RuleFileError, parse_rule_file

rules_app = typer.Typer(help="Friction rules (config/rules.yaml): check, preview over the history, backfill.",
                        no_args_is_help=True)  # fmt: skip

FileOption = Annotated[
    Path | None, typer.Option("--file", help="A rule file to use instead of the configured one (a draft).")
]
FromOption = Annotated[str | None, typer.Option("--from", help="First day (YYYY-MM-DD, UTC) of triggers to show.")]
ToOption = Annotated[str | None, typer.Option("--to", help="Day (YYYY-MM-DD, UTC) to stop before.")]


def _cli() -> Any:
    from pipeline.ops import cli  # cli adds this group: imported when a command runs

    return cli


def _rule_file(s: Settings, path: Path | None) -> RuleFile:
    cli = _cli()
    try:
        if path is None:
            return s.rules.rule_file()
        return parse_rule_file(yaml.safe_load(path.read_text()), str(path))
    except (ConfigError, RuleFileError, OSError, yaml.YAMLError) as e:
        cli.err.print(f"[red]rule file error[/]: {escape(str(e))}")
        raise typer.Exit(2) from None


def _pick(s: Settings, name: str, path: Path | None) -> tuple[Any, Any, int]:
    """The rule (enabled or not: a rule is previewed before it is enabled), its detector, and the contacts' window."""
    cli = _cli()
    parsed = _rule_file(s, path)
    found = [r for r in parsed.rules if r.name == name]
    if not found:
        cli.err.print(
            f"[red]no rule {escape(repr(name))}[/]; the file has: {escape(', '.join(r.name for r in parsed.rules))}"
        )
        raise typer.Exit(2)
    spec = found[0].model_copy(update={"enabled": True})
    base = s.rules_obj
    rules = Rules(repeat_contact=base.repeat_contact, re_entry=base.re_entry, vip_tiers=base.vip_tiers,
                  allowed_lateness_days=base.allowed_lateness_days, friction=(spec,))  # fmt: skip
    return spec, rules.detectors[0], base.repeat_contact.window_days * 86_400


def _day(text: str | None, option: str) -> datetime | None:
    if text is None:
        return None
    try:
        return datetime.combine(date.fromisoformat(text), datetime.min.time(), UTC)
    except ValueError:
        _cli().err.print(f"[red]{option}[/]: not a day like 2026-03-01 (got {escape(repr(text))})")
        raise typer.Exit(2) from None


@rules_app.command("check")
def rules_check(file: FileOption = None) -> None:
    """Validate the rule file and list its rules."""
    cli = _cli()
    s = cli.settings()
    parsed = _rule_file(s, file)
    table = Table(title=escape(f"{file or s.rules.rules_path}"), title_justify="left")
    for col in ("rule", "version", "template", "enabled", "summary"):
        table.add_column(col)
    for r in parsed.rules:
        table.add_row(escape(r.name), str(r.version), r.template, "yes" if r.enabled else "no", escape(r.summary))
    cli.console.print(table)


@rules_app.command("preview")
def rules_preview(
    rule: Annotated[str, typer.Argument(help="The rule's name.")],
    start: FromOption = None,
    end: ToOption = None,
    file: FileOption = None,
    sample: Annotated[int, typer.Option(help="Customers to show.")] = 10,
    show_sql: Annotated[bool, typer.Option("--sql", help="Print the generated SQL instead of running it.")] = False,
) -> None:
    """What RULE would have flagged over cem.timeline: counts by day and a sample of customers.
    Exits 1 when the rule matches nothing."""
    from sinks.clickhouse.client import connect

    cli = _cli()
    s = cli.settings()
    spec, detector, contacts_s = _pick(s, rule, file)
    t0, t1 = _day(start, "--from"), _day(end, "--to")
    if show_sql:
        print(rule_sql(spec, s.clickhouse.database, contacts_s, _seconds(t0), _seconds(t1)))
        return
    client = connect(s.clickhouse.as_role("analyst"))
    result = preview(client, spec, detector, s.clickhouse.database, contacts_s, t0, t1)
    span = f"{start or 'the first event'} to {end or 'the last'}"
    if not result.flags:
        cli.console.print(escape(f"rule {rule!r} (version {spec.version}) matches nothing from {span}."))
        raise typer.Exit(1)
    render(cli.console, spec, result, span, sample)


def _seconds(t: datetime | None) -> int | None:
    return None if t is None else int(t.timestamp())


def render(console: Any, spec: Any, result: Preview, span: str, sample: int) -> None:
    customers = {f.customer_id for f in result.flags}
    console.print(escape(f"rule {spec.name!r} (version {spec.version}, {spec.template}) from {span}: "
                         f"{len(result.flags)} events flagged, {len(result.alerts)} alerts, "
                         f"{len(customers)} customers"))  # fmt: skip
    days = Table(title="by day (event time, UTC)", title_justify="left")
    for col in ("day", "flagged events", "alerts"):
        days.add_column(col)
    for d, flagged, alerted in result.by_day():
        days.add_row(d.isoformat(), str(flagged), str(alerted))
    console.print(days)
    by_customer: dict[str, list[PreviewAlert]] = {}
    for a in result.alerts:
        by_customer.setdefault(a.customer_id, []).append(a)
    table = Table(title=f"a sample of customers (the {sample} with the most alerts)", title_justify="left")
    for col in ("customer", "alerts", "last alert", "evidence"):
        table.add_column(col)
    ranked = sorted(by_customer.items(), key=lambda kv: (-len(kv[1]), kv[0]))[:sample]
    for cid, alerts in ranked:
        last = alerts[-1]
        table.add_row(escape(cid), str(len(alerts)), escape(summary_of(spec, last)), escape(", ".join(last.evidence)))
    console.print(table)


def _draft(spec: Any, a: PreviewAlert) -> AlertDraft:
    key = "field" if isinstance(spec, KnownEntryRule) else ("matter" if spec.template == "chain" else spec.key or "")
    window = spec.window_us() if spec.template != "chain" else 0
    return AlertDraft(
        kind=spec.name, customer_id=a.customer_id, subject=a.subject, trigger_uid=f"{a.trigger_channel}/{a.trigger}",
        trigger_event_id=a.trigger, t=a.t * MICROS_PER_SECOND, severity=a.severity, count=a.count,
        window_days=max(1, -(-window // MICROS_PER_DAY)) if window else 7, channels=a.channels,
        distinct_agents=a.distinct_agents, places=a.places, known_in_crm=a.known_in_crm, evidence=a.evidence,
        loyalty_tier=a.loyalty_tier, first_t=a.first_t * MICROS_PER_SECOND, key=key, rule_version=spec.version,
        summary=spec.summary,
    )  # fmt: skip


def summary_of(spec: Any, a: PreviewAlert) -> str:
    from processors.summary import summarize

    draft = _draft(spec, a)
    return summarize(draft, min(draft.first_t or draft.t, draft.t))


@rules_app.command("backfill")
def rules_backfill(
    rule: Annotated[str, typer.Argument(help="The rule's name.")],
    start: FromOption = None,
    end: ToOption = None,
    file: FileOption = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Count what would be written; write nothing.")] = False,
) -> None:
    """Write RULE's flags and alerts for the past into ClickHouse, marked backfilled. Idempotent:
    rows already flagged and alerts already there (live or backfilled) are left as they are.
    Alerts are not published on the alerts topic: they describe the past. Triggers stop at
    --to, by default the allowed lateness before now (the live judge owns the newer events)."""
    from pipeline.ops.rules_backfill import backfill
    from sinks.clickhouse.client import connect

    cli = _cli()
    s = cli.settings()
    spec, detector, contacts_s = _pick(s, rule, file)
    t0 = _day(start, "--from")
    t1 = _day(end, "--to") or datetime.now(UTC) - timedelta(days=s.rules.allowed_lateness_days)
    client = connect(s.clickhouse.as_role("admin"))
    result = preview(client, spec, detector, s.clickhouse.database, contacts_s, t0, t1)
    done = backfill(client, s.clickhouse.database, spec, result, [_draft(spec, a) for a in result.alerts], dry_run)
    verb = "would write" if dry_run else "wrote"
    cli.console.print(escape(f"rule {rule!r} (version {spec.version}) up to {t1:%Y-%m-%d}: {verb} "
                             f"{done.rows} timeline rows and {done.alerts} alerts; {done.rows_already} rows and "
                             f"{done.alerts_already} alerts were there already"))  # fmt: skip
