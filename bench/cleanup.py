"""What a benchmark leaves on the local stack, and removing it.

Each run works in a namespace of its own (a tag): topics `bench<tag>.*` and the Faust apps'
`bench-*-<tag>-*`, ClickHouse databases `bench_<tag>*`, and worker and Faust data directories
under `.local/bench/`. A full `make bench` pre-produces a million touchpoints and a
`make bench-scale` several million, so a few runs left behind fill a disk. The benchmarks
remove their own at the end (`--keep` leaves them for a look); the logs and the results stay.

    python -m bench.cleanup [--tag TAG]    # without a tag: every earlier run's
"""

from __future__ import annotations

import argparse
import shutil
from dataclasses import dataclass
from pathlib import Path

from pipeline.kafka.admin import admin_client
from pipeline.settings import Settings, load_settings
from sinks.clickhouse.client import connect

BENCH_DIR = Path(__file__).resolve().parent.parent / ".local" / "bench"


@dataclass
class Removed:
    topics: int = 0
    databases: int = 0
    bytes: int = 0

    def __str__(self) -> str:
        return f"{self.topics} topics, {self.databases} ClickHouse databases, {self.bytes >> 20:,} MiB of local data"


def _ours(name: str, tag: str) -> bool:
    return name.startswith("bench") and tag in name


def clean_up(settings: Settings, tag: str = "", root: Path = BENCH_DIR) -> Removed:
    """Remove the topics, consumer groups, databases and data directories of the run `tag`
    (of every bench run when `tag` is empty). Each part is tried even if another fails, so
    that a stack that is half away still gets what can be removed."""
    removed = Removed()
    try:
        admin = admin_client(settings)
        try:
            topics = sorted(t for t in admin.list_topics() if _ours(t, tag))
            for i in range(0, len(topics), 50):
                admin.delete_topics(topics[i : i + 50], timeout_ms=30_000)
            removed.topics = len(topics)
            groups = [g for g, _ in admin.list_consumer_groups() if _ours(g, tag)]
            if groups:
                admin.delete_consumer_groups(groups)
        finally:
            admin.close()
    except Exception as exc:  # noqa: BLE001 - cleaning up must not hide the run's own result
        print(f"cleanup: Kafka not cleaned ({type(exc).__name__}: {exc})")
    try:
        client = connect(settings.clickhouse.as_role("admin"), "default")
        names = [r[0] for r in client.execute("SELECT name FROM system.databases") if _ours(r[0], tag)]
        for name in names:
            client.execute(f"DROP DATABASE IF EXISTS `{name}`")
        removed.databases = len(names)
        client.disconnect()
    except Exception as exc:  # noqa: BLE001
        print(f"cleanup: ClickHouse not cleaned ({type(exc).__name__}: {exc})")
    removed.bytes = remove_data(tag, root)
    return removed


def remove_data(tag: str = "", root: Path = BENCH_DIR) -> int:
    """Delete the data under `root` of the run `tag` (all runs when empty); returns the bytes
    freed. A run's logs and reports are the files right in its directory (`<tag>/*.log`);
    everything in a directory below is data (a worker's RocksDB holds `.log` files of its own),
    and so is a Faust app's whole `<app id>-data`."""
    if not root.exists():
        return 0
    freed = 0
    for top in sorted(root.iterdir()):
        if tag not in top.name or not top.is_dir():
            continue
        for data in [top] if top.name.endswith("-data") else [p for p in top.iterdir() if p.is_dir()]:
            freed += sum(f.stat().st_size for f in data.rglob("*") if f.is_file())
            shutil.rmtree(data, ignore_errors=True)
    return freed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tag", default="", help="one run's tag (printed at its start); default: every run's")
    args = ap.parse_args()
    print(f"removed {clean_up(load_settings(), args.tag)}")


if __name__ == "__main__":
    main()
