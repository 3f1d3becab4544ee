"""The judge alone, in process: throughput with the rule file's rules against the two
hard-coded detectors they replaced, and with ten rules.

    python -m bench.rules [--touchpoints 200000] [--customers 20000] [--repeat 3]

The workload is bench/workload.py's (decoded and normalized once, before timing). Every
variant judges the same touches, in the same order, from empty states; the best of
`--repeat` rounds (each variant once per round) is reported. The hard-coded detectors are those of the commit before the
rule file (`BASELINE`), loaded from git, so both run in the same process and format.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml

from bench.workload import generate
from pipeline.engine import memory
from pipeline.engine.decode import Rejected, decode_touchpoint
from pipeline.settings import FIELD_VOCABULARY, MATTER_VOCABULARY, RulesSettings, Topics
from processors.judge import CustomerState, judge
from processors.model import Rules, Touch
from processors.normalize import to_touch
from processors.rules import parse_rule_file

ROOT = Path(__file__).resolve().parent.parent
#: the last commit whose judge ran the two hard-coded detectors
BASELINE = "c0b5bf6"

#: five more rules, for the ten-rule run: each kind of template again, differently set
MORE_RULES = yaml.safe_load("""
- {name: repeat_any_channel, template: repeat, match: {contact: [new, continuation]}, key: matter, window: 30d,
   threshold: 3, cooldown: 1d, severity: {high_at: 5}, summary: "{who} contacted us {count} times about {subject}."}
- {name: searching_in_circles, template: repeat, match: {channel: web, type: search}, window: 1d, threshold: 20,
   cooldown: 1d, summary: "{who} searched {count} times {span}."}
- {name: login_then_call, template: sequence, first: {channel: web, type: login}, then: {channel: call_center},
   window: 2h, summary: "{who} logged in and called {span}."}
- {name: passport_again, template: known_entry, fields: [passport_number], window: 60d, threshold: 2,
   summary: "{who} gave {subject} {count} times."}
