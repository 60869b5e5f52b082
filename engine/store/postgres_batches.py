"""PostgreSQL only: a batch as one statement over arrays, for the two hottest writes.

One statement text for every batch size, so asyncpg prepares it once; an INSERT of
N rows of VALUES would be a new statement, and a new prepare, for each N.

- `INSERT_DELIVERIES`: the intake's batch of new deliveries (engine/store/intake.py).
- `FINISH_FIRST_RUNS`: the ends of runs that are all first runs (engine/store/runs.py):
  the delivery updates, the ledger upsert and the outcome inserts in one round trip
  instead of five (BEGIN, three statements, COMMIT). A first run replaces no outcomes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import Integer, LargeBinary, String, Text, bindparam, text
from sqlalchemy.dialects import postgresql

from engine.store.records import RunEnd
from engine.store.tables import UTCDateTime

# The rows come out of the arrays in id order: see `Store.add_deliveries` on lock order.
INSERT_DELIVERIES = text(
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

FINISH_FIRST_RUNS = text(
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


def first_run_ends(
    ends: Sequence[RunEnd], text_of: Callable[[Any], Any], json_of: Callable[[Any], Any]
) -> dict[str, list[Any]]:
    """The arrays `FINISH_FIRST_RUNS` takes; `text_of` and `json_of` convert its text columns.

    `FINISH_FIRST_RUNS` binds text arrays: the conversions of the columns' own types
    (NUL made safe in log text, JSON written out as text) are applied here.
    """
    runs = [(end.delivery_id, run) for end in ends for run in end.runs]
    outcomes = [(end, outcome) for end in ends for outcome in end.outcomes or ()]
    return {
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
