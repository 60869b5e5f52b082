"""The console's reads of the delivery log: filtered pages, the last day per minute, rule traffic.

Pages are newest first by keyset on (received_at, delivery_id): the next page starts after
the last row shown, so paging costs the same on the first page as on the thousandth and a
delivery arriving meanwhile never shifts a row from one page to the next. Each read is
one short statement on a connection of its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import and_, exists, func, literal_column, or_, select

from engine.store import Store
from engine.store.tables import ActionStatus, action_runs, deliveries, rule_outcomes

FIRED = "fired"
MAX_PAGE = 200


@dataclass(frozen=True, slots=True)
class LogFilter:
    """What the delivery log shows: every field optional; `delivery_id` matches a prefix."""

    status: str | None = None
    event: str | None = None
    rule: str | None = None  # deliveries this rule fired for
    delivery_id: str | None = None


@dataclass(frozen=True, slots=True)
class LogRow:
    delivery_id: str
    event: str
    status: str
    received_at: datetime
    updated_at: datetime
    runs: int
    error: str | None
    fired: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class LogPage:
    rows: list[LogRow]
    next_key: tuple[datetime, str] | None  # where the next (older) page starts, if there is one


@dataclass(slots=True)
class RuleTraffic:
    """What the log says of one rule: verdicts by status, failed actions, when it last fired."""

    by_status: dict[str, int] = field(default_factory=dict)
    failed_actions: int = 0
    last_fired: datetime | None = None

    @property
    def fired(self) -> int:
        return self.by_status.get(FIRED, 0)

    @property
    def errors(self) -> int:
        return self.by_status.get("error", 0)


def _like_prefix(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped + "%"


def _where(chosen: LogFilter) -> list[Any]:
    where: list[Any] = []
    if chosen.status:
        where.append(deliveries.c.status == chosen.status)
    if chosen.event:
        where.append(deliveries.c.event == chosen.event)
    if chosen.delivery_id:
        where.append(deliveries.c.delivery_id.like(_like_prefix(chosen.delivery_id), escape="\\"))
    if chosen.rule:
        where.append(
            exists().where(
                and_(
                    rule_outcomes.c.delivery_id == deliveries.c.delivery_id,
                    rule_outcomes.c.rule_id == chosen.rule,
                    rule_outcomes.c.status == FIRED,
                )
            )
        )
    return where


async def log_page(
    store: Store, chosen: LogFilter, before: tuple[datetime, str] | None = None, size: int = 50
) -> LogPage:
    """Up to `size` deliveries, newest first, older than `before` when given."""
    size = max(1, min(size, MAX_PAGE))
    where = _where(chosen)
    if before is not None:
        moment, delivery_id = before
        where.append(
            or_(
                deliveries.c.received_at < moment,
                and_(deliveries.c.received_at == moment, deliveries.c.delivery_id < delivery_id),
            )
        )
    query = (
        select(
            deliveries.c.delivery_id,
            deliveries.c.event,
            deliveries.c.status,
            deliveries.c.received_at,
            deliveries.c.updated_at,
            deliveries.c.runs,
            deliveries.c.error,
        )
        .where(*where)
        .order_by(deliveries.c.received_at.desc(), deliveries.c.delivery_id.desc())
        .limit(size + 1)
    )
    async with store._connect() as connection:
        rows = (await connection.execute(query)).all()
        shown = rows[:size]
        fired: dict[str, list[str]] = {}
        if shown:
            outcomes = await connection.execute(
                select(rule_outcomes.c.delivery_id, rule_outcomes.c.rule_id)
                .where(
                    and_(
                        rule_outcomes.c.delivery_id.in_([row.delivery_id for row in shown]),
                        rule_outcomes.c.status == FIRED,
                    )
                )
                .order_by(rule_outcomes.c.rule_id)
            )
            for delivery_id, rule_id in outcomes:
                fired.setdefault(delivery_id, []).append(rule_id)
    page = [
        LogRow(
            row.delivery_id,
            row.event,
            row.status,
            row.received_at,
            row.updated_at,
            row.runs,
            row.error,
            tuple(fired.get(row.delivery_id, ())),
        )
        for row in shown
    ]
    more = len(rows) > size
    return LogPage(page, (shown[-1].received_at, shown[-1].delivery_id) if more else None)


async def per_minute(store: Store, since: datetime) -> list[tuple[str, str, int]]:
    """Deliveries received since `since`, counted per minute and status: ("YYYY-MM-DD HH:MM", status, n)."""
    column = deliveries.c.received_at
    if store.engine.dialect.name == "sqlite":
        minute: Any = func.strftime(literal_column("'%Y-%m-%d %H:%M'"), column)
    else:
        minute = func.to_char(func.timezone("UTC", column), literal_column("'YYYY-MM-DD HH24:MI'"))
    bucket = minute.label("minute")
    query = (
        select(bucket, deliveries.c.status, func.count())
        .where(column >= since)
        .group_by(bucket, deliveries.c.status)
    )
    async with store._connect() as connection:
        return [(str(m), str(s), int(n)) for m, s, n in await connection.execute(query)]


async def rule_traffic(store: Store) -> dict[str, RuleTraffic]:
    """Per rule id in the log: verdicts by status, failed actions, when it last fired."""
    traffic: dict[str, RuleTraffic] = {}
    verdicts = select(
        rule_outcomes.c.rule_id,
        rule_outcomes.c.status,
        func.count(),
        func.max(rule_outcomes.c.recorded_at),
    ).group_by(rule_outcomes.c.rule_id, rule_outcomes.c.status)
    failures = (
        select(action_runs.c.rule_id, func.count())
        .where(action_runs.c.status == ActionStatus.FAILED.value)
        .group_by(action_runs.c.rule_id)
    )
    async with store._connect() as connection:
        for rule_id, status, count, last in await connection.execute(verdicts):
            seen = traffic.setdefault(rule_id, RuleTraffic())
            seen.by_status[status] = int(count)
            if status == FIRED:
                seen.last_fired = _aware(last)
        for rule_id, count in await connection.execute(failures):
            traffic.setdefault(rule_id, RuleTraffic()).failed_actions = int(count)
    return traffic


def _aware(moment: Any) -> datetime | None:
    """max() bypasses the column's type on SQLite: a naive UTC datetime, or its text."""
    if moment is None:
        return None
    found: datetime = datetime.fromisoformat(moment) if isinstance(moment, str) else moment
    return found if found.tzinfo else found.replace(tzinfo=UTC)
