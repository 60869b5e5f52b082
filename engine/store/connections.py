"""How the store's queries get a connection: PostgreSQL's pool, or SQLite's one connection in turns.

`StoreConnections` is the base of every part of the `Store` (engine/store/__init__.py):
the engine, the transaction helpers, and the SQLite-specific pieces (the turns of
engine/store/sqlite_connection_turns.py, the intake's own connection of
engine/store/sqlite_writer.py).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager, nullcontext
from typing import Any

from sqlalchemy import Table, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.types import TypeEngine

from engine.store.sqlite_connection_turns import ConnectionTurns
from engine.store.sqlite_writer import SQLiteIntakeWriter


class StoreConnections:
    """One database's engine, and the transactions the store's queries run in."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.sqlite_store = engine.dialect.name == "sqlite"
        # SQLite's one connection goes to the intake before the workers; PostgreSQL has a pool.
        self._turns = ConnectionTurns() if self.sqlite_store else None
        # SQLite: the intake writes on its own connection, from the loop (engine/store/sqlite_writer.py).
        database = engine.url.database
        self._intake_writer = (
            SQLiteIntakeWriter(database)
            if self.sqlite_store and database and database != ":memory:" and not database.startswith("file:")
            else None
        )

    def _insert(self, table: Table) -> postgresql.Insert | sqlite.Insert:
        """An INSERT of this dialect, for its ON CONFLICT clauses."""
        if self.sqlite_store:
            return sqlite.insert(table)
        return postgresql.insert(table)

    @asynccontextmanager
    async def _begin(self, urgent: bool = False) -> AsyncIterator[AsyncConnection]:
        """A transaction; `urgent` for those a webhook answer waits for."""
        async with self._turn(urgent), self.engine.begin() as connection:
            yield connection

    @asynccontextmanager
    async def _connect(self, urgent: bool = False) -> AsyncIterator[AsyncConnection]:
        async with self._turn(urgent), self.engine.connect() as connection:
            yield connection

    @asynccontextmanager
    async def _autocommit(self, urgent: bool = False) -> AsyncIterator[AsyncConnection]:
        """For statements that are atomic by themselves: on PostgreSQL, no BEGIN and COMMIT
        round trips around them (on SQLite they cost no round trip: a plain transaction)."""
        if self._turns is not None:
            async with self._begin(urgent) as connection:
                yield connection
            return
        async with self.engine.connect() as connection:
            await connection.execution_options(isolation_level="AUTOCOMMIT")
            yield connection

    def _turn(self, urgent: bool) -> AbstractAsyncContextManager[None]:
        return self._turns.turn(urgent) if self._turns is not None else nullcontext()

    async def close(self) -> None:
        """Close every connection this store holds; it opens new ones if it is used again."""
        if self._intake_writer is not None:
            self._intake_writer.close()
        await self.engine.dispose()

    async def ping(self) -> None:
        async with self._connect(urgent=True) as connection:
            await connection.execute(select(1))


def converter(column_type: TypeEngine[Any], dialect: Dialect) -> Callable[[Any], Any]:
    """What SQLAlchemy does to a value bound to a column of this type, as one function."""
    process = column_type.dialect_impl(dialect).bind_processor(dialect)
    return process if process is not None else (lambda value: value)
