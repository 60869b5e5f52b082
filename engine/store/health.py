"""What `stockaj-rules doctor` reads: heartbeats, refused signatures, what was received.

Running processes write two small tables (engine/pipeline/health_records.py): a heartbeat per
`serve` and `worker` process, and refused signatures counted per minute and reason. The
rest is read from the deliveries themselves. Deliveries the engine raised itself
(`stockaj_rules.*` events) are not what Stockaj sent and are left out of "received".
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, func, select

from engine.store.connections import StoreConnections
from engine.store.tables import deliveries, process_heartbeats, signature_failures

INTERNAL_EVENT_PREFIX = "stockaj_rules."
HEARTBEATS_KEPT = timedelta(days=1)


@dataclass(frozen=True, slots=True, kw_only=True)
class Heartbeat:
    process_id: str
    role: str  # "serve" or "worker"
    started_at: datetime
    seen_at: datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class LastDelivery:
    delivery_id: str
    event: str
    received_at: datetime


class HealthRecords(StoreConnections):
    """The Store's queries for health."""

    async def record_signature_failures(self, counts: Mapping[tuple[datetime, str], int]) -> None:
        """Add `counts` ((minute, reason) -> refusals) to what is stored."""
        if not counts:
            return
        rows = [{"minute": minute, "reason": reason, "count": n} for (minute, reason), n in counts.items()]
        statement = self._insert(signature_failures)
        statement = statement.on_conflict_do_update(
            index_elements=["minute", "reason"],
            set_={"count": signature_failures.c.count + statement.excluded["count"]},
        )
        async with self._begin() as connection:
            await connection.execute(statement, rows)

    async def signature_failures_since(self, since: datetime) -> dict[str, int]:
        """Refused signatures by reason since `since`, most frequent first."""
        total = func.sum(signature_failures.c.count)
        query = (
            select(signature_failures.c.reason, total)
            .where(signature_failures.c.minute >= since)
            .group_by(signature_failures.c.reason)
            .order_by(total.desc())
        )
        async with self._connect() as connection:
            return {reason: int(n) for reason, n in (await connection.execute(query)).all()}

    async def beat(self, *, process_id: str, role: str, started_at: datetime, now: datetime) -> None:
        """Say this process is alive; forget processes not seen for a day."""
        statement = self._insert(process_heartbeats)
        statement = statement.on_conflict_do_update(
            index_elements=["process_id"], set_={"seen_at": statement.excluded["seen_at"]}
        )
        row = {"process_id": process_id, "role": role, "started_at": started_at, "seen_at": now}
        async with self._begin() as connection:
            await connection.execute(statement, [row])
            await connection.execute(
                delete(process_heartbeats).where(process_heartbeats.c.seen_at < now - HEARTBEATS_KEPT)
            )
            await connection.execute(
                delete(signature_failures).where(signature_failures.c.minute < now - HEARTBEATS_KEPT)
            )

    async def heartbeats(self) -> list[Heartbeat]:
        """Every process seen in the last day, the most recently seen first."""
        query = select(process_heartbeats).order_by(process_heartbeats.c.seen_at.desc())
        async with self._connect() as connection:
            rows = (await connection.execute(query)).all()
        return [
            Heartbeat(process_id=r.process_id, role=r.role, started_at=r.started_at, seen_at=r.seen_at)
            for r in rows
        ]

    async def last_delivery(self) -> LastDelivery | None:
        """The last delivery Stockaj sent (by the time it was received)."""
        query = (
            select(deliveries.c.delivery_id, deliveries.c.event, deliveries.c.received_at)
            .where(~deliveries.c.event.startswith(INTERNAL_EVENT_PREFIX, autoescape=True))
            .order_by(deliveries.c.received_at.desc())
            .limit(1)
        )
        async with self._connect() as connection:
            row = (await connection.execute(query)).first()
        if row is None:
            return None
        return LastDelivery(delivery_id=row.delivery_id, event=row.event, received_at=row.received_at)

    async def received_per_event(self, since: datetime) -> dict[str, int]:
        """Deliveries Stockaj sent since `since`, by event, most frequent first."""
        count = func.count()
        query = (
            select(deliveries.c.event, count)
            .where(deliveries.c.received_at >= since)
            .where(~deliveries.c.event.startswith(INTERNAL_EVENT_PREFIX, autoescape=True))
            .group_by(deliveries.c.event)
            .order_by(count.desc())
        )
        async with self._connect() as connection:
            return {event: int(n) for event, n in (await connection.execute(query)).all()}

    async def count_with_status(self, status: str, since: datetime | None = None) -> int:
        """Deliveries in `status`, the last change since `since` when given."""
        query = select(func.count()).select_from(deliveries).where(deliveries.c.status == status)
        if since is not None:
            query = query.where(deliveries.c.updated_at >= since)
        async with self._connect() as connection:
            return int((await connection.execute(query)).scalar_one())
