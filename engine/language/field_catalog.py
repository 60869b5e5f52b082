"""The payload fields deliveries have, per event: what `stockaj-rules fields` lists and `check` uses.

A `FieldCatalog` is built from deliveries (fixtures, and stored deliveries on request):
for each event, every path seen in the payloads, with its JSON types, how many
deliveries had it and one example. Paths are written as rule authors write them:
`data.renter.name` for `payload.data`, `payload.timestamp` for the rest of the body,
and `[]` for "each item of a list" (`data.items[].sku`).

Every walk is bounded (items per list, depth, paths per event, events), so a huge
or deeply nested payload costs a bounded amount; what was left out is counted.
"""

from __future__ import annotations

import difflib
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from engine.excerpt import value_text

Segments = tuple[str, ...]
EACH = "[]"  # the segment standing for every item of a list

MAX_LIST_ITEMS = 50  # items of one list walked per delivery
MAX_DEPTH = 24
MAX_PATHS_PER_EVENT = 5_000
MAX_EVENTS = 500
MAX_EXAMPLE_CHARS = 60


def json_type(value: Any) -> str:
    """The JSON type name of a payload value."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list | tuple):
        return "array"
    return "object"


def written(path: Segments) -> str:
    """`("data", "items", "[]", "sku")` as `data.items[].sku`."""
    text = path[0] if path else ""
    for segment in path[1:]:
        text += segment if segment == EACH else f".{segment}"
    return text


def payload_path(keys: Iterable[str | int]) -> Segments:
    """A path inside the payload body, named as rules read it (`data.x`, `payload.timestamp`)."""
    names = [str(key) for key in keys]
    if names[:1] == ["data"]:
        return tuple(names)
    return ("payload", *names)


@dataclass(slots=True)
class FieldInfo:
    """One path of one event: the types it had, in how many deliveries, and an example."""

    path: Segments
    types: Counter[str] = field(default_factory=Counter)
    deliveries: int = 0
    example: str | None = None

    @property
    def name(self) -> str:
        return written(self.path)

    def merge(self, other: FieldInfo) -> None:
        self.types.update(other.types)
        self.deliveries += other.deliveries
        self.example = self.example or other.example


@dataclass(slots=True)
class EventFields:
    event: str
    deliveries: int = 0
    fields: dict[Segments, FieldInfo] = field(default_factory=dict)
    paths_left_out: int = 0


class FieldCatalog:
    """Fields per event, from the deliveries added."""

    def __init__(self, noun: str = "delivery") -> None:
        self.noun = noun  # what one delivery is called in messages: "fixture", "delivery"
        self.events: dict[str, EventFields] = {}
        self.events_left_out = 0

    @property
    def plural(self) -> str:
        return self.noun[:-1] + "ies" if self.noun.endswith("y") else self.noun + "s"

    def __bool__(self) -> bool:
        return bool(self.events)

    def add(self, event: str, payload: Mapping[str, Any]) -> None:
        """Count one delivery of `event`."""
        fields = self.events.get(event)
        if fields is None:
            if len(self.events) >= MAX_EVENTS:
                self.events_left_out += 1
                return
            fields = self.events[event] = EventFields(event)
        fields.deliveries += 1
        seen: dict[Segments, tuple[set[str], Any]] = {}
        for path, value in _walk(payload):
            types, _ = seen.setdefault(payload_path(path), (set(), value))
            types.add(json_type(value))
        for path, (types, value) in seen.items():
            if path == ("data",):
                continue  # always there: `{}` when the payload has none
            info = fields.fields.get(path)
            if info is None:
                if len(fields.fields) >= MAX_PATHS_PER_EVENT:
                    fields.paths_left_out += 1
                    continue
                info = fields.fields[path] = FieldInfo(path)
            info.deliveries += 1
            info.types.update(types)
            if info.example is None and value is not None and not isinstance(value, dict | list):
                info.example = value_text(value, MAX_EXAMPLE_CHARS)

    def matching(self, patterns: Iterable[str]) -> list[str]:
        """The events seen that `on` patterns (`rent.created`, `rent.*`, `*`) match."""
        patterns = list(patterns)
        return [event for event in self.events if any(_matches(p, event) for p in patterns)]

    def for_events(self, events: Iterable[str]) -> dict[Segments, FieldInfo]:
        """The fields of these events together (types and counts added up)."""
        merged: dict[Segments, FieldInfo] = {}
        for event in events:
            for path, info in self.events[event].fields.items():
                into = merged.setdefault(path, FieldInfo(path))
                into.merge(info)
        return merged


def _matches(pattern: str, event: str) -> bool:
    return pattern == "*" or pattern == event or (pattern.endswith("*") and event.startswith(pattern[:-1]))


def _walk(value: Any, path: tuple[str, ...] = (), depth: int = 0) -> Iterator[tuple[tuple[str, ...], Any]]:
    """Every (path, value) under `value`, list items under `[]`; bounded in items and depth."""
    if depth >= MAX_DEPTH:
        return
    if isinstance(value, Mapping):
        for key, item in value.items():
            inner = (*path, str(key))
            yield inner, item
            yield from _walk(item, inner, depth + 1)
    elif isinstance(value, list):
        inner = (*path, EACH)
        for item in value[:MAX_LIST_ITEMS]:
            yield inner, item
            yield from _walk(item, inner, depth + 1)


def lookup(fields: Mapping[Segments, FieldInfo], path: Segments) -> FieldInfo | None:
    """The field at `path` (`data.items.0.sku` is found as `data.items[].sku`), or None."""
    current: Segments = path[:1]
    if len(path) == 1:
        return FieldInfo(current, Counter(object=1))  # `data` or `payload` as a whole
    for segment in path[1:]:
        if (*current, segment) in fields:
            current = (*current, segment)
        elif segment.isdigit() and (*current, EACH) in fields:
            current = (*current, EACH)
        else:
            return None
    return fields.get(current)


def close_paths(fields: Mapping[Segments, FieldInfo], path: Segments) -> list[str]:
    """Paths of `fields` that `path` may have meant: a close spelling, or the same name elsewhere."""
    known: Segments = path[:1]
    for segment in path[1:]:
        step = (*known, segment) if (*known, segment) in fields else None
        if step is None and segment.isdigit() and (*known, EACH) in fields:
            step = (*known, EACH)
        if step is None:
            break
        known = step
    rest = path[len(known) :]
    if not rest:
        return []
    siblings = [p[-1] for p in fields if p[:-1] == known and p[-1] != EACH]
    close = difflib.get_close_matches(rest[0], siblings, n=1, cutoff=0.6)
    if close:
        guess = (*known, close[0], *rest[1:])
        return [written(guess if lookup(fields, guess) else (*known, close[0]))]
    names = sorted(written(p) for p in fields)
    whole = difflib.get_close_matches(written(path), names, n=1, cutoff=0.75)
    if whole:
        return whole
    # The same name somewhere else: a field of each item (`data.category` -> `data.items[].category`).
    elsewhere = {p[-1] for p in fields if p[:1] == path[:1] and p[-1] != EACH}
    names = difflib.get_close_matches(path[-1], sorted(elsewhere), n=1, cutoff=0.8)
    return sorted(written(p) for p in fields if names and p[-1] == names[0] and p[:1] == path[:1])[:3]
