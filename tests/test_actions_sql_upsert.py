"""The sql_upsert action against real databases: SQLite (aiosqlite) and PostgreSQL (asyncpg).

Every test that touches a database creates its own uniquely named table and drops it.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from sqlalchemy import text
from sqlalchemy.engine import make_url

from actions import sql_writes
from actions.base import ActionContext, ActionFailed
from actions.sql_upsert import SqlUpsertAction, SqlUpsertParams
from engine.testing import action_context

PASSWORD = "hunter2-pw"
UNREACHABLE_URL = f"postgresql+asyncpg://u:{PASSWORD}@127.0.0.1:1/x"

MakeTable = Callable[[str, str], Awaitable[str]]
Row = tuple[Any, ...]


@pytest.fixture
async def ctx() -> AsyncIterator[ActionContext]:
    async with action_context(SqlUpsertAction, delivery_id="dlv-42", rule_id="sync-inventory") as made:
        yield made


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'sync.db'}"


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest) -> str:
    fixture = "sqlite_url" if request.param == "sqlite" else "postgres_url"
    url: str = request.getfixturevalue(fixture)
    return url


@pytest.fixture
async def make_table(ctx: ActionContext) -> AsyncIterator[MakeTable]:
    created: list[tuple[str, str]] = []

    async def make(url: str, columns: str) -> str:
        name = f"items_{uuid.uuid4().hex[:12]}"
        async with ctx.databases.get(url).begin() as connection:
            await connection.execute(text(f"CREATE TABLE {name} ({columns})"))
        created.append((url, name))
        return name

    yield make
    for url, name in created:
        async with ctx.databases.get(url).begin() as connection:
            await connection.execute(text(f"DROP TABLE IF EXISTS {name}"))


async def rows(ctx: ActionContext, url: str, table: str) -> list[Row]:
    async with ctx.databases.get(url).connect() as connection:
        result = await connection.execute(text(f"SELECT * FROM {table} ORDER BY 1, 2"))
        return [tuple(row) for row in result]


async def upsert(ctx: ActionContext, **params: Any) -> str | None:
    result = await SqlUpsertAction().run(SqlUpsertParams.model_validate(params), ctx)
    return result.detail


# --- the upsert itself, on both databases -------------------------------------------------


async def test_upsert_inserts_then_updates_same_key_leaving_one_row_with_new_values(
    ctx: ActionContext, database_url: str, make_table: MakeTable
) -> None:
    table = await make_table(database_url, "sku TEXT PRIMARY KEY, qty INTEGER, note TEXT")
    common = {"database_url": database_url, "table": table, "key": {"sku": "SKU-1"}}

    first = await upsert(ctx, **common, values={"qty": 5, "note": "first"})
    assert await rows(ctx, database_url, table) == [("SKU-1", 5, "first")]

    second = await upsert(ctx, **common, values={"qty": 2, "note": "second"})
    assert await rows(ctx, database_url, table) == [("SKU-1", 2, "second")]
    assert first == second == f"upserted 1 row into {table}"


async def test_upsert_with_composite_key_updates_only_the_matching_row(
    ctx: ActionContext, database_url: str, make_table: MakeTable
) -> None:
    table = await make_table(
        database_url, "warehouse TEXT, sku TEXT, qty INTEGER, PRIMARY KEY (warehouse, sku)"
    )
    for warehouse, qty in [("north", 5), ("south", 7), ("north", 3)]:
        await upsert(
            ctx,
            database_url=database_url,
            table=table,
            key={"warehouse": warehouse, "sku": "SKU-1"},
            values={"qty": qty},
        )

    assert await rows(ctx, database_url, table) == [("north", "SKU-1", 3), ("south", "SKU-1", 7)]


async def test_upsert_with_key_only_inserts_once_and_keeps_the_existing_row(
    ctx: ActionContext, database_url: str, make_table: MakeTable
) -> None:
    table = await make_table(database_url, "sku TEXT PRIMARY KEY, qty INTEGER DEFAULT 9")
    await upsert(ctx, database_url=database_url, table=table, key={"sku": "SKU-1"})
    async with ctx.databases.get(database_url).begin() as connection:
        await connection.execute(text(f"UPDATE {table} SET qty = 4"))

    await upsert(ctx, database_url=database_url, table=table, key={"sku": "SKU-1"})

    assert await rows(ctx, database_url, table) == [("SKU-1", 4)]


async def test_upsert_into_schema_qualified_table(
    ctx: ActionContext, database_url: str, make_table: MakeTable
) -> None:
    table = await make_table(database_url, "sku TEXT PRIMARY KEY, qty INTEGER")
    schema = "main" if database_url.startswith("sqlite") else "public"

    detail = await upsert(
        ctx, database_url=database_url, table=f"{schema}.{table}", key={"sku": "A"}, values={"qty": 1}
    )

    assert detail == f"upserted 1 row into {schema}.{table}"
    assert await rows(ctx, database_url, table) == [("A", 1)]


async def test_upsert_falls_back_to_the_configured_sync_database_url(
    ctx: ActionContext, database_url: str, make_table: MakeTable
) -> None:
    table = await make_table(database_url, "sku TEXT PRIMARY KEY, qty INTEGER")

    async with action_context(SqlUpsertAction, settings={"SYNC_DATABASE_URL": database_url}) as configured:
        await upsert(configured, table=table, key={"sku": "A"}, values={"qty": 1})

    assert await rows(ctx, database_url, table) == [("A", 1)]


# --- permanent failures -------------------------------------------------------------------


async def test_upsert_into_missing_table_fails_permanently_naming_the_table(
    ctx: ActionContext, database_url: str
) -> None:
    with pytest.raises(ActionFailed) as caught:
        await upsert(ctx, database_url=database_url, table="no_such_items", key={"sku": "A"}, values={})

    assert caught.value.transient is False
    assert "no_such_items" in str(caught.value)
    assert "[SQL:" not in str(caught.value)


async def test_upsert_without_unique_constraint_on_the_key_fails_permanently(
    ctx: ActionContext, database_url: str, make_table: MakeTable
) -> None:
    table = await make_table(database_url, "sku TEXT, qty INTEGER")

    with pytest.raises(
        ActionFailed, match="key columns are exactly its primary key or a unique constraint"
    ) as caught:
        await upsert(ctx, database_url=database_url, table=table, key={"sku": "A"}, values={"qty": 1})

    assert caught.value.transient is False
    assert await rows(ctx, database_url, table) == []


async def test_upsert_with_value_the_column_cannot_take_fails_permanently(
    ctx: ActionContext, database_url: str, make_table: MakeTable
) -> None:
    table = await make_table(database_url, "sku TEXT PRIMARY KEY, qty INTEGER")

    with pytest.raises(ActionFailed) as caught:
        await upsert(ctx, database_url=database_url, table=table, key={"sku": "A"}, values={"qty": {"n": 1}})

    assert caught.value.transient is False
    assert await rows(ctx, database_url, table) == []


@pytest.mark.postgres
async def test_upsert_error_never_shows_the_database_password(ctx: ActionContext, postgres_url: str) -> None:
    # The server trusts local connections, so any password connects; the action must hide it.
    url = make_url(postgres_url).set(password=PASSWORD).render_as_string(hide_password=False)

    with pytest.raises(ActionFailed) as caught:
        await upsert(ctx, database_url=url, table="no_such_items", key={"sku": "A"}, values={})

    assert caught.value.transient is False
    assert PASSWORD not in str(caught.value)
    assert ":***@" in str(caught.value)


async def test_upsert_refuses_unsupported_database_permanently(ctx: ActionContext) -> None:
    url = f"mysql+aiomysql://u:{PASSWORD}@db.example.com/shop"

    with pytest.raises(ActionFailed, match="'mysql' databases are not supported") as caught:
        await upsert(ctx, database_url=url, table="items", key={"sku": "A"})

    assert caught.value.transient is False
    assert PASSWORD not in str(caught.value)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        (f"not a url {PASSWORD}", "is not a database URL"),
        ("sqlite:///sync.db", "is not async"),  # a synchronous driver
        (f"postgresql+nosuchdriver://u:{PASSWORD}@h/db", "NoSuchModuleError"),
    ],
)
async def test_upsert_with_unusable_database_url_fails_permanently(
    ctx: ActionContext, url: str, message: str
) -> None:
    with pytest.raises(ActionFailed, match=message) as caught:
        await upsert(ctx, database_url=url, table="items", key={"sku": "A"})

    assert caught.value.transient is False
    assert PASSWORD not in str(caught.value)


async def test_upsert_without_any_database_url_fails_permanently_saying_what_to_set(
    ctx: ActionContext,
) -> None:
    with pytest.raises(ActionFailed, match="set SYNC_DATABASE_URL") as caught:
        await upsert(ctx, table="items", key={"sku": "A"})

    assert caught.value.transient is False


# --- transient failures -------------------------------------------------------------------


async def test_unreachable_database_fails_transiently_without_showing_the_password(
    ctx: ActionContext,
) -> None:
    with pytest.raises(ActionFailed, match="ConnectionRefusedError") as caught:
        await upsert(ctx, database_url=UNREACHABLE_URL, table="items", key={"sku": "A"})

    assert caught.value.transient is True
    assert PASSWORD not in str(caught.value)
    assert "u:***@127.0.0.1:1/x" in str(caught.value)


async def test_sqlite_database_locked_by_another_writer_fails_transiently(
    ctx: ActionContext, sqlite_url: str, make_table: MakeTable
) -> None:
    table = await make_table(sqlite_url, "sku TEXT PRIMARY KEY, qty INTEGER")
    impatient_url = f"{sqlite_url}?timeout=0.2"  # SQLite's busy timeout, in seconds

    async with ctx.databases.get(sqlite_url).connect() as holder:
        await holder.exec_driver_sql("BEGIN EXCLUSIVE")
        with pytest.raises(ActionFailed, match="database is locked") as caught:
            await upsert(ctx, database_url=impatient_url, table=table, key={"sku": "A"})
        await holder.rollback()

    assert caught.value.transient is True


@pytest.mark.postgres
async def test_postgres_upsert_waiting_on_a_held_lock_times_out_transiently(
    ctx: ActionContext, postgres_url: str, make_table: MakeTable, monkeypatch: pytest.MonkeyPatch
) -> None:
    table = await make_table(postgres_url, "sku TEXT PRIMARY KEY, qty INTEGER")
    monkeypatch.setattr(sql_writes, "UPSERT_TIMEOUT_SECONDS", 0.5)

    async with ctx.databases.get(postgres_url).connect() as holder:
        await holder.execute(text(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE"))
        with pytest.raises(ActionFailed, match=r"timed out after 0\.5s") as caught:
            await upsert(ctx, database_url=postgres_url, table=table, key={"sku": "A"})
        await holder.rollback()

    assert caught.value.transient is True


# --- params, checked when the rule loads --------------------------------------------------


@pytest.mark.parametrize("table", ["items", "public.items", "_Items_2", "t" * 63])
def test_table_accepts_plain_and_schema_qualified_identifiers(table: str) -> None:
    assert SqlUpsertParams(table=table, key={"sku": "A"}).table == table


@pytest.mark.parametrize(
    "table",
    ["items; DROP TABLE users", "{{ payload.table }}", "a.b.c", "1items", "", '"items"', "t" * 64],
)
def test_table_that_is_not_a_plain_identifier_is_rejected(table: str) -> None:
    with pytest.raises(ValidationError, match="not a plain SQL identifier"):
        SqlUpsertParams(table=table, key={"sku": "A"})


@pytest.mark.parametrize(
    ("key", "values"),
    [({"sku; --": "A"}, {}), ({"sku": "A"}, {"qty = 0, x": 1}), ({"sku": "A"}, {"": 1})],
)
def test_column_name_that_is_not_a_plain_identifier_is_rejected(
    key: dict[str, Any], values: dict[str, Any]
) -> None:
    with pytest.raises(ValidationError, match="not plain SQL identifiers"):
        SqlUpsertParams(table="items", key=key, values=values)


def test_empty_key_is_rejected() -> None:
    with pytest.raises(ValidationError, match="key"):
        SqlUpsertParams(table="items", key={}, values={"qty": 1})


def test_column_in_both_key_and_values_is_rejected() -> None:
    with pytest.raises(ValidationError, match="sku appear in both key and values"):
        SqlUpsertParams(table="items", key={"sku": "A"}, values={"sku": "B", "qty": 1})


def test_unknown_param_is_rejected() -> None:
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        SqlUpsertParams.model_validate({"tabel": "items", "table": "items", "key": {"sku": "A"}})
