"""The `sql_upsert` action: insert or update one row in an external database.

`INSERT … ON CONFLICT (key columns) DO UPDATE SET values`, built with SQLAlchemy
Core on lightweight `table()`/`column()` clauses, so nothing is reflected and the
same code serves SQLite and PostgreSQL. Table and column names are checked as
plain SQL identifiers when the rule loads; every value is a bound parameter.
Failures never show the database password: URLs are rendered with it masked.
SQLAlchemy is imported when an upsert runs, not when rules load: `check` stays light.
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import AfterValidator, Field, model_validator

from actions.base import (
    Action,
    ActionContext,
    ActionFailed,
    ActionParams,
    ActionResult,
    NotTemplated,
    OutgoingURL,
)

if TYPE_CHECKING:
    from sqlalchemy.dialects import postgresql, sqlite
    from sqlalchemy.engine import URL
    from sqlalchemy.sql.expression import TableClause

    _Insert = sqlite.Insert | postgresql.Insert

# Letters, digits and `_`, at most 63 long: PostgreSQL silently truncates longer names.
_NAME = r"[A-Za-z_][A-Za-z0-9_]{0,62}"
_COLUMN_RE = re.compile(_NAME)
_TABLE_RE = re.compile(rf"(?:{_NAME}\.)?{_NAME}")

# For connecting and upserting one row; running out of it is transient, like a refused connection.
UPSERT_TIMEOUT_SECONDS = 30.0

# PostgreSQL SQLSTATEs worth retrying besides class 08 (connection exceptions): the server
# is shutting down, starting up or full, a lock is held, or this transaction lost a
# serialization conflict or a deadlock.
_TRANSIENT_SQLSTATES = frozenset({"40001", "40P01", "53300", "55P03", "57P01", "57P02", "57P03"})


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

    async def run(self, params: SqlUpsertParams, ctx: ActionContext) -> ActionResult:
        from sqlalchemy.exc import SQLAlchemyError

        raw_url = params.database_url or ctx.defaults.sync_database_url
        if not raw_url:
            raise ActionFailed(
                "sql_upsert: no database to write to; "
                "set SYNC_DATABASE_URL in the environment or database_url in the action",
                transient=False,
            )
        url = _parse_url(raw_url)
        where = f"{params.table} on {url.render_as_string(hide_password=True)}"
        _insert_for(url.get_backend_name(), where)  # refuse early, before loading a driver
        try:
            async with asyncio.timeout(UPSERT_TIMEOUT_SECONDS):
                rows = await _upsert(ctx, raw_url, url, params, where)
        except (OSError, SQLAlchemyError, ImportError) as exc:
            raise _failure(exc, where, url) from exc
        return ActionResult(detail=f"upserted {rows} row{'' if rows == 1 else 's'} into {params.table}")


async def _upsert(ctx: ActionContext, raw_url: str, url: URL, params: SqlUpsertParams, where: str) -> int:
    from sqlalchemy import column, table
    from sqlalchemy.exc import SQLAlchemyError

    try:
        engine = ctx.databases.get(raw_url)
    except (SQLAlchemyError, ImportError) as exc:  # an unknown or synchronous driver
        message = f"sql_upsert: cannot open {where}: {type(exc).__name__}: {str(exc).rstrip('.')}; "
        raise ActionFailed(
            _scrub(message, url) + "use a sqlite+aiosqlite:// or postgresql+asyncpg:// URL",
            transient=False,
        ) from exc
    insert = _insert_for(engine.dialect.name, where)
    schema, _, name = params.table.rpartition(".")
    names = [*params.key, *params.values]
    target = table(name, *(column(n) for n in names), schema=schema or None)
    statement = insert(target).values({**params.key, **params.values})
    if params.values:
        statement = statement.on_conflict_do_update(
            index_elements=list(params.key),
            set_={n: statement.excluded[n] for n in params.values},
        )
    else:
        statement = statement.on_conflict_do_nothing(index_elements=list(params.key))
    async with engine.begin() as connection:
        result = await connection.execute(statement)
    return result.rowcount


def _insert_for(dialect: str, where: str) -> Callable[[TableClause], _Insert]:
    from sqlalchemy.dialects import postgresql, sqlite

    inserts: dict[str, Callable[[TableClause], _Insert]] = {
        "sqlite": sqlite.insert,
        "postgresql": postgresql.insert,
    }
    insert = inserts.get(dialect)
    if insert is None:
        raise ActionFailed(
            f"sql_upsert: cannot upsert into {where}: {dialect!r} databases are not supported; "
            "use a sqlite+aiosqlite:// or postgresql+asyncpg:// URL",
            transient=False,
        )
    return insert


def _parse_url(raw_url: str) -> URL:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

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
    from sqlalchemy.exc import DBAPIError

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
    from sqlalchemy.exc import DBAPIError

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
