"""The idle sweep looks at a bounded slice of a partition's stored customers per call (by
count, and by time: the call holds the event loop), and each call goes on where the one
before stopped: one round lets every idle customer go, whichever bound stops the calls."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest

from pipeline.engine import partitions as partitions_module
from pipeline.engine.partitions import SWEEP_BATCH, Partitions
from pipeline.engine.snapshots import Partition
from pipeline.engine.state_store import Customers, Disk
from pipeline.settings import StateSettings, load_settings
from processors.judge import CustomerState, judge
from processors.model import MICROS_PER_DAY, Rules, Touch

T0 = 1_772_000_000_000_000
RULES = Rules()


@pytest.mark.parametrize("slice_s", [0.0, 60.0])  # 0: every call stops at its first look at the clock
def test_one_round_of_the_sweep_lets_every_idle_customer_go(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, slice_s: float
) -> None:
    monkeypatch.setattr(partitions_module, "SWEEP_SLICE_S", slice_s)
    ctx = SimpleNamespace(settings=load_settings(), stats=SimpleNamespace(counters=Counter()))
    parts = Partitions(ctx, "t", asyncio.Lock(), RULES.horizon_us)  # type: ignore[arg-type]
    disk = Disk(tmp_path, StateSettings(compression="none"), b"s")
    customers = Customers(0, asyncio.run(disk.open("p0")), parts.decoded, disk.secret, disk.key_id)
    n = SWEEP_BATCH + 500
    for i in range(n):
        state, _ = judge(CustomerState(f"C-{i}"), Touch(f"C-{i}", "web", f"e{i}", T0, "login"), RULES, 0)
        customers.put(state)
    now = T0 + RULES.horizon_us + MICROS_PER_DAY
    active, _ = judge(CustomerState("C-new"), Touch("C-new", "web", "late", now, "login"), RULES, 0)
    customers.put(active)
    customers.seal(n + 1, now)
    customers.persist()
    parts.parts[0] = Partition(0, customers, stream_t=now)
    parts._sweep_at = 0.0  # a round is due now
    calls = dropped = 0
    while parts._sweep_at == 0.0 and calls < 1_000:  # set to the next round's time when this one is over
        dropped += parts.sweep(lambda cid, fingerprints: None)
        calls += 1
    assert dropped == n and ctx.stats.counters["idle_customers_dropped"] == n
    assert customers.get("C-new") is not None
    # by time, a call looks at 63 customers before its first look at the clock; by count, at SWEEP_BATCH
    assert calls == (-(-(n + 1) // 63) if slice_s == 0 else 2)
    customers.close()
