"""The ceiling: a Quart app that answers the webhook path without reading the body.

Served by each ASGI server under comparison (`bench_receiver.py` runs it as
`hello:app` with this folder on the path).
"""

from __future__ import annotations

from quart import Quart

app = Quart(__name__)


@app.post("/webhooks/stockaj")
async def hello() -> str:
    return "hello"


@app.get("/healthz")
async def healthz() -> str:
    return "ok"
