"""The sweeper: the store is the source of truth, the queue can be rebuilt from it.

Every few seconds it enqueues again the deliveries still `received` or
`processing` past their `due_at` (a job lost when Redis restarted empty, a
worker killed mid-delivery, a retry whose timer died with its process).
Enqueueing is idempotent (job id = delivery id), so overlapping sweeps from
several workers are harmless. It also applies the retention settings.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timedelta

from actions.base import Clock, utc_now
from engine.pipeline.metrics import Metrics
from engine.queue.delivery_queue import DeliveryQueue, QueueUnavailable
from engine.store import Store

log = logging.getLogger(__name__)

RETENTION_EVERY = timedelta(hours=1)


class Sweeper:
    def __init__(
        self,
        store: Store,
        queue: DeliveryQueue,
        metrics: Metrics,
        body_retention: timedelta,
        delivery_retention: timedelta,
        clock: Clock = utc_now,
    ) -> None:
        self._store = store
        self._queue = queue
        self._metrics = metrics
        self._body_retention = body_retention
        self._delivery_retention = delivery_retention
        self._clock = clock
        self._last_purge: datetime | None = None

    async def sweep(self) -> int:
        """Enqueue what is due, and apply retention at most once an hour; the number enqueued again.

        Retention does not wait for the queue: a Redis outage must not let the store grow.
        """
        now = self._clock()
        enqueued = await self._requeue(now)
        if self._last_purge is None or now - self._last_purge >= RETENTION_EVERY:
            bodies, rows = await self._store.purge(now, self._body_retention, self._delivery_retention)
            self._last_purge = now  # only once it worked: a failed purge is tried at the next sweep
            if bodies or rows:
                log.info("retention: dropped %d bodies and %d deliveries", bodies, rows)
        return enqueued

    async def _requeue(self, now: datetime) -> int:
        due = await self._store.due_deliveries(now)
        if not due:
            return 0
        try:
            await self._queue.enqueue(due)
        except QueueUnavailable as exc:
            log.warning("sweeper: queue unavailable, %d deliveries wait: %s", len(due), exc)
            return 0
        self._metrics.requeued.inc(len(due))
        log.info("sweeper enqueued %d pending deliveries again", len(due))
        return len(due)

    async def sweep_or_warn(self, every: float) -> None:
        """One sweep; a failure (the database or the queue away) is one warning line, and the
        sweep `every` seconds later tries again. The in-process loop and the workers' cron job
        both sweep this way."""
        try:
            await self.sweep()
        except Exception as exc:
            log.warning("sweep failed, trying again in %.0fs: %s: %s", every, type(exc).__name__, exc)

    async def run(self, every: float) -> None:
        """Sweep every `every` seconds until cancelled."""
        while True:
            await self.sweep_or_warn(every)
            await asyncio.sleep(every)
