"""How busy the webhook receiver of this process is: in-process workers yield to a busy one.

`serve` on its embedded default runs the receiver and the workers on one event loop, so
on one core. During a burst the webhook answers come first and the backlog is processed
once it is over (`InProcessQueue.yield_to`). The receiver counts as busy while it is not
quiet and has had BUSY_REQUESTS_IN_HAND or more requests in hand on average over the last
WINDOW_SECONDS: requests queue up only when it is at capacity. A steady stream it keeps up
with, even one whose requests come too close together for it ever to be quiet, leaves it
fewer, and the workers keep pace.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator

# How long the receiver must have been idle before it counts as quiet.
QUIET_AFTER_SECONDS = 0.002
# Loop turns after that in which no request may start, before the receiver counts as quiet.
CONFIRM_TURNS = 3
# Requests in hand on average over WINDOW_SECONDS from which a receiver that is not quiet is busy.
BUSY_REQUESTS_IN_HAND = 4.0
WINDOW_SECONDS = 0.05


class ReceiverActivity:
    def __init__(self, window_seconds: float = WINDOW_SECONDS) -> None:
        # Set while no request is in hand (see `receiving`).
        self.quiet = asyncio.Event()
        self.quiet.set()
        self._in_hand = 0
        self._started = 0
        self._last_answer = 0.0
        self._quiet_check: asyncio.Handle | None = None
        # Requests in hand integrated over time (request-seconds), for the average.
        self.window_seconds = window_seconds
        self._in_hand_seconds = 0.0
        self._changed_at = time.monotonic()
        self._window_start = self._changed_at
        self._in_hand_seconds_at_start = 0.0
        self._average_in_hand = 0.0

    @contextlib.contextmanager
    def receiving(self) -> Iterator[None]:
        """Around the handling of one webhook request, from its body to its answer.

        `quiet` is clear while a request is in hand. It is set again once none has been for
        QUIET_AFTER_SECONDS and none started during the few loop turns after that: between
        two requests of a burst there is always a moment with none in hand (the next is
        still being read), and a loop that was busy with other work has not read what
        arrived meanwhile.
        """
        self._count_in_hand(+1)
        self._started += 1
        self.quiet.clear()
        try:
            yield
        finally:
            answered_at = self._count_in_hand(-1)
            if not self._in_hand:
                self._last_answer = answered_at
                if self._quiet_check is None:
                    self._check_quiet_in(QUIET_AFTER_SECONDS)

    def busy(self) -> bool:
        """Not quiet, and BUSY_REQUESTS_IN_HAND or more requests in hand on average lately."""
        return not self.quiet.is_set() and self.requests_in_hand() >= BUSY_REQUESTS_IN_HAND

    def requests_in_hand(self) -> float:
        """Requests in hand on average over the last whole window (0.0 before the first one)."""
        now = time.monotonic()
        elapsed = now - self._window_start
        if elapsed >= self.window_seconds:
            total = self._in_hand_seconds + self._in_hand * (now - self._changed_at)
            self._average_in_hand = (total - self._in_hand_seconds_at_start) / elapsed
            self._window_start, self._in_hand_seconds_at_start = now, total
        return self._average_in_hand

    def close(self) -> None:
        if self._quiet_check is not None:
            self._quiet_check.cancel()
            self._quiet_check = None

    def _count_in_hand(self, change: int) -> float:
        now = time.monotonic()
        self._in_hand_seconds += self._in_hand * (now - self._changed_at)
        self._changed_at = now
        self._in_hand += change
        return now

    def _check_quiet_in(self, seconds: float) -> None:
        self._quiet_check = asyncio.get_running_loop().call_later(seconds, self._check_quiet)

    def _check_quiet(self) -> None:
        self._quiet_check = None
        if self._in_hand:
            return  # the request in hand checks again when it ends
        idle = time.monotonic() - self._last_answer
        if idle < QUIET_AFTER_SECONDS:
            self._check_quiet_in(QUIET_AFTER_SECONDS - idle)
        else:
            self._confirm_quiet(self._started, CONFIRM_TURNS)

    def _confirm_quiet(self, started: int, turns: int) -> None:
        """Quiet if no request starts during `turns` more loop turns (the loop reads its sockets)."""
        self._quiet_check = None
        if self._in_hand:
            return  # the request in hand checks again when it ends
        if self._started != started:
            self._check_quiet()  # one came and went meanwhile: count from its answer
            return
        if turns:
            self._quiet_check = asyncio.get_running_loop().call_soon(self._confirm_quiet, started, turns - 1)
        else:
            self.quiet.set()
