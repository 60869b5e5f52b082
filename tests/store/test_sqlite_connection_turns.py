"""ConnectionTurns: the intake's transactions go before waiting worker transactions."""

from __future__ import annotations

import asyncio

import pytest

from engine.store.sqlite_connection_turns import ConnectionTurns


async def _take(
    turns: ConnectionTurns, name: str, urgent: bool, order: list[str], hold: asyncio.Event
) -> None:
    async with turns.turn(urgent):
        order.append(name)
        await hold.wait()


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_urgent_waiters_go_before_normal_ones_each_line_in_order() -> None:
    turns = ConnectionTurns()
    order: list[str] = []
    release = asyncio.Event()
    release.set()
    first_hold = asyncio.Event()
    first = asyncio.create_task(_take(turns, "worker-1", False, order, first_hold))
    await _settle()
    waiting = [
        asyncio.create_task(_take(turns, name, urgent, order, release))
        for name, urgent in [("worker-2", False), ("intake-1", True), ("worker-3", False), ("intake-2", True)]
    ]
    await _settle()
    assert order == ["worker-1"]  # the rest wait for the one connection

    first_hold.set()
    await asyncio.gather(first, *waiting)

    assert order == ["worker-1", "intake-1", "intake-2", "worker-2", "worker-3"]


async def test_a_normal_newcomer_waits_behind_normal_waiters_but_an_urgent_one_does_not() -> None:
    turns = ConnectionTurns()
    order: list[str] = []
    hold = asyncio.Event()
    holder = asyncio.create_task(_take(turns, "holder", False, order, hold))
    queued = asyncio.create_task(_take(turns, "queued", False, order, asyncio.Event()))
    await _settle()
    hold.set()
    await holder
    await _settle()
    assert order == ["holder", "queued"]  # handed over directly: a newcomer cannot cut in
    queued.cancel()
    with pytest.raises(asyncio.CancelledError):
        await queued

    async with turns.turn(urgent=False):
        order.append("after")
    assert order[-1] == "after"


async def test_a_cancelled_waiter_leaves_the_line_and_the_turn_moves_on() -> None:
    turns = ConnectionTurns()
    order: list[str] = []
    hold = asyncio.Event()
    done = asyncio.Event()
    done.set()
    holder = asyncio.create_task(_take(turns, "holder", False, order, hold))
    await _settle()
    gone = asyncio.create_task(_take(turns, "gone", True, order, done))
    kept = asyncio.create_task(_take(turns, "kept", False, order, done))
    await _settle()
    gone.cancel()
    with pytest.raises(asyncio.CancelledError):
        await gone

    hold.set()
    await asyncio.gather(holder, kept)

    assert order == ["holder", "kept"]
    async with asyncio.timeout(1):  # the connection is free again
        async with turns.turn():
            pass


async def test_a_waiter_cancelled_as_it_gets_the_turn_passes_it_on() -> None:
    turns = ConnectionTurns()
    order: list[str] = []
    done = asyncio.Event()
    done.set()
    async with turns.turn():
        unlucky = asyncio.create_task(_take(turns, "unlucky", True, order, done))
        next_one = asyncio.create_task(_take(turns, "next", False, order, done))
        await _settle()
    # Leaving the turn handed it to `unlucky`; it is cancelled before it could run.
    unlucky.cancel()

    with pytest.raises(asyncio.CancelledError):
        await unlucky
    async with asyncio.timeout(1):
        await next_one

    assert order == ["next"]
