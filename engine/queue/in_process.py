"""The in-process transport (the embedded default): asyncio tasks of `serve` run the deliveries.

Receiver and workers share the process, so the workers yield to a busy receiver
(engine/queue/receiver_activity.py). What a closing process cuts off stays
`processing` in the store: the sweeper runs it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence

from engine.queue.delivery_queue import Processor
from engine.queue.receiver_activity import ReceiverActivity

# In-process workers waiting for a busy receiver (InProcessQueue.yield_to): the longest wait.
YIELD_SECONDS = 0.1
# Loop turns a slot lets pass after the receiver went quiet, before it starts a delivery.
SETTLE_TURNS = 3

log = logging.getLogger(__name__)


class InProcessQueue:
    """Deliveries processed by tasks of this process (the embedded default)."""

    def __init__(self, process: Processor, concurrency: int = 4) -> None:
        self._process = process
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._waiting: set[str] = set()
        # In hand now: a sweep that finds one of these past its due time must not start it twice.
        self._running: set[str] = set()
        self._busy = [False] * concurrency
        self._closing = False
        self._tasks = [
            asyncio.create_task(self._consume(n), name=f"delivery-worker-{n}") for n in range(concurrency)
        ]
        self._timers: set[asyncio.TimerHandle] = set()
        self._receiver: ReceiverActivity | None = None
        self._starting = asyncio.Lock()
        self._last_start = time.monotonic()

    def yield_to(self, receiver: ReceiverActivity) -> None:
        """While the receiver in this process is busy, start deliveries only when it is quiet.

        Receiver and workers share one core: during a burst the webhook answers come first,
        and the backlog is processed once it is over (`engine.queue.receiver_activity`). A delivery
        still starts at least every YIELD_SECONDS, so a burst that never ends cannot starve
        the workers.
        """
        self._receiver = receiver

    async def enqueue(self, delivery_ids: Sequence[str]) -> None:
        self._offer(delivery_ids)

    def _offer(self, delivery_ids: Sequence[str]) -> None:
        for delivery_id in delivery_ids:
            # The sweeper offers what is past due, which includes a delivery queued already and
            # one whose slow action is still running here: that run finishes it or schedules it.
            if delivery_id not in self._waiting and delivery_id not in self._running:
                self._waiting.add(delivery_id)
                self._queue.put_nowait(delivery_id)

    async def ping(self) -> None:
        return None

    async def close(self, grace: float = 10.0) -> None:
        """Let the deliveries in hand finish (up to `grace` seconds); what is queued stays pending."""
        self._closing = True
        for timer in self._timers:
            timer.cancel()
        idle = [task for task, busy in zip(self._tasks, self._busy, strict=True) if not busy]
        for task in idle:
            task.cancel()
        _, still_running = await asyncio.wait(self._tasks, timeout=grace)
        # What is cut off stays `processing`: the sweeper runs it again, the ledger skips what succeeded.
        for task in still_running:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _consume(self, slot: int) -> None:
        while not self._closing:
            delivery_id = await self._queue.get()
            await self._receivers_turn()
            self._waiting.discard(delivery_id)
            self._running.add(delivery_id)
            self._busy[slot] = True
            try:
                retry_in = await self._process(delivery_id)
            except Exception:
                log.exception("processing delivery %s failed; the sweeper will try it again", delivery_id)
                continue
            finally:
                self._busy[slot] = False
                self._running.discard(delivery_id)
            if retry_in is not None and not self._closing:
                self._later(delivery_id, retry_in)

    async def _receivers_turn(self) -> None:
        """Wait while the receiver is busy, at most YIELD_SECONDS since the last start that waited.

        Slots waiting here go one at a time, and each looks again after the loop has taken
        in whatever arrived meanwhile, so a short pause in a burst starts one delivery,
        not one per slot.
        """
        receiver = self._receiver
        if receiver is None or not receiver.busy():
            return
        async with self._starting:
            while True:
                deadline = self._last_start + YIELD_SECONDS
                # Wake up at least once a window: the receiver may stop being busy without a pause.
                wait = min(deadline - time.monotonic(), receiver.window_seconds)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(receiver.quiet.wait(), max(0.0, wait))
                if receiver.quiet.is_set():
                    for _ in range(SETTLE_TURNS):
                        await asyncio.sleep(0)  # uvicorn reads what arrived, its handlers start
                if not receiver.busy() or time.monotonic() >= deadline:
                    self._last_start = time.monotonic()
                    return

    def _later(self, delivery_id: str, seconds: float) -> None:
        loop = asyncio.get_running_loop()

        def fire() -> None:
            self._timers.discard(timer)
            self._offer([delivery_id])

        timer = loop.call_later(seconds, fire)
        self._timers.add(timer)
