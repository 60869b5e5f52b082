"""`stockaj-rules redeliver`: a stored delivery made pending again, its ledger kept or forgotten."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import and_, delete, select, update

from engine.store.connections import StoreConnections
from engine.store.records import Reopened
from engine.store.tables import ActionStatus, DeliveryStatus, action_runs, deliveries


class RedeliveryQueries(StoreConnections):
    async def reopen(self, delivery_id: str, now: datetime, due_at: datetime | None = None) -> Reopened:
        """Make a stored delivery pending again (`redeliver`), due at `due_at` (default: now).

        Its actions that did not succeed get a fresh start: they run at the next run, with
        their attempts counted from one again. Succeeded ones stay in the ledger, so they are
        not repeated (`forget_action_runs` is for that). A delivery a run holds right now
        (claimed, not finished, its claim not expired) is left alone: `Reopened.RUNNING`.
        """
        running = and_(
            deliveries.c.status == DeliveryStatus.PROCESSING.value,
            deliveries.c.unfinished_runs > 0,
            deliveries.c.due_at > now,
        )
        async with self._begin() as connection:
            result = await connection.execute(
                update(deliveries)
                .where(and_(deliveries.c.delivery_id == delivery_id, ~running))
                .values(
                    status=DeliveryStatus.RECEIVED.value,
                    updated_at=now,
                    due_at=due_at or now,
                    error=None,
                    unfinished_runs=0,
                )
            )
            if not result.rowcount:
                found = await connection.execute(
                    select(deliveries.c.delivery_id).where(deliveries.c.delivery_id == delivery_id)
                )
                return Reopened.RUNNING if found.first() is not None else Reopened.UNKNOWN
            await connection.execute(
                update(action_runs)
                .where(
                    and_(
                        action_runs.c.delivery_id == delivery_id,
                        action_runs.c.status != ActionStatus.SUCCEEDED.value,
                    )
                )
                .values(status=ActionStatus.PENDING.value, attempts=0, next_attempt_at=None, updated_at=now)
            )
        return Reopened.REOPENED

    async def forget_action_runs(self, delivery_id: str) -> None:
        """Drop a delivery's ledger (`redeliver --force` runs every action again)."""
        async with self._begin() as connection:
            await connection.execute(delete(action_runs).where(action_runs.c.delivery_id == delivery_id))
