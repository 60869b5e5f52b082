"""Workers on the real Redis, run until the test ends."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest

from engine.queue.arq_worker import DeliveryWorker
from tests.redis_space import RedisSpace


@pytest.fixture
async def running(redis_space: RedisSpace) -> AsyncIterator[Callable[[DeliveryWorker], None]]:
    """Runs workers until the test ends."""
    workers: list[tuple[DeliveryWorker, asyncio.Task[None]]] = []

    def run(worker: DeliveryWorker) -> None:
        workers.append((worker, asyncio.create_task(worker.async_run())))

    yield run
    for worker, task in workers:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        # Jobs still finishing (arq recording their end): closing would cancel them mid-command.
        await asyncio.wait_for(asyncio.gather(*worker.tasks.values(), return_exceptions=True), 10)
        await worker.close()
