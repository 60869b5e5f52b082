"""The engine's own event `stockaj_rules.delivery_failed`: failures reach people through rules.

When a delivery ends `failed`, its run raises this event (SPEC section 7): a new
delivery, stored in the same transaction as the failure and processed like any
other, so rules alert the team the way they do anything else
(`on: stockaj_rules.delivery_failed` and a chat message; rules/ holds one to start from).
Its id is derived from the failed delivery and the run that failed it, so
recording the same end twice cannot raise it twice, while a delivery redelivered
and failing again raises a new one. The failure of this event's own actions raises
nothing further.

Its `data` (docs/rules.md, "When a delivery fails"): the failed delivery's id and
event, why it failed, when, the failed rules and actions with their last errors
and attempts (at most MAX_LISTED of each, texts cut at MAX_TEXT characters), and
its address in the console.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import quote

from engine.signing import DELIVERY_HEADER, EVENT_HEADER
from engine.store import ActionRun, NewDelivery, StoredDelivery
from engine.store.tables import ID_LENGTH

DELIVERY_FAILED_EVENT = "stockaj_rules.delivery_failed"
MAX_LISTED = 20
MAX_TEXT = 500


@dataclass(frozen=True, slots=True)
class Failures:
    """What failed in a delivery: rules that could not be evaluated, and failed actions."""

    rules: Sequence[tuple[str, str]] = ()  # (rule id, why)
    actions: Sequence[tuple[str, ActionRun]] = ()  # (rule id, its failed ledger row)


def raises_alert(event: str) -> bool:
    """Whether a failed delivery of `event` raises `stockaj_rules.delivery_failed` (not itself)."""
    return event != DELIVERY_FAILED_EVENT


def alert_id(delivery_id: str, run: int) -> str:
    """The id of the event raised when run `run` (the claim's token) failed `delivery_id`."""
    alert = f"{DELIVERY_FAILED_EVENT}:{delivery_id}:{run}"
    if len(alert) <= ID_LENGTH:
        return alert
    digest = hashlib.sha256(delivery_id.encode()).hexdigest()[:40]
    return f"{DELIVERY_FAILED_EVENT}:sha256-{digest}:{run}"


def console_address(console_url: str, delivery_id: str) -> str:
    return f"{console_url.rstrip('/')}/deliveries/{quote(delivery_id, safe='')}"


def delivery_failed(
    failed: StoredDelivery,
    run: int,
    error: str,
    failures: Failures,
    console_url: str,
    now: datetime,
) -> NewDelivery:
    """The `stockaj_rules.delivery_failed` delivery raised by run `run` failing `failed`."""
    failed_rules = {rule_id: why for rule_id, why in failures.rules}
    for rule_id, action in failures.actions:  # a rule's first failed action says why it failed
        why = f"actions[{action.action_index}] ({action.type}): {action.last_error}"
        failed_rules.setdefault(rule_id, why)
    data = {
        "delivery_id": failed.delivery_id,
        "event": failed.event,
        "error": _cut(error),
        "received_at": failed.received_at.isoformat(),
        "failed_at": now.isoformat(),
        "console_url": console_address(console_url, failed.delivery_id),
        "failed_rules": [
            {"rule": rule_id, "error": _cut(why)} for rule_id, why in list(failed_rules.items())[:MAX_LISTED]
        ],
        "failed_actions": [_action(rule_id, run) for rule_id, run in failures.actions[:MAX_LISTED]],
    }
    delivery_id = alert_id(failed.delivery_id, run)
    body = {"event": DELIVERY_FAILED_EVENT, "timestamp": now.isoformat(), "data": data}
    headers = {EVENT_HEADER: DELIVERY_FAILED_EVENT, DELIVERY_HEADER: delivery_id}
    return NewDelivery(delivery_id, DELIVERY_FAILED_EVENT, headers, json.dumps(body).encode(), now)


def _action(rule_id: str, run: ActionRun) -> dict[str, Any]:
    return {
        "rule": rule_id,
        "index": run.action_index,
        "type": run.type,
        "attempts": run.attempts,
        "last_error": _cut(run.last_error or ""),
        "response_status": run.response_status,
    }


def _cut(text: str) -> str:
    if len(text) <= MAX_TEXT:
        return text
    return f"{text[:MAX_TEXT]}… ({len(text)} characters)"
