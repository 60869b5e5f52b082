"""What a running `serve` or `worker` leaves in the store for `stockaj-rules doctor`.

Every `HEARTBEAT_SECONDS` the process says it is alive, and the receiver's refused
signatures, counted in memory per minute and reason, are added to the store in one
statement: a flood of bad signatures costs a dictionary increment per request, not a write.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid
from collections import Counter
from datetime import UTC, datetime

from engine.store import Store

log = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 10.0
FINAL_WRITE_SECONDS = 2.0


class SignatureFailureTally:
    """Refused signatures by (minute, reason), kept until the next write."""

    def __init__(self) -> None:
        self._counts: Counter[tuple[datetime, str]] = Counter()

    def add(self, reason: str, now: datetime | None = None) -> None:
        moment = now or datetime.now(UTC)
        self._counts[(moment.replace(second=0, microsecond=0), reason)] += 1

    def take(self) -> dict[tuple[datetime, str], int]:
        counts, self._counts = dict(self._counts), Counter()
        return counts

    def put_back(self, counts: dict[tuple[datetime, str], int]) -> None:
        """Counts that could not be written: they go with the next write."""
        self._counts.update(counts)


def process_id(role: str) -> str:
    """A name people can find: the host, the pid, and a suffix for restarts with the same pid."""
    return f"{role}@{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"[:200]


async def record_health(
    store: Store, role: str, tally: SignatureFailureTally, interval: float = HEARTBEAT_SECONDS
) -> None:
    """Beat and write the tally every `interval` seconds, until cancelled (then once more)."""
    me, started = process_id(role), datetime.now(UTC)
    try:
        while True:
            await _write(store, me, role, started, tally)
            await asyncio.sleep(interval)
    finally:  # stopping: the last counts, and the time this process was last alive
        await asyncio.wait_for(asyncio.shield(_write(store, me, role, started, tally)), FINAL_WRITE_SECONDS)


async def _write(store: Store, me: str, role: str, started: datetime, tally: SignatureFailureTally) -> None:
    counts = tally.take()
    try:
        await store.record_signature_failures(counts)
        await store.beat(process_id=me, role=role, started_at=started, now=datetime.now(UTC))
    except Exception as exc:  # the store is down: doctor says so; the counts wait for the next beat
        tally.put_back(counts)
        log.warning("could not record this process's heartbeat: %s", type(exc).__name__)
