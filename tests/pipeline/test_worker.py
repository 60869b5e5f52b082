"""The delivery processor: match, render, execute, record, with the action ledger and retries.

Each test runs the real store, on SQLite and on the real PostgreSQL, with rules
loaded from YAML the way the engine loads them. Outgoing HTTP goes through
respx, and the tests assert the requests that were sent (URL, Idempotency-Key,
JSON). A controllable clock stands in for time, so retries are driven by
advancing it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import respx
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import create_async_engine

from actions.base import (
    Action,
    ActionContext,
    ActionFailed,
    ActionParams,
    ActionResult,
    DatabaseEngines,
    idempotency_key,
    utc_now,
)
from actions.base import Clock as ClockFunction
from actions.registry import ActionRegistry, load_registry
from engine.config import load_settings
from engine.language.loader import load_rules
from engine.pipeline.metrics import Metrics
from engine.pipeline.retry import RetryPolicy
from engine.pipeline.runners import CONNECTION_LOST_RETRY_SECONDS, process_surviving_connection_loss
from engine.pipeline.worker import DeliveryProcessor
from engine.queue import InProcessQueue
from engine.secrets import Masker
from engine.store import ActionRun, ClaimedDelivery, NewDelivery, Reopened, RunEnd, Store, database
from engine.store.tables import ActionStatus, DeliveryStatus
from engine.testing import T0, FakeClock
from tests.store.helpers import finish_run

TOKEN = "tok-5ecret-9f2a"
PO_URL = "https://po.example.com/orders"
CRM_URL = "https://crm.example.com/hook"
REQUEUE_AFTER = timedelta(seconds=60)

REORDER = """\
- id: reorder
  on: item.low_stock
  when: {"<=": [{var: data.quantity}, {var: data.minimum_quantity}]}
  actions:
    - type: http
      url: https://po.example.com/orders
      headers: {Authorization: "Bearer {{ secrets.PO_TOKEN }}"}
      json:
        sku: "{{ data.external_id }}"
        quantity: "{{ data.minimum_quantity * 2 - data.quantity }}"
    - type: log
      message: "ordered {{ data.external_id }}"
- id: rentals
  on: rent.created
  actions: [{type: log, message: "rental {{ data.id }}"}]
- id: retired
  on: item.low_stock
  enabled: false
  actions: [{type: log, message: never}]
"""

TWO_RULES = """\
- id: po
  on: item.low_stock
  actions:
    - type: http
      url: https://po.example.com/orders
      headers: {Authorization: "Bearer {{ secrets.PO_TOKEN }}"}
      json: {sku: "{{ data.external_id }}"}
    - type: log
      message: "after the order"
- id: crm
  on: item.low_stock
  actions:
    - type: http
      url: https://crm.example.com/hook
      json: {id: "{{ data.id }}"}
"""

ORDERED = """\
- id: two-steps
  on: item.low_stock
  actions:
    - type: http
      url: https://po.example.com/orders
      json: {step: 0}
    - type: http
      url: https://crm.example.com/hook
      json: {step: 1}
"""

THROTTLED = """\
- id: alert
  on: item.low_stock
  throttle: {key: "{{ data.external_id }}", per: 1m}
  actions:
    - type: http
      url: https://crm.example.com/hook
      json: {sku: "{{ data.external_id }}", delivery: "{{ delivery_id }}"}
"""


def low_stock(quantity: int = 3, **extra: Any) -> dict[str, Any]:
    data = {"id": 42, "name": "Tent 4p", "quantity": quantity, "minimum_quantity": 5}
    data.setdefault("external_id", "TENT-4P")
    data.update(extra)
    return data


class ExplodingParams(ActionParams):
    message: str


class GatedParams(ActionParams):
    name: str


class Gate:
    """What a `gated` action does: each run is counted; the first waits until the gate opens.

    `fail_first` makes that first run fail for good (a 400) once the gate opens.
    """

    def __init__(self, fail_first: bool = False) -> None:
        self.opened = asyncio.Event()
        self.started = asyncio.Event()
        self.runs: list[str] = []
        self.fail_first = fail_first

    def action(self) -> type[Action[GatedParams]]:
        gate = self

        class GatedAction(Action[GatedParams]):
            type = "gated"
            description = "Waits for the test to open its gate."
            Params = GatedParams

            async def run(self, params: GatedParams, ctx: ActionContext) -> ActionResult:
                gate.runs.append(ctx.idempotency_key)
                gate.started.set()
                if len(gate.runs) > 1:
                    return ActionResult(status=200)
                await gate.opened.wait()
                if gate.fail_first:
                    raise ActionFailed("HTTP 400: refused", transient=False, status=400)
                return ActionResult(status=200)

        return GatedAction

    def registry(self) -> ActionRegistry:
        registry = load_registry()
        registry.register(self.action())
        return registry


GATED = """\
- id: slow
  on: item.low_stock
  actions:
    - {type: gated, name: "{{ data.name }}"}
