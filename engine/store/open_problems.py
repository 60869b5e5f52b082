"""Why the store's database did not open, as one line an operator can act on.

What SQLAlchemy raises names its own classes and the driver's (`DBAPIError:
(sqlalchemy.dialects.postgresql.asyncpg.Error) database "app" does not exist`);
an operator needs the cause and the fix: `createdb app`, start PostgreSQL, the
user or password, the folder of the SQLite file. The URL is never quoted here
(it may hold a password); callers show it masked.
"""

from __future__ import annotations

import os
import shlex
import socket
from pathlib import Path

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import DBAPIError

FIX = "fix DATABASE_URL"
# PostgreSQL's SQLSTATEs: invalid_catalog_name; invalid_password, invalid_authorization_specification.
_NO_DATABASE = "3D000"
_REFUSED_LOGIN = frozenset({"28P01", "28000"})
_POSTGRES_PORT = 5432


def sqlite_file_problem(database_url: str) -> str | None:
    """Why the SQLite file of `database_url` cannot be opened or created, before trying; None if it can.

    Checked first because a failed connect of aiosqlite leaves a thread that may report
    on an event loop already closed (a traceback after the one line).
    """
    url = make_url(database_url)
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        return None
    if url.database.startswith("file:"):
        return None
    path = Path(url.database)
    folder = path.parent
    if not folder.is_dir():
        return f"the folder {folder} does not exist: create it, or {FIX}"
    if not path.exists() and not _writable(folder):
        return f"the folder {folder} is not writable, so the SQLite file cannot be created there: {FIX}"
    return None


def open_problem(exc: BaseException, database_url: str) -> str:
    """What stopped the database at `database_url` from opening, and what to do about it."""
    url = make_url(database_url)
    cause = _driver_error(exc)
    state = getattr(cause, "sqlstate", None)
    if state == _NO_DATABASE:
        name = url.database or ""
        create = f"createdb {shlex.quote(name)}"
        return f'database "{name}" does not exist on {_where(url)}: create it ({create}) or {FIX}'
    if state in _REFUSED_LOGIN:
        return f"{_text(cause)}: fix the user or password in DATABASE_URL"
    if isinstance(cause, socket.gaierror):
        return (
            f"the host {url.host} is not known here ({cause.strerror or cause}): fix the host in DATABASE_URL"
        )
    if isinstance(cause, TimeoutError):
        return f"no answer from {_where(url)} in time: check that PostgreSQL runs there, or {FIX}"
    if isinstance(cause, OSError):
        return f"nothing answers at {_where(url)}: start PostgreSQL, or fix the host and port in DATABASE_URL"
    return f"{_text(cause)}; {FIX}"


def _driver_error(exc: BaseException) -> BaseException:
    """The driver's own error inside SQLAlchemy's wrapping (asyncpg's is the cause of the adapter's)."""
    if isinstance(exc, DBAPIError) and exc.orig is not None:
        return exc.orig.__cause__ or exc.orig
    return exc


def _text(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return (lines[0].rstrip(".") if lines else "") or type(error).__name__


def _where(url: URL) -> str:
    host = url.host or "localhost"
    return f"{f'[{host}]' if ':' in host else host}:{url.port or _POSTGRES_PORT}"


def _writable(folder: Path) -> bool:
    return os.access(folder, os.W_OK | os.X_OK)
