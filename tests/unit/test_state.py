"""The judge's state and its snapshots (pipeline/engine/snapshots.py), without a broker.

The property the design rests on: a partition's state is a function of its log, and applying a
message twice changes nothing. So a snapshot whose chunks were taken at different moments (all
at or after its `from_offset`), followed by the log read again from `from_offset`, gives the
state of a worker that never stopped.
"""

from __future__ import annotations

import asyncio
import random
import struct
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.engine.snapshots import (
    Found,
    Partition,
    Snapshots,
    add_loaded,
    chunk_key,
    decode_chunk,
    encode_chunk,
    encode_chunks,
    encode_stored,
    load,
    manifest_key,
    newest_complete,
)
from pipeline.engine.state_store import Customers, Decoded, Disk, after, decode, encode
from pipeline.settings import StateSettings, load_settings
from processors.judge import CustomerState, Profile, apply_profile, judge
from processors.model import MICROS_PER_DAY, Rules, Touch

RULES = Rules()
PRUNING = Rules(max_events_per_customer=3)  # the oldest events cut off early and often
T0 = 1_772_000_000_000_000
CUSTOMERS = ("C-1", "C-2", "C-3")

Message = tuple[str, Any]  # ("touch", Touch) | ("profile", (customer, version, tier, known)) | ("erase", customer)


@st.composite
def messages(draw: st.DrawFn) -> list[Message]:
    out: list[Message] = []
    for i in range(draw(st.integers(1, 40))):
        cid = draw(st.sampled_from(CUSTOMERS))
        roll = draw(st.integers(0, 19))
        if roll == 0:
            out.append(("erase", cid))
        elif roll <= 2:
            known = tuple(draw(st.lists(st.sampled_from(("passport_number", "address")), max_size=2, unique=True)))
            out.append(("profile", (cid, draw(st.integers(1, 4)), draw(st.sampled_from(("gold", "none"))), known)))
        else:
            contact = draw(st.booleans())
            t = T0 + draw(st.integers(0, 20)) * MICROS_PER_DAY // 2
            matter = draw(st.sampled_from(("baggage", "refund"))) if contact else ""
            touch = Touch(
                customer_id=cid, channel="call_center" if contact else "web", event_id=f"e{i % 30}", t=t,
                type="call" if contact else "form_submit", matter=matter,
                place=draw(st.sampled_from(("web:a", "web:b", "call_center:q"))), is_contact=contact,
                fields=tuple(draw(st.lists(st.sampled_from(("passport_number", "address")), max_size=2, unique=True))),
                outcome=draw(st.sampled_from(("resolved", "transferred"))) if contact else "",
            )  # fmt: skip
            out.append(("touch", touch))
    return out


def apply(customers: dict[str, CustomerState], message: Message) -> None:
    """What the judge stage does to its state for each item (pipeline/engine/judge_stage.py)."""
    kind, payload = message
    if kind == "erase":
        customers.pop(payload, None)
    elif kind == "profile":
        cid, version, tier, known = payload
        apply_profile(customers.setdefault(cid, CustomerState(cid)), Profile(version, tier, known))
    else:
        judge(customers.setdefault(payload.customer_id, CustomerState(payload.customer_id)), payload, RULES, 0)


def fresh(message: Message) -> Message:
    """A message as decoded again from the log: a new Touch object."""
    kind, payload = message
    if kind == "touch":
        return kind, Touch.from_row(list(orjson.loads(orjson.dumps(payload.to_row()))))
    return message


def view(customers: dict[str, CustomerState]) -> dict[str, Any]:
    held = sorted((cid, s) for cid, s in customers.items() if s.events or s.profile)
    return {cid: orjson.loads(orjson.dumps(s.to_snapshot())) for cid, s in held}


