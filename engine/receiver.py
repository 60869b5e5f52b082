"""The webhook receiver: `POST /webhooks/stockaj`, health, readiness and metrics.

Checks run in the spec's order, every answer is JSON:

    413 body over MAX_BODY_BYTES (enforced while reading: a 2 GB stream is cut off)
    401 signature missing, malformed or wrong (over the raw bytes, every secret)
    400 X-Stockaj-Event or X-Stockaj-Delivery missing or empty (named)
    400 body is not a JSON object
    200 duplicate: the delivery id is stored already
    200 accepted: stored durably (group commit), enqueued afterwards
    503 the store cannot be written, so Stockaj retries

Why a delivery was refused goes to the log and metrics, never to the answer.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from quart import Quart, Response, request
from werkzeug.exceptions import HTTPException

from engine.intake import DeliveryIntake, StoreUnavailable
from engine.metrics import CONTENT_TYPE, Metrics
from engine.signing import DELIVERY_HEADER, EVENT_HEADER, SIGNATURE_HEADER, verify
from engine.store import NewDelivery
from engine.tables import ID_LENGTH

log = logging.getLogger(__name__)

WEBHOOK_PATH = "/webhooks/stockaj"
BODY_TIMEOUT_SECONDS = 15  # Stockaj waits 10 s by default: a slower body is not Stockaj
KEPT_HEADERS = (
    "content-type",
    "user-agent",
    EVENT_HEADER.lower(),
    DELIVERY_HEADER.lower(),
    SIGNATURE_HEADER.lower(),
)


@dataclass(frozen=True, slots=True)
class ReceiverParts:
    """What the receiver needs from the running service."""

    secrets: tuple[str, ...]
    max_body_bytes: int
    intake: DeliveryIntake
    metrics: Metrics
    readiness: Callable[[], Awaitable[dict[str, Any]]]
    refresh_metrics: Callable[[], Awaitable[None]]


def _json(body: dict[str, Any], status: int) -> Response:
    return Response(orjson.dumps(body), status=status, content_type="application/json")


def create_app(parts: ReceiverParts) -> Quart:
    app = Quart(__name__)
    app.config["MAX_CONTENT_LENGTH"] = parts.max_body_bytes
    app.config["BODY_TIMEOUT"] = BODY_TIMEOUT_SECONDS
    app.config["RESPONSE_TIMEOUT"] = 30
    received = parts.metrics.deliveries_received

    @app.errorhandler(HTTPException)
    async def http_error(error: HTTPException) -> Response:
        status = error.code or 500
        if status == 413:
            received.labels("", "too_large").inc()
            return _json({"error": f"body larger than {parts.max_body_bytes} bytes"}, 413)
        return _json({"error": (error.description or error.name).rstrip(".")}, status)

    @app.post(WEBHOOK_PATH)
    async def receive() -> Response:
        body = await request.get_data(cache=False)
        assert isinstance(body, bytes)
        signature = request.headers.get(SIGNATURE_HEADER)
        if not verify(body, signature, parts.secrets):
            reason = "missing" if not signature else "mismatch"
            parts.metrics.signature_failures.labels(reason).inc()
            received.labels("", "rejected_signature").inc()
            log.warning("signature %s", reason, extra={"remote": request.remote_addr, "bytes": len(body)})
            return _json({"error": "invalid signature"}, 401)
        event = request.headers.get(EVENT_HEADER, "").strip()
        delivery_id = request.headers.get(DELIVERY_HEADER, "").strip()
        problem = _header_problem(event, delivery_id)
        if problem is None:
            problem = _body_problem(body)
        if problem is not None:
            received.labels(event[:100], "rejected_request").inc()
            log.warning("delivery refused: %s", problem, extra={"delivery_id": delivery_id[:ID_LENGTH]})
            return _json({"error": problem}, 400)
        headers = {name: value for name, value in request.headers.items() if name.lower() in KEPT_HEADERS}
        delivery = NewDelivery(delivery_id, event, headers, body, datetime.now(UTC))
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

    @app.get("/metrics")
    async def metrics() -> Response:
        await parts.refresh_metrics()
        return Response(parts.metrics.render(), status=200, content_type=CONTENT_TYPE)

    return app


def _header_problem(event: str, delivery_id: str) -> str | None:
    for name, value in ((EVENT_HEADER, event), (DELIVERY_HEADER, delivery_id)):
        if not value:
            return f"missing or empty {name} header"
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
    return None


def _json_kind(value: Any) -> str:
    kinds = {list: "array", str: "string", bool: "boolean", type(None): "null"}
    return kinds.get(type(value), "number")
