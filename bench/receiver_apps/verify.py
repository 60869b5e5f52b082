"""Verify only: what the real receiver does before it stores anything, and nothing more.

Raw body (with the receiver's size limit and body timeout), HMAC over the raw
bytes with `engine.signing.verify`, the two headers, `orjson.loads` and the
JSON-object check, then the receiver's 200 answer. Nothing is stored or queued.
The secret comes from `BENCH_SECRET`.
"""

from __future__ import annotations

import os

import orjson
from quart import Quart, Response, request

from engine.signing import DELIVERY_HEADER, EVENT_HEADER, SIGNATURE_HEADER, verify

SECRETS = (os.environ["BENCH_SECRET"],)

app = Quart(__name__)
app.config["MAX_CONTENT_LENGTH"] = 1_048_576
app.config["BODY_TIMEOUT"] = 15


def _json(body: object, status: int) -> Response:
    return Response(orjson.dumps(body), status=status, content_type="application/json")


@app.post("/webhooks/stockaj")
async def receive() -> Response:
    body = await request.get_data(cache=False)
    assert isinstance(body, bytes)
    if not verify(body, request.headers.get(SIGNATURE_HEADER), SECRETS):
        return _json({"error": "invalid signature"}, 401)
    event = request.headers.get(EVENT_HEADER, "").strip()
    delivery_id = request.headers.get(DELIVERY_HEADER, "").strip()
    if not event or not delivery_id:
        return _json({"error": "missing header"}, 400)
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        return _json({"error": "body is not valid JSON"}, 400)
    if not isinstance(payload, dict):
        return _json({"error": "body must be a JSON object"}, 400)
    return _json({"received": True, "duplicate": False, "delivery_id": delivery_id}, 200)


@app.get("/healthz")
async def healthz() -> Response:
    return _json({"status": "ok"}, 200)
