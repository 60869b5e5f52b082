"""`DeliveryWorker` on the real Redis: woken by enqueues, taking each job for one worker only.

The jobs are enqueued by `ArqQueue`, as the receiver and the sweeper do, and run by a
recording function in place of the delivery processor: what is under test is which
worker runs which job, and when.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import socket
import subprocess
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from arq import Retry, func
from arq.connections import RedisSettings
from arq.constants import in_progress_key_prefix

from engine.queue import DEFAULT_QUEUE_NAME, PROCESS_FUNCTION, ArqQueue, arq_worker, jobs_channel
from engine.queue.arq_worker import DeliveryWorker, worker_pool
from tests.redis_space import RedisSpace

pytestmark = [
    pytest.mark.redis,
    # arq's Worker.close() calls redis-py's deprecated close(); nothing this project can change.
    pytest.mark.filterwarnings("ignore:Call to deprecated close:DeprecationWarning"),
]


class Ran:
    """The process function: records which worker ran which job."""

    def __init__(self, seconds: float = 0.0) -> None:
        self.seconds = seconds
        self.by_worker: dict[str, list[str]] = {}

    def function(self, worker: str) -> Any:
        async def process(ctx: dict[str, Any], delivery_id: str) -> None:
            self.by_worker.setdefault(worker, []).append(delivery_id)
            await asyncio.sleep(self.seconds)

        return func(process, name=PROCESS_FUNCTION)

    def all(self) -> list[str]:
        return [job for jobs in self.by_worker.values() for job in jobs]


def delivery_worker(space: RedisSpace, ran: Ran, name: str, max_jobs: int = 4) -> DeliveryWorker:
    return DeliveryWorker(
        functions=[ran.function(name)],
        queue_name=space.queue_name,
        redis_pool=worker_pool(space.url, space.queue_name),
        max_jobs=max_jobs,
        keep_result=0,
        poll_delay=0,
        handle_signals=False,
    )


async def wait_until(condition: Callable[[], Awaitable[bool]], seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not await condition():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {seconds} s")
        await asyncio.sleep(0.01)


def subscribed(redis: aioredis.Redis, space: RedisSpace, expected: int) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        [(_, count)] = await redis.pubsub_numsub(jobs_channel(redis, space.queue_name))
        return int(count) == expected

    return check


def ran_exactly(ran: Ran, expected: list[str]) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return ran.all() == expected

    return check


async def test_two_workers_run_each_job_once_and_share_them(
    redis_space: RedisSpace,
    redis: aioredis.Redis,
    arq_queue: ArqQueue,
    running: Callable[[DeliveryWorker], None],
) -> None:
    ran = Ran(seconds=0.01)
    running(delivery_worker(redis_space, ran, "a"))
    running(delivery_worker(redis_space, ran, "b"))
    await wait_until(subscribed(redis, redis_space, 2))
    ids = [f"d-{n:02d}" for n in range(40)]
    for n in range(0, 40, 5):
        await arq_queue.enqueue(ids[n : n + 5])

    async def all_done() -> bool:
        return len(ran.all()) >= 40 and await redis.zcard(redis_space.queue_name) == 0

    await wait_until(all_done)
    await asyncio.sleep(0.1)  # a job run twice would show by now
    assert Counter(ran.all()) == Counter(ids)
    # Four slots each and 10 ms per job: one worker alone cannot have taken them all at once.
    assert set(ran.by_worker) == {"a", "b"}
    assert await redis.zcard(redis_space.queue_name) == 0


async def test_an_idle_worker_starts_a_job_as_soon_as_it_is_enqueued(
    redis_space: RedisSpace,
    redis: aioredis.Redis,
    arq_queue: ArqQueue,
    running: Callable[[DeliveryWorker], None],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(arq_worker, "IDLE_POLL_SECONDS", 30.0)  # only the message can wake it in time
    ran = Ran()
    running(delivery_worker(redis_space, ran, "a"))
    await wait_until(subscribed(redis, redis_space, 1))
    await asyncio.sleep(0.2)  # the worker's first polls are over: it waits

    started = time.monotonic()
    await arq_queue.enqueue(["d-1"])
    await wait_until(ran_exactly(ran, ["d-1"]), seconds=2.0)
    assert time.monotonic() - started < 2.0


async def test_enqueues_are_announced_on_a_channel_of_their_own_database_and_queue(
    redis_space: RedisSpace, redis: aioredis.Redis, arq_queue: ArqQueue
) -> None:
    # Redis shares pub/sub channels across databases: installations (and test runs) on
    # other database numbers, or other queues, of the same Redis must not wake these workers.
    database = RedisSettings.from_dsn(redis_space.url).database
    async with redis.pubsub() as pubsub:
        await pubsub.subscribe(f"stockaj-rules:jobs-enqueued:db{database}:{redis_space.queue_name}")
        await pubsub.get_message(timeout=1.0)  # the subscription's confirmation
        await arq_queue.enqueue(["d-1", "d-2"])
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=2.0)
    assert message is not None
    assert message["data"] == b"2"  # the number of jobs added


async def test_the_worker_subscribes_again_after_losing_its_connection(
    redis_space: RedisSpace,
    redis: aioredis.Redis,
    arq_queue: ArqQueue,
    running: Callable[[DeliveryWorker], None],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(arq_worker, "IDLE_POLL_SECONDS", 30.0)
    monkeypatch.setattr(arq_worker, "RESUBSCRIBE_SECONDS", 0.05)
    ran = Ran()
    running(delivery_worker(redis_space, ran, "a"))
    await wait_until(subscribed(redis, redis_space, 1))

    caplog.set_level(logging.INFO, logger="engine.queue.arq_worker")
    # Only this test's worker: other tests, and an engine on the same Redis, keep theirs.
    assert await redis_space.kill_connections(redis, "worker", "pubsub") == 1
    await wait_until(subscribed(redis, redis_space, 1))
    await asyncio.sleep(0.2)
    await arq_queue.enqueue(["d-1"])
    await wait_until(ran_exactly(ran, ["d-1"]), seconds=2.0)
    said = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "engine.queue.arq_worker"]
    assert [level for level, _ in said] == ["WARNING", "INFO"]
    assert said[0][1].startswith("not subscribed to new jobs (ConnectionError: ")
    assert said[1][1] == "subscribed to new jobs again"


async def test_enqueueing_a_job_deferred_by_a_retry_makes_it_due_now(
    redis_space: RedisSpace,
    redis: aioredis.Redis,
    arq_queue: ArqQueue,
    running: Callable[[DeliveryWorker], None],
) -> None:
    # `redeliver` while an action waits out a Retry-After of ten minutes: it runs now.
    runs: list[float] = []

    async def process(ctx: dict[str, Any], delivery_id: str) -> None:
        runs.append(time.monotonic())
        if len(runs) == 1:
            raise Retry(defer=600)

    worker = DeliveryWorker(
        functions=[func(process, name=PROCESS_FUNCTION)],
        queue_name=redis_space.queue_name,
        redis_pool=worker_pool(redis_space.url, redis_space.queue_name),
        keep_result=0,
        poll_delay=0,
        max_tries=100,
        handle_signals=False,
    )
    running(worker)
    await wait_until(subscribed(redis, redis_space, 1))
    await arq_queue.enqueue(["d-1"])

    async def deferred() -> bool:
        score = await redis.zscore(redis_space.queue_name, redis_space.job_id("d-1"))
        return len(runs) == 1 and score is not None and score > time.time() * 1000 + 500_000

    await wait_until(deferred)
    await arq_queue.enqueue(["d-1"])

    async def ran_again() -> bool:
        return len(runs) == 2

    await wait_until(ran_again, seconds=3)
    await asyncio.sleep(0.3)
    assert len(runs) == 2
    assert await redis.zcard(redis_space.queue_name) == 0


async def test_enqueueing_a_job_in_progress_neither_duplicates_nor_reschedules_it(
    redis_space: RedisSpace,
    redis: aioredis.Redis,
    arq_queue: ArqQueue,
    running: Callable[[DeliveryWorker], None],
) -> None:
    ran = Ran(seconds=0.5)
    running(delivery_worker(redis_space, ran, "a"))
    running(delivery_worker(redis_space, ran, "b"))
    await wait_until(subscribed(redis, redis_space, 2))
    await arq_queue.enqueue(["d-1"])
    await wait_until(ran_exactly(ran, ["d-1"]))

    await arq_queue.enqueue(["d-1"])  # the sweeper, while it runs
    await asyncio.sleep(0.8)

    assert ran.all() == ["d-1"]
    assert await redis.zcard(redis_space.queue_name) == 0


async def test_a_claim_skips_jobs_in_progress_elsewhere_and_jobs_not_yet_due(
    redis_space: RedisSpace, redis: aioredis.Redis, arq_queue: ArqQueue
) -> None:
    job = redis_space.job_id
    await arq_queue.enqueue(["running", "later", "ready"])
    await redis.set(in_progress_key_prefix + job("running"), b"1", px=60_000)
    await redis.zadd(redis_space.queue_name, {job("later"): (time.time() + 60) * 1000})
    ran = Ran()
    worker = delivery_worker(redis_space, ran, "a")
    try:
        await worker.start_jobs([job(name).encode() for name in ("running", "later", "ready")])
        assert set(worker.tasks) == {job("ready")}
        await asyncio.gather(*worker.tasks.values())
        assert ran.all() == ["ready"]
        assert await redis.pttl(in_progress_key_prefix + job("running")) > 50_000  # untouched
    finally:
        await worker.close()


async def test_a_claim_takes_no_more_jobs_than_free_slots(
    redis_space: RedisSpace, redis: aioredis.Redis, arq_queue: ArqQueue
) -> None:
    await arq_queue.enqueue(["d-1", "d-2", "d-3"])
    ran = Ran(seconds=0.05)
    job = redis_space.job_id
    worker = delivery_worker(redis_space, ran, "a", max_jobs=2)
    try:
        await worker.start_jobs([job(name).encode() for name in ("d-1", "d-2", "d-3")])
        assert set(worker.tasks) == {job("d-1"), job("d-2")}
        assert not await redis.exists(in_progress_key_prefix + job("d-3"))
        await asyncio.gather(*worker.tasks.values())
    finally:
        await worker.close()


class PrivateRedis:
    """A redis-server of this test's own, on a free loopback port, to stop and start again."""

    def __init__(self, binary: str, folder: Path) -> None:
        self.binary, self.folder = binary, folder
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        command = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        command += ["--appendonly", "no", "--dir", str(self.folder)]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"redis-server did not listen on port {self.port} within 10 s")
                time.sleep(0.02)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)
            self.process = None


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    binary = shutil.which("redis-server")
    if binary is None:
        message = "redis-server is not installed: this test stops and starts a Redis of its own"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    server = PrivateRedis(binary, tmp_path)
    server.start()
    yield server
    server.stop()


