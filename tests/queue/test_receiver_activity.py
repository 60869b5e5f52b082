"""ReceiverActivity: when the receiver of this process is quiet, and when it is busy."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

import pytest

from engine.queue.receiver_activity import BUSY_REQUESTS_IN_HAND, ReceiverActivity

WINDOW = 0.02


async def _until(condition: Callable[[], bool], within: float = 2.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not condition():
        assert loop.time() < deadline, "not within the timeout"
        await asyncio.sleep(0.001)


async def test_requests_in_hand_are_averaged_over_the_last_window() -> None:
    activity = ReceiverActivity(window_seconds=WINDOW)
    await asyncio.sleep(WINDOW)
    assert activity.requests_in_hand() == 0.0  # a window with none in hand

    with activity.receiving(), activity.receiving():
        await asyncio.sleep(WINDOW * 2)
        # The window began before the two came in, and its average has them for most of it.
        assert 1.0 <= activity.requests_in_hand() <= 2.0
        await asyncio.sleep(WINDOW)
        assert activity.requests_in_hand() == pytest.approx(2.0)  # a whole window with both in hand
    await asyncio.sleep(WINDOW)
    assert 0.0 < activity.requests_in_hand() < 1.0  # both left soon after this window began


async def test_busy_takes_requests_queued_up_and_no_pause() -> None:
    activity = ReceiverActivity(window_seconds=WINDOW)
    queued_up = int(BUSY_REQUESTS_IN_HAND)
    with contextlib.ExitStack() as in_hand:
        for _ in range(queued_up - 1):
            in_hand.enter_context(activity.receiving())
        await asyncio.sleep(WINDOW)
        assert not activity.busy()  # one fewer than a queue

        in_hand.enter_context(activity.receiving())
        in_hand.enter_context(activity.receiving())
        await asyncio.sleep(WINDOW)
        assert activity.busy()
    await _until(activity.quiet.is_set)
    assert not activity.busy()  # a pause: the average of the last window does not matter


async def test_a_steady_stream_is_never_quiet_and_never_busy() -> None:
    """One request after the other: nothing queues up, and no pause comes."""
    activity = ReceiverActivity(window_seconds=WINDOW)
    streaming = True
    seen: list[tuple[bool, bool]] = []

    async def stream() -> None:
        while streaming:
            with activity.receiving():
                await asyncio.sleep(0.001)

    task = asyncio.create_task(stream())
    try:
        for _ in range(20):
            await asyncio.sleep(WINDOW / 2)
            seen.append((activity.quiet.is_set(), activity.busy()))
    finally:
        streaming = False
        await task
    assert seen == [(False, False)] * 20


async def test_the_receiver_goes_quiet_while_the_loop_is_busy_with_long_steps() -> None:
    activity = ReceiverActivity()
    stepping_on = True

    async def long_steps() -> None:
        while stepping_on:
            time.sleep(0.005)  # noqa: ASYNC251 - a worker matching many rules: 5 ms, no yield
            await asyncio.sleep(0)

    stepping = asyncio.create_task(long_steps())
    try:
        with activity.receiving():
            assert not activity.quiet.is_set()
        # No request comes: the workers must not wait for a loop that is never idle.
        await _until(activity.quiet.is_set)
    finally:
        stepping_on = False
        await stepping
        activity.close()
