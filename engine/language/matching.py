"""Match a delivery against every rule and render the actions of those that fire.

This is the one code path shared by dry runs (`stockaj-rules test`, `replay`)
and the worker: it decides, for each loaded rule, whether it fires and why,
and renders each action's params. It sends nothing; executing the rendered
actions is the worker's job.

Conditions, explanations and templates run in a thread of their own
(`EVALUATION_THREADS`), never on the event loop, which in `serve` is also the
receiver's; only the throttle slots, kept in the store, are taken on the loop.
Whatever goes wrong in one rule (a template, a condition, a plugin's validator)
is that rule's error outcome; the other rules run as usual.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from actions.base import ActionParams, Clock, Origin, utc_now
from engine.errors import TemplateRenderError
from engine.excerpt import cut
from engine.language import conditions
from engine.language.delivery import Delivery
from engine.language.missing_hint import missing_reason
from engine.language.outgoing_urls import check_rendered
from engine.language.params import ParamsInvalid, validate_rendered
from engine.language.rules import Rule, RuleAction, RuleSet
from engine.language.templates import render, with_globals
from engine.language.throttle import ThrottleState
from engine.secrets import Secrets

# Deliveries evaluated at once per process (WORKER_CONCURRENCY runs 8 by default).
EVALUATION_THREADS = 8


class RuleStatus(StrEnum):
    FIRED = "fired"
    EVENT_NOT_MATCHED = "event_not_matched"
    DISABLED = "disabled"
    FIELD_MISSING = "field_missing"
    CONDITION_FALSE = "condition_false"
    ERROR = "error"
    THROTTLED = "throttled"


@dataclass(slots=True, kw_only=True)
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
        """Why, at most a few KB, whatever the payload holds."""
        if callable(self._reason):
            try:
                self._reason = cut(self._reason())
            except Exception as exc:  # an explanation is for people: it never fails the delivery
                self._reason = cut(f"(the condition could not be explained: {type(exc).__name__}: {exc})")
        return self._reason


@dataclass(slots=True)
class _Verdict:
    """A rule's outcome as worked out in the evaluation thread; `throttle_key` is still to be taken."""

    outcome: RuleOutcome
    throttle_key: str | None = None


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

    async def match(
        self, delivery: Delivery, now: datetime | None = None, *, explain: bool = False
    ) -> list[RuleOutcome]:
        """One outcome per loaded rule, in rule order; `now` defaults to the clock.

        `explain=True` works every reason out in the evaluation thread (the worker records
        them all); otherwise an explanation is worked out when its reason is first read.
        """
        moment = now or self._clock()
        verdicts = await asyncio.get_running_loop().run_in_executor(
            _executor(), self._evaluate, delivery, moment, explain
        )
        outcomes = []
        for verdict in verdicts:
            outcome = verdict.outcome
            if verdict.throttle_key is not None:
                outcome = await self._take_slot(outcome, verdict.throttle_key, moment)
            outcomes.append(outcome)
        return outcomes

    async def match_many(self, deliveries: Sequence[tuple[Delivery, datetime]]) -> list[list[RuleOutcome]]:
        """`match` for each (delivery, now) in order, evaluated in one trip to the evaluation thread.

        For dry runs over many deliveries (`impact`): a throttle slot is taken after every
        verdict of the batch is known, in the deliveries' order, as one by one would.
        """
        verdicts = await asyncio.get_running_loop().run_in_executor(
            _executor(), lambda: [self._evaluate(delivery, now, False) for delivery, now in deliveries]
        )
        results = []
        for (_, now), delivery_verdicts in zip(deliveries, verdicts, strict=True):
            outcomes = []
            for verdict in delivery_verdicts:
                outcome = verdict.outcome
                if verdict.throttle_key is not None:
                    outcome = await self._take_slot(outcome, verdict.throttle_key, now)
                outcomes.append(outcome)
            results.append(outcomes)
        return results

    async def _take_slot(self, fired: RuleOutcome, key: str, now: datetime) -> RuleOutcome:
        throttle = fired.rule.throttle
        assert throttle is not None
        slot, window = throttle.slot(key, now)
        last = await self._throttle.acquire(fired.rule.id, slot, window, now)
        if last is None:
            return fired
        return RuleOutcome(
            fired.rule,
            RuleStatus.THROTTLED,
            _reason=f"throttled: key {_short_key(key)} already fired at {last.isoformat()} "
            f"(at most once per {throttle.per_text})",
        )

    def _evaluate(self, delivery: Delivery, now: datetime, explain: bool) -> list[_Verdict]:
        """Every rule's verdict, in the evaluation thread; one rule's failure is that rule's error."""
        session = _session()
        context = delivery.context()
        data: conditions.DeliveryData | Exception
        try:
            data = conditions.DeliveryData(context)
        except Exception as exc:  # a payload the condition engine cannot read
            data = exc
        render_context: dict[str, Any] | None = None
        verdicts = []
        for_event = self.rules.ids_for_event(delivery.event)
        for rule in self.rules.rules:
            try:
                outcome = self._check(rule, rule.id in for_event, delivery, data, session)
                if outcome is not None:
                    verdict = _Verdict(outcome)
                else:
                    assert isinstance(data, conditions.DeliveryData)
                    if render_context is None:
                        render_context = with_globals(
                            {**context, "secrets": self._secrets, "now": IsoDatetime.of(now)}
                        )
                    verdict = self._fire(rule, render_context, data)
            except Exception as exc:
                reason = f"could not be evaluated: {type(exc).__name__}: {exc}"
                verdict = _Verdict(RuleOutcome(rule, RuleStatus.ERROR, _reason=cut(reason)))
            if explain:
                _ = verdict.outcome.reason  # worked out here, off the event loop
            verdicts.append(verdict)
        return verdicts

    def _check(
        self,
        rule: Rule,
        for_event: bool,
        delivery: Delivery,
        data: conditions.DeliveryData | Exception,
        session: Any,
    ) -> RuleOutcome | None:
        """The outcome of a rule that does not fire, or None when its condition holds."""
        if not for_event:
            on = ", ".join(rule.events)
            return RuleOutcome(
                rule,
                RuleStatus.EVENT_NOT_MATCHED,
                _reason=f"event {cut(delivery.event, 200)} does not match on: {on}",
            )
        if not rule.enabled:
            return RuleOutcome(rule, RuleStatus.DISABLED, _reason="disabled: the rule has enabled: false")
        if isinstance(data, Exception):
            reason = f"the delivery could not be read for conditions: {type(data).__name__}: {data}"
            return RuleOutcome(rule, RuleStatus.ERROR, _reason=cut(reason))
        if rule.condition is None:
            return None
        verdict = rule.condition.test(data, session)
        if verdict.missing_field is not None:
            condition, field = rule.condition, verdict.missing_field
            return RuleOutcome(
                rule, RuleStatus.FIELD_MISSING, _reason=lambda: missing_reason(condition, field, data)
            )
        if verdict.error is not None:
            return RuleOutcome(rule, RuleStatus.ERROR, _reason=cut(f"condition {verdict.error}"))
        if not verdict.fired:
            condition = rule.condition
            return RuleOutcome(rule, RuleStatus.CONDITION_FALSE, _reason=lambda: condition.explain(data))
        return None

    def _fire(self, rule: Rule, context: dict[str, Any], data: conditions.DeliveryData) -> _Verdict:
        """A rule whose condition holds: its rendered actions, and its throttle key when it has one.

        The actions of a throttled rule are rendered before its slot is taken (on the loop,
        afterwards) and dropped if it is taken: one trip to the evaluation thread per delivery.
        """
        explanation: str | Callable[[], str] = "no condition: fires on every matching event"
        if rule.condition is not None:
            condition = rule.condition
            explanation = lambda: condition.explain(data)  # noqa: E731
        key = None
        if rule.throttle is not None:
            try:
                key = str(render(rule.throttle.key, context))
            except TemplateRenderError as exc:
                return _Verdict(RuleOutcome(rule, RuleStatus.ERROR, _reason=cut(f"throttle key: {exc}")))
        dry_run = self._secrets.placeholders
        actions = [render_action(rule, action, context, dry_run=dry_run) for action in rule.actions]
        return _Verdict(RuleOutcome(rule, RuleStatus.FIRED, actions, _reason=explanation), key)


