"""A real HTTP server on loopback that records what it receives, and can misbehave:
answer 500 for its first N requests (echoing the request's headers, as careless servers
do), hang past the client's timeout, be slow, or redirect. With a secret it checks each
request's signature with the code docs/security.md gives to receivers."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.doc_snippets import verify_cem_signature

VERIFY = verify_cem_signature()


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: Any
    verified: bool | None = None  # None: the receiver has no secret


@dataclass
class Receiver:
    fail_first: int = 0  # answer 500 to this many requests first
    hang_first: int = 0  # then hang (longer than the client's timeout) on this many
    hang_s: float = 3.0
    delay_s: float = 0.0  # every successful request takes this long
    host: str = "127.0.0.1"  # any 127.x.y.z: a different address models another host
    secret: bytes | None = None  # check X-CEM-Signature with it
    redirect_to: str | None = None  # answer every request with a 307 to this URL (+ the path)
    echo_headers: bool = False  # the 500 answers quote the request's headers
    received: list[Received] = field(default_factory=list)
    attempts: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://{self.host}:{self.server.server_address[1]}"

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with receiver.lock:
                    receiver.attempts += 1
                    n = receiver.attempts
                if receiver.redirect_to is not None:
                    self.send_response(307)
                    self.send_header("Location", receiver.redirect_to + self.path)
                    self.end_headers()
                    return
                if n <= receiver.fail_first:
                    self.send_response(500)
                    self.end_headers()
                    self.wfile.write(b"down for maintenance")
                    if receiver.echo_headers:
                        self.wfile.write(f"; you sent {dict(sorted(self.headers.items()))}".encode())
                    return
                if n <= receiver.fail_first + receiver.hang_first:
                    time.sleep(receiver.hang_s)
                    self.send_response(504)
                    self.end_headers()
                    return
                time.sleep(receiver.delay_s)
                verified = None
                if receiver.secret is not None:
                    verified = VERIFY(
                        receiver.secret,
                        body,
                        self.headers.get("X-CEM-Timestamp", ""),
                        self.headers.get("X-CEM-Signature", ""),
                    )
                with receiver.lock:
                    receiver.received.append(Received(self.path, dict(self.headers), json.loads(body), verified))
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer((self.host, 0), Handler)
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
