"""The action ledger: per (delivery, rule, action index), what an action's runs came to.

An action recorded `succeeded` is never run again for that delivery. Runs write
the ledger (engine/store/runs.py); the delivery log reads it (engine/store/delivery_log.py).
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import bindparam, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from engine.store.connections import StoreConnections
from engine.store.records import ActionRun, Ledger, action_run
from engine.store.tables import ActionStatus, action_runs

_LEDGERS = select(action_runs).where(action_runs.c.delivery_id.in_(bindparam("ledger_ids", expanding=True)))

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


class LedgerQueries(StoreConnections):
    def __init__(self, engine: AsyncEngine) -> None:
        super().__init__(engine)
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


async def read_ledgers(connection: AsyncConnection, delivery_ids: Sequence[str]) -> dict[str, Ledger]:
    """The ledgers of some deliveries, by delivery id."""
    ledgers: dict[str, Ledger] = {}
    rows = await connection.execute(_LEDGERS, {"ledger_ids": list(delivery_ids)})
    for row in rows:
        ledgers.setdefault(row.delivery_id, {})[(row.rule_id, row.action_index)] = action_run(row)
    return ledgers
