"""The impact of a rule change: stored deliveries replayed dry through two rule sets, compared.

`ImpactRun` takes the current rules and a draft, then deliveries in the order they were
received (each with the moment it was received, the `now` of its throttle windows and
`{{ now }}`), and finds, per rule, the deliveries the draft would newly fire, stop firing,
or render different action params for. It is the code of `stockaj-rules impact` and of the
console's playground (SPEC section 15), and the matching is `test`'s and `replay`'s.

Only the rules that differ are evaluated: a rule written the same way in both sets (equal
`Rule.digest`) gives the same verdicts, throttle included (a throttle depends only on the
rule's own firings), so it has no impact; a delivery whose event no changed rule listens to
is skipped. Nothing is sent: secrets read as placeholders.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from engine.language.delivery import Delivery
from engine.language.matching import Matcher, RuleOutcome
from engine.language.rules import Rule, RuleSet
from engine.language.throttle import InMemoryThrottleState
from engine.secrets import Secrets

# Below this many rule evaluations (changed rules x deliveries), starting worker processes
# costs more than it saves (engine.language.impact_workers).
PARALLEL_FROM = 200_000


@dataclass(slots=True)
class RuleImpact:
    """What the draft changes for one rule (of either set)."""

    id: str
    in_current: bool
    in_draft: bool
    changed: bool  # written differently (or in one set only)
    newly_fired: list[str] = field(default_factory=list)
    stopped_firing: list[str] = field(default_factory=list)
    changed_params: list[str] = field(default_factory=list)

    @property
    def status(self) -> str:
        if not self.in_current:
            return "new"
        if not self.in_draft:
            return "removed"
        return "changed" if self.changed else "unchanged"

    @property
    def affected(self) -> int:
        return len(self.newly_fired) + len(self.stopped_firing) + len(self.changed_params)


@dataclass(slots=True)
class ImpactReport:
    deliveries: int
    rules: list[RuleImpact]
    first_received: datetime | None = None
    last_received: datetime | None = None
    unreadable: list[str] = field(default_factory=list)  # stored bodies that are not a JSON object

    def as_json(self) -> dict[str, Any]:
        """The `impact --json` document of SPEC section 15."""
        return {
            "deliveries": self.deliveries,
            "rules": [
                {
                    "id": rule.id,
                    "newly_fired": rule.newly_fired,
                    "stopped_firing": rule.stopped_firing,
                    "changed_params": rule.changed_params,
                }
                for rule in self.rules
            ],
        }


@dataclass(frozen=True, slots=True)
class PastDelivery:
    """A stored delivery as the impact replays it: what it was, and when it was received."""

    delivery: Delivery
    received_at: datetime


class StoredBody(Protocol):
    """A stored delivery with its body, as the store reads it back (engine/store/history.py)."""

    @property
    def delivery_id(self) -> str: ...
    @property
    def event(self) -> str: ...
    @property
    def headers(self) -> Mapping[str, str]: ...
    @property
    def body(self) -> bytes: ...
    @property
    def received_at(self) -> datetime: ...


async def impact(
    current: RuleSet,
    draft: RuleSet,
    batches: AsyncIterable[Sequence[StoredBody]],
    secrets: Mapping[str, str],
    progress: Callable[[int], None] | None = None,
    *,
    folders: tuple[Path, Path] | None = None,
    expected: int = 0,
) -> ImpactReport:
    """Replay stored deliveries, oldest first, through both sets; `progress(n)` after each batch.

    With the `folders` the two sets were loaded from, and `expected` deliveries enough to be
    worth it, each set is matched in a worker process of its own (engine.language.impact_workers).
    """
    run = ImpactRun(current, draft, secrets)
    if folders is not None and len(run.changed_rules) * expected >= PARALLEL_FROM:
        from engine.language.impact_workers import replay_side_by_side

        return await replay_side_by_side(run, batches, folders, secrets, progress)
    unreadable: list[str] = []
    async for batch in batches:
        await run.feed(readable_deliveries(batch, unreadable))
        if progress is not None:
            progress(len(batch))
    return run.report(unreadable)


def past_delivery(
    delivery_id: str, event: str, headers: Mapping[str, str], body: bytes, received_at: datetime
) -> PastDelivery | None:
    """A stored delivery to replay, read as the worker reads it; None when its body is no JSON object."""
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError):
        return None
    if not isinstance(payload, dict):
        return None
    return PastDelivery(Delivery(event, delivery_id, payload, dict(headers)), received_at)


def readable_deliveries(batch: Sequence[StoredBody], unreadable: list[str]) -> list[PastDelivery]:
    """The batch's deliveries to replay; the ids of those whose body is no JSON object go to `unreadable`."""
    readable = []
    for stored in batch:
        past = past_delivery(
            stored.delivery_id, stored.event, stored.headers, stored.body, stored.received_at
        )
        if past is None:
            unreadable.append(stored.delivery_id)
        else:
            readable.append(past)
    return readable