"""


class ExplodingAction(Action[ExplodingParams]):
    """A plugin with a bug: it raises something that is not ActionFailed."""

    type = "exploding"
    description = "Raises an unexpected exception."
    Params = ExplodingParams

    async def run(self, params: ExplodingParams, ctx: ActionContext) -> ActionResult:
        raise RuntimeError(f"boom while handling {params.message}")


@dataclass
class Bench:
    """The store, a clock, metrics and an HTTP client; builds processors over them."""

    store: Store
    tmp_path: Path
    http: httpx.AsyncClient
    clock: FakeClock = field(default_factory=FakeClock)
    metrics: Metrics = field(default_factory=Metrics)
    databases: DatabaseEngines = field(
        default_factory=lambda: DatabaseEngines(lambda url: create_async_engine(url))
    )

    def processor(
        self,
        rules: str,
        *,
        retry: RetryPolicy | None = None,
        registry: ActionRegistry | None = None,
        metrics: Metrics | None = None,
        secrets: dict[str, str] | None = None,
        environment: dict[str, str] | None = None,
        clock: ClockFunction | None = None,
        requeue_after: timedelta = REQUEUE_AFTER,
    ) -> DeliveryProcessor:
        folder = self.tmp_path / f"rules-{random.getrandbits(32):08x}"
        folder.mkdir()
        (folder / "rules.yaml").write_text(rules)
        rule_set = load_rules(folder, registry or load_registry())
        return DeliveryProcessor(
            store=self.store,
            rules=lambda: rule_set,
            http=self.http,
            databases=self.databases,
            action_settings=load_settings(environment or {}).plugins,
            secrets={"PO_TOKEN": TOKEN, **(secrets or {})},
            masker=Masker([TOKEN]),
            metrics=metrics or self.metrics,
            retry=retry or RetryPolicy(max_attempts=4, base_seconds=0.5),
            requeue_after=requeue_after,
            clock=clock or self.clock,
        )

    async def deliver(self, delivery_id: str, data: dict[str, Any], event: str = "item.low_stock") -> None:
        body = json.dumps({"event": event, "timestamp": "2026-03-01T09:00:00Z", "data": data}).encode()
        new = NewDelivery(delivery_id, event, {"X-Stockaj-Event": event}, body, self.clock())
        assert await self.store.add_deliveries([new], due_at=self.clock()) == {delivery_id}

    async def status(self, delivery_id: str) -> DeliveryStatus:
        stored = await self.store.get(delivery_id)
        assert stored is not None
        return stored.status

    async def ledger(self, delivery_id: str) -> dict[tuple[str, int], ActionRun]:
        return await self.store.action_runs(delivery_id)

    async def outcomes(self, delivery_id: str) -> dict[str, tuple[str, str]]:
        return {row.rule_id: (row.status, row.reason) for row in await self.store.outcomes(delivery_id)}


@pytest.fixture
async def bench(store: Store, tmp_path: Path) -> AsyncIterator[Bench]:
    async with httpx.AsyncClient() as http:
        bench = Bench(store, tmp_path, http)
        try:
            yield bench
        finally:
            await bench.databases.dispose()


@pytest.fixture
def router() -> Iterator[respx.MockRouter]:
    # Not every route is meant to be called: several tests prove a request was *not* sent.
    with respx.mock(assert_all_called=False) as mock:
        yield mock


def sent_json(route: respx.Route, call: int = -1) -> Any:
    return json.loads(route.calls[call].request.content)


def key(delivery_id: str, rule_id: str, index: int) -> str:
    return idempotency_key(delivery_id, rule_id, index)


def alert_id(delivery_id: str, run: int) -> str:
    """The id of the `stockaj_rules.delivery_failed` event raised when run `run` failed the delivery."""
    return f"stockaj_rules.delivery_failed:{delivery_id}:{run}"


# --- one delivery, start to finish --------------------------------------------------------


async def test_fired_rule_runs_each_action_once_and_records_masked_params(
    bench: Bench, router: respx.MockRouter
) -> None:
    route = router.post(PO_URL).respond(201, json={"order": 7})
    await bench.deliver("d-1", low_stock(quantity=3))

    assert await bench.processor(REORDER).process("d-1") is None

    assert route.call_count == 1
    request = route.calls.last.request
    assert str(request.url) == PO_URL
    assert request.headers["Idempotency-Key"] == key("d-1", "reorder", 0)
    assert request.headers["Authorization"] == f"Bearer {TOKEN}"
    assert json.loads(request.content) == {"sku": "TENT-4P", "quantity": 7}

    ledger = await bench.ledger("d-1")
    assert set(ledger) == {("reorder", 0), ("reorder", 1)}
    order = ledger[("reorder", 0)]
    assert (order.type, order.status, order.attempts, order.response_status) == (
        "http",
        ActionStatus.SUCCEEDED,
        1,
        201,
    )
    assert order.params["headers"] == {"Authorization": "Bearer ***"}
    assert order.params["json"] == {"sku": "TENT-4P", "quantity": 7}
    assert TOKEN not in json.dumps(order.params)
    assert order.last_error is None
    assert order.next_attempt_at is None
    note = ledger[("reorder", 1)]
    assert (note.type, note.status, note.params) == (
        "log",
        ActionStatus.SUCCEEDED,
        {"message": "ordered TENT-4P"},
    )

    outcomes = await bench.outcomes("d-1")
    assert outcomes["reorder"] == ("fired", "data.quantity (3) <= data.minimum_quantity (5) -> true")
    assert outcomes["rentals"] == (
        "event_not_matched",
        "event item.low_stock does not match on: rent.created",
    )
    assert outcomes["retired"] == ("disabled", "disabled: the rule has enabled: false")

    stored = await bench.store.get("d-1")
    assert stored is not None
    assert (stored.status, stored.error, stored.runs, stored.due_at) == (DeliveryStatus.DONE, None, 1, None)


async def test_delivery_no_rule_fires_for_is_no_match_with_the_evaluated_values(
    bench: Bench, router: respx.MockRouter
) -> None:
    route = router.post(PO_URL).respond(201)
    await bench.deliver("d-1", low_stock(quantity=9))

    assert await bench.processor(REORDER).process("d-1") is None

    assert route.call_count == 0
    assert await bench.ledger("d-1") == {}
    assert await bench.status("d-1") is DeliveryStatus.NO_MATCH
    outcomes = await bench.outcomes("d-1")
    assert outcomes["reorder"] == (
        "condition_false",
        "data.quantity (9) <= data.minimum_quantity (5) -> false",
    )
    assert outcomes["retired"][0] == "disabled"


async def test_throttled_rule_is_recorded_with_the_key_and_when_it_fired(
    bench: Bench, router: respx.MockRouter
) -> None:
    route = router.post(CRM_URL).respond(200)
    processor = bench.processor(THROTTLED)
    await bench.deliver("d-1", low_stock())
    await bench.deliver("d-2", low_stock())

    await processor.process("d-1")
    bench.clock.advance(30)
    await processor.process("d-2")

    assert route.call_count == 1
    assert sent_json(route) == {"sku": "TENT-4P", "delivery": "d-1"}
    assert await bench.status("d-1") is DeliveryStatus.DONE
    assert await bench.status("d-2") is DeliveryStatus.NO_MATCH
    status, reason = (await bench.outcomes("d-2"))["alert"]
    assert status == "throttled"
    assert reason == (f"throttled: key 'TENT-4P' already fired at {T0.isoformat()} (at most once per 1m)")


async def test_throttle_holds_across_two_processors_sharing_the_store(
    bench: Bench, router: respx.MockRouter
) -> None:
    route = router.post(CRM_URL).respond(200)
    first, second = bench.processor(THROTTLED), bench.processor(THROTTLED)
    await bench.deliver("d-1", low_stock())
    await bench.deliver("d-2", low_stock())

    await first.process("d-1")
    await second.process("d-2")

    assert route.call_count == 1
    assert route.calls.last.request.headers["Idempotency-Key"] == key("d-1", "alert", 0)
    assert (await bench.outcomes("d-2"))["alert"][0] == "throttled"

    bench.clock.advance(60)  # the window has passed: the key may fire again
    await bench.deliver("d-3", low_stock())
    await second.process("d-3")
    assert route.call_count == 2
    assert sent_json(route) == {"sku": "TENT-4P", "delivery": "d-3"}


# --- effectively once ---------------------------------------------------------------------


async def test_reopened_delivery_does_not_run_succeeded_actions_again(
    bench: Bench, router: respx.MockRouter
) -> None:
    route = router.post(PO_URL).respond(201)
    processor = bench.processor(REORDER)
    await bench.deliver("d-1", low_stock())
    await processor.process("d-1")

    assert await bench.store.reopen("d-1", bench.clock())
    assert await processor.process("d-1") is None

    assert route.call_count == 1
    stored = await bench.store.get("d-1")
    assert stored is not None
    assert (stored.status, stored.runs) == (DeliveryStatus.DONE, 2)
    assert (await bench.ledger("d-1"))[("reorder", 0)].attempts == 1


async def test_duplicate_job_while_a_retry_waits_runs_nothing_twice(
    bench: Bench, router: respx.MockRouter
) -> None:
    po = router.post(PO_URL).respond(201)
    crm = router.post(CRM_URL).mock(side_effect=[httpx.Response(503), httpx.Response(200)])
    processor = bench.processor(TWO_RULES)
    await bench.deliver("d-1", low_stock())

    wait = await processor.process("d-1")
    assert wait is not None
    # A second job for the same delivery, at once: the retry belongs to the first, this one claims nothing.
    assert await processor.process("d-1") is None
    assert (po.call_count, crm.call_count) == (1, 1)
    assert await bench.status("d-1") is DeliveryStatus.PROCESSING

    bench.clock.advance(wait)
    assert await processor.process("d-1") is None
    assert (po.call_count, crm.call_count) == (1, 2)
    assert await bench.status("d-1") is DeliveryStatus.DONE


async def test_delivery_picked_up_after_a_worker_died_skips_what_succeeded(
    bench: Bench, router: respx.MockRouter
) -> None:
    route = router.post(PO_URL).respond(201)
    processor = bench.processor(REORDER)
    await bench.deliver("d-1", low_stock())
    await processor.process("d-1")
    # As if the run had died after its actions but before recording the delivery's status:
    # still `processing`, its claim expired, the ledger saying the action succeeded.
    await finish_run(bench.store, "d-1", DeliveryStatus.PROCESSING, bench.clock(), bench.clock(), None)

    assert await processor.process("d-1") is None

    assert route.call_count == 1
    stored = await bench.store.get("d-1")
    assert stored is not None
    assert (stored.status, stored.runs) == (DeliveryStatus.DONE, 2)


async def test_a_run_killed_in_its_second_action_keeps_the_first_actions_success(
    bench: Bench, router: respx.MockRouter
) -> None:
    def slow_order(request: httpx.Request) -> httpx.Response:
        bench.clock.advance(REQUEUE_AFTER.total_seconds() * 0.75)  # longer than half the claim
        return httpx.Response(201)

    second_calls: list[str] = []

    def killed_once(request: httpx.Request) -> httpx.Response:
        second_calls.append(request.headers["Idempotency-Key"])
        if len(second_calls) == 1:
            raise asyncio.CancelledError  # the worker is stopped while the request is in flight
        return httpx.Response(200)

    first = router.post(PO_URL).mock(side_effect=slow_order)
    router.post(CRM_URL).mock(side_effect=killed_once)
    processor = bench.processor(ORDERED)
    await bench.deliver("d-1", low_stock())

    with pytest.raises(asyncio.CancelledError):
        await processor.process("d-1")

    # The first action's success was saved, and the claim extended, before the second began.
    assert (await bench.ledger("d-1"))[("two-steps", 0)].status is ActionStatus.SUCCEEDED
    stored = await bench.store.get("d-1")
    assert stored is not None
    assert (stored.status, stored.due_at) == (DeliveryStatus.PROCESSING, bench.clock() + REQUEUE_AFTER)
    assert await processor.process("d-1") is None  # the claim still holds: nothing runs
    assert (first.call_count, len(second_calls)) == (1, 1)

    bench.clock.advance(REQUEUE_AFTER.total_seconds())
    assert await processor.process("d-1") is None

    assert first.call_count == 1
    assert second_calls == [key("d-1", "two-steps", 1)] * 2
    assert await bench.status("d-1") is DeliveryStatus.DONE


async def terminate_connections(postgres_url: str) -> None:
    """Drop every other connection to the database, as a PostgreSQL restart does."""
    admin = await asyncpg.connect(postgres_url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    finally:
        await admin.close()


async def test_an_error_that_is_not_a_lost_connection_still_fails_the_job() -> None:
    async def process(delivery_id: str) -> float | None:
        raise DBAPIError("UPDATE deliveries ...", {}, ValueError("value too long"))

    with pytest.raises(DBAPIError, match="value too long"):
        await process_surviving_connection_loss(process, "d-1")


@pytest.mark.postgres
async def test_a_worker_store_recovers_from_dropped_connections(
    fresh_postgres_url: str, tmp_path: Path, router: respx.MockRouter
) -> None:
    # The store skips pool_pre_ping (a round trip per transaction): a connection the server
    # dropped must fail one job, clearly, and the next one must run on fresh connections.
    route = router.post(PO_URL).respond(201)
    engine = database.create_engine(fresh_postgres_url)
    await database.upgrade(engine)
    try:
        async with httpx.AsyncClient() as http:
            bench = Bench(Store(engine), tmp_path, http)
            processor = bench.processor(REORDER)
            await bench.deliver("d-1", low_stock())  # the pool now holds a connection
            await terminate_connections(fresh_postgres_url)

            with pytest.raises(DBAPIError) as lost:
                await processor.process("d-1")
            assert lost.value.connection_invalidated
            # `stockaj-rules worker` makes such a job a retry (arq's Retry) instead of a failure.
            await bench.store.get("d-1")  # a fresh pooled connection, for the next drop
            await terminate_connections(fresh_postgres_url)
            assert (
                await process_surviving_connection_loss(processor.process, "d-1")
                == CONNECTION_LOST_RETRY_SECONDS
            )
            assert await processor.process("d-1") is None

            assert route.call_count == 1
            assert await bench.status("d-1") is DeliveryStatus.DONE
            await bench.databases.dispose()
    finally:
        await engine.dispose()


async def test_forced_redelivery_runs_succeeded_actions_again_with_the_same_key(
    bench: Bench, router: respx.MockRouter
) -> None:
    route = router.post(PO_URL).respond(201)
    processor = bench.processor(REORDER)
    await bench.deliver("d-1", low_stock())
    await processor.process("d-1")

    assert await bench.store.reopen("d-1", bench.clock())
    await bench.store.forget_action_runs("d-1")
    assert await processor.process("d-1") is None

    assert route.call_count == 2
    keys = {call.request.headers["Idempotency-Key"] for call in route.calls}
    assert keys == {key("d-1", "reorder", 0)}
    assert await bench.status("d-1") is DeliveryStatus.DONE


async def test_redelivery_retries_failed_actions_but_not_succeeded_ones(
    bench: Bench, router: respx.MockRouter
) -> None:
    po = router.post(PO_URL).respond(201)
    crm = router.post(CRM_URL).mock(side_effect=[httpx.Response(400, text="bad"), httpx.Response(200)])
    processor = bench.processor(TWO_RULES)
    await bench.deliver("d-1", low_stock())
    await processor.process("d-1")
    assert await bench.status("d-1") is DeliveryStatus.FAILED

    assert await bench.store.reopen("d-1", bench.clock())
    assert await processor.process("d-1") is None

    assert (po.call_count, crm.call_count) == (1, 2)
    run = (await bench.ledger("d-1"))[("crm", 0)]
    assert (run.status, run.attempts, run.last_error) == (ActionStatus.SUCCEEDED, 1, None)
    stored = await bench.store.get("d-1")
    assert stored is not None
    assert (stored.status, stored.error) == (DeliveryStatus.DONE, None)


async def test_same_delivery_offered_twice_to_one_processor_at_once_runs_once(
    bench: Bench, router: respx.MockRouter
) -> None:
    async def slow(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(0.2)
        return httpx.Response(201)

    route = router.post(PO_URL).mock(side_effect=slow)
    processor = bench.processor(REORDER)
    await bench.deliver("d-1", low_stock())

    results = await asyncio.gather(processor.process("d-1"), processor.process("d-1"))

    assert results == [None, None]
    assert route.call_count == 1
    assert await bench.status("d-1") is DeliveryStatus.DONE


async def test_concurrent_deliveries_share_claim_and_finish_transactions(
    bench: Bench, router: respx.MockRouter
) -> None:
    route = router.post(PO_URL).respond(201)
    claims: list[int] = []
    finishes: list[int] = []
    claim_many, finish_runs = bench.store.claim_many, bench.store.finish_runs

    async def counted_claims(
        ids: Sequence[str], now: datetime, due_at: datetime
    ) -> dict[str, ClaimedDelivery]:
        claims.append(len(ids))
        return await claim_many(ids, now, due_at)

    async def counted_finishes(ends: Sequence[RunEnd]) -> set[str]:
        finishes.append(len(ends))
        return await finish_runs(ends)

    bench.store.claim_many = counted_claims  # type: ignore[method-assign]
    bench.store.finish_runs = counted_finishes  # type: ignore[method-assign]
    processor = bench.processor(REORDER)
    ids = [f"d-{n:02}" for n in range(20)]
    for delivery_id in ids:
        await bench.deliver(delivery_id, low_stock())

    assert await asyncio.gather(*(processor.process(d) for d in ids)) == [None] * 20

    assert route.call_count == 20
    assert sorted(route.calls[n].request.headers["Idempotency-Key"] for n in range(20)) == sorted(
        key(d, "reorder", 0) for d in ids
    )
    assert {await bench.status(d) for d in ids} == {DeliveryStatus.DONE}
    assert (sum(claims), sum(finishes)) == (20, 20)
    assert len(claims) < 20
    assert len(finishes) < 20


async def test_finished_delivery_is_not_processed_again(bench: Bench, router: respx.MockRouter) -> None:
    route = router.post(PO_URL).respond(201)
    processor = bench.processor(REORDER)
    await bench.deliver("d-1", low_stock())
    await processor.process("d-1")
    before = await bench.store.get("d-1")
    bench.clock.advance(5)

    assert await processor.process("d-1") is None
    assert await processor.process("no-such-delivery") is None

    assert route.call_count == 1
    assert await bench.store.get("d-1") == before


# --- transient and permanent failures ----------------------------------------------------


async def test_server_error_is_retried_after_the_backoff_with_the_same_request(
    bench: Bench, router: respx.MockRouter
) -> None:
    route = router.post(PO_URL).mock(side_effect=[httpx.Response(500, text="oops"), httpx.Response(201)])
    processor = bench.processor(REORDER, retry=RetryPolicy(max_attempts=4, base_seconds=0.5))
    await bench.deliver("d-1", low_stock())

    wait = await processor.process("d-1")

    assert wait is not None
    assert 0 <= wait <= 0.5
    run = (await bench.ledger("d-1"))[("reorder", 0)]
    assert (run.status, run.attempts, run.response_status) == (ActionStatus.PENDING, 1, 500)
    assert run.last_error == "POST https://po.example.com/… answered 500: oops"
    assert run.next_attempt_at == T0 + timedelta(seconds=wait)
    assert ("reorder", 1) not in await bench.ledger("d-1")
    stored = await bench.store.get("d-1")
    assert stored is not None
    assert stored.status is DeliveryStatus.PROCESSING
    assert stored.due_at is not None
    assert stored.due_at >= T0 + timedelta(seconds=wait)

    bench.clock.advance(wait)
    assert await processor.process("d-1") is None

    assert route.call_count == 2
    first, second = (call.request for call in route.calls)
    assert first.headers["Idempotency-Key"] == second.headers["Idempotency-Key"] == key("d-1", "reorder", 0)
    assert json.loads(first.content) == json.loads(second.content) == {"sku": "TENT-4P", "quantity": 7}
    ledger = await bench.ledger("d-1")
    assert (ledger[("reorder", 0)].status, ledger[("reorder", 0)].attempts) == (ActionStatus.SUCCEEDED, 2)
    assert ledger[("reorder", 0)].last_error is None
    assert ledger[("reorder", 1)].status is ActionStatus.SUCCEEDED
    assert await bench.status("d-1") is DeliveryStatus.DONE


async def test_too_many_requests_waits_at_least_retry_after(bench: Bench, router: respx.MockRouter) -> None:
    route = router.post(PO_URL).mock(
        side_effect=[httpx.Response(429, headers={"Retry-After": "30"}), httpx.Response(201)]
    )
    processor = bench.processor(REORDER, retry=RetryPolicy(max_attempts=4, base_seconds=0.01))
    await bench.deliver("d-1", low_stock())

    wait = await processor.process("d-1")

    assert wait is not None
    assert wait >= 30
    run = (await bench.ledger("d-1"))[("reorder", 0)]
    assert (run.status, run.response_status) == (ActionStatus.PENDING, 429)
    assert run.next_attempt_at is not None
    assert run.next_attempt_at >= T0 + timedelta(seconds=30)

    bench.clock.advance(29)
    # A job that comes a second early claims nothing: the delivery waits for its retry.
    assert await processor.process("d-1") is None
    assert route.call_count == 1
    assert await bench.status("d-1") is DeliveryStatus.PROCESSING

    bench.clock.advance(wait - 29)
    assert await processor.process("d-1") is None
    assert route.call_count == 2


async def test_retry_after_beyond_the_backoff_ceiling_is_still_honoured(
    bench: Bench, router: respx.MockRouter
) -> None:
    router.post(PO_URL).respond(503, headers={"Retry-After": "7200"})
    processor = bench.processor(REORDER)
    await bench.deliver("d-1", low_stock())

    wait = await processor.process("d-1")

    assert wait is not None
    assert wait >= 7200


async def test_absurd_retry_after_fails_the_action_instead_of_crashing(
    bench: Bench, router: respx.MockRouter
) -> None:
    route = router.post(PO_URL).respond(429, headers={"Retry-After": "9" * 400})
    processor = bench.processor(REORDER)
    await bench.deliver("d-1", low_stock())

    assert await processor.process("d-1") is None

    assert route.call_count == 1
    run = (await bench.ledger("d-1"))[("reorder", 0)]
    assert (run.status, run.attempts, run.response_status) == (ActionStatus.FAILED, 1, 429)
    assert run.last_error is not None
    assert "Retry-After" in run.last_error
    assert await bench.status("d-1") is DeliveryStatus.FAILED


@pytest.mark.parametrize(
    ("failure", "message"),
    [
        (httpx.ConnectError("refused"), "POST https://po.example.com/… could not connect: ConnectError"),
        (httpx.ReadTimeout("slow"), "POST https://po.example.com/… timed out after 10s (ReadTimeout)"),
    ],
)
async def test_connection_errors_and_timeouts_are_transient(
    bench: Bench, router: respx.MockRouter, failure: Exception, message: str
) -> None:
    route = router.post(PO_URL).mock(side_effect=[failure, httpx.Response(201)])
    processor = bench.processor(REORDER)
    await bench.deliver("d-1", low_stock())

    wait = await processor.process("d-1")

    assert wait is not None
    run = (await bench.ledger("d-1"))[("reorder", 0)]
    assert (run.status, run.attempts, run.last_error, run.response_status) == (
        ActionStatus.PENDING,
        1,
        message,
        None,
    )
    bench.clock.advance(wait)
    assert await processor.process("d-1") is None
    assert route.call_count == 2
    assert await bench.status("d-1") is DeliveryStatus.DONE


async def test_client_error_fails_at_once_and_skips_the_rules_later_actions(
    bench: Bench, router: respx.MockRouter
) -> None:
    # The server echoes the token: the error kept in the delivery log must not.
    po = router.post(PO_URL).respond(400, text=f"bad token {TOKEN}")
    crm = router.post(CRM_URL).respond(200)
    processor = bench.processor(TWO_RULES)
    await bench.deliver("d-1", low_stock())

    assert await processor.process("d-1") is None

    assert po.call_count == 1
    ledger = await bench.ledger("d-1")
    order = ledger[("po", 0)]
    assert (order.status, order.attempts, order.response_status, order.next_attempt_at) == (
        ActionStatus.FAILED,
        1,
        400,
        None,
    )
    assert order.last_error == "POST https://po.example.com/… answered 400: bad token ***"
    later = ledger[("po", 1)]
    assert (later.status, later.attempts) == (ActionStatus.SKIPPED, 0)
    assert later.last_error == "skipped: an earlier action of this rule failed"
    assert crm.call_count == 1
    assert sent_json(crm) == {"id": 42}
    assert ledger[("crm", 0)].status is ActionStatus.SUCCEEDED

    stored = await bench.store.get("d-1")
    assert stored is not None
    assert stored.status is DeliveryStatus.FAILED
    assert stored.error is not None
    assert "po actions[0] (http)" in stored.error
    assert "answered 400" in stored.error
    assert TOKEN not in stored.error

    bench.clock.advance(3600)  # nothing is retried
    assert await processor.process("d-1") is None
    assert po.call_count == 1


async def test_a_failed_delivery_is_logged_as_a_warning_with_its_error(
    bench: Bench, router: respx.MockRouter, caplog: pytest.LogCaptureFixture
) -> None:
    router.post(PO_URL).mock(side_effect=[httpx.Response(400), httpx.Response(201)])
    router.post(CRM_URL).respond(200)
    processor = bench.processor(TWO_RULES)
    await bench.deliver("d-1", low_stock())
    await bench.deliver("d-2", low_stock())

    with caplog.at_level(logging.INFO, logger="engine.pipeline.worker"):
        await processor.process("d-1")
        await processor.process("d-2")

    outcomes = {r.delivery_id: r for r in caplog.records if r.msg == "delivery %s"}  # type: ignore[attr-defined]
    assert (outcomes["d-1"].levelno, outcomes["d-1"].status) == (logging.WARNING, "failed")  # type: ignore[attr-defined]
    assert outcomes["d-1"].error.startswith("an action failed: po actions[0] (http): POST https://po")  # type: ignore[attr-defined]
    assert outcomes["d-2"].levelno == logging.INFO


async def test_exhausted_attempts_fail_the_action_and_the_delivery(
    bench: Bench, router: respx.MockRouter
) -> None:
    route = router.post(PO_URL).respond(503, text="down")
    processor = bench.processor(REORDER, retry=RetryPolicy(max_attempts=3, base_seconds=0.5))
    await bench.deliver("d-1", low_stock())

    waits = []
    for _ in range(3):
        wait = await processor.process("d-1")
        waits.append(wait)
        if wait is not None:
            bench.clock.advance(wait)

    assert waits[:2] != [None, None]
    assert None not in waits[:2]
    assert waits[2] is None
    assert route.call_count == 3
    ledger = await bench.ledger("d-1")
    run = ledger[("reorder", 0)]
    assert (run.status, run.attempts, run.response_status) == (ActionStatus.FAILED, 3, 503)
    assert run.last_error == "POST https://po.example.com/… answered 503: down"
    assert ledger[("reorder", 1)].status is ActionStatus.SKIPPED
    stored = await bench.store.get("d-1")
    assert stored is not None
    assert stored.status is DeliveryStatus.FAILED
    assert stored.error is not None
    assert "answered 503" in stored.error


async def test_later_action_waits_until_the_earlier_one_succeeded(
    bench: Bench, router: respx.MockRouter
) -> None:
    first = router.post(PO_URL).mock(side_effect=[httpx.Response(502), httpx.Response(201)])
    second = router.post(CRM_URL).respond(200)
    processor = bench.processor(ORDERED, retry=RetryPolicy(max_attempts=4, base_seconds=2))
    await bench.deliver("d-1", low_stock())

    wait = await processor.process("d-1")
    assert wait is not None
    assert (first.call_count, second.call_count) == (1, 0)
    assert ("two-steps", 1) not in await bench.ledger("d-1")

    assert await processor.process("d-1") is None  # too early: still waiting for action 0
    assert (first.call_count, second.call_count) == (1, 0)

    bench.clock.advance(wait)
    assert await processor.process("d-1") is None
    assert (first.call_count, second.call_count) == (2, 1)
    assert first.calls.last.request.headers["Idempotency-Key"] == key("d-1", "two-steps", 0)
    assert second.calls.last.request.headers["Idempotency-Key"] == key("d-1", "two-steps", 1)
    assert sent_json(second) == {"step": 1}


# --- what is not a network failure -------------------------------------------------------


async def test_render_error_fails_the_action_naming_the_field_and_sends_nothing(
    bench: Bench, router: respx.MockRouter
) -> None:
    route = router.post(PO_URL).respond(201)
    processor = bench.processor(REORDER)
    data = low_stock()
    del data["external_id"]
    await bench.deliver("d-1", data)

    assert await processor.process("d-1") is None

    assert route.call_count == 0
    ledger = await bench.ledger("d-1")
    run = ledger[("reorder", 0)]
    assert (run.status, run.attempts, run.params) == (ActionStatus.FAILED, 1, None)
    assert run.last_error is not None
    assert "data.external_id is not in the delivery" in run.last_error
    assert run.last_error.startswith("actions[0] (http) param json:")
    assert ledger[("reorder", 1)].status is ActionStatus.SKIPPED
    assert await bench.status("d-1") is DeliveryStatus.FAILED


async def test_invalid_rendered_params_are_recorded_with_secrets_masked(
    bench: Bench, router: respx.MockRouter
) -> None:
    rules = """\
