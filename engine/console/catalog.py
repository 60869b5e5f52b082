"""The payload fields the playground's editor offers after `data.`: seen in fixtures and the log.

A small catalog of its own (paths, JSON types, one example each, per event), built from the
fixtures folder and the most recent stored deliveries and kept for a minute. When the
engine's own payload-field catalog (`stockaj-rules fields`, SPEC section 14) lands, this is
the place to read it instead.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.language.fixtures import load_fixtures

MAX_DEPTH = 6
MAX_PATHS = 2_000
EXAMPLE_CHARS = 40
KEEP_SECONDS = 60.0


@dataclass(frozen=True, slots=True)
class Field:
    path: str
    type: str
    example: str


@dataclass(slots=True)
class Catalog:
    by_event: dict[str, dict[str, Field]] = field(default_factory=dict)

    def add(self, event: str, payload: dict[str, Any]) -> None:
        fields = self.by_event.setdefault(event, {})
        context = {"data": payload.get("data", {}), "payload": payload}
        for path, value in _walk(context, "", 0):
            if len(fields) < MAX_PATHS and path not in fields:
                fields[path] = Field(path, _json_type(value), _example(value))

    def fields(self, event: str | None) -> list[Field]:
        """The fields of `event` (every event's when None or unknown), by path."""
        chosen = [self.by_event[event]] if event in self.by_event else list(self.by_event.values())
        merged: dict[str, Field] = {}
        for fields in chosen:
            for path, found in fields.items():
                merged.setdefault(path, found)
        return [merged[path] for path in sorted(merged)]


def build(fixtures_dir: Path, stored: Iterable[tuple[str, bytes]]) -> Catalog:
    catalog = Catalog()
    if fixtures_dir.is_dir():
        files, _problems = load_fixtures([fixtures_dir])
        for fixture in (f for file in files for f in file.fixtures):
            catalog.add(fixture.delivery.event, fixture.delivery.payload)
    for event, body in stored:
        try:
            payload = json.loads(body)
        except (ValueError, RecursionError):
            continue
        if isinstance(payload, dict):
            catalog.add(event, payload)
    return catalog


class CachedCatalog:
    """The catalog, built again when older than KEEP_SECONDS."""

    def __init__(self) -> None:
        self._catalog: Catalog | None = None
        self._built = 0.0

    def fresh(self) -> Catalog | None:
        if self._catalog is not None and time.monotonic() - self._built < KEEP_SECONDS:
            return self._catalog
        return None

    def keep(self, catalog: Catalog) -> None:
        self._catalog, self._built = catalog, time.monotonic()


def _walk(value: Any, prefix: str, depth: int) -> Iterable[tuple[str, Any]]:
    if depth > MAX_DEPTH:
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str) or not key.isidentifier():
                continue
            path = f"{prefix}.{key}" if prefix else key
            if depth > 0:
                yield path, item
            yield from _walk(item, path, depth + 1)
    elif isinstance(value, list) and value:
        yield from _walk(value[0], f"{prefix}[0]", depth + 1)


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    return {str: "string", list: "list", dict: "object", type(None): "null"}.get(type(value), "value")


def _example(value: Any) -> str:
    if isinstance(value, dict | list):
        return f"{len(value)} item(s)" if isinstance(value, list) else "{…}"
    shown = json.dumps(value, ensure_ascii=False)
    return shown if len(shown) <= EXAMPLE_CHARS else shown[: EXAMPLE_CHARS - 1] + "…"
