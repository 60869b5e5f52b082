"""InProcessQueue: in-process workers yield to the receiver of the same process."""

from __future__ import annotations

import asyncio

from engine.queue import YIELD_SECONDS, InProcessQueue


class Recorder:
    def __init__(self) -> None:
        self.started: list[str] = []

    async def __call__(self, delivery_id: str) -> float | None:
        self.started.append(delivery_id)
        return None


async def _settle(seconds: float = 0.0) -> None:
    await asyncio.sleep(seconds)
    for _ in range(5):
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


async def test_deliveries_wait_while_the_receiver_has_requests_waiting() -> None:
    process = Recorder()
    queue = InProcessQueue(process, concurrency=4)
    receiver_quiet = asyncio.Event()  # a burst: requests waiting for their writes
    queue.yield_to(receiver_quiet)
    try:
        await queue.enqueue(["a", "b", "c", "d", "e"])
        await _settle()
        assert process.started == []

        receiver_quiet.set()  # the burst is over: every task takes its turn
        await _settle()
        assert sorted(process.started) == ["a", "b", "c", "d", "e"]
    finally:
        await queue.close()


async def test_a_burst_that_never_ends_still_lets_one_delivery_through_now_and_then() -> None:
    process = Recorder()
    queue = InProcessQueue(process, concurrency=4)
    queue.yield_to(asyncio.Event())  # never quiet
    try:
        await queue.enqueue([f"d{n}" for n in range(10)])
        await _settle(YIELD_SECONDS * 3.5)
        # One task, one delivery per YIELD_SECONDS (fewer on a loaded machine): never all ten.
        assert 1 <= len(process.started) <= 4
    finally:
        await queue.close()
