"""Check what a fixture expects against what its dry run did (spec sections 8 and 13).

Expectations mean what they say:

- `not_fired` passes only for the designed reasons a rule does not fire (its event,
  disabled, throttled, its condition, a missing field). An error (a condition that cannot
  be evaluated, an action that cannot be prepared) fails the fixture whatever it expects,
  unless the fixture lists the rule under `errors`, which then must happen.
- `because` pins the reason. An unpinned `not_fired` that held for another reason than
  the rule's condition is a `Remark`, shown even when the fixture passes.
- `actions[].params` are compared with the params as they would be sent: the action's
  defaults applied (`method: POST` holds for an `http` action that relies on it), and
  secrets either as they are or masked (`***`), so a fixture never needs a secret value.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from engine.excerpt import value_text
from engine.language.dry_run import FixtureRun, because_of, dry_run, errors_of
from engine.language.fixtures import Expectations, ExpectedAction, Fixture, FixtureFile, NotFired
from engine.language.matching import PlannedAction, RuleOutcome, RuleStatus
from engine.language.rules import RuleSet
from engine.language.validation import suggest
from engine.secrets import Masker

ERROR_HINT = "fix the rule, or list it under errors if this fixture shows the error on purpose"


@dataclass(frozen=True, slots=True)
class Failure:
    """An expectation that did not hold; `expected` and `actual` are shown side by side."""

    message: str
    expected: str | None = None
    actual: str | None = None


@dataclass(frozen=True, slots=True)
class Remark:
    """A `not_fired` without `because` that held for another reason than the rule's condition."""

    rule_id: str
    because: str


@dataclass(slots=True)
class FixtureResult:
    fixture: Fixture
    outcomes: list[RuleOutcome]
    failures: list[Failure] = field(default_factory=list)
    remarks: list[Remark] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures


async def replay(rules: RuleSet, files: list[FixtureFile], secrets: Mapping[str, str]) -> list[FixtureResult]:
    """Dry-run every fixture and check its expectations."""
    masker = Masker(secrets.values())
    return [checked(run.fixture, run.outcomes, rules, masker) for run in await dry_run(rules, files, secrets)]


def checked(
    fixture: Fixture, outcomes: list[RuleOutcome], rules: RuleSet, masker: Masker | None = None
) -> FixtureResult:
    """The fixture's result: its failures and remarks for these outcomes."""
    masker = masker or Masker()
    failures = check_expectations(fixture, outcomes, rules, masker)
    return FixtureResult(fixture, outcomes, failures, remarks(fixture.expect, outcomes))


def check_expectations(
    fixture: Fixture, outcomes: list[RuleOutcome], rules: RuleSet, masker: Masker | None = None
) -> list[Failure]:
    by_id = {outcome.rule.id: outcome for outcome in outcomes}
    expect = fixture.expect or Expectations()
    failures = _errors(outcomes, expect)
    if fixture.expect is None:
        return failures
    mentioned = [
        *expect.fired,
        *(e.rule for e in expect.not_fired),
        *expect.errors,
        *(a.rule for a in expect.actions),
    ]
    for rule_id in dict.fromkeys(mentioned):
        if rule_id not in by_id:
            failures.append(Failure(f"no rule has the id '{rule_id}' ({suggest(rule_id, rules.ids())})"))
    for rule_id in expect.fired:
        outcome = by_id.get(rule_id)
        if outcome is not None and not outcome.fired:
            failures.append(Failure(f"{rule_id} should fire", "fired", f"did not fire: {outcome.reason}"))
    failures += [f for entry in expect.not_fired if (f := _check_not_fired(entry, by_id.get(entry.rule)))]
    failures += [f for rule_id in expect.errors if (f := _check_error(rule_id, by_id.get(rule_id)))]
    for expected in expect.actions:
        outcome = by_id.get(expected.rule)
        if outcome is not None:
            failure = _check_action(expected, outcome, masker or Masker())
            if failure is not None:
                failures.append(failure)
    return failures


def remarks(expect: Expectations | None, outcomes: list[RuleOutcome]) -> list[Remark]:
    """Each unpinned `not_fired` that held by its event, switch, throttle or a missing field."""
    if expect is None:
        return []
    by_id = {outcome.rule.id: outcome for outcome in outcomes}
    found = []
    for entry in expect.not_fired:
        outcome = by_id.get(entry.rule)
        because = because_of(outcome) if outcome is not None else None
        if entry.because is None and because not in (None, "condition"):
            found.append(Remark(entry.rule, str(because)))
    return found


