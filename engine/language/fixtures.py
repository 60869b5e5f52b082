"""Fixtures: recorded deliveries, optionally with expectations, in JSON or YAML files.

A fixture file holds one fixture object or a list of them (spec section 8).
`load_fixtures()` returns the good ones and a located problem for each bad one,
so one broken fixture does not hide the results of the others.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, JsonValue, ValidationError

from engine.errors import SourceProblem
from engine.language.delivery import Delivery
from engine.language.source_files import MAX_FIXTURE_FILE_BYTES, find_source_files
from engine.language.sources import JsonPath, SourceDocument, read_document
from engine.language.validation import describe, describe_value

DEFAULT_FIXTURES_DIR = Path("fixtures")


class ExpectedAction(BaseModel):
    """An action a fired rule must have rendered; `params` is a subset, exact in value and type."""

    model_config = ConfigDict(extra="forbid")

    rule: str
    type: str | None = None
    params: dict[str, JsonValue] = Field(default_factory=dict)


# The designed reasons a rule does not fire (spec section 13); an error is never one of them.
Because = Literal["event", "disabled", "throttled", "condition", "missing"]


class NotFired(BaseModel):
    """A rule that must not fire; `because` pins the reason, else any designed reason will do."""

    model_config = ConfigDict(extra="forbid")

    rule: str
    because: Because | None = None


def _rule_id_alone(value: Any) -> Any:
    """`not_fired: [reorder]` is short for `not_fired: [{rule: reorder}]`."""
    if isinstance(value, str):
        return {"rule": value}
    if not isinstance(value, dict):
        raise ValueError(f"expected a rule id, or {{rule: ..., because: ...}}, found {describe_value(value)}")
    return value


class Expectations(BaseModel):
    model_config = ConfigDict(extra="forbid")

    fired: list[str] = Field(default_factory=list)
    not_fired: list[Annotated[NotFired, BeforeValidator(_rule_id_alone)]] = Field(default_factory=list)
    errors: list[str] = Field(default_factory=list)
    actions: list[ExpectedAction] = Field(default_factory=list)


class FixtureSpec(BaseModel):
    """One fixture as written in a file."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = None
    event: str | None = Field(default=None, min_length=1)
    delivery_id: str | None = Field(default=None, min_length=1)
    headers: dict[str, str] = Field(default_factory=dict)
    payload: dict[str, JsonValue]
    expect: Expectations | None = None


@dataclass(frozen=True, slots=True)
class Fixture:
    name: str
    file: str
    index: int
    delivery: Delivery
    expect: Expectations | None


@dataclass(frozen=True, slots=True)
class FixtureFile:
    path: str
    fixtures: list[Fixture]


def load_fixtures(paths: Iterable[Path]) -> tuple[list[FixtureFile], list[SourceProblem]]:
    """Every fixture under `paths` (files or folders), grouped by file, and every problem."""
    files: list[FixtureFile] = []
    problems: list[SourceProblem] = []
    for root in paths:
        if not root.exists():
            problems.append(SourceProblem(str(root), 1, 1, "no such file or folder"))
            continue
        paths, unreadable = find_source_files(root, confined=False)
        problems += unreadable
        for path in paths:
            document = read_document(path, max_bytes=MAX_FIXTURE_FILE_BYTES)
            if isinstance(document, SourceProblem):
                problems.append(document)
                continue
            fixtures = _fixtures_of(document, problems)
            if fixtures:
                files.append(FixtureFile(document.path, fixtures))
    return files, problems


def _fixtures_of(document: SourceDocument, problems: list[SourceProblem]) -> list[Fixture]:
    value = document.value
    items = list(enumerate(value)) if isinstance(value, list) else [(0, value)]
    fixtures = []
    for index, item in items:
        loc: JsonPath = (index,) if isinstance(value, list) else ()
        fixture = _fixture(document, loc, index, item, problems)
        if fixture is not None:
            fixtures.append(fixture)
    return fixtures


def _fixture(
    document: SourceDocument, loc: JsonPath, index: int, item: Any, problems: list[SourceProblem]
) -> Fixture | None:
    if not isinstance(item, dict):
        problems.append(
            document.problem(
                loc,
                f"expected a fixture (an object with event and payload), found {describe_value(item)}",
            )
        )
        return None
    label = item.get("name") if isinstance(item.get("name"), str) else None
    try:
        spec = FixtureSpec.model_validate(item)
    except ValidationError as exc:
        for p in describe(exc, FixtureSpec):
            problems.append(document.problem((*loc, *p.loc), p.message, rule_id=label, key=p.at_key))
        return None
    event = spec.event or spec.payload.get("event")
    if not isinstance(event, str) or not event:
        problems.append(
            document.problem(
                loc,
                'missing the event: add "event": "item.low_stock" (or the payload\'s "event")',
                rule_id=label,
            )
        )
        return None
    name = spec.name or f"{document.path}#{index}"
    delivery_id = spec.delivery_id or "fixture-" + hashlib.sha256(name.encode()).hexdigest()[:16]
    delivery = Delivery(event, delivery_id, spec.payload, spec.headers)
    return Fixture(name, document.path, index, delivery, spec.expect)


def fixture_document(delivery: Delivery, name: str) -> dict[str, Any]:
    """A stored delivery in fixture form, ready to gain expectations (`deliveries export`)."""
    return {
        "name": name,
        "event": delivery.event,
        "delivery_id": delivery.delivery_id,
        "payload": delivery.payload,
    }
