"""The intake's write, and the duplicate decision: a delivery id stored before is a duplicate.

A delivery is written before Stockaj gets its 2xx (engine/pipeline/intake.py batches
the receiver's requests). The primary key on the delivery id decides what is new,
across any number of receivers: a row that exists already is not written again,
and its id is not among those `add_deliveries` returns. The hottest write of the
engine has a statement of its own on each database: an INSERT over arrays on
PostgreSQL (engine/store/postgres_batches.py), a multi-row INSERT on SQLite.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from engine.store.connections import StoreConnections, converter
from engine.store.postgres_batches import INSERT_DELIVERIES
from engine.store.records import NewDelivery
from engine.store.tables import DeliveryStatus, deliveries


class IntakeQueries(StoreConnections):
    def __init__(self, engine: AsyncEngine) -> None:
        super().__init__(engine)
        # Each column's own conversion (UTC datetimes, JSON, bytes), for the intake's raw insert.
        self._delivery_converters = {
            name: converter(deliveries.c[name].type, engine.dialect)
            for name in ("headers", "body", "received_at", "due_at")
        }

    async def add_deliveries(self, batch: Sequence[NewDelivery], due_at: datetime) -> set[str]:
        """Store a batch in one transaction; returns the ids that were new (the rest are duplicates).

        A batch holding an id twice stores its first copy. Rows go in in id order, so that
        concurrent batches sharing ids (redeliveries landing on two receivers) take their row
        locks in the same order and cannot deadlock on PostgreSQL.
        """
        unique: dict[str, NewDelivery] = {}
        for item in batch:
            unique.setdefault(item.delivery_id, item)
        if not unique:
            return set()
        items = [item for _, item in sorted(unique.items())]
        if self.engine.dialect.name == "postgresql":
            return await self._add_deliveries_unnest(items, due_at)
        return await self._add_deliveries_values(items, due_at)

    async def _add_deliveries_values(self, items: Sequence[NewDelivery], due_at: datetime) -> set[str]:
        """SQLite: the batch as one multi-row INSERT, its parameters converted by the columns' own types.

        The same rows SQLAlchemy's executemany would write, without its per-row work (the
        receiver's cost per delivery on SQLite was mostly that).
        """
        convert = self._delivery_converters
        due = convert["due_at"](due_at)
        status = DeliveryStatus.RECEIVED.value
        parameters: list[Any] = []
        for item in items:
            received = convert["received_at"](item.received_at)
            parameters += [
                item.delivery_id,
                item.event,
                status,
                convert["headers"](item.headers),
                convert["body"](item.body),
                received,
                received,
                due,
            ]
        rows = ", ".join(["(?, ?, ?, ?, ?, ?, ?, ?, 0)"] * len(items))
        statement = (
            "INSERT INTO deliveries (delivery_id, event, status, headers, body, received_at, updated_at, "
            f"due_at, runs) VALUES {rows} ON CONFLICT (delivery_id) DO NOTHING RETURNING delivery_id"
        )
        if self._intake_writer is not None:
            async with self._turn(urgent=True):
                return set(await self._intake_writer.insert_returning(statement, parameters))
        async with self._begin(urgent=True) as connection:
            result = await connection.exec_driver_sql(statement, tuple(parameters))
            return {row[0] for row in result}

    async def _add_deliveries_unnest(self, items: Sequence[NewDelivery], due_at: datetime) -> set[str]:
        """PostgreSQL: the batch as one INSERT over arrays, whatever its size.

        It costs one statement per batch instead of per-row parameter processing.
        """
        async with self._autocommit(urgent=True) as connection:
            result = await connection.execute(
                INSERT_DELIVERIES,
                {
                    "ids": [item.delivery_id for item in items],
                    "events": [item.event for item in items],
                    "headers": [json.dumps(item.headers) for item in items],
                    "bodies": [item.body for item in items],
                    "received": [item.received_at for item in items],
                    "status": DeliveryStatus.RECEIVED.value,
                    "due_at": due_at,
                },
            )
            return {row.delivery_id for row in result}
