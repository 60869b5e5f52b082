"""Shared fixtures: the real PostgreSQL and Redis of this machine, when they answer.

A test that needs a service skips with the reason when the service is absent on
a developer's machine, and fails when `CI=true`: CI must never go green by
skipping what it was meant to prove.

Tests touch only what they create: a PostgreSQL database of their own, Redis keys and
connections that carry a queue name of their own (tests/redis_space.py). Sentinels planted
before the session and checked after it (tests/sentinels.py) show it: a run that flushes a
Redis database or drops a database it did not create fails.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import redis.asyncio as aioredis
from hypothesis import settings

from engine.queue import ArqQueue
from engine.store import Store, database
from tests.databases import create_database, drop_database, migrate, migrated_sqlite_file, run_apart
from tests.examples import PROFILE
from tests.redis_space import RedisSpace
from tests.sentinels import Sentinels

settings.load_profile(PROFILE)  # HYPOTHESIS_PROFILE=thorough: tests/examples.py

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


# --- sentinels: planted when the session starts, checked when it ends ---------------------------

SENTINELS = pytest.StashKey[Sentinels]()
# How the tests of tests/test_isolation.py, in this process or in xdist's workers, find them.
SENTINELS_VARIABLE = "STOCKAJ_TEST_SENTINELS"
FIRST, LAST = "test_the_sentinels_are_planted", "test_the_sentinels_are_untouched_at_the_end"


def pytest_sessionstart(session: pytest.Session) -> None:
    if hasattr(session.config, "workerinput"):  # an xdist worker: its controller planted them
        return
    planted = Sentinels(
        REDIS_URL if _answers(REDIS_URL, 6379) else None,
        POSTGRES_URL if _answers(POSTGRES_URL, 5432) else None,
    )
    asyncio.run(planted.plant())
    session.config.stash[SENTINELS] = planted
    os.environ[SENTINELS_VARIABLE] = json.dumps(
        {"run": planted.run, "redis": planted.redis_databases, "postgres": planted.postgres_row}
    )


def planted_sentinels() -> Sentinels | None:
    """This session's sentinels, as planted (None when the session planted none)."""
    given = os.environ.get(SENTINELS_VARIABLE)
    if given is None:
        return None
    fields = json.loads(given)
    return Sentinels(
        REDIS_URL,
        POSTGRES_URL,
        run=fields["run"],
        redis_databases=fields["redis"],
        postgres_row=fields["postgres"],
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The sentinels' first test runs first, their last one last."""
    items.sort(key=lambda item: {FIRST: 0, LAST: 2}.get(getattr(item, "originalname", ""), 1))


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Whatever ran, in any worker: a sentinel touched fails the session."""
    planted = session.config.stash.get(SENTINELS, None)
    if planted is None:
        return
    touched = asyncio.run(planted.touched())
    asyncio.run(planted.remove())
    if touched:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line("")
            for line in ["the test run touched what it did not create:", *touched]:
                reporter.write_line(line, red=True, bold=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


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
    url = await create_database(postgres_url)
    yield url
    await drop_database(postgres_url, url)


@pytest.fixture(scope="session")
def migrated_postgres_template(postgres_url: str) -> Iterator[str]:
    """A PostgreSQL database migrated once for this test process: the template of `store`'s."""
    url = run_apart(create_database(postgres_url))
    try:
        run_apart(migrate(url))
        yield url.rpartition("/")[2]
    finally:
        run_apart(drop_database(postgres_url, url))


@pytest.fixture(scope="session")
def migrated_sqlite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite store migrated once for this test process: `store` copies it."""
    return run_apart(migrated_sqlite_file(tmp_path_factory.mktemp("migrated")))


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
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A new database: a SQLite file, or a fresh database on the real PostgreSQL.

    Empty, unless the test takes `store` too: then it is a copy of a store migrated once
    per test process (tests/databases.py), `store`'s database.
    """
    migrated = "store" in request.fixturenames
    if request.param == "sqlite":
        path = tmp_path / "store.db"
        if migrated:
            shutil.copyfile(request.getfixturevalue("migrated_sqlite"), path)
        yield f"sqlite+aiosqlite:///{path}"
    else:
        yield request.getfixturevalue("migrated_postgres_url" if migrated else "fresh_postgres_url")


@pytest.fixture
def migrated_postgres_url(postgres_url: str, migrated_postgres_template: str) -> Iterator[str]:
    """A new PostgreSQL database, migrated (a copy of the template), dropped afterwards."""
    url = run_apart(create_database(postgres_url, migrated_postgres_template))
    yield url
    run_apart(drop_database(postgres_url, url))


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[Store]:
    """A migrated store on `database_url` (each storage test runs on SQLite and PostgreSQL)."""
    engine = database.create_engine(database_url)
    try:
        yield Store(engine)
    finally:
        await engine.dispose()


# tests/plugins/ holds whole plugin distributions with tests of their own: they run with the
# plugin installed (tests/test_example_plugin.py), not in this process.
collect_ignore = ["plugins"]
