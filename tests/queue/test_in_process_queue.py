"""InProcessQueue: in-process workers yield to a busy receiver of the same process."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterator

from engine.queue.in_process import YIELD_SECONDS, InProcessQueue
from engine.queue.receiver_activity import ReceiverActivity

WINDOW = 0.01


class Recorder:
    def __init__(self, seconds_each: float = 0.0) -> None:
        self.started: list[str] = []
        self._seconds_each = seconds_each

    async def __call__(self, delivery_id: str) -> float | None:
        self.started.append(delivery_id)
        await asyncio.sleep(self._seconds_each)
        return None


async def _settle(seconds: float = 0.0) -> None:
    await asyncio.sleep(seconds)
    for _ in range(5):
        await asyncio.sleep(0)


async def _until(condition: Callable[[], bool], within: float = 2.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not condition():
        assert loop.time() < deadline, "not within the timeout"
        await asyncio.sleep(0)


async def test_without_a_receiver_deliveries_start_at_once() -> None:
    process = Recorder()
    queue = InProcessQueue(process, concurrency=4)
    try:
        await queue.enqueue(["a", "b", "c"])
        await _settle()
        assert sorted(process.started) == ["a", "b", "c"]
    finally:
        await queue.close()


@contextlib.asynccontextmanager
async def beside_a_receiver(process: Recorder) -> AsyncIterator[tuple[InProcessQueue, ReceiverActivity]]:
    """An InProcessQueue of 4 tasks yielding to a receiver's activity, as `serve` builds them."""
    queue = InProcessQueue(process, concurrency=4)
    activity = ReceiverActivity(window_seconds=WINDOW)
    queue.yield_to(activity)
    try:
        yield queue, activity
    finally:
        await queue.close()
        activity.close()


@contextlib.contextmanager
def requests_queued_up(activity: ReceiverActivity, count: int = 8) -> Iterator[None]:
    """A burst: `count` requests in hand at once, waiting for their writes."""
    with contextlib.ExitStack() as in_hand:
        for _ in range(count):
            in_hand.enter_context(activity.receiving())
        yield


async def test_deliveries_wait_while_the_receiver_has_requests_queued_up() -> None:
    process = Recorder()
    async with beside_a_receiver(process) as (queue, activity):
        with requests_queued_up(activity):
            await asyncio.sleep(WINDOW)
            await queue.enqueue(["a", "b", "c", "d", "e"])
            await _settle()
            assert process.started == []

        # The burst is over: every task takes its turn.
        await _until(lambda: len(process.started) == 5)
        assert sorted(process.started) == ["a", "b", "c", "d", "e"]


async def test_a_pause_in_a_burst_starts_one_delivery_not_one_per_task() -> None:
    process = Recorder(seconds_each=0.01)
    async with beside_a_receiver(process) as (queue, activity):
        with requests_queued_up(activity):
            await asyncio.sleep(WINDOW)
            await queue.enqueue(["a", "b", "c", "d", "e"])
            await _settle()
        await _until(lambda: len(process.started) >= 1)  # the receiver paused
        with requests_queued_up(activity):  # and the next requests of the burst arrived
            await _settle(YIELD_SECONDS / 3)

            assert process.started == ["a"]


async def test_a_burst_that_never_ends_still_lets_one_delivery_through_now_and_then() -> None:
    process = Recorder()
    async with beside_a_receiver(process) as (queue, activity):
        with requests_queued_up(activity):
            await asyncio.sleep(WINDOW)
            await queue.enqueue([f"d{n}" for n in range(10)])
            await _settle(YIELD_SECONDS * 3.5)
            # One task, one delivery per YIELD_SECONDS (fewer on a loaded machine): never all ten.
            assert 1 <= len(process.started) <= 4


async def test_a_steady_stream_the_receiver_keeps_up_with_does_not_hold_deliveries_back() -> None:
    """Requests one after the other leave the receiver never quiet, but never with a queue."""
    process = Recorder()
    streaming = True

    async def stream(activity: ReceiverActivity) -> None:
        while streaming:
            with activity.receiving():
                await asyncio.sleep(0.001)

    async with beside_a_receiver(process) as (queue, activity):
        streamer = asyncio.create_task(stream(activity))
        try:
            await asyncio.sleep(WINDOW)
            await queue.enqueue([f"d{n}" for n in range(10)])
            # Held back, they would start one per YIELD_SECONDS.
            await _until(lambda: len(process.started) == 10, within=YIELD_SECONDS * 2)
            assert not activity.quiet.is_set()
        finally:
            streaming = False
            await streamer
