"""Parity: `cem rules preview` (SQL generated from the rule over cem.timeline, here on the
modern engine through chdb) flags the same events and raises the same alerts as the live
judge did over the same events, for every template. tests/integration/test_rules_parity.py
does the same through Kafka and the 18.16 server."""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from pipeline.engine.rows import alert_row, timeline_row
from pipeline.ops.rules_preview import Preview, condition_sql, preview, rule_sql
from pipeline.settings import DEFAULT_RULES
from processors.judge import AlertVersion, RowVersion
from processors.model import ReEntryRules, RepeatContactRules, Rules
from processors.rules import parse_rule_file
from sinks.clickhouse.migrate import migrate
from sinks.clickhouse.writer import ALERT_COLUMNS, TIMELINE_COLUMNS
from tests.chdb_client import ChdbClient
from tests.rules_workload import EXTRA_RULES, generate, judge_all

DATA = yaml.safe_load(DEFAULT_RULES.read_text())
DATA["rules"] += EXTRA_RULES
RULES = Rules(
    repeat_contact=RepeatContactRules(window_days=7, transfer_grace_minutes=15),
    re_entry=ReEntryRules(window_days=30),
    friction=tuple(parse_rule_file(DATA).rules),
)
SPECS = {r.name: r for r in RULES.friction or ()}
DETECTORS = {d.name: d for d in RULES.detectors}


def live(rows: list[RowVersion], alerts: list[AlertVersion]) -> tuple[dict[str, set[Any]], dict[str, set[Any]]]:
    """Per rule: the flagged events and the open alerts, as the judge left them."""
    latest: dict[tuple[str, str], RowVersion] = {}
    for r in rows:
        latest[(r.touch.customer_id, r.touch.uid)] = r
    flags: dict[str, set[Any]] = {name: set() for name in SPECS}
    for r in latest.values():
        for name in r.friction:
            flags[name].add((r.touch.customer_id, r.touch.event_id))
    final: dict[str, AlertVersion] = {}
    for a in alerts:
        final[a.alert_id] = a
    opened: dict[str, set[Any]] = {name: set() for name in SPECS}
    for a in final.values():
        if a.status == "open":
            b = a.body
            opened[b["kind"]].add((b["customer_id"], b["trigger"], b["matter"] or b["field"] or "", b["count"],
                                   b["severity"], tuple(b["evidence"])))  # fmt: skip
    return flags, opened


def previewed(p: Preview) -> tuple[set[Any], set[Any]]:
    return (
        {(f.customer_id, f.event_id) for f in p.flags},
        {(a.customer_id, a.trigger, a.subject, a.count, a.severity, a.evidence) for a in p.alerts},
    )


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ChdbClient, Any, Any]]:
    client = ChdbClient(str(tmp_path_factory.mktemp("rules")))
    migrate(client, "cem")
    profiles, events = generate(seed=5, customers=60)
    random.Random(1).shuffle(events)  # arrival order is not event order: late events rewrite rows
    rows, alerts = judge_all(profiles, events, RULES)
    for i in range(0, len(rows), 500):  # every version, as the worker writes them
        client.execute(f"INSERT INTO cem.timeline_versions ({', '.join(TIMELINE_COLUMNS)}) VALUES",
                       [timeline_row(r, 0) for r in rows[i : i + 500]])  # fmt: skip
    client.execute(f"INSERT INTO cem.friction_alert_versions ({', '.join(ALERT_COLUMNS)}) VALUES",
                   [alert_row(a, ("t", 0, 0), 0) for a in alerts])  # fmt: skip
    yield client, *live(rows, alerts)
    client.close()


@pytest.mark.parametrize("name", sorted(SPECS))
def test_preview_flags_and_alerts_what_the_judge_did(loaded: Any, name: str) -> None:
    client, flags, alerts = loaded
    got_flags, got_alerts = previewed(preview(client, SPECS[name], DETECTORS[name], "cem", 7 * 86400))
    assert flags[name], f"the workload gives {name} nothing to flag: the comparison would prove nothing"
    assert alerts[name]
    assert got_flags == flags[name]
    assert got_alerts == alerts[name]


