"""Bad input against a running `cem collect` and the real broker: malformed JSON, wrong types,
oversized bodies, unknown write keys, gzip bombs, and 10,000 fuzzed requests. Each gets the
answer its kind calls for, the collector stays up, only the accepted requests' touchpoints
reach the topic (each one valid for the worker), and the log holds no identifier value."""

from __future__ import annotations

import base64
import gzip
import json
import random
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import requests

from pipeline.engine.decode import Rejected, decode_touchpoint
from pipeline.kafka.admin import read_to_end
from tests.integration.collector_kit import WRITE_KEYS, start_collector
from tests.integration.conftest import Namespace

FIELDS = ["name", "email", "phone", "address", "date_of_birth", "passport_number", "loyalty_id", "payment_card"]
EMAIL_DOMAIN = "@fuzz.example.com"


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{key}:".encode()).decode()}


GOOD = _auth(WRITE_KEYS["website"])


class Fuzz:
    """Requests of known kinds, each with the answer it must get: (status, field or None)."""

    def __init__(self, seed: int) -> None:
        self.rnd = random.Random(seed)
        self.n = 0
        self.t0 = datetime.now(UTC) - timedelta(days=3)
        self.last_valid = b""
        # 20 MB of JSON whitespace in about 20 KB
        self.bomb = gzip.compress(b'{"batch": [' + b" " * 20_000_000)

    def message(self) -> tuple[dict[str, Any], bool]:
        """A valid message, and whether it becomes a touchpoint (an unmapped event does not)."""
        self.n += 1
        rnd, n = self.rnd, self.n
        base: dict[str, Any] = {
            "messageId": f"fz-{n}",
            "anonymousId": f"visitor-{rnd.randrange(50)}",
            "timestamp": (self.t0 + timedelta(seconds=n)).isoformat(),
            "context": {"library": {"name": "fuzz"}, "traits": {"phone": f"+351 91{n:07d}"}},
        }
        kind = rnd.choice(["page", "form", "identify", "contact", "unmapped", "alias"])
        if kind == "page":
            return base | {"type": "page", "name": "Home", "properties": {"path": f"/p/{n}"}}, True
        if kind == "form":
            fields = rnd.sample(FIELDS, rnd.randint(0, 3))
            props = {"form": f"form-{rnd.randrange(5)}", "fields": fields}
            return base | {"type": "track", "event": "Form Submitted", "properties": props}, True
        if kind == "identify":
            return base | {"type": "identify", "userId": f"C-{n}", "traits": {"email": f"u{n}{EMAIL_DOMAIN}"}}, True
        if kind == "contact":
            props = {"reason": rnd.choice(["baggage_allowance", "refund status", "x"])}
            return base | {"type": "track", "event": "Contact Form Submitted", "properties": props}, True
        if kind == "alias":
            return {k: v for k, v in base.items() if k != "anonymousId"} | {
                "type": "alias",
                "previousId": f"visitor-{n}",
                "userId": f"C-{n}",
            }, True
        return base | {"type": "track", "event": "Product Viewed"}, False

    def batch(self, size: int | None = None) -> tuple[list[dict[str, Any]], list[str]]:
        msgs, ids = [], []
        for _ in range(size or self.rnd.randint(1, 6)):
            m, forwarded = self.message()
            msgs.append(m)
            if forwarded:
                ids.append(m["messageId"])
        return msgs, ids

    def wrong_type(self, msgs: list[dict[str, Any]]) -> str:
        """Spoil one field of one message with a value of a type it cannot have; its path."""
        i = self.rnd.randrange(len(msgs))
        m = msgs[i]
        choices: dict[str, list[Any]] = {
            "messageId": [1, True, [], {}, None, "x" * 129],
            "timestamp": [1700000000, True, [], "yesterday", "2026-13-01T00:00:00Z", "2026-01-01T00:00:00"],
            "anonymousId": [True, 1.5, [], {}],
            "userId": [False, 2.5, ["C-1"], {"id": 1}],
            "context": [1, "ctx", []],
            "type": ["purchase", 1, None],
        }
        if m["type"] == "track":
            choices["event"] = [1, [], ""]
        if "properties" in m:
            choices["properties"] = [1, "props", [1]]
        if m.get("event") == "Form Submitted":
            choices["properties.fields"] = ["passport_number", 7]
            choices["properties.fields.0"] = ["ssn", "Ana Silva", 3]
            choices["properties.form"] = [5, [], ""]
            m["properties"]["fields"] = m["properties"]["fields"] or ["email"]
        if m["type"] == "identify":
            choices["traits.email"] = [5, [], {"v": 1}]
        path = self.rnd.choice(sorted(choices))
        value = self.rnd.choice(choices[path])
        target = m
        *parents, last = path.split(".")
        for p in parents:
            target = target[p]
        if isinstance(target, list):
            target[int(last)] = value
        else:
            target[last] = value
        return f"batch.{i}.{path}"

    def unknown_keys(self, msgs: list[dict[str, Any]]) -> None:
        for m in msgs:
            m[f"x_{self.rnd.randrange(1000)}"] = self.rnd.choice([1, "v", [1, 2], {"deep": {"er": None}}])
            m.setdefault("properties", {})[f"extra_{self.n}"] = "value"
            m["context"][f"ctx_{self.n}"] = {"a": [1]}


