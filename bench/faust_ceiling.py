"""The ceiling of Faust's own stream machinery on this machine: one agent that only takes
batches (`stream.take_events`) and decodes each value with orjson, nothing else. cem-pipeline
runs two such stages per touchpoint (resolve, then judge), so this bounds what any
Faust-agent design can reach here.

    python -m bench.faust_ceiling worker   (BENCH_* settings from the environment)
"""

from __future__ import annotations

import os
import time
from typing import Any

import faust
import orjson

EXPECTED = int(os.environ.get("BENCH_EXPECTED", "0"))
OUT = os.environ.get("BENCH_OUT", "/dev/null")

app = faust.App(
    os.environ.get("BENCH_APP_ID", "bench-faust-ceiling"),
    broker=f"kafka://{os.environ.get('BENCH_BOOTSTRAP', '127.0.0.1:19092')}",
    store="memory://",
    consumer_auto_offset_reset="earliest",
    web_port=int(os.environ.get("BENCH_WEB_PORT", "6098")),
    datadir=".local/bench/{conf.id}-data",  # not the working directory
)
topic = app.topic(*os.environ.get("BENCH_TOPICS", "").split(","), value_type=bytes, value_serializer="raw")
seen = {"n": 0, "t0": 0.0}


@app.agent(topic)
async def consume(stream: Any) -> None:
    async for events in stream.take_events(10_000, within=0.5):
        if not seen["n"]:
            seen["t0"] = time.monotonic()
        for event in events:
            orjson.loads(event.message.value)
        seen["n"] += len(events)
        if seen["n"] >= EXPECTED:
            with open(OUT, "w") as fh:
                fh.write(f"{seen['n'] / (time.monotonic() - seen['t0']):.0f}\n")
            os._exit(0)


if __name__ == "__main__":
    app.main()
