"""Webhook signatures: HMAC-SHA256 over `<timestamp>.<body>`, the scheme Stripe and GitHub use.

A receiver recomputes the HMAC with its copy of the destination's secret and compares it in
constant time; the timestamp is inside the signed text, so a captured request cannot be
replayed later with a fresh timestamp. docs/security.md has the verification code for
receivers (tests/unit/test_delivery.py runs that code against `sign`).
"""

from __future__ import annotations

import hashlib
import hmac

TIMESTAMP_HEADER = "X-CEM-Timestamp"  # Unix seconds when this attempt was signed
SIGNATURE_HEADER = "X-CEM-Signature"  # "v1=<hex HMAC-SHA256>"
SCHEME = "v1"
MIN_SECRET_CHARS = 16


def sign(secret: bytes, timestamp: int, body: bytes) -> str:
    """The X-CEM-Signature value for `body` sent at `timestamp`."""
    mac = hmac.new(secret, str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"{SCHEME}={mac}"


def signature_headers(secret: bytes, timestamp: int, body: bytes) -> dict[str, str]:
    return {TIMESTAMP_HEADER: str(timestamp), SIGNATURE_HEADER: sign(secret, timestamp, body)}