@settings(max_examples=300, deadline=None)
@given(log=messages(), data=st.data())
def test_a_fuzzy_snapshot_and_the_log_after_it_give_the_uninterrupted_state(log: list[Message], data: Any) -> None:
    uninterrupted: dict[str, CustomerState] = {}
    for m in log:
        apply(uninterrupted, fresh(m))

    # the snapshot starts at from_offset; each customer is written at some later moment
    from_offset = data.draw(st.integers(0, len(log)), label="from_offset")
    written_at = {cid: data.draw(st.integers(from_offset, len(log)), label=f"{cid} written at") for cid in CUSTOMERS}
    live: dict[str, CustomerState] = {}
    snapshot: dict[str, bytes] = {}
    for offset in range(len(log) + 1):
        for cid, at in written_at.items():
            if at == offset and cid in live:
                snapshot[cid] = encode_chunk([live[cid]])[0]
        if offset < len(log):
            apply(live, fresh(log[offset]))

    # a restart: load the chunks, read the log again from from_offset
    restored = {state.customer_id: state for value in snapshot.values() for state in decode_chunk(value)}
    for m in log[from_offset:]:
        apply(restored, fresh(m))
    assert view(restored) == view(uninterrupted)


def test_a_chunk_round_trips_every_state() -> None:
    state = CustomerState("C-1")
    apply_profile(state, Profile(2, "gold", ("passport_number",), ("fp1", "fp2")))
    for i in range(5):
        touch = Touch("C-1", "call_center", f"c{i}", T0 + i * 3_600_000_000, "call", matter="refund",
                      place="call_center:q", is_contact=True, fields=("passport_number",))  # fmt: skip
        state, _ = judge(state, touch, RULES, 7)
    assert state.alerts and any(s.friction for s in state.events)
    value, raw = encode_chunk([state, CustomerState("C-2")])
    assert raw > len(value)  # compressed
    assert decode_chunk(value) == [state, CustomerState("C-2")]


def _manifest(snapshot: str, chunks: int) -> bytes:
    return orjson.dumps({"format": 1, "snapshot": snapshot, "partition": 0, "from_offset": 5, "chunks": chunks,
                         "customers": 1, "events": 1})  # fmt: skip


def test_the_newest_complete_snapshot_is_loaded() -> None:
    live = {
        chunk_key("old", 0): b"old0",
        manifest_key("old"): _manifest("old", 1),
        chunk_key("new", 0): b"new0",
        chunk_key("new", 1): b"new1",
        manifest_key("new"): _manifest("new", 2),
        chunk_key("half", 0): b"half0",  # a crash before its second chunk and its manifest
        chunk_key("zombie", 0): b"z0",
        manifest_key("zombie"): _manifest("zombie", 2),  # its second chunk was deleted
    }
    found = newest_complete(live)
    assert found is not None and found[0]["snapshot"] == "new" and found[1] == [b"new0", b"new1"]
    assert newest_complete({chunk_key("half", 0): b"x"}) is None


def test_a_partition_is_due_for_a_snapshot_after_as_many_touchpoints_as_it_holds_customers(tmp_path: Path) -> None:
    snaps = Snapshots("t", lambda: None, min_touchpoints=100, interval_s=300, counters={}, live_keys=_no_keys)  # type: ignore[arg-type, return-value]
    part = Partition(0, store(tmp_path), held=1_000, snapshot_at=0.0)
    part.touches_since = 999
    assert not snaps.due(part, now=10.0)
    part.touches_since = 1_000
    assert snaps.due(part, now=10.0)
    part.held, part.touches_since = 10, 99  # small partition: the floor
    assert not snaps.due(part, now=10.0) and snaps.due(part, now=301.0)  # or when the interval has passed
    part.touches_since = 0
    assert not snaps.due(part, now=1_000.0)  # nothing new: nothing to write
    part.touches_since, part.replay_until, part.next_offset = 5_000, 10, 3
    assert not snaps.due(part, now=1_000.0)  # still reading the log again after a restart


async def _no_keys(partition: int) -> set[bytes]:
    return set()


def store(tmp_path: Path, capacity: int = 1_000) -> Customers:
    settings = StateSettings(compression="none")
    disk = Disk(tmp_path, settings, b"test-secret")
    return Customers(0, asyncio.run(disk.open("p0")), Decoded(capacity), disk.secret, disk.key_id)


class FakeSends:
    """What the snapshot writer sends, in order (the broker is the integration tests' part)."""

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, bytes | None]] = []

    async def send(self, topic: str, value: bytes | None, key: bytes | None = None, partition: int | None = None,
                   headers: Any = None) -> None:  # fmt: skip
        assert key is not None and partition == 0
        self.sent.append((key, value))

    async def done(self) -> None:
        pass


