"""What is still pending: the sweeper enqueues it again, the metrics report how late it is.

The queue only carries delivery ids; it can be rebuilt from the store, whose pending
deliveries (`received`, or `processing` with a `due_at`) are the work still to do.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import and_, func, select

from engine.store.connections import StoreConnections
from engine.store.tables import PENDING_STATUSES, deliveries


class PendingQueries(StoreConnections):
    async def due_deliveries(self, now: datetime, limit: int = 500) -> list[str]:
        """Pending deliveries whose job may be lost: enqueue them again (it is idempotent)."""
        query = (
            select(deliveries.c.delivery_id)
            .where(
                and_(
                    deliveries.c.status.in_([status.value for status in PENDING_STATUSES]),
                    deliveries.c.due_at <= now,
                )
            )
            .order_by(deliveries.c.due_at, deliveries.c.delivery_id)
            .limit(limit)
        )
        async with self._connect() as connection:
            return list((await connection.execute(query)).scalars())

    async def oldest_pending_received_at(self) -> datetime | None:
        """When the oldest delivery still waiting was received (queue lag)."""
        query = select(func.min(deliveries.c.received_at)).where(
            deliveries.c.status.in_([status.value for status in PENDING_STATUSES])
        )
        async with self._connect() as connection:
            oldest: datetime | None = (await connection.execute(query)).scalar()
            return oldest
