"""The SQLite intake's own connection, written from the event loop without a thread hop.

aiosqlite runs each statement in a thread of its own and hands the result back
to the event loop, and under load every hand-over waits for the GIL that the
loop holds. An intake batch is one INSERT and a COMMIT on a WAL database, whose
one fsync took 0.1 to 0.5 ms on the benchmark machine's disk: a fraction of a
millisecond for the whole batch. So it runs on the loop, on a second connection
to the same file, while the store's urgent turn keeps this process's other
transactions out.

This connection, alone, syncs every commit (synchronous=FULL): the receiver answers
2xx once the commit returns, and Stockaj does not send an acknowledged delivery
again, so it must survive a power loss. The WAL is written in order, so that sync
also makes every earlier commit of the workers durable. The workers' own commits
(synchronous=NORMAL) may roll back in a power loss, which can run an action again,
as a crash between the action and its record would. Syncing those too pushed
`serve` past its capacity at 400 deliveries/s (bench/README.md). Measured under wrk, this
connection against the store's aiosqlite one, runs alternating: 1,885 vs 1,454
and 2,300 vs 1,658 requests/s (bench/README.md).

Another process may hold SQLite's write lock (a `worker`, a CLI `redeliver`).
The loop never waits for it: the attempt on the loop gives up at once when the
lock is taken, and the batch is then written from a thread that waits as long
as the store's own connection would.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Sequence
from functools import partial
from typing import Any

from engine.store.database import BUSY_TIMEOUT_MS, sqlite_pragmas


class SQLiteIntakeWriter:
    """One sqlite3 connection that runs an INSERT ... RETURNING in a transaction of its own."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._connection: sqlite3.Connection | None = None

    def _open(self) -> sqlite3.Connection:
        if self._connection is None:
            # Autocommit mode: the transactions are this class's own BEGIN IMMEDIATE ... COMMIT.
            # Used from the loop and, when the lock is taken, from one thread at a time.
            connection = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
            sqlite_pragmas(connection, None)
            connection.execute("PRAGMA synchronous=FULL")  # see the module's docstring
            connection.execute("PRAGMA busy_timeout=0")
            self._connection = connection
        return self._connection

    async def insert_returning(self, statement: str, parameters: Sequence[Any]) -> list[Any]:
        """The first column of the rows `statement` returns, committed; the caller holds the turn."""
        connection = self._open()
        try:
            return _write(connection, statement, parameters)
        except sqlite3.Error as exc:
            if getattr(exc, "sqlite_errorcode", None) != sqlite3.SQLITE_BUSY:
                self.close()  # the next batch opens the file afresh (it may have been replaced)
                raise
        # Another process is writing: wait for it off the loop, as long as any store query would.
        connection.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        waiting = asyncio.ensure_future(asyncio.to_thread(_write, connection, statement, parameters))
        try:
            rows = await asyncio.shield(waiting)
        except asyncio.CancelledError:
            # The thread still holds the connection: leave it to finish there, then close it.
            self._connection = None
            waiting.add_done_callback(partial(_close_when_done, connection))
            raise
        except BaseException:
            self.close()
            raise
        connection.execute("PRAGMA busy_timeout=0")
        return rows

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None


def _close_when_done(connection: sqlite3.Connection, write: asyncio.Future[list[Any]]) -> None:
    if not write.cancelled():
        write.exception()  # retrieved: whatever became of it, its caller was already answered
    connection.close()


def _write(connection: sqlite3.Connection, statement: str, parameters: Sequence[Any]) -> list[Any]:
    connection.execute("BEGIN IMMEDIATE")
    try:
        rows = [row[0] for row in connection.execute(statement, parameters)]
    except BaseException:
        connection.execute("ROLLBACK")
        raise
    connection.execute("COMMIT")
    return rows
