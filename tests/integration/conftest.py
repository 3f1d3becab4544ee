"""Integration fixtures: a real Kafka broker and ClickHouse server on the tests' own ports,
started by the test session itself (scripts/stack.sh), and per test an isolated namespace
(topics, consumer group, database) with its own worker process.

A missing service is a failure, never a skip.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from pipeline.kafka.admin import create_topics
from pipeline.settings import Settings, Topics, load_settings
from sinks.clickhouse.client import connect
from sinks.clickhouse.migrate import migrate
from tests.tls import make_ca_and_cert

ROOT = Path(__file__).resolve().parents[2]
STACK_ENV = {
    "CEM_STACK_DIR": str(ROOT / ".local" / "test-stack"),
    "CEM_KAFKA_PORT": os.environ.get("CEM_TEST_KAFKA_PORT", "29092"),
    "CEM_KAFKA_CONTROLLER_PORT": os.environ.get("CEM_TEST_KAFKA_CONTROLLER_PORT", "29093"),
    "CEM_CLICKHOUSE_PORT": os.environ.get("CEM_TEST_CLICKHOUSE_PORT", "29000"),
    "CEM_CLICKHOUSE_HTTP_PORT": os.environ.get("CEM_TEST_CLICKHOUSE_HTTP_PORT", "28123"),
    # ClickHouse also serves TLS (tests/integration/test_clickhouse_tls.py), with a CA and
    # certificate the session makes
    "CEM_CLICKHOUSE_TLS_PORT": os.environ.get("CEM_TEST_CLICKHOUSE_TLS_PORT", "29440"),
    "CEM_CLICKHOUSE_TLS_DIR": str(ROOT / ".local" / "test-stack" / "clickhouse-tls"),
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def stack() -> Iterator[dict[str, str]]:
    env = {**os.environ, **STACK_ENV}
    # start from empty data: what earlier sessions left (gigabytes after a few fault runs)
    # slows every broker start, and a broker restarted mid-test must come back in time
    subprocess.run([str(ROOT / "scripts" / "stack.sh"), "wipe"], env=env, check=True)
    make_ca_and_cert(Path(STACK_ENV["CEM_CLICKHOUSE_TLS_DIR"]), "server")
    subprocess.run([str(ROOT / "scripts" / "stack.sh"), "up"], env=env, check=True)
    yield STACK_ENV
    subprocess.run([str(ROOT / "scripts" / "stack.sh"), "down"], env=env, check=False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Namespace:
    """One test's world: its settings, the environment that selects them, its worker."""

    env: dict[str, str]
    settings: Settings
    tmp: Path
    worker: subprocess.Popen[bytes] | None = None
    ports: dict[int, int] = field(default_factory=dict)  # worker pid -> its web port
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    disks: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)  # data dir slot -> its worker

    @property
    def db(self) -> str:
        return self.settings.clickhouse.database

    def ch(self) -> Any:
        return connect(self.settings.clickhouse, self.db)

    def cem(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "pipeline.ops.cli", *args], env=self.env, text=True, capture_output=True, check=check
        )

    def worker_log(self) -> str:
        path = self.tmp / "worker.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def post_mortem(self, lines: int = 150) -> str:
        """The live workers' counters and the end of their log, each run of lines alike (a
        client retrying in a loop) folded into one."""
        out = ["", "---- post mortem"]
        for proc in self.procs:
            if proc.poll() is None:
                if proc.pid not in self.ports:  # an eraser: no stats page
                    out.append(f"process {proc.pid}: running")
                    continue
                try:
                    stats = self.stats(proc)
                except Exception as e:  # a report must never stand in the way of the stops after it
                    out.append(f"worker {proc.pid}: no stats ({e!r})")
                    continue
                counters = {k: v for k, v in stats.items() if not isinstance(v, dict | list)}
                out.append(f"worker {proc.pid}: {counters}")
                out.extend(f"  {k}: {v}" for k, v in stats.items() if isinstance(v, dict | list))
            else:
                out.append(f"worker {proc.pid}: exited {proc.returncode}")
        folded: list[str] = []
        repeats, last = 0, ""
        for line in self.worker_log().splitlines():
            gist = re.sub(r"^\[[^]]*\] \[\d+\] ", "", line)
            if gist == last:
                repeats += 1
                continue
            if repeats:
                folded.append(f"    ... {repeats} more alike")
            folded.append(line)
            repeats, last = 0, gist
        if repeats:
            folded.append(f"    ... {repeats} more alike")
        out.append(f"---- worker.log, last {lines} of {len(folded)} lines (folded)")
        out.extend(folded[-lines:])
        return "\n".join(out)

    def start_worker(
        self, web_port: int | None = None, *, env: dict[str, str] | None = None, wait: bool = True
    ) -> subprocess.Popen[bytes]:
        """Start a worker process (the first one becomes `self.worker`) and, with `wait`, wait
        for its web server. `env`: this process's own additions (e.g. CEM_FAILPOINTS)."""
        port = web_port or (self.settings.worker.web_port if self.worker is None else free_port())
        log = (self.tmp / "worker.log").open("ab")
        own = env or {}
        env = {**self.env, **own}
        slot = self._free_disk()
        if "CEM_WORKER__DATA_DIR" not in own:
            env["CEM_WORKER__DATA_DIR"] = self.next_data_dir()
        proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline.ops.cli", "worker", "--loglevel", "info", "--web-port", str(port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
        self.disks[slot] = proc
        self.ports[proc.pid] = port
        self.procs.append(proc)
        if self.worker is None or self.worker.poll() is not None:
            self.worker = proc
        if not wait:
            return proc
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health/live", timeout=1):  # noqa: S310
                    return proc
            except OSError:
                pass
            assert proc.poll() is None, f"worker exited:\n{self.worker_log()[-4000:]}"
            assert time.monotonic() < deadline, f"worker not ready:\n{self.worker_log()[-4000:]}"
            time.sleep(0.3)

    def _free_disk(self) -> int:
        """Each worker alive at a time has a disk of its own, as on separate machines; one
        started after another died takes the first free one: a restart finds its disk as it
        was left."""
        return min(i for i in range(len(self.disks) + 1) if i not in self.disks or self.disks[i].poll() is not None)

    def next_data_dir(self) -> str:
        """The data directory the next worker started will have."""
        slot = self._free_disk()
        base = self.env["CEM_WORKER__DATA_DIR"]
        return f"{base}-{slot}" if slot else base

    def start_eraser(self, env: dict[str, str] | None = None, *args: str) -> subprocess.Popen[bytes]:
        """Start `cem eraser` (erasures are finished there, with the eraser role); logs to eraser.log."""
        log = (self.tmp / "eraser.log").open("ab")
        proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline.ops.cli", "eraser", *args],
            env={**self.env, **(env or {})},
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
        self.procs.append(proc)
        return proc

    def stats(self, proc: subprocess.Popen[bytes] | None = None) -> dict[str, Any]:
        import json

        target = proc or self.worker
        assert target is not None
        url = f"http://127.0.0.1:{self.ports[target.pid]}/cem/stats/"
        with urllib.request.urlopen(url, timeout=5) as resp:  # noqa: S310
            data: dict[str, Any] = json.loads(resp.read())
            return data

    def stop_worker(self, proc: subprocess.Popen[bytes] | None = None, sig: int = signal.SIGTERM) -> int | None:
        target = proc or self.worker
        if target is None or target.poll() is not None:
            return None if target is None else target.returncode
        target.send_signal(sig)
        try:
            return target.wait(timeout=60)
        except subprocess.TimeoutExpired:
            target.kill()
            return target.wait()


