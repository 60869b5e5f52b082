"""The receiver contract (spec section 3), row by row and in the order of its checks.

Every test runs the real app (`create_app`) over a real `DeliveryIntake`, the
real `Store` on a real SQLite file and a real in-process queue whose process
function records what it was given. Most rows go through Quart's test client;
what only the HTTP server decides (header syntax, a 2 GB stream, a body that
trickles in) goes to a real uvicorn server with httptools, on a raw socket.
Storage under concurrency, failure and PostgreSQL is in test_intake.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import shutil
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import httpx
import orjson
import pytest
import uvicorn
from prometheus_client.parser import text_string_to_metric_families
from quart import Quart
from sqlalchemy import func, select

from actions.registry import load_registry
from engine.pipeline.http_protocol import ConnectionLimits, server_config
from engine.pipeline.intake import DeliveryIntake
from engine.pipeline.metrics import CONTENT_TYPE, Metrics
from engine.pipeline.receiver import WEBHOOK_PATH, ReceiverParts, create_app
from engine.pipeline.rule_reload import LiveRules
from engine.pipeline.service import Service
from engine.queue import ArqQueue, DeliveryQueue, InProcessQueue
from engine.secrets import Masker
from engine.signing import sign
from engine.store import Store, database
from engine.store.tables import deliveries

SECRET = "whsec-current-5f1c0e"
PREVIOUS = "whsec-previous-77aa01"
MAX_BODY = 1024 * 1024
BODY = orjson.dumps(
    {
        "event": "item.low_stock",
        "timestamp": "2026-03-01T09:00:00Z",
        "data": {"id": 42, "name": "Tent 4p", "quantity": 3, "minimum_quantity": 5},
    }
)
RULE = """
id: low-stock-log
on: item.low_stock
actions:
  - type: log
    message: "{{ data.name }} is low"
"""


@dataclass
class Receiver:
    """The app and the real parts behind it, for assertions."""

    app: Quart
    store: Store
    metrics: Metrics
    processed: list[str]
    rules: LiveRules
    db_path: Path
    queue: DeliveryQueue
    intake: DeliveryIntake
    closers: list[Any] = field(default_factory=list)

    async def rows(self) -> int:
        async with self.store.engine.connect() as connection:
            return int((await connection.execute(select(func.count()).select_from(deliveries))).scalar_one())

    def counter(self, name: str, **labels: str) -> float:
        return self.metrics.registry.get_sample_value(name, labels) or 0.0


async def _readiness(store: Store, queue: DeliveryQueue, rules: LiveRules) -> dict[str, Any]:
    """The service's own readiness check, over these parts."""
    parts = SimpleNamespace(store=store, queue=queue, rules=rules, masker=Masker([SECRET, PREVIOUS]))
    return await Service.readiness(cast(Service, parts))


@contextlib.asynccontextmanager
async def receiver(
    tmp_path: Path,
    *,
    body_timeout: float | None = None,
    queue: DeliveryQueue | None = None,
    secrets: tuple[str, ...] = (SECRET, PREVIOUS),
    previous_secret_until: datetime | None = None,
) -> AsyncIterator[Receiver]:
    db_path = tmp_path / "stockaj.db"
    engine = database.create_engine(f"sqlite+aiosqlite:///{db_path}")
    await database.upgrade(engine)
    store = Store(engine)
    metrics = Metrics()
    processed: list[str] = []

    async def process(delivery_id: str) -> None:
        processed.append(delivery_id)

    if queue is None:
        queue = InProcessQueue(process)
    rules_dir = tmp_path / "rules"
    rules_dir.mkdir()
    (rules_dir / "low-stock.yaml").write_text(RULE)
    rules = LiveRules(rules_dir, load_registry(), metrics)
    intake = DeliveryIntake(store, queue, metrics, timedelta(seconds=60))
    intake.start()

    async def refresh() -> None:
        return None

    parts = ReceiverParts(
        secrets=secrets,
        max_body_bytes=MAX_BODY,
        intake=intake,
        metrics=metrics,
        readiness=lambda: _readiness(store, queue, rules),
        refresh_metrics=refresh,
        previous_secret_until=previous_secret_until,
        **({} if body_timeout is None else {"body_timeout": body_timeout}),
    )
    parts_app = create_app(parts)
    try:
        yield Receiver(parts_app, store, metrics, processed, rules, db_path, queue, intake)
    finally:
        await intake.stop()
        await queue.close()
        await store.engine.dispose()