def snapshots_to(sends: FakeSends, live_keys: Any = _no_keys) -> Snapshots:
    """A snapshot writer sending to `sends`, for which any partition with a change is due."""
    return Snapshots("t", lambda: sends, min_touchpoints=1, interval_s=300, counters=Counter(), live_keys=live_keys)  # type: ignore[arg-type, return-value]


def sealed(tmp_path: Path, n: int) -> Partition:
    """Partition 0 with customers C-0 .. C-<n-1> judged, sealed at offset 5 and persisted."""
    customers = store(tmp_path)
    for i in range(n):
        judged(customers, f"C-{i}")
    customers.seal(5, T0)
    return Partition(0, customers, touches_since=n, persisted_offset=customers.persist() or 0)


def snapshot(part: Partition, live_keys: Any = _no_keys, between: Any = None) -> FakeSends:
    """Snapshot partition 0 to its end; `between(n)` runs after each step."""
    sends = FakeSends()
    snaps = snapshots_to(sends, live_keys)

    async def run() -> None:
        for n in range(100):
            await snaps.step({0: part})
            for _ in range(5):
                await asyncio.sleep(0)  # the sender's turn
            if between is not None:
                between(n)
            if snaps.walk is None and snaps.sending is None and sends.sent:
                return
        raise AssertionError("the snapshot did not finish")

    asyncio.run(run())
    return sends


def customers_in(sends: FakeSends) -> list[str]:
    return [s.customer_id for k, v in sends.sent if b"/c/" in k and v is not None for s in decode_chunk(v)]


def judged(customers: Customers, cid: str, n: int = 0) -> None:
    state = customers.get(cid) or CustomerState(cid)
    state, _ = judge(state, Touch(cid, "web", f"{cid}-e{n}", T0 + n, "login"), RULES, 0)
    customers.put(state)


def test_a_snapshot_is_the_written_state_at_the_offset_on_disk(tmp_path: Path) -> None:
    """What a snapshot holds is one moment of the database: states whose output was written,
    at the offset stored with them; what the judge changes meanwhile is not in it."""
    customers = store(tmp_path)
    part = Partition(0, customers, committed=7, touches_since=100, snapshot_keys={b"s/old/c/0", b"s/old/m"})
    for cid in ("C-1", "C-2", "C-3"):
        judged(customers, cid)
    customers.seal(7, T0)
    part.persisted_offset = customers.persist() or 0
    judged(customers, "C-4")  # judged, not written: not in the snapshot
    customers.seal(8, T0)  # sealed, being written: not in it either

    def meanwhile(n: int) -> None:  # written while the snapshot is sent: not in it
        if n == 0:
            customers.persist()

    sends = snapshot(part, between=meanwhile)
    assert sorted(customers_in(sends)) == ["C-1", "C-2", "C-3"]
    keys = [k for k, _ in sends.sent]
    manifest = orjson.loads(dict(sends.sent)[keys[1]])
    assert keys[1].endswith(b"/m") and manifest["chunks"] == 1 and manifest["customers"] == 3
    assert manifest["from_offset"] == 7
    assert sorted(keys[2:]) == [b"s/old/c/0", b"s/old/m"] and all(v is None for _, v in sends.sent[2:])
    assert part.snapshot_keys == set(keys[:2]) and part.touches_since == 0 and part.held == 3


