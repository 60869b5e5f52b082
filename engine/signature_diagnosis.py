"""Why a signature did not match: the likely mistakes, tried against the configured secrets.

`verify()` (engine/signing.py) says only yes or no, and the answer to Stockaj stays
`invalid signature` (SPEC section 3). When it says no, `diagnose()` tries what people
get wrong when they sign or forward a webhook, cheapest first, and names the first that
reproduces the header. The reason codes, and the fix for each, are in docs/operations.md
("Signature failures"):

    missing                  no X-Stockaj-Signature header (or an empty one)
    sha256_prefix            `sha256=<hex>`: the digest is right, the prefix is not expected
    base64_digest            the right digest, written in base64 instead of hex
    previous_secret_expired  signed with STOCKAJ_WEBHOOK_SECRET_PREVIOUS after
                             STOCKAJ_WEBHOOK_ROTATION_ENDS_AT
    secret_whitespace        signed with a configured secret plus or minus surrounding
                             spaces or a trailing newline
    hmac_sha1                HMAC-SHA1 instead of HMAC-SHA256
    plain_sha256             SHA-256 of the body, no secret (not an HMAC)
    plain_sha1               SHA-1 of the body, no secret
    body_trailing_newline    the body signed with a trailing newline added or removed
    body_reserialized        the body parsed and written again before signing or on the way
                             (keys sorted, whitespace changed, Unicode escaped): a proxy or a
                             framework that re-encoded the JSON
    malformed                not 64 hex digits and none of the above
    unknown_secret           64 hex digits and none of the above: signed with another secret
    not_diagnosed            the diagnosis budget was spent (a flood of bad signatures)

Nothing here is ever shown to the sender, and no code reveals a secret or a digest.
The work is bounded: a `DiagnosisBudget` caps the bytes hashed per second, and the
re-serialised bodies are tried only for bodies up to `RESERIALIZE_MAX_BYTES`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Final

from engine.signing import SigningSecrets

RESERIALIZE_MAX_BYTES: Final = 64 * 1024
# Hashing per second the diagnosis may spend, in body bytes: 1 MiB is ~45 full diagnoses of a
# 1 KB delivery with two secrets, ~10 ms of a core per second (bench/bench_signature_diagnosis.py).
BUDGET_BYTES_PER_SECOND: Final = 1024 * 1024
_WHITESPACE_FORMS: Final = ("{}\n", "{}\r\n", "{} ", " {}", " {} ")
_PREFIXES: Final = ("sha256=", "sha-256=", "hmac-sha256=", "v1=")
_HEX_DIGITS: Final = frozenset("0123456789abcdef")
_RESERIALIZED_FORMS: Final = 8  # sort_keys x separators x ensure_ascii

# Each reason code and its fix in one line (docs/operations.md, "Signature failures", says more).
FIXES: Final = {
    "missing": "the request is not from Stockaj's webhook, or a proxy dropped X-Stockaj-Signature",
    "sha256_prefix": "the sender writes sha256=<hex>: send the bare hex digest",
    "base64_digest": "the sender writes the digest in base64: send 64 hex digits",
    "previous_secret_expired": "Stockaj still signs with the previous secret: put the new one in its "
    "webhook settings, or move STOCKAJ_WEBHOOK_ROTATION_ENDS_AT later",
    "secret_whitespace": "a space or line break was copied with the secret: paste it again without it, "
    "in Stockaj or in STOCKAJ_WEBHOOK_SECRET",
    "hmac_sha1": "the sender uses HMAC-SHA1: it must use HMAC-SHA256",
    "plain_sha256": "the sender hashes the body without the secret: it must use HMAC-SHA256",
    "plain_sha1": "the sender hashes the body without the secret: it must use HMAC-SHA256",
    "body_trailing_newline": "something on the way adds or removes a trailing newline: pass the body "
    "through byte for byte",
    "body_reserialized": "a proxy or framework re-encodes the JSON: pass the raw body through",
    "malformed": "the header is cut or altered on the way, or the sender is not Stockaj",
    "unknown_secret": "the secret in Stockaj differs from STOCKAJ_WEBHOOK_SECRET: set the same on both "
    "sides and restart the receivers",
    "not_diagnosed": "more bad signatures than the diagnosis may look at: the diagnosed ones name it",
}
REASONS: Final = tuple(FIXES)


class DiagnosisBudget:
    """A token bucket of hashed body bytes: what a flood of bad signatures may spend on saying why.

    A diagnosis is allowed while the bucket is not empty and charged in full, so the bucket can
    go into debt: a 1 MiB body is still diagnosed now and then, and over any stretch of time the
    spending stays at `bytes_per_second`. A mistake made once is made on every delivery, so the
    few diagnosed under a flood name it; the others are counted `not_diagnosed`.
    """

    def __init__(
        self, bytes_per_second: int = BUDGET_BYTES_PER_SECOND, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._rate = float(bytes_per_second)
        self._tokens = float(bytes_per_second)
        self._clock = clock
        self._last = clock()

    def take(self, cost: int) -> bool:
        """Spend `cost` bytes if the bucket is not empty (it may go into debt)."""
        now = self._clock()
        self._tokens = min(self._rate, self._tokens + (now - self._last) * self._rate)
        self._last = now
        if self._tokens <= 0:
            return False
        self._tokens -= cost
        return True


def diagnose(
    body: bytes, signature: str | None, secrets: SigningSecrets, budget: DiagnosisBudget | None = None
) -> str:
    """The reason code of a refused signature: the first likely mistake that reproduces it."""
    if not signature or not signature.strip():
        return "missing"
    header = signature.strip()
    if budget is not None and not budget.take(_cost(body, secrets)):
        return "not_diagnosed"
    bare = _without_prefix(header.lower())
    for candidate in _candidates(body, header, secrets):
        if candidate.reproduces(bare if candidate.form == "hex" else header):
            return candidate.reason
    return "unknown_secret" if len(bare) == 64 and _HEX_DIGITS.issuperset(bare) else "malformed"


@dataclass(frozen=True, slots=True)
class _Candidate:
    """One likely mistake: this body, hashed this way (keyed or not), written in this form."""

    reason: str
    body: bytes
    key: str | None  # None: a plain hash of the body, no secret
    algorithm: str = "sha256"
    form: str = "hex"  # or "base64"

    def reproduces(self, header: str) -> bool:
        if self.key is None:
            digest = hashlib.new(self.algorithm, self.body).digest()
        else:
            digest = hmac.new(self.key.encode(), self.body, self.algorithm).digest()
        if self.form == "hex":
            return hmac.compare_digest(digest.hex().encode(), header.encode(errors="replace"))
        return any(hmac.compare_digest(decoded, digest) for decoded in _base64_readings(header))


def _cost(body: bytes, secrets: SigningSecrets) -> int:
    """Body bytes hashed when every candidate is tried: what the budget charges up front."""
    keys = len(secrets.accepted) + len(secrets.expired)
    reserialized = _RESERIALIZED_FORMS if len(body) <= RESERIALIZE_MAX_BYTES else 0
    per_key = 3 + 1 + len(_WHITESPACE_FORMS) + 1 + 3 + reserialized
    return max(1, len(body)) * (keys * per_key + 2)


def _candidates(body: bytes, header: str, secrets: SigningSecrets) -> Iterator[_Candidate]:
    """The likely mistakes, cheapest and likeliest first; each hashes only when it is tried."""
    accepted = [secret for secret in secrets.accepted if secret]
    prefixed = _without_prefix(header.lower()) != header.lower()
    for secret in accepted:
        if prefixed:
            yield _Candidate("sha256_prefix", body, secret)
        yield _Candidate("base64_digest", body, secret, form="base64")
    for secret in secrets.expired:
        if secret:
            yield _Candidate("previous_secret_expired", body, secret)
    for secret in accepted:
        for variant in _whitespace_variants(secret):
            yield _Candidate("secret_whitespace", body, variant)
    for secret in accepted:
        yield _Candidate("hmac_sha1", body, secret, algorithm="sha1")
    yield _Candidate("plain_sha256", body, None)
    yield _Candidate("plain_sha1", body, None, algorithm="sha1")
    for other_body in _newline_variants(body):
        for secret in accepted:
            yield _Candidate("body_trailing_newline", other_body, secret)
    if len(body) <= RESERIALIZE_MAX_BYTES:
        for other_body in _reserialized(body):
            for secret in accepted:
                yield _Candidate("body_reserialized", other_body, secret)


def _without_prefix(header: str) -> str:
    for prefix in _PREFIXES:
        if header.startswith(prefix):
            return header[len(prefix) :].strip()
    return header


def _base64_readings(header: str) -> Iterator[bytes]:
    """`header` decoded as base64, standard and URL-safe, padded or not, after any prefix."""
    text = header.split("=", 1)[1] if header.lower().startswith(_PREFIXES) else header
    padded = text + "=" * (-len(text) % 4)
    for decode in (base64.b64decode, base64.urlsafe_b64decode):
        try:
            yield decode(padded.encode("ascii"))
        except (binascii.Error, ValueError, UnicodeEncodeError):
            continue


def _whitespace_variants(secret: str) -> Iterator[str]:
    stripped = secret.strip()
    if stripped and stripped != secret:
        yield stripped
    for form in _WHITESPACE_FORMS:
        yield form.format(stripped or secret)


def _newline_variants(body: bytes) -> Iterator[bytes]:
    trimmed = body.rstrip(b"\r\n")
    if trimmed != body:
        yield trimmed
    yield body + b"\n"
    yield body + b"\r\n"


def _reserialized(body: bytes) -> Iterator[bytes]:
    """The body as common JSON encoders write it again: sorted, compact, spaced, escaped."""
    try:
        parsed = json.loads(body)
    except (ValueError, RecursionError):
        return
    seen = {body}
    for sort_keys in (False, True):
        for separators in ((",", ":"), (", ", ": ")):
            for ensure_ascii in (True, False):
                try:
                    text = json.dumps(
                        parsed, sort_keys=sort_keys, separators=separators, ensure_ascii=ensure_ascii
                    )
                except (TypeError, ValueError, RecursionError):
                    return
                encoded = text.encode()
                if encoded not in seen:
                    seen.add(encoded)
                    yield encoded
