"""Every action once, in both topologies: concurrent duplicates, failing endpoints, slow actions, restarts.

Each test runs twice: `embedded` (`serve` alone on SQLite, the in-process worker)
and `distributed` (`serve` and two `worker`s on the real Redis and PostgreSQL).
Exactly-once is checked where it shows: the sink counts requests per
Idempotency-Key (one key per delivery, rule and action), and the ledger in the
store says each action succeeded, after how many attempts.
"""

from __future__ import annotations

import asyncio
import json
import signal

import httpx
import pytest

from engine.store.tables import ActionStatus, DeliveryStatus

from .conftest import (
    CRM_PREFIX,
    CRM_TOKEN,
    PO_PATH,
    PO_TOKEN,
    RENTAL,
    REORDER,
    REQUEUE_AFTER_SECONDS,
    SLACK_PATH,
    Answer,
    Deployment,
    Sink,
    keys,
    low_stock,
    rental,
    until,
)

pytestmark = pytest.mark.e2e


async def test_concurrent_identical_posts_run_each_action_once(deployment: Deployment, sink: Sink) -> None:
    others = [f"pair-{n}" for n in range(15)]
    posts = [deployment.post("dup-1", low_stock(1)) for _ in range(50)]
    posts += [deployment.post(other, low_stock(other)) for other in others for _ in range(2)]
    answers = await asyncio.gather(*posts)

    assert {answer.status_code for answer in answers} == {200}
    identical = [answer.json() for answer in answers[:50]]
    assert sorted(answer["duplicate"] for answer in identical) == [False] + [True] * 49
    assert {answer["delivery_id"] for answer in identical} == {"dup-1"}
    for other in others:
        pair = [a.json()["duplicate"] for a in answers[50:] if a.json()["delivery_id"] == other]
        assert sorted(pair) == [False, True]

    ids = ["dup-1", *others]
    rows = await deployment.finished(ids)
    assert {row.status for row in rows.values()} == {DeliveryStatus.DONE}
    expected = [key for delivery_id in ids for key in keys(delivery_id, REORDER)]
    assert sink.counts(expected) == dict.fromkeys(expected, 1)
    assert len(sink.requests()) == len(expected)  # nothing else was sent

    order_key, slack_key = keys("dup-1", REORDER)
    [order] = sink.with_key(order_key)
    assert order.path == PO_PATH
    assert order.headers["authorization"] == f"Bearer {PO_TOKEN}"
    assert order.json == {"item_sku": "SKU-1", "quantity": 7, "notes": "Auto-reorder: Tent 1"}
    [message] = sink.with_key(slack_key)
    assert (message.path, message.json) == (SLACK_PATH, {"text": "Ordered 7 x Tent 1"})
    for delivery_id in ids:
        ledger = await deployment.ledger(delivery_id)
        assert {(k, run.status, run.attempts) for k, run in ledger.items()} == {
            ((REORDER, 0), ActionStatus.SUCCEEDED, 1),
            ((REORDER, 1), ActionStatus.SUCCEEDED, 1),
        }

    # A sweep later (REQUEUE_AFTER_SECONDS), nothing was run again.
    await asyncio.sleep(REQUEUE_AFTER_SECONDS + 1)
    assert len(sink.requests()) == len(expected)
    listed = deployment.cli("deliveries", "list", "--status", "done", "--limit", "100").stdout
    rows_listed = [line.split() for line in listed.splitlines()]
    assert sorted(row[-1] for row in rows_listed if row[1:2] == ["done"]) == sorted(ids)


async def test_failing_endpoints_are_retried_waited_for_or_failed_as_documented(
    deployment: Deployment, sink: Sink
) -> None:
    sink.script(CRM_PREFIX + "r500", Answer(500, body=b'{"error": "busy"}'), Answer(200))
    sink.script(CRM_PREFIX + "r429", Answer(429, headers={"Retry-After": "1"}), Answer(201))
    sink.script(CRM_PREFIX + "r400", Answer(400, body=b'{"error": "unknown renter"}'))
    for rental_id in ("r500", "r429", "r400"):
        await deployment.accept(f"d-{rental_id}", rental(rental_id))
    rows = await deployment.finished(["d-r500", "d-r429", "d-r400"])

    # 500 then 200: retried, with the same Idempotency-Key, then the rule went on.
    crm, slack = keys("d-r500", RENTAL)
    assert rows["d-r500"].status is DeliveryStatus.DONE
    assert sink.counts([crm, slack]) == {crm: 2, slack: 1}
    for request in sink.with_key(crm):
        assert request.path == CRM_PREFIX + "r500"
        assert request.headers["authorization"] == f"Bearer {CRM_TOKEN}"
        assert request.json == {"rental": "r500", "renter": "Ada Lovelace"}
    ledger = await deployment.ledger("d-r500")
    run = ledger[(RENTAL, 0)]
    assert (run.status, run.attempts, run.response_status) == (ActionStatus.SUCCEEDED, 2, 200)
    assert CRM_TOKEN not in str(run.params)  # secrets are masked in the delivery log

    # 429 with Retry-After: 1: the second attempt came no sooner than asked.
    crm, slack = keys("d-r429", RENTAL)
    assert rows["d-r429"].status is DeliveryStatus.DONE
    assert sink.counts([crm, slack]) == {crm: 2, slack: 1}
    first, second = sink.with_key(crm)
    assert second.at - first.at >= 1.0
    run = (await deployment.ledger("d-r429"))[(RENTAL, 0)]
    assert (run.status, run.attempts, run.response_status) == (ActionStatus.SUCCEEDED, 2, 201)

    # 400: failed at once, recorded, not retried; the rule's later action skipped.
    crm, slack = keys("d-r400", RENTAL)
    assert rows["d-r400"].status is DeliveryStatus.FAILED
    ledger = await deployment.ledger("d-r400")
    run = ledger[(RENTAL, 0)]
    assert (run.status, run.attempts, run.response_status) == (ActionStatus.FAILED, 1, 400)
    assert "400" in str(run.last_error)
    assert ledger[(RENTAL, 1)].status is ActionStatus.SKIPPED
    story = deployment.cli("deliveries", "show", "d-r400").stdout
    assert "status    failed" in story
    assert "http: failed, 1 attempt(s), response 400" in story
    assert "unknown renter" in story
    assert "Bearer ***" in story
    assert CRM_TOKEN not in story
    await asyncio.sleep(1.0)  # five retry bases: a retry would have come by now
    assert sink.counts([crm, slack]) == {crm: 1, slack: 0}


