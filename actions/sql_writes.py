"""The writing half of the `sql_upsert` action (actions/sql_upsert.py): one row upserted.

Loaded when an upsert runs, with SQLAlchemy and the database driver, so that loading rules
(`check`) does not import them.
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sqlalchemy import ColumnElement, Date, DateTime, String, Time, cast, column, literal, table, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql.expression import TableClause
from sqlalchemy.types import TypeEngine

from actions.base import ActionContext, ActionFailed

if TYPE_CHECKING:
    from actions.sql_upsert import SqlUpsertParams

# For connecting and upserting one row; running out of it is transient, like a refused connection.
UPSERT_TIMEOUT_SECONDS = 30.0

# PostgreSQL SQLSTATEs worth retrying besides class 08 (connection exceptions): the server
# is shutting down, starting up or full, a lock is held, or this transaction lost a
# serialization conflict or a deadlock.
_TRANSIENT_SQLSTATES = frozenset({"40001", "40P01", "53300", "55P03", "57P01", "57P02", "57P03"})

# What a plan prepared against the table as it was fails with: cached plan must not change
# result type, datatype mismatch, cache lookup failed for type; and asyncpg's own check of a
# value against the parameter's old type (22000, "invalid input for query argument $2: …").
_STALE_PLAN_SQLSTATES = frozenset({"0A000", "42804", "XX000"})
_STALE_ARGUMENT = ("22000", "invalid input for query argument")

# ISO 8601 dates, date-times and times, as payloads write them.
_ISO_8601 = re.compile(
    r"\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2}(?:[.,]\d+)?)?)?(?:Z|[+-]\d{2}(?::?\d{2})?)?"
    r"|\d{2}:\d{2}(?::\d{2}(?:[.,]\d+)?)?(?:Z|[+-]\d{2}(?::?\d{2})?)?",
    re.ASCII,
)
_TEMPORAL_TYPES: dict[str, TypeEngine[Any]] = {
    "date": Date(),
    "time": Time(),
    "timetz": Time(timezone=True),
    "timestamp": DateTime(),
    "timestamptz": DateTime(timezone=True),
}
_COLUMN_TYPES = text(
    "SELECT a.attname, t.typname FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid "
    "WHERE a.attrelid = to_regclass(:table) AND a.attnum > 0 AND NOT a.attisdropped "
    "AND a.attname = ANY(:columns)"
)

_Insert = sqlite.Insert | postgresql.Insert
_INSERTS: dict[str, Callable[[TableClause], _Insert]] = {
    "sqlite": sqlite.insert,
    "postgresql": postgresql.insert,
}


async def upsert_row(ctx: ActionContext, raw_url: str, params: SqlUpsertParams) -> int:
    """Upsert the row `params` describe into the database at `raw_url`; the rows written."""
    url = _parse_url(raw_url)
    where = f"{params.table} on {url.render_as_string(hide_password=True)}"
    _insert_for(url.get_backend_name(), where)  # refuse early, before loading a driver
    try:
        async with asyncio.timeout(UPSERT_TIMEOUT_SECONDS):
            return await _upsert(ctx, raw_url, url, params, where)
    except (OSError, SQLAlchemyError, ImportError) as exc:
        raise _failure(exc, where, url) from exc


async def _upsert(ctx: ActionContext, raw_url: str, url: URL, params: SqlUpsertParams, where: str) -> int:
    try:
        engine = ctx.databases.get(raw_url)
    except (SQLAlchemyError, ImportError) as exc:  # an unknown or synchronous driver
        message = f"sql_upsert: cannot open {where}: {type(exc).__name__}: {str(exc).rstrip('.')}; "
        raise ActionFailed(
            _scrub(message, url) + "use a sqlite+aiosqlite:// or postgresql+asyncpg:// URL",
            transient=False,
        ) from exc
    insert = _insert_for(engine.dialect.name, where)
    try:
        return await _upsert_once(engine, insert, params)
    except DBAPIError as exc:
        if engine.dialect.name != "postgresql" or not _stale_plan(exc):
            raise
    # Every pooled connection may hold the stale statement: new ones prepare it afresh.
    await engine.dispose()
    return await _upsert_once(engine, insert, params)


async def _upsert_once(
    engine: AsyncEngine, insert: Callable[[TableClause], _Insert], params: SqlUpsertParams
) -> int:
    schema, _, name = params.table.rpartition(".")
    names = [*params.key, *params.values]
    target = table(name, *(column(n) for n in names), schema=schema or None)
    async with engine.begin() as connection:
        row = await _row(connection, target, {**params.key, **params.values})
        statement = insert(target).values(row)
        if params.values:
            statement = statement.on_conflict_do_update(
                index_elements=list(params.key),
                set_={n: statement.excluded[n] for n in params.values},
            )
        else:
            statement = statement.on_conflict_do_nothing(index_elements=list(params.key))
        result = await connection.execute(statement)
    return result.rowcount


async def _row(connection: AsyncConnection, target: TableClause, values: dict[str, Any]) -> dict[str, Any]:
    """The values to insert: on PostgreSQL, ISO 8601 text for a date or time column cast to its type."""
    dated = [name for name, value in values.items() if isinstance(value, str) and _ISO_8601.fullmatch(value)]
    if connection.dialect.name != "postgresql" or not dated:
        return values
    preparer = connection.dialect.identifier_preparer
    qualified = preparer.quote(target.name)
    if target.schema:
        qualified = f"{preparer.quote_schema(target.schema)}.{qualified}"
    found = await connection.execute(_COLUMN_TYPES, {"table": qualified, "columns": dated})
    temporal = {name: _TEMPORAL_TYPES[kind] for name, kind in found if kind in _TEMPORAL_TYPES}
    converted: dict[str, Any | ColumnElement[Any]] = dict(values)
    for name, kind in temporal.items():
        converted[name] = cast(literal(values[name], String()), kind)
    return converted


def _stale_plan(exc: DBAPIError) -> bool:
    """Whether the error may come from a statement prepared before the table changed."""
    driver_error = (exc.orig and exc.orig.__cause__) or exc.orig
    state = getattr(driver_error, "sqlstate", None)
    if state in _STALE_PLAN_SQLSTATES:
        return True
    return (state, str(driver_error)[: len(_STALE_ARGUMENT[1])]) == _STALE_ARGUMENT


def _insert_for(dialect: str, where: str) -> Callable[[TableClause], _Insert]:
    insert = _INSERTS.get(dialect)
    if insert is None:
        raise ActionFailed(
            f"sql_upsert: cannot upsert into {where}: {dialect!r} databases are not supported; "
            "use a sqlite+aiosqlite:// or postgresql+asyncpg:// URL",
            transient=False,
        )
    return insert


def _parse_url(raw_url: str) -> URL:
    try:
        return make_url(raw_url)
    except ArgumentError as exc:
        # Not `{exc}` nor the value: SQLAlchemy's message quotes the URL, password and all.
        raise ActionFailed(
            "sql_upsert: database_url is not a database URL (not shown: it may hold a password); "
            "write it like postgresql+asyncpg://user:password@host/dbname",
            transient=False,
        ) from exc


def _failure(exc: BaseException, where: str, url: URL) -> ActionFailed:
    if isinstance(exc, TimeoutError):
        return ActionFailed(
            f"sql_upsert: upsert into {where} timed out after {UPSERT_TIMEOUT_SECONDS:g}s",
            transient=True,
        )
    transient = _is_transient(exc)
    reason = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, DBAPIError):
        # The driver's own error, without the SQL and its parameters; asyncpg's is the cause
        # of SQLAlchemy's adapter exception and has the telling name (UndefinedTableError).
        driver_error = (exc.orig and exc.orig.__cause__) or exc.orig
        reason = f"{type(driver_error).__name__}: {driver_error}"
    hint = (
        "check that the database is up and reachable; trying again later may succeed"
        if transient
        else "check that the table and its columns exist, that the key columns are exactly its "
        "primary key or a unique constraint, and that the values fit the column types"
    )
    # Drivers quote the offending value; one value, but it may be long.
    reason = _shorten(reason.rstrip("."), 300)
    message = f"sql_upsert: upsert into {where} failed: {reason}; {hint}"
    return ActionFailed(_scrub(message, url), transient=transient)


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + "…"


def _scrub(message: str, url: URL) -> str:
    """Mask the password wherever a driver's message might have echoed it."""
    return message.replace(str(url.password), "***") if url.password else message


def _is_transient(exc: BaseException) -> bool:
    if isinstance(exc, OSError):
        return True
    if not isinstance(exc, DBAPIError):
        return False
    if exc.connection_invalidated or isinstance(exc.orig, OSError):
        return True
    sqlstate = getattr(exc.orig, "sqlstate", None) or ""
    if sqlstate.startswith("08") or sqlstate in _TRANSIENT_SQLSTATES:
        return True
    # SQLite's "database is locked": another writer holds the file for now.
    return isinstance(exc.orig, sqlite3.OperationalError) and "locked" in str(exc.orig)
