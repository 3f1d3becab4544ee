"""A hypothesis-driven fuzz run: 10,000 malformed messages interleaved with valid ones. Every
malformed one lands in the dead-letter topic with a reason naming the field, every valid one is
processed, and the worker never restarts. Then `cem dlq export` / `cem dlq replay --file`
re-feed fixed messages."""

from __future__ import annotations

import json
import random
from collections import Counter
from typing import Any

import pytest
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

from pipeline.kafka.admin import Record, producer, send_all, wait_until_processed
from pipeline.kafka.admin import read_to_end as read_topic
from tests.integration.conftest import Namespace

pytestmark = pytest.mark.faults
MALFORMED = 10_000
VALID = 2_000
HUGE = 5

BASE = {
    "web": {"type": "form_submit", "form": "checkin/passenger-details", "fields": ["passport_number"]},
    "callcenter": {"type": "call", "reason": "refund_status", "agent_id": "A-1", "duration_s": 60},
    "booking": {"type": "passenger_details", "step": "manage-booking/passenger", "fields": ["name"]},
}

# kind -> (how to break a valid event, expected reason, expected field); {ch} = channel
KINDS = {
    "truncated_json": ("truncate", "invalid_json", ""),
    "not_an_object": ("array", "invalid_json", ""),
    "event_id_wrong_type": (("event_id", 12345), "invalid_field", "event_id"),
    "customer_id_wrong_type": (("customer_id", ["C-1"]), "invalid_field", "customer_id"),
    "fields_wrong_type": (("fields", "passport_number"), "invalid_field", "fields"),
    "unknown_field_name": (("fields", ["shoe_size"]), "invalid_field", "fields.0"),
    "missing_event_id": (("event_id", ...), "missing_field", "event_id"),
    "missing_occurred_at": (("occurred_at", ...), "missing_field", "occurred_at"),
    "unknown_type": (("type", "teleport"), "invalid_field", "type"),
    "no_offset": (("occurred_at", "2026-03-02T10:00:00"), "invalid_field", "occurred_at"),
    "far_future": (("occurred_at", "2099-01-01T00:00:00Z"), "invalid_field", "occurred_at"),
    # before ClickHouse's DateTime, or older than worker.max_past_days: its row could never be written
    "before_1970": (("occurred_at", "1969-07-20T20:17:00Z"), "invalid_field", "occurred_at"),
    "year_one": (("occurred_at", "0001-01-01T00:00:00+00:00"), "invalid_field", "occurred_at"),
    "too_old": (("occurred_at", "2015-06-01T00:00:00Z"), "invalid_field", "occurred_at"),
    "nobody": (("customer_id", ...), "invalid_field", "customer_id"),
    "oversized": ("oversize", "too_large", ""),
    "invalid_utf8": ("utf8", "invalid_utf8", ""),
}


def valid_event(channel: str, i: int, customer: str) -> dict[str, Any]:
    day = 1 + i % 27
    return {"event_id": f"{channel[0]}-{i}", "occurred_at": f"2026-03-{day:02d}T{i % 24:02d}:{i % 60:02d}:00Z",
            "customer_id": customer, **BASE[channel]}  # fmt: skip


def break_event(event: dict[str, Any], how: Any, rnd: random.Random) -> bytes:
    if how == "truncate":
        raw = json.dumps(event)
        return raw[: rnd.randint(1, len(raw) - 2)].encode()
    if how == "array":
        return json.dumps([event]).encode()
    if how == "oversize":
        return json.dumps({**event, "note": "x" * 300_000}).encode()
    if how == "hugeish":
        return json.dumps({**event, "note": "x" * 1_000_000}).encode()
    if how == "utf8":
        return (
            json.dumps(event)
            .replace('"customer_id": "', '"customer_id": "\udcff', 1)
            .encode("utf-8", "surrogateescape")
        )
    field, value = how
    broken = {k: v for k, v in event.items() if k != field}
    if value is not ...:
        broken[field] = value
    return json.dumps(broken).encode()