def _one(fuzz: Fuzz) -> tuple[bytes, dict[str, str], int, str | None, list[str]]:
    """(body, headers, expected status, expected field, event ids it forwards)."""
    rnd = fuzz.rnd
    kind = rnd.choices(
        ["valid", "gzip", "unknown_keys", "truncated", "wrong_type", "too_big_message", "too_big_body",
         "bad_key", "no_key", "bomb", "garbage", "encoding", "replay"],
        weights=[20, 8, 8, 10, 20, 3, 2, 4, 3, 2, 10, 2, 8],
    )[0]  # fmt: skip
    msgs, ids = fuzz.batch()
    headers = dict(GOOD)
    if kind == "replay" and fuzz.last_valid:  # an SDK's retry: the same messages again, accepted, counted once
        return fuzz.last_valid, headers, 200, None, []
    if kind in ("valid", "replay"):
        fuzz.last_valid = json.dumps({"batch": msgs, "sentAt": "now", "writeKey": "ignored"}).encode()
        return fuzz.last_valid, headers, 200, None, ids
    if kind == "gzip":
        headers["Content-Encoding"] = "gzip"
        return gzip.compress(json.dumps({"batch": msgs}).encode()), headers, 200, None, ids
    if kind == "unknown_keys":
        fuzz.unknown_keys(msgs)
        return json.dumps({"batch": msgs, "surprise": {"k": 1}}).encode(), headers, 200, None, ids
    if kind == "truncated":
        body = json.dumps({"batch": msgs}).encode()
        return body[: rnd.randrange(1, len(body) - 1)], headers, 400, None, []
    if kind == "wrong_type":
        field = fuzz.wrong_type(msgs)
        return json.dumps({"batch": msgs}).encode(), headers, 400, field, []
    if kind == "too_big_message":
        i = rnd.randrange(len(msgs))
        msgs[i]["properties"] = {"blob": "x" * 33_000}
        return json.dumps({"batch": msgs}).encode(), headers, 413, f"batch.{i}", []
    if kind == "too_big_body":
        many, _ = fuzz.batch(1)
        big = {"batch": many * 3000}  # each message is small; the body is not
        return json.dumps(big).encode(), headers, 413, None, []
    if kind in ("bad_key", "no_key"):
        if kind == "bad_key":
            headers = _auth(rnd.choice(["", "wk-unknown-0123456789", WRITE_KEYS["website"] + "x"]))
        else:
            headers = {}
        return json.dumps({"batch": msgs}).encode(), headers, 401, None, []
    if kind == "bomb":
        headers["Content-Encoding"] = "gzip"
        return fuzz.bomb, headers, 413, None, []
    if kind == "garbage":
        if rnd.random() < 0.3:
            headers["Content-Encoding"] = "gzip"
        return rnd.randbytes(rnd.randint(0, 300)), headers, 400, None, []
    headers["Content-Encoding"] = rnd.choice(["br", "deflate", "compress"])
    return json.dumps({"batch": msgs}).encode(), headers, 415, None, []


SNOWPLOW = "/com.snowplowanalytics.snowplow/tp2"


