"""A worker's runs: claim a delivery, keep the claim, save progress, record where the run left it.

A claim is one conditional UPDATE, so two workers handed the same delivery never run
it at the same time; the `runs` it sets is the run's token, and every later write of
the run applies only under it (the claim is still the run's). The worker's writes
come in batches: `claim_many` and `finish_runs` serve every delivery a worker runs at
once (engine/pipeline/group_commit.py). The claim is kept alive by
engine/pipeline/claim_keeper.py through `extend_claims`.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Integer, and_, bindparam, delete, or_, select, tuple_, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from engine.store.connections import converter
from engine.store.ledger import LedgerQueries, read_ledgers
from engine.store.lost_connections import written_again_on_lost_connection
from engine.store.postgres_batches import FINISH_FIRST_RUNS, first_run_ends
from engine.store.records import ActionRun, ClaimedDelivery, NewDelivery, RunEnd, stored_delivery
from engine.store.tables import DeliveryStatus, action_runs, deliveries, rule_outcomes

# The worker's statements are built once: building one, and its cache key, cost more than
# running it does on a warm connection (bind values go in at execution).
_DATETIME = deliveries.c.updated_at.type

# Claim deliveries for one run each (`claim_many`).
_CLAIM = (
    update(deliveries)
    .where(
        and_(
            deliveries.c.delivery_id.in_(bindparam("claim_ids", expanding=True)),
            or_(
                deliveries.c.status == DeliveryStatus.RECEIVED.value,
                and_(
                    deliveries.c.status == DeliveryStatus.PROCESSING.value,
                    deliveries.c.due_at <= bindparam("claim_now", type_=_DATETIME),
                ),
            ),
        )
    )
    .values(
        status=DeliveryStatus.PROCESSING.value,
        updated_at=bindparam("claim_now", type_=_DATETIME),
        due_at=bindparam("claim_due_at", type_=_DATETIME),
        runs=deliveries.c.runs + 1,
        unfinished_runs=deliveries.c.unfinished_runs + 1,
    )
    .returning(*deliveries.c)
)

# A run's writes apply only while its claim is current: the delivery is still `processing`
# and no claim came after it (`runs` is the token the claim set). See engine/pipeline/claim_keeper.py.
OWNED = and_(
    deliveries.c.status == DeliveryStatus.PROCESSING.value,
    deliveries.c.runs == bindparam("token", type_=Integer),
)

# Where a run left its delivery (`finish_runs`), one parameter set per delivery.
_FINISH = (
    update(deliveries)
    .where(and_(deliveries.c.delivery_id == bindparam("end_id"), OWNED))
    .values(
        status=bindparam("end_status"),
        updated_at=bindparam("end_now", type_=_DATETIME),
        due_at=bindparam("end_due_at", type_=_DATETIME),
        error=bindparam("end_error"),
        unfinished_runs=0,
    )
)
_OWNED_IDS = select(deliveries.c.delivery_id, deliveries.c.runs, deliveries.c.status).where(
    deliveries.c.delivery_id.in_(bindparam("owned_ids", expanding=True))
)
# Keep claims alive (`extend_claims`): one statement for every claim of a heartbeat.
_EXTEND = (
    update(deliveries)
    .where(
        and_(
            deliveries.c.status == DeliveryStatus.PROCESSING.value,
            tuple_(deliveries.c.delivery_id, deliveries.c.runs).in_(bindparam("held", expanding=True)),
        )
    )
    .values(due_at=bindparam("extend_due_at", type_=_DATETIME))
    .returning(deliveries.c.delivery_id)
)
_DROP_OUTCOMES = delete(rule_outcomes).where(
    rule_outcomes.c.delivery_id.in_(bindparam("replaced_ids", expanding=True))
)
_INSERT_OUTCOMES = rule_outcomes.insert()


class RunQueries(LedgerQueries):
    def __init__(self, engine: AsyncEngine) -> None:
        super().__init__(engine)
        self._raise_event = self._insert(deliveries).on_conflict_do_nothing(index_elements=["delivery_id"])
        # The conversions of `FINISH_FIRST_RUNS`'s text arrays: NUL made safe, JSON as text.
        self._log_text = converter(rule_outcomes.c.reason.type, engine.dialect)
        self._params_json = converter(action_runs.c.params.type, engine.dialect)

    async def claim_many(
        self, delivery_ids: Sequence[str], now: datetime, due_at: datetime
    ) -> dict[str, ClaimedDelivery]:
        """Claim deliveries for one run each; those not returned are unknown, finished, or taken.

        A delivery can be claimed when `received`, or `processing` past its `due_at` (its
        last run died, or its retry wait is over). The claim is one conditional UPDATE, so
        two workers handed the same delivery never run it at the same time. The claim's
        `runs` is its token: the run's later writes apply only under it (`finish_runs`).
        It also counts the run as unfinished until it saves progress or ends. While the
        run lives its claim is kept alive (`extend_claims`, engine/pipeline/claim_keeper.py); if it dies,
        the sweeper hands its delivery out again after `due_at`. Ledgers are read only for
        runs after the first: a first run has none.
        """
        # The claim is one statement; the ledger of a claimed delivery only changes by its run.
        parameters = {"claim_ids": sorted(set(delivery_ids)), "claim_now": now, "claim_due_at": due_at}
        async with self._autocommit() as connection:
            claimed = [stored_delivery(row) for row in await connection.execute(_CLAIM, parameters)]
            again = [delivery.delivery_id for delivery in claimed if delivery.runs > 1]
            ledgers = await read_ledgers(connection, again) if again else {}
        return {d.delivery_id: ClaimedDelivery(d, ledgers.get(d.delivery_id, {})) for d in claimed}

    @written_again_on_lost_connection
    async def save_progress(
        self, delivery_id: str, runs: Sequence[ActionRun], now: datetime, due_at: datetime, *, token: int
    ) -> bool:
        """Record finished actions of a run and keep its claim (push `due_at` out), in one transaction.

        Saving progress also resets the count of unfinished runs: a run that moves the
        delivery forward is not a crash loop. False when the claim is no longer the run's
        (see `finish_runs`): only the actions that succeeded are recorded then.
        """
        async with self._begin() as connection:
            result = await connection.execute(
                update(deliveries)
                .where(and_(deliveries.c.delivery_id == delivery_id, OWNED))
                .values(updated_at=now, due_at=due_at, unfinished_runs=0),
                {"token": token},
            )
            owned = bool(result.rowcount)
            await self._save_action_runs(connection, [(delivery_id, run) for run in runs], owned=owned)
        return owned

    async def extend_claims(self, claims: Sequence[tuple[str, int]], due_at: datetime) -> set[str]:
        """Push out the `due_at` of claims given as (delivery id, token); the ids still held.

        A claim whose token is no longer current (another run claimed the delivery) or whose
        delivery is no longer `processing` is left alone, and its id is not returned.
        """
        if not claims:
            return set()
        held = sorted(set(claims))
        async with self._autocommit() as connection:
            result = await connection.execute(_EXTEND, {"held": held, "extend_due_at": due_at})
            return {row[0] for row in result}

    async def note_crash(self, delivery_id: str, token: int, error: str) -> None:
        """Keep why a run of a delivery crashed as its error, while its claim is still the run's.

        The delivery stays `processing`: it is picked up again when the claim expires, and
        the error is quoted if it ends failed for crashing too often.
        """
        async with self._begin() as connection:
            await connection.execute(
                update(deliveries)
                .where(and_(deliveries.c.delivery_id == delivery_id, OWNED))
                .values(error=error),
                {"token": token},
            )

    @written_again_on_lost_connection
    async def finish_runs(self, ends: Sequence[RunEnd]) -> set[str]:
        """Record where runs left their deliveries, all in one transaction; the ids recorded.

        A run records its end only while its claim is current: its delivery still
        `processing` under the token of its claim. A run whose claim was taken over (its
        worker stalled past the claim, and another run claimed the delivery) records
        only the actions it saw succeed, never a status, an error, outcomes or failures
        over the new run's; its id is left out of the result. Events a failed run raises
        (`RunEnd.raised`) are stored with its end, once: their ids are derived from it.

        The deliveries' rows are updated first, which locks them: two runs finishing the
        same delivery at once then go one after the other.
        """
        if not ends:
            return set()
        if (
            self.engine.dialect.name == "postgresql"
            and all(end.first_run for end in ends)
            and not any(end.raised for end in ends)
        ):
            return await self._finish_first_runs_unnest(ends)
        ends = sorted(ends, key=lambda end: end.delivery_id)  # one lock order for every writer
        async with self._begin() as connection:
            owned = await self._end_owned(connection, ends)
            mine = [end for end in ends if end.delivery_id in owned]
            await self._save_action_runs(connection, [(e.delivery_id, run) for e in mine for run in e.runs])
            await self._save_action_runs(
                connection,
                [(e.delivery_id, run) for e in ends if e not in mine for run in e.runs],
                owned=False,
            )
            replaced = [end.delivery_id for end in mine if end.outcomes is not None and not end.first_run]
            if replaced:
                await connection.execute(_DROP_OUTCOMES, {"replaced_ids": replaced})
            outcomes = [
                {
                    "delivery_id": e.delivery_id,
                    "rule_id": rule,
                    "status": status,
                    "reason": why,
                    "recorded_at": e.now,
                }
                for e in mine
                for rule, status, why in e.outcomes or ()
            ]
            if outcomes:
                await connection.execute(_INSERT_OUTCOMES, outcomes)
            raised = [(end.raised, end.now) for end in mine if end.raised is not None]
            for event, now in raised:
                await connection.execute(self._raise_event, _raised_row(event, now))
        return owned

    async def _end_owned(self, connection: AsyncConnection, ends: Sequence[RunEnd]) -> set[str]:
        """Update the rows of the runs that still own their claims; their ids."""
        result = await connection.execute(
            _FINISH,
            [
                {
                    "end_id": end.delivery_id,
                    "token": end.token,
                    "end_status": end.status.value,
                    "end_now": end.now,
                    "end_due_at": end.due_at,
                    "end_error": end.error,
                }
                for end in ends
            ],
        )
        ids = [end.delivery_id for end in ends]
        if self.engine.dialect.supports_sane_multi_rowcount and result.rowcount == len(ids):
            return set(ids)  # the usual case on SQLite: every run still owned its claim
        # The rows this transaction updated are locked by it, and carry its runs' tokens and status.
        # (A run's own end recorded twice matches too: writing the same end again changes nothing.)
        tokens = {end.delivery_id: end.token for end in ends}
        statuses = {end.delivery_id: end.status.value for end in ends}
        rows = await connection.execute(_OWNED_IDS, {"owned_ids": ids})
        return {
            row.delivery_id
            for row in rows
            if row.runs == tokens[row.delivery_id] and row.status == statuses[row.delivery_id]
        }

    async def _finish_first_runs_unnest(self, ends: Sequence[RunEnd]) -> set[str]:
        """PostgreSQL, first runs only: `finish_runs` as one statement (`FINISH_FIRST_RUNS`).

        No other run can be finishing these deliveries (a delivery has one first run), so
        the order in which the statement locks their rows does not matter.
        """
        parameters = first_run_ends(ends, self._log_text, self._params_json)
        async with self._autocommit() as connection:
            result = await connection.execute(FINISH_FIRST_RUNS, parameters)
            return {row[0] for row in result}


def _raised_row(event: NewDelivery, now: datetime) -> dict[str, Any]:
    """The row of an event the engine raises: received, due at once (the sweeper's if its job is lost)."""
    return {
        "delivery_id": event.delivery_id,
        "event": event.event,
        "status": DeliveryStatus.RECEIVED.value,
        "headers": event.headers,
        "body": event.body,
        "received_at": event.received_at,
        "updated_at": event.received_at,
        "due_at": now,
        "runs": 0,
    }
