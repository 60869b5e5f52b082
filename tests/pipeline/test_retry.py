"""Retry backoff (engine/pipeline/retry.py): full jitter under an exponential ceiling, Retry-After honoured."""

from __future__ import annotations

import random

from engine.pipeline.retry import MAX_BACKOFF_SECONDS, RetryPolicy


def test_backoff_is_full_jitter_below_an_exponential_ceiling() -> None:
    policy = RetryPolicy(max_attempts=8, base_seconds=0.5)
    random.seed(1234)
    for attempt in range(1, 9):
        ceiling = 0.5 * 2 ** (attempt - 1)
        delays = [policy.delay(attempt, None) for _ in range(400)]
        assert all(d is not None and 0 <= d <= ceiling for d in delays)
        # Full jitter spreads over the whole range, not just near the ceiling.
        assert min(d for d in delays if d is not None) < ceiling * 0.1
        assert max(d for d in delays if d is not None) > ceiling * 0.9


def test_backoff_is_bounded_for_any_attempt_count() -> None:
    policy = RetryPolicy(max_attempts=100_000, base_seconds=1.0)
    for attempt in (20, 1_100, 99_999):
        delay = policy.delay(attempt, None)
        assert delay is not None
        assert 0 <= delay <= MAX_BACKOFF_SECONDS


def test_retry_is_never_sooner_than_retry_after() -> None:
    policy = RetryPolicy(max_attempts=8, base_seconds=1.0)
    for attempt in range(1, 9):
        for retry_after in (0.0, 1.0, 30.0, 2 * MAX_BACKOFF_SECONDS):
            delay = policy.delay(attempt, retry_after)
            assert delay is not None
            assert delay >= retry_after


def test_retry_after_beyond_the_limit_gives_up() -> None:
    policy = RetryPolicy()
    assert policy.delay(1, policy.max_retry_after_seconds + 1) is None
    assert policy.delay(1, float("inf")) is None
    assert policy.delay(1, policy.max_retry_after_seconds) == policy.max_retry_after_seconds
