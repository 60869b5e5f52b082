"""Whose turn it is on the embedded SQLite store's one connection: the intake's first.

SQLite has one writer at a time, so the store keeps one connection and every
transaction waits for it. In `serve` on SQLite the in-process workers share it
with the receiver; waiting in line behind a burst of worker transactions made
every webhook answer slower. Here a transaction that answers Stockaj (the
intake's group commit) goes before any worker transaction still waiting; the
workers catch up as soon as the intake has nothing to write.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class ConnectionTurns:
    """A lock with two lines: urgent waiters are let in before normal ones, each line in order."""

    def __init__(self) -> None:
        self._busy = False
        self._urgent: deque[asyncio.Future[None]] = deque()
        self._normal: deque[asyncio.Future[None]] = deque()

    @asynccontextmanager
    async def turn(self, urgent: bool = False) -> AsyncIterator[None]:
        if self._busy or self._urgent or (self._normal and not urgent):
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            (self._urgent if urgent else self._normal).append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    self._next()  # handed the turn just as it was cancelled: pass it on
                raise
        else:
            self._busy = True
        try:
            yield
        finally:
            self._next()

    def _next(self) -> None:
        """Hand the connection to the first waiter still waiting, urgent ones first."""
        for line in (self._urgent, self._normal):
            while line:
                waiter = line.popleft()
                if not waiter.done():
                    waiter.set_result(None)  # still busy: the turn goes straight to this waiter
                    return
        self._busy = False
