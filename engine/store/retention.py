"""Retention: bodies and deliveries past their settings' age are dropped (the sweeper's purge).

Only finished deliveries (`done`, `failed`, `no_match`) are purged; a pending one is
never lost to retention. Throttle slots older than the delivery retention go too.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import and_, delete, update

from engine.store.connections import StoreConnections
from engine.store.tables import DeliveryStatus, deliveries, throttle_slots


class RetentionQueries(StoreConnections):
    async def purge(
        self, now: datetime, body_retention: timedelta, delivery_retention: timedelta
    ) -> tuple[int, int]:
        """Drop bodies older than `body_retention` and deliveries older than `delivery_retention`."""
        finished = [DeliveryStatus.DONE.value, DeliveryStatus.FAILED.value, DeliveryStatus.NO_MATCH.value]
        async with self._begin() as connection:
            bodies = await connection.execute(
                update(deliveries)
                .where(
                    and_(
                        deliveries.c.received_at < now - body_retention,
                        deliveries.c.body.is_not(None),
                        deliveries.c.status.in_(finished),
                    )
                )
                .values(body=None)
            )
            rows = await connection.execute(
                delete(deliveries).where(
                    and_(
                        deliveries.c.received_at < now - delivery_retention, deliveries.c.status.in_(finished)
                    )
                )
            )
            await connection.execute(
                delete(throttle_slots).where(throttle_slots.c.fired_at < now - delivery_retention)
            )
        return bodies.rowcount, rows.rowcount