# The rules that fired for one delivery, by id, each with its rendered actions (type, params, error).
Fired = dict[str, tuple[tuple[str, Any, str | None], ...]]


def fired_of(outcomes: Sequence[RuleOutcome]) -> Fired:
    return {
        outcome.rule.id: tuple((a.type, a.params, a.error) for a in outcome.actions)
        for outcome in outcomes
        if outcome.fired
    }


class ImpactRun:
    """Feed it deliveries in the order received (`feed`, in batches), then read `report()`."""

    def __init__(self, current: RuleSet, draft: RuleSet, secrets: Mapping[str, str]) -> None:
        before = {rule.id: rule for rule in current.rules}
        after = {rule.id: rule for rule in draft.rules}
        ids = list(dict.fromkeys([*before, *after]))
        self._changed = [i for i in ids if _differs(before.get(i), after.get(i))]
        self._impacts = {i: RuleImpact(i, i in before, i in after, i in self._changed) for i in ids}
        changed = set(self._changed)
        dry = Secrets(secrets, placeholders=True)
        self.current = RuleSet(tuple(r for r in current.rules if r.id in changed))
        self.draft = RuleSet(tuple(r for r in draft.rules if r.id in changed))
        self._current = Matcher(self.current, InMemoryThrottleState(), dry)
        self._draft = Matcher(self.draft, InMemoryThrottleState(), dry)
        self._deliveries = 0
        self._first: datetime | None = None
        self._last: datetime | None = None

    @property
    def changed_rules(self) -> list[str]:
        """The ids of the rules that differ between the two sets: the only ones evaluated."""
        return list(self._changed)

    def listens(self, event: str) -> bool:
        """Whether a changed rule of either set listens to `event`."""
        return bool(self.current.ids_for_event(event) or self.draft.ids_for_event(event))

    async def feed(self, batch: Sequence[PastDelivery]) -> None:
        """Replay a batch (received after every earlier batch) through both sets, here."""
        self.count([past.received_at for past in batch])
        listened = [(p.delivery, p.received_at) for p in batch if self.listens(p.delivery.event)]
        if not listened:
            return
        before = await self._current.match_many(listened)
        after = await self._draft.match_many(listened)
        for (delivery, _), old, new in zip(listened, before, after, strict=True):
            self.record(delivery.delivery_id, fired_of(old), fired_of(new))

    def count(self, received: Sequence[datetime]) -> None:
        """Count replayed deliveries, received at these moments (in order)."""
        if received:
            self._deliveries += len(received)
            self._first = self._first or received[0]
            self._last = received[-1]

    def record(self, delivery_id: str, before: Fired, after: Fired) -> None:
        """One delivery's verdicts in both sets, compared."""
        for rule_id in after.keys() - before.keys():
            self._impacts[rule_id].newly_fired.append(delivery_id)
        for rule_id in before.keys() - after.keys():
            self._impacts[rule_id].stopped_firing.append(delivery_id)
        for rule_id in before.keys() & after.keys():
            if before[rule_id] != after[rule_id]:
                self._impacts[rule_id].changed_params.append(delivery_id)

    def report(self, unreadable: Sequence[str] = ()) -> ImpactReport:
        return ImpactReport(
            self._deliveries, list(self._impacts.values()), self._first, self._last, list(unreadable)
        )


def _differs(before: Rule | None, after: Rule | None) -> bool:
    return before is None or after is None or not before.digest or before.digest != after.digest
