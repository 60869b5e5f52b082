"""Store operations only tests need: set a delivery's state in one call, without a worker's run."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import and_, update

from engine.store import ActionRun, ClaimedDelivery, RunEnd, Store
from engine.store.tables import DeliveryStatus, deliveries


async def claim_one(
    store: Store, delivery_id: str, now: datetime, due_at: datetime
) -> ClaimedDelivery | None:
    """Claim one delivery for a run: see `Store.claim_many`."""
    return (await store.claim_many([delivery_id], now, due_at)).get(delivery_id)


async def finish_run(
    store: Store,
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
    """Record where a run left one delivery: see `RunEnd` and `Store.finish_runs`.

    `token` None stands for the current claim, whatever it is (the delivery is made
    `processing` under it first); a worker's run always gives the token of its own claim.
    """
    if token is None:
        stored = await store.get(delivery_id)
        if stored is None:
            return False
        token = stored.runs
        if stored.status is not DeliveryStatus.PROCESSING:
            await _mark_processing(store, delivery_id, token)
    end = RunEnd(
        delivery_id=delivery_id,
        status=status,
        now=now,
        due_at=due_at,
        error=error,
        outcomes=outcomes,
        runs=runs,
        first_run=first_run,
        token=token,
    )
    return delivery_id in await store.finish_runs([end])


async def save_action_run(store: Store, delivery_id: str, run: ActionRun) -> None:
    """Insert or update one ledger row, whoever holds the delivery."""
    async with store._begin() as connection:
        await store._save_action_runs(connection, [(delivery_id, run)])


async def _mark_processing(store: Store, delivery_id: str, token: int) -> None:
    async with store._begin() as connection:
        await connection.execute(
            update(deliveries)
            .where(and_(deliveries.c.delivery_id == delivery_id, deliveries.c.runs == token))
            .values(status=DeliveryStatus.PROCESSING.value)
        )