- {name: transferred_once, template: chain, legs: 2, summary: "{who} was transferred about {subject}."}
""")


def touches(n: int, customers: int) -> list[Touch]:
    wl = generate(n, customers)
    topics, vocab, matters = Topics(), frozenset(FIELD_VOCABULARY), frozenset(MATTER_VOCABULARY)
    now = datetime(2026, 6, 1, tzinfo=UTC)
    out: list[Touch] = []
    for topic, _, raw in wl.touchpoints:
        channel = topics.channel_of(topic)
        ev = decode_touchpoint(channel, raw, vocabulary=vocab, now=now, max_future=timedelta(days=1),  # type: ignore[arg-type]
                               max_bytes=1 << 20)  # fmt: skip
        if isinstance(ev, Rejected) or ev.customer_id is None:
            continue  # known by an identifier only: identity resolution is not what is measured here
        out.append(to_touch(channel, ev, ev.customer_id, "customer_id", matters=matters))  # type: ignore[arg-type]
    return out


def baseline_judge() -> ModuleType:
    """The judge of BASELINE with its two detectors, its alert context and its sentences, as
    modules of their own."""
    here = Path(tempfile.mkdtemp(prefix="cem-bench-rules-"))
    mods: dict[str, ModuleType] = {}
    names = ("repeat_contact", "re_entry", "told_us", "summary", "judge")
    saved = {f"processors.{n}": sys.modules.get(f"processors.{n}") for n in names}
    import processors

    saved_attrs = {n: getattr(processors, n, None) for n in names}
    try:
        for name in names:
            src = subprocess.run(["git", "-C", str(ROOT), "show", f"{BASELINE}:processors/{name}.py"],  # noqa: S603, S607
                                 check=True, capture_output=True, text=True).stdout  # fmt: skip
            path = here / f"{name}.py"
            path.write_text(src)
            spec = importlib.util.spec_from_file_location(f"processors.{name}", path)
            assert spec is not None and spec.loader is not None
            mod = importlib.util.module_from_spec(spec)
            if name != "judge":  # the judge's imports find these, not today's
                sys.modules[f"processors.{name}"] = mod
                setattr(processors, name, mod)
            spec.loader.exec_module(mod)
            mods[name] = mod
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v
        for n, attr in saved_attrs.items():
            if attr is None:
                if hasattr(processors, n):
                    delattr(processors, n)
            else:
                setattr(processors, n, attr)
    return mods["judge"]


def once(items: list[Touch], judge_fn: Callable[..., Any], state_cls: Any, rules: Rules) -> tuple[float, int, int]:
    """Seconds to judge the items from empty states, alert versions, flagged row versions."""
    states: dict[str, Any] = {}
    alerts = flagged = 0
    started = time.perf_counter()
    for t in items:
        st = states.get(t.customer_id)
        if st is None:
            st = states[t.customer_id] = state_cls(t.customer_id)
        _, verdict = judge_fn(st, t, rules, 0)
        alerts += len(verdict.alerts)
        flagged += sum(1 for r in verdict.rows if r.friction)
    return time.perf_counter() - started, alerts, flagged


def run(variants: list[tuple[str, Callable[..., Any], Any, Rules]], items: list[Touch], repeat: int) -> list[Any]:
    """Each variant once per round, rounds interleaved: a machine busy with other work slows
    every variant of a round alike, and the best round of each is kept."""
    best = {label: float("inf") for label, *_ in variants}
    counts: dict[str, tuple[int, int]] = {}
    for _ in range(repeat):
        for label, judge_fn, state_cls, rules in variants:
            seconds, alerts, flagged = once(items, judge_fn, state_cls, rules)
            best[label] = min(best[label], seconds)
            counts[label] = (alerts, flagged)
    return [{"variant": label, "touchpoints_per_s": round(len(items) / best[label]),
             "us_per_touchpoint": round(best[label] / len(items) * 1e6, 2), "alert_versions": counts[label][0],
             "flagged_row_versions": counts[label][1]} for label, *_ in variants]  # fmt: skip


def compare(touchpoints: int, customers: int, repeat: int) -> dict[str, Any]:
    """The variants' figures, best of `repeat` interleaved rounds (`make bench`'s (a5))."""
    memory.tune()
    items = touches(touchpoints, customers)
    default = RulesSettings().to_rules()
    two = Rules(friction=tuple(r for r in default.friction or () if r.name in ("repeat_contact", "re_entry")))
    data = yaml.safe_load((ROOT / "config" / "rules.yaml").read_text())
    data["rules"] += MORE_RULES
    ten = Rules(friction=tuple(parse_rule_file(data).rules))
    assert len(ten.detectors) == 10
    old = baseline_judge()
    variants = run(
        [
            ("hard-coded detectors (" + BASELINE + ")", old.judge, old.CustomerState, Rules()),
            ("rule file: repeat_contact + re_entry", judge, CustomerState, two),
            (f"rule file: the default ({len(default.detectors)} rules)", judge, CustomerState, default),
            ("rule file: 10 rules", judge, CustomerState, ten),
        ],
        items,
        repeat,
    )
    return {"touchpoints": len(items), "customers": customers, "repeat": repeat, "variants": variants}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--touchpoints", type=int, default=200_000)
    ap.add_argument("--customers", type=int, default=20_000)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    out = compare(args.touchpoints, args.customers, args.repeat)
    print(f"{out['touchpoints']:,} touchpoints, {args.customers:,} customers, best of {args.repeat} interleaved rounds")
    for r in out["variants"]:
        print(f"  {r['variant']:<42} {r['touchpoints_per_s']:>9,}/s  {r['us_per_touchpoint']:>6} us  "
              f"alerts {r['alert_versions']:>6,}  flagged rows {r['flagged_row_versions']:>6,}")  # fmt: skip


if __name__ == "__main__":
    main()
