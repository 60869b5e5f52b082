"""What people see when deliveries fail, in both topologies: the failure alert, and redeliver.

A delivery that ends `failed` raises the engine's own event
`stockaj_rules.delivery_failed`, processed like any delivery: the shipped rule
`rules/delivery-failed-to-slack.yaml` posts it to Slack (here, the sink). And
`redeliver` runs a delivery now, even one whose action waits for a long retry.
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest

from actions.base import idempotency_key
from engine.store.tables import ActionStatus, DeliveryStatus

from .conftest import (
    CRM_PREFIX,
    RENTAL,
    REQUEUE_AFTER_SECONDS,
    SLACK_PATH,
    Answer,
    Deployment,
    Sink,
    eventually,
    keys,
    rental,
    until,
)

pytestmark = pytest.mark.e2e

SHIPPED_ALERT_RULE = Path(__file__).parents[2] / "rules" / "delivery-failed-to-slack.yaml"
ALERT_RULE = "delivery-failed-to-slack"
ALERT_EVENT = "stockaj_rules.delivery_failed"


def logged(deployment: Deployment, prefix: str) -> bool:
    """Every running process of the deployment logged a line starting with `prefix`."""
    return all(
        any(line["event"].startswith(prefix) for line in proc.log_events())
        for proc in deployment.processes
        if proc.alive()
    )


async def test_a_failed_delivery_raises_an_alert_that_the_shipped_rule_posts_to_slack(
    deployment: Deployment, sink: Sink
) -> None:
    shutil.copy(SHIPPED_ALERT_RULE, deployment.rules_dir)
    await until(lambda: logged(deployment, "rules reloaded: 3 rule(s)"), 15, "the alert rule was not loaded")
    sink.script(CRM_PREFIX + "r-bad", Answer(400, body=b'{"error": "unknown renter"}'))

    await deployment.accept("d-bad", rental("r-bad"))

    rows = await deployment.finished(["d-bad"])
    assert rows["d-bad"].status is DeliveryStatus.FAILED
    failed_run = rows["d-bad"].runs
    alert_id = f"{ALERT_EVENT}:d-bad:{failed_run}"
    alert = (await deployment.finished([alert_id]))[alert_id]
    assert (alert.event, alert.status) == (ALERT_EVENT, DeliveryStatus.DONE)
    [message] = sink.with_key(idempotency_key(alert_id, ALERT_RULE, 0))
    assert message.path == SLACK_PATH
    text = message.json["text"]
    first, failure, link = text.split("\n")
    assert first == "Delivery d-bad (rent.created) failed."
    assert failure.startswith(
        f"• {RENTAL}: actions[0] (http): POST http://127.0.0.1:{sink.port}/… answered 400"
    )
    assert "unknown renter" in failure
    assert link == "<http://127.0.0.1:8001/deliveries/d-bad|Open it in the console>"
    crm, slack = keys("d-bad", RENTAL)
    assert sink.counts([crm, slack]) == {crm: 1, slack: 0}
    listed = deployment.cli("deliveries", "list", "--status", "done").stdout
    assert alert_id in listed

    # One alert, one message: a sweep later (REQUEUE_AFTER_SECONDS), nothing more was sent.
    await asyncio.sleep(REQUEUE_AFTER_SECONDS + 0.5)
    assert len(sink.requests(SLACK_PATH)) == 1


async def test_redeliver_runs_a_delivery_now_instead_of_after_its_long_retry_wait(
    deployment: Deployment, sink: Sink
) -> None:
    sink.script(CRM_PREFIX + "r-wait", Answer(429, headers={"Retry-After": "600"}))
    await deployment.accept("d-wait", rental("r-wait"))
    crm, slack = keys("d-wait", RENTAL)

    async def waiting() -> bool | None:
        run = (await deployment.ledger("d-wait")).get((RENTAL, 0))
        return True if run is not None and run.status is ActionStatus.PENDING else None

    await eventually(waiting, 15, "the 429 was never recorded as a retry to wait for")
    # The endpoint is fixed; the operator does not wait ten minutes.
    answer = deployment.cli("redeliver", "d-wait")

    rows = await deployment.finished(["d-wait"], within=10)
    assert rows["d-wait"].status is DeliveryStatus.DONE, answer.stdout
    assert sink.counts([crm, slack]) == {crm: 2, slack: 1}
    run = (await deployment.ledger("d-wait"))[(RENTAL, 0)]
    assert (run.status, run.attempts, run.response_status) == (ActionStatus.SUCCEEDED, 1, 200)


async def test_a_retry_timer_left_behind_by_a_redelivery_runs_nothing_again(
    deployment: Deployment, sink: Sink
) -> None:
    sink.script(CRM_PREFIX + "r-soon", Answer(429, headers={"Retry-After": "3"}))
    await deployment.accept("d-soon", rental("r-soon"))
    crm, slack = keys("d-soon", RENTAL)
    await until(lambda: bool(sink.with_key(crm)), 15, "the CRM call was never attempted")

    async def waiting() -> bool | None:
        run = (await deployment.ledger("d-soon")).get((RENTAL, 0))
        return True if run is not None and run.status is ActionStatus.PENDING else None

    await eventually(waiting, 15, "the 429 was never recorded as a retry to wait for")
    deployment.cli("redeliver", "d-soon")
    await deployment.finished(["d-soon"], within=10)

    await asyncio.sleep(4.5)  # past the Retry-After: the first run's retry timer (or job) has fired

    assert sink.counts([crm, slack]) == {crm: 2, slack: 1}
    row = await deployment.store.get("d-soon")
    assert row is not None
    assert row.status is DeliveryStatus.DONE
