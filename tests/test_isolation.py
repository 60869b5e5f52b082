"""A test run leaves alone what it did not create: every Redis database, a PostgreSQL database.

tests/conftest.py plants the sentinels (tests/sentinels.py) when the session starts: a key in
each Redis database 0-15, a row in the PostgreSQL database `stockaj_sentinel`. The first test
here runs first and sees them planted; the last runs last and sees them untouched; and the
session itself fails when they are touched by then (with xdist, tests of the other worker may
still run after the last test: the session's own check covers them). The middle test shows
that the check sees a lost key and a dropped database.
"""

from __future__ import annotations

import uuid

import asyncpg
import pytest
import redis.asyncio as aioredis

from tests.conftest import planted_sentinels
from tests.sentinels import REDIS_DATABASES, Sentinels

pytestmark = [pytest.mark.redis, pytest.mark.postgres]


def _planted() -> Sentinels:
    planted = planted_sentinels()
    if planted is None:
        pytest.fail("the session planted no sentinels (tests/conftest.py: pytest_sessionstart)")
    return planted


async def test_the_sentinels_are_planted(redis_url: str, postgres_url: str) -> None:
    planted = _planted()

    assert planted.redis_databases == list(range(REDIS_DATABASES))
    assert planted.postgres_row
    assert await planted.touched() == []


async def test_the_sentinel_check_sees_a_lost_key_and_a_dropped_database(
    redis_url: str, postgres_url: str
) -> None:
    # Its own sentinels, in a database of its own: nothing of anyone else's is lost here.
    own = Sentinels(redis_url, postgres_url, database=f"t_{uuid.uuid4().hex[:16]}_sentinel")
    await own.plant()
    try:
        assert await own.touched() == []
        client = aioredis.from_url(redis_url.rsplit("/", 1)[0] + "/7")
        try:
            await client.delete(own.key)  # as FLUSHDB on database 7 would
        finally:
            await client.aclose()
        admin = await asyncpg.connect(postgres_url.replace("postgresql+asyncpg://", "postgresql://"))
        try:
            await admin.execute(f'DROP DATABASE "{own.database}" WITH (FORCE)')
        finally:
            await admin.close()

        touched = await own.touched()
    finally:
        own.postgres_row = False  # dropped above
        await own.remove()

    assert touched[0] == f"Redis database 7 lost the key {own.key} (flushed?)"
    assert touched[1].startswith(
        f"PostgreSQL database {own.database} cannot be opened: InvalidCatalogNameError"
    )
    assert len(touched) == 2


async def test_the_sentinels_are_untouched_at_the_end(redis_url: str, postgres_url: str) -> None:
    assert await _planted().touched() == []
