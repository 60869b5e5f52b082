"""What the playground runs a draft on: a stored delivery, a fixture, or JSON pasted in.

Each becomes a `Delivery` and the moment it was received (the `now` of throttles and
`{{ now }}`), or a problem to show where the input was chosen. Pasted JSON is bounded in size
and a syntax error is located (line and column) as the loaders locate theirs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from engine.language.delivery import Delivery
from engine.language.fixtures import Fixture, load_fixtures
from engine.language.harness import recorded_at
from engine.store import Store

MAX_PASTED_BYTES = 1024 * 1024
PASTED_ID = "pasted-in-the-playground"


@dataclass(frozen=True, slots=True)
class Input:
    delivery: Delivery | None
    now: datetime | None = None
    label: str = ""
    problem: str | None = None


def fixtures(fixtures_dir: Path) -> list[Fixture]:
    if not fixtures_dir.is_dir():
        return []
    files, _problems = load_fixtures([fixtures_dir])
    return [fixture for file in files for fixture in file.fixtures]


def fixture_key(fixture: Fixture) -> str:
    return f"{fixture.file}#{fixture.index}"


async def chosen_input(form: Any, store: Store, fixtures_dir: Path) -> Input:
    source = form.get("source", "delivery")
    if source == "fixture":
        return _fixture(form.get("fixture", ""), fixtures_dir)
    if source == "json":
        return _pasted(form.get("payload", ""), form.get("event", "").strip())
    return await _stored(form.get("delivery_id", "").strip(), store)


async def _stored(delivery_id: str, store: Store) -> Input:
    if not delivery_id:
        return Input(None, problem="choose a stored delivery: give its id (the log lists them)")
    stored = await store.get(delivery_id)
    if stored is None:
        return Input(None, problem=f"no delivery {delivery_id!r} in the store")
    if stored.body is None:
        return Input(None, problem="its body was dropped by retention (BODY_RETENTION_DAYS): choose another")
    try:
        payload = json.loads(stored.body)
    except (ValueError, RecursionError):
        payload = None
    if not isinstance(payload, dict):
        return Input(None, problem="its stored body is not a JSON object: it cannot be replayed")
    delivery = Delivery(stored.event, stored.delivery_id, payload, dict(stored.headers))
    return Input(delivery, stored.received_at, f"delivery {stored.delivery_id}")


def _fixture(key: str, fixtures_dir: Path) -> Input:
    for fixture in fixtures(fixtures_dir):
        if fixture_key(fixture) == key:
            delivery = fixture.delivery
            return Input(delivery, recorded_at(delivery.payload), f"fixture {fixture.name}")
    return Input(None, problem=f"no fixture {key!r} under {fixtures_dir}: choose one from the list")


def _pasted(text: str, event: str) -> Input:
    if len(text.encode("utf-8", "surrogatepass")) > MAX_PASTED_BYTES:
        return Input(None, problem=f"the pasted JSON is over {MAX_PASTED_BYTES:,} bytes")
    if not text.strip():
        return Input(None, problem='paste a delivery\'s body: {"event": "item.low_stock", "data": {...}}')
    try:
        payload = json.loads(text)
    except json.JSONDecodeError as exc:
        return Input(None, problem=f"the pasted JSON, line {exc.lineno} column {exc.colno}: {exc.msg}")
    except (ValueError, RecursionError) as exc:
        return Input(None, problem=f"the pasted JSON cannot be read: {exc}")
    if not isinstance(payload, dict):
        return Input(None, problem="the pasted JSON must be an object, as a delivery's body is")
    named = event or payload.get("event")
    if not isinstance(named, str) or not named:
        return Input(None, problem='give the event (or an "event" key in the JSON), such as item.low_stock')
    delivery = Delivery(named, PASTED_ID, payload)
    return Input(delivery, recorded_at(payload), "pasted JSON")
