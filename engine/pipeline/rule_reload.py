"""The rules a running process uses, reloaded when RULES_DIR changes.

A broken file never takes the engine down: the last good rule set stays
active, the problems are logged with file:line and what is wrong, and
`/readyz` reports where they are (never what the files say).

Nothing in the folder may stop the process answering, so a reload runs in a
thread of its own beside the event loop (a daemon thread: a SIGTERM during a
long load is not kept waiting for it), only reads files that changed, and
while webhook requests are in hand takes at most a quarter of the
interpreter's time (`yield_to`).
A file is loaded once it is stable: a change is taken up when no rule file
has changed for SETTLE_SECONDS, so a copy in progress is not loaded half
written (an atomic rename into the folder is the safe way to deploy; see
docs/operations.md). A reload that drops rules loaded before says so loudly.

Changes are noticed through filesystem events: watching an unchanged folder
costs nothing. Once, as the watch starts, the files are compared with what
was loaded, for an edit made while the process was starting. Filesystems
whose events do not arrive (some network and container mounts) need
WATCHFILES_FORCE_POLLING=true, read by watchfiles itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TypeVar

import watchfiles

from actions.registry import ActionRegistry
from engine.errors import SourceErrors, SourceProblem
from engine.language.loader import FileCache, load_rules
from engine.language.rules import Rule, RuleSet
from engine.language.source_files import Stamp, find_source_files
from engine.pipeline.metrics import Metrics

log = logging.getLogger(__name__)

DEBOUNCE_MS = 300
CHECK_EVERY_MS = 1000  # how often the watch looks whether the folder itself is still there
REWATCH_SECONDS = 1.0
SETTLE_SECONDS = 1.0
STILL_CHANGING_WARNING_SECONDS = 30.0
MAX_LOCATIONS_SHOWN = 20
MAX_IDS_SHOWN = 100
LOADING_SWITCH_INTERVAL = 0.0005
RELOAD_SHARE = 0.25  # of the interpreter, while the receiver is busy
RELEASE_CHUNK = 100

T = TypeVar("T")
Stamps = dict[str, Stamp | None]


class LiveRules:
    """The current rule set, and where the newest files were refused, if they were."""

    def __init__(self, rules_dir: Path, registry: ActionRegistry, metrics: Metrics) -> None:
        self._dir = rules_dir
        self._registry = registry
        self._metrics = metrics
        self._cache: FileCache = {}
        self._lock = threading.Lock()  # one load at a time, whoever asks
        self._receiver_busy: Callable[[], bool] | None = None
        self._paced_at = 0.0
        self.current = load_rules(rules_dir, registry, self._cache)  # at start, broken rules are fatal
        self.error: str | None = None  # for /readyz: where, never what the files say
        self.problems: tuple[str, ...] = ()  # "file:line:column", relative to the folder
        self._frozen_after_compaction = _compact()

    def __call__(self) -> RuleSet:
        return self.current

    def yield_to(self, receiver_busy: Callable[[], bool]) -> None:
        """While `receiver_busy()` (called from the reload's thread), a reload goes slower: see `_pace`."""
        self._receiver_busy = receiver_busy

    def _pace(self) -> None:
        """Called between two pieces of loading: while the receiver has requests in hand, a
        reload takes at most RELOAD_SHARE of the interpreter's time (it sleeps, releasing it,
        for the rest), so it still ends under a steady stream of requests."""
        now = time.perf_counter()
        worked, self._paced_at = now - self._paced_at, now
        busy = self._receiver_busy
        if busy is not None and busy() and 0 < worked < 1:
            time.sleep(worked * (1 - RELOAD_SHARE) / RELOAD_SHARE)
            self._paced_at = time.perf_counter()

    def reload(self) -> bool:
        """Load the files again; keep the last good set when they are broken. Blocks: see `watch`."""
        with self._lock, _sharing_the_interpreter():
            return self._reload()

    def _reload(self) -> bool:
        try:
            rules = load_rules(self._dir, self._registry, self._cache, self._pace)
        except SourceErrors as exc:
            self.problems = tuple(self._where(problem) for problem in exc.problems)
            self.error = self._summary(exc.problems)
            self._metrics.rules_reload_failures.inc()
            log.error("rule files are broken; the last good rules stay active:\n%s", exc)
            return False
        dropped = sorted(set(self.current.ids()) - set(rules.ids()))
        replaced = list(self.current.rules)
        self.current, self.error, self.problems = rules, None, ()
        _release(replaced)
        self._freeze()
        if dropped:
            log.warning(
                "rules reloaded without %d rule(s) that were loaded before: %s; "
                "if they were not meant to go, put their files back in %s",
                len(dropped),
                _listed(dropped, MAX_IDS_SHOWN),
                self._dir,
            )
        log.info("rules reloaded: %d rule(s) from %d file(s)", len(rules), len(rules.files))
        return True

    def _freeze(self) -> None:
        """Move the new rules out of the collector's scans, which would otherwise pause every thread.

        Replaced rules hold no reference cycles (see templates._acyclic), so reference
        counting frees them and a freeze is enough. Should something leave cycles
        anyway, a full collection runs once the frozen objects have doubled.
        """
        if gc.get_freeze_count() > 2 * self._frozen_after_compaction:
            self._frozen_after_compaction = _compact()
        else:
            gc.freeze()

    async def watch(self) -> None:
        """Reload on every change under the rules folder (runs until cancelled).

        A folder removed and created again (a deploy that replaces it) is watched
        anew: a watch on the removed folder would never report anything again.
        """
        while True:
            try:
                await self._watch_folder()
            except Exception as exc:  # the watch itself failed: never stop reloading for good
                log.warning(
                    "watching %s failed (%s: %s); watching again in %gs",
                    self._dir,
                    type(exc).__name__,
                    exc,
                    REWATCH_SECONDS,
                )
                await asyncio.sleep(REWATCH_SECONDS)
            if not self._dir.is_dir():
                await in_thread(self.reload)  # /readyz says the folder is gone; the last rules stay
                await self._folder_back()
            await self._settle()
            await in_thread(self.reload)

    async def _watch_folder(self) -> None:
        """Reload on changes until the folder goes away."""
        started = False
        async for changes in watchfiles.awatch(
            self._dir,
            debounce=DEBOUNCE_MS,
            step=100,
            rust_timeout=CHECK_EVERY_MS,
            yield_on_timeout=True,  # an empty set every CHECK_EVERY_MS without events
        ):
            if changes or (not started and await in_thread(self._changed_since_loaded)):
                await self._settle()
                await in_thread(self.reload)
            started = True
            if not self._dir.is_dir():
                return

    async def _settle(self) -> None:
        """Return once no rule file has changed for SETTLE_SECONDS (at once when none is new)."""
        seen = await in_thread(self._stamps)
        waited = 0.0
        while self._fresh(seen):
            await asyncio.sleep(SETTLE_SECONDS)
            waited += SETTLE_SECONDS
            now = await in_thread(self._stamps)
            if now == seen:
                return
            if waited >= STILL_CHANGING_WARNING_SECONDS:
                changing = sorted(path for path in now if now[path] != seen.get(path))
                log.warning("rule files still changing after %.0fs, not loaded yet: %s", waited, changing)
                waited = 0.0
            seen = now

    def _fresh(self, stamps: Stamps) -> bool:
        """Whether a file changed since it was loaded was modified less than SETTLE_SECONDS ago."""
        now = time.time_ns()
        return any(
            stamp is not None
            and (path not in self._cache or self._cache[path][0] != stamp)
            and now - stamp.mtime_ns < SETTLE_SECONDS * 1e9
            for path, stamp in stamps.items()
        )

    def _stamps(self) -> Stamps:
        paths, _ = find_source_files(self._dir) if self._dir.is_dir() else ([], [])
        return {str(path): Stamp.of(path) for path in paths}

    def _changed_since_loaded(self) -> bool:
        loaded = {path: stamp for path, (stamp, _) in self._cache.items()}
        return self._stamps() != loaded

    async def _folder_back(self) -> None:
        """Return once the rules folder exists (polled: there is no folder to watch meanwhile)."""
        while True:
            if self._dir.is_dir():
                await asyncio.sleep(DEBOUNCE_MS / 1000)  # let the copy that brought it back settle
                return
            await asyncio.sleep(REWATCH_SECONDS)

    def _where(self, problem: SourceProblem) -> str:
        path = Path(problem.path)
        with contextlib.suppress(ValueError):
            path = path.relative_to(self._dir)
        return f"{path.as_posix()}:{problem.line}:{problem.column}"

    def _summary(self, problems: list[SourceProblem]) -> str:
        if not self._dir.is_dir():
            return f"rules folder not found: {self._dir}; the last good rules stay active"
        where = _listed(self.problems, MAX_LOCATIONS_SHOWN)
        return (
            f"{len(problems)} problem(s) in the rule files, at {where}; the last good rules stay "
            "active; the log and `stockaj-rules check` say what is wrong"
        )


async def in_thread(work: Callable[[], T]) -> T:
    """`work()` in a daemon thread of its own, awaited without holding the event loop.

    Not the loop's executor: its threads are joined when the process exits, so a
    SIGTERM would wait for a long load to finish. Cancelled, the caller stops
    waiting; the thread finishes on its own.
    """
    loop = asyncio.get_running_loop()
    done: asyncio.Future[T] = loop.create_future()

    def deliver(outcome: Callable[[], None]) -> None:
        if not done.done():
            outcome()

    def run() -> None:
        outcome: Callable[[], None]
        try:
            result = work()
        except BaseException as exc:
            outcome = functools.partial(done.set_exception, exc)
        else:
            outcome = functools.partial(done.set_result, result)
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody waits
            loop.call_soon_threadsafe(deliver, outcome)

    threading.Thread(target=run, name="rules-reload", daemon=True).start()
    return await done


def _listed(items: Sequence[str], limit: int) -> str:
    """The first `limit` of `items`, and how many more there are."""
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def _compact() -> int:
    """Collect everything, then keep the long-lived objects (modules, rules) out of later scans.

    Returns how many objects are frozen.
    """
    gc.unfreeze()
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


@contextlib.contextmanager
def _sharing_the_interpreter() -> Iterator[None]:
    """While a reload thread loads, the event loop's thread waits little for the interpreter.

    Switching threads every 0.5 ms instead of 5 ms bounds what a request waits for a
    loading thread; the cyclic collector is paused, since each of its passes would
    scan the half-built rule set while holding every thread (loading makes no cycles),
    until the new rules are frozen out of its reach.
    """
    interval = sys.getswitchinterval()
    collecting = gc.isenabled()
    sys.setswitchinterval(min(interval, LOADING_SWITCH_INTERVAL))
    gc.disable()
    try:
        yield
    finally:
        sys.setswitchinterval(interval)
        if collecting:
            gc.enable()


def _release(rules: list[Rule]) -> None:
    """Drop the last references to replaced rules a few at a time, letting other threads run between."""
    while rules:
        del rules[-RELEASE_CHUNK:]
        time.sleep(0)