def _snowplow_case(fuzz: Fuzz) -> tuple[bytes, dict[str, str], int, str | None, list[str]]:
    """A Snowplow tp2 request: valid, with a spoiled field, truncated, or without a key."""
    rnd = fuzz.rnd
    events, ids = [], []
    for _ in range(rnd.randint(1, 5)):
        fuzz.n += 1
        n = fuzz.n
        ev: dict[str, Any] = {"eid": f"sp-{n}", "dtm": str(int((fuzz.t0 + timedelta(seconds=n)).timestamp() * 1000))}
        ev["duid"] = f"cookie-{rnd.randrange(40)}"
        if rnd.random() < 0.3:
            ev["uid"] = f"C-{n}"
        kind = rnd.choice(["pv", "se", "ue", "pp"])
        if kind == "pv":
            ev |= {"e": "pv", "url": f"https://air.example/p/{n}?email=u{n}{EMAIL_DOMAIN}"}
        elif kind == "se":
            ev |= {"e": "se", "se_ca": "help", "se_ac": "Contact Form Submitted", "se_la": "refund_status"}
        elif kind == "ue":
            form = {"formId": f"form-{n % 3}", "elements": [{"name": "email", "value": f"u{n}{EMAIL_DOMAIN}"}]}
            schema = "iglu:com.snowplowanalytics.snowplow/submit_form/jsonschema/1-0-0"
            sdj = {"schema": "iglu:x/unstruct_event/jsonschema/1-0-0", "data": {"schema": schema, "data": form}}
            ev |= {"e": "ue", "ue_px": base64.urlsafe_b64encode(json.dumps(sdj).encode()).decode()}
        else:
            ev |= {"e": "pp"}  # a page ping: accepted, not forwarded
        events.append(ev)
        if kind != "pp":
            ids.append(ev["eid"])
    body = {"schema": "iglu:com.snowplowanalytics.snowplow/payload_data/jsonschema/1-0-4", "data": events}
    case = rnd.choice(["valid", "valid", "wrong_type", "truncated", "no_key"])
    if case == "valid":
        return json.dumps(body).encode(), dict(GOOD), 200, None, ids
    if case == "wrong_type":
        i = rnd.randrange(len(events))
        field, bad = rnd.choice(
            [("eid", 7), ("eid", None), ("dtm", "noon"), ("dtm", 1700000000000), ("duid", ["x"]), ("e", 3)]
        )
        events[i][field] = bad
        return json.dumps(body).encode(), dict(GOOD), 400, f"data.{i}.{field}", []
    raw = json.dumps(body).encode()
    if case == "truncated":
        return raw[: rnd.randrange(1, len(raw) - 1)], dict(GOOD), 400, None, []
    return raw, {}, 401, None, []


def _check(space: Namespace, expect_ids: set[str]) -> None:
    """Only touchpoints of accepted requests are on the web topic, each valid for the worker;
    nothing on the other channel topics."""
    topics = space.settings.kafka.topics
    s = space.settings
    seen = []
    for rec in read_to_end(s, topics.web):
        event = decode_touchpoint(
            "web",
            rec.value,
            vocabulary=frozenset(s.rules.field_vocabulary),
            now=datetime.now(UTC),
            max_future=timedelta(hours=24),
            max_bytes=s.worker.max_message_bytes,
        )
        assert not isinstance(event, Rejected), event
        seen.append(event.event_id)
    assert set(seen) == expect_ids
    assert read_to_end(s, topics.callcenter) == [] and read_to_end(s, topics.booking) == []


