"""The webhook receiver: `POST /webhooks/stockaj`, health, readiness and metrics.

Checks run in the spec's order, every answer is JSON:

    413 body over MAX_BODY_BYTES (enforced while reading: a 2 GB stream is cut off)
    401 signature missing, malformed or wrong (over the raw bytes, every secret)
    400 X-Stockaj-Event or X-Stockaj-Delivery missing, empty, too long, or holding a control,
        bidi or other invisible character (named; the value is never shown raw)
    400 body is not a JSON object (or nests deeper than the worker can read)
    200 duplicate: the delivery id is stored already
    200 accepted: stored durably (group commit), enqueued afterwards
    503 the store cannot be written, so Stockaj retries

A body that trickles in slower than BODY_TIMEOUT is cut off with a 408. What the
connection may hold before the request reaches the app (head size and deadline, idle
time, the number of connections) is engine/pipeline/http_protocol.py's. With METRICS_PORT,
`/metrics` is served by `metrics_app` on that port instead of here.
Why a delivery was refused goes to the log and metrics, never to the answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

import orjson
from hypercorn.typing import (
    ASGIReceiveCallable,
    ASGIReceiveEvent,
    ASGISendCallable,
    ASGISendEvent,
    HTTPResponseStartEvent,
    Scope,
)
from quart import Quart, Response, request
from werkzeug.exceptions import HTTPException

from engine.pipeline.health_records import SignatureFailureTally
from engine.pipeline.intake import DeliveryIntake, StoreUnavailable
from engine.pipeline.metrics import CONTENT_TYPE, Metrics
from engine.printable import has_unseen_characters, printable
from engine.signature_diagnosis import DiagnosisBudget, diagnose
from engine.signing import DELIVERY_HEADER, EVENT_HEADER, SIGNATURE_HEADER, secrets_at, verify
from engine.store import NewDelivery
from engine.store.tables import ID_LENGTH

log = logging.getLogger(__name__)

WEBHOOK_PATH = "/webhooks/stockaj"
BODY_TIMEOUT_SECONDS = 15.0  # Stockaj waits 10 s by default: a slower body is not Stockaj
# Stockaj nests 4 levels. A body stored must be one the worker can read: its json.loads
# fails near 1,000 levels, orjson.dumps at 255.
MAX_JSON_DEPTH = 100
# After an early 413, how long and how much of the rest of the body is read (and dropped).
LINGER_SECONDS = 2.0
LINGER_BYTES = 8 * 1024 * 1024
KEPT_HEADERS = (
    "content-type",
    "user-agent",
    EVENT_HEADER.lower(),
    DELIVERY_HEADER.lower(),
    SIGNATURE_HEADER.lower(),
)
SIGNATURE_KEY, EVENT_KEY, DELIVERY_KEY = (
    SIGNATURE_HEADER.lower(),
    EVENT_HEADER.lower(),
    DELIVERY_HEADER.lower(),
)


@dataclass(frozen=True, slots=True, kw_only=True)
class ReceiverParts:
    """What the receiver needs from the running service."""

    secrets: tuple[str, ...]
    max_body_bytes: int
    intake: DeliveryIntake
    metrics: Metrics
    readiness: Callable[[], Awaitable[dict[str, Any]]]
    refresh_metrics: Callable[[], Awaitable[None]]
    body_timeout: float = BODY_TIMEOUT_SECONDS
    serve_metrics: bool = True  # False: /metrics is on a port of its own (`metrics_app`)
    previous_secret_until: datetime | None = None  # STOCKAJ_WEBHOOK_ROTATION_ENDS_AT
    # What a flood of bad signatures may spend on saying why (engine/signature_diagnosis.py).
    diagnosis_budget: DiagnosisBudget = field(default_factory=DiagnosisBudget)
    # Refused signatures by minute and reason, for `stockaj-rules doctor` (health_records.py).
    signature_tally: SignatureFailureTally = field(default_factory=SignatureFailureTally)


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _json(body: dict[str, Any], status: int) -> Response:
    return Response(orjson.dumps(body), status=status, content_type="application/json")


def create_app(parts: ReceiverParts) -> Quart:
    app = Quart(__name__)
    app.config["MAX_CONTENT_LENGTH"] = parts.max_body_bytes
    app.config["BODY_TIMEOUT"] = parts.body_timeout
    app.config["RESPONSE_TIMEOUT"] = 30
    app.asgi_app = _close_after_early_answer(  # type: ignore[method-assign,assignment]
        app.asgi_app, parts.max_body_bytes + LINGER_BYTES
    )
    received = parts.metrics.deliveries_received

    @app.errorhandler(HTTPException)
    async def http_error(error: HTTPException) -> Response:
        status = error.code or 500
        if status == 413:
            received.labels("", "too_large").inc()
            log.warning("delivery refused: body over %d bytes", parts.max_body_bytes)
            return _json({"error": f"body larger than {parts.max_body_bytes} bytes"}, 413)
        if status == 408:
            received.labels("", "rejected_request").inc()
            log.warning("delivery refused: body not received within %s s", parts.body_timeout)
            return _json({"error": f"the body did not arrive within {parts.body_timeout:g} seconds"}, 408)
        if status >= 500:
            log.error("request failed: %s", error.description)
        return _json({"error": (error.description or error.name).rstrip(".")}, status)

    @app.post(WEBHOOK_PATH)
    async def receive() -> Response:
        with parts.intake.activity.receiving():
            return await _receive()

    async def _receive() -> Response:
        body = await request.get_data(cache=False)
        assert isinstance(body, bytes)
        headers, kept = _read_headers(request.headers.items())
        signature = headers.get(SIGNATURE_KEY)
        secrets = secrets_at(parts.secrets, parts.previous_secret_until, _utc_now)
        if not verify(body, signature, secrets.accepted):
            reason = diagnose(body, signature, secrets, parts.diagnosis_budget)
            parts.metrics.signature_failures.labels(reason).inc()
            parts.signature_tally.add(reason)
            received.labels("", "rejected_signature").inc()
            delivery_id = printable(_decoded(headers.get(DELIVERY_KEY, ""))[:ID_LENGTH])
            seen = {"reason": reason, "delivery_id": delivery_id, "remote": request.remote_addr}
            log.warning(
                "signature refused: %s (delivery %s); the fix: docs/operations.md, Signature failures",
                reason,
                delivery_id or "without an id",
                extra=seen,
            )
            return _json({"error": "invalid signature"}, 401)
        event, delivery_id = _decoded(headers.get(EVENT_KEY, "")), _decoded(headers.get(DELIVERY_KEY, ""))
        problem = header_problem = _header_problem(event, delivery_id)
        if problem is None:
            problem = _body_problem(body)
        if problem is not None:
            # A header problem may be the event itself: it is no label then.
            received.labels(event if header_problem is None else "", "rejected_request").inc()
            shown = printable(delivery_id[:ID_LENGTH])
            log.warning("delivery refused: %s", problem, extra={"delivery_id": shown})
            return _json({"error": problem}, 400)
        delivery = NewDelivery(delivery_id, event, kept, body, datetime.now(UTC))
        try:
            is_new = await parts.intake.submit(delivery)
        except StoreUnavailable:
            received.labels(event, "store_unavailable").inc()
            return _json({"error": "the delivery could not be stored; retry later"}, 503)
        if not is_new:
            parts.metrics.duplicates.inc()
        received.labels(event, "accepted" if is_new else "duplicate").inc()
        return _json({"received": True, "duplicate": not is_new, "delivery_id": delivery_id}, 200)

    @app.get("/healthz")
    async def healthz() -> Response:
        return _json({"status": "ok"}, 200)

    @app.get("/readyz")
    async def readyz() -> Response:
        checks = await parts.readiness()
        ready = all(check.get("ok") for check in checks.values())
        return _json({"ready": ready, "checks": checks}, 200 if ready else 503)

    if parts.serve_metrics:

        @app.get("/metrics")
        async def metrics() -> Response:
            await parts.refresh_metrics()
            return Response(parts.metrics.render(), status=200, content_type=CONTENT_TYPE)

    return app


def _read_headers(items: Iterable[tuple[str, str]]) -> tuple[dict[str, str], dict[str, str]]:
    """One pass over the request's headers: (first raw value by lower-case name, the headers
    the delivery keeps by name as sent, stripped and decoded).

    One pass, because a lookup by name scans every header and lower-cases each.
    """
    first: dict[str, str] = {}
    kept: dict[str, str] = {}
    for name, value in items:
        key = name.lower()
        if key not in KEPT_HEADERS or key in first:
            continue
        first[key] = value
        kept[name] = _decoded(value)
    return first, kept


def _decoded(value: str) -> str:
    """A header's value, stripped; UTF-8 when it is (the server hands bytes over as latin-1).

    Only spaces and tabs are stripped, before decoding: str.strip() would also take the
    bytes 0x85 and 0xa0, which end the UTF-8 of `ą` or `à`, from the latin-1 reading.
    """
    value = value.strip(" \t")
    with contextlib.suppress(UnicodeError):
        return value.encode("latin-1").decode("utf-8")
    return value


def _header_problem(event: str, delivery_id: str) -> str | None:
    for name, value in ((EVENT_HEADER, event), (DELIVERY_HEADER, delivery_id)):
        if not value:
            return f"missing or empty {name} header"
        if has_unseen_characters(value):
            return f"{name} header must not contain control characters"
    if len(delivery_id) > ID_LENGTH or len(event) > ID_LENGTH:
        return f"{DELIVERY_HEADER} and {EVENT_HEADER} may be at most {ID_LENGTH} characters"
    return None


def _body_problem(body: bytes) -> str | None:
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        return "body is not valid JSON"
    if not isinstance(payload, dict):
        return f"body must be a JSON object, not a JSON {_json_kind(payload)}"
    if body.count(b"{") + body.count(b"[") > MAX_JSON_DEPTH and _nested_deeper(payload, MAX_JSON_DEPTH):
        return f"body is nested deeper than {MAX_JSON_DEPTH} levels"
    return None


def _nested_deeper(payload: dict[str, Any], limit: int) -> bool:
    stack: list[tuple[Any, int]] = [(payload, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > limit:
            return True
        children = value.values() if isinstance(value, dict) else value
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


def _json_kind(value: Any) -> str:
    kinds = {list: "array", str: "string", bool: "boolean", type(None): "null"}
    return kinds.get(type(value), "number")


ASGIApp = Callable[[Scope, ASGIReceiveCallable, ASGISendCallable], Coroutine[Any, Any, None]]


def metrics_app(parts: ReceiverParts) -> ASGIApp:
    """`GET /metrics` alone, for METRICS_PORT: Prometheus scrapes it; the webhook port has none."""

    async def app(scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] != "/metrics":
            status, body, content_type = (
                404,
                b'{"error":"not found; metrics are at /metrics"}',
                "application/json",
            )
        elif scope["method"] not in ("GET", "HEAD"):
            status, body, content_type = 405, b'{"error":"method not allowed"}', "application/json"
        else:
            await parts.refresh_metrics()
            status, body, content_type = 200, parts.metrics.render(), CONTENT_TYPE
        headers = [(b"content-type", content_type.encode()), (b"content-length", b"%d" % len(body))]
        await send({"type": "http.response.start", "status": status, "headers": headers, "trailers": False})
        await send({"type": "http.response.body", "body": body, "more_body": False})

    return app


def _close_after_early_answer(app: ASGIApp, drain_limit: int) -> ASGIApp:
    """Answers sent before the body was read (413, 408) close the connection, gently.

    Left open, the server would read a 2 GB body to its end to find the next
    request. Closed at once, the unread bytes make the kernel reset the
    connection, which can destroy the 413 before a client that is still
    sending reads it. So the answer goes out first, then the rest of the body
    is read and dropped until it ends, for at most LINGER_SECONDS and until
    `drain_limit` bytes were read, then the connection is closed.
    """

    async def middleware(scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        body_ended = asyncio.Event()
        seen = 0
        early_status = 0

        async def counting_receive() -> ASGIReceiveEvent:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request" and message.get("more_body", False):
                seen += len(message.get("body", b""))
                if seen > drain_limit:
                    body_ended.set()
            else:
                body_ended.set()
            return message

        async def closing_send(message: ASGISendEvent) -> None:
            nonlocal early_status
            if message["type"] == "http.response.start" and message["status"] in (408, 413):
                early_status = message["status"]
                start = cast(HTTPResponseStartEvent, dict(message))
                start["headers"] = [*message["headers"], (b"connection", b"close")]
                message = start
            elif (
                early_status == 413
                and message["type"] == "http.response.body"
                and not message.get("more_body", False)
                and not body_ended.is_set()
            ):
                await send({"type": "http.response.body", "body": message["body"], "more_body": True})
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(body_ended.wait(), LINGER_SECONDS)
                message = {"type": "http.response.body", "body": b"", "more_body": False}
            await send(message)

        await app(scope, counting_receive, closing_send)

    return middleware
