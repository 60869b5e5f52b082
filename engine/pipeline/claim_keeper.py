"""Keeping a run's claim on its delivery alive for as long as the run lasts.

A claim (`Store.claim_many`) holds a delivery for REQUEUE_AFTER_SECONDS; past that,
the sweeper hands the delivery to another worker, as it must when a worker died.
A run that is alive keeps its claim, whatever it is doing (an action waiting on a
slow server, a long render): every quarter of REQUEUE_AFTER_SECONDS, one statement
pushes out the `due_at` of every claim held longer than that. A run that finishes
within the quarter costs nothing here (a timer per beat, not per delivery). So only
a dead worker's claim ever expires.

Claims are owned: each carries its token, the delivery's `runs` counter as its
claim set it. An extension, like every other write of the run, applies only while
the delivery is still `processing` under that token. A run whose claim was lost
anyway (its worker stalled longer than the claim, or the delivery was reopened)
finds out at the next beat, is marked `lost`, and starts no further action; the
run that claimed the delivery after it is never overwritten.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from datetime import timedelta

from actions.base import Clock
from engine.store import Store

log = logging.getLogger(__name__)

# Beats per REQUEUE_AFTER_SECONDS. A claim is extended once it is a beat old, so it always
# has at least half of REQUEUE_AFTER_SECONDS left: room for a slow database or a busy loop.
BEATS_PER_CLAIM = 4


@dataclass(eq=False, slots=True)
class Hold:
    """One run's claim on one delivery, kept alive by a `ClaimKeeper` until released."""

    delivery_id: str
    token: int
    kept_at: float  # time.monotonic() when it was claimed or last extended
    lost: bool = False
    extending: asyncio.Event | None = None  # set when the extension in flight is over


class ClaimKeeper:
    """Extends the claims of the runs in hand, in one statement per beat, while there are any."""

    def __init__(self, store: Store, requeue_after: timedelta, clock: Clock) -> None:
        self._store = store
        self._requeue_after = requeue_after
        self._clock = clock
        self._beat_seconds = requeue_after.total_seconds() / BEATS_PER_CLAIM
        self._holds: dict[int, Hold] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._beating: asyncio.Task[None] | None = None

    def hold(self, delivery_id: str, token: int) -> Hold:
        """Keep the claim `token` of `delivery_id` alive from now until `release`."""
        hold = Hold(delivery_id, token, time.monotonic())
        self._holds[id(hold)] = hold
        if self._timer is None and self._beating is None:
            self._timer = asyncio.get_running_loop().call_later(self._beat_seconds, self._beat)
        return hold

    def kept(self, hold: Hold) -> None:
        """The run extended its claim itself (it saved progress)."""
        hold.kept_at = time.monotonic()

    async def release(self, hold: Hold) -> None:
        """Stop keeping the claim; returns once no extension of it is in flight.

        A run releases its claim before it records its end, so that an extension cannot
        land after the end and overwrite the `due_at` the end set (a retry's time).
        """
        self._holds.pop(id(hold), None)
        if hold.extending is not None:
            await hold.extending.wait()
        # The timer stays armed: a beat that finds nothing to keep stops there. Cancelling it
        # here would cost a timer per delivery instead of one per beat.

    async def close(self) -> None:
        """Stop beating (the runs in hand are over, or cut off and left to expire)."""
        self._holds.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._beating is not None:
            await asyncio.gather(self._beating, return_exceptions=True)

    def _beat(self) -> None:
        self._timer = None
        now = time.monotonic()
        due = [hold for hold in self._holds.values() if now - hold.kept_at >= self._beat_seconds]
        if due:
            self._beating = asyncio.get_running_loop().create_task(self._extend(due), name="claim-keeper")
        elif self._holds:
            self._timer = asyncio.get_running_loop().call_later(self._beat_seconds, self._beat)

    async def _extend(self, holds: list[Hold]) -> None:
        over = asyncio.Event()
        for hold in holds:
            hold.extending = over
        started = time.monotonic()
        try:
            held = await self._store.extend_claims(
                [(hold.delivery_id, hold.token) for hold in holds], self._clock() + self._requeue_after
            )
            for hold in holds:
                if hold.delivery_id in held:
                    hold.kept_at = started
                elif not hold.lost:
                    hold.lost = True
                    log.warning(
                        "delivery %s: this run lost its claim (it was reopened, or taken over after the "
                        "claim expired); it starts no further action and leaves the record to the new run",
                        hold.delivery_id,
                        extra={"delivery_id": hold.delivery_id},
                    )
        except Exception as exc:  # the database away: tried again at the next beat
            log.warning(
                "could not keep %d claim(s) alive: %s: %s; trying again in %.1fs",
                len(holds),
                type(exc).__name__,
                exc,
                self._beat_seconds,
            )
        finally:
            for hold in holds:
                hold.extending = None
            over.set()
            self._beating = None
            if self._holds:
                self._timer = asyncio.get_running_loop().call_later(self._beat_seconds, self._beat)
