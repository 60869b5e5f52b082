"""`stockaj-rules test --coverage`: what the fixtures exercise of each rule.

For each rule: the fixtures where it fired, those where it did not and why (`because`),
those where it ran into an error; and for its condition, down to each operand of each
`and` / `or`, in how many fixtures that operand was true, false, stopped by a missing
field or an error, or not reached (the other side of an `and` / `or` decided first).
An operand inside `any(...)` / `all(...)` is evaluated once per item, so one fixture
may make it both true and false. Fixtures of other events are not counted for a rule.

Operands are shown as the author wrote them: the piece of the expression, or a JsonLogic
condition written as an expression where it has one (engine.language.expressions.render).
Each condition is evaluated again with a trace (datalogic's), as `test` evaluates it:
the missing-field guard included.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from engine.language.conditions import Condition, DeliveryData, Probe, new_session
from engine.language.dry_run import because_of, errors_of
from engine.language.expressions.render import NoExpression, to_expression
from engine.language.fixtures import Fixture
from engine.language.matching import RuleOutcome, RuleStatus
from engine.language.rules import Rule, RuleSet

OUTCOMES = ("true", "false", "missing", "error")
REPORT_NAME = "stockaj-rules test --coverage"
# The condition's own verdict, where the outcome tells it (an error may be a template's).
_VERDICTS = {
    RuleStatus.FIRED: "true",
    RuleStatus.THROTTLED: "true",
    RuleStatus.CONDITION_FALSE: "false",
    RuleStatus.FIELD_MISSING: "missing",
}
_EVALUATED = frozenset(
    {
        RuleStatus.FIRED,
        RuleStatus.THROTTLED,
        RuleStatus.CONDITION_FALSE,
        RuleStatus.FIELD_MISSING,
        RuleStatus.ERROR,
    }
)


class Run(Protocol):
    """A fixture and its rules' outcomes (a dry run's FixtureRun, or a FixtureResult)."""

    @property
    def fixture(self) -> Fixture: ...

    @property
    def outcomes(self) -> list[RuleOutcome]: ...


@dataclass(slots=True)
class Tally:
    """In how many fixtures something was true, false, missing or an error (or not reached)."""

    counts: Counter[str] = field(default_factory=Counter)

    def add(self, outcomes: list[str] | None) -> None:
        if not outcomes:
            self.counts["not_reached"] += 1
        for outcome in set(outcomes or ()):
            self.counts[outcome] += 1

    def document(self) -> dict[str, int]:
        return {name: self.counts[name] for name in (*OUTCOMES, "not_reached")}


@dataclass(slots=True)
class OperandCoverage:
    pointer: str  # in the condition's JsonLogic
    operator: str  # "and" or "or"
    text: str
    tally: Tally = field(default_factory=Tally)

    @property
    def gaps(self) -> list[str]:
        """What no fixture made this operand: "true", "false"."""
        return [name for name in ("true", "false") if not self.tally.counts[name]]


@dataclass(frozen=True, slots=True)
class Seen:
    fixture: Fixture
    detail: str = ""  # the `because`, or the error


@dataclass(slots=True)
class RuleCoverage:
    rule: Rule
    condition: str | None
    fired: list[Seen] = field(default_factory=list)
    not_fired: list[Seen] = field(default_factory=list)
    errors: list[Seen] = field(default_factory=list)
    verdicts: Tally = field(default_factory=Tally)
    operands: list[OperandCoverage] = field(default_factory=list)
    pointers: frozenset[str] = frozenset()  # what a trace must report: the verdict, each operand
    skeleton: _Node | None = None  # worked out when first needed
    traced: bool = False  # the condition needs a trace (its skeleton is None for good)

    def __post_init__(self) -> None:
        self.pointers = frozenset(["", *(operand.pointer for operand in self.operands)])

    @property
    def fixtures(self) -> int:
        return len(self.fired) + len(self.not_fired) + len(self.errors)

    @property
    def can_be_kept_from_firing(self) -> bool:
        """By something a fixture for its events can show: its condition, or its throttle."""
        rule = self.rule
        return rule.enabled and (rule.condition is not None or rule.throttle is not None)


@dataclass(slots=True)
class Coverage:
    fixtures: int
    rules: list[RuleCoverage]

    @property
    def never_fired(self) -> list[str]:
        """Enabled rules that no fixture fires."""
        return [r.rule.id for r in self.rules if not r.fired and r.rule.enabled]

    @property
    def never_kept_from_firing(self) -> list[str]:
        """Rules with a condition or a throttle that no fixture for their events keeps from firing."""
        return [r.rule.id for r in self.rules if not r.not_fired and r.can_be_kept_from_firing]

    def operand_gaps(self) -> Iterator[tuple[RuleCoverage, OperandCoverage]]:
        for rule in self.rules:
            for operand in rule.operands:
                if operand.gaps:
                    yield rule, operand


def coverage(rules: RuleSet, runs: Sequence[Run]) -> Coverage:
    """What `runs` exercise of every rule in `rules`."""
    found = [
        RuleCoverage(rule, _written(rule.condition), operands=_operands(rule.condition))
        for rule in rules.rules
    ]
    session = new_session()
    for run in runs:
        delivery = _Delivery(run.fixture.delivery.context(), session)
        for rule_coverage, outcome in zip(found, run.outcomes, strict=True):
            if outcome.status is not RuleStatus.EVENT_NOT_MATCHED:
                _count(rule_coverage, run.fixture, outcome, delivery)
    return Coverage(len(runs), found)


class _Delivery:
    """A fixture's delivery, read for the condition engine once, when a rule first needs it."""

    def __init__(self, context: dict[str, Any], session: Any) -> None:
        self.context = context
        self.session = session
        self._data: DeliveryData | None = None

    @property
    def data(self) -> DeliveryData:
        if self._data is None:
            self._data = DeliveryData(self.context)
        return self._data


