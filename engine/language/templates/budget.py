"""What one template render may spend, checked while it runs: size, steps, time, call depth.

Every render gets a fresh `Budget` (see `engine.language.templates.render`). The sandbox
(`engine.language.templates.sandbox`) asks it before each operation that could build something big
(`check_text`, `check_value`), counts a step for every loop turn and operation,
and counts every piece of output as it is produced. A render that runs past
`MAX_RENDER_SECONDS` is stopped two ways: each step looks at the clock, and a
watchdog thread raises `OutOfTime` inside the rendering thread at the deadline,
which also stops Python code that takes no steps (a slow filter). A single C call
cannot be interrupted; the size checks keep each one small instead.
"""

from __future__ import annotations

import contextvars
import ctypes
import math
import os
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from jinja2.exceptions import SecurityError

MAX_TEXT_CHARS = 1_000_000  # characters of one value, and of one template's output
MAX_ITEMS = 100_000  # items of the lists and objects one value holds, nested ones included
MAX_RANGE_ITEMS = 10_000  # across all `range()` calls of one render
MAX_EXPONENT = 256
MAX_NUMBER_DIGITS = 1_000
MAX_STEPS = 200_000  # loop turns and operations of one render
MAX_CALL_DEPTH = 50  # macros calling macros, recursive loops
MAX_RENDER_SECONDS = 1.0

_CLOCK_EVERY = 64  # steps between two looks at the clock


class LimitExceeded(SecurityError):
    """A render went over one of the runaway limits; the message names the limit."""


class OutOfTime(BaseException):
    """Raised inside a rendering thread by the watchdog when its deadline passed."""


def out_of_time_message() -> str:
    return (
        f"it ran for more than {MAX_RENDER_SECONDS:g} second, the limit; "
        "loop over less, or move the work into Stockaj"
    )


@dataclass(slots=True)
class Budget:
    """What is left to one render."""

    deadline: float = field(default_factory=lambda: time.monotonic() + MAX_RENDER_SECONDS)
    steps: int = MAX_STEPS
    output: int = MAX_TEXT_CHARS
    range_items: int = MAX_RANGE_ITEMS
    depth: int = 0
    _until_clock: int = _CLOCK_EVERY

    def spend(self, steps: int = 1) -> None:
        self.steps -= steps
        if self.steps < 0:
            raise LimitExceeded(
                f"more than {MAX_STEPS:,} steps (loop turns and operations), the limit; "
                "loop over less, or move the work into Stockaj"
            )
        self._until_clock -= steps
        if self._until_clock <= 0:
            self._until_clock = _CLOCK_EVERY
            if time.monotonic() > self.deadline:
                raise LimitExceeded(out_of_time_message())

    def emit(self, text: str) -> str:
        """Count a piece of output (of the template, a macro or a block) as it is produced."""
        self.output -= len(text)
        if self.output < 0:
            raise LimitExceeded(
                f"the template produces more than {MAX_TEXT_CHARS:,} characters, the limit "
                "(text made inside macros and blocks counts too)"
            )
        return text

    def take_range(self, count: int) -> None:
        self.range_items -= count
        if self.range_items < 0:
            raise LimitExceeded(
                f"range() asked for more than {MAX_RANGE_ITEMS:,} items in one template, the limit; "
                "loop over the payload's own lists instead"
            )


_current: contextvars.ContextVar[Budget] = contextvars.ContextVar("template_budget")


def current() -> Budget:
    """The budget of the render under way; outside one (Jinja folding constants), a fresh one."""
    budget = _current.get(None)
    return budget if budget is not None else Budget()


def start(budget: Budget) -> contextvars.Token[Budget]:
    return _current.set(budget)


def finish(token: contextvars.Token[Budget]) -> None:
    _current.reset(token)


# --- sizes -------------------------------------------------------------------------------


def number_digits(value: int) -> int:
    """The digits of an int (an upper bound, without converting it to text)."""
    return value.bit_length() * 30103 // 100000 + 1


def measure(value: object, max_chars: int = MAX_TEXT_CHARS, max_items: int = MAX_ITEMS) -> tuple[int, int]:
    """About how many characters the value's text has, and how many items it holds, nested ones too.

    Stops counting once past `max_chars` or `max_items`, so a huge value costs no more to
    measure than a value at the limit. Shared references count every time they appear,
    as they would in the value's JSON.
    """
    chars = items = 0
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            chars += len(item)
        elif item is None or isinstance(item, bool):
            chars += 5
        elif isinstance(item, int):
            chars += number_digits(item) + 1
        elif isinstance(item, float):
            chars += 24
        elif isinstance(item, list | tuple | Mapping | range):
            items += len(item) * (2 if isinstance(item, Mapping) else 1)
            chars += 2 + 2 * len(item)
            if items > max_items or chars > max_chars:
                break
            if isinstance(item, Mapping):
                stack.extend(item.keys())
                stack.extend(item.values())
            elif not isinstance(item, range):
                stack.extend(item)
            else:
                chars += len(item) * 6
        else:
            chars += 32
        if chars > max_chars or items > max_items:
            break
    return chars, items


