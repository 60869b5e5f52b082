"""Database engines and migrations, for SQLite (embedded) and PostgreSQL alike.

SQLite runs in WAL mode behind a single connection: it has one writer at a
time anyway, and a pool of connections only makes them fight over the lock.
Migrations are Alembic's (`engine/store/migrations/`), applied by `stockaj-rules db
upgrade`, or at start-up by the embedded mode.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

MIGRATIONS = Path(__file__).parent / "migrations"
# How long a SQLite statement waits for another connection's write lock.
BUSY_TIMEOUT_MS = 30_000


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def create_engine(url: str) -> AsyncEngine:
    """An async engine for the store at `url`.

    PostgreSQL connections are not pinged at checkout (`pool_pre_ping`): that is a round
    trip per transaction, as much as a whole intake batch costs. A connection the server
    dropped (PostgreSQL restarted) fails its first use instead; SQLAlchemy then replaces
    every pooled connection, the intake writes that batch again on a fresh one, and a
    worker's job is retried (engine/pipeline/runners.py).
    """
    if not is_sqlite(url):
        return create_async_engine(url, pool_size=10, max_overflow=10, hide_parameters=True)
    # hide_parameters: an error message must never carry a payload or a signature into a log.
    engine = create_async_engine(
        url, pool_size=1, max_overflow=0, connect_args={"timeout": 30}, hide_parameters=True
    )
    event.listen(engine.sync_engine, "connect", sqlite_pragmas)
    return engine


def sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    """Every SQLite connection's settings: the busy timeout, foreign keys, WAL, synchronous=NORMAL."""
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        _use_wal(cursor)
        # Durable across a crash of the process; the last commits may roll back in a power loss.
        # The receiver's own connection syncs each commit (engine/store/sqlite_writer.py).
        cursor.execute("PRAGMA synchronous=NORMAL")
    finally:
        cursor.close()


def _use_wal(cursor: Any) -> None:
    """Put the database file in WAL mode, which it keeps.

    Connections opening a brand-new file at once race to switch it; a loser must not
    wait for the lock (every WAL connection holds the file shared, so it would wait
    for the full busy timeout): it looks again and finds the winner's WAL.
    """
    for _ in range(100):  # each try waits up to 50 ms for the lock, in SQLite's thread
        cursor.execute("PRAGMA journal_mode")
        if str(cursor.fetchone()[0]).lower() == "wal":
            return
        cursor.execute("PRAGMA busy_timeout=50")
        try:
            cursor.execute("PRAGMA journal_mode=WAL")  # an in-memory database answers "memory": fine
            return
        except sqlite3.OperationalError:
            continue
        finally:
            cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    raise sqlite3.OperationalError("could not switch the SQLite database to WAL mode: it stays locked")


def _alembic_config(connection: Connection) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


# Any constant will do: every upgrader of one PostgreSQL database takes this lock in turn.
_UPGRADE_LOCK = 0x53544F434B414A  # "STOCKAJ"


def _migrate(connection: Connection) -> None:
    command.upgrade(_alembic_config(connection), "head")


async def upgrade(engine: AsyncEngine) -> None:
    """Apply every migration not yet applied, in one transaction, one upgrader at a time.

    Several replicas may run `db upgrade` as they start: the second waits for the
    first, then finds nothing left to do.
    """
    if engine.dialect.name == "sqlite":
        await _upgrade_sqlite(engine)
        return
    async with engine.begin() as connection:
        if engine.dialect.name == "postgresql":
            await connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _UPGRADE_LOCK})
        await connection.run_sync(_migrate)


async def _upgrade_sqlite(engine: AsyncEngine) -> None:
    """SQLite needs three things Alembic leaves to the caller.

    Foreign keys off while migrating: a batch migration rebuilds a table by dropping
    the old one, and with foreign keys on, that drop cascades into every table that
    references it (the whole delivery log). An explicit BEGIN: Python's sqlite3 runs
    DDL outside any transaction, so a migration failing halfway would leave half of
    it applied. IMMEDIATE: concurrent upgraders queue for the write lock up front.
    """
    async with engine.connect() as connection:
        await connection.exec_driver_sql("PRAGMA foreign_keys=OFF")  # a no-op inside a transaction
        await connection.commit()
        try:
            await connection.exec_driver_sql("BEGIN IMMEDIATE")
            await connection.run_sync(_migrate)
            await connection.run_sync(_check_foreign_keys)
            await connection.commit()
        except BaseException:
            await connection.rollback()
            raise
        finally:
            try:
                await connection.exec_driver_sql("PRAGMA foreign_keys=ON")
                await connection.commit()
            except Exception:
                await connection.invalidate()  # never give the pool back a connection without them
                raise


def _check_foreign_keys(connection: Connection) -> None:
    broken = connection.exec_driver_sql("PRAGMA foreign_key_check").all()
    if broken:
        tables = sorted({str(row[0]) for row in broken})
        raise RuntimeError(
            f"a migration left {len(broken)} row(s) referencing missing rows in {', '.join(tables)}; "
            "nothing was applied: fix the migration"
        )


async def schema_is_current(engine: AsyncEngine) -> bool:
    """True when the database is at the newest migration."""

    def check(connection: Connection) -> bool:
        current = MigrationContext.configure(connection).get_current_heads()
        head = ScriptDirectory.from_config(_alembic_config(connection)).get_heads()
        return set(current) == set(head)

    async with engine.connect() as connection:
        return await connection.run_sync(check)
