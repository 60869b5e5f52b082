"""The delivery log's queries: a delivery, the latest ones, their rule outcomes and action ledgers.

What `stockaj-rules deliveries list/show/export` and the console read; nothing here writes.
"""

from __future__ import annotations

from sqlalchemy import select

from engine.store.connections import StoreConnections
from engine.store.ledger import read_ledgers
from engine.store.records import Ledger, RuleOutcomeRow, StoredDelivery, stored_delivery
from engine.store.tables import DeliveryStatus, deliveries, rule_outcomes


class DeliveryLogQueries(StoreConnections):
    async def get(self, delivery_id: str) -> StoredDelivery | None:
        async with self._connect() as connection:
            row = (
                await connection.execute(select(deliveries).where(deliveries.c.delivery_id == delivery_id))
            ).first()
        return stored_delivery(row) if row is not None else None

    async def recent(self, status: DeliveryStatus | None = None, limit: int = 50) -> list[StoredDelivery]:
        query = select(deliveries).order_by(deliveries.c.received_at.desc()).limit(limit)
        if status is not None:
            query = query.where(deliveries.c.status == status.value)
        async with self._connect() as connection:
            return [stored_delivery(row) for row in await connection.execute(query)]

    async def outcomes(self, delivery_id: str) -> list[RuleOutcomeRow]:
        query = (
            select(rule_outcomes)
            .where(rule_outcomes.c.delivery_id == delivery_id)
            .order_by(rule_outcomes.c.rule_id)
        )
        async with self._connect() as connection:
            return [
                RuleOutcomeRow(row.rule_id, row.status, row.reason, row.recorded_at)
                for row in await connection.execute(query)
            ]

    async def action_runs(self, delivery_id: str) -> Ledger:
        """The ledger of a delivery, by (rule id, action index)."""
        async with self._connect() as connection:
            return (await read_ledgers(connection, [delivery_id])).get(delivery_id, {})