def check_text(length: int, what: str) -> None:
    """Refuse, before it is built, a text of `length` characters over the limit."""
    if length > MAX_TEXT_CHARS:
        raise LimitExceeded(f"{what} would make {length:,} characters, over the {MAX_TEXT_CHARS:,} limit")


def check_items(count: int, what: str) -> None:
    if count > MAX_ITEMS:
        raise LimitExceeded(f"{what} would make {count:,} items, over the {MAX_ITEMS:,} limit")


def check_number(digits: int, what: str) -> None:
    if digits > MAX_NUMBER_DIGITS:
        raise LimitExceeded(
            f"{what} would make a number of about {digits:,} digits, over the {MAX_NUMBER_DIGITS:,} limit"
        )


def check_value(value: object, what: str, times: int = 1) -> None:
    """Refuse a value (or `times` copies of it) bigger than the limits."""
    if isinstance(value, int) and not isinstance(value, bool):
        check_number(number_digits(value), what)
        return
    times = max(times, 1)
    chars, items = measure(value, MAX_TEXT_CHARS // times + 1, MAX_ITEMS // times + 1)
    # Counting stopped at the limit: say "more than", not a number that would be wrong.
    if chars * times > MAX_TEXT_CHARS:
        raise LimitExceeded(f"{what} would make more than {MAX_TEXT_CHARS:,} characters, the limit")
    if items * times > MAX_ITEMS:
        raise LimitExceeded(f"{what} would make more than {MAX_ITEMS:,} items, the limit")


# --- the deadline ------------------------------------------------------------------------

_REFIRE_SECONDS = 0.05
_set_async_exc = ctypes.pythonapi.PyThreadState_SetAsyncExc
_set_async_exc.argtypes = (ctypes.c_ulong, ctypes.py_object)
_set_async_exc.restype = ctypes.c_int


@dataclass(slots=True, eq=False)
class _Watch:
    thread_id: int
    deadline: float
    fired: bool = False
    leaving: bool = False  # set (by a plain store, which nothing interrupts) before disarming


class _Watchdog:
    """One daemon thread that raises `OutOfTime` in rendering threads past their deadline."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._watches: set[_Watch] = set()
        self._next_check = math.inf
        self._thread: threading.Thread | None = None

    def arm(self, watch: _Watch) -> None:
        with self._lock:
            self._watches.add(watch)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="template-deadline", daemon=True)
                self._thread.start()
            elif watch.deadline < self._next_check:
                self._wake.notify()

    def disarm(self, watch: _Watch) -> bool:
        """Stop watching; True when the watchdog already fired at this watch's thread."""
        with self._lock:
            self._watches.discard(watch)
            return watch.fired

    def _run(self) -> None:
        with self._lock:
            while True:
                now = time.monotonic()
                for watch in [w for w in self._watches if w.deadline <= now and not w.leaving]:
                    # Fired again until the render ends: one that lands in code run implicitly in
                    # that thread (a gc callback, a __del__) is dropped by Python, not raised.
                    watch.fired = True
                    watch.deadline = now + _REFIRE_SECONDS
                    _set_async_exc(watch.thread_id, ctypes.py_object(OutOfTime))
                self._next_check = min((w.deadline for w in self._watches if not w.leaving), default=math.inf)
                self._wake.wait(None if self._next_check == math.inf else self._next_check - now)

    def forget_thread(self) -> None:
        """In a forked child the thread is gone: start a new one when next needed."""
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._watches = set()
        self._thread = None
        self._next_check = math.inf


_watchdog = _Watchdog()
os.register_at_fork(after_in_child=_watchdog.forget_thread)
_previous_unraisable_hook = sys.unraisablehook


def _drop_out_of_time(unraisable: Any) -> None:
    """An `OutOfTime` that landed in a gc callback or a __del__ is no error: the watchdog fires again."""
    if not isinstance(unraisable.exc_value, OutOfTime):
        _previous_unraisable_hook(unraisable)


sys.unraisablehook = _drop_out_of_time


class Deadline:
    """Raises `OutOfTime` in this thread, from `arm()` until it leaves, once `deadline` has passed.

    The watchdog raises asynchronously, at any point of the thread's Python code, so leaving
    follows a protocol that lets none escape into unrelated code:

        deadline = Deadline(at)
        try:
            try:
                deadline.arm()
                ...
            finally:
                deadline.watch.leaving = True  # a plain store: nothing is raised before it
                deadline.disarm()
        except OutOfTime:
            deadline.disarm()  # it may have been raised as disarm() was entered
            ...

    Once `leaving` is set the watchdog fires no more; `disarm()` stops the watch under the
    watchdog's lock and clears an `OutOfTime` set just before. One set earlier and not yet
    raised is raised at the latest as `disarm()` is entered: it is the `except` clause's.
    """

    __slots__ = ("watch",)

    def __init__(self, deadline: float) -> None:
        self.watch = _Watch(threading.get_ident(), deadline)

    def arm(self) -> None:
        _watchdog.arm(self.watch)

    def disarm(self) -> None:
        self.watch.leaving = True
        if _watchdog.disarm(self.watch):
            _set_async_exc(self.watch.thread_id, ctypes.py_object())  # NULL: clear a pending one
