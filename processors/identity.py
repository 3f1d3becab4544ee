"""Identity resolution: which customer a touchpoint belongs to (contract v1, "Identity").

Identifiers are compared by salted fingerprint (HMAC-SHA256 with a secret from config), so
the identity index, internal topics and state never hold a raw email, phone or loyalty id.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Callable
from dataclasses import dataclass

from schemas.touchpoints import Identifiers

_NON_DIGITS = re.compile(r"\D+")

#: lookup order of the contract: loyalty_id, then email, then phone
LOOKUP_ORDER = ("loyalty_id", "email", "phone")


def normalize(kind: str, value: str) -> str:
    if kind == "email":
        return value.strip().lower()
    if kind == "phone":
        return _NON_DIGITS.sub("", value)
    return value.strip()


def fingerprint(kind: str, value: str, secret: bytes) -> str:
    """Salted fingerprint of one identifier value; the kind is part of the message."""
    mac = hmac.new(secret, f"{kind}:{normalize(kind, value)}".encode(), hashlib.sha256)
    return mac.hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class Resolution:
    customer_id: str
    resolved_by: str  # customer_id | loyalty_id | email | phone | anonymous_id | anonymous | unresolved
    # fingerprint of an anonymous_id that this event links to a known customer (a login)
    link_anonymous: str | None = None
    anonymous: str = ""  # fingerprint of the event's anonymous_id, if it has one


def resolve(
    customer_id: str | None,
    identifiers: Identifiers | None,
    lookup: Callable[[str], str | None],
    secret: bytes,
) -> Resolution:
    """Resolve per the contract; `lookup` maps a fingerprint to a customer id (the identity index)."""
    ids = identifiers or Identifiers()
    anon_fp = fingerprint("anonymous_id", ids.anonymous_id, secret) if ids.anonymous_id else None
    if customer_id is not None:
        return Resolution(customer_id, "customer_id", anon_fp, anon_fp or "")
    for kind in LOOKUP_ORDER:
        value = getattr(ids, kind)
        if not value or (kind == "phone" and not normalize(kind, value)):
            continue
        found = lookup(fingerprint(kind, value, secret))
        if found is not None:
            return Resolution(found, kind, anon_fp, anon_fp or "")
    if anon_fp is not None:
        linked = lookup(anon_fp)
        if linked is not None:
            return Resolution(linked, "anonymous_id", None, anon_fp)
        # keyed by the fingerprint, never the raw value: a producer may put an email there
        return Resolution(f"anon:{anon_fp[:16]}", "anonymous", None, anon_fp)
    # Identifiers we cannot match and no anonymous id: keep the event under a key derived
    # from the fingerprint (never the raw value) so it still lands in the timeline.
    for kind in LOOKUP_ORDER:
        value = getattr(ids, kind)
        if value:
            return Resolution(f"unresolved:{fingerprint(kind, value, secret)[:16]}", "unresolved")
    raise ValueError("customer_id: a touchpoint needs customer_id or at least one identifier")


def profile_fingerprints(email: str | None, phone: str | None, loyalty_id: str | None, secret: bytes) -> list[str]:
    out = []
    for kind, value in (("loyalty_id", loyalty_id), ("email", email), ("phone", phone)):
        if value and normalize(kind, value):
            out.append(fingerprint(kind, value, secret))
    return out