def test_a_snapshot_begun_before_a_batch_is_persisted_does_not_hold_it(tmp_path: Path, monkeypatch: Any) -> None:
    """A snapshot is read over many batches; what they persist meanwhile (changed, new and
    deleted customers) must not reach it, or it would not be the state at its offset."""
    part = sealed(tmp_path, 50)
    customers = part.customers
    sends = FakeSends()
    snaps = snapshots_to(sends)

    async def run() -> None:
        monkeypatch.setattr("pipeline.engine.snapshots.STEP_S", 0.0)
        await snaps.step({0: part})  # begun: nothing encoded yet
        assert snaps.walk is not None and snaps.walk.customers == 0
        for i in range(50):
            judged(customers, f"C-{i}", 1)
        judged(customers, "C-new")
        customers.pop("C-3", erasure=False)
        customers.seal(9, T0 + 1)
        customers.persist()
        customers.db.flush()
        monkeypatch.setattr("pipeline.engine.snapshots.STEP_S", 1.0)
        while snaps.walk is not None or snaps.sending is not None:
            await snaps.step({0: part})
            await asyncio.sleep(0)

    asyncio.run(run())
    states = [s for k, v in sends.sent if b"/c/" in k and v is not None for s in decode_chunk(v)]
    assert sorted(s.customer_id for s in states) == sorted(f"C-{i}" for i in range(50))
    assert all(len(s.events) == 1 for s in states)
    manifest = orjson.loads(next(v for k, v in sends.sent if k.endswith(b"/m") and v is not None))
    assert manifest["from_offset"] == 5


def test_a_partition_resumed_from_disk_reads_its_old_snapshot_keys_before_deleting_them(tmp_path: Path) -> None:
    customers = store(tmp_path)
    judged(customers, "C-1")
    customers.seal(3, T0)
    part = Partition(0, customers, touches_since=1, persisted_offset=customers.persist() or 0)
    asked = []

    async def live_keys(partition: int) -> set[bytes]:
        asked.append(partition)
        return {b"s/other/c/0", b"s/other/m"}

    sends = snapshot(part, live_keys)
    assert asked == [0] and [k for k, v in sends.sent if v is None] == [b"s/other/c/0", b"s/other/m"]


def test_state_on_disk_is_what_was_persisted_with_its_offset(tmp_path: Path) -> None:
    """A batch's states and its offset are one atomic write, made only once its output is
    written: a crash before it leaves the disk at the previous batch, states and offset."""
    settings = StateSettings(compression="none")
    disk = Disk(tmp_path, settings, b"test-secret")
    customers = Customers(0, asyncio.run(disk.open("p0")), Decoded(10), disk.secret, disk.key_id)
    judged(customers, "C-1")
    customers.seal(5, T0)
    assert customers.persist() == 5
    judged(customers, "C-1", 1)
    judged(customers, "C-2", 1)
    customers.seal(9, T0 + 1)  # its output never written: a crash
    customers.close()

    again = Customers(0, asyncio.run(disk.open("p0")), Decoded(10), disk.secret, disk.key_id)
    assert again.stored() == (5, T0) and again.count() == 1
    one = again.get("C-1")
    assert one is not None and [e.touch.event_id for e in one.events] == ["C-1-e0"]
    assert again.get("C-2") is None
    again.close()
    # keyed with another secret (privacy.fingerprint_secret rotated): not found, so not used
    other = Disk(tmp_path, settings, b"another-secret")
    rotated = Customers(0, asyncio.run(other.open("p0")), Decoded(10), other.secret, other.key_id)
    assert rotated.stored() is None
    rotated.close()


def test_the_decoded_cache_is_bounded_and_a_state_let_go_is_read_back(tmp_path: Path) -> None:
    customers = store(tmp_path, capacity=2)
    for n in range(5):
        judged(customers, f"C-{n}")
    customers.seal(5, T0)
    customers.persist()
    assert len(customers.decoded) == 2
    zero = customers.get("C-0")
    assert zero is not None and zero.events[0].touch.event_id == "C-0-e0" and len(customers.decoded) == 2


