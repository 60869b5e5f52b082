"""Signatures: what Stockaj computes, verified in constant time against current and previous secrets."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from engine.signing import sign, verify

BODY = b'{"event": "item.low_stock", "data": {"id": 42}}'


def test_sign_is_hex_hmac_sha256_of_the_raw_body() -> None:
    assert sign(BODY, "s3cret") == hmac.new(b"s3cret", BODY, hashlib.sha256).hexdigest()


def test_verify_accepts_lower_and_upper_case_hex() -> None:
    signature = sign(BODY, "s3cret")
    assert verify(BODY, signature, ["s3cret"])
    assert verify(BODY, signature.upper(), ["s3cret"])


def test_verify_accepts_the_previous_secret_during_rotation() -> None:
    assert verify(BODY, sign(BODY, "old"), ["new", "old"])
    assert not verify(BODY, sign(BODY, "older"), ["new", "old"])


@pytest.mark.parametrize(
    "signature",
    [None, "", "abc", sign(BODY, "s3cret")[:-1], sign(BODY, "s3cret") + "0", "z" * 64, "é" * 64],
)
def test_verify_refuses_missing_malformed_or_truncated_signatures(signature: str | None) -> None:
    assert not verify(BODY, signature, ["s3cret"])


def test_verify_is_over_the_exact_bytes() -> None:
    signature = sign(BODY, "s3cret")
    assert not verify(BODY + b" ", signature, ["s3cret"])
    assert not verify(BODY, signature, [])
