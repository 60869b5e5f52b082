"""Crashes of the distributed topology: a worker killed outright, Redis emptied under load;
and the queue lag the workers report meanwhile.

The store is the source of truth: a delivery whose worker died is taken over by
another worker, and one whose job vanished from Redis is enqueued again by the
sweeper. The ledger keeps every action that succeeded from running again; only
the action in flight when a worker died may reach its endpoint twice, with the
same Idempotency-Key (processing is at-least-once, actions effectively once).
"""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis

from engine.store.tables import ActionStatus, DeliveryStatus
from tests.pipeline.test_worker import terminate_connections

from .conftest import (
    PO_PATH,
    REORDER,
    REQUEUE_AFTER_SECONDS,
    SLACK_PATH,
    Answer,
    Deployment,
    Sink,
    connection_owner,
    keys,
    low_stock,
    until,
)

pytestmark = [pytest.mark.e2e, pytest.mark.postgres, pytest.mark.redis]
distributed = pytest.mark.parametrize("topology", ["distributed"], indirect=True)


@distributed
async def test_worker_killed_mid_action_is_taken_over_and_each_action_succeeds_once(
    deployment: Deployment, sink: Sink
) -> None:
    sink.script(SLACK_PATH, Answer(delay=10))  # the first Slack message hangs: the kill lands there
    await deployment.accept("killed-1", low_stock("killed"))
    order, slack = keys("killed-1", REORDER)
    await until(lambda: bool(sink.with_key(slack)), 15, "the Slack action never started")
    in_flight = sink.with_key(slack)[0]
    victim_pid = connection_owner(in_flight.client_port, [w.pid for w in deployment.workers])
    assert victim_pid is not None, "no worker holds the connection of the Slack request"
    [victim] = [w for w in deployment.workers if w.pid == victim_pid]
    [survivor] = [w for w in deployment.workers if w.pid != victim_pid]
    victim.kill()

    # Deliveries keep arriving meanwhile; the survivor takes them and the orphan.
    await deployment.accept("after-kill", low_stock("after"))
    rows = await deployment.finished(["killed-1", "after-kill"], within=20)
    assert {row.status for row in rows.values()} == {DeliveryStatus.DONE}
    assert rows["killed-1"].runs >= 2

    # The purchase order succeeded before the kill: never sent again. The Slack message in
    # flight was sent again (the documented at-least-once edge), with the same Idempotency-Key.
    assert sink.counts([order, slack]) == {order: 1, slack: 2}
    first, again = sink.with_key(slack)
    assert first.json == again.json == {"text": "Ordered 7 x Tent killed"}
    assert sink.counts(keys("after-kill", REORDER)) == dict.fromkeys(keys("after-kill", REORDER), 1)
    ledger = await deployment.ledger("killed-1")
    assert (ledger[(REORDER, 0)].status, ledger[(REORDER, 0)].attempts) == (ActionStatus.SUCCEEDED, 1)
    assert ledger[(REORDER, 1)].status is ActionStatus.SUCCEEDED
    assert survivor.alive()
    assert any(line.get("delivery_id") == "killed-1" for line in survivor.log_events())


@distributed
async def test_worker_sigterm_finishes_the_delivery_in_hand_first(deployment: Deployment, sink: Sink) -> None:
    sink.script(SLACK_PATH, Answer(delay=1.5))
    await deployment.accept("stopping-1", low_stock("stopping"))
    order, slack = keys("stopping-1", REORDER)
    await until(lambda: bool(sink.with_key(slack)), 15, "the Slack action never started")
    owner = connection_owner(sink.with_key(slack)[0].client_port, [w.pid for w in deployment.workers])
    [stopping] = [w for w in deployment.workers if w.pid == owner]

    assert stopping.terminate() == 0, stopping.log()
    row = await deployment.store.get("stopping-1")
    assert row is not None
    assert row.status is DeliveryStatus.DONE  # finished before the worker exited, not handed over
    assert sink.counts([order, slack]) == {order: 1, slack: 1}
    assert any(line["event"].startswith("stopped:") for line in stopping.log_events())


