"""What a benchmark leaves on the local stack, and removing it.

Each run works in a namespace of its own, named by a tag of 6 hex digits: topics
`bench<tag>.*`, `bench-<tag>-*` (its workers' own), `bench-baseline-<tag>-*` and
`bench-ceiling-<tag>-*` (the Faust apps'), `bench-collector-<tag>.*`; the consumer groups of
the same names; ClickHouse databases `bench_<tag>*`; and under `.local/bench/`, the run's
directory `<tag>` (and its variants' `<tag>one`, `<tag>idle`), whose subdirectories hold the
workers' data, and the Faust apps' `bench-*-<tag>-data`. A full `make bench` pre-produces a
million touchpoints and a `make bench-scale` several million, so a few runs left behind fill
a disk. A run removes its own at the end (`--keep` leaves them for a look); its logs (the
files right in its directory) and its results stay.

A run in progress is marked by `.local/bench/<tag>/RUNNING` (its pid), and removing every
run's (`make bench-clean`) passes it by.

    python -m bench.cleanup [--tag TAG] [--force]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import signal
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from kafka.errors import NoError

from pipeline.kafka.admin import admin_client
from pipeline.settings import Settings, load_settings
from sinks.clickhouse.client import connect

BENCH_DIR = Path(__file__).resolve().parent.parent / ".local" / "bench"
TAGGED = re.compile(r"bench(?:_|-(?:baseline-|ceiling-|collector-)?)?([0-9a-f]{6})(?![0-9a-f])")
RUN_DIR = re.compile(r"([0-9a-f]{6})(?:[g-z][a-z0-9]*)?")  # a run's directory, or a variant's (`<tag>one`)
RUNNING = "RUNNING"
LOCAL = ("127.0.0.1", "localhost", "::1")


@dataclass
class Removed:
    topics: int = 0
    groups: int = 0
    databases: int = 0
    bytes: int = 0

    def __str__(self) -> str:
        return (
            f"{self.topics} topics, {self.groups} consumer groups, {self.databases} ClickHouse databases, "
            f"{self.bytes >> 20:,} MiB of local data"
        )


def tag_of(name: str) -> str | None:
    """The run a topic, group, database or directory under `.local/bench` belongs to."""
    m = TAGGED.match(name)
    return m.group(1) if m else None


def claim(tag: str, root: Path = BENCH_DIR) -> None:
    """Mark the run `tag` as in progress, for a `make bench-clean` meanwhile to pass it by."""
    (root / tag).mkdir(parents=True, exist_ok=True)
    (root / tag / RUNNING).write_text(f"{os.getpid()}\n")


def release(tag: str, root: Path = BENCH_DIR) -> None:
    (root / tag / RUNNING).unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        (root / tag).rmdir()  # only if nothing else is there


def running(root: Path = BENCH_DIR) -> set[str]:
    """The tags of runs whose process is alive."""
    live = set()
    for mark in root.glob(f"*/{RUNNING}") if root.exists() else []:
        try:
            os.kill(int(mark.read_text().strip()), 0)
        except (ValueError, ProcessLookupError):
            continue  # a run killed before its end
        except PermissionError:
            pass  # alive, another user's
        live.add(mark.parent.name)
    return live


def clean_up(settings: Settings, tag: str = "", root: Path = BENCH_DIR) -> Removed:
    """Remove the topics, consumer groups, databases and data directories of the run `tag`,
    or of every run not in progress when `tag` is empty. Each part is tried even if another
    fails, so that a stack half away still gets what can be removed; failures are printed,
    never raised (a run's own outcome must not be hidden by its cleanup)."""
    busy = running(root) - {tag}

    def ours(name: str) -> bool:
        t = tag_of(name)
        return t is not None and (t == tag or not tag) and t not in busy

    removed = Removed()
    try:
        admin = admin_client(settings)
        try:
            topics = sorted(t for t in admin.list_topics() if ours(t))
            for i in range(0, len(topics), 50):
                try:
                    admin.delete_topics(topics[i : i + 50], timeout_ms=30_000)
                    removed.topics += len(topics[i : i + 50])
                except Exception as exc:  # noqa: BLE001 - one already gone fails its whole batch
                    print(f"cleanup: topics not all removed ({type(exc).__name__}: {exc})")
            groups = [g for g, _ in admin.list_consumer_groups() if ours(g)]
            if groups:
                # a group a stopped worker was a static member of stays non-empty until its
                # session times out; Kafka drops it later, once its offsets expire
                results = admin.delete_consumer_groups(groups)
                removed.groups = sum(1 for _, err in results if err is NoError)
        finally:
            admin.close()
    except Exception as exc:  # noqa: BLE001
        print(f"cleanup: Kafka not cleaned ({type(exc).__name__}: {exc})")
    try:
        client = connect(settings.clickhouse.as_role("admin"), "default")
        try:
            names = [r[0] for r in client.execute("SELECT name FROM system.databases") if ours(r[0])]
            for name in names:
                try:  # a database of the Atomic engine (ClickHouse 20.5 on) keeps its files 8 minutes unless SYNC
                    client.execute(f"DROP DATABASE IF EXISTS `{name}` SYNC")
                except Exception:  # noqa: BLE001 - a server before SYNC: its drop is immediate
                    client.execute(f"DROP DATABASE IF EXISTS `{name}`")
                removed.databases += 1
        finally:
            client.disconnect()
    except Exception as exc:  # noqa: BLE001
        print(f"cleanup: ClickHouse not cleaned ({type(exc).__name__}: {exc})")
    try:
        removed.bytes = remove_data(tag, root, busy)
    except OSError as exc:
        print(f"cleanup: local data not all removed ({type(exc).__name__}: {exc})")
    return removed


def remove_data(tag: str = "", root: Path = BENCH_DIR, busy: set[str] | None = None) -> int:
    """Delete the data under `root` of the run `tag` (of every run not in `busy` when empty);
    returns the bytes freed. A run's logs and reports are the files right in its directory;
    everything in a directory below is data (a worker's RocksDB keeps `.log` files of its
    own), and so is a Faust app's whole `<app id>-data`."""
    if not root.exists():
        return 0
    freed = 0
    for top in sorted(root.iterdir()):
        own = RUN_DIR.fullmatch(top.name)
        t = own.group(1) if own else tag_of(top.name)
        if t is None or (tag and t != tag) or t in (busy or set()) or not top.is_dir():
            continue
        for data in [top] if top.name.endswith("-data") else [p for p in top.iterdir() if p.is_dir()]:
            size = disk_bytes(data)
            shutil.rmtree(data)
            freed += size
    return freed


@contextlib.contextmanager
def namespaced(
    tag: str,
    settings: Settings,
    keep: bool,
    *,
    stop: Callable[[], None] = lambda: None,
    say: Callable[[str], None] = print,
) -> Iterator[None]:
    """The run `tag` marked as in progress meanwhile (for `make bench-clean`), and its topics,
    groups, databases and data removed at its end, whatever the end (unless `keep`), once
    `stop` has stopped every process it started."""
    claim(tag)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # the cleanup runs on a kill too
    say(f"run {tag}: its topics, groups and databases are named after it, its data in .local/bench/{tag}*")
    try:
        yield
    finally:
        stop()
        if keep:
            say(f"kept; remove with: python -m bench.cleanup --tag {tag}")
        else:
            say(f"removed {clean_up(settings, tag)}")
        release(tag)


def disk_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.exists() else 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tag", default="", help="one run's tag (printed at its start); default: every run's")
    ap.add_argument("--force", action="store_true", help="even if Kafka or ClickHouse is not on this machine")
    args = ap.parse_args()
    settings = load_settings()
    hosts = [s.rsplit(":", 1)[0].strip("[]") for s in settings.kafka.bootstrap_servers.split(",")]
    hosts.append(settings.clickhouse.host)
    if not args.force and any(h not in LOCAL for h in hosts):
        sys.exit(f"Kafka or ClickHouse is not on this machine ({', '.join(hosts)}): nothing removed (--force)")
    print(f"removed {clean_up(settings, args.tag)}")


if __name__ == "__main__":
    main()
