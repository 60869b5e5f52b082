"""Sentinels: what a test run must leave as it found it, planted before the run, checked after.

A key in every Redis database (0-15) and a row in a PostgreSQL database the tests did not
create (`stockaj_sentinel`): a test that flushes a database, drops one, or kills what it did
not start shows here. The suite plants them when the session starts and checks them when it
ends (tests/conftest.py); tests/test_isolation.py holds the tests that read them.
"""

from __future__ import annotations

import contextlib
import uuid
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import redis.asyncio as aioredis
import redis.exceptions

SENTINEL_DATABASE = "stockaj_sentinel"
KEY_PREFIX = "stockaj-test-sentinel:"
REDIS_DATABASES = 16
KEY_SECONDS = 6 * 3600  # a run that never ended leaves nothing behind for long


def _database_url(url: str, index: int) -> str:
    base = url.rsplit("/", 1)[0] if url.count("/") > 2 else url
    return f"{base}/{index}"


def _dsn(postgres_url: str, database: str | None = None) -> str:
    dsn = postgres_url.replace("postgresql+asyncpg://", "postgresql://")
    return dsn if database is None else f"{dsn.rsplit('/', 1)[0]}/{database}"


@dataclass
class Sentinels:
    """This run's sentinels; `planted` says where they are (nothing when a service is absent)."""

    redis_url: str | None
    postgres_url: str | None
    database: str = SENTINEL_DATABASE
    run: str = field(default_factory=lambda: uuid.uuid4().hex)
    redis_databases: list[int] = field(default_factory=list)
    postgres_row: bool = False

    @property
    def key(self) -> str:
        return KEY_PREFIX + self.run

    async def plant(self) -> None:
        if self.redis_url:
            with contextlib.suppress(OSError, redis.exceptions.ConnectionError):
                await self._plant_redis(self.redis_url)
        if self.postgres_url:
            with contextlib.suppress(OSError):
                await self._plant_postgres(self.postgres_url)

    async def _plant_redis(self, url: str) -> None:
        for index in range(REDIS_DATABASES):
            client = aioredis.from_url(_database_url(url, index))
            try:
                await client.set(self.key, self.run, ex=KEY_SECONDS)
                self.redis_databases.append(index)
            except redis.exceptions.ResponseError:  # a Redis with fewer databases: those it has
                break
            finally:
                await client.aclose()

    async def _plant_postgres(self, url: str) -> None:
        admin = await asyncpg.connect(_dsn(url))
        try:
            with contextlib.suppress(asyncpg.DuplicateDatabaseError):  # there already, or a parallel run's
                await admin.execute(f'CREATE DATABASE "{self.database}"')
        finally:
            await admin.close()
        connection = await asyncpg.connect(_dsn(url, self.database))
        try:
            with contextlib.suppress(asyncpg.UniqueViolationError, asyncpg.DuplicateTableError):
                await connection.execute(
                    "CREATE TABLE IF NOT EXISTS sentinel (run text PRIMARY KEY, planted_at timestamptz NOT NULL)"
                )
            await connection.execute("DELETE FROM sentinel WHERE planted_at < now() - interval '1 day'")
            await connection.execute("INSERT INTO sentinel VALUES ($1, now())", self.run)
            self.postgres_row = True
        finally:
            await connection.close()

    async def touched(self) -> list[str]:
        """What is no longer as planted, one line each; empty when everything is."""
        problems: list[str] = []
        if self.redis_url:
            for index in self.redis_databases:
                client = aioredis.from_url(_database_url(self.redis_url, index))
                try:
                    if await client.get(self.key) != self.run.encode():
                        problems.append(f"Redis database {index} lost the key {self.key} (flushed?)")
                finally:
                    await client.aclose()
        if self.postgres_url and self.postgres_row:
            problems += await self._postgres_problems(self.postgres_url)
        return problems

    async def _postgres_problems(self, url: str) -> list[str]:
        try:
            connection = await asyncpg.connect(_dsn(url, self.database))
        except (asyncpg.InvalidCatalogNameError, OSError) as exc:
            return [f"PostgreSQL database {self.database} cannot be opened: {type(exc).__name__}: {exc}"]
        try:
            row: Any = await connection.fetchval("SELECT run FROM sentinel WHERE run = $1", self.run)
        except asyncpg.PostgresError as exc:
            return [f"PostgreSQL database {self.database}: {type(exc).__name__}: {exc}"]
        finally:
            await connection.close()
        return (
            [] if row == self.run else [f"PostgreSQL database {self.database} lost the row of run {self.run}"]
        )

    async def remove(self) -> None:
        """Take this run's sentinels away (the database stays: it stands for one the tests did not make)."""
        if self.redis_url:
            for index in self.redis_databases:
                client = aioredis.from_url(_database_url(self.redis_url, index))
                try:
                    await client.delete(self.key)
                finally:
                    await client.aclose()
        if self.postgres_url and self.postgres_row:
            with contextlib.suppress(OSError, asyncpg.PostgresError):
                connection = await asyncpg.connect(_dsn(self.postgres_url, self.database))
                try:
                    await connection.execute("DELETE FROM sentinel WHERE run = $1", self.run)
                finally:
                    await connection.close()
