"""The console's reads of the delivery log (engine/store/log_pages.py), on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from sqlalchemy import insert, update

from engine.store import NewDelivery, Store
from engine.store.log_pages import LogFilter, log_page, per_minute, rule_traffic
from engine.store.tables import action_runs, deliveries, rule_outcomes

T0 = datetime(2026, 3, 1, 9, 0, 30, tzinfo=UTC)


async def add(
    store: Store, delivery_id: str, seconds: float, event: str = "item.low_stock", status: str = "done"
) -> None:
    received = T0 + timedelta(seconds=seconds)
    body = json.dumps({"event": event}).encode()
    await store.add_deliveries([NewDelivery(delivery_id, event, {}, body, received)], received)
    async with store.engine.begin() as connection:
        await connection.execute(
            update(deliveries).where(deliveries.c.delivery_id == delivery_id).values(status=status)
        )


async def verdict(store: Store, delivery_id: str, rule_id: str, status: str, seconds: float = 0) -> None:
    async with store.engine.begin() as connection:
        await connection.execute(
            insert(rule_outcomes).values(
                delivery_id=delivery_id,
                rule_id=rule_id,
                status=status,
                reason="why",
                recorded_at=T0 + timedelta(seconds=seconds),
            )
        )


async def test_pages_are_newest_first_by_keyset_with_every_filter(store: Store) -> None:
    for index in range(5):
        await add(store, f"a{index}", index, status="done" if index % 2 else "no_match")
    await add(store, "b-same-moment", 4, event="rent.created")
    await verdict(store, "a1", "reorder", "fired")
    await verdict(store, "a3", "reorder", "condition_false")
    await verdict(store, "a3", "other", "fired")

    first = await log_page(store, LogFilter(), None, 2)
    second = await log_page(store, LogFilter(), first.next_key, 2)
    third = await log_page(store, LogFilter(), second.next_key, 2)

    assert [r.delivery_id for r in first.rows] == ["b-same-moment", "a4"]
    assert [r.delivery_id for r in second.rows] == ["a3", "a2"]
    assert [r.delivery_id for r in third.rows] == ["a1", "a0"]
    assert third.next_key is None
    assert second.rows[0].fired == ("other",)
    assert [r.delivery_id for r in (await log_page(store, LogFilter(status="done"))).rows] == [
        "b-same-moment",
        "a3",
        "a1",
    ]
    assert [r.delivery_id for r in (await log_page(store, LogFilter(event="rent.created"))).rows] == [
        "b-same-moment"
    ]
    assert [r.delivery_id for r in (await log_page(store, LogFilter(rule="reorder"))).rows] == ["a1"]
    assert [r.delivery_id for r in (await log_page(store, LogFilter(delivery_id="b-"))).rows] == [
        "b-same-moment"
    ]
    assert (await log_page(store, LogFilter(delivery_id="a_"))).rows == []  # `_` is no wildcard


async def test_per_minute_counts_by_status_in_utc_minutes(store: Store) -> None:
    await add(store, "x1", 0)
    await add(store, "x2", 20)  # 09:00:50, the same minute
    await add(store, "x3", 40, status="failed")  # 09:01:10
    await add(store, "old", -3600)

    counts = await per_minute(store, T0 - timedelta(minutes=1))

    assert sorted(counts) == [("2026-03-01 09:00", "done", 2), ("2026-03-01 09:01", "failed", 1)]


async def test_rule_traffic_counts_verdicts_failed_actions_and_the_last_firing(store: Store) -> None:
    for index in range(3):
        await add(store, f"d{index}", index)
    await verdict(store, "d0", "reorder", "fired", 10)
    await verdict(store, "d1", "reorder", "fired", 20)
    await verdict(store, "d2", "reorder", "condition_false", 30)
    await verdict(store, "d2", "rentals", "event_not_matched", 30)
    async with store.engine.begin() as connection:
        await connection.execute(
            insert(action_runs).values(
                delivery_id="d1",
                rule_id="reorder",
                action_index=0,
                type="log",
                status="failed",
                params={},
                attempts=1,
                updated_at=T0,
            )
        )

    traffic = await rule_traffic(store)

    assert traffic["reorder"].by_status == {"fired": 2, "condition_false": 1}
    assert (traffic["reorder"].fired, traffic["reorder"].failed_actions) == (2, 1)
    assert traffic["reorder"].last_fired == T0 + timedelta(seconds=20)
    assert traffic["rentals"].fired == 0
    assert traffic["rentals"].last_fired is None