async def test_the_worker_rides_out_a_redis_outage(
    private_redis: PrivateRedis, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(arq_worker, "REDIS_RETRY_SECONDS", 0.1)
    monkeypatch.setattr(arq_worker, "RESUBSCRIBE_SECONDS", 0.1)
    caplog.set_level(logging.INFO, logger="engine.queue.arq_worker")
    ran = Ran()
    worker = delivery_worker(RedisSpace(private_redis.url, DEFAULT_QUEUE_NAME), ran, "a")
    running = asyncio.create_task(worker.async_run())
    queue = await ArqQueue.connect(private_redis.url)
    try:
        await queue.enqueue(["before"])
        await wait_until(ran_exactly(ran, ["before"]))

        private_redis.stop()
        await asyncio.sleep(1.0)
        assert not running.done(), "the worker stopped when Redis went away"
        private_redis.start()
        await queue.enqueue(["after"])
        await wait_until(ran_exactly(ran, ["before", "after"]))

        assert not running.done()
        said = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "engine.queue.arq_worker"]
        lost = [message for level, message in said if message.startswith("lost Redis")]
        assert len(lost) == 1, said
        assert ("INFO", "Redis is back") in said

        private_redis.stop()  # and it stops cleanly while Redis is away
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        await worker.close()
        assert any(r.getMessage().startswith("stopping without Redis") for r in caplog.records)
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        await worker.close()
        await queue.close()


async def test_where_redis_forbids_pub_sub_jobs_are_still_taken_and_found_by_polling(
    private_redis: PrivateRedis, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(arq_worker, "IDLE_POLL_SECONDS", 0.1)
    caplog.set_level(logging.INFO, logger="engine.queue.arq_worker")
    admin = aioredis.Redis.from_url(private_redis.url)
    await admin.acl_setuser(
        "limited",
        enabled=True,
        passwords=["+limited-pw"],
        keys=["*"],
        channels=["*"],
        commands=["+@all", "-publish", "-subscribe"],
    )
    await admin.aclose()
    limited_url = private_redis.url.replace("redis://", "redis://limited:limited-pw@")
    ran = Ran()
    worker = delivery_worker(RedisSpace(limited_url, DEFAULT_QUEUE_NAME), ran, "a")
    running = asyncio.create_task(worker.async_run())
    queue = await ArqQueue.connect(limited_url)
    try:
        await queue.enqueue(["d-1"])  # the script's PUBLISH is refused; the job is queued anyway
        await wait_until(ran_exactly(ran, ["d-1"]))
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert [w for w in warnings if w.startswith("not subscribed to new jobs")], warnings
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        await worker.close()
        await queue.close()
