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
- health.py: what `stockaj-rules doctor` reads (heartbeats, refused signatures, what arrived);
- connections.py: transactions, and SQLite's one connection (sqlite_connection_turns.py,
  sqlite_writer.py); tables.py: the schema; database.py: engines and migrations.
"""

from __future__ import annotations

from engine.store.delivery_log import DeliveryLogQueries
from engine.store.health import HealthRecords
from engine.store.intake import IntakeQueries
from engine.store.pending import PendingQueries
from engine.store.records import (
    ActionRun,
    ClaimedDelivery,
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
from engine.store.throttle_slots import ThrottleSlotQueries

__all__ = [
    "ActionRun",
    "ClaimedDelivery",
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
    HealthRecords,
):
    """Queries over one database."""
