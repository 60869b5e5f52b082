"""Replay fixtures against rules, dry, and check their expectations.

Shared by `stockaj-rules test`, `stockaj-rules replay` and the test suite. A
dry run renders every action but sends nothing; throttle state lives in
memory and is shared by the fixtures of one file, so a file can show a
throttle holding back its second delivery.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from engine.excerpt import value_text
from engine.language.fixtures import ExpectedAction, Fixture, FixtureFile
from engine.language.matching import Matcher, PlannedAction, RuleOutcome, RuleStatus
from engine.language.rules import RuleSet
from engine.language.throttle import InMemoryThrottleState
from engine.language.validation import suggest
from engine.secrets import Masker, Secrets


@dataclass(frozen=True, slots=True)
class Failure:
    """An expectation that did not hold; `expected` and `actual` are shown side by side."""

    message: str
    expected: str | None = None
    actual: str | None = None


@dataclass(slots=True)
class FixtureResult:
    fixture: Fixture
    outcomes: list[RuleOutcome]
    failures: list[Failure] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures


async def replay(rules: RuleSet, files: list[FixtureFile], secrets: Mapping[str, str]) -> list[FixtureResult]:
    """Replay every fixture dry and check its expectations.

    `now` is the payload's timestamp when it has one, so throttle windows and
    `{{ now }}` behave as they did when the delivery was recorded.
    """
    results = []
    dry_secrets = Secrets(secrets, placeholders=True)
    for fixture_file in files:
        matcher = Matcher(rules, InMemoryThrottleState(), dry_secrets)
        for fixture in fixture_file.fixtures:
            outcomes = await matcher.match(fixture.delivery, recorded_at(fixture.delivery.payload))
            results.append(FixtureResult(fixture, outcomes, check_expectations(fixture, outcomes, rules)))
    return results


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


def check_expectations(fixture: Fixture, outcomes: list[RuleOutcome], rules: RuleSet) -> list[Failure]:
    by_id = {outcome.rule.id: outcome for outcome in outcomes}
    failures = [
        Failure(f"{outcome.rule.id}: {action.error}")
        for outcome in outcomes
        if outcome.fired
        for action in outcome.actions
        if action.error
    ]
    expect = fixture.expect
    excused = set(expect.not_fired) if expect else set()
    failures += [
        Failure(f"{outcome.rule.id}: {outcome.reason}")
        for outcome in outcomes
        if outcome.status is RuleStatus.ERROR and outcome.rule.id not in excused
    ]
    if expect is None:
        return failures
    for rule_id in dict.fromkeys([*expect.fired, *expect.not_fired, *(a.rule for a in expect.actions)]):
        if rule_id not in by_id:
            failures.append(Failure(f"no rule has the id '{rule_id}' ({suggest(rule_id, rules.ids())})"))
    for rule_id in expect.fired:
        outcome = by_id.get(rule_id)
        if outcome is not None and not outcome.fired:
            failures.append(Failure(f"{rule_id} should fire", "fired", f"did not fire: {outcome.reason}"))
    for rule_id in expect.not_fired:
        outcome = by_id.get(rule_id)
        if outcome is not None and outcome.fired:
            failures.append(Failure(f"{rule_id} should not fire", "not fired", f"fired: {outcome.reason}"))
    for expected in expect.actions:
        outcome = by_id.get(expected.rule)
        if outcome is not None:
            failure = _check_action(expected, outcome)
            if failure is not None:
                failures.append(failure)
    return failures


def _check_action(expected: ExpectedAction, outcome: RuleOutcome) -> Failure | None:
    what = f"{expected.rule}: a {expected.type or 'any'} action with these params"
    if not outcome.fired:
        return Failure(what, _show(expected.params), f"the rule did not fire: {outcome.reason}")
    candidates = [a for a in outcome.actions if expected.type in (None, a.type)]
    if not candidates:
        types = ", ".join(a.type for a in outcome.actions)
        return Failure(what, f"type {expected.type}", f"the rule's actions are: {types}")
    if any(a.params is not None and contains(a.params, expected.params) for a in candidates):
        return None
    return Failure(what, _show(expected.params), " | ".join(_show_action(a) for a in candidates))


def contains(actual: Any, expected: Any) -> bool:
    """Subset match: every expected key present with an equal value of the same JSON type."""
    if isinstance(expected, dict):
        return isinstance(actual, dict) and all(
            key in actual and contains(actual[key], value) for key, value in expected.items()
        )
    if isinstance(expected, list):
        return (
            isinstance(actual, list)
            and len(actual) == len(expected)
            and all(contains(a, e) for a, e in zip(actual, expected, strict=True))
        )
    return _json_type(actual) == _json_type(expected) and actual == expected


def _json_type(value: Any) -> str:
    """JSON's types: 7 and 7.0 are the same number; true is not 1; "7" is not 7."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    return type(value).__name__


def _show(params: Mapping[str, Any]) -> str:
    return ", ".join(f"{key}: {_value(value)}" for key, value in params.items())


def _show_action(action: PlannedAction) -> str:
    if action.error:
        return f"{action.type} failed to render: {action.error}"
    return _show(action.params or {})


def _value(value: Any) -> str:
    return value_text(value, 2_000)  # a rendered param can be long: show its start and its size


def masked_results(results: list[FixtureResult], masker: Masker) -> list[dict[str, Any]]:
    """The `replay --json` document's results, every secret value masked."""
    out = []
    for result in results:
        fixture = result.fixture
        out.append(
            {
                "fixture": fixture.name,
                "file": fixture.file,
                "event": fixture.delivery.event,
                "passed": result.passed,
                "rules": [
                    {
                        "id": outcome.rule.id,
                        "fired": outcome.fired,
                        "status": outcome.status.value,
                        "reason": masker.mask(outcome.reason),
                        "actions": [
                            {
                                "type": a.type,
                                "params": masker.mask(a.params),
                                "error": masker.mask(a.error),
                            }
                            for a in outcome.actions
                        ],
                    }
                    for outcome in result.outcomes
                ],
            }
        )
    return out
