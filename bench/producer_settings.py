"""The producer's batching settings, measured: CPU per message with faust's defaults (no
linger, 16 KiB batches) against cem's (`worker.producer_linger_ms`, `producer_batch_bytes`).

    .venv/bin/python -m bench.producer_settings        # on the local stack (make up)

Sends 20,000 messages of a customer state's size (5 KB) and of a by-customer envelope's
size (600 B) to a scratch topic of 8 partitions, three rounds each, and prints the process
CPU time per message (steadier than wall time on a shared machine).
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from aiokafka import AIOKafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import TopicAlreadyExistsError

from pipeline.kafka import clients
from pipeline.settings import load_settings

TOPIC = "cem.bench.producer-settings"
MESSAGES = 20_000


async def cpu_per_message(conf: dict[str, Any], linger_ms: float, batch_bytes: int, size: int) -> float:
    producer = AIOKafkaProducer(
        **conf,
        linger_ms=linger_ms,
        max_batch_size=batch_bytes,
        max_request_size=clients.producer_request_bytes(batch_bytes),
        acks=-1,
    )
    await producer.start()
    try:
        value = os.urandom(size // 2).hex().encode()
        started = time.process_time()
        sent = [await producer.send(TOPIC, key=str(i % 5000).encode(), value=value) for i in range(MESSAGES)]
        await asyncio.gather(*sent)
        return (time.process_time() - started) / MESSAGES * 1e6
    finally:
        await producer.stop()


async def main() -> None:
    s = load_settings()
    admin = KafkaAdminClient(**clients.kafka_python(s.kafka))
    try:
        admin.create_topics([NewTopic(TOPIC, 8, s.kafka.replication_factor)])
    except TopicAlreadyExistsError:
        pass
    finally:
        admin.close()
    conf = clients.aiokafka(s.kafka)
    warm = AIOKafkaProducer(**conf)  # a fresh topic elects its leaders first: not part of the figures
    await warm.start()
    try:
        for partition in range(8):
            await warm.send_and_wait(TOPIC, b"warm-up", partition=partition)
    finally:
        await warm.stop()
    cem = (s.worker.producer_linger_ms, s.worker.producer_batch_bytes)
    for size in (5000, 600):
        for name, (linger, batch) in (("faust defaults", (0.0, 16_384)), ("cem settings", cem)):
            runs = [await cpu_per_message(conf, linger, batch, size) for _ in range(3)]
            print(f"{size:>5} B  {name:15} linger {linger:g} ms, batch {batch:>7} B: "
                  f"{min(runs):5.1f}-{max(runs):5.1f} us CPU per message")  # fmt: skip


if __name__ == "__main__":
    asyncio.run(main())
