"""A `cem collect` process for a test namespace, on a port of its own."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tests.integration.conftest import ROOT, Namespace

#: the write keys the tests' collectors accept (source name -> key)
WRITE_KEYS = {"website": "wk-website-0123456789", "app": "wk-app-0123456789abc"}


def collector_port() -> int:
    """A free port in CEM_TEST_COLLECTOR_PORTS (first-last), so that test runs side by side on one
    machine keep to their own blocks; any free port when unset."""
    first, _, last = os.environ.get("CEM_TEST_COLLECTOR_PORTS", "").partition("-")
    candidates = range(int(first), int(last) + 1) if first and last else [0]
    for port in candidates:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            found: int = s.getsockname()[1]
            return found
    raise AssertionError(f"no free port in {first}-{last}")


@dataclass
class CollectorProcess:
    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_collector(
    space: Namespace, *, ack_timeout_s: float = 5.0, extra_env: dict[str, str] | None = None
) -> CollectorProcess:
    import json

    port = collector_port()
    log = space.tmp / "collector.log"
    env = {
        **space.env,
        "CEM_COLLECTOR__WRITE_KEYS": json.dumps(WRITE_KEYS),
        "CEM_COLLECTOR__METRICS_PORT": "0",
        "CEM_COLLECTOR__ACK_TIMEOUT_S": str(ack_timeout_s),
        **(extra_env or {}),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline.ops.cli", "collect", "--port", str(port), "--loglevel", "info"],
        env=env,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        cwd=ROOT,
    )
    space.procs.append(proc)
    collector = CollectorProcess(proc, port, log)
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(f"{collector.url}/health", timeout=1):  # noqa: S310
                return collector
        except OSError:
            pass
        assert proc.poll() is None, f"collector exited:\n{collector.log_text()[-4000:]}"
        assert time.monotonic() < deadline, f"collector not ready:\n{collector.log_text()[-4000:]}"
        time.sleep(0.2)
