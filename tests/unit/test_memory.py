"""The worker freezes what it holds instead of letting the cyclic collector walk it
(pipeline/engine/memory.py), so its hot path must make no cyclic garbage: frozen, it would stay."""

from __future__ import annotations

import asyncio
import gc
import weakref
from pathlib import Path

import pytest
from clickhouse_driver.columns.service import get_column_by_spec
from clickhouse_driver.context import Context

import sinks.clickhouse.client  # noqa: F401  # makes the driver's column back-references weak
from pipeline.engine.rows import timeline_row
from pipeline.engine.state_store import Customers, Decoded, Disk
from pipeline.settings import RulesSettings, StateSettings
from processors.judge import CustomerState, judge
from processors.model import Rules, Touch
from sinks.clickhouse.writer import TIMELINE_COLUMNS, Columns


def cyclic_garbage(make: object) -> list[str]:
    """The types of the cyclic garbage `make()` leaves behind."""
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        make()  # type: ignore[operator]
        gc.collect()
        return sorted({type(o).__name__ for o in gc.garbage})
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.collect()


def test_the_drivers_columns_leave_no_cyclic_garbage() -> None:
    context = Context()
    context.client_settings = {"use_numpy": False, "strings_as_bytes": False, "strings_encoding": "utf-8"}
    specs = ("String", "Array(String)", "UInt64", "DateTime('UTC')", "Enum8('web' = 1, 'call_center' = 2)")

    def make() -> None:
        for spec in specs:
            get_column_by_spec(spec, {"context": context})

    assert cyclic_garbage(make) == []


@pytest.mark.parametrize("rules", [Rules(), RulesSettings().to_rules()], ids=["two rules", "default rule file"])
def test_judging_and_buffering_rows_leave_no_cyclic_garbage(rules: Rules) -> None:
    def make() -> None:
        state, rows = CustomerState("C-1"), Columns(len(TIMELINE_COLUMNS))
        for i in range(50):
            at = 1_772_700_000_000_000 + i * 3_600_000_000
            touch = Touch("C-1", "call_center", f"c{i}", at, "call", matter="refund", is_contact=True,
                          fields=("passport_number",), place=f"call_center:q{i % 3}", outcome="transferred",
                          previous_contact_id=f"c{i - 1}" if i % 4 else "")  # fmt: skip
            state, verdict = judge(state, touch, rules, 0)
            for row in verdict.rows:
                rows.add(timeline_row(row, 0))

    assert cyclic_garbage(make) == []


def test_memory_freed_is_given_back_to_the_system_at_most_once_per_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.engine import memory

    if memory._trim is None:
        pytest.skip("no glibc here (musl, macOS): nothing to trim with")
    trims: list[int] = []
    clock = [1000.0]
    monkeypatch.setattr(memory, "_trim", trims.append)
    monkeypatch.setattr(memory, "_trimmed_at", 0.0)
    monkeypatch.setattr(memory.time, "perf_counter", lambda: clock[0])
    monkeypatch.setattr(memory.gc, "freeze", lambda: None)
    for _ in range(50):  # an insert every 0.1 s for 5 s
        memory.settle()
        clock[0] += 0.1
    assert len(trims) == 5 and set(trims) == {0}  # malloc_trim(0): every arena, down to the top of the heap


def test_reading_states_back_from_disk_and_sealing_them_leave_no_cyclic_garbage(tmp_path: Path) -> None:
    """What the judge holds is frozen: the state store's path must make no cycles either."""
    settings = StateSettings()
    disk = Disk(tmp_path, settings, b"test-secret")
    customers = Customers(0, asyncio.run(disk.open("p0")), Decoded(2), disk.secret, disk.key_id)
    rules = Rules()

    def make() -> None:
        for i in range(40):
            cid = f"C-{i % 5}"  # more customers than the cache holds: states are read back
            at = 1_772_700_000_000_000 + i * 3_600_000_000
            touch = Touch(cid, "web", f"w{i}", at, "form", fields=("email",), place=f"web:p{i % 3}")
            state, _ = judge(customers.get(cid) or CustomerState(cid), touch, rules, 0)
            customers.put(state)
            if i % 7 == 6:
                for _ in customers.encoding():
                    pass
                customers.seal(i, at)
                customers.persist()

    try:
        assert cyclic_garbage(make) == []
        assert customers.count() == 5  # it did judge and store them
    finally:
        customers.close()


def test_frozen_cyclic_garbage_is_collected_once_per_full_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.engine import memory

    class Node:
        me: object

    clock = [5000.0]
    thresholds = gc.get_threshold()
    monkeypatch.setattr(memory.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(memory, "_frozen_before", True)
    monkeypatch.setattr(memory, "_trim", None)
    monkeypatch.setattr(memory, "_full_every_s", memory._full_every_s)  # put back after the test
    monkeypatch.setattr(memory, "_full_at", memory._full_at)
    memory.tune(600)
    try:
        node = Node()
        node.me = node  # a cycle, then garbage: only the collector can free it
        gone = weakref.ref(node)
        del node
        memory.settle()  # frozen, as after an insert
        gc.collect()
        assert gone() is not None  # frozen: the collector leaves it alone
        clock[0] += 599
        memory.settle()
        assert gone() is not None
        clock[0] += 1
        memory.settle()  # the full interval is over: everything held is looked at
        assert gone() is None
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)
