"""The database schema: deliveries, rule outcomes, the action ledger, throttle slots.

SQLAlchemy Core tables, the same on SQLite and PostgreSQL. Alembic migrations
in `engine/store/migrations/` create them; a test checks the two agree.

- `deliveries`: every delivery Stockaj sent, stored before it is acknowledged.
  The primary key is the delivery id, so dedupe holds across any number of
  receivers. `due_at` is when the sweeper should enqueue it again if it is
  still `received` or `processing` (a lost job, a dead worker, a retry wait).
  `runs` counts the claims of the delivery, and its value is the current claim's
  token (engine/pipeline/claim_keeper.py); `unfinished_runs` counts the claims since the last
  progress that never reached a finish (runs that crashed), so that a delivery
  whose processing keeps dying is failed instead of run again for ever.
- `rule_outcomes`: per delivery and rule, fired or not, and why.
- `action_runs`: the ledger, per (delivery, rule, action index): an action
  whose status is `succeeded` never runs again for that delivery.
- `throttle_slots`: per rule and rendered key, when it last fired and for which
  delivery (a delivery processed again keeps its own slot).
- `signature_failures`, `process_heartbeats`: what `stockaj-rules doctor` reads of the
  running processes (refused signatures by minute and reason; who is alive).
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    Column,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    text,
)


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes on every database (SQLite keeps no time zone: it stores UTC)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.utcoffset() is None:
            raise ValueError(f"naive datetime {value.isoformat()}: the store takes aware datetimes (UTC)")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        moment: datetime = value
        return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


class LogText(TypeDecorator[str]):
    """Text that PostgreSQL accepts from any payload.

    A JSON string may hold U+0000, so a reason quoting a payload value or an error
    quoting a response can too; PostgreSQL refuses NUL in text. It becomes U+FFFD
    (the replacement character) on every database, so both keep the same log.
    """

    impl = Text
    cache_ok = True

    def process_bind_param(self, value: str | None, dialect: Dialect) -> str | None:
        return value.replace("\x00", "\ufffd") if value is not None else None


metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

ID_LENGTH = 200
RULE_ID_LENGTH = 120
THROTTLE_KEY_LENGTH = 500


class DeliveryStatus(StrEnum):
    RECEIVED = "received"
    PROCESSING = "processing"
    DONE = "done"
    FAILED = "failed"
    NO_MATCH = "no_match"


PENDING_STATUSES = (DeliveryStatus.RECEIVED, DeliveryStatus.PROCESSING)


class ActionStatus(StrEnum):
    PENDING = "pending"  # waiting for its next attempt
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"  # an earlier action of the same rule failed


deliveries = Table(
    "deliveries",
    metadata,
    Column("delivery_id", String(ID_LENGTH), primary_key=True),
    Column("event", String(ID_LENGTH), nullable=False),
    Column("status", String(20), nullable=False),
    Column("headers", JSON, nullable=False),
    Column("body", LargeBinary, nullable=True),  # NULL once purged by retention
    Column("received_at", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
    Column("due_at", UTCDateTime(), nullable=True),
    Column("runs", Integer, nullable=False, default=0),
    Column("error", LogText, nullable=True),
    Column("unfinished_runs", Integer, nullable=False, default=0, server_default=text("0")),
    Index(None, "status", "due_at"),
    Index(None, "received_at"),
)

rule_outcomes = Table(
    "rule_outcomes",
    metadata,
    Column(
        "delivery_id",
        String(ID_LENGTH),
        ForeignKey("deliveries.delivery_id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("rule_id", String(RULE_ID_LENGTH), primary_key=True),
    Column("status", String(30), nullable=False),
    Column("reason", LogText, nullable=False),
    Column("recorded_at", UTCDateTime(), nullable=False),
)

action_runs = Table(
    "action_runs",
    metadata,
    Column(
        "delivery_id",
        String(ID_LENGTH),
        ForeignKey("deliveries.delivery_id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("rule_id", String(RULE_ID_LENGTH), primary_key=True),
    Column("action_index", Integer, primary_key=True, autoincrement=False),
    Column("type", String(60), nullable=False),
    Column("status", String(20), nullable=False),
    Column("params", JSON, nullable=True),  # rendered, secrets masked
    Column("attempts", Integer, nullable=False, default=0),
    Column("last_error", LogText, nullable=True),
    Column("response_status", Integer, nullable=True),
    Column("next_attempt_at", UTCDateTime(), nullable=True),
    Column("updated_at", UTCDateTime(), nullable=False),
)

throttle_slots = Table(
    "throttle_slots",
    metadata,
    Column("rule_id", String(RULE_ID_LENGTH), primary_key=True),
    Column("key", String(THROTTLE_KEY_LENGTH), primary_key=True),
    Column("delivery_id", String(ID_LENGTH), nullable=False),
    Column("fired_at", UTCDateTime(), nullable=False),
)

# What running processes leave for `stockaj-rules doctor` (engine/pipeline/health_records.py):
# refused signatures counted per minute and reason (engine/signature_diagnosis.py), and a
# heartbeat per `serve` and `worker` process.
signature_failures = Table(
    "signature_failures",
    metadata,
    Column("minute", UTCDateTime(), primary_key=True),
    Column("reason", String(40), primary_key=True),
    Column("count", Integer, nullable=False),
)

process_heartbeats = Table(
    "process_heartbeats",
    metadata,
    Column("process_id", String(200), primary_key=True),
    Column("role", String(20), nullable=False),
    Column("started_at", UTCDateTime(), nullable=False),
    Column("seen_at", UTCDateTime(), nullable=False),
)
