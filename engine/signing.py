"""Stockaj's webhook signature: hex HMAC-SHA256 of the raw body, keyed with the secret.

`sign()` is what Stockaj (and `stockaj-rules send`) computes; `verify()` is what
the receiver checks, against every configured secret (current and previous,
for rotation), in constant time, accepting upper- or lower-case hex.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime

SIGNATURE_HEADER = "X-Stockaj-Signature"
EVENT_HEADER = "X-Stockaj-Event"
DELIVERY_HEADER = "X-Stockaj-Delivery"
_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")
_DIGEST_HEX_LENGTH = 64


def sign(body: bytes, secret: str) -> str:
    """The lower-case hex signature Stockaj sends for `body`."""
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def is_well_formed(signature: str) -> bool:
    """True when `signature` looks like a signature: 64 hex digits, either case."""
    candidate = signature.strip()
    return len(candidate) == _DIGEST_HEX_LENGTH and _HEX_DIGITS.issuperset(candidate)


def verify(body: bytes, signature: str | None, secrets: Iterable[str]) -> bool:
    """True when `signature` is the signature of `body` under any of `secrets`.

    A missing, malformed (wrong length, not hex) or wrong signature is False;
    every secret is tried, so timing does not tell which one matched. An empty
    secret is never used: anyone could sign with it.
    """
    if signature is None or not is_well_formed(signature):
        return False
    given = signature.strip().lower().encode()
    matched = False
    for secret in secrets:
        if secret:
            matched |= hmac.compare_digest(sign(body, secret).encode(), given)
    return matched


@dataclass(frozen=True, slots=True)
class SigningSecrets:
    """The secrets signatures are checked against now, and a previous one whose time is over."""

    accepted: tuple[str, ...]
    expired: tuple[str, ...] = ()


def secrets_at(
    configured: tuple[str, ...], previous_until: datetime | None, now: Callable[[], datetime]
) -> SigningSecrets:
    """`configured` is (current, previous?): the previous one is accepted until `previous_until`.

    `now` is read only when an end is set: the receiver's request path reads no clock otherwise.
    """
    if previous_until is None or now() < previous_until:
        return SigningSecrets(accepted=configured)
    return SigningSecrets(accepted=configured[:1], expired=configured[1:])