def _count(found: RuleCoverage, fixture: Fixture, outcome: RuleOutcome, delivery: _Delivery) -> None:
    errors = errors_of(outcome)
    if errors:
        found.errors.append(Seen(fixture, errors[0]))
    elif outcome.fired:
        found.fired.append(Seen(fixture))
    else:
        found.not_fired.append(Seen(fixture, because_of(outcome) or ""))
    condition = outcome.rule.condition
    if condition is None or outcome.status not in _EVALUATED:
        return
    verdict = _VERDICTS.get(outcome.status)
    if not found.operands and verdict is not None:  # the outcome says it all
        found.verdicts.add([verdict])
        return
    try:
        outcomes = _outcomes(found, condition, delivery)
    except Exception:  # a delivery the condition engine cannot read: its error is counted above
        return
    found.verdicts.add(outcomes.get(""))
    for operand in found.operands:
        operand.tally.add(outcomes.get(operand.pointer))


def _outcomes(found: RuleCoverage, condition: Condition, delivery: _Delivery) -> dict[str, list[str]]:
    """Each operand's outcomes: from its pieces evaluated one by one when it can be, else a trace."""
    if found.skeleton is None and not found.traced:
        found.skeleton = _skeleton(condition.logic, "")
        found.traced = found.skeleton is None
    if found.skeleton is None:
        return condition.trace(delivery.context, found.pointers)
    outcomes: dict[str, list[str]] = {}
    _walk(found.skeleton, delivery, outcomes)
    return outcomes


@dataclass(frozen=True, slots=True)
class _Node:
    """A condition as and / or / not over pieces that hold no and / or (each a `Probe`)."""

    pointer: str
    op: str  # "and", "or", "!", "!!", or "" for a piece
    children: tuple[_Node, ...] = ()
    probe: Probe | None = None


def _skeleton(logic: Any, pointer: str) -> _Node | None:
    """The condition as `_Node`s; None when an and / or sits where only a trace can follow it.

    (Inside any/all/sum, a branch of `if`, a comparison: there an operand's outcome depends
    on more than the delivery, so each one is worked out by tracing the whole condition.)
    """
    if isinstance(logic, dict) and len(logic) == 1:
        ((op, args),) = logic.items()
        here = f"{pointer}/{_escape(op)}"
        items = (
            [(arg, f"{here}/{i}") for i, arg in enumerate(args)] if isinstance(args, list) else [(args, here)]
        )
        if op in ("and", "or", "!", "!!") and (op in ("and", "or") or len(items) == 1):
            children = [_skeleton(arg, at) for arg, at in items]
            if any(child is None for child in children):
                return None
            return _Node(pointer, op, tuple(child for child in children if child is not None))
    if _has_boolean(logic):
        return None
    return _Node(pointer, "", probe=Probe(logic))


