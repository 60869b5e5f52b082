"""`stockaj-rules redeliver`: run a stored delivery through the current rules again, and how it ended.

Without REDIS_URL this process runs it. With REDIS_URL the workers do: its job is
enqueued (or brought forward, when a retry deferred it) and the command waits for a
worker's run to end, up to a timeout, so that its exit code says how it ended either
way; `wait=None` only enqueues. A run has ended once the delivery's run count is past
the one it had before and it is `done`, `no_match` or `failed`, or an action of it
waits for a retry (that run then ends waiting, whatever else it does).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from engine.config import Settings
from engine.pipeline.service import open_service, open_store
from engine.queue import ArqQueue
from engine.store import Reopened, Store, StoredDelivery
from engine.store.tables import ActionStatus, DeliveryStatus

NOT_REDELIVERED = (
    "not redelivered: a run is processing it right now (or its worker died less than "
    "REQUEUE_AFTER_SECONDS ago); run redeliver again once `deliveries show` says it is finished"
)
POLL_SECONDS = 0.2
_ENDED = (DeliveryStatus.DONE, DeliveryStatus.NO_MATCH, DeliveryStatus.FAILED)


@dataclass(frozen=True, slots=True)
class Redelivered:
    """How a redelivery went: the line to print after the id, and whether it went well (exit 0)."""

    text: str
    ok: bool


def redeliver(settings: Settings, delivery_id: str, force: bool, wait: float | None) -> Redelivered | None:
    """Make a stored delivery pending again and have it processed; None when it is unknown.

    `wait`: with REDIS_URL, the seconds to wait for the workers' outcome (None: do not wait).
    """
    return asyncio.run(redeliver_now(settings, delivery_id, force, wait))


async def redeliver_now(
    settings: Settings, delivery_id: str, force: bool, wait: float | None
) -> Redelivered | None:
    """What a running `serve` still plans for it (a retry's timer) finds it finished when it is
    run here, or claims it only once it is due again."""
    store = await open_store(settings)
    try:
        before = await store.get(delivery_id)
        now = datetime.now(UTC)
        # Due at once for the workers' sweeper; here, only if this process dies before it ran it.
        later = now if settings.redis_url else now + timedelta(seconds=settings.requeue_after_seconds)
        reopened = await store.reopen(delivery_id, now, later)
        if before is None or reopened is Reopened.UNKNOWN:
            return None
        if reopened is Reopened.RUNNING:
            return Redelivered(NOT_REDELIVERED, ok=False)
        if force:
            await store.forget_action_runs(delivery_id)
        if settings.redis_url:
            queue = await ArqQueue.connect(settings.redis_url, settings.queue_name, "redeliver")
            try:
                await queue.enqueue([delivery_id])
            finally:
                await queue.close()
            if wait is None:
                show = f"deliveries show {delivery_id}"
                return Redelivered(
                    f"enqueued for the workers (not waited for: `{show}` says how it ends)", ok=True
                )
            return await _workers_outcome(store, delivery_id, before.runs, wait)
    finally:
        await store.close()
    return await _run_here(settings, delivery_id)


async def _run_here(settings: Settings, delivery_id: str) -> Redelivered:
    service = await open_service(settings, receive=False, process_in_process=True, background=False)
    try:
        retry_in = await service.processor.process(delivery_id)
        stored = await service.store.get(delivery_id)
    finally:
        await service.close()
    if stored is None:  # removed meanwhile (retention)
        return Redelivered("no longer in the store", ok=False)
    if retry_in is not None:
        return Redelivered(f"{stored.status.value}; an action will be retried in {retry_in:.0f}s", ok=True)
    return ended(stored)


def ended(stored: StoredDelivery) -> Redelivered:
    """A finished delivery's status, with the reason when it failed."""
    if stored.status is DeliveryStatus.FAILED:
        return Redelivered(f"failed: {stored.error}" if stored.error else "failed", ok=False)
    return Redelivered(stored.status.value, ok=True)


async def _workers_outcome(store: Store, delivery_id: str, runs_before: int, wait: float) -> Redelivered:
    """Polls the store until a worker's run of the delivery has ended, or `wait` seconds passed."""
    deadline = time.monotonic() + wait
    while True:
        stored = await store.get(delivery_id)
        if stored is None:
            return Redelivered("no longer in the store", ok=False)
        if stored.runs > runs_before:
            if stored.status in _ENDED:
                return ended(stored)
            retry_at = await _retry_planned(store, delivery_id)
            if retry_at is not None:
                retry_in = max(0.0, (retry_at - datetime.now(UTC)).total_seconds())
                return Redelivered(f"processing; an action will be retried in {retry_in:.0f}s", ok=True)
        if time.monotonic() >= deadline:
            return Redelivered(
                f"not finished within {wait:g}s (--timeout): no worker has ended a run of it yet; is a "
                f"worker running? `deliveries show {delivery_id}` says how it ends",
                ok=False,
            )
        await asyncio.sleep(POLL_SECONDS)


async def _retry_planned(store: Store, delivery_id: str) -> datetime | None:
    """When the soonest action of the delivery waiting for a retry is due; None when none waits."""
    waiting = [
        run.next_attempt_at
        for run in (await store.action_runs(delivery_id)).values()
        if run.status is ActionStatus.PENDING and run.next_attempt_at is not None
    ]
    return min(waiting, default=None)
