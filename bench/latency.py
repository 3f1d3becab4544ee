"""`make bench-latency`: event -> alert latency of two forms of cem (two source trees, or the
same tree with other settings) compared on one deployment, in turns, so that the machine's
drift over the run falls on both alike.

One run: the bench's topics and database, a backlog of customers judged first (so that the
workers hold state, as after (c) in `make bench`), then latency phases like `make bench`'s,
each with two workers started anew with the form whose turn it is (A B B A A B by default)
on the same disks. Each phase reports the latency of the alerts, split where a touchpoint's
pack reached the internal topic: stage A (channel topic -> pack) and stage B (pack -> alert),
and the loop stalls the workers counted. Compare the forms phase by phase, not across runs.

  python -m bench.latency --b-root /tmp/other-checkout
  python -m bench.latency --b-env CEM_WORKER__ALIGN_MAX_IDLE_MS=0 --order ABAB
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import orjson

from bench import run as bench_run
from bench.cleanup import namespaced
from bench.workload import generate
from pipeline.kafka.admin import wait_until_processed
from sinks.clickhouse.client import connect
from sinks.clickhouse.migrate import migrate

EVENT_ID = 2  # a touch row's field (processors.model.Touch.to_row)


def phase(run: bench_run.Run, rate: float, seconds: float, prefix: str) -> dict[str, Any]:
    """One latency phase of new customers at `rate` touchpoints/s (as `bench.run.latency`),
    with each alert's latency split at the internal topic."""
    ph = bench_run.paced_phase(run, rate, seconds, prefix)
    appended = ph.appended
    packed: dict[str, int] = {}  # event id -> when its pack was made (the internal topic's CreateTime)
    for r in ph.since(run.settings.kafka.topics.by_customer):
        for item in orjson.loads(r.value).get("items", []):
            if isinstance(item, list) and item[EVENT_ID] in appended:
                packed.setdefault(item[EVENT_ID], r.timestamp)
    published = ph.published.values()
    total = [float(at - appended[e]) for at, e in published]
    stage_a = [float(packed[e] - appended[e]) for _, e in published if e in packed]
    stage_b = [float(at - packed[e]) for at, e in published if e in packed]
    every_a = [float(packed[e] - appended[e]) for e in packed]
    pct = bench_run.pct
    return {
        "rate_per_s": round(ph.rate_per_s), "alerts": len(total), "p50_ms": pct(total, 0.5), "p99_ms": pct(total, 0.99),
        "max_ms": max(total) if total else None,
        "stage_a_p50_ms": pct(stage_a, 0.5), "stage_a_p99_ms": pct(stage_a, 0.99),
        "stage_b_p50_ms": pct(stage_b, 0.5), "stage_b_p99_ms": pct(stage_b, 0.99),
        "every_touchpoint_stage_a_p99_ms": pct(every_a, 0.99),
    }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--b-root", type=Path, help="form B's source tree (default: this one)")
    ap.add_argument("--b-env", action="append", default=[], metavar="NAME=VALUE", help="a setting of form B")
    ap.add_argument("--a-env", action="append", default=[], metavar="NAME=VALUE", help="a setting of form A")
    ap.add_argument("--order", default="ABBAAB", help="the phases' forms in turn")
    ap.add_argument("--rate", type=float, default=5800, help="touchpoints/s a phase: half of (c), quiet")
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--backlog", type=int, default=300_000, help="touchpoints judged first (10 per customer)")
    ap.add_argument("--keep", action="store_true", help="leave the run's topics, databases and data")
    args = ap.parse_args()
    forms = {
        "A": (bench_run.ROOT, dict(kv.split("=", 1) for kv in args.a_env)),
        "B": (args.b_root or bench_run.ROOT, dict(kv.split("=", 1) for kv in args.b_env)),
    }
    run = bench_run.namespace()
    base_env = dict(run.env)
    results: list[dict[str, Any]] = []
    with namespaced(run.tag, run.settings, args.keep, stop=bench_run.stop_started, say=print):
        wl = generate(args.backlog, args.backlog // 10)
        bench_run.create_bench_topics(run.settings)
        migrate(connect(run.settings.clickhouse, "default"), run.settings.clickhouse.database)
        bench_run.produce(run, wl.profiles + wl.touchpoints)
        for n, form in enumerate("A" + args.order):
            root, env = forms[form]
            bench_run.ROOT = root  # the workers' working directory: the tree they import
            run.env = base_env | env | {"PYTHONPATH": str(root)}
            procs = bench_run.start_workers(run, 2, f"{n}{form}")
            try:
                wait_until_processed(run.settings, timeout_s=1800)
                bench_run.settle(run)
                if n == 0:
                    print(f"backlog of {args.backlog:,} touchpoints judged", flush=True)
                    continue
                before = [bench_run.stats(port) for _, port in procs]
                result = {"phase": n, "form": form} | phase(run, args.rate, args.seconds, f"L{run.tag}{n}")
                after = [bench_run.stats(port) for _, port in procs]
                result["loop_stalls"] = sum(
                    a["loop_stalls"] - b["loop_stalls"] for a, b in zip(after, before, strict=True)
                )
                results.append(result)
                print(json.dumps(result), flush=True)
            finally:
                for w, _ in procs:
                    w.stop()
    for form in "AB":
        mine = [r for r in results if r["form"] == form]
        if mine:
            print(form, "p50 / p99 by phase:", ", ".join(f"{r['p50_ms']:.0f} / {r['p99_ms']:.0f}" for r in mine),
                  "ms; stage A p50:", ", ".join(f"{r['stage_a_p50_ms']:.0f}" for r in mine), "ms")  # fmt: skip
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    path = out / f"latency-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "phases": results}, indent=1))
    print(f"written to {path}")


if __name__ == "__main__":
    main()
