"""sql_upsert on the real PostgreSQL: payload text into date and time columns, and a table that changes.

A payload's timestamp is text; asyncpg binds parameters by the column's type and
refused it. And asyncpg prepares each statement once per connection: after the
operator changed the table (another session, as psql would), the prepared
statement no longer fits it, and every later upsert failed until a restart.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, date, datetime, time

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from actions.base import ActionContext, ActionFailed
from tests.test_actions_sql_upsert import MakeTable, ctx, make_table, rows, upsert  # noqa: F401 - fixtures

pytestmark = pytest.mark.postgres

Alter = Callable[[str], Awaitable[None]]


@pytest.fixture
def alter(postgres_url: str) -> Alter:
    """DDL from a session of its own, as an operator's psql runs it."""

    async def run(statement: str) -> None:
        engine = create_async_engine(postgres_url)
        try:
            async with engine.begin() as connection:
                await connection.execute(text(statement))
        finally:
            await engine.dispose()

    return run


async def test_iso_8601_text_goes_into_date_time_and_timestamp_columns_as_those_types(
    ctx: ActionContext,  # noqa: F811
    postgres_url: str,
    make_table: MakeTable,  # noqa: F811
) -> None:
    table = await make_table(
        postgres_url, "day DATE PRIMARY KEY, seen TIMESTAMPTZ, local TIMESTAMP, opens TIME, note TEXT"
    )
    values = {
        "seen": "2026-03-01T09:00:00Z",
        "local": "2026-03-01T09:00:00.250",
        "opens": "08:30",
        "note": "2026-03-01T09:00:00Z",  # a text column keeps the text
    }

    detail = await upsert(
        ctx, database_url=postgres_url, table=f"public.{table}", key={"day": "2026-03-01"}, values=values
    )

    assert detail == f"upserted 1 row into public.{table}"
    assert await rows(ctx, postgres_url, table) == [
        (
            date(2026, 3, 1),
            datetime(2026, 3, 1, 9, tzinfo=UTC),
            datetime(2026, 3, 1, 9, 0, 0, 250000),
            time(8, 30),
            "2026-03-01T09:00:00Z",
        )
    ]


async def test_text_that_is_no_date_for_a_date_column_fails_permanently_saying_so(
    ctx: ActionContext,  # noqa: F811
    postgres_url: str,
    make_table: MakeTable,  # noqa: F811
) -> None:
    table = await make_table(postgres_url, "sku TEXT PRIMARY KEY, due DATE")

    with pytest.raises(ActionFailed, match="date/time field value out of range") as caught:
        await upsert(
            ctx, database_url=postgres_url, table=table, key={"sku": "A"}, values={"due": "2026-13-45"}
        )

    assert caught.value.transient is False
    assert "2026-13-45" in str(caught.value)


@pytest.mark.parametrize(
    ("change", "before", "after"),
    [
        ("ALTER TABLE {t} ALTER COLUMN qty TYPE integer USING qty::integer", "5", 6),
        ("ALTER TABLE {t} DROP COLUMN qty; ALTER TABLE {t} ADD COLUMN qty bigint", "5", 6),
        ("ALTER TABLE {t} ALTER COLUMN qty TYPE timestamptz USING now()", "5", "2026-03-01T09:00:00Z"),
    ],
    ids=["type changed", "dropped and added", "now a timestamp"],
)
async def test_after_the_table_changes_the_next_upsert_succeeds_without_a_restart(
    ctx: ActionContext,  # noqa: F811
    postgres_url: str,
    make_table: MakeTable,  # noqa: F811
    alter: Alter,
    change: str,
    before: object,
    after: object,
) -> None:
    table = await make_table(postgres_url, "sku TEXT PRIMARY KEY, qty TEXT")
    common = {"database_url": postgres_url, "table": table, "key": {"sku": "A"}}
    await upsert(ctx, **common, values={"qty": before})  # prepared on a pooled connection

    for statement in change.format(t=table).split("; "):
        await alter(statement)
    detail = await upsert(ctx, **common, values={"qty": after})
    again = await upsert(ctx, **common, values={"qty": after})

    assert detail == again == f"upserted 1 row into {table}"
    [(sku, qty)] = await rows(ctx, postgres_url, table)
    assert sku == "A"
    assert qty == (datetime(2026, 3, 1, 9, tzinfo=UTC) if isinstance(after, str) else after)
