"""The store: the source of truth, and the few queries the receiver, the worker and the CLI need.

A delivery is written before Stockaj gets its 2xx; the queue only carries
delivery ids and can be rebuilt from here. Every write is a short transaction on
SQLAlchemy Core, the same code on SQLite and PostgreSQL, but for the hottest
two, which have a statement of their own on PostgreSQL (postgres_batches.py).

`Store` is one object made of parts, each in the module its consumer leads to:

- intake.py: the receiver's batch insert, and the duplicate decision;
- runs.py: the worker's claims, progress and run ends (the claim extension too);
- ledger.py: the action ledger the runs write;
- delivery_log.py: the delivery log's reads (`deliveries list/show/export`);
- redelivery.py: `redeliver`'s reopen and ledger reset;
- pending.py: what the sweeper enqueues again, and the queue lag;
- throttle_slots.py: the throttle across workers;
- retention.py: the sweeper's purge;
- connections.py: transactions, and SQLite's one connection (connection_turns.py,
  sqlite_writer.py); tables.py: the schema; database.py: engines and migrations.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import and_, update

from engine.store.delivery_log import DeliveryLogQueries
from engine.store.intake import IntakeQueries
from engine.store.pending import PendingQueries
from engine.store.records import (
    ActionRun,
    Claim,
    Ledger,
    NewDelivery,
    Reopened,
    RuleOutcomeRow,
    RunEnd,
    StoredDelivery,
)
from engine.store.redelivery import RedeliveryQueries
from engine.store.retention import RetentionQueries
from engine.store.runs import RunQueries
from engine.store.tables import DeliveryStatus, deliveries
from engine.store.throttle_slots import ThrottleSlotQueries

__all__ = [
    "ActionRun",
    "Claim",
    "Ledger",
    "NewDelivery",
    "Reopened",
    "RuleOutcomeRow",
    "RunEnd",
    "Store",
    "StoredDelivery",
]


class Store(
    IntakeQueries,
    RunQueries,
    DeliveryLogQueries,
    RedeliveryQueries,
    PendingQueries,
    ThrottleSlotQueries,
    RetentionQueries,
):
    """Queries over one database."""

    async def claim(self, delivery_id: str, now: datetime, due_at: datetime) -> Claim | None:
        """Claim one delivery for a run: see `claim_many`."""
        return (await self.claim_many([delivery_id], now, due_at)).get(delivery_id)

    async def finish_run(
        self,
        delivery_id: str,
        status: DeliveryStatus,
        now: datetime,
        due_at: datetime | None,
        error: str | None,
        *,
        outcomes: Sequence[tuple[str, str, str]] | None = None,
        runs: Sequence[ActionRun] = (),
        first_run: bool = False,
        token: int | None = None,
    ) -> bool:
        """Record where a run left one delivery: see `RunEnd` and `finish_runs`.

        `token` None stands for the current claim, whatever it is: for tools and tests that
        set a delivery's state; a worker's run always gives the token of its own claim.
        """
        if token is None:
            stored = await self.get(delivery_id)
            if stored is None:
                return False
            token = stored.runs
            if stored.status is not DeliveryStatus.PROCESSING:
                await self._mark_processing(delivery_id, token)
        end = RunEnd(delivery_id, status, now, due_at, error, outcomes, runs, first_run, token=token)
        return delivery_id in await self.finish_runs([end])

    async def _mark_processing(self, delivery_id: str, token: int) -> None:
        async with self._begin() as connection:
            await connection.execute(
                update(deliveries)
                .where(and_(deliveries.c.delivery_id == delivery_id, deliveries.c.runs == token))
                .values(status=DeliveryStatus.PROCESSING.value)
            )