def headers(
    body: bytes = BODY,
    *,
    secret: str = SECRET,
    event: str | None = "item.low_stock",
    delivery: str | None = "dlv-1",
    signature: str | None = None,
) -> dict[str, str]:
    """Headers exactly as Stockaj sends them; None leaves a header out."""
    sent = {
        "Content-Type": "application/json",
        "X-Stockaj-Signature": sign(body, secret) if signature is None else signature,
    }
    if event is not None:
        sent["X-Stockaj-Event"] = event
    if delivery is not None:
        sent["X-Stockaj-Delivery"] = delivery
    return sent


async def post(app: Quart, body: bytes, sent: dict[str, str]) -> tuple[int, Any, bytes]:
    response = await app.test_client().post(WEBHOOK_PATH, data=body, headers=sent)
    raw = await response.get_data()
    assert isinstance(raw, bytes)
    assert response.content_type == "application/json"
    return response.status_code, orjson.loads(raw), raw


def assert_no_secret(raw: bytes, body: bytes) -> None:
    """A refusal never carries a secret nor a digest the receiver computed."""
    text = raw.decode()
    for secret in (SECRET, PREVIOUS):
        assert secret not in text
        assert sign(body, secret) not in text.lower()


async def wait_for(condition: Any, within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


# --- accepted and duplicate ----------------------------------------------------------------------


async def test_a_signed_delivery_is_stored_then_answered_200_and_processed(tmp_path: Path) -> None:
    async with receiver(tmp_path) as r:
        status, answer, _ = await post(r.app, BODY, headers(delivery="dlv-accepted"))

        assert (status, answer) == (
            200,
            {"received": True, "duplicate": False, "delivery_id": "dlv-accepted"},
        )
        stored = await r.store.get("dlv-accepted")
        assert stored is not None
        assert (stored.event, stored.body, stored.status.value) == ("item.low_stock", BODY, "received")
        assert stored.headers["X-Stockaj-Signature"] == sign(BODY, SECRET)
        assert stored.due_at is not None  # the sweeper's safety net, should the job be lost
        await wait_for(lambda: r.processed == ["dlv-accepted"])
        assert r.counter("stockaj_deliveries_received_total", event="item.low_stock", outcome="accepted") == 1


async def test_a_redelivery_is_answered_200_duplicate_and_not_processed_again(tmp_path: Path) -> None:
    async with receiver(tmp_path) as r:
        first = await post(r.app, BODY, headers(delivery="dlv-again"))
        # Stockaj repeats the id; even a different (signed) body is the same delivery.
        other = BODY.replace(b"Tent", b"Tarp")
        second = await post(r.app, other, headers(other, delivery="dlv-again"))

        assert first[:2] == (200, {"received": True, "duplicate": False, "delivery_id": "dlv-again"})
        assert second[:2] == (200, {"received": True, "duplicate": True, "delivery_id": "dlv-again"})
        assert await r.rows() == 1
        stored = await r.store.get("dlv-again")
        assert stored is not None
        assert stored.body == BODY
        await wait_for(lambda: r.processed == ["dlv-again"])
        await asyncio.sleep(0.05)
        assert r.processed == ["dlv-again"]
        assert r.counter("stockaj_duplicate_deliveries_total") == 1
        assert (
            r.counter("stockaj_deliveries_received_total", event="item.low_stock", outcome="duplicate") == 1
        )


async def test_upper_case_hex_and_surrounding_spaces_are_accepted(tmp_path: Path) -> None:
    async with receiver(tmp_path) as r:
        status, answer, _ = await post(r.app, BODY, headers(signature=sign(BODY, SECRET).upper()))
        assert (status, answer["duplicate"]) == (200, False)
        status, answer, _ = await post(
            r.app, BODY, headers(delivery="dlv-2", signature=f" {sign(BODY, SECRET)} ")
        )
        assert (status, answer["duplicate"]) == (200, False)


async def test_the_previous_secret_is_accepted_during_rotation(tmp_path: Path) -> None:
    async with receiver(tmp_path) as r:
        status, answer, _ = await post(r.app, BODY, headers(secret=PREVIOUS, delivery="dlv-rotated"))
        assert (status, answer) == (200, {"received": True, "duplicate": False, "delivery_id": "dlv-rotated"})
        assert await r.store.get("dlv-rotated") is not None


async def test_an_empty_secret_never_verifies_a_signature(tmp_path: Path) -> None:
    async with receiver(tmp_path, secrets=(SECRET, "")) as r:
        status, answer, _ = await post(r.app, BODY, headers(secret=""))
        assert (status, answer) == (401, {"error": "invalid signature"})
        assert await r.rows() == 0


# --- refusals, in the order of the checks ---------------------------------------------------------

OVERSIZE = b'{"data": {"pad": "' + b"x" * MAX_BODY + b'"}}'
NOT_JSON = b"event=item.low_stock"


@pytest.mark.parametrize(
    ("body", "sent", "status", "answer"),
    [
        pytest.param(
            OVERSIZE,
            headers(OVERSIZE),
            413,
            {"error": f"body larger than {MAX_BODY} bytes"},
            id="oversize-signed",
        ),
        pytest.param(
            OVERSIZE,
            headers(OVERSIZE, signature="0" * 64, event=None, delivery=None),
            413,
            {"error": f"body larger than {MAX_BODY} bytes"},
            id="oversize-before-bad-signature-and-missing-headers",
        ),
        pytest.param(
            NOT_JSON,
            headers(NOT_JSON, signature="0" * 64, event=None, delivery=None),
            401,
            {"error": "invalid signature"},
            id="bad-signature-before-missing-headers-and-bad-body",
        ),
        pytest.param(
            BODY,
            {k: v for k, v in headers().items() if k != "X-Stockaj-Signature"},
            401,
            {"error": "invalid signature"},
            id="signature-missing",
        ),
        pytest.param(BODY, headers(signature=""), 401, {"error": "invalid signature"}, id="signature-empty"),
        pytest.param(
            BODY,
            headers(signature=sign(BODY, SECRET)[:-1]),
            401,
            {"error": "invalid signature"},
            id="signature-too-short",
        ),
        pytest.param(
            BODY,
            headers(signature=sign(BODY, SECRET) + "a"),
            401,
            {"error": "invalid signature"},
            id="signature-too-long",
        ),
        pytest.param(
            BODY,
            headers(signature="g" + sign(BODY, SECRET)[1:]),
            401,
            {"error": "invalid signature"},
            id="signature-not-hex",
        ),
        pytest.param(
            BODY,
            headers(signature="sha256=" + sign(BODY, SECRET)),
            401,
            {"error": "invalid signature"},
            id="signature-with-a-prefix",
        ),
        pytest.param(
            BODY,
            headers(secret="someone-else"),
            401,
            {"error": "invalid signature"},
            id="signature-wrong-key",
        ),
        pytest.param(
            BODY + b" ",
            headers(BODY),
            401,
            {"error": "invalid signature"},
            id="signature-of-other-bytes",
        ),
        pytest.param(
            NOT_JSON,
            headers(NOT_JSON, event=None, delivery=None),
            400,
            {"error": "missing or empty X-Stockaj-Event header"},
            id="event-missing-before-delivery-missing-and-bad-body",
        ),
        pytest.param(
            NOT_JSON,
            headers(NOT_JSON, event="  "),
            400,
            {"error": "missing or empty X-Stockaj-Event header"},
            id="event-blank",
        ),
        pytest.param(
            NOT_JSON,
            headers(NOT_JSON, delivery=None),
            400,
            {"error": "missing or empty X-Stockaj-Delivery header"},
            id="delivery-missing-before-bad-body",
        ),
        pytest.param(
            BODY,
            headers(delivery=""),
            400,
            {"error": "missing or empty X-Stockaj-Delivery header"},
            id="delivery-empty",
        ),
        pytest.param(
            BODY,
            headers(delivery="d" * 201),
            400,
            {"error": "X-Stockaj-Delivery and X-Stockaj-Event may be at most 200 characters"},
            id="delivery-id-too-long",
        ),
        pytest.param(
            BODY,
            headers(delivery="dlv\t1"),
            400,
            {"error": "X-Stockaj-Delivery header must not contain control characters"},
            id="delivery-id-with-a-tab",
        ),
    ],
)
async def test_refusals_come_in_the_order_of_the_checks_and_store_nothing(
    tmp_path: Path, body: bytes, sent: dict[str, str], status: int, answer: dict[str, str]
) -> None:
    async with receiver(tmp_path) as r:
        got_status, got_answer, raw = await post(r.app, body, sent)

        assert (got_status, got_answer) == (status, answer)
        assert_no_secret(raw, body)
        assert await r.rows() == 0
        await asyncio.sleep(0.02)
        assert r.processed == []


# C1 controls, bidi embeddings, overrides, isolates and marks, and other invisible format
# characters: each can make a logged or listed id read as something else.
UNSEEN = {
    "C1-NEL": "\x85",
    "C1-CSI": "\x9b",
    "C1-first": "\x80",
    "C1-last": "\x9f",
    "bidi-LRE": "\u202a",
    "bidi-RLO": "\u202e",
    "bidi-LRI": "\u2066",
    "bidi-PDI": "\u2069",
    "bidi-LRM": "\u200e",
    "bidi-RLM": "\u200f",
    "bidi-ALM": "\u061c",
    "zero-width-space": "\u200b",
    "zero-width-joiner": "\u200d",
    "word-joiner": "\u2060",
    "byte-order-mark": "\ufeff",
    "soft-hyphen": "\xad",
    "line-separator": "\u2028",
    "paragraph-separator": "\u2029",
    "interlinear-annotation": "\ufff9",
    "tag-character": "\U000e0041",
}


def signed_head(**replaced: bytes) -> list[bytes]:
    """The signed delivery's header lines for a raw request, with some values replaced (raw bytes)."""
    values = {
        b"X-Stockaj-Signature": sign(BODY, SECRET).encode(),
        b"X-Stockaj-Event": b"item.low_stock",
        b"X-Stockaj-Delivery": b"dlv-1",
    }
    values.update({name.replace("_", "-").encode(): value for name, value in replaced.items()})
    return [name + b": " + value for name, value in values.items()]


@pytest.mark.parametrize("character", list(UNSEEN.values()), ids=list(UNSEEN))
@pytest.mark.parametrize("header", ["X-Stockaj-Delivery", "X-Stockaj-Event"])
async def test_ids_and_events_with_c1_bidi_or_invisible_characters_are_refused_400_and_never_logged_raw(
    tmp_path: Path, character: str, header: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    value = f"dlv{character}-1" if header == "X-Stockaj-Delivery" else f"item.low{character}_stock"
    head = signed_head(**{header.replace("-", "_"): value.encode("utf-8")})  # as Stockaj sends: UTF-8
    async with receiver(tmp_path) as r, serving(r.app) as port:
        response = await exchange(port, raw_request(head, BODY))

        assert status_of(response) == 400
        assert orjson.loads(response.split(b"\r\n\r\n", 1)[1]) == {
            "error": f"{header} header must not contain control characters"
        }
        assert await r.rows() == 0
        logged = "\n".join(f"{record.getMessage()} {record.__dict__}" for record in caplog.records)
        assert character not in logged
        assert character not in r.metrics.render().decode()


@pytest.mark.parametrize("character", ["\x85", "\x9b"], ids=["NEL", "CSI"])
async def test_a_c1_byte_that_is_not_utf_8_is_refused_too(tmp_path: Path, character: str) -> None:
    head = signed_head(X_Stockaj_Delivery=f"dlv{character}".encode("latin-1"))
    async with receiver(tmp_path) as r, serving(r.app) as port:
        response = await exchange(port, raw_request(head, BODY))

        assert status_of(response) == 400
        assert await r.rows() == 0


@pytest.mark.parametrize(
    "value",
    ["dlv-ś-1", "Zażółć-gęślą", "納品-42", "dlv\u00a0nbsp", "ﬁ-ligature", "e\u0301-combining", "😀-1"],
)
async def test_visible_non_ascii_ids_are_accepted(tmp_path: Path, value: str) -> None:
    head = signed_head(X_Stockaj_Delivery=value.encode("utf-8"))
    async with receiver(tmp_path) as r, serving(r.app) as port:
        response = await exchange(port, raw_request(head, BODY))

        assert status_of(response) == 200
        assert orjson.loads(response.split(b"\r\n\r\n", 1)[1])["delivery_id"] == value
        assert await r.store.get(value) is not None


@pytest.mark.parametrize(
    ("body", "error"),
    [
        pytest.param(b"[]", "body must be a JSON object, not a JSON array", id="array"),
        pytest.param(
            b'[{"event": "item.low_stock"}]',
            "body must be a JSON object, not a JSON array",
            id="array-of-objects",
        ),
        pytest.param(b'"item.low_stock"', "body must be a JSON object, not a JSON string", id="string"),
        pytest.param(b"42", "body must be a JSON object, not a JSON number", id="number"),
        pytest.param(b"true", "body must be a JSON object, not a JSON boolean", id="boolean"),
        pytest.param(b"null", "body must be a JSON object, not a JSON null", id="null"),
        pytest.param(b"", "body is not valid JSON", id="empty"),
        pytest.param(b'{"data": {"id": 42}', "body is not valid JSON", id="truncated"),
        pytest.param(b'{"data": {"name": "Tent \xff\xfe"}}', "body is not valid JSON", id="invalid-utf-8"),
        pytest.param(b'{"data": NaN}', "body is not valid JSON", id="nan"),
        pytest.param(
            b'{"a": ' * 100_000 + b"1" + b"}" * 100_000, "body is not valid JSON", id="nested-100000"
        ),
        pytest.param(
            b'{"a": ' * 101 + b"1" + b"}" * 101,
            "body is nested deeper than 100 levels",
            id="nested-101-which-the-worker-could-not-read",
        ),
        pytest.param(
            b'{"a": ' + b"[" * 100 + b"]" * 100 + b"}",
            "body is nested deeper than 100 levels",
            id="arrays-nested-101",
        ),
    ],
)
async def test_a_signed_body_that_is_not_a_json_object_is_refused_400_without_a_traceback(
    tmp_path: Path, body: bytes, error: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with receiver(tmp_path) as r:
        status, answer, raw = await post(r.app, body, headers(body))

        assert (status, answer) == (400, {"error": error})
        assert_no_secret(raw, body)
        assert await r.rows() == 0
        assert not [record for record in caplog.records if record.exc_info]
        assert (
            r.counter("stockaj_deliveries_received_total", event="item.low_stock", outcome="rejected_request")
            == 1
        )


async def test_a_body_of_exactly_max_body_bytes_is_accepted(tmp_path: Path) -> None:
    prefix, suffix = b'{"data": {"pad": "', b'"}}'
    body = prefix + b"x" * (MAX_BODY - len(prefix) - len(suffix)) + suffix
    assert len(body) == MAX_BODY
    async with receiver(tmp_path) as r:
        status, answer, _ = await post(r.app, body, headers(body, delivery="dlv-max"))
        assert (status, answer["duplicate"]) == (200, False)
        status, _, _ = await post(r.app, body + b" ", headers(body + b" ", delivery="dlv-max+1"))
        assert status == 413
        assert await r.rows() == 1


async def test_nesting_up_to_100_levels_is_accepted(tmp_path: Path) -> None:
    body = b'{"a": ' * 99 + b"[1]" + b"}" * 99
    async with receiver(tmp_path) as r:
        status, answer, _ = await post(r.app, body, headers(body, delivery="dlv-deep"))
        assert (status, answer["duplicate"]) == (200, False)


async def test_refusals_never_reveal_a_secret_or_the_expected_digest_even_in_the_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    attempts = [
        (BODY, headers(signature="0" * 64)),
        (BODY, headers(secret="wrong")),
        (BODY, headers(signature=sign(BODY, SECRET)[:40])),
        (BODY + b"!", headers(BODY)),
        (OVERSIZE, headers(OVERSIZE, secret="wrong")),
    ]
    async with receiver(tmp_path) as r:
        for body, sent in attempts:
            status, _, raw = await post(r.app, body, sent)
            assert status in (401, 413)
            assert_no_secret(raw, body)
            logged = "\n".join(f"{record.getMessage()} {record.__dict__}" for record in caplog.records)
            assert_no_secret(logged.encode(), body)
        assert await r.rows() == 0
        failures = r.metrics.registry.get_sample_value
        assert failures("stockaj_signature_failures_total", {"reason": "malformed"}) == 1
        assert failures("stockaj_signature_failures_total", {"reason": "unknown_secret"}) == 3
        assert failures("stockaj_deliveries_received_total", {"event": "", "outcome": "too_large"}) == 1


async def test_other_methods_and_paths_answer_json(tmp_path: Path) -> None:
    async with receiver(tmp_path) as r:
        client = r.app.test_client()
        wrong_method = await client.get(WEBHOOK_PATH)
        unknown = await client.post("/webhooks/other", data=BODY, headers=headers())
        assert wrong_method.status_code == 405
        assert unknown.status_code == 404
        for response in (wrong_method, unknown):
            assert response.content_type == "application/json"
            assert set(orjson.loads(await response.get_data())) == {"error"}
        assert await r.rows() == 0


# --- health, readiness, metrics -----------------------------------------------------------------


async def test_healthz_answers_while_the_process_is_up(tmp_path: Path) -> None:
    async with receiver(tmp_path) as r:
        response = await r.app.test_client().get("/healthz")
        assert response.status_code == 200
        assert orjson.loads(await response.get_data()) == {"status": "ok"}


async def test_readyz_is_ready_with_the_store_queue_and_rules(tmp_path: Path) -> None:
    async with receiver(tmp_path) as r:
        response = await r.app.test_client().get("/readyz")
        assert response.status_code == 200
        assert orjson.loads(await response.get_data()) == {
            "ready": True,
            "checks": {"store": {"ok": True}, "queue": {"ok": True}, "rules": {"ok": True, "loaded": 1}},
        }


async def test_readyz_is_not_ready_when_the_rule_files_are_broken(tmp_path: Path) -> None:
    async with receiver(tmp_path) as r:
        (tmp_path / "rules" / "broken.yaml").write_text("id: broken\non: item.updated\nactions: []\n")
        assert not r.rules.reload()

        response = await r.app.test_client().get("/readyz")
        answer = orjson.loads(await response.get_data())
        assert response.status_code == 503
        assert answer["ready"] is False
        assert answer["checks"]["rules"]["ok"] is False
        assert answer["checks"]["rules"]["loaded"] == 1  # the last good set stays active
        assert "broken.yaml" in answer["checks"]["rules"]["error"]
        assert answer["checks"]["store"] == {"ok": True}


async def test_readyz_says_where_the_rule_files_are_broken_never_what_they_hold(tmp_path: Path) -> None:
    async with receiver(tmp_path) as r:
        # What a symlinked env file or passwd line looked like to the loader: text, quoted back.
        (tmp_path / "rules" / "env.yaml").write_text(f"STOCKAJ_WEBHOOK_SECRET={SECRET}\n")
        (tmp_path / "rules" / "passwd.yaml").write_text("root:x:0:0:root:/root:/bin/bash\n")
        (tmp_path / "rules" / "typo.yaml").write_text(RULE.replace("type: log", "type: slak"))
        assert not r.rules.reload()

        response = await r.app.test_client().get("/readyz")
        raw = (await response.get_data()).decode()
        answer = orjson.loads(raw)
        assert response.status_code == 503
        rules = answer["checks"]["rules"]
        assert rules["ok"] is False
        assert rules["problems"] == ["env.yaml:1:1", "passwd.yaml:1:1", "typo.yaml:5:11"]
        for content in (SECRET, SECRET[:8], "STOCKAJ", "root:x", "/bin/bash", "slak", "expected"):
            assert content not in raw


async def test_readyz_masks_secret_values_even_in_file_names(tmp_path: Path) -> None:
    async with receiver(tmp_path) as r:
        (tmp_path / "rules" / f"{SECRET}.yaml").write_text("id: [\n")
        assert not r.rules.reload()
        response = await r.app.test_client().get("/readyz")
        raw = (await response.get_data()).decode()
        assert SECRET not in raw
        assert "***.yaml:" in raw


async def test_readyz_is_not_ready_when_the_store_cannot_be_reached(tmp_path: Path) -> None:
    async with receiver(tmp_path) as r:
        await r.store.engine.dispose()
        shutil.move(r.db_path, tmp_path / "moved.db")
        r.db_path.mkdir()  # a directory where the database file was: SQLite cannot open it

        response = await r.app.test_client().get("/readyz")
        answer = orjson.loads(await response.get_data())
        assert response.status_code == 503
        assert answer["ready"] is False
        assert answer["checks"]["store"]["ok"] is False
        assert answer["checks"]["rules"]["ok"] is True

        await r.store.engine.dispose()
        r.db_path.rmdir()
        shutil.move(tmp_path / "moved.db", r.db_path)
        response = await r.app.test_client().get("/readyz")
        assert response.status_code == 200


async def test_readyz_is_not_ready_when_the_queue_is_down_yet_deliveries_are_accepted(tmp_path: Path) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    async with receiver(tmp_path, queue=await ArqQueue.connect(f"redis://127.0.0.1:{port}/0")) as r:
        response = await r.app.test_client().get("/readyz")
        answer = orjson.loads(await response.get_data())
        assert response.status_code == 503
        assert answer["checks"]["queue"]["ok"] is False
        assert answer["checks"]["store"] == {"ok": True}

        status, accepted, _ = await post(r.app, BODY, headers(delivery="dlv-queue-down"))
        assert (status, accepted["duplicate"]) == (200, False)
        assert await r.rows() == 1


async def test_metrics_are_prometheus_text_and_count_what_the_receiver_answered(tmp_path: Path) -> None:
    async with receiver(tmp_path) as r:
        await post(r.app, BODY, headers(delivery="m-1"))
        await post(r.app, BODY, headers(delivery="m-2"))
        await post(r.app, BODY, headers(delivery="m-2"))
        await post(r.app, BODY, headers(delivery="m-3", signature="0" * 64))
        await post(r.app, BODY, headers(delivery="m-3", signature="abc"))
        await post(r.app, BODY, {"X-Stockaj-Event": "item.low_stock", "X-Stockaj-Delivery": "m-3"})

        response = await r.app.test_client().get("/metrics")
        text = (await response.get_data()).decode()

    assert response.status_code == 200
    assert response.headers["Content-Type"] == CONTENT_TYPE
    assert CONTENT_TYPE.startswith("text/plain; version=")
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    received = "stockaj_deliveries_received_total"
    assert samples[(received, (("event", "item.low_stock"), ("outcome", "accepted")))] == 2
    assert samples[(received, (("event", "item.low_stock"), ("outcome", "duplicate")))] == 1
    assert samples[(received, (("event", ""), ("outcome", "rejected_signature")))] == 3
    assert samples[("stockaj_duplicate_deliveries_total", ())] == 1
    assert samples[("stockaj_signature_failures_total", (("reason", "unknown_secret"),))] == 1
    assert samples[("stockaj_signature_failures_total", (("reason", "malformed"),))] == 1
    assert samples[("stockaj_signature_failures_total", (("reason", "missing"),))] == 1


# --- the real server: what only the HTTP layer decides -----------------------------------------


@contextlib.asynccontextmanager
async def serving(app: Quart, limits: ConnectionLimits | None = None) -> AsyncIterator[int]:
    """The app on a real uvicorn server configured as `serve` runs it (httptools, the engine's
    connection limits), on an ephemeral port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = server_config(app, limits or ConnectionLimits(), lifespan="off", timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        await wait_for(lambda: server.started or task.done())
        assert server.started, "uvicorn did not start"
        yield port
    finally:
        server.should_exit = True
        await task
        sock.close()


def raw_request(head_lines: list[bytes], body: bytes) -> bytes:
    head = [b"POST /webhooks/stockaj HTTP/1.1", b"Host: 127.0.0.1", *head_lines]
    return b"\r\n".join([*head, b"Content-Length: %d" % len(body), b"Connection: close", b"", body])


async def exchange(port: int, data: bytes, within: float = 10.0) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), within)
    finally:
        writer.close()


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


async def test_the_real_server_accepts_a_signed_delivery_and_keeps_a_utf8_delivery_id(tmp_path: Path) -> None:
    delivery = "dlv-ś-1"
    signed = [
        b"X-Stockaj-Signature: " + sign(BODY, SECRET).encode(),
        b"X-Stockaj-Event: item.low_stock",
        b"X-Stockaj-Delivery: " + delivery.encode(),
    ]
    async with receiver(tmp_path) as r, serving(r.app) as port:
        response = await exchange(port, raw_request(signed, BODY))

        assert status_of(response) == 200
        answer = orjson.loads(response.split(b"\r\n\r\n", 1)[1])
        assert answer == {"received": True, "duplicate": False, "delivery_id": delivery}
        stored = await r.store.get(delivery)
        assert stored is not None
        assert stored.headers["X-Stockaj-Delivery"] == delivery


@pytest.mark.parametrize(
    "header",
    [
        pytest.param(b"X-Stockaj-Delivery: dlv\rInjected: 1", id="bare-CR"),
        pytest.param(b"X-Stockaj-Delivery: dlv\nInjected: 1", id="bare-LF"),
        pytest.param(b"X-Stockaj-Delivery: dlv\r\n folded", id="obsolete-line-folding"),
        pytest.param(b"X-Stockaj-Delivery: dlv\x00nul", id="NUL"),
        pytest.param(b"X-Stockaj-Delivery: dlv\x1bescape", id="control-character"),
    ],
)
async def test_header_values_with_cr_or_lf_are_refused_by_the_server_and_nothing_is_stored(
    tmp_path: Path, header: bytes
) -> None:
    signed = [b"X-Stockaj-Signature: " + sign(BODY, SECRET).encode(), b"X-Stockaj-Event: item.low_stock"]
    async with receiver(tmp_path) as r, serving(r.app) as port:
        response = await exchange(port, raw_request([*signed, header], BODY))

        assert status_of(response) == 400
        assert await r.rows() == 0
        # The same request with a clean header is accepted: the refusal was the header's.
        clean = await exchange(port, raw_request([*signed, b"X-Stockaj-Delivery: dlv-clean"], BODY))
        assert status_of(clean) == 200
        assert await r.rows() == 1


@pytest.mark.parametrize("size", [0, 100_000, MAX_BODY])
async def test_a_request_the_parser_refuses_gets_its_400_even_from_a_client_still_sending(
    tmp_path: Path, size: int
) -> None:
    signed = [b"X-Stockaj-Signature: " + sign(BODY, SECRET).encode(), b"X-Stockaj-Event: item.low_stock"]
    bad = raw_request(
        [*signed, b"Content-Type: application/json\r\r", b"X-Stockaj-Delivery: dlv"], b"x" * size
    )
    async with receiver(tmp_path) as r, serving(r.app) as port:
        response = await exchange(port, bad)  # sends it all, then reads: a reset would lose the answer

        assert status_of(response) == 400
        assert orjson.loads(response.split(b"\r\n\r\n", 1)[1]) == {"error": "invalid HTTP request"}
        assert await r.rows() == 0


async def test_a_2gb_chunked_stream_is_refused_413_quickly_without_being_read(tmp_path: Path) -> None:
    chunk = b"x" * (1024 * 1024)
    frame = b"%x\r\n" % len(chunk) + chunk + b"\r\n"
    total = 2 * 1024**3
    sent = 0
    async with receiver(tmp_path) as r, serving(r.app) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

        async def stream() -> None:
            nonlocal sent
            writer.write(
                b"POST /webhooks/stockaj HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n"
                + b"X-Stockaj-Signature: "
                + b"0" * 64
                + b"\r\nX-Stockaj-Event: item.low_stock\r\n"
                + b"X-Stockaj-Delivery: dlv-huge\r\n\r\n"
            )
            while sent < total:
                writer.write(frame)
                await writer.drain()
                sent += len(chunk)

        started = time.monotonic()
        sender = asyncio.create_task(stream())
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            elapsed = time.monotonic() - started
            answer = await asyncio.wait_for(
                reader.readexactly(int(_header_value(head, b"content-length"))), 5
            )
            # The server hangs up soon after: the rest of the 2 GB is never read.
            with contextlib.suppress(ConnectionError):
                assert await asyncio.wait_for(reader.read(), 5) == b""
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                await sender
            writer.close()
        rss_growth_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024

        assert status_of(head) == 413
        assert _header_value(head, b"connection") == b"close"
        assert orjson.loads(answer) == {"error": f"body larger than {MAX_BODY} bytes"}
        assert elapsed < 2.0, f"413 took {elapsed:.2f}s"
        assert sent < 64 * 1024 * 1024, f"the server read {sent >> 20} MiB of the stream"
        assert rss_growth_mb < 100
        assert await r.rows() == 0


def _header_value(head: bytes, name: bytes) -> bytes:
    for line in head.split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == name:
            return value.strip()
    raise AssertionError(f"no {name!r} header in {head!r}")


async def test_a_client_that_sends_everything_before_reading_is_cut_off_quickly(tmp_path: Path) -> None:
    sent = 0

    async def two_gigabytes() -> AsyncIterator[bytes]:
        nonlocal sent
        chunk = b"x" * (1024 * 1024)
        while sent < 2 * 1024**3:
            sent += len(chunk)
            yield chunk

    async with receiver(tmp_path) as r, serving(r.app) as port, httpx.AsyncClient() as client:
        started = time.monotonic()
        # Such a client may see the 413 or the hang-up; what matters is that it ends soon.
        with contextlib.suppress(httpx.TransportError):
            response = await client.post(
                f"http://127.0.0.1:{port}{WEBHOOK_PATH}", content=two_gigabytes(), headers=headers()
            )
            assert response.status_code == 413
        elapsed = time.monotonic() - started
        assert elapsed < 5.0
        assert sent < 64 * 1024 * 1024
        assert await r.rows() == 0


@pytest.mark.parametrize("size", [MAX_BODY + 1, 3 * MAX_BODY // 2, 4 * MAX_BODY])
@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_a_body_a_little_too_large_gets_a_clean_413_even_from_a_client_that_reads_last(
    tmp_path: Path, size: int, chunked: bool
) -> None:
    body = b"x" * size

    async def pieces() -> AsyncIterator[bytes]:
        for start in range(0, size, 65536):
            yield body[start : start + 65536]

    async with receiver(tmp_path) as r, serving(r.app) as port, httpx.AsyncClient() as client:
        for attempt in range(3):
            response = await client.post(
                f"http://127.0.0.1:{port}{WEBHOOK_PATH}",
                content=pieces() if chunked else body,
                headers=headers(body, delivery=f"dlv-big-{attempt}"),
            )
            assert response.status_code == 413
            assert response.json() == {"error": f"body larger than {MAX_BODY} bytes"}
        assert await r.rows() == 0


async def test_a_body_that_trickles_in_is_cut_off_after_the_body_timeout(tmp_path: Path) -> None:
    signed = [
        b"X-Stockaj-Signature: " + sign(BODY, SECRET).encode(),
        b"X-Stockaj-Event: item.low_stock",
        b"X-Stockaj-Delivery: dlv-slow",
    ]
    async with receiver(tmp_path, body_timeout=0.5) as r, serving(r.app) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            request = raw_request(signed, BODY)
            started = time.monotonic()
            writer.write(request[:-10])  # all but the last 10 bytes of the body
            await writer.drain()
            response = await asyncio.wait_for(reader.read(), 5)  # until the server hangs up
            elapsed = time.monotonic() - started
            with contextlib.suppress(ConnectionError):
                writer.write(request[-10:])  # too late
                await writer.drain()
        finally:
            writer.close()

        assert status_of(response) == 408
        assert orjson.loads(response.split(b"\r\n\r\n", 1)[1]) == {
            "error": "the body did not arrive within 0.5 seconds"
        }
        assert 0.4 < elapsed < 3.0
        await asyncio.sleep(0.1)
        assert await r.rows() == 0
        assert r.processed == []


async def test_the_body_timeout_defaults_to_15_seconds(tmp_path: Path) -> None:
    async with receiver(tmp_path) as r:
        assert r.app.config["BODY_TIMEOUT"] == 15
