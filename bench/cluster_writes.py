"""Which write path the worker takes on a cluster: through the Distributed tables, or straight
to each shard's local table. Run against `scripts/cluster.sh up`:

    .venv/bin/python -m bench.cluster_writes [--rows 400000] [--batch 20000]

It migrates a scratch database on the cluster, then inserts the same timeline rows, batch by
batch as the worker does (`worker.insert_rows`):
  distributed  into `timeline_versions` on node 1 with insert_distributed_sync=1 (returns once
               every shard has its rows: the worker's guarantee before an offset commit);
  local        split by shard in Python, one insert per shard into `timeline_versions_local`,
               the shards written at the same time (threads): the best a direct writer can do.
The figures are in docs/operations.md ("Running on a ClickHouse cluster").
"""

from __future__ import annotations

import argparse
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

from sinks.clickhouse.client import connect
from sinks.clickhouse.migrate import migrate
from sinks.clickhouse.settings import ClickHouseSettings
from sinks.clickhouse.writer import TIMELINE_COLUMNS

DB = "cem_bench_cluster"


def rows(n: int, tag: str) -> list[tuple[Any, ...]]:
    """Distinct rows per `tag`: a replicated table skips a block it has seen (insert
    deduplication), which would flatter whichever path came second."""
    t0 = int(datetime(2026, 3, 1, tzinfo=UTC).timestamp())
    return [
        (f"C-{i % 20000:06d}", datetime.fromtimestamp(t0 + i, UTC).replace(tzinfo=None), f"{tag}{i}", "web",
         "page_view", "", "", "", "", [], [], [], "none", 1, "customer_id", "t", i % 8, i, 1,
         datetime.fromtimestamp(t0, UTC).replace(tzinfo=None))
        for i in range(n)
    ]  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=200_000, help="rows per path and round")
    ap.add_argument("--batch", type=int, default=20_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--cluster", default="cem_cluster")
    ap.add_argument("--ports", default="26001,26002", help="native ports: node 1 first, then one node per shard")
    args = ap.parse_args()
    ports = [int(p) for p in args.ports.split(",")]
    entry = ClickHouseSettings(port=ports[0], cluster=args.cluster)
    admin = connect(entry, "default")
    admin.execute(f"DROP DATABASE IF EXISTS {DB} ON CLUSTER {args.cluster}")
    migrate(admin, DB, cluster=args.cluster)
    sql = f"INSERT INTO {DB}.timeline_versions{{}} ({', '.join(TIMELINE_COLUMNS)}) VALUES"
    writer = connect(entry, DB)
    shards = [connect(ClickHouseSettings(port=p), DB) for p in ports]  # one connection per shard, one thread each
    pool = ThreadPoolExecutor(len(shards))

    def distributed(batch: list[tuple[Any, ...]]) -> None:
        writer.execute(sql.format(""), batch)

    def local(batch: list[tuple[Any, ...]]) -> None:
        parts: list[list[tuple[Any, ...]]] = [[] for _ in shards]
        for row in batch:
            parts[zlib.crc32(row[0].encode()) % len(shards)].append(row)
        list(pool.map(lambda sp: sp[0].execute(sql.format("_local"), sp[1]), zip(shards, parts, strict=True)))

    # the two paths take turns, so background merges and a busy machine weigh on both alike
    took: dict[str, list[float]] = {"distributed (insert_distributed_sync=1)": [], "local, shards in parallel": []}
    for rnd in range(args.rounds):
        for (name, times), write in zip(took.items(), (distributed, local), strict=True):
            data = rows(args.rows, f"r{rnd}{name[0]}-")
            started = time.monotonic()
            for i in range(0, len(data), args.batch):
                write(data[i : i + args.batch])
            times.append(time.monotonic() - started)
    pool.shutdown()
    for name, times in took.items():
        rates = sorted(args.rows / t for t in times)
        each = ", ".join(f"{r:,.0f}" for r in rates)
        print(f"{name:42} median {rates[len(rates) // 2]:>9,.0f} rows/s  (rounds: {each}; batches of {args.batch})")
    admin.execute(f"DROP DATABASE IF EXISTS {DB} ON CLUSTER {args.cluster}")


if __name__ == "__main__":
    main()
