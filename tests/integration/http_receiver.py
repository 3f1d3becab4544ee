"""A real HTTP server on loopback that records what it receives, and can misbehave:
answer 500 for its first N requests, hang past the client's timeout, or be slow."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: Any


@dataclass
class Receiver:
    fail_first: int = 0  # answer 500 to this many requests first
    hang_first: int = 0  # then hang (longer than the client's timeout) on this many
    hang_s: float = 3.0
    delay_s: float = 0.0  # every successful request takes this long
    received: list[Received] = field(default_factory=list)
    attempts: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with receiver.lock:
                    receiver.attempts += 1
                    n = receiver.attempts
                if n <= receiver.fail_first:
                    self.send_response(500)
                    self.end_headers()
                    self.wfile.write(b"down for maintenance")
                    return
                if n <= receiver.fail_first + receiver.hang_first:
                    time.sleep(receiver.hang_s)
                    self.send_response(504)
                    self.end_headers()
                    return
                time.sleep(receiver.delay_s)
                with receiver.lock:
                    receiver.received.append(Received(self.path, dict(self.headers), json.loads(body)))
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()

    def wait_for(self, n: int, timeout_s: float = 60) -> list[Received]:
        deadline = time.monotonic() + timeout_s
        while len(self.received) < n:
            assert time.monotonic() < deadline, f"received {len(self.received)} of {n}"
            time.sleep(0.1)
        return list(self.received)
