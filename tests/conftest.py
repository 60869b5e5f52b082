"""Shared fixtures: the real PostgreSQL and Redis of this machine, when they answer.

A test that needs a service skips with the reason when the service is absent on
a developer's machine, and fails when `CI=true`: CI must never go green by
skipping what it was meant to prove.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import redis.asyncio as aioredis

from engine.queue import ArqQueue
from engine.store import Store, database
from tests.redis_space import RedisSpace

POSTGRES_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def _answers(url: str, default_port: int) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or default_port), 1):
            return True
    except OSError:
        return False


def _require(name: str, url: str, default_port: int) -> str:
    if _answers(url, default_port):
        return url
    message = f"{name} is not answering at {urlsplit(url).netloc}"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{message}; CI must run this test (start it: see .ci/run)")
    pytest.skip(f"{message}; start it to run this test")


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """URL of the real PostgreSQL (asyncpg driver)."""
    return _require("PostgreSQL", POSTGRES_URL, 5432)


@pytest.fixture(scope="session")
def redis_url() -> str:
    """URL of the real Redis."""
    return _require("Redis", REDIS_URL, 6379)


@pytest.fixture
async def fresh_postgres_url(postgres_url: str) -> AsyncIterator[str]:
    """A new, empty PostgreSQL database for one test, dropped afterwards."""
    import asyncpg

    name = f"t_{uuid.uuid4().hex[:16]}"
    admin_dsn = postgres_url.replace("postgresql+asyncpg://", "postgresql://")
    admin = await asyncpg.connect(admin_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    base, _, _ = postgres_url.rpartition("/")
    yield f"{base}/{name}"
    admin = await asyncpg.connect(admin_dsn)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture
async def redis_space(redis_url: str) -> AsyncIterator[RedisSpace]:
    """A queue of this test's own on the real Redis; its keys deleted afterwards, nothing else.

    The database is shared (TEST_REDIS_URL's): what the test makes carries its queue name
    (tests/redis_space.py), so tests in parallel, and an engine on the same Redis, never meet.
    """
    space = RedisSpace(redis_url)
    yield space
    client = aioredis.from_url(redis_url)
    try:
        await space.forget(client)
    finally:
        await client.aclose()


@pytest.fixture
async def redis(redis_space: RedisSpace) -> AsyncIterator[aioredis.Redis]:
    """A client of the test's Redis database: use the keys of `redis_space` only."""
    client = aioredis.Redis.from_url(redis_space.url)
    yield client
    await client.aclose()


@pytest.fixture
async def arq_queue(redis_space: RedisSpace) -> AsyncIterator[ArqQueue]:
    """The receivers' queue, the test's own."""
    queue = await ArqQueue.connect(redis_space.url, redis_space.queue_name)
    yield queue
    await queue.close()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A new, empty database: a SQLite file, or a fresh database on the real PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'store.db'}"
    url: str = request.getfixturevalue("fresh_postgres_url")
    return url


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[Store]:
    """A migrated store on `database_url` (each storage test runs on SQLite and PostgreSQL)."""
    engine = database.create_engine(database_url)
    try:
        await database.upgrade(engine)
        yield Store(engine)
    finally:
        await engine.dispose()
