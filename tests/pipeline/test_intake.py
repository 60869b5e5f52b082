"""Storing deliveries: dedupe, group commit, a store or queue that fails (spec section 3).

Real parts throughout: the receiver app over a `DeliveryIntake`, the real
`Store` on SQLite and on the real PostgreSQL (a fresh database per test),
the in-process queue with a recording process function, and arq on the real
Redis where the queue is what the test is about.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import sqlite3
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest
import redis.asyncio as aioredis
from arq.constants import job_key_prefix
from quart import Quart
from sqlalchemy import func, select
from sqlalchemy.engine import make_url

from engine.pipeline.intake import DeliveryIntake, StoreUnavailable
from engine.pipeline.metrics import Metrics
from engine.pipeline.receiver import WEBHOOK_PATH, ReceiverParts, create_app
from engine.pipeline.sweeper import Sweeper
from engine.queue import ArqQueue, DeliveryQueue, InProcessQueue
from engine.queue.receiver_activity import QUIET_AFTER_SECONDS
from engine.signing import sign
from engine.store import NewDelivery, Store, database
from engine.store.tables import deliveries
from tests.redis_space import RedisSpace

SECRET = "whsec-intake-91b2"
BODY = orjson.dumps({"event": "item.updated", "data": {"id": 7, "name": "Tent", "quantity": 4}})
REQUEUE_AFTER = timedelta(seconds=60)

BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty database: SQLite in tmp_path, or a new database on the real PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'stockaj.db'}"
    url: str = request.getfixturevalue("fresh_postgres_url")
    return url


@pytest.fixture
def postgres_database(request: pytest.FixtureRequest) -> str:
    url: str = request.getfixturevalue("fresh_postgres_url")
    return url


class CountingStore(Store):
    """The real store, counting the transactions that store deliveries."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.batches: list[int] = []

    async def add_deliveries(self, batch: Sequence[NewDelivery], due_at: datetime) -> set[str]:
        self.batches.append(len(batch))
        return await super().add_deliveries(batch, due_at)


@dataclass
class Receiver:
    app: Quart
    store: CountingStore
    intake: DeliveryIntake
    metrics: Metrics
    processed: list[str]

    async def rows(self) -> int:
        async with self.store.engine.connect() as connection:
            return int((await connection.execute(select(func.count()).select_from(deliveries))).scalar_one())

    async def post(self, delivery: str, body: bytes = BODY) -> tuple[int, Any]:
        sent = {
            "X-Stockaj-Signature": sign(body, SECRET),
            "X-Stockaj-Event": "item.updated",
            "X-Stockaj-Delivery": delivery,
        }
        response = await self.app.test_client().post(WEBHOOK_PATH, data=body, headers=sent)
        return response.status_code, orjson.loads(await response.get_data())


async def _no_checks() -> dict[str, Any]:
    return {}


async def _nothing() -> None:
    return None


@contextlib.asynccontextmanager
async def receiver(
    url: str, queue: DeliveryQueue | None = None, *, migrate: bool = True
) -> AsyncIterator[Receiver]:
    """A receiver over its own engine, as one receiver process has."""
    engine = database.create_engine(url)
    if migrate:
        await database.upgrade(engine)
    store = CountingStore(engine)
    metrics = Metrics()
    processed: list[str] = []

    async def process(delivery_id: str) -> None:
        processed.append(delivery_id)

    own_queue = queue is None
    the_queue: DeliveryQueue = InProcessQueue(process) if queue is None else queue
    intake = DeliveryIntake(store, the_queue, metrics, REQUEUE_AFTER)
    intake.start()
    app = create_app(
        ReceiverParts(
            secrets=(SECRET,),
            max_body_bytes=1024 * 1024,
            intake=intake,
            metrics=metrics,
            readiness=_no_checks,
            refresh_metrics=_nothing,
        )
    )
    try:
        yield Receiver(app, store, intake, metrics, processed)
    finally:
        await intake.stop()
        if own_queue:
            await the_queue.close()
        await store.close()