def make_space(
    stack: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    partitions: int = 4,
    extra_env: dict[str, str] | None = None,
) -> Namespace:
    """Settings for an isolated namespace, with its topics and tables created. `extra_env`
    overrides (e.g. a secured broker and least-privilege users)."""
    tag = uuid.uuid4().hex[:8]
    env = {
        "CEM_KAFKA__BOOTSTRAP_SERVERS": f"127.0.0.1:{stack['CEM_KAFKA_PORT']}",
        "CEM_KAFKA__PARTITIONS": str(partitions),
        "CEM_CLICKHOUSE__PORT": stack["CEM_CLICKHOUSE_PORT"],
        "CEM_CLICKHOUSE__DATABASE": f"cem_test_{tag}",
        "CEM_WORKER__APP_ID": f"cem-test-{tag}",
        "CEM_WORKER__WEB_PORT": str(free_port()),
        "CEM_WORKER__DATA_DIR": str(tmp_path / "worker-data"),
        "CEM_WORKER__BATCH_WITHIN_S": "0.2",
        "CEM_WORKER__SESSION_TIMEOUT_S": "6",
    }
    for name in Topics.model_fields:
        env[f"CEM_KAFKA__TOPICS__{name.upper()}"] = f"t{tag}.{name}"
    env.update(extra_env or {})
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = load_settings()
    create_topics(settings)
    migrate(
        connect(settings.clickhouse.as_role("admin"), "default"),
        settings.clickhouse.database,
        cluster=settings.clickhouse.cluster,
    )
    return Namespace({**os.environ, **env, "PYTHONPATH": str(ROOT)}, settings, tmp_path)


@pytest.fixture
def space(
    stack: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> Iterator[Namespace]:
    """An isolated namespace (topics, consumer group, database) with topics and tables created."""
    marker = request.node.get_closest_marker("partitions")
    space = make_space(stack, tmp_path, monkeypatch, marker.args[0] if marker else 4)
    try:
        yield space
    finally:
        try:
            report = getattr(request.node, "rep_call", None)
            if report is not None and report.failed:
                print(space.post_mortem())  # CI keeps only its console: what the workers were doing
        finally:
            for proc in space.procs:
                space.stop_worker(proc)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Keep the test's outcome on it, for `space` to see at teardown."""
    report = yield
    if report.when == "call":
        item.rep_call = report  # type: ignore[attr-defined]
    return report


@pytest.fixture
def ns(space: Namespace) -> Namespace:
    """An isolated namespace with a pipeline worker running."""
    space.start_worker()
    return space
