"""The store against both real databases: SQLite in a file and the real PostgreSQL.

Every test runs twice (`[sqlite]`, `[postgresql]`), on a schema made by the real
migrations (`engine.store.database.upgrade`), never by `metadata.create_all`.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import Table, func, select, text
from sqlalchemy.exc import IntegrityError, StatementError

from engine.store import ActionRun, NewDelivery, Reopened, RunEnd, Store
from engine.store.tables import (
    ActionStatus,
    DeliveryStatus,
    action_runs,
    deliveries,
    rule_outcomes,
    throttle_slots,
)
from tests.store.helpers import claim_one, finish_run, save_action_run

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
DUE = T0 + timedelta(seconds=60)
WINDOW = timedelta(minutes=30)
FINISHED = [DeliveryStatus.DONE, DeliveryStatus.FAILED, DeliveryStatus.NO_MATCH]


def delivery(
    delivery_id: str, body: bytes = b'{"data": {}}', received_at: datetime = T0, event: str = "item.updated"
) -> NewDelivery:
    headers = {"X-Stockaj-Event": event, "X-Stockaj-Delivery": delivery_id}
    return NewDelivery(delivery_id, event, headers, body, received_at)


def action_run(
    rule_id: str = "reorder",
    index: int = 0,
    status: ActionStatus = ActionStatus.PENDING,
    attempts: int = 1,
    at: datetime = T0,
) -> ActionRun:
    return ActionRun(
        rule_id=rule_id,
        action_index=index,
        type="http",
        status=status,
        params={"url": "https://po.example/orders", "json": {"quantity": 7, "sku": "TENT-4P"}},
        attempts=attempts,
        last_error=None if status is ActionStatus.SUCCEEDED else "503 Service Unavailable",
        response_status=200 if status is ActionStatus.SUCCEEDED else 503,
        next_attempt_at=None if status is ActionStatus.SUCCEEDED else at + timedelta(seconds=4),
        updated_at=at,
    )


async def count(store: Store, table: Table) -> int:
    async with store.engine.connect() as connection:
        rows: int = (await connection.execute(select(func.count()).select_from(table))).scalar_one()
        return rows


async def claimed(store: Store, delivery_id: str, at: datetime, due_at: datetime) -> bool:
    return await claim_one(store, delivery_id, at, due_at) is not None


async def finished(store: Store, delivery_id: str, status: DeliveryStatus, at: datetime = T0) -> None:
    await claim_one(store, delivery_id, at, due_at=at + timedelta(seconds=60))
    await finish_run(store, delivery_id, status, at, None, None)


# --- add_deliveries: store first, dedupe by primary key ---------------------------------------


async def test_add_deliveries_stores_new_ones_and_returns_their_ids(store: Store) -> None:
    new = await store.add_deliveries([delivery("a"), delivery("b")], DUE)

    assert new == {"a", "b"}
    stored = await store.get("a")
    assert stored is not None
    assert stored.event == "item.updated"
    assert stored.status is DeliveryStatus.RECEIVED
    assert stored.headers == {"X-Stockaj-Event": "item.updated", "X-Stockaj-Delivery": "a"}
    assert stored.body == b'{"data": {}}'
    assert (stored.received_at, stored.updated_at, stored.due_at) == (T0, T0, DUE)
    assert (stored.runs, stored.error) == (0, None)


async def test_stored_id_comes_back_as_not_new_and_keeps_the_first_copy(store: Store) -> None:
    await store.add_deliveries([delivery("a", body=b'{"first": true}')], DUE)

    new = await store.add_deliveries(
        [delivery("a", body=b'{"second": true}', received_at=T0 + timedelta(minutes=5)), delivery("b")], DUE
    )

    assert new == {"b"}
    stored = await store.get("a")
    assert stored is not None
    assert (stored.body, stored.received_at) == (b'{"first": true}', T0)
    assert await count(store, deliveries) == 2


async def test_batch_holding_the_same_id_twice_stores_one_row(store: Store) -> None:
    new = await store.add_deliveries(
        [delivery("a", body=b'{"n": 1}'), delivery("b"), delivery("a", body=b'{"n": 2}')], DUE
    )

    assert new == {"a", "b"}
    assert await count(store, deliveries) == 2
    stored = await store.get("a")
    assert stored is not None
    assert stored.body == b'{"n": 1}'  # the first copy the receiver verified


async def test_empty_batch_stores_nothing(store: Store) -> None:
    assert await store.add_deliveries([], DUE) == set()
    assert await count(store, deliveries) == 0


async def test_fifty_concurrent_adds_of_one_id_store_one_row_and_one_reports_it_new(store: Store) -> None:
    results = await asyncio.gather(
        *(store.add_deliveries([delivery("same", body=f'{{"n": {n}}}'.encode())], DUE) for n in range(50))
    )

    assert sum("same" in result for result in results) == 1
    assert await count(store, deliveries) == 1


async def test_concurrent_overlapping_batches_in_different_orders_do_not_deadlock(store: Store) -> None:
    # Receivers batch what arrives together; a redelivery can land in another receiver's batch.
    ids = [f"d-{n:03}" for n in range(300)]
    orders = [ids, ids[::-1], ids[1::2] + ids[::2], ids[150:] + ids[:150]]
    for _ in range(3):
        await store.engine.dispose()  # nothing in common but the database
        results = await asyncio.gather(*(store.add_deliveries([delivery(i) for i in o], DUE) for o in orders))
        assert sorted(i for result in results for i in result) == ids
        async with store.engine.begin() as connection:
            await connection.execute(deliveries.delete())


BODIES = {
    "unicode-json": json.dumps(
        {"data": {"name": "Tente 4p — «été» 🏕️", "note": "\u0000 nul, \\ backslash, \U0001f600"}},
        ensure_ascii=False,
    ).encode(),
    "escaped-json": b'{"data": {"bytes": "\\u0000\\u001f\\u00ff\\ud800", "crlf": "a\\r\\nb"}}',
    "every-byte": bytes(range(256)) * 4,
    "one-mib": b'{"data": {"blob": "' + b"x" * (1024 * 1024 - 22) + b'"}}',
    "empty": b"",
}


@pytest.mark.parametrize("body", BODIES.values(), ids=BODIES.keys())
async def test_body_bytes_round_trip_exactly(store: Store, body: bytes) -> None:
    await store.add_deliveries([delivery("a", body=body)], DUE)

    stored = await store.get("a")
    assert stored is not None
    assert type(stored.body) is bytes
    assert stored.body == body


async def test_datetimes_come_back_timezone_aware_utc(store: Store) -> None:
    paris = timezone(timedelta(hours=1))
    received = datetime(2026, 3, 1, 10, 0, 0, 123456, tzinfo=paris)  # 09:00:00.123456 UTC
    await store.add_deliveries([delivery("a", received_at=received)], received + timedelta(minutes=1))

    stored = await store.get("a")
    assert stored is not None
    for moment in (stored.received_at, stored.updated_at, stored.due_at):
        assert moment is not None
        assert moment.utcoffset() == timedelta(0)
        assert moment.tzinfo == UTC
    assert stored.received_at == datetime(2026, 3, 1, 9, 0, 0, 123456, tzinfo=UTC)
    assert stored.due_at == datetime(2026, 3, 1, 9, 1, 0, 123456, tzinfo=UTC)


async def test_naive_datetimes_are_refused(store: Store) -> None:
    # SQLAlchemy's StatementError on PostgreSQL, the column type's own ValueError on SQLite.
    with pytest.raises((StatementError, ValueError), match="naive datetime"):
        await store.add_deliveries([delivery("a", received_at=datetime(2026, 3, 1, 9, 0))], DUE)
    assert await count(store, deliveries) == 0


async def test_get_unknown_delivery_is_none(store: Store) -> None:
    assert await store.get("never-sent") is None


async def test_recent_lists_newest_first_and_filters_by_status(store: Store) -> None:
    await store.add_deliveries(
        [delivery(f"d{n}", received_at=T0 + timedelta(minutes=n)) for n in range(4)], DUE
    )
    await finished(store, "d1", DeliveryStatus.DONE)

    assert [d.delivery_id for d in await store.recent()] == ["d3", "d2", "d1", "d0"]
    assert [d.delivery_id for d in await store.recent(limit=2)] == ["d3", "d2"]
    assert [d.delivery_id for d in await store.recent(DeliveryStatus.DONE)] == ["d1"]
    assert [d.delivery_id for d in await store.recent(DeliveryStatus.RECEIVED)] == ["d3", "d2", "d0"]


async def test_ping_answers(store: Store) -> None:
    await store.ping()


# --- runs and due deliveries: what the sweeper enqueues again ---------------------------------


async def test_received_delivery_becomes_due_at_its_due_at(store: Store) -> None:
    await store.add_deliveries([delivery("a")], DUE)

    assert await store.due_deliveries(DUE - timedelta(microseconds=1)) == []
    assert await store.due_deliveries(DUE) == ["a"]
    assert await store.due_deliveries(DUE + timedelta(hours=1)) == ["a"]


async def test_processing_delivery_becomes_due_after_its_due_at_a_dead_worker(store: Store) -> None:
    await store.add_deliveries([delivery("a")], DUE)
    started = T0 + timedelta(seconds=30)
    await claimed(store, "a", started, due_at=started + timedelta(seconds=60))

    stored = await store.get("a")
    assert stored is not None
    assert (stored.status, stored.runs, stored.updated_at) == (DeliveryStatus.PROCESSING, 1, started)
    assert await store.due_deliveries(DUE) == []
    assert await store.due_deliveries(started + timedelta(seconds=60)) == ["a"]


async def test_claims_count_runs(store: Store) -> None:
    await store.add_deliveries([delivery("a")], DUE)
    for n in range(3):
        await claimed(store, "a", T0 + timedelta(minutes=n), due_at=DUE)

    stored = await store.get("a")
    assert stored is not None
    assert stored.runs == 3


async def test_only_one_of_concurrent_claims_gets_a_delivery(store: Store) -> None:
    await store.add_deliveries([delivery("a")], DUE)

    claims = await asyncio.gather(
        *(claimed(store, "a", T0, due_at=T0 + timedelta(minutes=1)) for _ in range(10))
    )

    assert sorted(claims) == [False] * 9 + [True]


async def test_a_claimed_delivery_can_be_claimed_again_only_after_its_due_at(store: Store) -> None:
    await store.add_deliveries([delivery("a")], DUE)
    assert await claimed(store, "a", T0, due_at=T0 + timedelta(minutes=1))

    assert not await claimed(store, "a", T0 + timedelta(seconds=59), due_at=T0 + timedelta(minutes=2))
    await store.save_progress("a", [], T0 + timedelta(seconds=59), T0 + timedelta(minutes=3), token=1)
    assert not await claimed(store, "a", T0 + timedelta(minutes=2), due_at=T0 + timedelta(minutes=4))
    assert await claimed(store, "a", T0 + timedelta(minutes=3), due_at=T0 + timedelta(minutes=4))


async def test_a_finished_delivery_cannot_be_claimed(store: Store) -> None:
    await store.add_deliveries([delivery("a")], DUE)
    await finished(store, "a", DeliveryStatus.DONE)

    assert not await claimed(store, "a", T0 + timedelta(days=1), due_at=T0 + timedelta(days=2))


async def test_a_first_claim_returns_the_delivery_as_claimed_and_no_ledger(store: Store) -> None:
    await store.add_deliveries([delivery("a")], DUE)

    claim = await claim_one(store, "a", T0, due_at=T0 + timedelta(minutes=1))

    assert claim is not None
    assert (claim.delivery.status, claim.delivery.runs, claim.delivery.due_at) == (
        DeliveryStatus.PROCESSING,
        1,
        T0 + timedelta(minutes=1),
    )
    assert claim.delivery.body == delivery("a").body
    assert claim.ledger == {}


async def test_a_later_claim_returns_the_ledger_of_earlier_runs(store: Store) -> None:
    await store.add_deliveries([delivery("a")], DUE)
    await claim_one(store, "a", T0, due_at=T0 + timedelta(minutes=1))
    pending = action_run(attempts=1)
    await finish_run(
        store, "a", DeliveryStatus.PROCESSING, T0, T0 + timedelta(seconds=4), None, runs=[pending]
    )

    claim = await claim_one(store, "a", T0 + timedelta(seconds=4), due_at=T0 + timedelta(minutes=2))

    assert claim is not None
    assert claim.delivery.runs == 2
    assert claim.ledger == {("reorder", 0): pending}


async def test_claim_many_claims_the_claimable_ones_in_one_go(store: Store) -> None:
    await store.add_deliveries([delivery("new"), delivery("again"), delivery("taken"), delivery("done")], DUE)
    await claim_one(store, "again", T0, due_at=T0)  # its run died; claimable again at once
    await save_action_run(store, "again", action_run(status=ActionStatus.SUCCEEDED))
    await claim_one(store, "taken", T0, due_at=T0 + timedelta(minutes=5))
    await finished(store, "done", DeliveryStatus.DONE)

    claims = await store.claim_many(
        ["new", "again", "taken", "done", "unknown", "new"], T0, T0 + timedelta(minutes=1)
    )

    assert sorted(claims) == ["again", "new"]
    assert (claims["new"].delivery.runs, claims["new"].ledger) == (1, {})
    assert claims["again"].delivery.runs == 2
    assert claims["again"].ledger == {("reorder", 0): action_run(status=ActionStatus.SUCCEEDED)}


async def test_finish_runs_records_many_deliveries_in_one_go(store: Store) -> None:
    await store.add_deliveries([delivery("a"), delivery("b"), delivery("c")], DUE)
    for delivery_id in ("a", "b", "c"):
        await claim_one(store, delivery_id, T0, due_at=DUE)
    await finish_run(store, "c", DeliveryStatus.PROCESSING, T0, T0, None, outcomes=[("stale", "fired", "")])
    retry_at = T0 + timedelta(seconds=8)

    assert await store.finish_runs(
        [
            RunEnd(
                delivery_id="b",
                status=DeliveryStatus.PROCESSING,
                now=T0,
                due_at=retry_at,
                error=None,
                outcomes=[("reorder", "fired", "")],
                runs=[action_run()],
                first_run=True,
                token=1,
            ),
            RunEnd(
                delivery_id="a",
                status=DeliveryStatus.NO_MATCH,
                now=T0,
                due_at=None,
                error=None,
                outcomes=[("reorder", "condition_false", "q = 9")],
                runs=(),
                first_run=True,
                token=1,
            ),
            RunEnd(
                delivery_id="c",
                status=DeliveryStatus.FAILED,
                now=T0,
                due_at=None,
                error="HTTP 400",
                outcomes=[("reorder", "fired", "")],
                runs=(),
                first_run=False,
                token=1,
            ),
        ]
    ) == {"a", "b", "c"}

    stored = {d: await store.get(d) for d in ("a", "b", "c")}
    assert {d: (s.status, s.due_at, s.error) for d, s in stored.items() if s} == {
        "a": (DeliveryStatus.NO_MATCH, None, None),
        "b": (DeliveryStatus.PROCESSING, retry_at, None),
        "c": (DeliveryStatus.FAILED, None, "HTTP 400"),
    }
    assert [(o.rule_id, o.status) for o in await store.outcomes("a")] == [("reorder", "condition_false")]
    assert [(o.rule_id, o.status) for o in await store.outcomes("c")] == [("reorder", "fired")]
    assert await store.action_runs("b") == {("reorder", 0): action_run()}


async def test_finish_runs_of_first_runs_only_records_what_each_run_ended_with(store: Store) -> None:
    # On PostgreSQL this batch is one statement over arrays (first runs replace no outcomes);
    # on SQLite the statements of any batch. Both must store the same.
    await store.add_deliveries([delivery("a"), delivery("b"), delivery("c")], DUE)
    for delivery_id in ("a", "b", "c"):
        await claim_one(store, delivery_id, T0, due_at=DUE)
    progress = action_run(status=ActionStatus.SUCCEEDED)
    await store.save_progress("b", [progress], T0, DUE, token=1)  # a row the finish updates
    retry_at = T0 + timedelta(seconds=8)
    failed = replace(action_run(index=1, status=ActionStatus.FAILED), last_error="HTTP 400: x\x00y")
    unrendered = replace(
        action_run(index=2, status=ActionStatus.PENDING), params=None, next_attempt_at=retry_at
    )

    assert await store.finish_runs(
        [
            RunEnd(
                delivery_id="b",
                status=DeliveryStatus.PROCESSING,
                now=T0,
                due_at=retry_at,
                error="to-slack: x\x00y",
                outcomes=[("reorder", "fired", ""), ("to-slack", "condition_false", "data.name = 'x\x00y'")],
                runs=[replace(progress, attempts=2), failed, unrendered],
                first_run=True,
                token=1,
            ),
            RunEnd(
                delivery_id="a",
                status=DeliveryStatus.NO_MATCH,
                now=T0,
                due_at=None,
                error=None,
                outcomes=[("reorder", "condition_false", "q")],
                runs=(),
                first_run=True,
                token=1,
            ),
            RunEnd(
                delivery_id="c",
                status=DeliveryStatus.FAILED,
                now=T0,
                due_at=None,
                error="the stored body is not JSON",
                outcomes=None,
                runs=(),
                first_run=True,
                token=1,
            ),
        ]
    ) == {"a", "b", "c"}

    stored = {d: await store.get(d) for d in ("a", "b", "c")}
    assert {d: (s.status, s.due_at, s.error) for d, s in stored.items() if s} == {
        "a": (DeliveryStatus.NO_MATCH, None, None),
        "b": (DeliveryStatus.PROCESSING, retry_at, "to-slack: x\ufffdy"),
        "c": (DeliveryStatus.FAILED, None, "the stored body is not JSON"),
    }
    assert [(o.rule_id, o.status, o.reason) for o in await store.outcomes("b")] == [
        ("reorder", "fired", ""),
        ("to-slack", "condition_false", "data.name = 'x\ufffdy'"),
    ]
    assert [(o.rule_id, o.recorded_at) for o in await store.outcomes("a")] == [("reorder", T0)]
    assert await store.outcomes("c") == []
    assert await store.action_runs("b") == {
        ("reorder", 0): replace(progress, attempts=2),
        ("reorder", 1): replace(failed, last_error="HTTP 400: x\ufffdy"),
        ("reorder", 2): unrendered,
    }
    assert await store.action_runs("a") == {}


async def test_save_progress_records_actions_and_extends_the_claim(store: Store) -> None:
    await store.add_deliveries([delivery("a")], DUE)
    await claim_one(store, "a", T0, due_at=T0 + timedelta(minutes=1))
    done = action_run(status=ActionStatus.SUCCEEDED)

    assert await store.save_progress(
        "a", [done], T0 + timedelta(seconds=50), T0 + timedelta(minutes=5), token=1
    )

    assert await store.action_runs("a") == {("reorder", 0): done}
    assert not await claimed(store, "a", T0 + timedelta(minutes=4), due_at=T0 + timedelta(minutes=6))


async def test_finish_run_writes_status_outcomes_and_actions_together(store: Store) -> None:
    await store.add_deliveries([delivery("a")], DUE)
    await claim_one(store, "a", T0, due_at=DUE)
    await finish_run(store, "a", DeliveryStatus.DONE, T0, None, None, outcomes=[("stale", "fired", "")])
    runs = [action_run(status=ActionStatus.FAILED), action_run(index=1, status=ActionStatus.SKIPPED)]

    await finish_run(
        store,
        "a",
        DeliveryStatus.FAILED,
        T0,
        None,
        "HTTP 400",
        outcomes=[("reorder", "fired", "")],
        runs=runs,
    )

    stored = await store.get("a")
    assert stored is not None
    assert (stored.status, stored.error) == (DeliveryStatus.FAILED, "HTTP 400")
    assert [(o.rule_id, o.status) for o in await store.outcomes("a")] == [("reorder", "fired")]
    assert await store.action_runs("a") == {("reorder", 0): runs[0], ("reorder", 1): runs[1]}


async def test_finish_run_without_outcomes_keeps_the_recorded_ones(store: Store) -> None:
    await store.add_deliveries([delivery("a")], DUE)
    await finish_run(store, "a", DeliveryStatus.DONE, T0, None, None, outcomes=[("reorder", "fired", "")])

    await finish_run(store, "a", DeliveryStatus.FAILED, T0, None, "the stored body is not JSON")

    assert [o.rule_id for o in await store.outcomes("a")] == ["reorder"]


@pytest.mark.parametrize("status", FINISHED)
async def test_finished_deliveries_are_never_due(store: Store, status: DeliveryStatus) -> None:
    await store.add_deliveries([delivery("a")], DUE)
    await claimed(store, "a", T0, due_at=DUE)
    await finish_run(
        store, "a", status, T0 + timedelta(seconds=1), None, "boom" if status == "failed" else None
    )

    assert await store.due_deliveries(T0 + timedelta(days=365)) == []
    stored = await store.get("a")
    assert stored is not None
    assert (stored.status, stored.due_at) == (status, None)


async def test_finished_delivery_with_a_stray_due_at_is_still_not_due(store: Store) -> None:
    await store.add_deliveries([delivery("a")], DUE)
    await finish_run(store, "a", DeliveryStatus.DONE, T0, DUE, None)

    assert await store.due_deliveries(DUE + timedelta(days=1)) == []


async def test_finish_run_still_processing_waits_for_the_retry_time(store: Store) -> None:
    await store.add_deliveries([delivery("a")], DUE)
    await claimed(store, "a", T0, due_at=DUE)
    retry_at = T0 + timedelta(seconds=8)
    await finish_run(store, "a", DeliveryStatus.PROCESSING, T0 + timedelta(seconds=1), retry_at, None)

    assert await store.due_deliveries(retry_at - timedelta(seconds=1)) == []
    assert await store.due_deliveries(retry_at) == ["a"]


async def test_finish_run_records_the_error(store: Store) -> None:
    await store.add_deliveries([delivery("a")], DUE)
    await finish_run(store, "a", DeliveryStatus.FAILED, T0, None, "reorder-low-stock: actions[0]: HTTP 400")

    stored = await store.get("a")
    assert stored is not None
    assert (stored.status, stored.error) == (DeliveryStatus.FAILED, "reorder-low-stock: actions[0]: HTTP 400")


async def test_reopen_makes_a_finished_delivery_due_now_and_clears_its_error(store: Store) -> None:
    await store.add_deliveries([delivery("a")], DUE)
    await finish_run(store, "a", DeliveryStatus.FAILED, T0, None, "HTTP 400")
    later = T0 + timedelta(days=2)

    assert await store.reopen("a", later) is Reopened.REOPENED

    stored = await store.get("a")
    assert stored is not None
    assert (stored.status, stored.due_at, stored.updated_at, stored.error) == (
        DeliveryStatus.RECEIVED,
        later,
        later,
        None,
    )
    assert await store.due_deliveries(later) == ["a"]


async def test_reopen_gives_actions_that_did_not_succeed_a_fresh_start(store: Store) -> None:
    await store.add_deliveries([delivery("a")], DUE)
    succeeded = action_run(index=0, status=ActionStatus.SUCCEEDED, attempts=2)
    failed = action_run(index=1, status=ActionStatus.FAILED, attempts=8)
    skipped = action_run(index=2, status=ActionStatus.SKIPPED, attempts=0)
    await finish_run(
        store, "a", DeliveryStatus.FAILED, T0, None, "HTTP 400", runs=[succeeded, failed, skipped]
    )
    later = T0 + timedelta(days=2)

    await store.reopen("a", later)

    ledger = await store.action_runs("a")
    assert ledger[("reorder", 0)] == succeeded
    for index in (1, 2):
        run = ledger[("reorder", index)]
        assert (run.status, run.attempts, run.next_attempt_at, run.updated_at) == (
            ActionStatus.PENDING,
            0,
            None,
            later,
        )


async def test_reopen_of_an_unknown_delivery_is_false(store: Store) -> None:
    assert await store.reopen("never-sent", T0) is Reopened.UNKNOWN


async def test_due_deliveries_come_oldest_due_first_up_to_the_limit(store: Store) -> None:
    for n, minutes in enumerate([5, 1, 4, 2, 3]):
        await store.add_deliveries([delivery(f"d{n}")], T0 + timedelta(minutes=minutes))
    await store.add_deliveries([delivery("tie-b"), delivery("tie-a")], T0)  # same due_at: by id
    await store.add_deliveries([delivery("later")], T0 + timedelta(hours=1))

    now = T0 + timedelta(minutes=10)
    assert await store.due_deliveries(now) == ["tie-a", "tie-b", "d1", "d3", "d4", "d2", "d0"]
    assert await store.due_deliveries(now, limit=3) == ["tie-a", "tie-b", "d1"]


# --- claims are owned: a run's writes apply only while its claim is current -------------------


async def claimed_twice(store: Store) -> None:
    """`a` claimed by a first run (token 1), whose claim expired, then by a second (token 2)."""
    await store.add_deliveries([delivery("a")], DUE)
    assert await claimed(store, "a", T0, due_at=T0 + timedelta(minutes=1))
    assert await claimed(store, "a", T0 + timedelta(minutes=2), due_at=T0 + timedelta(minutes=3))


@pytest.mark.parametrize("first_run", [True, False], ids=["first-run", "later-run"])
async def test_a_run_whose_claim_was_taken_over_records_only_the_actions_it_saw_succeed(
    store: Store, first_run: bool
) -> None:
    await claimed_twice(store)
    succeeded = action_run(index=0, status=ActionStatus.SUCCEEDED)
    failed = action_run(index=1, status=ActionStatus.FAILED)
    alert = delivery("alert-of-a", event="stockaj_rules.delivery_failed")

    recorded = await store.finish_runs(
        [
            RunEnd(
                delivery_id="a",
                status=DeliveryStatus.FAILED,
                now=T0 + timedelta(minutes=2, seconds=30),
                due_at=None,
                error="HTTP 400",
                outcomes=[("reorder", "fired", "")],
                runs=[succeeded, failed],
                first_run=first_run,
                token=1,
                raised=alert,
            )
        ]
    )

    assert recorded == set()
    stored = await store.get("a")
    assert stored is not None
    assert (stored.status, stored.error, stored.runs, stored.due_at) == (
        DeliveryStatus.PROCESSING,
        None,
        2,
        T0 + timedelta(minutes=3),
    )
    assert await store.outcomes("a") == []
    assert await store.action_runs("a") == {("reorder", 0): succeeded}
    assert await store.get("alert-of-a") is None


async def test_a_stale_success_never_replaces_the_new_runs_record_of_the_same_action(store: Store) -> None:
    await claimed_twice(store)
    newer = action_run(index=0, status=ActionStatus.SUCCEEDED, attempts=1, at=T0 + timedelta(minutes=2))
    assert await store.save_progress("a", [newer], T0 + timedelta(minutes=2), DUE, token=2)
    stale = action_run(index=0, status=ActionStatus.SUCCEEDED, attempts=3)

    assert not await store.save_progress("a", [stale], T0 + timedelta(minutes=4), DUE, token=1)
    await store.finish_runs(
        [
            RunEnd(
                delivery_id="a",
                status=DeliveryStatus.DONE,
                now=T0,
                due_at=None,
                error=None,
                runs=[stale],
                token=1,
            )
        ]
    )

    assert await store.action_runs("a") == {("reorder", 0): newer}


async def test_a_stale_run_cannot_extend_or_save_over_the_new_claim(store: Store) -> None:
    await claimed_twice(store)

    assert not await store.save_progress("a", [], T0 + timedelta(minutes=2), T0 + timedelta(hours=1), token=1)
    assert await store.extend_claims([("a", 1)], T0 + timedelta(hours=1)) == set()
    await store.note_crash("a", 1, "RuntimeError: the stale run crashed")

    stored = await store.get("a")
    assert stored is not None
    assert (stored.due_at, stored.error) == (T0 + timedelta(minutes=3), None)
    assert await claimed(store, "a", T0 + timedelta(minutes=3), due_at=T0 + timedelta(minutes=4))


async def test_extend_claims_pushes_out_the_claims_still_held_and_says_which(store: Store) -> None:
    await store.add_deliveries([delivery("held"), delivery("taken"), delivery("done"), delivery("new")], DUE)
    for delivery_id in ("held", "taken", "done"):
        await claimed(store, delivery_id, T0, due_at=T0 + timedelta(minutes=1))
    await claimed(store, "taken", T0 + timedelta(minutes=1), due_at=T0 + timedelta(minutes=2))
    assert await finish_run(store, "done", DeliveryStatus.DONE, T0, None, None, token=1)
    later = T0 + timedelta(minutes=10)

    held = await store.extend_claims([("held", 1), ("taken", 1), ("done", 1), ("new", 0), ("gone", 1)], later)

    assert held == {"held"}
    due = {d: (await store.get(d)).due_at for d in ("held", "taken", "done", "new")}  # type: ignore[union-attr]
    assert due == {"held": later, "taken": T0 + timedelta(minutes=2), "done": None, "new": DUE}
    assert await store.extend_claims([], later) == set()


async def test_claims_count_unfinished_runs_until_a_finish_or_progress(store: Store) -> None:
    await store.add_deliveries([delivery("a")], DUE)

    async def unfinished() -> int:
        stored = await store.get("a")
        assert stored is not None
        return stored.unfinished_runs

    for n in range(3):
        await claimed(store, "a", T0 + timedelta(minutes=2 * n), due_at=T0 + timedelta(minutes=2 * n + 1))
    assert await unfinished() == 3
    assert await store.save_progress("a", [], T0 + timedelta(minutes=4), T0 + timedelta(minutes=5), token=3)
    assert await unfinished() == 0
    await claimed(store, "a", T0 + timedelta(minutes=6), due_at=T0 + timedelta(minutes=7))
    assert await unfinished() == 1
    retry_at = T0 + timedelta(minutes=8)
    assert await finish_run(
        store, "a", DeliveryStatus.PROCESSING, T0 + timedelta(minutes=6), retry_at, None, token=4
    )
    assert await unfinished() == 0


async def test_note_crash_keeps_the_error_of_the_run_that_owns_the_claim(store: Store) -> None:
    await store.add_deliveries([delivery("a")], DUE)
    await claimed(store, "a", T0, due_at=T0 + timedelta(minutes=1))

    await store.note_crash("a", 1, "RecursionError: maximum recursion depth exceeded")

    stored = await store.get("a")
    assert stored is not None
    assert (stored.status, stored.error) == (
        DeliveryStatus.PROCESSING,
        "RecursionError: maximum recursion depth exceeded",
    )


async def test_an_event_a_failed_run_raises_is_stored_with_its_end_once(store: Store) -> None:
    await store.add_deliveries([delivery("a")], DUE)
    await claimed(store, "a", T0, due_at=DUE)
    alert = delivery(
        "alert-of-a", body=b'{"data": {"delivery_id": "a"}}', event="stockaj_rules.delivery_failed"
    )
    end = RunEnd(
        delivery_id="a",
        status=DeliveryStatus.FAILED,
        now=T0 + timedelta(seconds=1),
        due_at=None,
        error="HTTP 400",
        token=1,
        raised=alert,
    )

    assert await store.finish_runs([end]) == {"a"}
    await store.finish_runs([end])  # the same end recorded again (a retried commit): no second event

    raised = await store.get("alert-of-a")
    assert raised is not None
    assert (raised.event, raised.status, raised.body, raised.runs, raised.due_at) == (
        "stockaj_rules.delivery_failed",
        DeliveryStatus.RECEIVED,
        alert.body,
        0,
        T0 + timedelta(seconds=1),
    )
    assert raised.headers == alert.headers
    assert await count(store, deliveries) == 2
    assert await store.due_deliveries(T0 + timedelta(seconds=1)) == ["alert-of-a"]


async def test_reopen_leaves_a_delivery_alone_while_a_run_holds_it(store: Store) -> None:
    await store.add_deliveries([delivery("a")], DUE)
    await claimed(store, "a", T0, due_at=T0 + timedelta(minutes=1))

    assert await store.reopen("a", T0 + timedelta(seconds=30)) is Reopened.RUNNING
    stored = await store.get("a")
    assert stored is not None
    assert (stored.status, stored.due_at) == (DeliveryStatus.PROCESSING, T0 + timedelta(minutes=1))

    # Its claim expired (its worker died): it may be reopened.
    assert await store.reopen("a", T0 + timedelta(minutes=1)) is Reopened.REOPENED


async def test_reopen_takes_a_delivery_waiting_for_a_retry_and_makes_it_due_when_asked(store: Store) -> None:
    await store.add_deliveries([delivery("a")], DUE)
    await claimed(store, "a", T0, due_at=T0 + timedelta(minutes=1))
    retry_at = T0 + timedelta(minutes=10)  # a Retry-After: 600
    assert await finish_run(store, "a", DeliveryStatus.PROCESSING, T0, retry_at, None, token=1)
    later = T0 + timedelta(seconds=5)

    assert await store.reopen("a", later, due_at=later + timedelta(seconds=60)) is Reopened.REOPENED

    stored = await store.get("a")
    assert stored is not None
    assert (stored.status, stored.due_at, stored.unfinished_runs) == (
        DeliveryStatus.RECEIVED,
        later + timedelta(seconds=60),
        0,
    )
    assert await claimed(store, "a", later, due_at=later + timedelta(minutes=1))


# --- rule outcomes and the action ledger -------------------------------------------------------


async def test_finish_run_replaces_the_previous_outcomes(store: Store) -> None:
    await store.add_deliveries([delivery("a"), delivery("b")], DUE)
    await finish_run(store, "b", DeliveryStatus.DONE, T0, None, None, outcomes=[("other", "fired", "")])
    await finish_run(
        store,
        "a",
        DeliveryStatus.DONE,
        T0,
        None,
        None,
        outcomes=[("reorder", "fired", ""), ("to-slack", "condition_false", "data.quantity = 9")],
    )

    later = T0 + timedelta(minutes=1)
    await finish_run(
        store,
        "a",
        DeliveryStatus.DONE,
        later,
        None,
        None,
        outcomes=[("to-slack", "throttled", "last fired 09:00"), ("new", "disabled", "")],
    )

    outcomes = await store.outcomes("a")
    assert [(o.rule_id, o.status, o.reason, o.recorded_at) for o in outcomes] == [
        ("new", "disabled", "", later),
        ("to-slack", "throttled", "last fired 09:00", later),
    ]
    assert [o.rule_id for o in await store.outcomes("b")] == ["other"]


async def test_finish_run_with_no_outcomes_clears_them(store: Store) -> None:
    await store.add_deliveries([delivery("a")], DUE)
    await finish_run(store, "a", DeliveryStatus.DONE, T0, None, None, outcomes=[("reorder", "fired", "")])

    await finish_run(store, "a", DeliveryStatus.DONE, T0, None, None, outcomes=[])

    assert await store.outcomes("a") == []


async def test_concurrent_finishes_of_one_delivery_leave_one_complete_set_of_outcomes(store: Store) -> None:
    # At-least-once: runs whose claims expired (a worker thought dead) may finish the same
    # delivery at the same moment as the run holding the current claim. Each run has its own
    # claim token, as workers do; only the current claim's finish is recorded, whole.
    await store.add_deliveries([delivery("a")], DUE)
    tokens = []
    for run in range(8):
        at = DUE + timedelta(minutes=2 * run)
        claimed = await claim_one(store, "a", at, at + timedelta(minutes=1))
        assert claimed is not None
        tokens.append(claimed.delivery.runs)
    rules = [f"rule-{n:02}" for n in range(30)]
    sets = [
        [(rule, "fired", f"run {run}") for rule in (rules if run % 2 else rules[::-1])] for run in range(8)
    ]

    finished = await asyncio.gather(
        *(
            finish_run(store, "a", DeliveryStatus.DONE, T0, None, None, outcomes=outcomes, token=token)
            for outcomes, token in zip(sets, tokens, strict=True)
        )
    )

    assert finished == [False] * 7 + [True]
    outcomes = await store.outcomes("a")
    assert [o.rule_id for o in outcomes] == rules
    assert {o.reason for o in outcomes} == {"run 7"}  # all from the current claim's run, not a mix


async def test_save_action_run_inserts_then_updates_by_delivery_rule_and_index(store: Store) -> None:
    await store.add_deliveries([delivery("a")], DUE)
    first = action_run(attempts=1)
    await save_action_run(store, "a", first)
    await save_action_run(store, "a", action_run(index=1, attempts=1))

    succeeded = action_run(status=ActionStatus.SUCCEEDED, attempts=2, at=T0 + timedelta(seconds=5))
    await save_action_run(store, "a", succeeded)

    ledger = await store.action_runs("a")
    assert set(ledger) == {("reorder", 0), ("reorder", 1)}
    assert ledger[("reorder", 0)] == succeeded
    assert ledger[("reorder", 1)] == action_run(index=1, attempts=1)
    assert await count(store, action_runs) == 2


async def test_action_ledger_round_trips_every_field(store: Store) -> None:
    await store.add_deliveries([delivery("a")], DUE)
    run = action_run()

    await save_action_run(store, "a", run)

    saved = (await store.action_runs("a"))[("reorder", 0)]
    assert saved == run
    assert saved.status is ActionStatus.PENDING
    assert saved.next_attempt_at is not None
    assert saved.next_attempt_at.tzinfo == UTC


async def test_action_ledgers_are_per_delivery(store: Store) -> None:
    await store.add_deliveries([delivery("a"), delivery("b")], DUE)
    await save_action_run(store, "a", action_run(status=ActionStatus.SUCCEEDED))
    await save_action_run(store, "b", action_run(status=ActionStatus.FAILED))

    assert (await store.action_runs("a"))[("reorder", 0)].status is ActionStatus.SUCCEEDED
    assert (await store.action_runs("b"))[("reorder", 0)].status is ActionStatus.FAILED
    assert await store.action_runs("c") == {}


async def test_forget_action_runs_drops_only_that_deliverys_ledger(store: Store) -> None:
    await store.add_deliveries([delivery("a"), delivery("b")], DUE)
    for index in range(3):
        await save_action_run(store, "a", action_run(index=index))
    await save_action_run(store, "b", action_run())

    await store.forget_action_runs("a")

    assert await store.action_runs("a") == {}
    assert set(await store.action_runs("b")) == {("reorder", 0)}


async def test_nul_characters_from_a_payload_are_logged_as_replacement_characters(store: Store) -> None:
    # Valid JSON ("\u0000") that PostgreSQL refuses in text: the delivery log must still be written.
    await store.add_deliveries([delivery("a", body=b'{"data": {"name": "x\\u0000y"}}')], DUE)
    await finish_run(
        store,
        "a",
        DeliveryStatus.DONE,
        T0,
        None,
        None,
        outcomes=[("to-slack", "condition_false", "data.name = 'x\x00y'")],
    )
    await save_action_run(
        store, "a", replace(action_run(), params={"text": "x\x00y"}, last_error="HTTP 400: x\x00y")
    )
    await finish_run(store, "a", DeliveryStatus.FAILED, T0, None, "to-slack: x\x00y")

    assert [o.reason for o in await store.outcomes("a")] == ["data.name = 'x\ufffdy'"]
    saved = (await store.action_runs("a"))[("reorder", 0)]
    assert (saved.params, saved.last_error) == ({"text": "x\x00y"}, "HTTP 400: x\ufffdy")
    stored = await store.get("a")
    assert stored is not None
    assert (stored.error, stored.body) == ("to-slack: x\ufffdy", b'{"data": {"name": "x\\u0000y"}}')


# --- throttle slots ----------------------------------------------------------------------------


async def test_first_acquire_takes_the_throttle_slot(store: Store) -> None:
    assert await store.acquire_throttle("reorder", "TENT-4P", WINDOW, T0, "d1") is None


async def test_second_delivery_within_the_window_gets_when_the_slot_was_taken(store: Store) -> None:
    await store.acquire_throttle("reorder", "TENT-4P", WINDOW, T0, "d1")

    last = await store.acquire_throttle("reorder", "TENT-4P", WINDOW, T0 + timedelta(minutes=29), "d2")

    assert last == T0
    assert last is not None
    assert last.tzinfo == UTC


async def test_same_delivery_again_gets_the_slot_when_processed_again(store: Store) -> None:
    await store.acquire_throttle("reorder", "TENT-4P", WINDOW, T0, "d1")

    assert (
        await store.acquire_throttle("reorder", "TENT-4P", WINDOW, T0 + timedelta(minutes=10), "d1") is None
    )


async def test_processing_a_delivery_again_does_not_extend_the_window(store: Store) -> None:
    await store.acquire_throttle("reorder", "TENT-4P", WINDOW, T0, "d1")
    await store.acquire_throttle("reorder", "TENT-4P", WINDOW, T0 + timedelta(minutes=20), "d1")

    # The rule fired once, at T0: the window ends at T0 + 30 min, not 20 minutes later.
    assert await store.acquire_throttle("reorder", "TENT-4P", WINDOW, T0 + WINDOW, "d2") is None


async def test_throttle_slot_is_free_after_the_window(store: Store) -> None:
    await store.acquire_throttle("reorder", "TENT-4P", WINDOW, T0, "d1")

    assert await store.acquire_throttle("reorder", "TENT-4P", WINDOW, T0 + WINDOW, "d2") is None
    assert await store.acquire_throttle("reorder", "TENT-4P", WINDOW, T0 + WINDOW, "d3") == T0 + WINDOW


async def test_throttle_slots_are_per_rule_and_key(store: Store) -> None:
    await store.acquire_throttle("reorder", "TENT-4P", WINDOW, T0, "d1")

    assert await store.acquire_throttle("reorder", "TENT-2P", WINDOW, T0, "d2") is None
    assert await store.acquire_throttle("to-slack", "TENT-4P", WINDOW, T0, "d2") is None


async def test_concurrent_acquires_by_different_deliveries_let_exactly_one_through(store: Store) -> None:
    for round_ in range(3):
        key = f"TENT-{round_}"
        results = await asyncio.gather(
            *(store.acquire_throttle("reorder", key, WINDOW, T0, f"d{n}") for n in range(20))
        )
        assert results.count(None) == 1
        assert all(result == T0 for result in results if result is not None)


async def test_throttle_keys_longer_than_500_characters_work(store: Store) -> None:
    long_key = "é" * 400 + "x" * 2000
    other_long_key = "é" * 400 + "x" * 1999 + "y"

    assert await store.acquire_throttle("reorder", long_key, WINDOW, T0, "d1") is None
    assert await store.acquire_throttle("reorder", long_key, WINDOW, T0, "d2") == T0
    assert await store.acquire_throttle("reorder", other_long_key, WINDOW, T0, "d2") is None
    assert await store.acquire_throttle("reorder", "ü" * 500, WINDOW, T0, "d3") is None  # exactly fits


async def test_throttle_keys_holding_nul_characters_work(store: Store) -> None:
    assert await store.acquire_throttle("reorder", "TENT\x004P", WINDOW, T0, "d1") is None
    assert await store.acquire_throttle("reorder", "TENT\x004P", WINDOW, T0, "d2") == T0
    assert await store.acquire_throttle("reorder", "TENT\ufffd4P", WINDOW, T0, "d2") is None  # another key


# --- retention ---------------------------------------------------------------------------------

BODY_RETENTION = timedelta(days=7)
DELIVERY_RETENTION = timedelta(days=30)


async def test_purge_drops_bodies_past_body_retention_only_of_finished_deliveries(store: Store) -> None:
    old, recent = T0 - timedelta(days=8), T0 - timedelta(days=6)
    await store.add_deliveries(
        [
            delivery("old-done", received_at=old),
            delivery("old-pending", received_at=old),
            delivery("recent-done", received_at=recent),
        ],
        DUE,
    )
    await finished(store, "old-done", DeliveryStatus.DONE)
    await finished(store, "recent-done", DeliveryStatus.DONE)

    assert await store.purge(T0, BODY_RETENTION, DELIVERY_RETENTION) == (1, 0)

    bodies = {
        d: (stored.body if (stored := await store.get(d)) else "gone")
        for d in ("old-done", "old-pending", "recent-done")
    }
    assert bodies == {"old-done": None, "old-pending": b'{"data": {}}', "recent-done": b'{"data": {}}'}
    assert await store.purge(T0, BODY_RETENTION, DELIVERY_RETENTION) == (0, 0)  # nothing left to drop


@pytest.mark.parametrize("status", FINISHED)
async def test_purge_deletes_finished_deliveries_past_retention_with_outcomes_and_ledger(
    store: Store, status: DeliveryStatus
) -> None:
    old = T0 - timedelta(days=31)
    await store.add_deliveries([delivery("old", received_at=old), delivery("young")], DUE)
    for delivery_id in ("old", "young"):
        await finish_run(
            store,
            delivery_id,
            DeliveryStatus.DONE,
            T0,
            None,
            None,
            outcomes=[("reorder", "fired", ""), ("to-slack", "fired", "")],
        )
        await save_action_run(store, delivery_id, action_run(status=ActionStatus.SUCCEEDED))
        await finished(store, delivery_id, status)

    assert await store.purge(T0, BODY_RETENTION, DELIVERY_RETENTION) == (1, 1)

    assert await store.get("old") is None
    assert await store.get("young") is not None
    assert await store.outcomes("old") == []
    assert await store.action_runs("old") == {}
    assert (await count(store, rule_outcomes), await count(store, action_runs)) == (2, 1)


@pytest.mark.parametrize("status", [DeliveryStatus.RECEIVED, DeliveryStatus.PROCESSING])
async def test_purge_keeps_pending_deliveries_however_old(store: Store, status: DeliveryStatus) -> None:
    ancient = T0 - timedelta(days=400)
    await store.add_deliveries([delivery("old", received_at=ancient)], ancient)
    await save_action_run(store, "old", action_run())
    if status is DeliveryStatus.PROCESSING:
        await claimed(store, "old", ancient, due_at=ancient)

    assert await store.purge(T0, BODY_RETENTION, DELIVERY_RETENTION) == (0, 0)

    stored = await store.get("old")
    assert stored is not None
    assert (stored.status, stored.body) == (status, b'{"data": {}}')
    assert set(await store.action_runs("old")) == {("reorder", 0)}


async def test_purge_drops_throttle_slots_older_than_delivery_retention(store: Store) -> None:
    await store.acquire_throttle("reorder", "old", WINDOW, T0 - timedelta(days=31), "d1")
    await store.acquire_throttle("reorder", "young", WINDOW, T0 - timedelta(days=29), "d1")

    await store.purge(T0, BODY_RETENTION, DELIVERY_RETENTION)

    async with store.engine.connect() as connection:
        keys = (await connection.execute(select(throttle_slots.c.key))).scalars().all()
    assert keys == ["young"]


async def test_foreign_keys_are_enforced(store: Store) -> None:
    # SQLite ignores them unless each connection turns them on: cascade depends on it.
    if store.engine.dialect.name == "sqlite":
        async with store.engine.connect() as connection:
            assert (await connection.execute(text("PRAGMA foreign_keys"))).scalar_one() == 1
    with pytest.raises(IntegrityError, match=r"(?i)foreign key"):
        await save_action_run(store, "never-stored", action_run())


# --- queue lag ---------------------------------------------------------------------------------


async def test_oldest_pending_received_at_is_none_without_pending_deliveries(store: Store) -> None:
    assert await store.oldest_pending_received_at() is None
    await store.add_deliveries([delivery("a")], DUE)
    await finished(store, "a", DeliveryStatus.DONE)

    assert await store.oldest_pending_received_at() is None


async def test_oldest_pending_received_at_is_the_oldest_received_or_processing(store: Store) -> None:
    await store.add_deliveries(
        [
            delivery("done", received_at=T0 - timedelta(hours=3)),
            delivery("processing", received_at=T0 - timedelta(hours=2)),
            delivery("received", received_at=T0 - timedelta(hours=1)),
        ],
        DUE,
    )
    await finished(store, "done", DeliveryStatus.DONE)
    await claimed(store, "processing", T0, due_at=DUE)

    oldest = await store.oldest_pending_received_at()

    assert oldest == T0 - timedelta(hours=2)
    assert oldest is not None
    assert oldest.tzinfo == UTC
