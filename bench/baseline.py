"""The baseline: the pipeline a competent user would first write with the same stack.

One Faust agent handles one event at a time: decode the JSON, find the customer (an email
looked up in a table fed by the CRM topic), read and update the customer's table entry (a
table write per event), flag a repeat contact on the same matter within 7 days, and buffer
a row. Rows go to ClickHouse in inserts of 1,000, as ClickHouse's documentation advises.
It does not resolve anonymous ids, handle late events or re-entry, or publish alerts: it does
less than cem-pipeline, which makes it a generous baseline.

    python -m bench.baseline   (settings from the environment, like `cem worker`)
"""

from __future__ import annotations

import json
import os
from datetime import datetime
from typing import Any

import faust
from clickhouse_driver import Client

BOOTSTRAP = os.environ.get("BENCH_BOOTSTRAP", "127.0.0.1:19092")
TOPICS = os.environ.get("BENCH_TOPICS", "cem.touchpoints.web,cem.touchpoints.callcenter,cem.touchpoints.booking")
PROFILES = os.environ.get("BENCH_PROFILES", "cem.crm.profiles")
DB = os.environ.get("BENCH_DB", "bench")
CH_PORT = int(os.environ.get("BENCH_CH_PORT", "19000"))
WINDOW_S = 7 * 86400

app = faust.App(
    os.environ.get("BENCH_APP_ID", "bench-baseline"),
    broker=f"kafka://{BOOTSTRAP}",
    store="memory://",
    topic_partitions=int(os.environ.get("BENCH_PARTITIONS", "8")),
    consumer_auto_offset_reset="earliest",
    web_port=int(os.environ.get("BENCH_WEB_PORT", "6099")),
    web_host="127.0.0.1",
    web_bind="127.0.0.1",
    datadir=".local/bench/{conf.id}-data",  # not the working directory
)
touchpoints = app.topic(*TOPICS.split(","), value_type=bytes, value_serializer="raw")
profiles = app.topic(PROFILES, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")
customers = app.Table("customers", default=dict, partitions=int(os.environ.get("BENCH_PARTITIONS", "8")))
emails = app.GlobalTable("emails", default=str)
client = Client(host="127.0.0.1", port=CH_PORT)
buffer: list[tuple[Any, ...]] = []


def flush() -> None:
    if buffer:
        client.execute(f"INSERT INTO {DB}.baseline_rows (event_id, customer_id, occurred_at, repeat) VALUES", buffer)
        buffer.clear()


@app.agent(profiles)
async def load_profiles(stream: Any) -> None:
    async for value in stream:
        if value:
            p = json.loads(value)
            email = (p.get("identifiers") or {}).get("email")
            if email:
                emails[email.lower()] = p["customer_id"]


@app.agent(touchpoints)
async def process(stream: Any) -> None:
    async for value in stream:
        ev = json.loads(value)
        cid = ev.get("customer_id") or emails.get(((ev.get("identifiers") or {}).get("email") or "").lower())
        cid = cid or "unknown"
        at = datetime.fromisoformat(ev["occurred_at"].replace("Z", "+00:00"))
        state = dict(customers[cid])
        repeat = False
        matter = ev.get("reason")
        if matter:
            recent = [c for c in state.get("contacts", []) if at.timestamp() - c[1] <= WINDOW_S]
            repeat = any(m == matter for m, _ in recent)
            state["contacts"] = [*recent, [matter, at.timestamp()]]
        customers[cid] = state  # a table update per event
        buffer.append((ev["event_id"], cid, at.replace(tzinfo=None), int(repeat)))
        if len(buffer) >= 1000:
            flush()


@app.timer(interval=1.0)  # type: ignore[untyped-decorator]
async def flush_rest() -> None:
    flush()


if __name__ == "__main__":
    app.main()
