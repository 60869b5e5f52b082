"""The naive receiver: verify, then one SQLAlchemy ORM session insert + commit per request.

What a first cut of the receiver would do: no batching, an `AsyncSession` per
request, SQLite in WAL mode (synchronous=FULL and a busy timeout, as the
engine's receiver connection sets them) behind SQLAlchemy's default pool (5 + 10 connections for a
file database). A duplicate delivery id is the primary key's IntegrityError.
The database file comes from `BENCH_NAIVE_DB`, the secret from `BENCH_SECRET`.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from typing import Any

import orjson
from quart import Quart, Response, request
from sqlalchemy import JSON, DateTime, Integer, LargeBinary, String, event
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from engine.signing import DELIVERY_HEADER, EVENT_HEADER, SIGNATURE_HEADER, verify

SECRETS = (os.environ["BENCH_SECRET"],)
KEPT_HEADERS = ("content-type", "user-agent", "x-stockaj-event", "x-stockaj-delivery", "x-stockaj-signature")

engine = create_async_engine(f"sqlite+aiosqlite:///{os.environ['BENCH_NAIVE_DB']}")  # the default pool
Session = async_sessionmaker(engine, expire_on_commit=False)


@event.listens_for(engine.sync_engine, "connect")
def _pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


class Base(DeclarativeBase):
    pass


class Delivery(Base):
    __tablename__ = "deliveries"
    delivery_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    event: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(20))
    headers: Mapped[dict[str, str]] = mapped_column(JSON)
    body: Mapped[bytes] = mapped_column(LargeBinary)
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    runs: Mapped[int] = mapped_column(Integer, default=0)


app = Quart(__name__)
app.config["MAX_CONTENT_LENGTH"] = 1_048_576
app.config["BODY_TIMEOUT"] = 15


@app.before_serving
async def create_tables() -> None:
    async with engine.begin() as connection:
        await connection.run_sync(Base.metadata.create_all)


@app.after_serving
async def dispose() -> None:
    await engine.dispose()


def _json(body: object, status: int) -> Response:
    return Response(orjson.dumps(body), status=status, content_type="application/json")


@app.post("/webhooks/stockaj")
async def receive() -> Response:
    body = await request.get_data(cache=False)
    assert isinstance(body, bytes)
    if not verify(body, request.headers.get(SIGNATURE_HEADER), SECRETS):
        return _json({"error": "invalid signature"}, 401)
    event_name = request.headers.get(EVENT_HEADER, "").strip()
    delivery_id = request.headers.get(DELIVERY_HEADER, "").strip()
    if not event_name or not delivery_id:
        return _json({"error": "missing header"}, 400)
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        return _json({"error": "body is not valid JSON"}, 400)
    if not isinstance(payload, dict):
        return _json({"error": "body must be a JSON object"}, 400)
    now = datetime.now(UTC)
    headers = {k: v for k, v in request.headers.items() if k.lower() in KEPT_HEADERS}
    row = Delivery(
        delivery_id=delivery_id,
        event=event_name,
        status="received",
        headers=headers,
        body=body,
        received_at=now,
        updated_at=now,
    )
    duplicate = False
    async with Session() as session:
        session.add(row)
        try:
            await session.commit()
        except IntegrityError:
            await session.rollback()
            duplicate = True
    return _json({"received": True, "duplicate": duplicate, "delivery_id": delivery_id}, 200)


@app.get("/healthz")
async def healthz() -> Response:
    return _json({"status": "ok"}, 200)
