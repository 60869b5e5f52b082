"""What a rule is: the file format (pydantic specs) and the compiled, ready-to-run rule.

`RuleSpec` is the shape of one rule in a file; the JSON Schema shipped for
editors (`schema/rule.schema.json`) is generated from it and from each action's
params model (see engine.language.schema). `Rule` is a spec after loading: condition
compiled, templates parsed, action params checked. `RuleSet` is every rule of a
rules folder, indexed by event.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, tzinfo
from typing import Annotated, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    JsonValue,
    StrictBool,
    WithJsonSchema,
)

from actions.base import Action
from engine.language.conditions import Condition
from engine.language.expressions.syntax import MAX_EXPRESSION_CHARS
from engine.language.outgoing_urls import OriginParts
from engine.language.templates import Escape, ParamTemplate
from engine.language.validation import describe_value

RULE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
DURATION_PATTERN = r"^[1-9][0-9]*(s|m|h|d)$"
CALENDAR_DAY = "calendar day"
PER_PATTERN = rf"^([1-9][0-9]*(s|m|h|d)|{CALENDAR_DAY})$"
_EVENT_CACHE_SIZE = 1024
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _one_or_many(value: Any) -> Any:
    """`on: rent.created` is short for `on: [rent.created]`."""
    return [value] if isinstance(value, str) else value


def _event_pattern(value: str) -> str:
    if not value or value.strip() != value or "*" in value[:-1]:
        raise ValueError(
            "expected an event name such as 'rent.created', a prefix such as 'rent.*', "
            f"or '*', found {describe_value(value)}"
        )
    return value


_WHEN_SCHEMA: dict[str, Any] = {
    "anyOf": [
        {
            "type": "string",
            "minLength": 1,
            "maxLength": MAX_EXPRESSION_CHARS,
            "title": "Expression",
            "description": "A condition written as you would say it: data.quantity <= data.minimum_quantity, "
            'data.status == "overdue" and "vip" in data.renter.tags, '
            "any(item.quantity > 3 for item in data.items). Compiled to JsonLogic when rules load.",
            "examples": [
                "data.quantity <= data.minimum_quantity",
                'data.status == "overdue" and "vip" in data.renter.tags',
                "len(data.items) > 5 or data.total_price | default(0) > 1000",
                "any(item.quantity > 3 for item in data.items)",
            ],
        },
        {
            "type": "object",
            "minProperties": 1,
            "maxProperties": 1,
            "title": "JsonLogic",
            "description": 'JsonLogic (jsonlogic.com): {"<=": [{"var": "data.quantity"}, 5]}. '
            "What an expression compiles to; stockaj-rules conditions shows both.",
        },
        {"type": ["boolean", "number", "array", "null"], "title": "JsonLogic value"},
    ]
}


def _time_zone(name: str) -> str:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"expected a time zone such as Europe/Berlin or UTC, found {describe_value(name)}"
        ) from None
    return name


class ThrottleSpec(BaseModel):
    """At most one firing per rendered `key` per `per` window."""

    model_config = ConfigDict(extra="forbid")

    key: str = Field(min_length=1, description="Template; rendered per delivery.")
    per: str = Field(
        pattern=PER_PATTERN,
        description="Window: a whole number and a unit, s, m, h or d ('30m', '6h', '1d'), counted from "
        "the firing (1d is the next 24 hours); or 'calendar day', midnight to midnight.",
    )
    timezone: Annotated[str, AfterValidator(_time_zone)] | None = Field(
        default=None,
        description="With per: calendar day, whose midnight starts a day: an IANA name such as "
        "Europe/Berlin. Default UTC.",
    )


class ActionSpec(BaseModel):
    """One action in a rule: `type` names the plugin, every other key is a param."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(description="The action type: one of the installed action plugins.")