def draw_recipes() -> list[tuple[str, int]]:
    """Hypothesis draws the malformations; drawing only, so a failure is never re-run (the run
    has side effects on Kafka). The seed is printed by hypothesis on failure for reproduction."""
    drawn: list[list[tuple[str, int]]] = []

    @settings(max_examples=1, deadline=None, database=None, phases=[Phase.generate])
    @given(
        st.lists(st.tuples(st.sampled_from(sorted(BASE)), st.integers(0, 2**32)), min_size=61, max_size=61, unique=True)
    )
    def draw(recipes: list[tuple[str, int]]) -> None:
        drawn.append(recipes)

    draw()
    return drawn[0]


def test_fuzzed_input_goes_to_the_dead_letter_topic_with_reasons(space: Namespace) -> None:
    recipes = draw_recipes()  # channel and seed per recipe; kinds cycle so that every kind is covered
    kinds = sorted(KINDS)
    topics = space.settings.kafka.topics
    worker = space.start_worker()
    messages: list[tuple[Record, tuple[str, str] | None]] = []
    for i in range(MALFORMED):
        # kinds and channels cycle (17 and 3 are coprime: every pair occurs); hypothesis draws
        # the seeds that decide how each message is broken (where JSON is cut, and so on)
        kind = kinds[i % len(kinds)]
        channel = sorted(BASE)[i % len(BASE)]
        _, seed = recipes[i % len(recipes)]
        rnd = random.Random(seed + i)
        how, reason, field = KINDS[kind]
        raw = break_event(valid_event(channel, 100_000 + i, f"F-{i % 500}"), how, rnd)
        messages.append((Record(getattr(topics, channel), f"bad-{i}".encode(), raw), (reason, field)))
    for i in range(HUGE):  # too large for their dead-letter copy to go whole: it is cut
        raw = break_event(valid_event("web", 200_000 + i, "F-huge"), "hugeish", random.Random(i))
        messages.append((Record(topics.web, f"huge-{i}".encode(), raw), ("too_large", "")))
    for i in range(VALID):
        channel = sorted(BASE)[i % 3]
        raw = json.dumps(valid_event(channel, i, f"V-{i % 400}")).encode()
        messages.append((Record(getattr(topics, channel), None, raw), None))
    random.Random(len(recipes)).shuffle(messages)

    prod = producer(space.settings)
    send_all(prod, [m for m, _ in messages])
    prod.close()
    wait_until_processed(space.settings, timeout_s=600)

    expected = Counter((m.key, why) for m, why in messages if why is not None)
    dead = read_topic(space.settings, topics.deadletter, timeout_s=120)
    got = Counter()
    for rec in dead:
        h = {k: v.decode() for k, v in rec.headers}
        got[(rec.key, (h["cem.error.reason"], h["cem.error.field"]))] += 1
        assert h["cem.source.topic"] in (topics.web, topics.callcenter, topics.booking)
        if rec.key.startswith(b"huge-"):
            assert int(h["cem.error.truncated"]) > len(rec.value)
    assert got == expected  # each malformed message once, with the reason naming its field
    ((rows,),) = space.ch().execute(f"SELECT count() FROM {space.db}.timeline")
    assert rows == VALID  # every valid one processed
    assert worker.poll() is None and space.stats(worker)["ready"]  # and the worker never restarted
    assert sum(space.stats(worker)["events_in"].values()) == MALFORMED + HUGE + VALID

    # an operator fixes the naive timestamps by hand and replays them
    export = space.tmp / "dlq.jsonl"
    assert "wrote" in space.cem("dlq", "export", str(export), "--reason", "invalid_field").stdout
    fixed = []
    for line in export.read_text().splitlines():
        obj = json.loads(line)
        if obj["field"] == "occurred_at" and '"2026-03-' in obj["value"]:
            value = json.loads(obj["value"])
            value["occurred_at"] += "Z"
            fixed.append(json.dumps({**obj, "value": json.dumps(value)}))
    assert fixed
    (space.tmp / "fixed.jsonl").write_text("\n".join(fixed) + "\n")
    assert f"replayed {len(fixed)}" in space.cem("dlq", "replay", "--file", str(space.tmp / "fixed.jsonl")).stdout
    wait_until_processed(space.settings, timeout_s=300)
    ((rows,),) = space.ch().execute(f"SELECT count() FROM {space.db}.timeline")
    assert rows == VALID + len(fixed)
