"""Throttle state: at most one firing per rule and rendered key per window.

The engine talks to a `ThrottleState`; dry runs use `InMemoryThrottleState`,
the delivery pipeline a store-backed one, so the limit holds across workers.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Protocol


class ThrottleState(Protocol):
    async def acquire(self, rule_id: str, key: str, window: timedelta, now: datetime) -> datetime | None:
        """Take the slot for (rule, key) at `now`.

        Returns None when taken (the rule may fire), or when the slot was last
        taken, if that is less than `window` ago (the rule is throttled).
        """
        ...


class InMemoryThrottleState:
    """Throttle slots in a dict: for dry runs and tests, one process only."""

    def __init__(self) -> None:
        self._last_fired: dict[tuple[str, str], datetime] = {}

    async def acquire(self, rule_id: str, key: str, window: timedelta, now: datetime) -> datetime | None:
        last = self._last_fired.get((rule_id, key))
        if last is not None and now - last < window:
            return last
        self._last_fired[(rule_id, key)] = now
        return None
