"""Matching: one rule's failure stays that rule's, and rendering never holds the event loop."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from pydantic import field_validator

from actions.base import Action, ActionContext, ActionParams, ActionResult
from actions.registry import load_registry
from engine.language.delivery import Delivery
from engine.language.loader import load_rules
from engine.language.matching import Matcher, RuleStatus
from engine.language.rules import RuleSet
from engine.language.throttle import InMemoryThrottleState
from engine.secrets import Secrets

RECURSION = "{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}"
HUGE_NUMBER = "{{ " + " * ".join(["10 ** 250"] * 20) + " }}"


class BuggyParams(ActionParams):
    message: str

    @field_validator("message")
    @classmethod
    def _explode(cls, value: str) -> str:
        raise RuntimeError(f"validator bug on {value}")


class BuggyValidatorAction(Action[BuggyParams]):
    """A plugin whose params validator has a bug: it raises what pydantic does not catch."""

    type = "buggy_validator"
    description = "Its params validator raises RuntimeError."
    Params = BuggyParams

    async def run(self, params: BuggyParams, ctx: ActionContext) -> ActionResult:
        return ActionResult()


def _rules(tmp_path: Path, text: str) -> RuleSet:
    registry = load_registry()
    registry.register(BuggyValidatorAction)
    (tmp_path / "rules.yaml").write_text(text)
    return load_rules(tmp_path, registry)


def _delivery() -> Delivery:
    return Delivery(
        "item.low_stock", "d-1", {"timestamp": "2026-03-01T09:00:00Z", "data": {"id": 42, "quantity": 3}}
    )


async def _match(rules: RuleSet) -> dict[str, tuple[RuleStatus, str, list[str | None]]]:
    outcomes = await Matcher(rules, InMemoryThrottleState(), Secrets({})).match(_delivery())
    return {o.rule.id: (o.status, o.reason, [a.error for a in o.actions]) for o in outcomes}


async def test_every_failure_of_one_rule_becomes_its_error_and_the_other_rules_still_run(
    tmp_path: Path,
) -> None:
    rules = _rules(
        tmp_path,
        f"""\
- id: huge-key
  on: item.low_stock
  throttle: {{key: "{HUGE_NUMBER}", per: 1h}}
  actions: [{{type: log, message: x}}]
- id: recursive-key
  on: item.low_stock
  throttle: {{key: "{RECURSION}", per: 1h}}
  actions: [{{type: log, message: x}}]
- id: recursive-param
  on: item.low_stock
  actions: [{{type: log, message: "{RECURSION}"}}]
- id: buggy-validator
  on: item.low_stock
  actions: [{{type: buggy_validator, message: "id {{{{ data.id }}}}"}}]
- id: fine
  on: item.low_stock
  actions: [{{type: log, message: "ok {{{{ data.id }}}}"}}]
""",
    )
    seen = await _match(rules)

    status, reason, _ = seen["huge-key"]
    assert (status, reason.startswith("throttle key: ")) == (RuleStatus.ERROR, True)
    assert "limit" in reason
    status, reason, _ = seen["recursive-key"]
    assert (status, reason.startswith("throttle key: ")) == (RuleStatus.ERROR, True)
    assert "calls nested more than" in reason
    status, _, errors = seen["recursive-param"]
    assert status is RuleStatus.FIRED
    assert errors[0] is not None
    assert "calls nested more than" in errors[0]
    status, _, errors = seen["buggy-validator"]
    assert status is RuleStatus.FIRED
    assert errors == ["actions[0] (buggy_validator): unexpected error: RuntimeError: validator bug on id 42"]
    assert seen["fine"] == (RuleStatus.FIRED, "no condition: fires on every matching event", [None])


async def test_a_slow_template_does_not_hold_the_event_loop(tmp_path: Path) -> None:
    rules = _rules(
        tmp_path,
        "- id: slow\n  on: item.low_stock\n  actions:\n    - type: log\n"
        "      message: \"{% set s = 'x' * 100000 %}"
        "{% for i in range(10000) %}{{ s | replace('x', 'yy') | length }}{% endfor %}\"\n",
    )
    gaps: list[float] = []

    async def heartbeat() -> None:
        last = time.perf_counter()
        while True:
            await asyncio.sleep(0.01)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    beating = asyncio.create_task(heartbeat())
    await asyncio.sleep(0.05)
    started = time.perf_counter()
    seen = await _match(rules)
    took = time.perf_counter() - started
    beating.cancel()

    _, _, errors = seen["slow"]
    assert errors[0] is not None
    assert "second" in errors[0]
    assert took < 3
    assert max(gaps) < 0.25, f"the loop stalled for {max(gaps):.2f} s while a template rendered"
