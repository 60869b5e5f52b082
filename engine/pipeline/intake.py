"""The receiver's intake: concurrent requests share one transaction and one enqueue.

Each request hands its verified delivery to `DeliveryIntake.submit()` and waits
for its own answer: stored (new), duplicate, or `StoreUnavailable`. Deliveries go
to the store through a group commit (engine/pipeline/group_commit.py): whatever
accumulated while the previous batch was committing is written next, so under
load a single transaction stores dozens of deliveries, and each request is still
answered only after its own delivery is durable. Which ids are new is the store's
duplicate decision (engine/store/intake.py).

Enqueueing happens after the answer, in batches too. A queue outage loses
nothing: the delivery is in the store with a `due_at`, and the sweeper
enqueues it again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from datetime import timedelta

from sqlalchemy.exc import StatementError

from actions.base import Clock, utc_now
from engine.pipeline.group_commit import CallerError, GroupCommit
from engine.pipeline.metrics import Metrics
from engine.queue.delivery_queue import DeliveryQueue, QueueUnavailable
from engine.queue.receiver_activity import ReceiverActivity
from engine.store import NewDelivery, Store
from engine.store.tables import ID_LENGTH

log = logging.getLogger(__name__)

MAX_BATCH = 500
PING_TIMEOUT_SECONDS = 2.0


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
        self._writes = GroupCommit(
            self._write_batch,
            "intake-writer",
            MAX_BATCH,
            retry_alone=self._retry_alone,
            refusal=self._refuse,
        )
        self._stopped = False
        self._to_enqueue: list[str] = []
        self._enqueue_wanted = asyncio.Event()
        # The receiver wraps each request in `activity.receiving()`; in-process workers yield to it.
        self.activity = ReceiverActivity()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        if self._tasks:
            return
        self._stopped = False
        self._tasks = [asyncio.create_task(self._enqueue_loop(), name="intake-enqueuer")]

    async def stop(self, grace: float = 10.0) -> None:
        """Finish what was accepted (up to `grace` seconds), then stop.

        A request still waiting when the grace runs out is answered 503 (Stockaj
        retries it), never left hanging; so is one submitted after the stop.
        """
        self._stopped = True
        for _ in range(int(grace / 0.01)):
            if not (self._writes.busy or self._to_enqueue):
                break
            await asyncio.sleep(0.01)
        await self._writes.stop(_refused("the receiver is stopping"))
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        self.activity.close()

    async def submit(self, delivery: NewDelivery) -> bool:
        """True when stored now, False when this delivery id was stored before."""
        if self._stopped:
            raise StoreUnavailable("the receiver is stopping")
        if not self._tasks:
            self.start()
        return await self._writes.submit(delivery)

    async def _write_batch(self, batch: Sequence[NewDelivery]) -> list[bool]:
        """Store a batch; for each delivery, whether it is new (the first copy of an id never stored)."""
        stored = await self._store.add_deliveries(batch, self._clock() + self._requeue_after)
        first_copies: set[str] = set()
        answers = []
        for delivery in batch:
            is_new = delivery.delivery_id in stored and delivery.delivery_id not in first_copies
            if is_new:
                first_copies.add(delivery.delivery_id)
            answers.append(is_new)
        if first_copies:
            self._to_enqueue.extend(first_copies)
            self._enqueue_wanted.set()
        return answers

    async def _retry_alone(self, batch: Sequence[NewDelivery], error: Exception) -> bool:
        """A failed batch is stored again one delivery at a time only when the store answers.

        The store is up, so the batch met a connection the database had dropped (the pool
        has replaced it), was refused for one of its rows, or lost a deadlock: one by one,
        one bad row fails only its request. The store down, every request is refused at once.
        """
        try:
            await asyncio.wait_for(self._store.ping(), PING_TIMEOUT_SECONDS)
        except Exception:
            return False
        return True

    @staticmethod
    def _refuse(batch: Sequence[NewDelivery], error: Exception) -> CallerError:
        if len(batch) == 1:
            log.error("delivery %r not stored: %s", batch[0].delivery_id[:ID_LENGTH], _describe(error))
        else:
            log.error("store unavailable, %d deliveries refused: %s", len(batch), _describe(error))
        return _refused(type(error).__name__)

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


def _refused(reason: str) -> CallerError:
    return lambda: StoreUnavailable(reason)


def _describe(exc: Exception) -> str:
    """The driver's message, without the statement's parameters (they hold whole payloads)."""
    cause = exc.orig if isinstance(exc, StatementError) and exc.orig is not None else exc
    return f"{type(cause).__name__}: {cause}"
