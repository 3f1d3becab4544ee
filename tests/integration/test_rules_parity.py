"""Rules live and over the history agree, on the real Kafka broker and ClickHouse 18.16: a
workload through the stream (shuffled: late events rewrite rows and retract alerts), then
`cem rules preview`'s SQL over the timeline the worker wrote, flags the same events and
raises the same alerts, for every template. A rule added to the rule file, with no code
change, flags a labelled workload exactly (precision and recall 1.0), live and in preview."""

from __future__ import annotations

import json
import random
from datetime import timedelta
from pathlib import Path
from typing import Any

import yaml

from pipeline.kafka.admin import Record, producer, send_all, wait_until_processed
from pipeline.ops.rules_preview import preview
from pipeline.settings import DEFAULT_RULES
from processors.model import ReEntryRules, RepeatContactRules, Rules
from processors.rules import parse_rule_file
from tests.integration.conftest import Namespace
from tests.rules_workload import EXTRA_RULES, T0, _iso, generate

#: the rule added for this test only: check-in started again within a day (the random
#: workload has no check-in events, so the labelled customers are the only ones it can flag)
CHECKIN_RETRIED = {
    "name": "checkin_retried", "template": "repeat", "version": 1,
    "match": {"channel": "booking", "type": "checkin_started"}, "window": "1d", "threshold": 2, "cooldown": "1d",
    "severity": {"vip": "high"}, "summary": "{who} started check-in {count} times {span}.",
}  # fmt: skip


def labelled(n: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]], set[tuple[str, str]]]:
    """Customers L-*: check-in started twice 2 h apart (labelled: the second is the trigger), or
    a near miss (30 h apart), among page views, failed payments and bookings."""
    rng = random.Random(7)
    profiles, events, labels = [], [], set()
    for c in range(n):
        cid = f"L-{c:03d}"
        profiles.append({"customer_id": cid, "version": 1, "updated_at": "2026-01-01T00:00:00Z",
                         "loyalty_tier": "none", "known_fields": []})  # fmt: skip
        t = T0 + timedelta(hours=rng.randrange(100))
        gap = timedelta(hours=2 if c % 3 else 30)
        for i, (type_, at) in enumerate((("page_view", t), ("checkin_started", t + timedelta(minutes=5)),
                                         ("payment_failed", t + gap / 2), ("checkin_started", t + gap),
                                         ("booking_created", t + gap + gap))):  # fmt: skip
            eid = f"L{c}-{i}"
            channel = "web" if type_ == "page_view" else "booking"
            value = {"event_id": eid, "occurred_at": _iso(at), "customer_id": cid, "type": type_}
            value |= {"session_id": "s"} if channel == "web" else {"booking_ref": f"R{c}"}
            events.append({"channel": channel, "value": value})
        if c % 3:
            labels.add((cid, f"L{c}-3"))
    return profiles, events, labels


def _records(ns: Namespace, profiles: list[dict[str, Any]], events: list[dict[str, Any]]) -> tuple[list[Record], ...]:
    t = ns.settings.kafka.topics
    topic = {"web": t.web, "call_center": t.callcenter, "booking": t.booking}
    return (
        [Record(t.profiles, p["customer_id"].encode(), json.dumps(p).encode()) for p in profiles],
        [Record(topic[e["channel"]], None, json.dumps(e["value"]).encode()) for e in events],
    )