async def wait_for(condition: Any, within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


# --- dedupe and group commit ---------------------------------------------------------------------


async def test_50_concurrent_identical_posts_store_one_row_and_answer_one_new(database_url: str) -> None:
    async with receiver(database_url) as r:
        answers = await asyncio.gather(*(r.post("dlv-same") for _ in range(50)))

        assert {status for status, _ in answers} == {200}
        flags = [answer["duplicate"] for _, answer in answers]
        assert flags.count(False) == 1
        assert flags.count(True) == 49
        assert all(answer["delivery_id"] == "dlv-same" for _, answer in answers)
        assert await r.rows() == 1
        await wait_for(lambda: r.processed == ["dlv-same"])
        assert r.metrics.registry.get_sample_value("stockaj_duplicate_deliveries_total") == 49


async def test_two_receivers_on_one_database_store_a_redelivery_once(database_url: str) -> None:
    async with receiver(database_url) as one, receiver(database_url, migrate=False) as two:
        answers = await asyncio.gather(*((one if n % 2 else two).post("dlv-both") for n in range(50)))

        flags = [answer["duplicate"] for status, answer in answers if status == 200]
        assert len(flags) == 50
        assert flags.count(False) == 1
        assert await one.rows() == 1


async def test_group_commit_stores_100_concurrent_posts_in_a_few_transactions(database_url: str) -> None:
    async with receiver(database_url) as r:
        answers = await asyncio.gather(*(r.post(f"dlv-{n:03}") for n in range(100)))

        assert [answer for _, answer in answers] == [
            {"received": True, "duplicate": False, "delivery_id": f"dlv-{n:03}"} for n in range(100)
        ]
        assert await r.rows() == 100
        assert sum(r.store.batches) == 100
        assert len(r.store.batches) < 100
        assert max(r.store.batches) >= 10, r.store.batches
        await wait_for(lambda: len(r.processed) == 100)
        assert sorted(r.processed) == [f"dlv-{n:03}" for n in range(100)]


async def test_the_receiver_is_quiet_only_once_no_request_was_in_hand_for_a_while(database_url: str) -> None:
    async with receiver(database_url) as r:
        quiet = r.intake.activity.quiet
        assert quiet.is_set()
        seen_busy: list[bool] = []
        add_deliveries = r.store.add_deliveries

        async def watched(batch: Sequence[NewDelivery], due_at: datetime) -> set[str]:
            seen_busy.append(not quiet.is_set())
            return await add_deliveries(batch, due_at)

        r.store.add_deliveries = watched  # type: ignore[method-assign]
        await asyncio.gather(*(r.post(f"dlv-{n}") for n in range(20)))

        assert seen_busy
        assert all(seen_busy)
        with r.intake.activity.receiving():
            assert not quiet.is_set()
        assert not quiet.is_set()  # just answered: the next request of a burst may be coming
        started = time.monotonic()
        await wait_for(quiet.is_set)
        assert time.monotonic() - started >= QUIET_AFTER_SECONDS


async def test_a_batch_holding_one_id_twice_answers_the_first_as_new(database_url: str) -> None:
    async with receiver(database_url) as r:
        now = datetime.now(UTC)
        first = NewDelivery("dlv-twice", "item.updated", {}, b'{"n": 1}', now)
        second = NewDelivery("dlv-twice", "item.updated", {}, b'{"n": 2}', now)
        other = NewDelivery("dlv-other", "item.updated", {}, b'{"n": 3}', now)

        assert await asyncio.gather(*map(r.intake.submit, (first, other, second))) == [True, True, False]
        stored = await r.store.get("dlv-twice")
        assert stored is not None
        assert stored.body == b'{"n": 1}'


@pytest.mark.postgres
async def test_receivers_storing_the_same_ids_in_opposite_orders_never_fail_a_request(
    postgres_database: str,
) -> None:
    ids = [f"dlv-{n:04}" for n in range(300)]
    now = datetime.now(UTC)
    async with receiver(postgres_database) as one, receiver(postgres_database, migrate=False) as two:
        for _round in range(3):
            submitted = [
                *(one.intake.submit(NewDelivery(i + f"-{_round}", "e", {}, b"{}", now)) for i in ids),
                *(
                    two.intake.submit(NewDelivery(i + f"-{_round}", "e", {}, b"{}", now))
                    for i in reversed(ids)
                ),
            ]
            answers = await asyncio.gather(*submitted, return_exceptions=True)
            assert not [a for a in answers if isinstance(a, BaseException)]
            assert answers.count(True) == len(ids)
        assert await one.rows() == 3 * len(ids)


@pytest.mark.postgres
async def test_a_row_the_store_refuses_fails_only_its_own_request(postgres_database: str) -> None:
    now = datetime.now(UTC)
    async with receiver(postgres_database) as r:
        good = [NewDelivery(f"dlv-good-{n}", "item.updated", {}, b"{}", now) for n in range(5)]
        bad = NewDelivery("dlv-\x00-nul", "item.updated", {}, b"{}", now)  # PostgreSQL text holds no NUL

        answers = await asyncio.gather(
            *map(r.intake.submit, [*good[:2], bad, *good[2:]]), return_exceptions=True
        )

        assert answers[:2] + answers[3:] == [True] * 5
        assert isinstance(answers[2], StoreUnavailable)
        assert await r.rows() == 5


async def test_a_sqlite_write_lock_held_by_another_process_is_waited_for_off_the_event_loop(
    tmp_path: Path,
) -> None:
    path = tmp_path / "stockaj.db"
    async with receiver(f"sqlite+aiosqlite:///{path}") as r:
        assert (await r.post("dlv-before"))[0] == 200
        other = sqlite3.connect(path, isolation_level=None)  # a CLI command, a worker process
        other.execute("BEGIN IMMEDIATE")
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.005)

        ticker = asyncio.create_task(tick())
        posted = asyncio.create_task(r.post("dlv-while-locked"))
        await asyncio.sleep(0.3)
        try:
            assert not posted.done()
            assert ticks >= 10, "the event loop stood still while the write waited for the lock"
        finally:
            other.execute("COMMIT")
            other.close()
            ticker.cancel()

        assert await posted == (
            200,
            {"received": True, "duplicate": False, "delivery_id": "dlv-while-locked"},
        )
        assert await r.post("dlv-after") == (
            200,
            {"received": True, "duplicate": False, "delivery_id": "dlv-after"},
        )
        assert await r.rows() == 3


