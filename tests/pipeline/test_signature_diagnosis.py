"""Every refused signature is diagnosed in the log and metrics, never in the answer.

Each case signs a real Stockaj body the wrong way, the way a person or a proxy gets it
wrong, posts it to the real receiver (create_app over a real store), and reads the
reason code back from the log line and the `stockaj_signature_failures_total` metric.
The answer stays the bare `401 {"error": "invalid signature"}` of SPEC section 3.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from engine.signature_diagnosis import REASONS, DiagnosisBudget, diagnose
from engine.signing import SigningSecrets, sign
from tests.pipeline.test_receiver import BODY, PREVIOUS, SECRET, assert_no_secret, headers, post, receiver

UNICODE_BODY = json.dumps(
    {"event": "rent.created", "data": {"id": 7, "renter": {"name": "Zoë Ångström"}, "items": [1, 2]}},
    ensure_ascii=False,
    indent=2,
).encode()


def _hmac_hex(secret: str, body: bytes, algorithm: str = "sha256") -> str:
    return hmac.new(secret.encode(), body, algorithm).hexdigest()


# (reason, body posted, signature header). Each signs the body the wrong way.
WRONG_SIGNATURES: list[tuple[str, bytes, Callable[[bytes], str | None]]] = [
    ("missing", BODY, lambda body: None),
    ("sha256_prefix", BODY, lambda body: "sha256=" + sign(body, SECRET)),
    (
        "base64_digest",
        BODY,
        lambda body: base64.b64encode(hmac.digest(SECRET.encode(), body, "sha256")).decode(),
    ),
    ("secret_whitespace", BODY, lambda body: sign(body, SECRET + "\n")),
    ("secret_whitespace", BODY, lambda body: sign(body, f" {SECRET} ")),
    ("hmac_sha1", BODY, lambda body: _hmac_hex(SECRET, body, "sha1")),
    ("plain_sha256", BODY, lambda body: hashlib.sha256(body).hexdigest()),
    ("plain_sha1", BODY, lambda body: hashlib.sha1(body).hexdigest()),
    ("body_trailing_newline", BODY, lambda body: sign(body + b"\n", SECRET)),
    ("body_trailing_newline", BODY + b"\n", lambda body: sign(body.rstrip(b"\n"), SECRET)),
    (
        "body_reserialized",
        UNICODE_BODY,
        lambda body: sign(json.dumps(json.loads(body), sort_keys=True).encode(), SECRET),
    ),
    (
        "body_reserialized",
        UNICODE_BODY,
        lambda body: sign(json.dumps(json.loads(body), separators=(",", ":")).encode(), SECRET),
    ),
    ("unknown_secret", BODY, lambda body: sign(body, "another-secret-entirely")),
    ("malformed", BODY, lambda body: "not a signature"),
]


@pytest.mark.parametrize(
    ("reason", "body", "signer"),
    WRONG_SIGNATURES,
    ids=[f"{reason}-{index}" for index, (reason, _, _) in enumerate(WRONG_SIGNATURES)],
)
async def test_a_wrongly_signed_delivery_is_diagnosed_in_the_log_and_metrics_and_answered_bare(
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    reason: str,
    body: bytes,
    signer: Callable[[bytes], str | None],
) -> None:
    caplog.set_level(logging.INFO)
    sent = headers(body, delivery="dlv-wrong-1")
    signature = signer(body)
    if signature is None:
        del sent["X-Stockaj-Signature"]
    else:
        sent["X-Stockaj-Signature"] = signature
    async with receiver(tmp_path) as r:
        status, answer, raw = await post(r.app, body, sent)
        assert (status, answer) == (401, {"error": "invalid signature"})
        assert r.counter("stockaj_signature_failures_total", reason=reason) == 1
        assert await r.rows() == 0
    lines = [record for record in caplog.records if record.getMessage().startswith("signature refused")]
    assert [line.__dict__["reason"] for line in lines] == [reason]
    assert lines[0].__dict__["delivery_id"] == "dlv-wrong-1"
    assert f"signature refused: {reason} (delivery dlv-wrong-1)" in lines[0].getMessage()
    assert_no_secret(raw, body)
    logged = "\n".join(f"{record.getMessage()} {record.__dict__}" for record in caplog.records)
    assert_no_secret(logged.encode(), body)
    assert sign(body, SECRET) not in logged
    assert reason in REASONS


async def test_the_previous_secret_after_its_end_is_refused_and_diagnosed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    ended = datetime.now(UTC) - timedelta(minutes=1)
    async with receiver(tmp_path, previous_secret_until=ended) as r:
        status, answer, _ = await post(r.app, BODY, headers(secret=PREVIOUS, delivery="dlv-old"))
        assert (status, answer) == (401, {"error": "invalid signature"})
        assert r.counter("stockaj_signature_failures_total", reason="previous_secret_expired") == 1
        status, _, _ = await post(r.app, BODY, headers(secret=SECRET, delivery="dlv-new"))
        assert status == 200
    assert "signature refused: previous_secret_expired (delivery dlv-old)" in caplog.text


async def test_the_previous_secret_before_its_end_is_accepted(tmp_path: Path) -> None:
    later = datetime.now(UTC) + timedelta(hours=1)
    async with receiver(tmp_path, previous_secret_until=later) as r:
        status, answer, _ = await post(r.app, BODY, headers(secret=PREVIOUS, delivery="dlv-rotating"))
        assert (status, answer["duplicate"]) == (200, False)


def test_a_flood_spends_the_budget_then_is_counted_undiagnosed() -> None:
    now = [0.0]
    budget = DiagnosisBudget(bytes_per_second=100_000, clock=lambda: now[0])
    secrets = SigningSecrets(accepted=(SECRET,))
    reasons = [diagnose(BODY, "0" * 64, secrets, budget) for _ in range(200)]
    assert reasons[0] == "unknown_secret"
    assert "not_diagnosed" in reasons
    diagnosed = reasons.count("unknown_secret")
    assert diagnosed < 200
    now[0] += 1.0  # a second later the bucket is full again
    assert diagnose(BODY, "0" * 64, secrets, budget) == "unknown_secret"


def test_a_large_body_is_not_reserialized() -> None:
    big = json.dumps({"data": {"note": "x" * 100_000}}).encode()
    resigned = sign(json.dumps(json.loads(big), sort_keys=True, indent=1).encode(), SECRET)
    assert diagnose(big, resigned, SigningSecrets(accepted=(SECRET,))) == "unknown_secret"
