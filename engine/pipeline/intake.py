"""Group commit: concurrent requests share one transaction and one enqueue.

Each request hands its verified delivery to `DeliveryIntake.submit()` and waits
for its own answer: stored (new), duplicate, or `StoreUnavailable`. One loop
writes whatever has accumulated while the previous batch was committing, so
under load a single transaction stores dozens of deliveries, and each request
is still answered only after its own delivery is durable.

Enqueueing happens after the answer, in batches too. A queue outage loses
nothing: the delivery is in the store with a `due_at`, and the sweeper
enqueues it again.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

from sqlalchemy.exc import StatementError

from actions.base import Clock, utc_now
from engine.pipeline.metrics import Metrics
from engine.queue import DeliveryQueue, QueueUnavailable
from engine.queue.receiver_activity import ReceiverActivity
from engine.store import NewDelivery, Store
from engine.store.tables import ID_LENGTH

log = logging.getLogger(__name__)

MAX_BATCH = 500
PING_TIMEOUT_SECONDS = 2.0

_Waiting = tuple[NewDelivery, "asyncio.Future[bool]"]


class StoreUnavailable(Exception):
    """The store could not be written; the receiver answers 503 so Stockaj retries."""


class DeliveryIntake:
    def __init__(
        self,
        store: Store,
        queue: DeliveryQueue,
        metrics: Metrics,
        requeue_after: timedelta,
        clock: Clock = utc_now,
    ) -> None:
        self._store = store
        self._queue = queue
        self._metrics = metrics
        self._requeue_after = requeue_after
        self._clock = clock
        self._pending: list[_Waiting] = []
        self._writing: list[_Waiting] = []
        self._stopped = False
        self._to_enqueue: list[str] = []
        self._write_wanted = asyncio.Event()
        self._enqueue_wanted = asyncio.Event()
        # The receiver wraps each request in `activity.receiving()`; in-process workers yield to it.
        self.activity = ReceiverActivity()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        if self._tasks:
            return
        self._stopped = False
        self._tasks = [
            asyncio.create_task(self._write_loop(), name="intake-writer"),
            asyncio.create_task(self._enqueue_loop(), name="intake-enqueuer"),
        ]

    async def stop(self, grace: float = 10.0) -> None:
        """Finish what was accepted (up to `grace` seconds), then stop.

        A request still waiting when the grace runs out is answered 503 (Stockaj
        retries it), never left hanging; so is one submitted after the stop.
        """
        self._stopped = True
        for _ in range(int(grace / 0.01)):
            if not (self._pending or self._writing or self._to_enqueue):
                break
            await asyncio.sleep(0.01)
        waiting, self._pending = [*self._writing, *self._pending], []
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        self.activity.close()
        self._fail(waiting, "the receiver is stopping")

    async def submit(self, delivery: NewDelivery) -> bool:
        """True when stored now, False when this delivery id was stored before."""
        if self._stopped:
            raise StoreUnavailable("the receiver is stopping")
        if not self._tasks:
            self.start()
        answer: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._pending.append((delivery, answer))
        self._write_wanted.set()
        return await answer

    async def _write_loop(self) -> None:
        while True:
            await self._write_wanted.wait()
            self._write_wanted.clear()
            while self._pending:
                batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
                self._writing = batch
                try:
                    await self._write(batch)
                finally:
                    self._writing = []

    async def _write(self, batch: list[_Waiting], retry: bool = True) -> None:
        try:
            stored = await self._store.add_deliveries(
                [d for d, _ in batch], self._clock() + self._requeue_after
            )
        except Exception as exc:  # any database failure
            if retry and await self._store_answers():
                # The store is up, so the batch met a connection the database had dropped
                # (the pool has replaced it), was refused for one of its rows, or lost a
                # deadlock: store them again one by one, so one bad row fails only its request.
                for item in batch:
                    await self._write([item], retry=False)
                return
            if len(batch) == 1:
                log.error("delivery %r not stored: %s", batch[0][0].delivery_id[:ID_LENGTH], _describe(exc))
            else:
                log.error("store unavailable, %d deliveries refused: %s", len(batch), _describe(exc))
            self._fail(batch, type(exc).__name__)
            return
        claimed: set[str] = set()
        for delivery, answer in batch:
            is_new = delivery.delivery_id in stored and delivery.delivery_id not in claimed
            if is_new:
                claimed.add(delivery.delivery_id)
            if not answer.done():
                answer.set_result(is_new)
        if claimed:
            self._to_enqueue.extend(claimed)
            self._enqueue_wanted.set()

    async def _store_answers(self) -> bool:
        try:
            await asyncio.wait_for(self._store.ping(), PING_TIMEOUT_SECONDS)
        except Exception:
            return False
        return True

    @staticmethod
    def _fail(batch: list[_Waiting], reason: str) -> None:
        for _, answer in batch:
            if not answer.done():
                answer.set_exception(StoreUnavailable(reason))

    async def _enqueue_loop(self) -> None:
        while True:
            await self._enqueue_wanted.wait()
            self._enqueue_wanted.clear()
            while self._to_enqueue:
                batch, self._to_enqueue = self._to_enqueue[:MAX_BATCH], self._to_enqueue[MAX_BATCH:]
                try:
                    await self._queue.enqueue(batch)
                except QueueUnavailable as exc:
                    self._metrics.enqueue_failures.inc(len(batch))
                    log.warning(
                        "queue unavailable, %d stored deliveries wait for the sweeper: %s", len(batch), exc
                    )
                except Exception:
                    self._metrics.enqueue_failures.inc(len(batch))
                    log.exception("enqueue failed; %d stored deliveries wait for the sweeper", len(batch))


def _describe(exc: Exception) -> str:
    """The driver's message, without the statement's parameters (they hold whole payloads)."""
    cause = exc.orig if isinstance(exc, StatementError) and exc.orig is not None else exc
    return f"{type(cause).__name__}: {cause}"
