"""Stored deliveries read back oldest first, in batches (engine/store/history.py), on both databases."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from sqlalchemy import update

from engine.store import NewDelivery, Store
from engine.store.history import HistoryFilter, count_kept, kept_deliveries
from engine.store.tables import deliveries

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)


async def add(store: Store, delivery_id: str, minutes: int, event: str = "item.low_stock") -> None:
    body = json.dumps({"event": event, "data": {"id": delivery_id}}).encode()
    received = T0 + timedelta(minutes=minutes)
    await store.add_deliveries([NewDelivery(delivery_id, event, {"X-A": "1"}, body, received)], received)


async def ids(store: Store, chosen: HistoryFilter, batch_size: int = 2) -> list[list[str]]:
    return [
        [kept.delivery_id for kept in batch] async for batch in kept_deliveries(store, chosen, batch_size)
    ]


async def test_deliveries_come_oldest_first_in_batches_ties_broken_by_id(store: Store) -> None:
    for delivery_id, minutes in [("c", 2), ("a", 0), ("e", 3), ("b", 2), ("d", 2)]:
        await add(store, delivery_id, minutes)

    assert await ids(store, HistoryFilter()) == [["a", "b"], ["c", "d"], ["e"]]
    assert await count_kept(store, HistoryFilter()) == 5
    (batch,) = [batch async for batch in kept_deliveries(store, HistoryFilter(), 10)]
    first = batch[0]
    assert (first.event, first.headers, first.received_at) == ("item.low_stock", {"X-A": "1"}, T0)
    assert json.loads(first.body) == {"event": "item.low_stock", "data": {"id": "a"}}


async def test_last_n_since_and_event_choose_the_deliveries(store: Store) -> None:
    for delivery_id, minutes in [("a", 0), ("b", 1), ("c", 2), ("d", 2), ("e", 3)]:
        await add(store, delivery_id, minutes, "rent.created" if delivery_id == "b" else "item.low_stock")

    assert await ids(store, HistoryFilter(last=3)) == [["c", "d"], ["e"]]
    assert await ids(store, HistoryFilter(last=2)) == [["d", "e"]]
    assert await ids(store, HistoryFilter(last=50)) == [["a", "b"], ["c", "d"], ["e"]]
    assert await count_kept(store, HistoryFilter(last=3)) == 3
    assert await ids(store, HistoryFilter(since=T0 + timedelta(minutes=2))) == [["c", "d"], ["e"]]
    assert await ids(store, HistoryFilter(event="rent.created")) == [["b"]]
    assert await ids(store, HistoryFilter(event="item.low_stock", last=4)) == [["a", "c"], ["d", "e"]]
    assert await count_kept(store, HistoryFilter(event="nothing")) == 0
    assert await ids(store, HistoryFilter(event="nothing", last=3)) == []


async def test_deliveries_whose_body_was_dropped_are_not_given(store: Store) -> None:
    await add(store, "old", 0)
    await add(store, "new", 60 * 24 * 40)
    # Retention drops the bodies of finished deliveries only: finish them first.
    async with store.engine.begin() as connection:
        await connection.execute(update(deliveries).values(status="done"))
    await store.purge(T0 + timedelta(days=35), timedelta(days=30), timedelta(days=365))

    assert await ids(store, HistoryFilter()) == [["new"]]
    assert await count_kept(store, HistoryFilter()) == 1
