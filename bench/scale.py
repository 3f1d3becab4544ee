"""`make bench-scale`: the judge's state as the customer base grows, within one run.

One worker on the local stack (8 partitions). Customers are added in steps (default
100k -> 1M -> 3M in all), each new customer with a CRM profile and a few touchpoints; after
each step: the worker's RSS, its disk, touchpoints/s over the step, and recovery after a
SIGKILL with its disk kept (a small backlog produced, the worker killed while it works on it,
restarted) and, at the last step, with its data directory deleted (rebuilt from the
snapshots in Kafka). Each step is produced while the worker is stopped, then judged, so
that touchpoints/s is the worker's own.

    python -m bench.scale [--steps 100000,1000000,3000000] [--chunk 50000]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import signal
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.cleanup import disk_bytes, namespaced
from bench.run import ROOT, Run, Watched, create_bench_topics, namespace, produce, stats, step, stop_started
from bench.workload import generate
from pipeline.kafka.admin import wait_until_processed
from sinks.clickhouse.client import connect
from sinks.clickhouse.migrate import migrate

TOUCHPOINTS_PER_CUSTOMER = 3
Procs = list[tuple[Watched, int]]


def add_customers(run: Run, first: int, count: int, chunk: int, label: str) -> int:
    """Produce `count` new customers (profiles first, then their touchpoints), in chunks that
    keep this process small; returns the touchpoints sent."""
    sent = 0
    for k, start in enumerate(range(first, first + count, chunk)):
        n = min(chunk, first + count - start)
        wl = generate(n * TOUCHPOINTS_PER_CUSTOMER, n, seed=start, prefix=f"{label}{k:04d}")
        produce(run, wl.profiles)
        produce(run, wl.touchpoints)
        sent += len(wl.touchpoints)
    return sent


def start_worker(run: Run, label: str, timeout_s: float = 3600) -> Procs:
    """One worker, once ready (a start on a backlog of profiles indexes them all first)."""
    port = 6200
    w = Watched(
        [sys.executable, "-m", "pipeline.ops.cli", "worker", "--loglevel", "info", "--web-port", str(port)],
        run.env,
        ROOT / ".local" / "bench" / run.tag / f"{label}-worker.log",
    )
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if stats(port)["ready"]:
                return [(w, port)]
        except OSError:
            pass
        w.sample()
        if w.proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"worker did not become ready, see {w.log}")
        time.sleep(0.3)


def processed(run: Run, worker: Watched, timeout_s: float = 7200) -> float:
    started = time.monotonic()

    def progress(_: Any) -> None:
        worker.sample()
        if worker.proc.poll() is not None:
            raise RuntimeError(f"the worker exited, see {worker.log}")

    wait_until_processed(run.settings, timeout_s=timeout_s, on_progress=progress)
    return time.monotonic() - started


LOADED = re.compile(r"loaded from (\w+)[^:]* in ([0-9.]+)s:")


def recovery(run: Run, procs: Procs, wipe: bool, label: str) -> tuple[Procs, dict[str, Any]]:
    """A backlog of 20,000 touchpoints of 5,000 new customers, the worker killed while it
    works on it, restarted (with its data directory deleted first if `wipe`). Returns: the
    slowest partition's load (its state ready to judge), the worker ready (includes joining
    the group, which waits for the dead member's session to time out), everything processed;
    seconds from the restart."""
    worker, _ = procs[0]
    wl = generate(20_000, 5_000, seed=7, prefix=f"R{label}")
    produce(run, wl.profiles)
    produce(run, wl.touchpoints)
    time.sleep(1.0)
    worker.stop(signal.SIGKILL)
    if wipe:
        shutil.rmtree(Path(run.env["CEM_WORKER__DATA_DIR"]), ignore_errors=True)
    started = time.monotonic()
    procs = start_worker(run, f"restart-{label}")
    ready_s = time.monotonic() - started
    processed(run, procs[0][0])
    loads = LOADED.findall(procs[0][0].log.read_text(errors="replace"))
    return procs, {
        "from": sorted({src for src, _ in loads}), "load_s": max((float(t) for _, t in loads), default=0.0),
        "ready_s": round(ready_s, 1), "caught_up_s": round(time.monotonic() - started, 1),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", default="100000,1000000,3000000", help="customers in all after each step")
    parser.add_argument("--chunk", type=int, default=50_000, help="customers generated at a time")
    parser.add_argument("--keep", action="store_true",
                        help="keep the run's topics, database and worker data (removed by default)")  # fmt: skip
    args = parser.parse_args()
    steps = [int(s) for s in args.steps.split(",")]

    run = namespace()
    with namespaced(run.tag, run.settings, args.keep, stop=stop_started, say=step):
        measure(run, steps, args.chunk)


def measure(run: Run, steps: list[int], chunk: int) -> None:
    # the worker's data apart from the logs beside it, which a wiped disk must not take along
    run.env["CEM_WORKER__DATA_DIR"] = str(Path(run.env["CEM_WORKER__DATA_DIR"]) / "data")
    create_bench_topics(run.settings)
    migrate(connect(run.settings.clickhouse, "default"), run.settings.clickhouse.database)
    data_dir = Path(run.env["CEM_WORKER__DATA_DIR"])
    step(f"bench-scale: steps {steps}, {TOUCHPOINTS_PER_CUSTOMER} touchpoints per customer, one worker, 8 partitions")
    procs: Procs = []
    rows = []
    held = 0
    for k, total in enumerate(steps):
        new = total - held
        for w, _ in procs:  # the step is produced first, and then judged: touchpoints/s is the worker's
            w.stop()
        step(f"step {k + 1}: producing {new:,} customers, a profile and about {TOUCHPOINTS_PER_CUSTOMER} "
             "touchpoints each")  # fmt: skip
        sent = add_customers(run, held, new, chunk, f"S{k}")
        held = total
        started = time.monotonic()
        procs = start_worker(run, f"step{k}")
        processed(run, procs[0][0])
        secs = time.monotonic() - started
        worker, port = procs[0]
        rss = worker.sample()
        customers = stats(port)["customers"]
        disk = disk_bytes(data_dir)
        procs, kept = recovery(run, procs, wipe=False, label=f"{k}k")
        lost = None
        if k == len(steps) - 1:
            procs, lost = recovery(run, procs, wipe=True, label=f"{k}w")
        row = {
            "customers": total, "customers_held": customers, "touchpoints": sent,
            "touchpoints_per_s": round(sent / secs), "worker_rss_mib": rss >> 20,
            "peak_rss_mib": worker.peak_rss >> 20, "disk_mib": disk >> 20,
            "after_sigkill_disk_kept": kept, "after_sigkill_disk_lost": lost,
        }  # fmt: skip
        rows.append(row)
        step(json.dumps(row))
    for w, _ in procs:
        w.stop()

    print("\n| customers | worker RSS (peak) | disk | touchpoints/s | SIGKILL, disk kept: state loaded / ready / "
          "caught up | SIGKILL, disk lost: the same |")  # fmt: skip
    print("|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['customers']:,} | {r['worker_rss_mib']} MiB ({r['peak_rss_mib']}) | {r['disk_mib']} MiB "
              f"| {r['touchpoints_per_s']:,} | {_recovery(r['after_sigkill_disk_kept'])} "
              f"| {_recovery(r['after_sigkill_disk_lost'])} |")  # fmt: skip
    if len(rows) > 1:
        growth = rows[-1]["worker_rss_mib"] / max(1, rows[-2]["worker_rss_mib"]) - 1
        print(f"\nRSS growth from {rows[-2]['customers']:,} to {rows[-1]['customers']:,} customers: {growth:+.0%}")
    out = ROOT / "bench" / "results" / f"scale-{datetime.now(UTC):%Y%m%dT%H%M%S}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"steps": rows}, indent=2))
    print(f"results: {out}")


def _recovery(r: dict[str, Any] | None) -> str:
    return "-" if r is None else f"{r['load_s']:.1f} s / {r['ready_s']} s / {r['caught_up_s']} s"


if __name__ == "__main__":
    main()
