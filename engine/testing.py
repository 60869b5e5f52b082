"""Helpers for tests: the project's own, and those of action plugins (docs/plugins.md).

- `FakeClock`: a clock that moves only when told, for actions, the worker and the sweeper.
- `action_context(MyAction, settings={...}, allow=[...])`: an `ActionContext` to call an
  action's `run` with; its settings are read and checked as engine/config.py reads them.
- `migrated_store(folder_or_url)`: the engine's store on a new SQLite file (or a database
  URL), migrated as `stockaj-rules db upgrade` does; `migrate(url)` for synchronous tests.

Nothing here reads the environment or starts a server; outgoing HTTP goes through an
ordinary `httpx.AsyncClient`, so respx can answer for the other side.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy.ext.asyncio import create_async_engine

from actions.base import Action, ActionContext, Clock, DatabaseEngines, Origin
from engine.config import load_settings
from engine.language.outgoing_urls import allowed_origins
from engine.plugins import plugin_of
from engine.store import Store, database

__all__ = ["T0", "FakeClock", "action_context", "migrate", "migrated_store", "sqlite_url"]

# Where a `FakeClock` starts unless told otherwise: a fixed, aware UTC time.
T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)


class FakeClock:
    """A clock that moves only when told: call it for the time, `advance()` it, or set `now`."""

    def __init__(self, now: datetime = T0) -> None:
        if now.tzinfo is None:
            raise ValueError(f"FakeClock needs an aware time, got {now.isoformat()}; add tzinfo=UTC")
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> datetime:
        """Move on by `seconds`; the new time."""
        self.now += timedelta(seconds=seconds)
        return self.now


@asynccontextmanager
async def action_context(
    action: type[Action[Any]] | None = None,
    *,
    settings: Mapping[str, str] | None = None,
    allow: Iterable[str] = (),
    http: httpx.AsyncClient | None = None,
    clock: Clock | None = None,
    delivery_id: str = "dlv-test-1",
    rule_id: str = "test-rule",
    action_index: int = 0,
) -> AsyncIterator[ActionContext]:
    """A context to call `action`'s `run` with, as the worker gives one; closed on the way out.

    `settings`: values of the settings `action` declares, as environment variables (checked
    by their kinds, as configuration is; a setting left out is unset). `allow`: URLs whose
    origins requests may go to, besides those of the URL settings the action falls back
    on (in the engine, the rule's URLs decide). `http`: a client of your own, else a plain
    `httpx.AsyncClient` (respx answers for it). `clock`: a `FakeClock` at `T0` unless given.
    """
    values: Mapping[str, str | int | None] = {}
    origins: frozenset[Origin] = frozenset(_origin(url) for url in allow)
    if action is not None:
        values = _checked_settings(action, settings or {})
        origins |= allowed_origins(action(), {}, values)
    elif settings:
        raise ValueError("settings are read for an action: pass the action class first")
    client = http or httpx.AsyncClient()
    databases = DatabaseEngines(create_async_engine)
    try:
        yield ActionContext(
            http=client,
            databases=databases,
            delivery_id=delivery_id,
            rule_id=rule_id,
            action_index=action_index,
            clock=clock or FakeClock(),
            allowed_origins=origins,
            settings=values,
        )
    finally:
        await databases.dispose()
        if http is None:
            await client.aclose()


def _checked_settings(action: type[Action[Any]], given: Mapping[str, str]) -> Mapping[str, str | int | None]:
    plugin = plugin_of(action)
    declared = [setting.variable for setting in plugin.settings]
    unknown = sorted(set(given) - set(declared))
    if unknown:
        raise ValueError(
            f"{', '.join(unknown)}: not a setting of {action.__qualname__}, which declares "
            f"{', '.join(declared) or 'none'}; declare it in the action's settings"
        )
    return load_settings(given, plugins=[plugin]).plugins.for_action(action)


def _origin(url: str) -> Origin:
    origin = Origin.of(url)
    if origin is None:
        raise ValueError(
            f"allow: {url!r} is not an absolute http(s) URL; write e.g. https://api.example.com/"
        )
    return origin


def sqlite_url(folder: Path, name: str = "store.db") -> str:
    """The URL of a SQLite file `name` in `folder`, with the driver the store uses."""
    return f"sqlite+aiosqlite:///{folder / name}"


@asynccontextmanager
async def migrated_store(where: Path | str) -> AsyncIterator[Store]:
    """The store on a new SQLite file in the folder `where` (or on the database URL `where`), migrated."""
    engine = database.create_engine(sqlite_url(where) if isinstance(where, Path) else where)
    try:
        await database.upgrade(engine)
        yield Store(engine)
    finally:
        await engine.dispose()


def migrate(url: str) -> str:
    """Apply every migration to the database at `url` (outside an event loop); `url`."""

    async def upgrade() -> None:
        engine = database.create_engine(url)
        try:
            await database.upgrade(engine)
        finally:
            await engine.dispose()

    asyncio.run(upgrade())
    return url