def _has_boolean(logic: Any) -> bool:
    if isinstance(logic, list):
        return any(_has_boolean(item) for item in logic)
    if isinstance(logic, dict):
        return any(key in ("and", "or") or _has_boolean(value) for key, value in logic.items())
    return False


def _walk(node: _Node, delivery: _Delivery, outcomes: dict[str, list[str]]) -> str:
    """The node's outcome, as JsonLogic works it out (and / or stop early); each reached node recorded."""
    if node.probe is not None:
        outcome = node.probe.outcome(delivery.data, delivery.session)
    elif node.op in ("and", "or"):
        going_on = "true" if node.op == "and" else "false"
        outcome = going_on
        for child in node.children:
            outcome = _walk(child, delivery, outcomes)
            if outcome != going_on:
                break
    else:
        inner = _walk(node.children[0], delivery, outcomes)
        flipped = {"true": "false", "false": "true"}
        outcome = flipped.get(inner, inner) if node.op == "!" else inner
    outcomes[node.pointer] = [outcome]
    return outcome


def _operands(condition: Condition | None) -> list[OperandCoverage]:
    """Every operand of every `and` / `or` in the condition, outermost first."""
    if condition is None:
        return []
    found = []
    stack: list[tuple[Any, str]] = [(condition.logic, "")]
    while stack:
        node, pointer = stack.pop(0)
        if isinstance(node, list):
            stack[0:0] = [(item, f"{pointer}/{i}") for i, item in enumerate(node)]
        elif isinstance(node, dict) and len(node) == 1:
            ((op, args),) = node.items()
            here = f"{pointer}/{_escape(op)}"
            if op in ("and", "or") and isinstance(args, list):
                found += [
                    OperandCoverage(f"{here}/{i}", op, _operand_text(condition, arg, f"{here}/{i}"))
                    for i, arg in enumerate(args)
                ]
            stack[0:0] = [(args, here)]
    return found


def _operand_text(condition: Condition, logic: Any, pointer: str) -> str:
    expression = condition.expression
    part = expression.parts.get(pointer) if expression is not None else None
    if expression is not None and part is not None:
        return " ".join(expression.text[part.start : part.end].split())
    return _as_expression(logic)


def _written(condition: Condition | None) -> str | None:
    if condition is None:
        return None
    if condition.expression is not None:
        return " ".join(condition.expression.text.split())
    return _as_expression(condition.logic)


def _as_expression(logic: Any) -> str:
    try:
        return to_expression(logic)
    except NoExpression:
        return json.dumps(logic, ensure_ascii=False)


def _escape(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")


def coverage_document(found: Coverage) -> dict[str, Any]:
    """The coverage as JSON, for CI (`test --coverage-json FILE`)."""
    return {
        "report": REPORT_NAME,
        "fixtures": found.fixtures,
        "rules": [_rule_document(rule) for rule in found.rules],
        "never_fired": found.never_fired,
        "never_kept_from_firing": found.never_kept_from_firing,
        "operands_never_true": [
            {"rule": r.rule.id, "pointer": o.pointer, "text": o.text}
            for r, o in found.operand_gaps()
            if "true" in o.gaps
        ],
        "operands_never_false": [
            {"rule": r.rule.id, "pointer": o.pointer, "text": o.text}
            for r, o in found.operand_gaps()
            if "false" in o.gaps
        ],
    }


def _rule_document(rule: RuleCoverage) -> dict[str, Any]:
    return {
        "id": rule.rule.id,
        "source": rule.rule.source,
        "events": list(rule.rule.events),
        "fixtures": rule.fixtures,
        "fired": [_seen(s) for s in rule.fired],
        "not_fired": [{**_seen(s), "because": s.detail} for s in rule.not_fired],
        "errors": [{**_seen(s), "error": s.detail} for s in rule.errors],
        "condition": rule.condition,
        "condition_outcomes": rule.verdicts.document() if rule.condition is not None else None,
        "operands": [
            {"pointer": o.pointer, "operator": o.operator, "text": o.text, **o.tally.document()}
            for o in rule.operands
        ],
    }


def _seen(seen: Seen) -> dict[str, str]:
    return {"fixture": seen.fixture.name, "file": seen.fixture.file}