class RuleSpec(BaseModel):
    """One rule as written in a rule file."""

    model_config = ConfigDict(extra="forbid", title="Stockaj rule")

    id: str = Field(pattern=RULE_ID_PATTERN, max_length=120, description="Unique across all files.")
    description: str | None = Field(default=None, description="For people.")
    on: Annotated[
        list[Annotated[str, AfterValidator(_event_pattern)]],
        BeforeValidator(_one_or_many),
        Field(min_length=1),
        WithJsonSchema(
            {
                "anyOf": [
                    {"type": "string", "minLength": 1},
                    {"type": "array", "items": {"type": "string", "minLength": 1}, "minItems": 1},
                ]
            }
        ),
    ] = Field(description="Event names; 'rent.*' matches a prefix, '*' matches all.")
    when: Annotated[JsonValue, WithJsonSchema(_WHEN_SCHEMA)] = Field(
        default=None,
        description="Condition: an expression such as data.quantity <= data.minimum_quantity "
        "(or the JsonLogic it compiles to); absent means always.",
    )
    actions: list[ActionSpec] = Field(min_length=1, description="Run in order.")
    # Only true and false: YAML 1.1's no/off/0 or a quoted "false" would switch a rule off by surprise.
    enabled: StrictBool = Field(default=True, description="false switches the rule off; only true or false.")
    throttle: ThrottleSpec | None = None


def parse_duration(text: str) -> timedelta:
    match = re.fullmatch(DURATION_PATTERN, text)
    if match is None:
        raise ValueError(f"expected a duration such as '30m', '6h' or '1d', found {text!r}")
    return timedelta(seconds=int(text[:-1]) * _DURATION_UNITS[match.group(1)])


@dataclass(frozen=True, slots=True, kw_only=True)
class RuleAction:
    """One action of a loaded rule: its plugin and its params, parsed as templates."""

    index: int
    type: str
    plugin: Action[Any]
    params: dict[str, ParamTemplate]
    escapes: dict[str, Escape] = field(default_factory=dict)
    # Per outgoing URL param, its configuration-only start (engine/language/outgoing_urls.py).
    origins: dict[str, OriginParts] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Throttle:
    """At most one firing per rendered key per window: `per` from the firing on, or, with a
    `calendar` zone, per calendar day in that zone (the slot's key then holds the date)."""

    key: ParamTemplate
    per: timedelta
    per_text: str
    calendar: tzinfo | None = None

    def slot(self, key: str, now: datetime) -> tuple[str, timedelta]:
        """The throttle slot's key and window for `key` at `now`."""
        if self.calendar is None:
            return key, self.per
        # A calendar day lasts at most 25 hours: any window longer holds the slot until the date changes.
        return f"{key}\x1f{now.astimezone(self.calendar).date().isoformat()}", timedelta(days=2)


@dataclass(frozen=True, slots=True, kw_only=True)
class Rule:
    """A rule ready to run against deliveries."""

    id: str
    description: str | None
    events: tuple[str, ...]
    condition: Condition | None
    actions: tuple[RuleAction, ...]
    enabled: bool
    throttle: Throttle | None
    source: str  # "path:line" of the rule, for people
    # A digest of the rule as written (every key): equal digests run alike (`impact` skips them).
    digest: str = ""

    def matches_event(self, event: str) -> bool:
        return any(
            pattern == "*" or pattern == event or (pattern.endswith("*") and event.startswith(pattern[:-1]))
            for pattern in self.events
        )


class RuleSet:
    """Every loaded rule, in file order, with the rules of each event found once and cached."""

    def __init__(self, rules: tuple[Rule, ...], files: tuple[str, ...] = ()) -> None:
        self.rules = rules
        self.files = files
        self._by_id = {rule.id: rule for rule in rules}
        self._by_event: dict[str, frozenset[str]] = {}

    def __len__(self) -> int:
        return len(self.rules)

    def get(self, rule_id: str) -> Rule | None:
        return self._by_id.get(rule_id)

    def ids(self) -> list[str]:
        return [rule.id for rule in self.rules]

    def for_event(self, event: str) -> tuple[Rule, ...]:
        """The rules whose `on` matches `event`, in rule order."""
        return tuple(rule for rule in self.rules if rule.id in self.ids_for_event(event))

    def ids_for_event(self, event: str) -> frozenset[str]:
        """The ids of the rules whose `on` matches `event` (cached per event name)."""
        found = self._by_event.get(event)
        if found is None:
            if len(self._by_event) >= _EVENT_CACHE_SIZE:  # unknown events are stored too
                self._by_event.clear()
            found = self._by_event[event] = frozenset(r.id for r in self.rules if r.matches_event(event))
        return found
