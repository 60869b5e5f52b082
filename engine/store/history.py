"""Stored deliveries read back in the order they were received, in batches: what `impact` replays.

Only deliveries whose body is kept (retention drops bodies first) can be replayed. Batches
are read by keyset on (received_at, delivery_id), each on a connection of its own, so a long
replay never holds the store from the receiver (on SQLite its one connection goes to the
intake first between two batches).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select, and_, func, or_, select

from engine.store import Store
from engine.store.tables import deliveries

BATCH_SIZE = 500


@dataclass(frozen=True, slots=True)
class KeptDelivery:
    """A stored delivery with its body."""

    delivery_id: str
    event: str
    headers: dict[str, str]
    body: bytes
    received_at: datetime


@dataclass(frozen=True, slots=True)
class HistoryFilter:
    """Which kept deliveries: received since a moment, of one event, the last N of them."""

    since: datetime | None = None
    event: str | None = None
    last: int | None = None


def _conditions(chosen: HistoryFilter) -> list[Any]:
    conditions: list[Any] = [deliveries.c.body.is_not(None)]
    if chosen.since is not None:
        conditions.append(deliveries.c.received_at >= chosen.since)
    if chosen.event is not None:
        conditions.append(deliveries.c.event == chosen.event)
    return conditions


async def count_kept(store: Store, chosen: HistoryFilter) -> int:
    """How many deliveries `kept_deliveries` will give."""
    query = select(func.count()).select_from(deliveries).where(and_(*_conditions(chosen)))
    async with store._connect() as connection:
        total = int((await connection.execute(query)).scalar() or 0)
    return min(total, chosen.last) if chosen.last is not None else total


async def kept_deliveries(
    store: Store, chosen: HistoryFilter, batch_size: int = BATCH_SIZE
) -> AsyncIterator[list[KeptDelivery]]:
    """The chosen deliveries, oldest first, in batches of at most `batch_size`."""
    conditions = _conditions(chosen)
    after: tuple[datetime, str] | None = None
    inclusive = False
    if chosen.last is not None:
        if chosen.last <= 0:
            return
        after = await _nth_newest(store, conditions, chosen.last)
        inclusive = True
    while True:
        query = _batch(conditions, after, inclusive, batch_size)
        async with store._connect() as connection:
            rows = (await connection.execute(query)).all()
        if not rows:
            return
        yield [
            KeptDelivery(row.delivery_id, row.event, dict(row.headers), row.body, row.received_at)
            for row in rows
        ]
        if len(rows) < batch_size:
            return
        after, inclusive = (rows[-1].received_at, rows[-1].delivery_id), False


async def _nth_newest(store: Store, conditions: list[Any], n: int) -> tuple[datetime, str] | None:
    """The key of the n-th newest chosen delivery (the oldest of the last n), or None for all."""
    query = (
        select(deliveries.c.received_at, deliveries.c.delivery_id)
        .where(and_(*conditions))
        .order_by(deliveries.c.received_at.desc(), deliveries.c.delivery_id.desc())
        .offset(n - 1)
        .limit(1)
    )
    async with store._connect() as connection:
        row = (await connection.execute(query)).first()
    return (row.received_at, row.delivery_id) if row is not None else None


def _batch(
    conditions: list[Any], after: tuple[datetime, str] | None, inclusive: bool, size: int
) -> Select[Any]:
    where = list(conditions)
    if after is not None:
        moment, delivery_id = after
        at_moment = (
            deliveries.c.delivery_id >= delivery_id if inclusive else deliveries.c.delivery_id > delivery_id
        )
        where.append(
            or_(
                deliveries.c.received_at > moment,
                and_(deliveries.c.received_at == moment, at_moment),
            )
        )
    return (
        select(
            deliveries.c.delivery_id,
            deliveries.c.event,
            deliveries.c.headers,
            deliveries.c.body,
            deliveries.c.received_at,
        )
        .where(and_(*where))
        .order_by(deliveries.c.received_at, deliveries.c.delivery_id)
        .limit(size)
    )
