"""Where the field catalog comes from: fixture files, and stored deliveries on request."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from pathlib import Path

from engine.config import Settings
from engine.errors import SourceProblem
from engine.language.field_catalog import FieldCatalog
from engine.language.fixtures import load_fixtures


def fixture_catalog(paths: Sequence[Path]) -> tuple[FieldCatalog | None, list[SourceProblem]]:
    """The catalog of the fixtures under `paths`; None when there are none."""
    if not paths:
        return None, []
    files, problems = load_fixtures(paths)
    catalog = FieldCatalog("fixture")
    for file in files:
        for fixture in file.fixtures:
            catalog.add(fixture.delivery.event, fixture.delivery.payload)
    return (catalog if catalog else None), problems


def add_stored(catalog: FieldCatalog, settings: Settings, limit: int) -> int:
    """Add the newest `limit` stored deliveries whose body is kept; how many were added."""
    return asyncio.run(_add_stored(catalog, settings, limit))


async def _add_stored(catalog: FieldCatalog, settings: Settings, limit: int) -> int:
    from engine.pipeline.service import open_store  # the store only when asked for

    store = await open_store(settings)
    try:
        stored = await store.recent(None, limit)
    finally:
        await store.close()
    added = 0
    for delivery in stored:
        if delivery.body is None:
            continue  # dropped by retention
        try:
            payload = json.loads(delivery.body)
        except ValueError:
            continue
        if isinstance(payload, dict):
            catalog.add(delivery.event, payload)
            added += 1
    return added
