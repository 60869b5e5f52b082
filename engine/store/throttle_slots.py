"""The throttle across workers: one slot per (rule, rendered key) in the store, taken atomically.

A rule's `throttle` holds for every worker process at once because its slot is a
row: taking it is one INSERT ... ON CONFLICT DO UPDATE that only succeeds when the
window is over. `StoreThrottle` is the `ThrottleState` (engine/language/throttle.py) a
worker's matching asks, one per delivery; dry runs use the one-process slots there.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta

from sqlalchemy import and_, case, literal, or_, select

from engine.store.connections import StoreConnections
from engine.store.tables import THROTTLE_KEY_LENGTH, throttle_slots


class ThrottleSlotQueries(StoreConnections):
    async def acquire_throttle(
        self, rule_id: str, key: str, window: timedelta, now: datetime, delivery_id: str
    ) -> datetime | None:
        """Take the (rule, key) slot atomically; None when taken, else when it was last taken.

        The slot is free when it was last taken `window` ago or more, or by this
        same delivery (a delivery processed again keeps its slot). Processing a delivery
        again within its window keeps the time it fired: the window is not extended.
        """
        key = _slot_key(key)
        fired = throttle_slots.c.fired_at
        moment = literal(now, fired.type)
        window_over = fired <= now - window
        statement = (
            self._insert(throttle_slots)
            .values(rule_id=rule_id, key=key, delivery_id=delivery_id, fired_at=now)
            .on_conflict_do_update(
                index_elements=["rule_id", "key"],
                set_={"delivery_id": delivery_id, "fired_at": case((window_over, moment), else_=fired)},
                where=or_(window_over, throttle_slots.c.delivery_id == delivery_id),
            )
            .returning(throttle_slots.c.rule_id)
        )
        async with self._begin() as connection:
            taken = (await connection.execute(statement)).first()
            if taken is not None:
                return None
            last = await connection.execute(
                select(throttle_slots.c.fired_at).where(
                    and_(throttle_slots.c.rule_id == rule_id, throttle_slots.c.key == key)
                )
            )
            fired_at: datetime | None = last.scalar()
            return fired_at


class StoreThrottle:
    """Throttle slots in the store, so a limit holds across every worker.

    A rule that already fired for this delivery (it has rows in the ledger) keeps
    firing when the delivery is processed again: its slot may have passed to a
    later delivery meanwhile, but its own pending or failed actions still belong
    to that first firing and must not be abandoned as `throttled`.
    """

    def __init__(self, store: ThrottleSlotQueries, delivery_id: str, fired_before: frozenset[str]) -> None:
        self._store = store
        self._delivery_id = delivery_id
        self._fired_before = fired_before

    async def acquire(self, rule_id: str, key: str, window: timedelta, now: datetime) -> datetime | None:
        if rule_id in self._fired_before:
            return None
        return await self._store.acquire_throttle(rule_id, key, window, now, self._delivery_id)


def _slot_key(key: str) -> str:
    """Long keys, and keys holding NUL (PostgreSQL refuses it in text), are stored by their hash."""
    if len(key) <= THROTTLE_KEY_LENGTH and "\x00" not in key:
        return key
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()