def _errors(outcomes: list[RuleOutcome], expect: Expectations) -> list[Failure]:
    """A failure for each error of a rule the fixture does not list under `errors`."""
    not_fired = {entry.rule for entry in expect.not_fired}
    failures = []
    for outcome in outcomes:
        rule_id = outcome.rule.id
        if rule_id in expect.errors:
            continue
        for error in errors_of(outcome):
            if rule_id in not_fired and not outcome.fired:
                failures.append(
                    Failure(
                        f"{rule_id} did not fire because of an error, which not_fired does not accept",
                        f"not fired, for any reason but an error ({ERROR_HINT})",
                        f"error: {error}",
                    )
                )
            else:
                failures.append(Failure(f"{rule_id}: {error}"))
    return failures


def _check_not_fired(entry: NotFired, outcome: RuleOutcome | None) -> Failure | None:
    if outcome is None or outcome.status is RuleStatus.ERROR:
        return None  # an unknown id, or an error: both reported already
    if outcome.fired:
        return Failure(f"{entry.rule} should not fire", "not fired", f"fired: {outcome.reason}")
    because = because_of(outcome)
    if entry.because is not None and because != entry.because:
        return Failure(
            f"{entry.rule} should not fire because: {entry.because}",
            f"not fired because: {entry.because}",
            f"not fired because: {because}: {outcome.reason}",
        )
    return None


def _check_error(rule_id: str, outcome: RuleOutcome | None) -> Failure | None:
    if outcome is None or errors_of(outcome):
        return None
    actual = f"fired: {outcome.reason}" if outcome.fired else f"did not fire: {outcome.reason}"
    return Failure(f"{rule_id} should run into an error (it is listed under errors)", "an error", actual)


def _check_action(expected: ExpectedAction, outcome: RuleOutcome, masker: Masker) -> Failure | None:
    what = f"{expected.rule}: a {expected.type or 'any'} action with these params"
    if not outcome.fired:
        return Failure(what, _show(expected.params), f"the rule did not fire: {outcome.reason}")
    candidates = [a for a in outcome.actions if expected.type in (None, a.type)]
    if not candidates:
        types = ", ".join(a.type for a in outcome.actions)
        return Failure(what, f"type {expected.type}", f"the rule's actions are: {types}")
    if any(holds(expected.params, a, masker) for a in candidates):
        return None
    return Failure(
        what, _show(expected.params), " | ".join(_show_action(a, expected.params) for a in candidates)
    )


def holds(expected_params: Mapping[str, Any], action: PlannedAction, masker: Masker) -> bool:
    """The action was prepared with params that contain `expected_params`, defaults applied."""
    if action.params is None:
        return False
    sent = sent_params(action)
    return contains(sent, expected_params) or contains(masker.mask(sent), expected_params)


def sent_params(action: PlannedAction) -> dict[str, Any]:
    """The params as the action will send them: its own defaults applied (`method: POST`)."""
    if action.validated is None:
        return dict(action.params or {})
    sent: dict[str, Any] = action.validated.model_dump(mode="json", by_alias=True)
    return sent


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


def _show_action(action: PlannedAction, expected: Mapping[str, Any]) -> str:
    """The params written in the rule, then the defaults the expectation names: `method: "POST" (default)`."""
    if action.error:
        return f"{action.type} failed to render: {action.error}"
    shown = action.params or {}
    sent = sent_params(action)
    defaults = [
        f"{key}: {_value(sent[key])} (default)" for key in expected if key not in shown and key in sent
    ]
    return ", ".join(filter(None, [_show(shown), *defaults]))


def _value(value: Any) -> str:
    return value_text(value, 2_000)  # a rendered param can be long: show its start and its size


def masked_results(results: list[FixtureResult], masker: Masker) -> list[dict[str, Any]]:
    """The `replay --json` document's results, every secret value masked."""
    return [
        {
            "fixture": result.fixture.name,
            "file": result.fixture.file,
            "event": result.fixture.delivery.event,
            "passed": result.passed,
            "rules": [
                {
                    "id": outcome.rule.id,
                    "fired": outcome.fired,
                    "status": outcome.status.value,
                    "reason": masker.mask(outcome.reason),
                    "actions": [
                        {"type": a.type, "params": masker.mask(a.params), "error": masker.mask(a.error)}
                        for a in outcome.actions
                    ],
                }
                for outcome in result.outcomes
            ],
        }
        for result in results
    ]


__all__ = [
    "Failure",
    "FixtureResult",
    "FixtureRun",
    "Remark",
    "check_expectations",
    "checked",
    "contains",
    "holds",
    "masked_results",
    "remarks",
    "replay",
    "sent_params",
]
