"""Helpers for scenario tests: load the worked example, and run lines through the pure core.

`run_pure` applies the same steps as the Faust agents (decode, resolve, judge) without Kafka,
so unit tests can check the contract's results for any arrival order.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pipeline.engine.decode import Rejected, decode_profile, decode_touchpoint
from pipeline.settings import FIELD_VOCABULARY, MATTER_VOCABULARY, RulesSettings, Topics
from processors.identity import profile_fingerprints, resolve
from processors.judge import AlertVersion, CustomerState, Profile, RowVersion, apply_profile, judge
from processors.model import Rules
from processors.normalize import to_touch
from schemas.profile import ProfileSnapshot

ROOT = Path(__file__).resolve().parent.parent
STORY = ROOT / "scenarios" / "airline_story.jsonl"
EXPECTED = ROOT / "scenarios" / "airline_story.expected.json"
SECRET = b"test-secret"
TOPICS = Topics()
MATTERS = frozenset(MATTER_VOCABULARY)
#: the rules of the default rule file (config/rules.yaml), as the worker runs them
DEFAULT_RULES = RulesSettings().to_rules()


def load_lines(path: Path = STORY) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def load_expected() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(EXPECTED.read_text())
    return data


@dataclass
class PureResult:
    rows: dict[str, dict[str, Any]] = field(default_factory=dict)  # event_id -> latest row
    alerts: dict[str, dict[str, Any]] = field(default_factory=dict)  # alert_id -> latest revision
    rejected: list[Rejected] = field(default_factory=list)
    duplicates: int = 0
    row_versions: list[RowVersion] = field(default_factory=list)  # every version, as written
    alert_versions: list[AlertVersion] = field(default_factory=list)

    def open_alerts(self) -> dict[str, dict[str, Any]]:
        return {k: v for k, v in self.alerts.items() if v["status"] == "open"}


def run_pure(lines: Iterable[dict[str, Any]], rules: Rules | None = None) -> PureResult:
    """Profiles are applied first (as the scenario requires), then touchpoints in the given order;
    with the default rule file's rules unless told."""
    rules = rules or DEFAULT_RULES
    lines = list(lines)
    index: dict[str, str] = {}
    states: dict[str, CustomerState] = {}
    out = PureResult()
    vocab = frozenset(FIELD_VOCABULARY)
    now = datetime(2026, 11, 1, tzinfo=UTC)
    for line in lines:
        if line["topic"] != TOPICS.profiles:
            continue
        key = line["key"].encode() if line.get("key") else None
        raw = None if line["value"] is None else json.dumps(line["value"]).encode()
        p = decode_profile(key, raw, vocabulary=vocab, max_bytes=1 << 20)
        assert isinstance(p, ProfileSnapshot), p
        fps = profile_fingerprints(p.identifiers.email, p.identifiers.phone, p.identifiers.loyalty_id, SECRET)
        st = states.setdefault(p.customer_id, CustomerState(p.customer_id))
        apply_profile(st, Profile(p.version, p.loyalty_tier, tuple(p.known_fields), tuple(fps)))
        index.update({fp: p.customer_id for fp in fps})
    for line in lines:
        channel = TOPICS.channel_of(line["topic"])
        if channel is None:
            continue
        raw = line["value"] if isinstance(line["value"], bytes) else json.dumps(line["value"]).encode()
        ev = decode_touchpoint(
            channel,  # type: ignore[arg-type]
            raw,
            vocabulary=vocab,
            now=now,
            max_future=timedelta(days=1),
            max_bytes=1 << 18,
        )
        if isinstance(ev, Rejected):
            out.rejected.append(ev)
            continue
        res = resolve(ev.customer_id, ev.identifiers, index.get, SECRET)
        if res.link_anonymous:
            index[res.link_anonymous] = res.customer_id
        st = states.setdefault(res.customer_id, CustomerState(res.customer_id))
        touch = to_touch(channel, ev, res.customer_id, res.resolved_by, matters=MATTERS)  # type: ignore[arg-type]
        _, verdict = judge(st, touch, rules, now_us=0)
        out.duplicates += verdict.duplicate
        out.row_versions.extend(verdict.rows)
        out.alert_versions.extend(verdict.alerts)
        for r in verdict.rows:
            out.rows[r.touch.event_id] = {
                "customer_id": r.touch.customer_id,
                "friction": list(r.friction),
                "reentered": list(r.reentered),
                "resolved_by": r.touch.resolved_by,
                "revision": r.revision,
            }
        for a in verdict.alerts:
            out.alerts[a.alert_id] = {"status": a.status, "revision": a.revision, **a.body}
    return out