def test_every_template_live_equals_preview_and_a_new_rule_is_exact(space: Namespace, tmp_path: Path) -> None:
    data = yaml.safe_load(DEFAULT_RULES.read_text())
    data["rules"] += [*EXTRA_RULES, CHECKIN_RETRIED]
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    space.start_worker(env={"CEM_RULES__FILE": str(path), "CEM_RULES__ALLOWED_LATENESS_DAYS": "30"})

    profiles, events = generate(seed=11, customers=50)
    more_profiles, more_events, labels = labelled(30)
    profile_records, event_records = _records(space, profiles + more_profiles, events + more_events)
    random.Random(3).shuffle(event_records)
    prod = producer(space.settings)
    send_all(prod, profile_records)
    wait_until_processed(space.settings, timeout_s=120)
    half = len(event_records) // 2  # two waves: the second holds events older than the first's newest
    send_all(prod, event_records[:half])
    wait_until_processed(space.settings, timeout_s=180)
    send_all(prod, event_records[half:])
    wait_until_processed(space.settings, timeout_s=180)
    prod.close()

    ch = space.ch()
    db = space.db
    rules = Rules(repeat_contact=RepeatContactRules(), re_entry=ReEntryRules(),
                  friction=tuple(parse_rule_file(data).rules))  # fmt: skip
    detectors = {d.name: d for d in rules.detectors}
    timeline = ch.execute(f"SELECT customer_id, event_id, friction FROM {db}.timeline")
    assert len(timeline) == len(events) + len(more_events)  # each touchpoint once
    alerts = ch.execute(
        f"SELECT kind, customer_id, trigger_event_id, if(matter != '', matter, field), count, toString(severity), "
        f"evidence, rule_version FROM {db}.friction_alerts WHERE status = 'open'"
    )
    for spec in rules.friction or ():
        live_flags = {(c, e) for c, e, friction in timeline if spec.name in friction}
        live_alerts = {(c, t, s, n, sev, tuple(ev)) for k, c, t, s, n, sev, ev, _ in alerts if k == spec.name}
        got = preview(ch, spec, detectors[spec.name], db, 7 * 86400)
        assert live_flags, f"{spec.name} flagged nothing: the comparison would prove nothing"
        assert {(f.customer_id, f.event_id) for f in got.flags} == live_flags, spec.name
        assert {(a.customer_id, a.trigger, a.subject, a.count, a.severity, a.evidence) for a in got.alerts} == (
            live_alerts
        ), spec.name
    assert {v for *_, v in alerts} == {1}  # alerts carry their rule's version

    # the new rule flags the labelled workload exactly (precision and recall 1.0), live and in preview
    live_new = {(c, t) for k, c, t, *_ in alerts if k == "checkin_retried"}
    assert live_new == labels
    assert {(c, e) for c, e, friction in timeline if "checkin_retried" in friction} == labels
    got = preview(ch, parse_rule_file(data).rules[-1], detectors["checkin_retried"], db, 7 * 86400)
    assert {(a.customer_id, a.trigger) for a in got.alerts} == labels
    assert space.stats()["row_rewrites"] > 0  # the order was not event order: late events rewrote rows

    # the command line: a preview, and a rule that matches nothing
    env_file = {"CEM_RULES__FILE": str(path)}
    out = space.cem("rules", "preview", "checkin_retried", "--sample", "3", check=False)
    assert out.returncode == 2 and "no rule 'checkin_retried'" in out.stderr  # not in the default file
    space.env.update(env_file)
    out = space.cem("rules", "preview", "checkin_retried", "--sample", "3")
    assert "events flagged" in out.stdout and "by day" in out.stdout
    out = space.cem("rules", "preview", "checkin_retried", "--from", "2027-01-01", check=False)
    assert out.returncode == 1 and "matches nothing" in out.stdout

    # backfill: a rule the worker ran writes nothing; a draft rule writes its flags and alerts once
    out = space.cem("rules", "backfill", "failed_self_service", "--to", "2026-12-01")
    assert "wrote 0 timeline rows and 0 alerts" in out.stdout, out.stdout
    draft = tmp_path / "draft.yaml"
    chat_then_email = {"name": "chat_then_email", "template": "sequence", "version": 2, "first": {"type": "chat"},
                       "then": {"type": "email"}, "window": "1d", "summary": "{who} chatted, then wrote."}  # fmt: skip
    draft.write_text(yaml.safe_dump({"rules": [chat_then_email]}))
    first = space.cem("rules", "backfill", "chat_then_email", "--file", str(draft), "--to", "2026-12-01").stdout
    again = space.cem("rules", "backfill", "chat_then_email", "--file", str(draft), "--to", "2026-12-01").stdout
    written = ch.execute(f"SELECT count(), min(backfilled), min(rule_version) FROM {db}.friction_alerts "
                         "WHERE kind = 'chat_then_email' AND status = 'open'")  # fmt: skip
    ((n, backfilled, version),) = written
    assert n > 0 and (backfilled, version) == (1, 2)
    assert f"and {n} alerts;" in first and "wrote 0 timeline rows and 0 alerts" in again, (first, again)
