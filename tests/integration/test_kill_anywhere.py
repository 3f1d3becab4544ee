"""Crash anywhere, same results: SIGKILL at moments spread over the whole life of the stream.

A labelled workload (customers named by id, email, loyalty id and phone; duplicates; arrival
up to three days out of event-time order: tests/journeys.py) runs while workers are killed
again and again: by a timer during start-up, and by failpoints (pipeline/engine/failpoints.py) at
the moments a timer cannot aim at: while the identity index loads, while stage A holds the
touchpoints for the CRM profiles, between a batch forwarded and its commit, after a
partition's state is loaded and while its log is read again, between a ClickHouse write and
its commit, during a snapshot, while a second worker joins. Each kill is followed by a
restart, on the same disk (once with the disk lost). Then the results must be those of
event-time order, exactly: each touchpoint once, under its customer, with its flags; every
alert of the labels, none other, once.

The plan is drawn from a seed (CEM_KILL_SEED, printed), so a failure can be run again.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field

import pytest

from pipeline.kafka.admin import Record, producer, send_in_order, wait_until_processed
from tests.integration.conftest import Namespace
from tests.integration.test_faults import open_on_the_topic, records, wait_until
from tests.journeys import Journeys, generate
from tests.scenario import PureResult, run_pure

pytestmark = pytest.mark.faults

CUSTOMERS = 2500
ERASURES = 12
SEED = int(os.environ.get("CEM_KILL_SEED", "20261206"))
ENV = {
    # a snapshot every few seconds of work: restarts load one and read the log after it, and
    # one is under way at many moments
    "CEM_WORKER__SNAPSHOT_MIN_TOUCHPOINTS": "1500",
    "CEM_WORKER__SNAPSHOT_INTERVAL_S": "8",
    "CEM_WORKER__BATCH_SIZE": "500",  # more batches, so more moments between them
}


#: the kinds the journeys label (tests/journeys.py); the default rule file has more rules
LABELLED_KINDS = ("repeat_contact", "re_entry")


def labelled(kind: str, customer_id: str, subject: str) -> tuple[str, str, str] | None:
    return (kind, customer_id, subject) if kind in LABELLED_KINDS else None


@dataclass
class Expected:
    journeys: Journeys
    pure: PureResult
    open_alerts: set[str]


@pytest.fixture(scope="module")
def expected() -> Expected:
    j = generate(CUSTOMERS, seed=SEED % 1000, erasures=ERASURES)
    pure = run_pure(j.lines)
    opened = pure.open_alerts()
    # the labels are the whole truth: event-time order flags exactly them (of the kinds labelled;
    # the rule file's other rules are checked against event-time order below, not labels)
    assert {labelled(a["kind"], a["customer_id"], a["matter"] or a["field"]) for a in opened.values()} - {None} == (
        j.labels
    )
    assert len(j.touchpoints) > 10_000 and all(j.identified_by.values())
    return Expected(j, pure, set(opened))


@dataclass
class Kill:
    """One incarnation of a worker and how it dies: at a failpoint (`point`, on its `nth`
    pass), or `after_s` seconds after it started (`after_ready`: after it was ready)."""

    what: str
    point: str | None = None
    nth: int = 1
    after_s: float = 0.0
    after_ready: bool = False
    slice_first: bool = False  # its slice of the stream is sent before it starts (a backlog)
    joiner: bool = False  # a second worker starts, and the first is killed while it joins
    disk_lost: bool = False  # it starts with its data directory deleted (a new machine)
    reached: bool = False
    took_s: float = 0.0


@dataclass
class Feeder:
    """The touchpoints after the first backlog, in slices: each incarnation of a worker gets
    one, sent at a steady pace while it starts, works and dies, so that every moment of the
    plan comes with work in hand."""

    space: Namespace
    slices: list[list[Record]]
    slice_s: float = 8.0
    thread: threading.Thread | None = None
    released: threading.Semaphore = field(default_factory=lambda: threading.Semaphore(0))
    error: list[BaseException] = field(default_factory=list)

    def start(self) -> None:
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def release(self) -> None:
        """Send the next slice."""
        self.released.release()

    def _run(self) -> None:
        try:
            prod = producer(self.space.settings)
            crm = self.space.settings.kafka.topics.profiles
            for n, recs in enumerate(self.slices):
                self.released.acquire()
                if n == 0:  # as `cem produce` sends a file
                    send_in_order(prod, recs, crm)
                    continue
                step = max(1, len(recs) // 10)
                for k in range(0, len(recs), step):
                    send_in_order(prod, recs[k : k + step], crm)
                    time.sleep(self.slice_s / 10)
            prod.close()
        except BaseException as e:  # reported by join()
            self.error.append(e)

    def join(self) -> None:
        assert self.thread is not None
        for _ in self.slices:  # whatever the plan did not use
            self.release()
        self.thread.join(timeout=300)
        assert not self.thread.is_alive() and not self.error, self.error


def plan(rng: random.Random, workers: int) -> list[Kill]:
    """The kills: start-up first (the later start-ups find the backlog the one before left),
    the others in an order drawn from `rng`."""
    first = [
        Kill(
            "the first seconds of the stream: CRM profiles and touchpoints reach a ready worker",
            after_s=rng.uniform(1.0, 3.0),
            after_ready=True,
        ),  # fmt: skip
        Kill(
            "start-up: while stage A holds the touchpoints for the CRM profiles", "bootstrap.holding", slice_first=True
        ),  # fmt: skip
        Kill(
            "the disk lost: the state rebuilt from a snapshot, the log read again up to the committed offset",
            "judge.replaying",
            nth=rng.randint(1, 3),
            disk_lost=True,
        ),  # fmt: skip
        Kill("start-up: before the groups are joined", after_s=rng.uniform(0.3, 2.0)),
        Kill("start-up: while the identity index loads", "index.loading"),
        Kill("between a ClickHouse write and its commit", "judge.written", nth=1),
        Kill(
            "start-up: a partition's state loaded, its log not read again yet", "judge.loaded", nth=rng.randint(1, 3)
        ),  # fmt: skip
    ]
    rest = [
        Kill("the first seconds of the backlog", after_s=rng.uniform(0.2, 2.0), after_ready=True),
        Kill("a batch forwarded by stage A, not committed", "resolve.forwarded", nth=rng.randint(1, 3)),
        Kill("alerts and index entries handed to the producer", "judge.sent", nth=rng.randint(1, 5)),
        Kill("between a ClickHouse write and its commit, later", "judge.written", nth=rng.randint(2, 3)),
        Kill("after a commit", "judge.committed", nth=rng.randint(1, 3)),
        Kill("during a snapshot: chunks sent, no manifest", "snapshot.chunk_sent", nth=rng.randint(1, 2)),
        Kill("during a snapshot: manifest sent, older ones not deleted", "snapshot.manifest_sent"),
        Kill("while a second worker joins", after_s=rng.uniform(0.3, 3.0), joiner=True),
    ]
    rng.shuffle(rest)
    if workers > 1:  # the survivor holds the identity index and the committed offsets up to date
        first = [k for k in first if k.point not in ("index.loading", "bootstrap.holding")]
    return first + rest


def run_plan(space: Namespace, kills: list[Kill], feeder: Feeder, others: int = 0) -> None:
    """Carry out the kills, each followed by a restart; `others` workers run throughout
    (two-worker runs), so each death hands partitions to them and back."""
    survivors = [space.start_worker(env=ENV) for _ in range(others)]
    for kill in kills:
        env = dict(ENV)
        if kill.point:
            env["CEM_FAILPOINTS"] = f"{kill.point}:{kill.nth}"
        started = time.monotonic()
        if kill.slice_first:
            feeder.release()
            time.sleep(1)
        if kill.disk_lost:
            shutil.rmtree(space.next_data_dir(), ignore_errors=True)
        proc = space.start_worker(env=env, wait=False)
        if kill.point:
            if not kill.slice_first:
                feeder.release()
            kill.reached = _dies_within(proc, 60)
        else:
            if kill.after_ready or kill.joiner:
                wait_until(lambda p=proc: _ready(space, p), 120, "the worker to be ready")  # type: ignore[misc]
            feeder.release()
            if kill.joiner:
                survivors.append(space.start_worker(env=ENV, wait=False))
            time.sleep(kill.after_s)
            kill.reached = proc.poll() is None
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        kill.took_s = time.monotonic() - started
        print(f"  {'killed' if kill.reached else 'NOT REACHED'} after {kill.took_s:5.1f}s: {kill.what}"
              f"{f' ({kill.point}:{kill.nth})' if kill.point else ''}")  # fmt: skip
        if kill.joiner:  # and the joiner, a moment later: two kills in a row
            joiner = survivors.pop()
            time.sleep(kill.after_s / 2)
            joiner.send_signal(signal.SIGKILL)
            joiner.wait(timeout=30)


def _ready(space: Namespace, proc: subprocess.Popen[bytes]) -> bool:
    assert proc.poll() is None, f"the worker died before it was ready:\n{space.worker_log()[-3000:]}"
    try:
        return bool(space.stats(proc)["ready"])
    except OSError:
        return False


def _dies_within(proc: subprocess.Popen[bytes], timeout_s: float) -> bool:
    try:
        return proc.wait(timeout=timeout_s) == -signal.SIGKILL
    except subprocess.TimeoutExpired:
        return False


def verify(space: Namespace, exp: Expected) -> None:
    """Exactly the results of event-time order, each once, on ClickHouse and on the topic."""
    ch = space.ch()
    rows = ch.execute(f"SELECT event_id, customer_id, friction, reentered_fields FROM {space.db}.timeline")
    ids = [r[0] for r in rows]
    twice = {e for e in ids if ids.count(e) > 1} if len(ids) != len(set(ids)) else set()
    filed = {e: sorted(c for i, c, _, _ in rows if i == e) for e in sorted(twice)[:5]}
    assert not twice, f"{len(twice)} touchpoints show twice, e.g. {filed}"
    got = {e: (c, list(f), list(r)) for e, c, f, r in rows}
    want = {e: (r["customer_id"], r["friction"], r["reentered"]) for e, r in exp.pure.rows.items()}
    missing = set(want) - set(got)
    assert not missing, f"{len(missing)} touchpoints lost, e.g. {sorted(missing)[:5]}"
    assert set(got) == set(want), f"{len(set(got) - set(want))} unexpected touchpoints"
    wrong = {e: (got[e], want[e]) for e in want if got[e] != want[e]}
    customers = {want[e][0] for e in wrong}
    assert not wrong, f"{len(wrong)} rows of {len(customers)} customers differ, e.g. {list(wrong.items())[:4]}"

    sql = f"SELECT alert_id, status, kind, customer_id, matter, field, count FROM {space.db}.friction_alerts"
    alerts = ch.execute(sql)
    assert len(alerts) == len({a[0] for a in alerts}), "an alert shows twice"
    opened = {a[0]: a for a in alerts if a[1] == "open"}
    assert set(opened) == exp.open_alerts, (len(set(opened) - exp.open_alerts), len(exp.open_alerts - set(opened)))
    counts = {aid: exp.pure.alerts[aid]["count"] for aid in exp.open_alerts}
    assert {aid: a[6] for aid, a in opened.items()} == counts, "alerts with other counts than event-time order"
    flagged = {labelled(a[2], a[3], a[4] or a[5]) for a in opened.values()} - {None}
    tp = len(flagged & exp.journeys.labels)
    precision, recall = tp / max(1, len(flagged)), tp / max(1, len(exp.journeys.labels))
    print(f"  precision {precision:.3f}, recall {recall:.3f} ({tp} of {len(exp.journeys.labels)} labels)")
    assert precision == recall == 1.0
    assert open_on_the_topic(space) == exp.open_alerts


def kill_anywhere(space: Namespace, exp: Expected, kills: list[Kill], others: int = 0) -> None:
    """The first worker starts on empty topics; then come the CRM profiles and a quarter of
    the touchpoints (as an operator's first `cem produce` would send them: the start-up
    bootstrap finds no profile to wait for), and the rest in slices, one per incarnation,
    with the CRM tombstones among them."""
    recs = records(space, exp.journeys.lines)
    profiles = [r for r in recs if r.topic == space.settings.kafka.topics.profiles]
    touches = [r for r in recs if r.topic != space.settings.kafka.topics.profiles]
    tombstones = records(space, exp.journeys.erasures)
    first, later = touches[: len(touches) // 4], touches[len(touches) // 4 :]
    n = len(kills)
    slices = [profiles + first] + [later[k * len(later) // n : (k + 1) * len(later) // n] for k in range(n)]
    for k, tombstone in enumerate(tombstones):  # slice 1 (a backlog at a start) has one at least
        part = slices[1 + k % n]
        part.insert(0 if k == 0 else len(part) // 2, tombstone)
    feeder = Feeder(space, slices)
    feeder.start()
    space.start_eraser()
    started = time.monotonic()
    print(f"\nkill anywhere (seed {SEED}): {len(profiles)} profiles, {len(touches)} touchpoints, "
          f"{len(tombstones)} erasures, {len(kills)} kills")  # fmt: skip
    run_plan(space, kills, feeder, others)
    last = space.start_worker(env=ENV)
    feeder.join()
    wait_until_processed(space.settings, timeout_s=600)
    print(f"  {len(kills)} kills and restarts, then caught up: {time.monotonic() - started:.0f}s")
    verify(space, exp)
    assert last.poll() is None
    receipts = space.ch().execute(f"SELECT count(DISTINCT request_id) FROM {space.db}.erasure_receipts")[0][0]
    assert receipts == len(tombstones), (receipts, len(tombstones))
    unreached = [k.what for k in kills if not k.reached]
    assert not unreached, f"moments the run never reached: {unreached}"


def test_kill_anywhere_one_worker(space: Namespace, expected: Expected) -> None:
    kill_anywhere(space, expected, plan(random.Random(SEED), workers=1))


@pytest.mark.scaleout
@pytest.mark.partitions(8)
def test_kill_anywhere_two_workers(space: Namespace, expected: Expected) -> None:
    """One worker keeps running while the other is killed again and again: each death moves
    its partitions to the survivor, each restart moves some back."""
    kill_anywhere(space, expected, plan(random.Random(SEED + 1), workers=2), others=1)