- id: order
  on: item.low_stock
  actions:
    - type: purchase_order
      url: https://po.example.com/orders
      item_sku: "{{ data.external_id }}"
      quantity: "{{ secrets.PO_TOKEN }}"
"""
    route = router.post(PO_URL).respond(201)
    await bench.deliver("d-1", low_stock())

    assert await bench.processor(rules).process("d-1") is None

    assert route.call_count == 0
    run = (await bench.ledger("d-1"))[("order", 0)]
    assert run.status is ActionStatus.FAILED
    assert run.last_error is not None
    assert "quantity" in run.last_error
    assert TOKEN not in run.last_error
    stored = await bench.store.get("d-1")
    assert stored is not None
    assert stored.error is not None
    assert TOKEN not in stored.error


async def test_plugin_raising_unexpected_exception_is_recorded_and_processing_goes_on(
    bench: Bench, router: respx.MockRouter
) -> None:
    rules = """\
- id: buggy
  on: item.low_stock
  actions:
    - {type: exploding, message: "{{ data.name }}"}
    - {type: log, message: never}
- id: fine
  on: item.low_stock
  actions:
    - {type: http, url: "https://crm.example.com/hook", json: {ok: true}}
"""
    registry = load_registry()
    registry.register(ExplodingAction)
    crm = router.post(CRM_URL).respond(200)
    processor = bench.processor(rules, registry=registry)
    await bench.deliver("d-1", low_stock())

    assert await processor.process("d-1") is None

    ledger = await bench.ledger("d-1")
    run = ledger[("buggy", 0)]
    assert (run.type, run.status, run.attempts) == ("exploding", ActionStatus.FAILED, 1)
    assert run.last_error == "unexpected error: RuntimeError: boom while handling Tent 4p"
    assert ledger[("buggy", 1)].status is ActionStatus.SKIPPED
    assert crm.call_count == 1
    assert ledger[("fine", 0)].status is ActionStatus.SUCCEEDED
    assert await bench.status("d-1") is DeliveryStatus.FAILED


async def test_an_action_whose_url_leaves_the_origin_its_rule_allows_fails_and_sends_nothing(
    bench: Bench, router: respx.MockRouter
) -> None:
    # The secret holds only a scheme: the rule loads, but the host would come from the delivery.
    rules = """\
