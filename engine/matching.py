"""Match a delivery against every rule and render the actions of those that fire.

This is the one code path shared by dry runs (`stockaj-rules test`, `replay`)
and the worker: it decides, for each loaded rule, whether it fires and why,
and renders each action's params. It sends nothing; executing the rendered
actions is the worker's job.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from actions.base import ActionParams, Clock, Origin, utc_now
from engine import conditions
from engine.delivery import Delivery
from engine.errors import TemplateRenderError
from engine.outgoing import check_rendered
from engine.params import ParamsInvalid, validate_rendered
from engine.rules import Rule, RuleAction, RuleSet
from engine.secrets import Secrets
from engine.templates import render, with_globals
from engine.throttle import ThrottleState


class RuleStatus(StrEnum):
    FIRED = "fired"
    EVENT_NOT_MATCHED = "event_not_matched"
    DISABLED = "disabled"
    FIELD_MISSING = "field_missing"
    CONDITION_FALSE = "condition_false"
    ERROR = "error"
    THROTTLED = "throttled"


@dataclass(slots=True)
class PlannedAction:
    """An action of a fired rule, rendered for this delivery (or why it could not be)."""

    index: int
    type: str
    params: dict[str, Any] | None = None
    validated: ActionParams | None = None
    error: str | None = None
    # Where each rendered outgoing URL may go; the worker hands them to the action.
    origins: dict[str, Origin] = field(default_factory=dict)


@dataclass(slots=True)
class RuleOutcome:
    """One rule's verdict for one delivery; `reason` is worked out only when read."""

    rule: Rule
    status: RuleStatus
    actions: list[PlannedAction] = field(default_factory=list)
    _reason: str | Callable[[], str] = ""

    @property
    def fired(self) -> bool:
        return self.status is RuleStatus.FIRED

    @property
    def reason(self) -> str:
        if callable(self._reason):
            self._reason = self._reason()
        return self._reason


class IsoDatetime(datetime):
    """`{{ now }}` reads the same in text as on its own: ISO 8601."""

    @classmethod
    def of(cls, moment: datetime) -> IsoDatetime:
        return cls.fromisoformat(moment.isoformat())

    def __str__(self) -> str:
        return self.isoformat()


class Matcher:
    """Matches deliveries against one rule set."""

    def __init__(
        self,
        rules: RuleSet,
        throttle: ThrottleState,
        secrets: Secrets,
        clock: Clock = utc_now,
    ) -> None:
        self.rules = rules
        self._throttle = throttle
        self._secrets = secrets
        self._clock = clock
        self._local = threading.local()

    async def match(self, delivery: Delivery, now: datetime | None = None) -> list[RuleOutcome]:
        """One outcome per loaded rule, in rule order; `now` defaults to the clock."""
        session = self._session()
        context = delivery.context()
        data = conditions.DeliveryData(context)
        render_context: dict[str, Any] | None = None
        outcomes = []
        for_event = self.rules.ids_for_event(delivery.event)
        for rule in self.rules.rules:
            outcome = self._check(rule, rule.id in for_event, delivery, data, session)
            if outcome is None:
                if render_context is None:
                    render_context = with_globals(
                        {
                            **context,
                            "secrets": self._secrets,
                            "now": IsoDatetime.of(now or self._clock()),
                        }
                    )
                outcome = await self._fire(rule, render_context, data)
            outcomes.append(outcome)
        return outcomes

    def _check(
        self, rule: Rule, for_event: bool, delivery: Delivery, data: conditions.DeliveryData, session: Any
    ) -> RuleOutcome | None:
        """The outcome of a rule that does not fire, or None when its condition holds."""
        if not for_event:
            on = ", ".join(rule.events)
            return RuleOutcome(
                rule,
                RuleStatus.EVENT_NOT_MATCHED,
                _reason=f"event {delivery.event} does not match on: {on}",
            )
        if not rule.enabled:
            return RuleOutcome(rule, RuleStatus.DISABLED, _reason="disabled: the rule has enabled: false")
        if rule.condition is None:
            return None
        verdict = rule.condition.test(data, session)
        if verdict.missing_field is not None:
            return RuleOutcome(
                rule,
                RuleStatus.FIELD_MISSING,
                _reason=f"{verdict.missing_field} is missing from the delivery, so the condition "
                f'does not fire (give a default: {{"var": ["{verdict.missing_field}", 0]}})',
            )
        if verdict.error is not None:
            return RuleOutcome(rule, RuleStatus.ERROR, _reason=f"condition {verdict.error}")
        if not verdict.fired:
            condition = rule.condition
            return RuleOutcome(rule, RuleStatus.CONDITION_FALSE, _reason=lambda: condition.explain(data))
        return None

    async def _fire(self, rule: Rule, context: dict[str, Any], data: conditions.DeliveryData) -> RuleOutcome:
        explanation: str | Callable[[], str] = "no condition: fires on every matching event"
        if rule.condition is not None:
            condition = rule.condition
            explanation = lambda: condition.explain(data)  # noqa: E731
        if rule.throttle is not None:
            try:
                key = str(render(rule.throttle.key, context))
            except TemplateRenderError as exc:
                return RuleOutcome(rule, RuleStatus.ERROR, _reason=f"throttle key: {exc}")
            last = await self._throttle.acquire(rule.id, key, rule.throttle.per, context["now"])
            if last is not None:
                return RuleOutcome(
                    rule,
                    RuleStatus.THROTTLED,
                    _reason=f"throttled: key {key!r} already fired at {last.isoformat()} "
                    f"(at most once per {rule.throttle.per_text})",
                )
        dry_run = self._secrets.placeholders
        actions = [render_action(rule, action, context, dry_run=dry_run) for action in rule.actions]
        return RuleOutcome(rule, RuleStatus.FIRED, actions, _reason=explanation)

    def _session(self) -> Any:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = conditions.new_session()
        return session


def render_action(
    rule: Rule, action: RuleAction, context: dict[str, Any], *, dry_run: bool = False
) -> PlannedAction:
    """Render and validate one action's params; failures are recorded, not raised."""
    planned = PlannedAction(action.index, action.type)
    rendered = {}
    for name, template in action.params.items():
        try:
            rendered[name] = render(template, context)
        except TemplateRenderError as exc:
            planned.error = f"actions[{action.index}] ({action.type}) param {name}: {exc}"
            return planned
    planned.params = rendered
    try:
        planned.validated = validate_rendered(action.plugin, rendered, dry_run=dry_run)
    except ParamsInvalid as exc:
        planned.error = f"actions[{action.index}] ({action.type}): {exc}"
        return planned
    # Show what will be sent: `quantity: "7"` written as text is sent as the number 7.
    planned.params = planned.validated.model_dump(mode="json", by_alias=True, exclude_unset=True)
    planned.origins, refused = check_rendered(
        action.origins, planned.params, context["secrets"], dry_run=dry_run
    )
    if refused is not None:
        planned.error = f"actions[{action.index}] ({action.type}): {refused}"
        planned.validated = None
    return planned
