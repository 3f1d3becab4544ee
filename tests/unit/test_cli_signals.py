"""How `cem` (pipeline/ops/cli.py `main`) meets a peer that goes away: a service writing to a
socket whose peer closed carries on; a command whose output's reader is gone stops quietly."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_a_service_writing_to_a_socket_its_peer_closed_lives_on() -> None:
    """What a worker does when the broker restarts: its client writes on a connection the
    broker has just closed. The client library sees an error and reconnects; with SIGPIPE's
    default action the process was killed on the spot, without a word in its log."""
    service = textwrap.dedent(
        """
        import socket, sys
        import pipeline.ops.cli as cli

        def service():
            ours, broker = socket.socketpair()
            broker.close()  # the peer goes away
            try:
                for _ in range(100):
                    ours.send(b"x" * 1024)
            except BrokenPipeError:
                print("the write failed; the client reconnects")

        cli.app = service
        cli.main()
        """
    )
    done = subprocess.run([sys.executable, "-c", service], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    assert done.stdout.strip() == "the write failed; the client reconnects"


def test_a_command_whose_reader_goes_away_stops_quietly() -> None:
    """`cem ... | head`: no traceback, no complaint at exit."""
    cem = subprocess.Popen(
        [sys.executable, "-m", "pipeline.ops.cli", "generate", "/dev/stdout", "--customers", "3000"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert cem.stdout is not None and cem.stderr is not None
    first = cem.stdout.readline()
    cem.stdout.close()  # the reader goes away
    assert cem.wait(timeout=120) == 1
    assert first.startswith(b'{"topic": ')
    assert cem.stderr.read() == b""


def test_a_service_a_closed_connection_stops_says_so(tmp_path: Path) -> None:
    """A BrokenPipeError that escapes a service is its own error, logged with the traceback:
    click takes any EPIPE for the output's reader gone and would end the service silently."""
    service = textwrap.dedent(
        """
        import pipeline.ops.signals as signals

        def run_until_signalled(*args, **kwargs):
            raise BrokenPipeError(32, "Broken pipe")

        signals.run_until_signalled = run_until_signalled
        import sys
        import pipeline.ops.cli as cli
        sys.argv = ["cem", "adapt"]
        cli.main()
        """
    )
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "CEM_FINGERPRINT_SECRET": "x" * 32}
    done = subprocess.run(
        [sys.executable, "-c", service], cwd=ROOT, capture_output=True, text=True, timeout=120, env=env
    )
    assert done.returncode == 1, (done.returncode, done.stderr[-2000:])
    assert "a connection was closed under the service" in done.stderr, done.stderr[-2000:]
    assert "BrokenPipeError" in done.stderr
