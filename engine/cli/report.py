"""What `check`, `test` and `replay` print: readable by people who do not program.

Colour comes from click.style and is dropped by click.echo when the output is
not a terminal. Every value shown passes through the `Masker` first.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from typing import Any

import click

from engine.errors import SourceProblem
from engine.language.harness import FixtureResult
from engine.language.matching import PlannedAction, RuleOutcome, RuleStatus
from engine.secrets import Masker


def _green(text: str) -> str:
    return click.style(text, fg="green", bold=True)


def _red(text: str) -> str:
    return click.style(text, fg="red", bold=True)


def _yellow(text: str) -> str:
    return click.style(text, fg="yellow", bold=True)


def _dim(text: str) -> str:
    return click.style(text, dim=True)


def problems_text(problems: list[SourceProblem]) -> str:
    """One `file:line:col: rule-id: message` line per problem, the location in red."""
    lines = []
    for problem in problems:
        where = f"{problem.path}:{problem.line}:{problem.column}:"
        lines.append(f"{_red(where)}{str(problem).removeprefix(where)}")
    return "\n".join(lines)


def test_report(results: list[FixtureResult], masker: Masker, *, verbose: bool) -> Iterator[str]:
    """One block per fixture: PASS/FAIL, each failure expected against actual, each rule's reason."""
    for result in results:
        fixture = result.fixture
        mark = _green("PASS") if result.passed else _red("FAIL")
        yield f"{mark}  {fixture.name}  {_dim(f'({fixture.file}, event {fixture.delivery.event})')}"
        for failure in result.failures:
            yield f"      {_red('✗')} {masker.mask(failure.message)}"
            if failure.expected is not None:
                yield f"          expected: {masker.mask(failure.expected)}"
            if failure.actual is not None:
                yield f"          actual:   {masker.mask(failure.actual)}"
        yield from _rules(
            result.outcomes,
            masker,
            why_not=verbose or not result.passed,
            other_events=verbose,
            indent="      ",
            remarks={remark.rule_id: remark.because for remark in result.remarks},
        )


def replay_report(results: list[FixtureResult], masker: Masker) -> Iterator[str]:
    """Every rule's verdict for every fixture, with the rendered actions."""
    for result in results:
        fixture = result.fixture
        where = f"({fixture.file}, event {fixture.delivery.event}, delivery {fixture.delivery.delivery_id})"
        yield f"{click.style(fixture.name, bold=True)}  {_dim(where)}"
        yield from _rules(result.outcomes, masker, why_not=True, other_events=True, indent="  ")
        yield ""


def _rules(
    outcomes: list[RuleOutcome],
    masker: Masker,
    *,
    why_not: bool,
    other_events: bool,
    indent: str,
    remarks: Mapping[str, str] | None = None,
) -> Iterator[str]:
    """Fired rules with their actions; with `why_not`, why the others did not fire.

    A rule in `remarks` (a `not_fired` that held for another reason than its condition)
    is always shown, with the `because` that would pin its reason.
    """
    width = max((len(o.rule.id) for o in outcomes), default=0)
    quiet, hidden = 0, 0
    for outcome in outcomes:
        because = (remarks or {}).get(outcome.rule.id)
        if because is not None and not outcome.fired:
            why = f"not fired (because: {because}): {masker.mask(outcome.reason)}"
            yield f"{indent}{_yellow('·')} {outcome.rule.id.ljust(width)}  {why}"
            continue
        if outcome.status is RuleStatus.EVENT_NOT_MATCHED and not other_events:
            hidden += 1
            continue
        if not outcome.fired:
            if not why_not:
                quiet += 1
                continue
            # Each reason says why by itself: "throttled: …", "… -> false".
            yield f"{indent}{_dim('·')} {outcome.rule.id.ljust(width)}  {masker.mask(outcome.reason)}"
            continue
        yield f"{indent}{_green('✓')} {outcome.rule.id.ljust(width)}  fired: {masker.mask(outcome.reason)}"
        for action in outcome.actions:
            yield f"{indent}      {_action_line(action, masker)}"
    if quiet:
        yield f"{indent}{_dim(f'· {quiet} other rule(s) for this event did not fire (-v shows why)')}"
    if hidden:
        yield f"{indent}{_dim(f'· {hidden} other rule(s) are not for this event')}"


def _action_line(action: PlannedAction, masker: Masker) -> str:
    if action.error:
        return f"{_red('✗')} {action.type}: {masker.mask(action.error)}"
    params = masker.mask(action.params or {})
    shown = ", ".join(f"{key}: {json.dumps(value, ensure_ascii=False)}" for key, value in params.items())
    return f"→ {action.type}  {shown}"


def summary(results: list[FixtureResult], bad_files: int) -> str:
    passed = sum(1 for r in results if r.passed)
    failed = len(results) - passed
    text = f"{passed} passed, {failed} failed"
    if bad_files:
        text += f", {bad_files} fixture problem(s)"
    return _red(text) if failed or bad_files else _green(text)


def replay_json(results: list[dict[str, Any]]) -> str:
    return json.dumps({"results": results}, indent=2, ensure_ascii=False)