def test_preview_by_day_and_range(loaded: Any) -> None:
    from datetime import UTC, datetime

    client, flags, _ = loaded
    whole = preview(client, SPECS["repeat_contact"], DETECTORS["repeat_contact"], "cem", 7 * 86400)
    days = whole.by_day()
    assert sum(n for _, n, _ in days) == len(flags["repeat_contact"]) and len(days) > 1
    start = datetime.combine(days[1][0], datetime.min.time(), UTC)
    part = preview(client, SPECS["repeat_contact"], DETECTORS["repeat_contact"], "cem", 7 * 86400, start=start)
    assert part.by_day() == days[1:]  # the days before `start` only served as look-back


def test_conditions_as_sql() -> None:
    assert condition_sql(None) == "1"
    assert condition_sql({"channel": "web", "type": ["chat", "contact_form"]}) == (
        "((toString(channel) IN ('web') AND type IN ('chat', 'contact_form')))"
    )
    assert condition_sql([{"contact": {"not": "new"}}, {"fields": ["address"]}]) == (
        "((contact NOT IN ('new')) OR (hasAny(fields, ['address'])))"
    )
    for spec in SPECS.values():  # portable SQL: no window functions, no CTEs
        sql = rule_sql(spec, "cem", 7 * 86400)
        assert " OVER " not in sql.upper() and not sql.lstrip().upper().startswith("WITH")


def test_backfill_writes_a_new_rules_flags_and_alerts_once(loaded: Any) -> None:
    from pipeline.ops.rules_backfill import backfill
    from pipeline.ops.rules_cli import _draft

    client, flags, alerts = loaded
    # a rule the judge did not run: the workload's chats followed by an email within a day
    draft = parse_rule_file({"rules": [{"name": "chat_then_email", "template": "sequence", "version": 2,
                                        "first": {"type": "chat"}, "then": {"type": "email"}, "window": "1d",
                                        "summary": "{who} chatted, then wrote to us {span}."}]}).rules[0]  # fmt: skip
    detector = Rules(friction=(draft,)).detectors[0]
    result = preview(client, draft, detector, "cem", 7 * 86400)
    assert result.flags and result.alerts
    drafts = [_draft(draft, a) for a in result.alerts]
    first = backfill(client, "cem", draft, result, drafts)
    assert (first.rows, first.alerts, first.rows_already, first.alerts_already) == (
        len(result.flags), len(result.alerts), 0, 0)  # fmt: skip
    again = backfill(client, "cem", draft, preview(client, draft, detector, "cem", 7 * 86400), drafts)
    assert (again.rows, again.alerts) == (0, 0) and again.rows_already == len(result.flags)
    flagged = client.execute("SELECT customer_id, event_id FROM cem.timeline WHERE has(friction, 'chat_then_email')")
    assert set(flagged) == {(f.customer_id, f.event_id) for f in result.flags}
    written = client.execute(
        "SELECT count(), min(backfilled), min(rule_version), min(toString(status)) FROM cem.friction_alerts "
        "WHERE kind = 'chat_then_email'"
    )
    assert written == [(len(result.alerts), 1, 2, "open")]
    # the rule's flags come on top of the others the rows had
    ((kept,),) = client.execute(
        "SELECT count() FROM cem.timeline WHERE has(friction, 'chat_then_email') AND length(friction) > 1"
    )
    assert kept > 0
    # a rule the judge ran live: everything is there already
    live_rule = SPECS["repeat_contact"]
    live_result = preview(client, live_rule, DETECTORS["repeat_contact"], "cem", 7 * 86400)
    same = backfill(client, "cem", live_rule, live_result, [_draft(live_rule, a) for a in live_result.alerts],
                    dry_run=True)  # fmt: skip
    assert same.rows == 0 and same.rows_already == len(flags["repeat_contact"])
    assert same.alerts == 0 and same.alerts_already == len(alerts["repeat_contact"])
