"""What the store hands in and out: deliveries, ledger rows, rule outcomes, a run's end."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from engine.store.tables import ActionStatus, DeliveryStatus


@dataclass(frozen=True, slots=True)
class NewDelivery:
    """A verified delivery, as the receiver hands it to the store."""

    delivery_id: str
    event: str
    headers: dict[str, str]
    body: bytes
    received_at: datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class StoredDelivery:
    delivery_id: str
    event: str
    status: DeliveryStatus
    headers: dict[str, str]
    body: bytes | None
    received_at: datetime
    updated_at: datetime
    due_at: datetime | None
    runs: int
    error: str | None
    unfinished_runs: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class ActionRun:
    """One row of the action ledger."""

    rule_id: str
    action_index: int
    type: str
    status: ActionStatus
    params: Any
    attempts: int
    last_error: str | None
    response_status: int | None
    next_attempt_at: datetime | None
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class RuleOutcomeRow:
    rule_id: str
    status: str
    reason: str
    recorded_at: datetime


Ledger = dict[tuple[str, int], ActionRun]


@dataclass(frozen=True, slots=True, kw_only=True)
class RunEnd:
    """Where a run left a delivery, as `finish_runs` records it.

    `due_at` is when to pick the delivery up again (a retry), `outcomes` replace its rule
    outcomes as (rule id, status, reason) when given (`first_run`: it has none yet), `runs`
    are ledger rows not saved yet. `token` is the run's claim (the `runs` its claim set);
    `raised` an event the end raises (a failed delivery's `stockaj_rules.delivery_failed`),
    stored with it and due at once.
    """

    delivery_id: str
    status: DeliveryStatus
    now: datetime
    due_at: datetime | None
    error: str | None
    outcomes: Sequence[tuple[str, str, str]] | None = None
    runs: Sequence[ActionRun] = ()
    first_run: bool = False
    token: int
    raised: NewDelivery | None = None


class Reopened(StrEnum):
    """What `Store.reopen` did."""

    REOPENED = "reopened"
    UNKNOWN = "unknown"  # no such delivery
    RUNNING = "running"  # a run holds it now: left alone


@dataclass(frozen=True, slots=True)
class ClaimedDelivery:
    """A delivery claimed for one run, as the claim left it, with its action ledger."""

    delivery: StoredDelivery
    ledger: Ledger


def stored_delivery(row: Any) -> StoredDelivery:
    """A `deliveries` row as a record."""
    return StoredDelivery(
        delivery_id=row.delivery_id,
        event=row.event,
        status=DeliveryStatus(row.status),
        headers=dict(row.headers),
        body=row.body,
        received_at=row.received_at,
        updated_at=row.updated_at,
        due_at=row.due_at,
        runs=row.runs,
        error=row.error,
        unfinished_runs=row.unfinished_runs,
    )


def action_run(row: Any) -> ActionRun:
    """An `action_runs` row as a record."""
    return ActionRun(
        rule_id=row.rule_id,
        action_index=row.action_index,
        type=row.type,
        status=ActionStatus(row.status),
        params=row.params,
        attempts=row.attempts,
        last_error=row.last_error,
        response_status=row.response_status,
        next_attempt_at=row.next_attempt_at,
        updated_at=row.updated_at,
    )
