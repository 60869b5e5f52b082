"""A dry run: what each fixture's delivery does to the rules, with nothing sent.

Shared by `stockaj-rules test`, `replay`, `test --update` and `test --coverage`. Every
action of a rule that fires is rendered and validated, and nothing leaves the process.
Throttle state lives in memory and is shared by the fixtures of one file, in the order
they are written, so a file can show a throttle holding back its second delivery; each
file starts afresh. Checking what a fixture expects is engine.language.expectations.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from engine.language.fixtures import Fixture, FixtureFile
from engine.language.matching import Matcher, RuleOutcome, RuleStatus
from engine.language.rules import RuleSet
from engine.language.throttle import InMemoryThrottleState
from engine.secrets import Secrets

# Why a rule did not fire, in the words a fixture's `because` uses (spec section 13).
BECAUSE: Mapping[RuleStatus, str] = {
    RuleStatus.EVENT_NOT_MATCHED: "event",
    RuleStatus.DISABLED: "disabled",
    RuleStatus.THROTTLED: "throttled",
    RuleStatus.CONDITION_FALSE: "condition",
    RuleStatus.FIELD_MISSING: "missing",
}


@dataclass(frozen=True, slots=True)
class FixtureRun:
    """One fixture's delivery and every loaded rule's outcome for it, in rule order."""

    fixture: Fixture
    outcomes: list[RuleOutcome]


async def dry_run(rules: RuleSet, files: list[FixtureFile], secrets: Mapping[str, str]) -> list[FixtureRun]:
    """Match every fixture against `rules`; unset secrets read as `***`.

    `now` is the payload's timestamp when it has one, so throttle windows and
    `{{ now }}` behave as they did when the delivery was recorded.
    """
    runs = []
    dry_secrets = Secrets(secrets, placeholders=True)
    for fixture_file in files:
        matcher = Matcher(rules, InMemoryThrottleState(), dry_secrets)
        for fixture in fixture_file.fixtures:
            outcomes = await matcher.match(fixture.delivery, recorded_at(fixture.delivery.payload))
            runs.append(FixtureRun(fixture, outcomes))
    return runs


def recorded_at(payload: Mapping[str, Any]) -> datetime | None:
    """The payload's ISO 8601 timestamp as an aware datetime, or None."""
    stamp = payload.get("timestamp")
    if not isinstance(stamp, str):
        return None
    try:
        when = datetime.fromisoformat(stamp)
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def because_of(outcome: RuleOutcome) -> str | None:
    """The `because` word for a rule that did not fire by design; None when it fired or failed."""
    return BECAUSE.get(outcome.status)


def errors_of(outcome: RuleOutcome) -> list[str]:
    """What went wrong in this rule: its evaluation, or each action that could not be prepared."""
    if outcome.status is RuleStatus.ERROR:
        return [outcome.reason]
    return [action.error for action in outcome.actions if action.error]