def test_bad_input_gets_its_answer_and_nothing_invalid_is_forwarded(space: Namespace) -> None:
    collector = start_collector(space)
    url = f"{collector.url}/v1/batch"
    http = requests.Session()
    fuzz = Fuzz(seed=21)
    forwarded: list[str] = []
    answers: Counter[int] = Counter()
    for i in range(10_000):
        snowplow = fuzz.rnd.random() < 0.15
        body, headers, status, field, ids = _snowplow_case(fuzz) if snowplow else _one(fuzz)
        resp = http.post(f"{collector.url}{SNOWPLOW}" if snowplow else url, data=body, headers=headers, timeout=30)
        answers[resp.status_code] += 1
        assert resp.status_code == status, (i, resp.status_code, resp.text, status, field)
        answer = resp.json()
        assert answer["success"] is (status == 200)
        if status != 200:
            assert set(answer) >= {"code", "message"}  # what the SDKs read
        if field is not None:
            assert answer["field"] == field, (i, answer, field)
        if status == 200:
            forwarded += ids
    assert collector.proc.poll() is None
    assert http.get(f"{collector.url}/health", timeout=5).json()["ok"] is True
    assert set(answers) == {200, 400, 401, 413, 415}, answers
    _check(space, set(forwarded))
    log = collector.log_text()
    assert "refused /v1/batch 400 invalid_field at batch." in log  # it does log refusals...
    assert EMAIL_DOMAIN not in log and "+351 91" not in log and "Ana Silva" not in log  # ...never values
    assert WRITE_KEYS["website"] not in log


def test_single_message_endpoints_and_their_limits(space: Namespace) -> None:
    site = "https://www.airline.example"
    collector = start_collector(space, extra_env={"CEM_COLLECTOR__CORS_ORIGINS": json.dumps([site])})
    fuzz = Fuzz(seed=7)
    post: Callable[..., requests.Response] = requests.post
    ids = []
    for path, msg in (
        ("track", {"event": "Contact Form Submitted", "properties": {"reason": "refund_status"}}),
        ("page", {"name": "Home", "properties": {"path": "/"}}),
        ("screen", {"name": "Boarding pass"}),
        ("identify", {"userId": "C-9", "traits": {"email": f"c9{EMAIL_DOMAIN}"}}),
        ("alias", {"previousId": "visitor-9", "userId": "C-9"}),
        ("t", {"type": "track", "event": "Signed In", "userId": "C-9"}),  # analytics.js's short forms
        ("p", {"type": "page", "properties": {"path": "/help"}}),
    ):
        base, _ = fuzz.message()
        body = {k: base[k] for k in ("messageId", "anonymousId", "timestamp")} | msg
        resp = post(f"{collector.url}/v1/{path}", json=body, headers=GOOD, timeout=10)
        assert resp.status_code == 200, (path, resp.text)
        ids.append(body["messageId"])
    # a message of another type on a typed endpoint, malformed JSON, no key, too large
    assert post(f"{collector.url}/v1/track", json={"type": "page"}, headers=GOOD, timeout=10).json()["field"] == "type"
    assert post(f"{collector.url}/v1/page", data=b"{", headers=GOOD, timeout=10).status_code == 400
    assert post(f"{collector.url}/v1/page", data=b"[]", headers=GOOD, timeout=10).status_code == 400
    assert post(f"{collector.url}/v1/page", json={}, timeout=10).status_code == 401
    big = {"type": "page", "messageId": "big", "anonymousId": "a", "properties": {"x": "y" * 40_000}}
    assert post(f"{collector.url}/v1/page", json=big, headers=GOOD, timeout=10).status_code == 413
    assert post(f"{collector.url}/v1/nothing", json={}, headers=GOOD, timeout=10).status_code == 404
    assert requests.get(f"{collector.url}/v1/batch", timeout=10).status_code == 405
    # a browser's write key in the body (analytics.js) instead of a header
    base, _ = fuzz.message()
    body = {"batch": [base], "writeKey": WRITE_KEYS["app"]}
    assert post(f"{collector.url}/v1/batch", json=body, timeout=10).status_code == 200
    assert post(f"{collector.url}/v1/batch", json=body | {"writeKey": "nope"}, timeout=10).status_code == 401
    # a browser on an allowed origin may read the answer; on another it may not
    pre = requests.options(f"{collector.url}/v1/batch", headers={"Origin": site}, timeout=10)
    assert pre.status_code == 204 and pre.headers["Access-Control-Allow-Origin"] == site
    assert "Authorization" in pre.headers["Access-Control-Allow-Headers"]
    other = requests.options(f"{collector.url}/v1/batch", headers={"Origin": "https://evil.example"}, timeout=10)
    assert "Access-Control-Allow-Origin" not in other.headers
    refused = post(f"{collector.url}/v1/batch", json={}, headers={"Origin": site}, timeout=10)
    assert refused.status_code == 401 and refused.headers["Access-Control-Allow-Origin"] == site
    _check(space, {*ids, base["messageId"]})
