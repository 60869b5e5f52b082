"""Databases of a test's own: new PostgreSQL databases, and stores migrated once per session.

Migrating a store costs 0.1-0.4 s (Alembic on SQLite or PostgreSQL); a few hundred tests take
a migrated store. Each test process migrates one SQLite file and one PostgreSQL template
database once, and every such test gets a copy of its own: the file copied, the database
created from the template (`CREATE DATABASE ... TEMPLATE`). tests/store/test_migrations.py
still runs the migrations themselves.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import asyncpg

from engine.store import database

T = TypeVar("T")


def run_apart(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run `coroutine` to the end on a loop of its own, in a thread: the test's loop is left alone."""
    with ThreadPoolExecutor(1) as thread:
        return thread.submit(asyncio.run, coroutine).result()


def _admin_dsn(postgres_url: str) -> str:
    return postgres_url.replace("postgresql+asyncpg://", "postgresql://")


async def create_database(postgres_url: str, template: str | None = None) -> str:
    """A new database (`t_...`) on the server of `postgres_url`, empty or a copy of `template`; its URL."""
    name = f"t_{uuid.uuid4().hex[:16]}"
    admin = await asyncpg.connect(_admin_dsn(postgres_url))
    try:
        await admin.execute(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else ""))
    finally:
        await admin.close()
    return f"{postgres_url.rpartition('/')[0]}/{name}"


async def drop_database(postgres_url: str, url: str) -> None:
    admin = await asyncpg.connect(_admin_dsn(postgres_url))
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{url.rpartition("/")[2]}" WITH (FORCE)')
    finally:
        await admin.close()


async def migrate(url: str) -> None:
    engine = database.create_engine(url)
    try:
        await database.upgrade(engine)
    finally:
        await engine.dispose()  # no connection left: SQLite folds its WAL in, a template may be copied


async def migrated_sqlite_file(folder: Path) -> Path:
    path = folder / "migrated.db"
    await migrate(f"sqlite+aiosqlite:///{path}")
    if path.with_name(path.name + "-wal").exists():
        raise RuntimeError(f"{path}: its write-ahead log outlived the last connection; a copy would lose it")
    return path
