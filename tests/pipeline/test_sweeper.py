"""The sweeper with real queues: in-process tasks, and arq on the real Redis.

The store under it is real too, on both SQLite and the real PostgreSQL.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from datetime import datetime, timedelta

import pytest
import redis.asyncio as aioredis
from arq.constants import job_key_prefix
from arq.jobs import deserialize_job

from engine.pipeline.metrics import Metrics
from engine.pipeline.sweeper import Sweeper
from engine.queue import PROCESS_FUNCTION, ArqQueue, InProcessQueue
from engine.store import NewDelivery, Store
from engine.store.tables import DeliveryStatus
from engine.testing import T0, FakeClock
from tests.redis_space import RedisSpace
from tests.store.helpers import claim_one, finish_run

REQUEUE_AFTER = timedelta(seconds=60)
BODY_RETENTION = timedelta(days=7)
DELIVERY_RETENTION = timedelta(days=30)


class Worker:
    """A process function for `InProcessQueue` that does what the real one does first: start the run."""

    def __init__(self, store: Store, clock: FakeClock) -> None:
        self.store = store
        self.clock = clock
        self.processed: list[str] = []
        self._changed = asyncio.Condition()

    async def __call__(self, delivery_id: str) -> float | None:
        now = self.clock()
        await claim_one(self.store, delivery_id, now, due_at=now + REQUEUE_AFTER)
        async with self._changed:
            self.processed.append(delivery_id)
            self._changed.notify_all()
        return None

    async def wait_for(self, count: int) -> list[str]:
        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(lambda: len(self.processed) >= count), 10)
        return sorted(self.processed)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def worker(store: Store, clock: FakeClock) -> Worker:
    return Worker(store, clock)


@pytest.fixture
async def in_process(worker: Worker) -> AsyncIterator[InProcessQueue]:
    queue = InProcessQueue(worker, concurrency=2)
    yield queue
    await queue.close(grace=1)


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


def sweeper(store: Store, queue: InProcessQueue | ArqQueue, metrics: Metrics, clock: FakeClock) -> Sweeper:
    return Sweeper(store, queue, metrics, BODY_RETENTION, DELIVERY_RETENTION, clock=clock)


def delivery(delivery_id: str, received_at: datetime = T0) -> NewDelivery:
    return NewDelivery(delivery_id, "item.low_stock", {}, b'{"data": {}}', received_at)


def requeued(metrics: Metrics) -> float:
    value = metrics.registry.get_sample_value("stockaj_requeued_deliveries_total")
    return value or 0.0


@pytest.fixture
def caplog_info(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    with caplog.at_level("INFO", logger="engine.pipeline.sweeper"):
        yield caplog


# --- in-process queue --------------------------------------------------------------------------


async def test_sweep_enqueues_due_deliveries_to_the_in_process_workers(
    store: Store, in_process: InProcessQueue, worker: Worker, metrics: Metrics, clock: FakeClock
) -> None:
    await store.add_deliveries([delivery("a"), delivery("b")], T0 - timedelta(seconds=1))
    await store.add_deliveries([delivery("not-yet")], T0 + timedelta(seconds=1))

    assert await sweeper(store, in_process, metrics, clock).sweep() == 2

    assert await worker.wait_for(2) == ["a", "b"]
    assert requeued(metrics) == 2


async def test_sweep_does_not_run_a_delivery_again_while_its_run_is_under_way(
    store: Store, in_process: InProcessQueue, worker: Worker, metrics: Metrics, clock: FakeClock
) -> None:
    await store.add_deliveries([delivery("a")], T0)
    sweep = sweeper(store, in_process, metrics, clock)
    await sweep.sweep()
    await worker.wait_for(1)

    clock.now = T0 + REQUEUE_AFTER - timedelta(seconds=1)
    assert await sweep.sweep() == 0
    clock.now = T0 + REQUEUE_AFTER  # the run died: its due_at has come
    assert await sweep.sweep() == 1

    assert await worker.wait_for(2) == ["a", "a"]


async def test_sweep_skips_finished_deliveries(
    store: Store, in_process: InProcessQueue, worker: Worker, metrics: Metrics, clock: FakeClock
) -> None:
    await store.add_deliveries([delivery("done"), delivery("pending")], T0 - timedelta(minutes=5))
    await finish_run(store, "done", DeliveryStatus.DONE, T0, None, None)

    assert await sweeper(store, in_process, metrics, clock).sweep() == 1
    assert await worker.wait_for(1) == ["pending"]


# --- arq on the real Redis ---------------------------------------------------------------------


@pytest.mark.redis
async def test_sweep_enqueues_due_deliveries_as_arq_jobs(
    store: Store,
    arq_queue: ArqQueue,
    redis: aioredis.Redis,
    redis_space: RedisSpace,
    metrics: Metrics,
    clock: FakeClock,
) -> None:
    await store.add_deliveries([delivery("a"), delivery("b")], T0)
    await store.add_deliveries([delivery("not-yet")], T0 + timedelta(seconds=1))

    assert await sweeper(store, arq_queue, metrics, clock).sweep() == 2

    jobs = [redis_space.job_id(name).encode() for name in ("a", "b")]
    assert sorted(await redis.zrange(redis_space.queue_name, 0, -1)) == jobs
    raw = await redis.get(job_key_prefix + redis_space.job_id("a"))
    assert raw is not None
    job = deserialize_job(raw)
    assert (job.function, job.args, job.kwargs) == (PROCESS_FUNCTION, ("a",), {})


@pytest.mark.redis
async def test_second_sweep_while_the_job_is_in_redis_does_not_duplicate_it(
    store: Store,
    arq_queue: ArqQueue,
    redis: aioredis.Redis,
    redis_space: RedisSpace,
    metrics: Metrics,
    clock: FakeClock,
) -> None:
    await store.add_deliveries([delivery("a"), delivery("b")], T0)
    sweep = sweeper(store, arq_queue, metrics, clock)
    await sweep.sweep()
    await store.add_deliveries([delivery("c")], T0)

    clock.now = T0 + timedelta(seconds=5)
    await sweep.sweep()
    clock.now = T0 + timedelta(minutes=5)
    await sweep.sweep()

    assert await redis.zcard(redis_space.queue_name) == 3
    jobs = [redis_space.job_id(name).encode() for name in ("a", "b", "c")]
    assert sorted(await redis.zrange(redis_space.queue_name, 0, -1)) == jobs


@pytest.mark.redis
async def test_sweep_with_redis_down_leaves_the_deliveries_due_and_still_applies_retention(
    store: Store, metrics: Metrics, clock: FakeClock
) -> None:
    old = T0 - DELIVERY_RETENTION - timedelta(days=1)
    await store.add_deliveries([delivery("pending"), delivery("old", received_at=old)], T0)
    await finish_run(store, "old", DeliveryStatus.DONE, old, None, None)
    down = await ArqQueue.connect("redis://127.0.0.1:1/0")  # nothing listens on port 1
    try:
        assert await sweeper(store, down, metrics, clock).sweep() == 0
    finally:
        await down.close()

    assert await store.due_deliveries(T0) == ["pending"]
    assert requeued(metrics) == 0
    assert await store.get("old") is None


# --- retention ---------------------------------------------------------------------------------


async def add_old_finished(store: Store, delivery_id: str, now: datetime) -> None:
    old = now - DELIVERY_RETENTION - timedelta(days=1)
    await store.add_deliveries([delivery(delivery_id, received_at=old)], old)
    await finish_run(store, delivery_id, DeliveryStatus.DONE, old, None, None)


async def test_purge_runs_at_most_once_an_hour(
    store: Store, in_process: InProcessQueue, metrics: Metrics, clock: FakeClock
) -> None:
    sweep = sweeper(store, in_process, metrics, clock)
    await add_old_finished(store, "first", clock.now)
    await sweep.sweep()
    assert await store.get("first") is None

    await add_old_finished(store, "second", clock.now)
    clock.now = T0 + timedelta(minutes=59, seconds=59)
    await sweep.sweep()
    assert await store.get("second") is not None

    clock.now = T0 + timedelta(hours=1)
    await sweep.sweep()
    assert await store.get("second") is None


async def test_sweep_drops_old_bodies_of_finished_deliveries(
    store: Store, in_process: InProcessQueue, metrics: Metrics, clock: FakeClock
) -> None:
    week_old = T0 - BODY_RETENTION - timedelta(hours=1)
    await store.add_deliveries([delivery("done", received_at=week_old)], T0 + timedelta(hours=1))
    await finish_run(store, "done", DeliveryStatus.DONE, week_old, None, None)

    await sweeper(store, in_process, metrics, clock).sweep()

    stored = await store.get("done")
    assert stored is not None
    assert stored.body is None


class FlakyPurgeStore(Store):
    """A real store whose first purge fails (the database went away for a moment)."""

    purges = 0

    async def purge(
        self, now: datetime, body_retention: timedelta, delivery_retention: timedelta
    ) -> tuple[int, int]:
        self.purges += 1
        if self.purges == 1:
            raise ConnectionError("the database went away")
        return await super().purge(now, body_retention, delivery_retention)


async def test_failed_purge_is_tried_again_at_the_next_sweep_not_an_hour_later(
    store: Store, in_process: InProcessQueue, metrics: Metrics, clock: FakeClock
) -> None:
    flaky = FlakyPurgeStore(store.engine)
    await add_old_finished(store, "old", clock.now)
    sweep = sweeper(flaky, in_process, metrics, clock)

    with pytest.raises(ConnectionError):
        await sweep.sweep()
    clock.now = T0 + timedelta(seconds=5)
    await sweep.sweep()

    assert await store.get("old") is None


class FlakyDueStore(Store):
    """A real store that fails its first query for due deliveries."""

    failures = 1

    async def due_deliveries(self, now: datetime, limit: int = 500) -> list[str]:
        if self.failures:
            self.failures -= 1
            raise ConnectionError("the database went away")
        return await super().due_deliveries(now, limit)


async def test_run_keeps_sweeping_after_a_failed_sweep(
    store: Store,
    in_process: InProcessQueue,
    worker: Worker,
    metrics: Metrics,
    caplog_info: pytest.LogCaptureFixture,
) -> None:
    await store.add_deliveries([delivery("a")], T0)
    running = asyncio.create_task(
        sweeper(FlakyDueStore(store.engine), in_process, metrics, FakeClock()).run(0.01)
    )
    try:
        assert await worker.wait_for(1) == ["a"]
    finally:
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running

    assert "sweep failed" in caplog_info.text
    assert "ConnectionError: the database went away" in caplog_info.text