# --- the store cannot be written ---------------------------------------------------------------


async def test_sqlite_store_that_cannot_be_opened_answers_503_and_recovers(tmp_path: Path) -> None:
    path = tmp_path / "stockaj.db"
    async with receiver(f"sqlite+aiosqlite:///{path}") as r:
        assert (await r.post("dlv-before"))[0] == 200
        await r.store.close()
        shutil.move(path, tmp_path / "aside.db")
        path.write_bytes(b"this is not a database " * 100)  # a file replaced under the receiver

        failed = await asyncio.gather(*(r.post(f"dlv-down-{n}") for n in range(5)))
        assert failed == [(503, {"error": "the delivery could not be stored; retry later"})] * 5

        await r.store.close()
        path.unlink()
        shutil.move(tmp_path / "aside.db", path)
        assert await r.post("dlv-down-0") == (
            200,
            {"received": True, "duplicate": False, "delivery_id": "dlv-down-0"},
        )
        assert await r.post("dlv-before") == (
            200,
            {"received": True, "duplicate": True, "delivery_id": "dlv-before"},
        )
        assert await r.rows() == 2
        outcome = {"event": "item.updated", "outcome": "store_unavailable"}
        assert r.metrics.registry.get_sample_value("stockaj_deliveries_received_total", outcome) == 5


async def _admin(url: str) -> asyncpg.Connection:
    dsn = (
        make_url(url).set(drivername="postgresql", database="postgres").render_as_string(hide_password=False)
    )
    return await asyncpg.connect(dsn)


@pytest.mark.postgres
async def test_postgres_refusing_connections_answers_503_and_recovers(postgres_database: str) -> None:
    name = make_url(postgres_database).database
    admin = await _admin(postgres_database)
    try:
        async with receiver(postgres_database) as r:
            assert (await r.post("dlv-before"))[0] == 200
            await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", name
            )

            assert await r.post("dlv-during") == (
                503,
                {"error": "the delivery could not be stored; retry later"},
            )

            await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
            assert await r.post("dlv-during") == (
                200,
                {"received": True, "duplicate": False, "delivery_id": "dlv-during"},
            )
            assert await r.rows() == 2
    finally:
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        await admin.close()


@pytest.mark.postgres
async def test_postgres_connections_killed_between_requests_are_replaced_without_a_503(
    postgres_database: str,
) -> None:
    name = make_url(postgres_database).database
    admin = await _admin(postgres_database)
    try:
        async with receiver(postgres_database) as r:
            assert (await r.post("dlv-1"))[0] == 200
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", name
            )
            assert (await r.post("dlv-2"))[0] == 200
            assert await r.rows() == 2
    finally:
        await admin.close()


