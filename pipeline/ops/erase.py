"""`cem erase CUSTOMER_ID`: ask the pipeline to forget a customer, and wait for the receipt.

The request is a tombstone on the CRM profile topic, the same message a CRM sends when it
deletes a customer, with two headers saying who asked and naming the request. The worker
that owns the customer removes the stream state and identity entries, deletes the ClickHouse
rows, waits for the deletions to finish, and publishes a receipt on `cem.erasure.receipts`.
"""

from __future__ import annotations

import getpass
import socket
import time
import uuid

from kafka import TopicPartition

from pipeline.kafka.admin import consumer, producer
from pipeline.settings import Settings
from schemas.erasure import ErasureReceipt


def default_requester() -> str:
    return f"{getpass.getuser()}@{socket.gethostname()}"


def request_erasure(settings: Settings, customer_id: str, requested_by: str, timeout_s: float) -> ErasureReceipt:
    t = settings.kafka.topics
    request_id = f"erase-{uuid.uuid4().hex[:16]}"
    reader = consumer(settings)
    try:
        tps = [
            TopicPartition(t.erasure_receipts, p) for p in sorted(reader.partitions_for_topic(t.erasure_receipts) or ())
        ]
        if not tps:
            raise RuntimeError(f"topic {t.erasure_receipts} does not exist: run `cem topics create`")
        reader.assign(tps)
        reader.seek_to_end(*tps)
        for tp in tps:  # fix the start position before the request can be answered
            reader.position(tp)
        prod = producer(settings)
        headers = [("cem.erasure.request_id", request_id.encode()), ("cem.erasure.requested_by", requested_by.encode())]
        prod.send(t.profiles, key=customer_id.encode(), value=None, headers=headers)
        prod.flush()
        prod.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for records in reader.poll(timeout_ms=500).values():
                for rec in records:
                    if rec.key == request_id.encode():
                        return ErasureReceipt.model_validate_json(rec.value)
        raise TimeoutError(
            f"no receipt for {request_id} after {timeout_s:.0f}s: is a worker running? "
            "(the request stays queued; the receipt will be on " + t.erasure_receipts + ")"
        )
    finally:
        reader.close()
