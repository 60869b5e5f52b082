"""The `sql_upsert` action: insert or update one row in an external database.

`INSERT … ON CONFLICT (key columns) DO UPDATE SET values`, built with SQLAlchemy
Core on lightweight `table()`/`column()` clauses, so nothing is reflected and the
same code serves SQLite and PostgreSQL. Table and column names are checked as
plain SQL identifiers when the rule loads; every value is a bound parameter.
Failures never show the database password: URLs are rendered with it masked.

On PostgreSQL, ISO 8601 text (a payload's timestamp) bound for a `date`, `time`,
`timestamp` or `timestamptz` column is cast there by PostgreSQL itself, as an
INSERT of that text would be; the column types are looked up (in the upsert's own
transaction) only when a value looks like such a text. Statements asyncpg prepared
before the table changed (a column's type, a column dropped and added again) fail
against the new table: such a failure is tried once more on fresh connections, so a
worker recovers without a restart.
SQLAlchemy and the database drivers load when an upsert runs (actions/sql_writes.py), not
when rules load: `check` stays light.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import AfterValidator, Field, model_validator

from actions.base import (
    DATABASE_URL,
    Action,
    ActionContext,
    ActionFailed,
    ActionParams,
    ActionResult,
    NotTemplated,
    OutgoingURL,
    Setting,
)

# Letters, digits and `_`, at most 63 long: PostgreSQL silently truncates longer names.
_NAME = r"[A-Za-z_][A-Za-z0-9_]{0,62}"
_COLUMN_RE = re.compile(_NAME)
_TABLE_RE = re.compile(rf"(?:{_NAME}\.)?{_NAME}")

SYNC_DATABASE = Setting(
    "SYNC_DATABASE_URL",
    DATABASE_URL,
    "the database sql_upsert actions write to when the rule names no database_url",
)


def _table_name(value: str) -> str:
    if not _TABLE_RE.fullmatch(value):
        raise ValueError(
            f"table {value!r} is not a plain SQL identifier; write the name literally, "
            "like inventory or public.inventory (letters, digits and _, no templates)"
        )
    return value


def _column_names(value: dict[str, Any]) -> dict[str, Any]:
    bad = [name for name in value if not _COLUMN_RE.fullmatch(name)]
    if bad:
        raise ValueError(
            f"column name(s) {', '.join(map(repr, bad))} are not plain SQL identifiers; "
            "use letters, digits and _ only, not starting with a digit"
        )
    return value


Columns = Annotated[dict[str, Any], AfterValidator(_column_names)]


class SqlUpsertParams(ActionParams):
    database_url: Annotated[str | None, OutgoingURL(http=False)] = None
    table: Annotated[str, AfterValidator(_table_name), NotTemplated()]
    key: Annotated[Columns, Field(min_length=1)]
    values: Columns = Field(default_factory=dict)

    @model_validator(mode="after")
    def _key_not_in_values(self) -> SqlUpsertParams:
        both = sorted(set(self.key) & set(self.values))
        if both:
            raise ValueError(
                f"column(s) {', '.join(both)} appear in both key and values; "
                "a key column identifies the row, so keep it in key only"
            )
        return self


class SqlUpsertAction(Action[SqlUpsertParams]):
    type = "sql_upsert"
    description = "Insert or update one row, found by its key columns, in an external database."
    Params = SqlUpsertParams
    settings = (SYNC_DATABASE,)

    async def run(self, params: SqlUpsertParams, ctx: ActionContext) -> ActionResult:
        raw_url = params.database_url or ctx.setting(SYNC_DATABASE)
        if not raw_url:
            raise ActionFailed(
                "sql_upsert: no database to write to; "
                "set SYNC_DATABASE_URL in the environment or database_url in the action",
                transient=False,
            )
        from actions.sql_writes import upsert_row

        rows = await upsert_row(ctx, raw_url, params)
        return ActionResult(detail=f"upserted {rows} row{'' if rows == 1 else 's'} into {params.table}")
