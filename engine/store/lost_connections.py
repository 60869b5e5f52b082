"""Writes that must outlive a connection the database dropped.

The store does not ping pooled connections before use (engine/store/database.py):
a connection PostgreSQL dropped (a restart, `pg_terminate_backend`, a failover)
fails its first statement, and SQLAlchemy replaces the pool. For most writes that
failure is the answer: the intake writes its batch again, a worker's job is
retried. Not for the writes that record what a run's actions did: an action that
succeeded and whose success is lost is sent again by the next run. Those writes
are idempotent (each applies only under the run's claim token, the ledger is
upserted, an end recorded twice changes nothing), so they are made once more on
a fresh connection; a second failure goes up as before.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import ParamSpec, TypeVar

from sqlalchemy.exc import DBAPIError

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")


def written_again_on_lost_connection(write: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
    """`write`, made once more when its connection turned out to be dropped by the database."""

    @functools.wraps(write)
    async def again(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await write(*args, **kwargs)
        except DBAPIError as exc:
            if not exc.connection_invalidated:
                raise
            log.warning(
                "the database dropped the connection of %s; writing it again on a fresh connection",
                write.__name__,
            )
            return await write(*args, **kwargs)

    return again