@pytest.mark.postgres
async def test_stopping_answers_a_request_stuck_on_the_store_with_503(postgres_database: str) -> None:
    now = datetime.now(UTC)
    async with receiver(postgres_database) as r, r.store.engine.connect() as other:
        # Another receiver's transaction holds the row: an insert of the same id waits for it.
        await other.execute(
            deliveries.insert().values(
                delivery_id="dlv-locked",
                event="e",
                status="received",
                headers={},
                body=b"{}",
                received_at=now,
                updated_at=now,
                due_at=now,
                runs=0,
            )
        )
        stuck = asyncio.create_task(r.intake.submit(NewDelivery("dlv-locked", "e", {}, b"{}", now)))
        await asyncio.sleep(0.3)
        assert not stuck.done()

        await r.intake.stop(grace=0.2)

        with pytest.raises(StoreUnavailable):
            await asyncio.wait_for(stuck, 2)
        with pytest.raises(StoreUnavailable):
            await r.intake.submit(NewDelivery("dlv-after", "e", {}, b"{}", now))
        await other.rollback()


# --- the queue ------------------------------------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_a_queue_outage_still_answers_200_and_the_sweeper_finds_the_delivery(database_url: str) -> None:
    queue = await ArqQueue.connect(f"redis://127.0.0.1:{_closed_port()}/0")
    try:
        async with receiver(database_url, queue) as r:
            status, answer = await r.post("dlv-queue-down")

            assert (status, answer) == (
                200,
                {"received": True, "duplicate": False, "delivery_id": "dlv-queue-down"},
            )
            stored = await r.store.get("dlv-queue-down")
            assert stored is not None
            assert stored.status.value == "received"
            assert stored.due_at is not None
            assert stored.due_at - stored.received_at == pytest.approx(
                REQUEUE_AFTER, abs=timedelta(seconds=1)
            )
            failures = r.metrics.registry.get_sample_value
            await wait_for(lambda: failures("stockaj_enqueue_failures_total") == 1)
            assert await r.store.due_deliveries(stored.due_at) == ["dlv-queue-down"]
            assert await r.store.due_deliveries(stored.due_at - timedelta(seconds=1)) == []
    finally:
        await queue.close()


@pytest.mark.redis
async def test_after_a_queue_outage_the_sweeper_enqueues_the_stored_delivery_on_redis(
    database_url: str, redis_space: RedisSpace
) -> None:
    down = await ArqQueue.connect(f"redis://127.0.0.1:{_closed_port()}/0")
    up = await ArqQueue.connect(redis_space.url, redis_space.queue_name)
    redis = aioredis.from_url(redis_space.url)
    try:
        async with receiver(database_url, down) as r:
            assert (await r.post("dlv-later"))[0] == 200
            stored = await r.store.get("dlv-later")
            assert stored is not None
            assert stored.due_at is not None
            await wait_for(lambda: r.metrics.registry.get_sample_value("stockaj_enqueue_failures_total") == 1)
            assert await redis.zrange(redis_space.queue_name, 0, -1) == []

            later = stored.due_at + timedelta(seconds=1)
            sweeper = Sweeper(
                r.store, up, r.metrics, timedelta(days=7), timedelta(days=30), clock=lambda: later
            )
            assert await sweeper.sweep() == 1
            job_id = redis_space.job_id("dlv-later")
            assert await redis.zrange(redis_space.queue_name, 0, -1) == [job_id.encode()]
            assert await redis.exists(job_key_prefix + job_id) == 1
    finally:
        await redis.aclose()
        await up.close()
        await down.close()


@pytest.mark.redis
async def test_accepted_deliveries_are_enqueued_to_arq_once_each(
    database_url: str, redis_space: RedisSpace
) -> None:
    queue = await ArqQueue.connect(redis_space.url, redis_space.queue_name)
    redis = aioredis.from_url(redis_space.url)
    try:
        async with receiver(database_url, queue) as r:
            answers = await asyncio.gather(*(r.post(f"dlv-{n % 20}") for n in range(60)))
            assert [a["duplicate"] for _, a in answers].count(False) == 20

            async def queued() -> list[bytes]:
                return sorted(await redis.zrange(redis_space.queue_name, 0, -1))

            for _ in range(250):
                if len(await queued()) == 20:
                    break
                await asyncio.sleep(0.02)
            assert await queued() == sorted(redis_space.job_id(f"dlv-{n}").encode() for n in range(20))
            assert r.metrics.registry.get_sample_value("stockaj_enqueue_failures_total") == 0
    finally:
        await redis.aclose()
        await queue.close()