- id: callback
  on: item.low_stock
  actions:
    - {type: http, url: "{{ secrets.SCHEME }}//{{ data.host }}/orders", json: {id: "{{ data.id }}"}}
"""
    evil = router.post("https://evil.example/orders").respond(200)
    await bench.deliver("d-1", low_stock(host="evil.example"))

    assert await bench.processor(rules, secrets={"SCHEME": "https:"}).process("d-1") is None

    assert evil.call_count == 0
    run = (await bench.ledger("d-1"))[("callback", 0)]
    assert (run.status, run.attempts) == (ActionStatus.FAILED, 1)
    assert run.last_error is not None
    assert run.last_error.startswith("actions[0] (http): url: refused, nothing sent: ")
    assert await bench.status("d-1") is DeliveryStatus.FAILED


async def test_actions_left_without_a_url_send_to_the_configured_one(
    bench: Bench, router: respx.MockRouter
) -> None:
    rules = """\
- id: defaults
  on: item.low_stock
  actions:
    - {type: slack, text: "{{ data.name }} is low"}
    - {type: purchase_order, item_sku: "{{ data.external_id }}", quantity: 2}
"""
    slack_url = "https://hooks.slack.com/services/T0/B0/abc"
    slack = router.post(slack_url).respond(200, text="ok")
    orders = router.post(PO_URL).respond(201)
    environment = {"SLACK_WEBHOOK_URL": slack_url, "PURCHASE_ORDER_URL": PO_URL}
    await bench.deliver("d-1", low_stock())

    assert await bench.processor(rules, environment=environment).process("d-1") is None

    assert (slack.call_count, orders.call_count) == (1, 1)
    assert sent_json(orders) == {"item_sku": "TENT-4P", "quantity": 2, "notes": ""}
    assert await bench.status("d-1") is DeliveryStatus.DONE


async def test_delivery_whose_body_was_purged_is_failed_not_matched_against_nothing(
    bench: Bench, router: respx.MockRouter
) -> None:
    route = router.post(PO_URL).respond(201)
    processor = bench.processor(REORDER)
    await bench.deliver("d-1", low_stock())
    await processor.process("d-1")
    bench.clock.advance(2 * 86400)
    await bench.store.purge(bench.clock(), timedelta(days=1), timedelta(days=30))
    outcomes_before = await bench.outcomes("d-1")

    assert await bench.store.reopen("d-1", bench.clock())
    assert await processor.process("d-1") is None

    assert route.call_count == 1
    stored = await bench.store.get("d-1")
    assert stored is not None
    assert stored.body is None
    assert stored.status is DeliveryStatus.FAILED
    assert stored.error is not None
    assert "purged" in stored.error
    assert await bench.outcomes("d-1") == outcomes_before


@pytest.mark.parametrize("body", [b"not json", b"[1, 2]"])
async def test_stored_body_that_is_not_a_json_object_fails_the_delivery(
    bench: Bench, router: respx.MockRouter, body: bytes
) -> None:
    route = router.post(PO_URL).respond(201)
    new = NewDelivery("d-1", "item.low_stock", {}, body, bench.clock())
    await bench.store.add_deliveries([new], due_at=bench.clock())

    assert await bench.processor(REORDER).process("d-1") is None

    assert route.call_count == 0
    stored = await bench.store.get("d-1")
    assert stored is not None
    assert stored.status is DeliveryStatus.FAILED
    assert stored.error is not None
    assert "cannot be processed" in stored.error
    assert await bench.outcomes("d-1") == {}


# --- throttles and retries ----------------------------------------------------------------


async def test_rule_waiting_for_a_retry_still_fires_after_its_throttle_slot_was_taken(
    bench: Bench, router: respx.MockRouter
) -> None:
    route = router.post(CRM_URL).mock(
        side_effect=[
            httpx.Response(503, headers={"Retry-After": "120"}),  # d-1, first try
            httpx.Response(200),  # d-2
            httpx.Response(200),  # d-1, retried
        ]
    )
    processor = bench.processor(THROTTLED)
    await bench.deliver("d-1", low_stock())
    wait = await processor.process("d-1")
    assert wait is not None
    assert wait >= 120

    bench.clock.advance(70)  # d-1 fired more than a window ago: d-2 fires
    await bench.deliver("d-2", low_stock())
    assert await processor.process("d-2") is None

    bench.clock.advance(wait - 70)
    assert await processor.process("d-1") is None

    assert [sent_json(route, i)["delivery"] for i in range(3)] == ["d-1", "d-2", "d-1"]
    assert await bench.status("d-1") is DeliveryStatus.DONE
    assert (await bench.outcomes("d-1"))["alert"][0] == "fired"
    assert (await bench.ledger("d-1"))[("alert", 0)].status is ActionStatus.SUCCEEDED


async def test_retrying_a_delivery_does_not_extend_its_throttle_window(
    bench: Bench, router: respx.MockRouter
) -> None:
    route = router.post(CRM_URL).mock(
        side_effect=[
            httpx.Response(503, headers={"Retry-After": "50"}),
            httpx.Response(200),
            httpx.Response(200),
        ]
    )
    processor = bench.processor(THROTTLED)
    await bench.deliver("d-1", low_stock())
    wait = await processor.process("d-1")
    assert wait is not None
    assert 50 <= wait < 60

    bench.clock.advance(wait)
    assert await processor.process("d-1") is None  # retried; d-1 still fired at T0

    bench.clock.advance(65 - wait)  # 65 s after d-1 fired: the 1m window is over
    await bench.deliver("d-2", low_stock())
    await processor.process("d-2")

    assert (await bench.outcomes("d-2"))["alert"][0] == "fired"
    assert route.call_count == 3


async def test_redelivery_retries_a_throttled_rules_failed_action_after_its_slot_moved_on(
    bench: Bench, router: respx.MockRouter
) -> None:
    route = router.post(CRM_URL).mock(
        side_effect=[httpx.Response(400), httpx.Response(200), httpx.Response(200)]
    )
    processor = bench.processor(THROTTLED)
    await bench.deliver("d-1", low_stock())
    await processor.process("d-1")
    assert await bench.status("d-1") is DeliveryStatus.FAILED
    bench.clock.advance(90)
    await bench.deliver("d-2", low_stock())
    await processor.process("d-2")  # the slot is d-2's now

    assert await bench.store.reopen("d-1", bench.clock())
    assert await processor.process("d-1") is None

    assert [sent_json(route, i)["delivery"] for i in range(3)] == ["d-1", "d-2", "d-1"]
    assert await bench.status("d-1") is DeliveryStatus.DONE


# --- claims: one run at a time, and runs that never finish --------------------------------


async def test_an_action_slower_than_requeue_after_runs_once_while_another_processor_tries(
    bench: Bench,
) -> None:
    # The real clock: the claim is kept alive in real time, as in a running worker.
    gate = Gate()
    requeue_after = timedelta(seconds=1)
    running = bench.processor(GATED, registry=gate.registry(), clock=utc_now, requeue_after=requeue_after)
    other = bench.processor(GATED, registry=gate.registry(), clock=utc_now, requeue_after=requeue_after)
    await bench.deliver("d-1", low_stock())
    first = asyncio.create_task(running.process("d-1"))
    await gate.started.wait()

    # The queue lost the job, or the sweeper offers it again: another worker tries it, again and again.
    attempts = []
    for _ in range(25):  # 2.5 s: more than twice REQUEUE_AFTER
        attempts.append(asyncio.create_task(other.process("d-1")))
        await asyncio.sleep(0.1)
    stored = await bench.store.get("d-1")
    gate.opened.set()
    results = await asyncio.gather(first, *attempts)

    assert results == [None] * 26
    assert gate.runs == [key("d-1", "slow", 0)]
    assert stored is not None
    assert (stored.status, stored.runs) == (DeliveryStatus.PROCESSING, 1)
    assert stored.due_at is not None
    assert stored.due_at > stored.updated_at + requeue_after  # extended while the action ran
    final = await bench.store.get("d-1")
    assert final is not None
    assert (final.status, final.runs) == (DeliveryStatus.DONE, 1)


async def test_a_claim_is_kept_while_the_rules_are_still_being_matched(
    bench: Bench, router: respx.MockRouter
) -> None:
    # Matching can take long too (here a throttle slot the store is slow to give): the claim
    # is kept from the start of the run, not only while actions run.
    route = router.post(CRM_URL).respond(200)
    slow_store = asyncio.Event()
    acquire = bench.store.acquire_throttle

    async def slow_acquire(*args: Any) -> datetime | None:
        await slow_store.wait()
        return await acquire(*args)

    bench.store.acquire_throttle = slow_acquire  # type: ignore[method-assign]
    requeue_after = timedelta(seconds=1)
    running = bench.processor(THROTTLED, clock=utc_now, requeue_after=requeue_after)
    other = bench.processor(THROTTLED, clock=utc_now, requeue_after=requeue_after)
    await bench.deliver("d-1", low_stock())
    first = asyncio.create_task(running.process("d-1"))
    await asyncio.sleep(2.5)  # more than twice REQUEUE_AFTER

    second = asyncio.create_task(other.process("d-1"))  # the sweeper offered it to another worker
    await asyncio.sleep(0.2)
    slow_store.set()
    assert await asyncio.gather(first, second) == [None, None]

    assert route.call_count == 1
    stored = await bench.store.get("d-1")
    assert stored is not None
    assert (stored.status, stored.runs) == (DeliveryStatus.DONE, 1)


async def test_a_run_whose_claim_was_taken_over_leaves_the_new_owners_record_alone(bench: Bench) -> None:
    # The first run's claim expires without being kept alive (its worker stalled); a second run
    # takes the delivery over and finishes it. The first run, ending late, must not overwrite that.
    gate = Gate(fail_first=True)
    stalled = bench.processor(GATED, registry=gate.registry())
    taking_over = bench.processor(GATED, registry=gate.registry())
    await bench.deliver("d-1", low_stock())
    first = asyncio.create_task(stalled.process("d-1"))
    await gate.started.wait()
    bench.clock.advance(REQUEUE_AFTER.total_seconds() + 1)  # fake time: the claim expired unseen

    assert await taking_over.process("d-1") is None
    gate.opened.set()
    assert await first is None

    stored = await bench.store.get("d-1")
    assert stored is not None
    assert (stored.status, stored.error, stored.runs) == (DeliveryStatus.DONE, None, 2)
    run = (await bench.ledger("d-1"))[("slow", 0)]
    assert (run.status, run.last_error) == (ActionStatus.SUCCEEDED, None)


async def test_a_run_that_lost_its_claim_starts_no_further_action(
    bench: Bench, router: respx.MockRouter
) -> None:
    # Its worker stalled past the claim (fake time) and another run took the delivery over
    # and finished it; the heartbeat (real time) tells the first run, which stops there.
    gate = Gate()
    rules = GATED + "    - {type: http, url: 'https://crm.example.com/hook', json: {step: 1}}\n"
    quick = timedelta(seconds=0.4)
    stalled = bench.processor(rules, registry=gate.registry(), requeue_after=quick)
    taking_over = bench.processor(rules, registry=gate.registry(), requeue_after=quick)
    crm = router.post(CRM_URL).respond(200)
    await bench.deliver("d-1", low_stock())
    first = asyncio.create_task(stalled.process("d-1"))
    await gate.started.wait()
    bench.clock.advance(1)
    assert await taking_over.process("d-1") is None
    assert crm.call_count == 1

    await asyncio.sleep(0.35)  # a few beats: the stalled run learns its claim is gone
    gate.opened.set()
    assert await first is None

    assert crm.call_count == 1
    stored = await bench.store.get("d-1")
    assert stored is not None
    assert (stored.status, stored.runs) == (DeliveryStatus.DONE, 2)


async def test_deliveries_processed_quickly_cost_no_claim_extension(
    bench: Bench, router: respx.MockRouter
) -> None:
    router.post(PO_URL).respond(201)
    extensions: list[int] = []
    extend_claims = bench.store.extend_claims

    async def counted(claims: Sequence[tuple[str, int]], due_at: datetime) -> set[str]:
        extensions.append(len(claims))
        return await extend_claims(claims, due_at)

    bench.store.extend_claims = counted  # type: ignore[method-assign]
    processor = bench.processor(REORDER, clock=utc_now, requeue_after=timedelta(seconds=0.4))
    for n in range(20):
        await bench.deliver(f"d-{n}", low_stock())
        assert await processor.process(f"d-{n}") is None
    await asyncio.sleep(0.3)  # past a beat

    assert extensions == []


async def test_a_delivery_whose_runs_keep_dying_is_failed_after_three_instead_of_run_for_ever(
    bench: Bench, router: respx.MockRouter
) -> None:
    calls: list[str] = []

    def killed(request: httpx.Request) -> httpx.Response:
        calls.append(request.headers["Idempotency-Key"])
        raise asyncio.CancelledError  # the worker dies while the request is in flight

    router.post(PO_URL).mock(side_effect=killed)
    processor = bench.processor(REORDER)
    await bench.deliver("d-1", low_stock())
    for _ in range(3):
        with pytest.raises(asyncio.CancelledError):
            await processor.process("d-1")
        bench.clock.advance(REQUEUE_AFTER.total_seconds())  # the sweeper offers it again

    assert await processor.process("d-1") is None

    assert calls == [key("d-1", "reorder", 0)] * 3
    stored = await bench.store.get("d-1")
    assert stored is not None
    assert stored.status is DeliveryStatus.FAILED
    assert stored.error is not None
    assert stored.error.startswith("processing this delivery stopped 3 times before it finished")
    assert "stockaj-rules redeliver d-1" in stored.error
    assert await bench.store.due_deliveries(bench.clock() + timedelta(days=1)) == [
        alert_id("d-1", stored.runs)
    ]
    alert = await raised(bench, "d-1", stored.runs)
    assert alert["error"] == stored.error
    assert (alert["failed_rules"], alert["failed_actions"]) == ([], [])


async def test_an_error_escaping_processing_is_recorded_and_the_delivery_fails_after_three(
    bench: Bench, tmp_path: Path
) -> None:
    calls = []

    def broken_rules() -> Any:
        calls.append(1)
        raise RuntimeError("the rule set could not be read")

    processor = bench.processor(REORDER)
    processor._rules = broken_rules  # type: ignore[method-assign]  # a bug in the engine itself
    await bench.deliver("d-1", low_stock())
    for _ in range(3):
        with pytest.raises(RuntimeError):
            await processor.process("d-1")
        bench.clock.advance(REQUEUE_AFTER.total_seconds())

    assert await processor.process("d-1") is None

    assert len(calls) == 3
    stored = await bench.store.get("d-1")
    assert stored is not None
    assert stored.status is DeliveryStatus.FAILED
    assert stored.error is not None
    assert "the last: RuntimeError: the rule set could not be read" in stored.error


async def test_progress_between_crashes_resets_the_count_of_runs_that_never_finished(
    bench: Bench, router: respx.MockRouter
) -> None:
    # Four actions, and the run dies in each one after the first succeeded: every run made
    # progress, so the delivery is never given up on, and each action succeeds once.
    rules = "- id: steps\n  on: item.low_stock\n  actions:\n" + "".join(
        f"    - {{type: http, url: 'https://po.example.com/orders', json: {{step: {n}}}}}\n" for n in range(4)
    )
    seen: list[int] = []

    def dies_once_per_step(request: httpx.Request) -> httpx.Response:
        step = json.loads(request.content)["step"]
        seen.append(step)
        if step > 0 and seen.count(step) == 1:
            raise asyncio.CancelledError
        return httpx.Response(201)

    router.post(PO_URL).mock(side_effect=dies_once_per_step)
    processor = bench.processor(rules)
    await bench.deliver("d-1", low_stock())
    for _ in range(3):
        with pytest.raises(asyncio.CancelledError):
            await processor.process("d-1")
        bench.clock.advance(REQUEUE_AFTER.total_seconds())

    assert await processor.process("d-1") is None

    assert seen == [0, 1, 1, 2, 2, 3, 3]
    assert await bench.status("d-1") is DeliveryStatus.DONE


# --- failures reach people: stockaj_rules.delivery_failed -------------------------------------

ALERTED = """\
- id: crm
  on: item.low_stock
  actions:
    - type: http
      url: https://crm.example.com/hook
      headers: {Authorization: "Bearer {{ secrets.PO_TOKEN }}"}
      json: {id: "{{ data.id }}"}
    - {type: log, message: never}
