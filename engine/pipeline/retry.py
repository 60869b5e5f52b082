"""Retry backoff: when an action that failed transiently is tried again, and when it is given up.

A transient failure (`ActionFailed(transient=True)`: connection errors, timeouts, 408,
429, 5xx) is tried again after a full-jitter exponential backoff, never sooner than
the server's Retry-After (parsed by the plugin SDK, actions/base.py), up to
`max_attempts` (MAX_ATTEMPTS and RETRY_BASE_SECONDS in the settings). This is the
one place a retry's wait is computed: engine/pipeline/action_execution.py asks it,
and the worker keeps the delivery `processing` until then.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

MAX_BACKOFF_SECONDS = 3600.0
# A server asking to be left alone for longer than this gets a failed action, not a wait.
MAX_RETRY_AFTER_SECONDS = 86400.0
# 2**64 seconds is far past any ceiling; capping the exponent keeps the float finite.
_MAX_EXPONENT = 64


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int = 8
    base_seconds: float = 1.0
    max_backoff_seconds: float = MAX_BACKOFF_SECONDS
    max_retry_after_seconds: float = MAX_RETRY_AFTER_SECONDS

    def delay(self, attempt: int, retry_after: float | None) -> float | None:
        """Seconds before the next try: full-jitter exponential backoff, never sooner than Retry-After.

        None when the server's Retry-After is beyond `max_retry_after_seconds`: give up.
        """
        exponent = min(max(attempt - 1, 0), _MAX_EXPONENT)
        backoff = random.uniform(0, min(self.max_backoff_seconds, self.base_seconds * 2.0**exponent))
        if retry_after is None:
            return backoff
        if not retry_after <= self.max_retry_after_seconds:  # also catches inf and nan
            return None
        return max(backoff, retry_after)
