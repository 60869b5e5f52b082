"""QUEUE_NAME: installations (and test runs) sharing a Redis database keep apart.

Two queues on one database, each with the same delivery id: two jobs, each run by its own
queue's worker. Every connection carries its queue's name (CLIENT SETNAME), so a test (or an
operator) can tell, and kill, exactly one installation's connections. Without QUEUE_NAME
the keys are those of the versions before it: arq's queue, job ids that are delivery ids.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest
import redis.asyncio as aioredis
from arq.constants import default_queue_name, job_key_prefix

from engine.queue import DEFAULT_QUEUE_NAME, ArqQueue, job_id, jobs_channel
from engine.queue.arq_worker import DeliveryWorker
from tests.redis_space import RedisSpace

from .test_arq_worker import Ran, delivery_worker, ran_exactly, subscribed, wait_until

pytestmark = [
    pytest.mark.redis,
    pytest.mark.filterwarnings("ignore:Call to deprecated close:DeprecationWarning"),
]


@pytest.fixture
async def other_space(redis_url: str) -> AsyncIterator[RedisSpace]:
    """A second installation on the same database as `redis_space`."""
    space = RedisSpace(redis_url)
    yield space
    client = aioredis.from_url(redis_url)
    try:
        await space.forget(client)
    finally:
        await client.aclose()


def test_without_queue_name_the_keys_are_those_of_earlier_versions() -> None:
    client = aioredis.Redis.from_url("redis://127.0.0.1:6379/3")  # never connects here
    assert DEFAULT_QUEUE_NAME == default_queue_name == "arq:queue"
    assert job_id(DEFAULT_QUEUE_NAME, "d-1") == "d-1"
    assert jobs_channel(client, DEFAULT_QUEUE_NAME) == "stockaj-rules:jobs-enqueued:db3"
    assert job_id("shop-a", "d-1") == "shop-a:d-1"
    assert jobs_channel(client, "shop-a") == "stockaj-rules:jobs-enqueued:db3:shop-a"


async def test_two_queues_on_one_database_each_run_their_own_job_of_the_same_delivery_id(
    redis_space: RedisSpace,
    other_space: RedisSpace,
    redis: aioredis.Redis,
    running: Callable[[DeliveryWorker], None],
) -> None:
    mine, theirs = Ran(), Ran()
    running(delivery_worker(redis_space, mine, "mine"))
    running(delivery_worker(other_space, theirs, "theirs"))
    await wait_until(subscribed(redis, redis_space, 1))
    await wait_until(subscribed(redis, other_space, 1))
    queues = [await ArqQueue.connect(space.url, space.queue_name) for space in (redis_space, other_space)]
    try:
        for queue in queues:
            await queue.enqueue(["d-1"])
        await wait_until(ran_exactly(mine, ["d-1"]))
        await wait_until(ran_exactly(theirs, ["d-1"]))
        await asyncio.sleep(0.2)  # a job taken by the other worker would show by now
    finally:
        for queue in queues:
            await queue.close()
    assert (mine.by_worker, theirs.by_worker) == ({"mine": ["d-1"]}, {"theirs": ["d-1"]})
    assert not await redis.exists(job_key_prefix + "d-1")  # nothing under the bare delivery id


async def test_every_connection_is_named_after_its_queue_and_role(
    redis_space: RedisSpace,
    redis: aioredis.Redis,
    arq_queue: ArqQueue,
    running: Callable[[DeliveryWorker], None],
) -> None:
    ran = Ran()
    running(delivery_worker(redis_space, ran, "a"))
    await wait_until(subscribed(redis, redis_space, 1))
    await arq_queue.enqueue(["d-1"])  # the receiver's queue connects on its first command
    await wait_until(ran_exactly(ran, ["d-1"]))

    names = {entry["name"] for entry in await redis.client_list() if redis_space.queue_name in entry["name"]}
    assert names == {
        f"stockaj-rules:receiver:{redis_space.queue_name}",
        f"stockaj-rules:worker:{redis_space.queue_name}",
    }
    pubsub = await redis.client_list(_type="pubsub")
    assert [e["name"] for e in pubsub if redis_space.queue_name in e["name"]] == [
        f"stockaj-rules:worker:{redis_space.queue_name}"
    ]