- id: alert
  on: stockaj_rules.delivery_failed
  actions:
    - type: http
      url: https://alerts.example.com/hook
      json: {text: "{{ data.delivery_id }} failed: {{ data.error }}", link: "{{ data.console_url }}"}
"""
ALERTS_URL = "https://alerts.example.com/hook"


async def raised(bench: Bench, delivery_id: str, run: int) -> dict[str, Any]:
    stored = await bench.store.get(alert_id(delivery_id, run))
    assert stored is not None, "no stockaj_rules.delivery_failed event was raised"
    assert stored.event == "stockaj_rules.delivery_failed"
    assert stored.body is not None
    payload: dict[str, Any] = json.loads(stored.body)
    assert payload["event"] == "stockaj_rules.delivery_failed"
    return payload["data"]


async def test_a_failed_delivery_raises_delivery_failed_with_what_failed_and_where_to_look(
    bench: Bench, router: respx.MockRouter
) -> None:
    router.post(CRM_URL).respond(400, text=f"token {TOKEN} refused")
    router.post(PO_URL).respond(201)
    await bench.deliver("d/1 é", low_stock())

    assert await bench.processor(ALERTED).process("d/1 é") is None

    assert await bench.status("d/1 é") is DeliveryStatus.FAILED
    data = await raised(bench, "d/1 é", 1)
    assert data["delivery_id"] == "d/1 é"
    assert data["event"] == "item.low_stock"
    assert data["error"].startswith("an action failed: crm actions[0] (http): POST https://crm")
    assert data["console_url"] == "http://127.0.0.1:8001/deliveries/d%2F1%20%C3%A9"
    assert data["received_at"] == T0.isoformat()
    assert data["failed_at"] == T0.isoformat()
    [rule] = data["failed_rules"]
    assert rule["rule"] == "crm"
    assert rule["error"].startswith("actions[0] (http): POST https://crm.example.com/… answered 400")
    [action] = data["failed_actions"]
    assert {k: action[k] for k in ("rule", "index", "type", "attempts", "response_status")} == {
        "rule": "crm",
        "index": 0,
        "type": "http",
        "attempts": 1,
        "response_status": 400,
    }
    assert "400" in action["last_error"]
    assert TOKEN not in json.dumps(data)


async def test_the_raised_event_is_processed_like_any_delivery_once_enqueued(
    bench: Bench, router: respx.MockRouter
) -> None:
    router.post(CRM_URL).respond(422)
    alerts = router.post(ALERTS_URL).respond(200)
    processor = bench.processor(ALERTED)
    queue = InProcessQueue(processor.process, concurrency=2)
    processor.enqueue_raised_to(queue.enqueue)
    await bench.deliver("d-1", low_stock())
    try:
        await processor.process("d-1")
        for _ in range(200):
            if alerts.call_count:
                break
            await asyncio.sleep(0.01)
    finally:
        await queue.close()

    assert alerts.call_count == 1
    request = alerts.calls.last.request
    assert request.headers["Idempotency-Key"] == key(alert_id("d-1", 1), "alert", 0)
    body = json.loads(request.content)
    assert body["text"].startswith("d-1 failed: an action failed: crm actions[0] (http)")
    assert body["link"] == "http://127.0.0.1:8001/deliveries/d-1"
    assert await bench.status(alert_id("d-1", 1)) is DeliveryStatus.DONE


async def test_a_failure_of_the_alerts_own_actions_raises_nothing_further(
    bench: Bench, router: respx.MockRouter, caplog: pytest.LogCaptureFixture
) -> None:
    router.post(CRM_URL).respond(422)
    router.post(ALERTS_URL).respond(404)
    processor = bench.processor(ALERTED)
    await bench.deliver("d-1", low_stock())
    await processor.process("d-1")

    with caplog.at_level(logging.INFO, logger="engine.pipeline.worker"):
        assert await processor.process(alert_id("d-1", 1)) is None

    assert await bench.status(alert_id("d-1", 1)) is DeliveryStatus.FAILED
    assert await bench.store.get(alert_id(alert_id("d-1", 1), 1)) is None
    assert await bench.store.due_deliveries(bench.clock() + timedelta(days=1)) == []
    lines = {r.delivery_id: r.levelno for r in caplog.records if r.msg == "delivery %s"}  # type: ignore[attr-defined]
    assert lines == {"d-1": logging.WARNING, alert_id("d-1", 1): logging.ERROR}


async def test_a_delivery_redelivered_and_failing_again_raises_a_new_alert(
    bench: Bench, router: respx.MockRouter
) -> None:
    router.post(CRM_URL).respond(400)
    processor = bench.processor(ALERTED)
    await bench.deliver("d-1", low_stock())
    await processor.process("d-1")
    assert await bench.store.reopen("d-1", bench.clock()) is Reopened.REOPENED
    await processor.process("d-1")

    assert (await raised(bench, "d-1", 1))["delivery_id"] == "d-1"
    assert (await raised(bench, "d-1", 2))["delivery_id"] == "d-1"


async def test_a_delivery_that_cannot_be_read_raises_the_alert_too(bench: Bench) -> None:
    await bench.deliver("d-1", low_stock())
    async with bench.store.engine.begin() as connection:
        await connection.execute(text("UPDATE deliveries SET body = NULL"))

    await bench.processor(ALERTED).process("d-1")

    data = await raised(bench, "d-1", 1)
    assert data["error"].startswith("the body of this delivery was purged")
    assert (data["failed_rules"], data["failed_actions"]) == ([], [])


async def test_a_long_delivery_id_gets_an_alert_id_that_fits_the_store(
    bench: Bench, router: respx.MockRouter
) -> None:
    router.post(CRM_URL).respond(400)
    long_id = "x" * 200
    await bench.deliver(long_id, low_stock())

    await bench.processor(ALERTED).process(long_id)

    [due] = await bench.store.due_deliveries(bench.clock() + timedelta(days=1))
    assert due.startswith("stockaj_rules.delivery_failed:sha256-")
    assert len(due) <= 200
    stored = await bench.store.get(due)
    assert stored is not None
    assert stored.body is not None
    assert json.loads(stored.body)["data"]["delivery_id"] == long_id


# --- metrics ------------------------------------------------------------------------------


async def test_metrics_count_outcomes_action_runs_and_finished_deliveries(
    bench: Bench, router: respx.MockRouter
) -> None:
    router.post(PO_URL).mock(side_effect=[httpx.Response(500), httpx.Response(201)])
    metrics = Metrics()
    processor = bench.processor(REORDER, metrics=metrics)
    await bench.deliver("d-1", low_stock())
    await bench.deliver("d-2", low_stock(quantity=50))

    def value(name: str, **labels: str) -> float:
        return metrics.registry.get_sample_value(name, labels) or 0.0

    wait = await processor.process("d-1")
    assert wait is not None
    assert value("stockaj_action_runs_total", type="http", outcome="pending") == 1
    assert value("stockaj_deliveries_processed_total", event="item.low_stock", status="done") == 0

    bench.clock.advance(wait)
    await processor.process("d-1")
    await processor.process("d-2")

    assert value("stockaj_action_runs_total", type="http", outcome="succeeded") == 1
    assert value("stockaj_action_runs_total", type="log", outcome="succeeded") == 1
    assert value("stockaj_action_latency_seconds_count", type="http") == 2
    assert value("stockaj_rule_outcomes_total", status="fired") == 2  # d-1 was matched twice
    assert value("stockaj_rule_outcomes_total", status="condition_false") == 1
    assert value("stockaj_rule_outcomes_total", status="disabled") == 3
    assert value("stockaj_deliveries_processed_total", event="item.low_stock", status="done") == 1
    assert value("stockaj_deliveries_processed_total", event="item.low_stock", status="no_match") == 1
    assert value("stockaj_processing_lag_seconds_count") == 2


# --- a rule that cannot be evaluated -------------------------------------------------------


async def test_a_rule_that_cannot_be_evaluated_fails_the_delivery_and_the_other_rules_still_run(
    bench: Bench, router: respx.MockRouter
) -> None:
    rules = """\