def render_action(
    rule: Rule, action: RuleAction, context: dict[str, Any], *, dry_run: bool = False
) -> PlannedAction:
    """Render and validate one action's params; failures are recorded, not raised."""
    planned = PlannedAction(index=action.index, type=action.type)
    rendered = {}
    for name, template in action.params.items():
        try:
            rendered[name] = render(template, context)
        except TemplateRenderError as exc:
            planned.error = cut(f"actions[{action.index}] ({action.type}) param {name}: {exc}")
            return planned
    planned.params = rendered
    try:
        planned.validated = validate_rendered(action.plugin, rendered, dry_run=dry_run)
        # Show what will be sent: `quantity: "7"` written as text is sent as the number 7.
        planned.params = planned.validated.model_dump(mode="json", by_alias=True, exclude_unset=True)
    except ParamsInvalid as exc:
        planned.validated = None
        planned.error = cut(f"actions[{action.index}] ({action.type}): {exc}")
        return planned
    except Exception as exc:  # a plugin's validator with a bug fails this action, not the delivery
        planned.validated = None
        unexpected = f"unexpected error: {type(exc).__name__}: {exc}"
        planned.error = cut(f"actions[{action.index}] ({action.type}): {unexpected}")
        return planned
    planned.origins, refused = check_rendered(
        action.origins, planned.params, context["secrets"], dry_run=dry_run
    )
    if refused is not None:
        planned.error = cut(f"actions[{action.index}] ({action.type}): {refused}")
        planned.validated = None
    return planned


def _short_key(key: str) -> str:
    if len(key) <= 200:
        return repr(key)
    return f"{key[:200]!r}… ({len(key):,} characters)"


_sessions = threading.local()  # datalogic sessions must stay on the thread that made them


def _session() -> Any:
    session = getattr(_sessions, "session", None)
    if session is None:
        session = _sessions.session = conditions.new_session()
    return session


_pool: tuple[int, ThreadPoolExecutor] | None = None
_pool_lock = threading.Lock()


def _executor() -> ThreadPoolExecutor:
    """The evaluation threads of this process (made anew in a forked child, whose threads are gone)."""
    global _pool
    pool = _pool
    if pool is None or pool[0] != os.getpid():
        with _pool_lock:
            if _pool is None or _pool[0] != os.getpid():
                _pool = (os.getpid(), ThreadPoolExecutor(EVALUATION_THREADS, "rule-evaluation"))
            pool = _pool
    return pool[1]
