"""An erasure reaches every key the customer's data was filed under, the delivery ledger and
the dead letters (counted), and is finished by `cem eraser`, off the judge's path."""

from __future__ import annotations

import json
import time
from pathlib import Path

from kafka.admin import NewTopic

from pipeline.kafka.admin import Record, ensure_topics, producer, read_to_end, send_all, wait_until_processed
from processors.identity import fingerprint
from schemas.erasure import ErasureJob, ErasureReceipt
from tests.integration.conftest import Namespace


def _json(value: object) -> bytes:
    return json.dumps(value).encode()


def test_erasure_reaches_anonymous_and_unresolved_keys_the_ledger_and_dead_letters(space: Namespace) -> None:
    s, t, db = space.settings, space.settings.kafka.topics, space.db
    ledger = f"{t.alerts}.ledger"
    config = space.tmp / "alerts.yaml"
    config.write_text(f"delivery: {{ledger_topic: {ledger}}}\nroutes: []\n")
    ensure_topics(s, [NewTopic(ledger, 1, 1, topic_configs={"cleanup.policy": "compact"})])
    space.env["CEM_STATE__COMPRESSION"] = "none"  # so that the state's files can be searched as they are
    space.start_worker()
    space.start_eraser(None, "--config", str(config))
    cid, email, phone = "C-E1", "erin@example.org", "+44 7700 900123"
    prod = producer(s)
    # before the CRM knows Erin: her phone matches nobody, and her visit is anonymous
    send_all(prod, [
        Record(t.callcenter, None, _json({"event_id": "c-1", "occurred_at": "2026-03-01T10:00:00Z", "type": "call",
                                          "reason": "refund_status", "identifiers": {"phone": phone}})),
        Record(t.web, None, _json({"event_id": "w-1", "occurred_at": "2026-03-01T11:00:00Z", "type": "page_view",
                                   "identifiers": {"anonymous_id": "dev-erin"}})),
        Record(t.web, None, b'{"event_id": "bad-1", "customer_id": "C-E1", "type": "nonsense"}'),  # a dead letter
        Record(ledger, b"log/a1", _json({"customer_id": cid, "alert_id": "a1", "outcome": "open"})),
        Record(ledger, b"log/a2", _json({"customer_id": "C-other", "alert_id": "a2", "outcome": "open"})),
    ])  # fmt: skip
    wait_until_processed(s, timeout_s=120)
    send_all(prod, [Record(t.profiles, cid.encode(), _json({
        "customer_id": cid, "version": 1, "updated_at": "2026-02-01T00:00:00Z", "loyalty_tier": "gold",
        "identifiers": {"email": email, "phone": phone}, "known_fields": ["name"]}))])  # fmt: skip
    wait_until_processed(s, timeout_s=120)
    login = {"event_id": "w-2", "occurred_at": "2026-03-02T11:00:00Z", "type": "login",
             "identifiers": {"email": email, "anonymous_id": "dev-erin"}}  # fmt: skip
    send_all(prod, [Record(t.web, None, _json(login))])
    wait_until_processed(s, timeout_s=120)
    ch = space.ch()
    keys = {r[0] for r in ch.execute(f"SELECT DISTINCT customer_id FROM {db}.timeline")}
    anon = f"anon:{fingerprint('anonymous_id', 'dev-erin', s.secret)[:16]}"
    unresolved = f"unresolved:{fingerprint('phone', phone, s.secret)[:16]}"
    assert keys == {cid, anon, unresolved}, keys

    data = Path(space.env["CEM_WORKER__DATA_DIR"])

    def on_disk() -> list[str]:
        files = [f for f in data.rglob("*") if f.is_file()]
        return sorted(str(f.relative_to(data)) for f in files if cid.encode() in f.read_bytes())

    assert on_disk(), "the customer's state and index entries are on the worker's disk before the erasure"
    send_all(prod, [Record(t.profiles, cid.encode(), None)])  # the CRM deletes Erin
    prod.close()
    deadline = time.monotonic() + 180
    while not (receipts := read_to_end(s, t.erasure_receipts)):
        assert time.monotonic() < deadline, space.tmp.joinpath("eraser.log").read_text()[-3000:]
        time.sleep(0.5)
    receipt = ErasureReceipt.model_validate_json(receipts[-1].value)
    assert receipt.verified and receipt.removed.customer_state == 1
    assert receipt.removed.related_keys == 2 and receipt.removed.timeline_rows == 3
    assert receipt.removed.ledger_entries == 1 and receipt.removed.dead_letters == 1
    for key in (cid, anon, unresolved):
        assert ch.execute(f"SELECT count() FROM {db}.timeline_versions WHERE customer_id = %(c)s", {"c": key}) == [(0,)]
    latest = {rec.key: rec.value for rec in read_to_end(s, ledger)}
    assert latest[b"log/a1"] is None and latest[b"log/a2"] is not None
    # Gone from the worker's disk too: the state's and the identity index's files (tables,
    # write-ahead logs, manifests), within the index's purge interval
    deadline = time.monotonic() + 60
    while left := on_disk():
        assert time.monotonic() < deadline, f"{cid} still in {left}"
        time.sleep(1)
    # A job done again after a crash may know no identifier any more: it still completes.
    again = ErasureJob(request_id="again-1", customer_id=cid, requested_by="test", requested_at=receipt.requested_at,
                       fingerprints=[], customer_state=0, identity_entries=0)  # fmt: skip
    prod = producer(s)
    send_all(prod, [Record(t.erasures, b"again-1", again.model_dump_json().encode())])
    prod.close()
    deadline = time.monotonic() + 120
    while not any(rec.key == b"again-1" for rec in read_to_end(s, t.erasure_receipts)):
        assert time.monotonic() < deadline, space.tmp.joinpath("eraser.log").read_text()[-2000:]
        time.sleep(0.5)