- id: poison
  on: item.low_stock
  throttle: {key: "{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}", per: 1h}
  actions: [{type: log, message: never}]
- id: crm
  on: item.low_stock
  actions:
    - {type: http, url: "https://crm.example.com/hook", json: {id: "{{ data.id }}"}}
"""
    crm = router.post(CRM_URL).respond(200)
    await bench.deliver("d-1", low_stock())

    assert await bench.processor(rules).process("d-1") is None

    assert crm.call_count == 1
    stored = await bench.store.get("d-1")
    assert stored is not None
    assert stored.status is DeliveryStatus.FAILED
    assert stored.error is not None
    assert stored.error.startswith("rule poison could not be evaluated: throttle key: ")
    assert "nested" in stored.error
    status, reason = (await bench.outcomes("d-1"))["poison"]
    assert status == "error"
    assert "nested" in reason


async def test_a_condition_that_cannot_be_evaluated_fails_the_delivery_instead_of_no_match(
    bench: Bench, router: respx.MockRouter
) -> None:
    rules = """\
- id: sums
  on: item.low_stock
  when: {"<": [{"+": [1, {"*": ["x", 2]}]}, 5]}
  actions: [{type: log, message: never}]
"""
    await bench.deliver("d-1", low_stock())

    assert await bench.processor(rules).process("d-1") is None

    stored = await bench.store.get("d-1")
    assert stored is not None
    assert stored.status is DeliveryStatus.FAILED
    assert stored.error is not None
    assert stored.error.startswith("rule sums could not be evaluated: condition could not be evaluated")
