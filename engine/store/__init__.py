"""The store: the few queries the receiver, the worker and the CLI need.

The store is the source of truth. A delivery is written before Stockaj gets
its 2xx; the queue only carries delivery ids and can be rebuilt from here
(`due_deliveries`). Every write is a short transaction on SQLAlchemy Core, the
same code on SQLite and PostgreSQL, but for the hottest one: the intake's batch
insert has a statement of its own on each (an INSERT over arrays on PostgreSQL,
a multi-row INSERT on SQLite). The worker's writes come in batches too:
`claim_many` and `finish_runs` serve every delivery a worker runs at once.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    Integer,
    LargeBinary,
    String,
    Text,
    and_,
    bindparam,
    case,
    delete,
    func,
    literal,
    or_,
    select,
    text,
    tuple_,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.types import TypeEngine

from engine.store.connection_turns import ConnectionTurns
from engine.store.lost_connections import written_again_on_lost_connection
from engine.store.sqlite_writer import SQLiteIntakeWriter
from engine.store.tables import (
    PENDING_STATUSES,
    THROTTLE_KEY_LENGTH,
    ActionStatus,
    DeliveryStatus,
    UTCDateTime,
    action_runs,
    deliveries,
    rule_outcomes,
    throttle_slots,
)

# The rows come out of the arrays in id order: see `add_deliveries` on lock order.
_INSERT_UNNEST = text(
    """
    INSERT INTO deliveries (delivery_id, event, status, headers, body, received_at, updated_at, due_at, runs)
    SELECT id, event, :status, headers::json, body, received_at, received_at, :due_at, 0
    FROM unnest(:ids, :events, :headers, :bodies, :received) AS batch(id, event, headers, body, received_at)
    ORDER BY id
    ON CONFLICT (delivery_id) DO NOTHING
    RETURNING delivery_id
    """
).bindparams(
    bindparam("ids", type_=postgresql.ARRAY(String)),
    bindparam("events", type_=postgresql.ARRAY(String)),
    bindparam("headers", type_=postgresql.ARRAY(Text)),
    bindparam("bodies", type_=postgresql.ARRAY(LargeBinary)),
    bindparam("received", type_=postgresql.ARRAY(UTCDateTime())),
    bindparam("status", type_=String),
    bindparam("due_at", type_=UTCDateTime()),
)


# The worker's statements are built once: building one, and its cache key, cost more than
# running it does on a warm connection (bind values go in at execution).
_DATETIME = deliveries.c.updated_at.type

# Claim deliveries for one run each (`Store.claim_many`).
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
_OWNED = and_(
    deliveries.c.status == DeliveryStatus.PROCESSING.value,
    deliveries.c.runs == bindparam("token", type_=Integer),
)

# Where a run left its delivery (`Store.finish_runs`), one parameter set per delivery.
_FINISH = (
    update(deliveries)
    .where(and_(deliveries.c.delivery_id == bindparam("end_id"), _OWNED))
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
# Keep claims alive (`Store.extend_claims`): one statement for every claim of a heartbeat.
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
_LEDGERS = select(action_runs).where(action_runs.c.delivery_id.in_(bindparam("ledger_ids", expanding=True)))

# PostgreSQL, runs that are all first runs (`Store.finish_runs`): the delivery updates, the
# ledger upsert and the outcome inserts as one statement over arrays, in one round trip
# instead of five (BEGIN, three statements, COMMIT). A first run replaces no outcomes.
_FINISH_FIRST_RUNS_UNNEST = text(
    """
    WITH ended AS (
        UPDATE deliveries AS d
        SET status = e.status, updated_at = e.now, due_at = e.due_at, error = e.error, unfinished_runs = 0
        FROM unnest(:end_ids, :end_tokens, :end_statuses, :end_nows, :end_due_ats, :end_errors)
            AS e(delivery_id, token, status, now, due_at, error)
        WHERE d.delivery_id = e.delivery_id AND d.status = 'processing' AND d.runs = e.token
        RETURNING d.delivery_id
    ), ledger AS (
        INSERT INTO action_runs (delivery_id, rule_id, action_index, type, status, params, attempts,
                                 last_error, response_status, next_attempt_at, updated_at)
        SELECT delivery_id, rule_id, action_index, type, status, params::json, attempts,
               last_error, response_status, next_attempt_at, updated_at
        FROM unnest(:run_ids, :run_rules, :run_indexes, :run_types, :run_statuses, :run_params,
                    :run_attempts, :run_errors, :run_responses, :run_next_attempts, :run_updated)
            AS r(delivery_id, rule_id, action_index, type, status, params, attempts,
                 last_error, response_status, next_attempt_at, updated_at)
        WHERE r.delivery_id IN (SELECT delivery_id FROM ended) OR r.status = 'succeeded'
        ON CONFLICT (delivery_id, rule_id, action_index) DO UPDATE SET
            type = excluded.type, status = excluded.status, params = excluded.params,
            attempts = excluded.attempts, last_error = excluded.last_error,
            response_status = excluded.response_status,
            next_attempt_at = excluded.next_attempt_at, updated_at = excluded.updated_at
        WHERE action_runs.delivery_id IN (SELECT delivery_id FROM ended)
            OR action_runs.status <> 'succeeded'
    ), outcomes AS (
        INSERT INTO rule_outcomes (delivery_id, rule_id, status, reason, recorded_at)
        SELECT delivery_id, rule_id, status, reason, recorded_at
        FROM unnest(:outcome_ids, :outcome_rules, :outcome_statuses, :outcome_reasons, :outcome_times)
            AS o(delivery_id, rule_id, status, reason, recorded_at)
        WHERE o.delivery_id IN (SELECT delivery_id FROM ended)
    )
    SELECT delivery_id FROM ended
    """
).bindparams(
    *(
        bindparam(name, type_=postgresql.ARRAY(item_type))
        for item_type, names in (
            (Text, "end_ids end_statuses end_errors run_ids run_rules run_types run_statuses run_params"),
            (Text, "run_errors outcome_ids outcome_rules outcome_statuses outcome_reasons"),
            (Integer, "end_tokens run_indexes run_attempts run_responses"),
            (UTCDateTime(), "end_nows end_due_ats run_next_attempts run_updated outcome_times"),
        )
        for name in names.split()
    )
)


@dataclass(frozen=True, slots=True)
class NewDelivery:
    """A verified delivery, as the receiver hands it to the store."""

    delivery_id: str
    event: str
    headers: dict[str, str]
    body: bytes
    received_at: datetime


@dataclass(frozen=True, slots=True)
class StoredDelivery:
    delivery_id: str
    event: str
    status: DeliveryStatus
    headers: dict[str, str]
    body: bytes | None
    received_at: datetime
    updated_at: datetime
    due_at: datetime | None
    runs: int
    error: str | None
    unfinished_runs: int = 0


@dataclass(frozen=True, slots=True)
class ActionRun:
    """One row of the action ledger."""

    rule_id: str
    action_index: int
    type: str
    status: ActionStatus
    params: Any
    attempts: int
    last_error: str | None
    response_status: int | None
    next_attempt_at: datetime | None
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class RuleOutcomeRow:
    rule_id: str
    status: str
    reason: str
    recorded_at: datetime


Ledger = dict[tuple[str, int], ActionRun]


@dataclass(frozen=True, slots=True)
class RunEnd:
    """Where a run left a delivery, as `finish_runs` records it.

    `due_at` is when to pick the delivery up again (a retry), `outcomes` replace its rule
    outcomes as (rule id, status, reason) when given (`first_run`: it has none yet), `runs`
    are ledger rows not saved yet. `token` is the run's claim (the `runs` its claim set);
    `raised` an event the end raises (a failed delivery's `stockaj_rules.delivery_failed`),
    stored with it and due at once.
    """

    delivery_id: str
    status: DeliveryStatus
    now: datetime
    due_at: datetime | None
    error: str | None
    outcomes: Sequence[tuple[str, str, str]] | None = None
    runs: Sequence[ActionRun] = ()
    first_run: bool = False
    token: int = field(kw_only=True)
    raised: NewDelivery | None = field(default=None, kw_only=True)


class Reopened(StrEnum):
    """What `Store.reopen` did."""

    REOPENED = "reopened"
    UNKNOWN = "unknown"  # no such delivery
    RUNNING = "running"  # a run holds it now: left alone


@dataclass(frozen=True, slots=True)
class Claim:
    """A delivery claimed for one run, as the claim left it, with its action ledger."""

    delivery: StoredDelivery
    ledger: Ledger


class Store:
    """Queries over one database."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        sqlite_store = engine.dialect.name == "sqlite"
        self._insert = sqlite.insert if sqlite_store else postgresql.insert
        upsert = self._insert(action_runs)
        self._upsert_action_runs = upsert.on_conflict_do_update(
            index_elements=["delivery_id", "rule_id", "action_index"],
            set_={name: upsert.excluded[name] for name in _ACTION_RUN_VALUES},
        )
        self._record_successes = upsert.on_conflict_do_update(
            index_elements=["delivery_id", "rule_id", "action_index"],
            set_={name: upsert.excluded[name] for name in _ACTION_RUN_VALUES},
            where=action_runs.c.status != ActionStatus.SUCCEEDED.value,
        )
        self._raise_event = self._insert(deliveries).on_conflict_do_nothing(index_elements=["delivery_id"])
        # SQLite's one connection goes to the intake before the workers; PostgreSQL has a pool.
        self._turns = ConnectionTurns() if sqlite_store else None
        # SQLite: the intake writes on its own connection, from the loop (engine/store/sqlite_writer.py).
        database = engine.url.database
        self._intake_writer = (
            SQLiteIntakeWriter(database)
            if sqlite_store and database and database != ":memory:" and not database.startswith("file:")
            else None
        )
        # The conversions of `_FINISH_FIRST_RUNS_UNNEST`'s text arrays: NUL made safe, JSON as text.
        self._log_text = _converter(rule_outcomes.c.reason.type, engine.dialect)
        self._params_json = _converter(action_runs.c.params.type, engine.dialect)
        # Each column's own conversion (UTC datetimes, JSON, bytes), for the intake's raw insert.
        self._delivery_converters = {
            name: _converter(deliveries.c[name].type, engine.dialect)
            for name in ("headers", "body", "received_at", "due_at")
        }

    @asynccontextmanager
    async def _begin(self, urgent: bool = False) -> AsyncIterator[AsyncConnection]:
        """A transaction; `urgent` for those a webhook answer waits for."""
        async with self._turn(urgent), self.engine.begin() as connection:
            yield connection

    @asynccontextmanager
    async def _connect(self, urgent: bool = False) -> AsyncIterator[AsyncConnection]:
        async with self._turn(urgent), self.engine.connect() as connection:
            yield connection

    @asynccontextmanager
    async def _autocommit(self, urgent: bool = False) -> AsyncIterator[AsyncConnection]:
        """For statements that are atomic by themselves: on PostgreSQL, no BEGIN and COMMIT
        round trips around them (on SQLite they cost no round trip: a plain transaction)."""
        if self._turns is not None:
            async with self._begin(urgent) as connection:
                yield connection
            return
        async with self.engine.connect() as connection:
            await connection.execution_options(isolation_level="AUTOCOMMIT")
            yield connection

    def _turn(self, urgent: bool) -> AbstractAsyncContextManager[None]:
        return self._turns.turn(urgent) if self._turns is not None else nullcontext()

    async def close(self) -> None:
        """Close every connection this store holds; it opens new ones if it is used again."""
        if self._intake_writer is not None:
            self._intake_writer.close()
        await self.engine.dispose()

    async def ping(self) -> None:
        async with self._connect(urgent=True) as connection:
            await connection.execute(select(1))

    async def add_deliveries(self, batch: Sequence[NewDelivery], due_at: datetime) -> set[str]:
        """Store a batch in one transaction; returns the ids that were new (the rest are duplicates).

        A batch holding an id twice stores its first copy. Rows go in in id order, so that
        concurrent batches sharing ids (redeliveries landing on two receivers) take their row
        locks in the same order and cannot deadlock on PostgreSQL.
        """
        unique: dict[str, NewDelivery] = {}
        for item in batch:
            unique.setdefault(item.delivery_id, item)
        if not unique:
            return set()
        items = [item for _, item in sorted(unique.items())]
        if self.engine.dialect.name == "postgresql":
            return await self._add_deliveries_unnest(items, due_at)
        return await self._add_deliveries_values(items, due_at)

    async def _add_deliveries_values(self, items: Sequence[NewDelivery], due_at: datetime) -> set[str]:
        """SQLite: the batch as one multi-row INSERT, its parameters converted by the columns' own types.

        The same rows SQLAlchemy's executemany would write, without its per-row work (the
        receiver's cost per delivery on SQLite was mostly that).
        """
        convert = self._delivery_converters
        due = convert["due_at"](due_at)
        status = DeliveryStatus.RECEIVED.value
        parameters: list[Any] = []
        for item in items:
            received = convert["received_at"](item.received_at)
            parameters += [
                item.delivery_id,
                item.event,
                status,
                convert["headers"](item.headers),
                convert["body"](item.body),
                received,
                received,
                due,
            ]
        rows = ", ".join(["(?, ?, ?, ?, ?, ?, ?, ?, 0)"] * len(items))
        statement = (
            "INSERT INTO deliveries (delivery_id, event, status, headers, body, received_at, updated_at, "
            f"due_at, runs) VALUES {rows} ON CONFLICT (delivery_id) DO NOTHING RETURNING delivery_id"
        )
        if self._intake_writer is not None:
            async with self._turn(urgent=True):
                return set(await self._intake_writer.insert_returning(statement, parameters))
        async with self._begin(urgent=True) as connection:
            result = await connection.exec_driver_sql(statement, tuple(parameters))
            return {row[0] for row in result}

    async def _add_deliveries_unnest(self, items: Sequence[NewDelivery], due_at: datetime) -> set[str]:
        """PostgreSQL: the batch as one INSERT over arrays, whatever its size.

        One statement text for every batch size, so asyncpg prepares it once; an INSERT of
        N rows of VALUES would be a new statement, and a new prepare, for each N. It costs
        one statement per batch instead of per-row parameter processing.
        """
        async with self._autocommit(urgent=True) as connection:
            result = await connection.execute(
                _INSERT_UNNEST,
                {
                    "ids": [item.delivery_id for item in items],
                    "events": [item.event for item in items],
                    "headers": [json.dumps(item.headers) for item in items],
                    "bodies": [item.body for item in items],
                    "received": [item.received_at for item in items],
                    "status": DeliveryStatus.RECEIVED.value,
                    "due_at": due_at,
                },
            )
            return {row.delivery_id for row in result}

    async def get(self, delivery_id: str) -> StoredDelivery | None:
        async with self._connect() as connection:
            row = (
                await connection.execute(select(deliveries).where(deliveries.c.delivery_id == delivery_id))
            ).first()
        return _delivery(row) if row is not None else None

    async def recent(self, status: DeliveryStatus | None = None, limit: int = 50) -> list[StoredDelivery]:
        query = select(deliveries).order_by(deliveries.c.received_at.desc()).limit(limit)
        if status is not None:
            query = query.where(deliveries.c.status == status.value)
        async with self._connect() as connection:
            return [_delivery(row) for row in await connection.execute(query)]

    async def claim(self, delivery_id: str, now: datetime, due_at: datetime) -> Claim | None:
        """Claim one delivery for a run: see `claim_many`."""
        return (await self.claim_many([delivery_id], now, due_at)).get(delivery_id)

    async def claim_many(
        self, delivery_ids: Sequence[str], now: datetime, due_at: datetime
    ) -> dict[str, Claim]:
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
            claimed = [_delivery(row) for row in await connection.execute(_CLAIM, parameters)]
            again = [delivery.delivery_id for delivery in claimed if delivery.runs > 1]
            ledgers = await _ledgers(connection, again) if again else {}
        return {d.delivery_id: Claim(d, ledgers.get(d.delivery_id, {})) for d in claimed}

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
                .where(and_(deliveries.c.delivery_id == delivery_id, _OWNED))
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
                .where(and_(deliveries.c.delivery_id == delivery_id, _OWNED))
                .values(error=error),
                {"token": token},
            )

    async def finish_run(
        self,
        delivery_id: str,
        status: DeliveryStatus,
        now: datetime,
        due_at: datetime | None,
        error: str | None,
        *,
        outcomes: Sequence[tuple[str, str, str]] | None = None,
        runs: Sequence[ActionRun] = (),
        first_run: bool = False,
        token: int | None = None,
    ) -> bool:
        """Record where a run left one delivery: see `RunEnd` and `finish_runs`.

        `token` None stands for the current claim, whatever it is: for tools and tests that
        set a delivery's state; a worker's run always gives the token of its own claim.
        """
        if token is None:
            stored = await self.get(delivery_id)
            if stored is None:
                return False
            token = stored.runs
            if stored.status is not DeliveryStatus.PROCESSING:
                await self._mark_processing(delivery_id, token)
        end = RunEnd(delivery_id, status, now, due_at, error, outcomes, runs, first_run, token=token)
        return delivery_id in await self.finish_runs([end])

    async def _mark_processing(self, delivery_id: str, token: int) -> None:
        async with self._begin() as connection:
            await connection.execute(
                update(deliveries)
                .where(and_(deliveries.c.delivery_id == delivery_id, deliveries.c.runs == token))
                .values(status=DeliveryStatus.PROCESSING.value)
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
        """PostgreSQL, first runs only: `finish_runs` as one statement (`_FINISH_FIRST_RUNS_UNNEST`).

        No other run can be finishing these deliveries (a delivery has one first run), so
        the order in which the statement locks their rows does not matter.
        """
        text_of, json_of = self._log_text, self._params_json
        runs = [(end.delivery_id, run) for end in ends for run in end.runs]
        outcomes = [(end, outcome) for end in ends for outcome in end.outcomes or ()]
        parameters = {
            "end_ids": [end.delivery_id for end in ends],
            "end_tokens": [end.token for end in ends],
            "end_statuses": [end.status.value for end in ends],
            "end_nows": [end.now for end in ends],
            "end_due_ats": [end.due_at for end in ends],
            "end_errors": [text_of(end.error) for end in ends],
            "run_ids": [delivery_id for delivery_id, _ in runs],
            "run_rules": [run.rule_id for _, run in runs],
            "run_indexes": [run.action_index for _, run in runs],
            "run_types": [run.type for _, run in runs],
            "run_statuses": [run.status.value for _, run in runs],
            "run_params": [json_of(run.params) for _, run in runs],
            "run_attempts": [run.attempts for _, run in runs],
            "run_errors": [text_of(run.last_error) for _, run in runs],
            "run_responses": [run.response_status for _, run in runs],
            "run_next_attempts": [run.next_attempt_at for _, run in runs],
            "run_updated": [run.updated_at for _, run in runs],
            "outcome_ids": [end.delivery_id for end, _ in outcomes],
            "outcome_rules": [rule_id for _, (rule_id, _, _) in outcomes],
            "outcome_statuses": [status for _, (_, status, _) in outcomes],
            "outcome_reasons": [text_of(reason) for _, (_, _, reason) in outcomes],
            "outcome_times": [end.now for end, _ in outcomes],
        }
        async with self._autocommit() as connection:
            result = await connection.execute(_FINISH_FIRST_RUNS_UNNEST, parameters)
            return {row[0] for row in result}

    async def reopen(self, delivery_id: str, now: datetime, due_at: datetime | None = None) -> Reopened:
        """Make a stored delivery pending again (`redeliver`), due at `due_at` (default: now).

        Its actions that did not succeed get a fresh start: they run at the next run, with
        their attempts counted from one again. Succeeded ones stay in the ledger, so they are
        not repeated (`forget_action_runs` is for that). A delivery a run holds right now
        (claimed, not finished, its claim not expired) is left alone: `Reopened.RUNNING`.
        """
        running = and_(
            deliveries.c.status == DeliveryStatus.PROCESSING.value,
            deliveries.c.unfinished_runs > 0,
            deliveries.c.due_at > now,
        )
        async with self._begin() as connection:
            result = await connection.execute(
                update(deliveries)
                .where(and_(deliveries.c.delivery_id == delivery_id, ~running))
                .values(
                    status=DeliveryStatus.RECEIVED.value,
                    updated_at=now,
                    due_at=due_at or now,
                    error=None,
                    unfinished_runs=0,
                )
            )
            if not result.rowcount:
                found = await connection.execute(
                    select(deliveries.c.delivery_id).where(deliveries.c.delivery_id == delivery_id)
                )
                return Reopened.RUNNING if found.first() is not None else Reopened.UNKNOWN
            await connection.execute(
                update(action_runs)
                .where(
                    and_(
                        action_runs.c.delivery_id == delivery_id,
                        action_runs.c.status != ActionStatus.SUCCEEDED.value,
                    )
                )
                .values(status=ActionStatus.PENDING.value, attempts=0, next_attempt_at=None, updated_at=now)
            )
        return Reopened.REOPENED

    async def due_deliveries(self, now: datetime, limit: int = 500) -> list[str]:
        """Pending deliveries whose job may be lost: enqueue them again (it is idempotent)."""
        query = (
            select(deliveries.c.delivery_id)
            .where(
                and_(
                    deliveries.c.status.in_([status.value for status in PENDING_STATUSES]),
                    deliveries.c.due_at <= now,
                )
            )
            .order_by(deliveries.c.due_at, deliveries.c.delivery_id)
            .limit(limit)
        )
        async with self._connect() as connection:
            return list((await connection.execute(query)).scalars())

    async def oldest_pending_received_at(self) -> datetime | None:
        """When the oldest delivery still waiting was received (queue lag)."""
        query = select(func.min(deliveries.c.received_at)).where(
            deliveries.c.status.in_([status.value for status in PENDING_STATUSES])
        )
        async with self._connect() as connection:
            oldest: datetime | None = (await connection.execute(query)).scalar()
            return oldest

    async def outcomes(self, delivery_id: str) -> list[RuleOutcomeRow]:
        query = (
            select(rule_outcomes)
            .where(rule_outcomes.c.delivery_id == delivery_id)
            .order_by(rule_outcomes.c.rule_id)
        )
        async with self._connect() as connection:
            return [
                RuleOutcomeRow(row.rule_id, row.status, row.reason, row.recorded_at)
                for row in await connection.execute(query)
            ]

    async def action_runs(self, delivery_id: str) -> Ledger:
        """The ledger of a delivery, by (rule id, action index)."""
        async with self._connect() as connection:
            return (await _ledgers(connection, [delivery_id])).get(delivery_id, {})

    async def save_action_run(self, delivery_id: str, run: ActionRun) -> None:
        async with self._begin() as connection:
            await self._save_action_runs(connection, [(delivery_id, run)])

    async def _save_action_runs(
        self, connection: AsyncConnection, runs: Sequence[tuple[str, ActionRun]], *, owned: bool = True
    ) -> None:
        """Insert or update ledger rows, given as (delivery id, run).

        Not `owned` (a run whose claim was taken over): only successes are recorded, and
        they never replace a success the new run recorded.
        """
        if not owned:
            runs = [(delivery_id, run) for delivery_id, run in runs if run.status is ActionStatus.SUCCEEDED]
        if not runs:
            return
        rows = [
            {
                "delivery_id": delivery_id,
                "rule_id": run.rule_id,
                "action_index": run.action_index,
                "type": run.type,
                "status": run.status.value,
                "params": run.params,
                "attempts": run.attempts,
                "last_error": run.last_error,
                "response_status": run.response_status,
                "next_attempt_at": run.next_attempt_at,
                "updated_at": run.updated_at,
            }
            for delivery_id, run in runs
        ]
        await connection.execute(self._upsert_action_runs if owned else self._record_successes, rows)

    async def forget_action_runs(self, delivery_id: str) -> None:
        """Drop a delivery's ledger (`redeliver --force` runs every action again)."""
        async with self._begin() as connection:
            await connection.execute(delete(action_runs).where(action_runs.c.delivery_id == delivery_id))

    async def acquire_throttle(
        self, rule_id: str, key: str, window: timedelta, now: datetime, delivery_id: str
    ) -> datetime | None:
        """Take the (rule, key) slot atomically; None when taken, else when it was last taken.

        The slot is free when it was last taken `window` ago or more, or by this
        same delivery (a delivery processed again keeps its slot). Processing a delivery
        again within its window keeps the time it fired: the window is not extended.
        """
        key = _slot_key(key)
        fired = throttle_slots.c.fired_at
        moment = literal(now, fired.type)
        window_over = fired <= now - window
        statement = (
            self._insert(throttle_slots)
            .values(rule_id=rule_id, key=key, delivery_id=delivery_id, fired_at=now)
            .on_conflict_do_update(
                index_elements=["rule_id", "key"],
                set_={"delivery_id": delivery_id, "fired_at": case((window_over, moment), else_=fired)},
                where=or_(window_over, throttle_slots.c.delivery_id == delivery_id),
            )
            .returning(throttle_slots.c.rule_id)
        )
        async with self._begin() as connection:
            taken = (await connection.execute(statement)).first()
            if taken is not None:
                return None
            last = await connection.execute(
                select(throttle_slots.c.fired_at).where(
                    and_(throttle_slots.c.rule_id == rule_id, throttle_slots.c.key == key)
                )
            )
            fired_at: datetime | None = last.scalar()
            return fired_at

    async def purge(
        self, now: datetime, body_retention: timedelta, delivery_retention: timedelta
    ) -> tuple[int, int]:
        """Drop bodies older than `body_retention` and deliveries older than `delivery_retention`."""
        finished = [DeliveryStatus.DONE.value, DeliveryStatus.FAILED.value, DeliveryStatus.NO_MATCH.value]
        async with self._begin() as connection:
            bodies = await connection.execute(
                update(deliveries)
                .where(
                    and_(
                        deliveries.c.received_at < now - body_retention,
                        deliveries.c.body.is_not(None),
                        deliveries.c.status.in_(finished),
                    )
                )
                .values(body=None)
            )
            rows = await connection.execute(
                delete(deliveries).where(
                    and_(
                        deliveries.c.received_at < now - delivery_retention, deliveries.c.status.in_(finished)
                    )
                )
            )
            await connection.execute(
                delete(throttle_slots).where(throttle_slots.c.fired_at < now - delivery_retention)
            )
        return bodies.rowcount, rows.rowcount


_ACTION_RUN_VALUES = (
    "type",
    "status",
    "params",
    "attempts",
    "last_error",
    "response_status",
    "next_attempt_at",
    "updated_at",
)


async def _ledgers(connection: AsyncConnection, delivery_ids: Sequence[str]) -> dict[str, Ledger]:
    """The ledgers of some deliveries, by delivery id."""
    ledgers: dict[str, Ledger] = {}
    rows = await connection.execute(_LEDGERS, {"ledger_ids": list(delivery_ids)})
    for row in rows:
        ledgers.setdefault(row.delivery_id, {})[(row.rule_id, row.action_index)] = _action_run(row)
    return ledgers


def _converter(column_type: TypeEngine[Any], dialect: Dialect) -> Callable[[Any], Any]:
    """What SQLAlchemy does to a value bound to a column of this type, as one function."""
    process = column_type.dialect_impl(dialect).bind_processor(dialect)
    return process if process is not None else (lambda value: value)


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


def _slot_key(key: str) -> str:
    """Long keys, and keys holding NUL (PostgreSQL refuses it in text), are stored by their hash."""
    if len(key) <= THROTTLE_KEY_LENGTH and "\x00" not in key:
        return key
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


def _delivery(row: Any) -> StoredDelivery:
    return StoredDelivery(
        delivery_id=row.delivery_id,
        event=row.event,
        status=DeliveryStatus(row.status),
        headers=dict(row.headers),
        body=row.body,
        received_at=row.received_at,
        updated_at=row.updated_at,
        due_at=row.due_at,
        runs=row.runs,
        error=row.error,
        unfinished_runs=row.unfinished_runs,
    )


def _action_run(row: Any) -> ActionRun:
    return ActionRun(
        rule_id=row.rule_id,
        action_index=row.action_index,
        type=row.type,
        status=ActionStatus(row.status),
        params=row.params,
        attempts=row.attempts,
        last_error=row.last_error,
        response_status=row.response_status,
        next_attempt_at=row.next_attempt_at,
        updated_at=row.updated_at,
    )