@distributed
async def test_redis_emptied_while_deliveries_arrive_loses_nothing(
    deployment: Deployment, sink: Sink
) -> None:
    # Slow purchase orders fill the workers' slots, so jobs wait in Redis when it is emptied.
    sink.script(PO_PATH, *[Answer(delay=1.0)] * 20)
    first_wave = [f"wave1-{n}" for n in range(24)]
    await asyncio.gather(*(deployment.accept(d, low_stock(d)) for d in first_wave))
    await until(lambda: len(sink.requests(PO_PATH)) >= 8, 10, "the workers never started the first wave")

    assert deployment.redis is not None
    redis = aioredis.from_url(deployment.redis.url)
    try:
        queued = await redis.zcard(deployment.redis.queue_name)
        # What a Redis restarted without persistence holds of this installation's: nothing. Its
        # keys alone: the database is shared with other tests, and maybe with a real engine.
        await deployment.redis.forget(redis)
    finally:
        await redis.aclose()
    assert queued > 0, "no job was waiting in Redis: the flush proved nothing"

    second_wave = [f"wave2-{n}" for n in range(16)]
    await asyncio.gather(*(deployment.accept(d, low_stock(d)) for d in second_wave))

    ids = first_wave + second_wave
    rows = await deployment.finished(ids, within=30)
    assert {row.status for row in rows.values()} == {DeliveryStatus.DONE}
    expected = [key for delivery_id in ids for key in keys(delivery_id, REORDER)]
    assert sink.counts(expected) == dict.fromkeys(expected, 1)
    assert len(sink.requests()) == len(expected)
    swept = [
        line
        for worker in deployment.workers
        for line in worker.log_events()
        if line["event"].startswith("sweeper enqueued")
    ]
    assert swept, "the lost jobs were not enqueued again by the sweeper"


@distributed
async def test_workers_report_the_queue_lag_of_a_delivery_waiting_for_a_retry(
    deployment: Deployment, sink: Sink
) -> None:
    # Workers serve their own /metrics (--metrics-port); the lag gauge is refreshed at every sweep.
    sink.script(PO_PATH, Answer(429, headers={"Retry-After": "4"}), Answer(201))
    await deployment.accept("lagging-1", low_stock("lagging"))
    order, _ = keys("lagging-1", REORDER)
    await until(lambda: bool(sink.with_key(order)), 15, "the order was never attempted")

    async def lags() -> bool:
        for worker in deployment.workers:
            text = (await deployment.http.get(worker.metrics_url, timeout=2)).text
            line = next(row for row in text.splitlines() if row.startswith("stockaj_queue_lag_seconds "))
            if float(line.split()[1]) > 0:
                return True
        return False

    deadline = asyncio.get_running_loop().time() + 3.5  # sweeps come every 0.5 s; the retry in 4 s
    while not await lags():
        assert asyncio.get_running_loop().time() < deadline, "no worker reported the waiting delivery"
        await asyncio.sleep(0.2)
    await deployment.finished(["lagging-1"])


@distributed
async def test_an_action_outliving_its_job_in_redis_is_not_run_again_by_another_worker(
    deployment: Deployment, sink: Sink
) -> None:
    # The Slack call takes three times REQUEUE_AFTER_SECONDS, and Redis loses the job meanwhile:
    # the sweeper must not hand the delivery to the other worker while its action still runs.
    sink.script(SLACK_PATH, Answer(delay=3 * REQUEUE_AFTER_SECONDS))
    await deployment.accept("long-1", low_stock("long"))
    order, slack = keys("long-1", REORDER)
    await until(lambda: bool(sink.with_key(slack)), 15, "the Slack action never started")
    assert deployment.redis is not None
    redis = aioredis.from_url(deployment.redis.url)
    try:
        await deployment.redis.forget(redis)
    finally:
        await redis.aclose()

    rows = await deployment.finished(["long-1"], within=20)

    assert rows["long-1"].status is DeliveryStatus.DONE
    assert sink.counts([order, slack]) == {order: 1, slack: 1}
    assert rows["long-1"].runs == 1


@distributed
async def test_postgresql_dropping_the_workers_connections_is_a_warning_not_a_traceback(
    deployment: Deployment, sink: Sink
) -> None:
    # Idle workers: the first statement sent after the drop is a sweep (one worker runs each
    # tick of the cron job, every 0.5 s) or a heartbeat (every 10 s,
    # engine/pipeline/health_records.py). It fails once, says so in one line, and the next
    # ones run on fresh connections.
    await terminate_connections(deployment.database_url)
    one_line_warnings = ("sweep failed", "could not record this process's heartbeat")

    def warned() -> bool:
        return any(
            line["event"].startswith(one_line_warnings)
            for worker in deployment.workers
            for line in worker.log_events()
        )

    await until(warned, 10, "no worker reported the dropped connection")
    await deployment.accept("after-drop", low_stock("after-drop"))
    rows = await deployment.finished(["after-drop"], within=20)
    assert rows["after-drop"].status is DeliveryStatus.DONE
    for worker in deployment.workers:
        assert "Traceback" not in worker.log(), worker.log()