@settings(max_examples=150, deadline=None)
@given(log=messages(), data=st.data())
def test_states_sealed_read_back_and_kept_in_memory_judge_as_states_never_stored(
    log: list[Message], data: Any, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Through the store (a small cache: states read back, and states kept in memory across
    seals, which hold their events as stored after a seal), every verdict and the final
    states are those of states that never left memory; also when pruning cuts the oldest."""
    customers = store(tmp_path_factory.mktemp("db"), capacity=data.draw(st.integers(1, 4), label="cache"))
    rules = data.draw(st.sampled_from([RULES, PRUNING]), label="rules")
    plain: dict[str, CustomerState] = {}
    for offset, m in enumerate(log, 1):
        kind, payload = m
        if kind == "touch":
            a, b = fresh(m)[1], fresh(m)[1]
            cid = payload.customer_id
            expected = judge(plain.setdefault(cid, CustomerState(cid)), a, rules, 0)[1]
            state, verdict = judge(customers.get(cid) or CustomerState(cid), b, rules, 0)
            customers.put(state)
            assert (verdict.rows, verdict.alerts) == (expected.rows, expected.alerts)
        elif kind == "profile":
            cid, version, tier, known = payload
            apply_profile(plain.setdefault(cid, CustomerState(cid)), Profile(version, tier, known))
            customers.put(apply_profile(customers.get(cid) or CustomerState(cid), Profile(version, tier, known))[0])
        else:
            plain.pop(payload, None)
            customers.pop(payload, erasure=True)
        if data.draw(st.booleans(), label=f"sealed after {offset}"):
            if data.draw(st.booleans(), label="encoded ahead"):
                for _ in customers.encoding(slice_s=0):
                    pass
            customers.seal(offset, T0)
            customers.persist()
    stored = {cid: s for cid in CUSTOMERS if (s := customers.get(cid)) is not None}
    for cid, state in stored.items():  # what is known of the events too (ids, fold states, ...)
        # (not after pruning: a read-back state folds its states again from its base, and
        # they may differ from those kept in memory while every verdict agrees, as asserted)
        if state.has_events() and rules is RULES:
            assert orjson.loads(orjson.dumps(state.stored()[0])) == orjson.loads(orjson.dumps(plain[cid].stored()[0]))
    assert view(stored) == view(plain)  # (after: it decodes the events without the rules' fold states)
    customers.close()


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["get", "put", "drop", "drop_partition"]), st.integers(0, 1),
                          st.integers(0, 12)), max_size=300))  # fmt: skip
def test_the_decoded_cache_holds_at_most_its_capacity_and_only_what_was_last_put(ops: list[Any]) -> None:
    cache = Decoded(5)
    last: dict[tuple[int, str], CustomerState] = {}
    for op, partition, n in ops:
        key = (partition, f"C-{n}")
        if op == "put":
            last[key] = CustomerState(key[1])
            cache.put(key, last[key])
        elif op == "get":
            found = cache.get(key)
            assert found is None or found is last[key]
        elif op == "drop":
            cache.drop(key)
            last.pop(key, None)
        else:
            cache.drop_partition(partition)
            last = {k: v for k, v in last.items() if k[0] != partition}
        assert len(cache) <= 5
    assert sum(cache.get(k) is not None for k in last) == len(cache)  # nothing dropped is held


def test_an_erased_customer_leaves_the_database_files(tmp_path: Path) -> None:
    customers = store(tmp_path)
    for cid in ("C-keep", "C-gone-4711"):
        judged(customers, cid)
    customers.seal(2, T0)
    customers.persist()
    customers.db.flush()  # in the files, not only in the memtable and the log
    assert any(b"C-gone-4711" in f.read_bytes() for f in (tmp_path / "p0").iterdir() if f.is_file())
    customers.pop("C-gone-4711", erasure=True)
    customers.seal(3, T0)
    customers.persist()
    leftovers = [f.name for f in (tmp_path / "p0").iterdir() if f.is_file() and b"C-gone-4711" in f.read_bytes()]
    assert customers.count() == 1
    assert leftovers == [] and customers.get("C-gone-4711") is None and customers.get("C-keep") is not None


def test_a_snapshot_loaded_into_an_empty_database_gives_the_same_states(tmp_path: Path) -> None:
    rng = random.Random(5)
    big = CustomerState("C-big")
    for n in range(400):  # incompressible event ids: spread over several entries
        touch = Touch("C-big", "web", f"w{n}-{rng.getrandbits(400):x}", 1_000_000 * n, "page_view")
        big, _ = judge(big, touch, Rules(), 0)
    small = CustomerState("C-small")
    values = encode_chunks([small, big], limit=8_000)
    part = Partition(0, store(tmp_path))
    found = Found(0, {chunk_key("s1", n): v for n, (v, _) in enumerate(values)})
    found.snapshots[manifest_key("s1")] = orjson.dumps(
        {"format": 1, "snapshot": "s1", "partition": 0, "from_offset": 4, "chunks": len(values), "customers": 2}
    )
    source = asyncio.run(load(part, found, committed=9, log_start=0))
    assert source == "snapshot s1" and part.next_offset == 4 and part.replay_until == 9
    assert part.customers.stored() == (4, big.max_t)
    loaded = part.customers.get("C-big")
    assert loaded is not None and [s.touch.event_id for s in loaded.events] == [s.touch.event_id for s in big.events]
    assert part.customers.get("C-small") == small and part.customers.count() == 2


def test_a_chunk_never_exceeds_the_message_limit_and_a_large_customer_is_joined_again() -> None:
    """A customer whose state alone is over the limit is spread over several entries, and a
    load joins them: a snapshot that cannot be sent would leave the partition without one."""
    rng = random.Random(5)
    big = CustomerState("C-big")
    for n in range(400):  # incompressible event ids: about 40 KB compressed in all
        touch = Touch("C-big", "web", f"w{n}-{rng.getrandbits(400):x}", 1_000_000 * n, "page_view")
        big, _ = judge(big, touch, Rules(), 0)
    small = CustomerState("C-small")
    values = encode_chunks([small, big], limit=8_000)
    assert len(values) > 2 and all(len(v) <= 8_000 for v, _ in values)
    loaded: dict[str, CustomerState] = {}
    for value, _ in values:
        for state in decode_chunk(value):
            add_loaded(loaded, state)
    assert [s.touch.event_id for s in loaded["C-big"].events] == [s.touch.event_id for s in big.events]
    assert loaded["C-big"].alerts == big.alerts and "C-small" in loaded


def test_a_seal_whose_write_never_finished_is_never_persisted_with_a_later_offset(tmp_path: Path) -> None:
    """Its output was not written: putting its states on disk with the next batch's offset
    would make a restart drop their events as already seen."""
    customers = store(tmp_path)
    judged(customers, "C-1")
    customers.seal(3, T0)  # its write fails
    judged(customers, "C-1", 1)
    with pytest.raises(RuntimeError, match="sealed again"):
        customers.seal(4, T0)


def test_an_erasure_during_a_snapshot_ends_it_and_leaves_the_files(tmp_path: Path) -> None:
    """A snapshot being made pins the customer's old value in RocksDB and would publish it."""
    customers = store(tmp_path)
    part = Partition(0, customers, touches_since=5)
    for cid in ("C-keep", "C-gone-4711"):
        judged(customers, cid)
    customers.seal(2, T0)
    part.persisted_offset = customers.persist() or 0
    customers.db.flush()
    snaps = snapshots_to(FakeSends())

    async def run() -> None:
        await snaps.step({0: part})  # a walk holds a RocksDB iterator now
        assert snaps.sending is not None
        snaps.abandon({0})  # what the judge does on an erasure
        customers.pop("C-gone-4711", erasure=True)
        customers.seal(3, T0)
        customers.persist()
        await asyncio.sleep(0)

    asyncio.run(run())
    assert (
        part.snapshot_keys is None and part.snapshot_at == 0.0
    )  # the next snapshot comes at once, and reads the topic
    leftovers = [f.name for f in (tmp_path / "p0").iterdir() if f.is_file() and b"C-gone-4711" in f.read_bytes()]
    assert leftovers == []


def test_after_bounds_every_key_with_the_prefix() -> None:
    assert after(b"r/a") == b"r/b" and after(b"r/a\xff\xff") == b"r/b"
    assert after(b"c/") == b"c0"


def test_a_disk_keeps_its_member_id_and_another_disk_has_its_own(tmp_path: Path) -> None:
    """Static membership: a worker restarted on its disk rejoins its groups as the same member
    (and has its partitions back at once); a new disk is a new member."""
    settings = StateSettings()
    first = Disk(tmp_path / "a", settings, b"s").member_id()
    assert first.startswith("cem-") and Disk(tmp_path / "a", settings, b"s").member_id() == first
    assert Disk(tmp_path / "b", settings, b"s").member_id() != first
    # one worker per disk: a second one would take the first one's place in the groups
    held = Disk(tmp_path / "a", settings, b"s")
    assert held.member_id() == first
    with pytest.raises(RuntimeError, match="another worker"):
        Disk(tmp_path / "a", settings, b"s").member_id()
    # an id cut short by a crash is made anew
    (tmp_path / "b" / "member-id").write_text("cem-12")
    assert Disk(tmp_path / "b", settings, b"s").member_id() not in ("cem-12", first)


def _history(n: int) -> CustomerState:
    state = CustomerState("C-1")
    apply_profile(state, Profile(1, "gold", ("passport_number",)))
    for i in range(n):
        contact = i % 3 == 0
        touch = Touch("C-1", "call_center" if contact else "web", f"e{i}", T0 + i * 3_600_000_000,
                      "call" if contact else "form_submit", matter="refund" if contact else "", place=f"web:f{i % 2}",
                      is_contact=contact, fields=("passport_number",) if i % 4 == 0 else ())  # fmt: skip
        state, _ = judge(state, touch, RULES, 7)
    return state


def test_an_event_in_order_is_judged_without_decoding_the_history_read_back() -> None:
    """The stored form keeps what the judge needs of a customer's events apart from them: an
    event after them is judged, and the state stored again, with them still encoded."""
    state = _history(12)
    assert state.alerts  # the history raised alerts, so their cooldowns are stored too
    back = decode(encode(state))
    assert back.packed is not None and back.packed.count == 12
    later = Touch("C-1", "web", "e12", T0 + 12 * 3_600_000_000, "page_view", place="web:home")
    back, verdict = judge(back, later, RULES, 7)
    assert back.packed is not None and len(back._events) == 1  # judged without decoding them
    again = decode(encode(back))
    assert again.packed is not None and again.packed.count == 13
    state, expected = judge(state, later, RULES, 7)
    assert verdict == expected and again == state
    late = Touch(
        "C-1", "web", "e13", T0 + 3_600_000_000 // 2, "form_submit", place="web:f9", fields=("passport_number",)
    )
    again, verdict = judge(again, late, RULES, 7)  # among them: decoded, and judged again from the first
    state, expected = judge(state, late, RULES, 7)
    assert again.packed is None and verdict == expected and again == state
    again = decode(encode(again))
    redelivered = Touch("C-1", "web", "e1", T0 + 3_600_000_000, "form_submit", place="web:f1")
    again, verdict = judge(again, redelivered, RULES, 7)  # a duplicate: decoded to be sure, states kept
    assert verdict.duplicate and decode(encode(again)).packed.states is not None  # type: ignore[union-attr]


def test_a_value_stored_in_the_form_before_is_read() -> None:
    """A database written before the events were kept apart is still read (and snapshotted)."""
    state = _history(6)
    old = struct.pack(">q", state.max_t or -1) + orjson.dumps(state.to_snapshot())
    assert decode(old) == state
    ((chunk, _),) = encode_stored([old, encode(state)])
    assert decode_chunk(chunk) == [state, state]


def test_a_chain_whose_first_contact_was_pruned_after_the_read_back_keeps_it() -> None:
    """A contact passed on every 6 days; read back; the next one prunes the first (the kept
    history is 37 days); then a page view comes late among them. Replayed from nothing, the
    kept contacts would start a chain of their own and their rows be written again; replayed
    from the fold states stored with them, nothing changes, as in memory."""
    rules = load_settings().rules_obj
    day = MICROS_PER_DAY

    def call(i: int, prev: str) -> Touch:
        return Touch("C-1", "call_center", f"c{i}", T0 + 6 * (i - 1) * day, "call", matter="baggage",
                     place="call_center:q1", agent_id=f"A{i}", is_contact=True, outcome="unresolved",
                     previous_contact_id=prev)  # fmt: skip

    memory = CustomerState("C-1")
    for i in range(1, 8):
        memory, _ = judge(memory, call(i, f"c{i - 1}" if i > 1 else ""), rules, 0)
    back = decode(encode(memory))
    late = Touch("C-1", "web", "v1", T0 + 35 * day + day // 2, "page_view", place="web:home")
    for touch in (call(8, "c7"), late):
        memory, expected = judge(memory, touch, rules, 0)
        back, verdict = judge(back, touch, rules, 0)
        assert verdict == expected
    assert [r.touch.event_id for r in verdict.rows] == ["v1"] and back == memory


def test_a_snapshot_lets_the_event_loop_through_between_its_chunks(tmp_path: Path, monkeypatch: Any) -> None:
    """Stage A shares the judge's event loop: a step of a snapshot must not hold it for all
    the chunks it encodes."""
    part = sealed(tmp_path, 200)
    snaps = snapshots_to(FakeSends())
    monkeypatch.setattr("pipeline.engine.snapshots.CHUNK_BYTES", 1)  # chunks of 10 customers after the first
    monkeypatch.setattr("pipeline.engine.snapshots.STEP_S", 60.0)  # one step encodes them all
    turns = 0

    async def other() -> None:
        nonlocal turns
        while True:
            turns += 1
            await asyncio.sleep(0)

    async def run() -> int:
        task = asyncio.create_task(other())
        await asyncio.sleep(0)
        before = turns
        await snaps.step({0: part})
        assert snaps.walk is None  # all encoded in this one step
        task.cancel()
        return turns - before

    # 64 customers in the first chunk (its size is not known yet), then chunks of 10: 14 chunks
    assert asyncio.run(run()) >= 14


def test_a_snapshot_step_takes_a_share_of_the_judges_work_before_it(tmp_path: Path, monkeypatch: Any) -> None:
    """A worker on a backlog judges for a second or so between two steps: its steps grow with
    that (up to a cap), or its partitions' first snapshots would take minutes each."""
    part = sealed(tmp_path, 200)
    snaps = snapshots_to(FakeSends())
    monkeypatch.setattr("pipeline.engine.snapshots.CHUNK_BYTES", 1)  # chunks of 10 customers after the first
    monkeypatch.setattr("pipeline.engine.snapshots.STEP_S", 0.0)

    async def run() -> tuple[int, int, bool]:
        await snaps.step({0: part}, worked_s=0.0)  # begun; a step of no budget encodes nothing
        assert snaps.walk is not None
        idle = snaps.walk.chunks
        await snaps.step({0: part}, worked_s=0.0)
        still = snaps.walk is not None and snaps.walk.chunks
        await snaps.step({0: part}, worked_s=10.0)  # 1 s of work: a step of up to STEP_MAX_S
        return idle, int(still), snaps.walk is None

    idle, still, done = asyncio.run(run())
    assert (idle, still) == (0, 0)
    assert done  # 15 chunks of a few customers: well within the capped share


def test_a_snapshot_of_stored_values_loads_back_the_same_bytes_without_decoding(tmp_path: Path) -> None:
    """A lost disk is rebuilt from stored values as they were (a profile, alerts, packed
    events, a customer with no events): the same database, byte for byte, and no state decoded."""
    customers = store(tmp_path / "a")
    history = _history(12)
    assert history.alerts
    customers.put(history)
    quiet = CustomerState("C-quiet")
    apply_profile(quiet, Profile(2, "silver", ("email",)))
    customers.put(quiet)
    for i in range(40):
        judged(customers, f"C-{i + 10}", i % 3)
    customers.seal(5, T0)
    part = Partition(0, customers, touches_since=50, persisted_offset=customers.persist() or 0)
    sends = snapshot(part)
    chunks = {k: v for k, v in sends.sent if v is not None}
    before = list(customers.values())

    loaded = Partition(0, store(tmp_path / "b"))
    decoded = 0
    real = CustomerState.from_snapshot

    def counted(data: list[Any]) -> CustomerState:
        nonlocal decoded
        decoded += 1
        return real(data)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(CustomerState, "from_snapshot", staticmethod(counted))
        source = asyncio.run(load(loaded, Found(0, chunks), committed=5, log_start=0))
    assert source.startswith("snapshot ") and decoded == 0
    assert list(loaded.customers.values()) == before and loaded.customers.count() == 42
    assert loaded.customers.stored() == (5, max(history.max_t or 0, T0 + 2))
    assert decode(dict(before)[loaded.customers.key_of("C-1")]) == history
