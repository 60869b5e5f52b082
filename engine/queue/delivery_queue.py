"""The queue between the store and the workers: what every transport offers.

The queue carries only delivery ids; the store is the source of truth, and the
sweeper enqueues again whatever a lost job left pending. Two transports:

- engine/queue/arq_queue.py, `ArqQueue` (`REDIS_URL` set): jobs on Redis for
  `stockaj-rules worker` processes (engine/queue/arq_worker.py);
- engine/queue/in_process.py, `InProcessQueue` (the embedded default): asyncio
  tasks in the `serve` process run the same `process` function.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

# Seconds until the delivery should be processed again (a retry wait), or None when done.
Processor = Callable[[str], Awaitable[float | None]]


class QueueUnavailable(Exception):
    """The queue could not take the jobs; the sweeper will enqueue them later."""


class DeliveryQueue(Protocol):
    async def enqueue(self, delivery_ids: Sequence[str]) -> None:
        """Enqueue these deliveries; raise `QueueUnavailable` when the queue is down."""
        ...

    async def ping(self) -> None: ...

    async def close(self) -> None: ...