async def test_action_slower_than_requeue_after_runs_once(deployment: Deployment, sink: Sink) -> None:
    """A delivery still in progress when its REQUEUE_AFTER_SECONDS pass is not run a second time."""
    sink.script(SLACK_PATH, Answer(delay=REQUEUE_AFTER_SECONDS + 1.5))
    await deployment.accept("slow-1", low_stock("slow"))
    rows = await deployment.finished(["slow-1"])
    assert rows["slow-1"].status is DeliveryStatus.DONE
    order, slack = keys("slow-1", REORDER)
    assert sink.counts([order, slack]) == {order: 1, slack: 1}


async def test_serve_sigterm_and_restart_lose_nothing_and_recognise_duplicates(
    deployment: Deployment, sink: Sink
) -> None:
    await deployment.accept("before", low_stock("before"))
    await deployment.finished(["before"])
    assert deployment.serve is not None
    serve = deployment.serve

    # Deliveries keep arriving, purchase orders are slow (a backlog builds up), and SIGTERM lands.
    sink.script(PO_PATH, *[Answer(delay=0.4)] * 40)
    ids = [f"storm-{n}" for n in range(40)]
    acknowledged: set[str] = set()

    async def stockaj() -> None:
        for delivery_id in ids:
            try:
                answer = await deployment.post(delivery_id, low_stock(delivery_id))
            except httpx.TransportError:
                continue  # not acknowledged: Stockaj retries it later
            if answer.status_code == 200:
                acknowledged.add(delivery_id)
            await asyncio.sleep(0.01)

    posting = asyncio.create_task(stockaj())
    await until(lambda: len(acknowledged) >= 15 and len(sink.requests(PO_PATH)) > 1, 10, "no storm")
    serve.popen.send_signal(signal.SIGTERM)
    exit_code = await asyncio.to_thread(serve.wait, 25)
    await posting
    assert exit_code in (0, -signal.SIGTERM), serve.log()  # uvicorn ends on the signal it stopped on
    assert "Traceback" not in serve.log()
    assert any(line["event"].startswith("stopped:") for line in serve.log_events()), serve.log()
    if deployment.topology == "embedded":
        left = [await deployment.store.get(delivery_id) for delivery_id in acknowledged]
        statuses = {row.status for row in left if row is not None}
        # What was in hand finished; what was still queued waits in the store for the next start.
        assert DeliveryStatus.PROCESSING not in statuses
        assert DeliveryStatus.RECEIVED in statuses

    await deployment.start_serve()
    # The "Send Test" of this side, with a delivery id stored before the restart: a duplicate.
    fixture = deployment.root / "before.json"
    fixture.write_text(
        json.dumps(
            {
                "name": "before",
                "event": "item.low_stock",
                "delivery_id": "before",
                "payload": low_stock("before"),
            }
        )
    )
    sent = deployment.cli("send", str(fixture), "--url", deployment.url + "/webhooks/stockaj")
    assert '"duplicate":true' in sent.stdout.replace(" ", ""), sent.stdout
    # Stockaj retries everything: what was acknowledged (or stored) is a duplicate now.
    for delivery_id in ["before", *ids]:
        answer = await deployment.post(delivery_id, low_stock(delivery_id))
        assert answer.status_code == 200
        if delivery_id in acknowledged or delivery_id == "before":
            assert answer.json()["duplicate"] is True, delivery_id
    rows = await deployment.finished(["before", *ids])
    assert {row.status for row in rows.values()} == {DeliveryStatus.DONE}
    expected = [key for delivery_id in ["before", *ids] for key in keys(delivery_id, REORDER)]
    assert sink.counts(expected) == dict.fromkeys(expected, 1)
    assert len(sink.requests()) == len(expected)
