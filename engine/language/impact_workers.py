"""Impact on two cores: each rule set matched in a process of its own, beside the reading.

An impact over many deliveries and many changed rules is all rule evaluation, which holds the
interpreter: one process uses one core. Here the current rules are matched in one worker
process and the draft in another, each seeing every delivery in the order received (so
throttle windows hold as they would), while this process reads the next batches from the
store and compares the verdicts. The workers are started fresh (`spawn`: nothing of this
process's threads or connections is inherited) and load the rules from the same folders;
a rule that changed on disk meanwhile stops the impact with a message, rather than comparing
something else.
"""

from __future__ import annotations

import asyncio
import gc
import multiprocessing
from collections import deque
from collections.abc import AsyncIterable, Callable, Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

from engine.language.impact import Fired, ImpactReport, ImpactRun, StoredBody, fired_of, past_delivery
from engine.language.matching import Matcher
from engine.language.rules import RuleSet
from engine.language.throttle import InMemoryThrottleState
from engine.secrets import Secrets

IN_FLIGHT = 3  # batches handed to the workers ahead of the comparison

Row = tuple[str, str, dict[str, str], bytes, datetime]

_matcher: Matcher | None = None
_loop: asyncio.AbstractEventLoop | None = None
_problem: str | None = None
_batches = 0
GC_EVERY = 20


class RulesChanged(Exception):
    """A rule file changed on disk while the impact ran."""


def _start(folder: str, digests: dict[str, str], secrets: dict[str, str]) -> None:
    """In a worker: load the folder's rules and keep those of `digests`, which must be unchanged."""
    global _matcher, _loop, _problem
    from actions.registry import load_registry
    from engine.language.loader import load_rules

    try:
        rules = load_rules(Path(folder), load_registry())
    except Exception as exc:  # told with the first batch: an initializer's own error is lost
        _problem = f"the rules in {folder} no longer load ({exc}); run the impact again"
        return
    moved = sorted(i for i in digests if (r := rules.get(i)) is None or r.digest != digests[i])
    if moved:
        _problem = f"rules changed in {folder} while the impact ran: {', '.join(moved)}; run it again"
        return
    kept = tuple(rule for rule in rules.rules if rule.id in digests)
    _matcher = Matcher(RuleSet(kept), InMemoryThrottleState(), Secrets(secrets, placeholders=True))
    _loop = asyncio.new_event_loop()
    # A worker keeps its rules to the end and makes little lasting garbage: the cyclic collector
    # would rescan them again and again (half of a replay's time, bench/README.md); it runs
    # once per GC_EVERY batches instead.
    gc.freeze()
    gc.disable()


def _match(rows: list[Row]) -> list[Fired | None]:
    """In a worker: each row's fired rules (None for a body that is no JSON object)."""
    if _problem is not None:
        raise RulesChanged(_problem)
    assert _matcher is not None
    assert _loop is not None
    pasts = [past_delivery(*row) for row in rows]
    listened = [
        (past.delivery, past.received_at)
        for past in pasts
        if past is not None and _matcher.rules.ids_for_event(past.delivery.event)
    ]
    global _batches
    _batches += 1
    if _batches % GC_EVERY == 0:
        gc.collect()
    outcomes = iter(_loop.run_until_complete(_matcher.match_many(listened)))
    return [
        None
        if past is None
        else fired_of(next(outcomes))
        if _matcher.rules.ids_for_event(past.delivery.event)
        else {}
        for past in pasts
    ]


async def replay_side_by_side(
    run: ImpactRun,
    batches: AsyncIterable[Sequence[StoredBody]],
    folders: tuple[Path, Path],
    secrets: Mapping[str, str],
    progress: Callable[[int], None] | None = None,
) -> ImpactReport:
    """`engine.language.impact.impact` with each rule set matched in a worker process."""
    async with SideBySide(run, folders, secrets) as workers:
        async for batch in batches:
            await workers.feed(batch)
            if progress is not None:
                progress(len(batch))
        await workers.finish()
    return run.report(workers.unreadable)


class SideBySide:
    """The two worker processes of one impact run; use as an async context manager."""

    def __init__(self, run: ImpactRun, folders: tuple[Path, Path], secrets: Mapping[str, str]) -> None:
        context = multiprocessing.get_context("spawn")
        self._run = run
        self._pools: list[ProcessPoolExecutor] = []
        for rules, folder in zip((run.current, run.draft), folders, strict=True):
            digests = {rule.id: rule.digest for rule in rules.rules}
            self._pools.append(
                ProcessPoolExecutor(
                    1, context, initializer=_start, initargs=(str(folder), digests, dict(secrets))
                )
            )
        self._pending: deque[tuple[list[Row], Future[list[Fired | None]], Future[list[Fired | None]]]] = (
            deque()
        )
        self.unreadable: list[str] = []

    async def __aenter__(self) -> SideBySide:
        return self

    async def __aexit__(self, *_: Any) -> None:
        for pool in self._pools:
            pool.shutdown(wait=True, cancel_futures=True)

    async def feed(self, batch: Sequence[StoredBody]) -> None:
        rows: list[Row] = [(s.delivery_id, s.event, dict(s.headers), s.body, s.received_at) for s in batch]
        current, draft = (pool.submit(_match, rows) for pool in self._pools)
        self._pending.append((rows, current, draft))
        while len(self._pending) > IN_FLIGHT:
            await self._settle_oldest()

    async def finish(self) -> None:
        while self._pending:
            await self._settle_oldest()

    async def _settle_oldest(self) -> None:
        rows, current, draft = self._pending.popleft()
        before = await asyncio.wrap_future(current)
        after = await asyncio.wrap_future(draft)
        received = []
        for row, old, new in zip(rows, before, after, strict=True):
            if old is None or new is None:
                self.unreadable.append(row[0])
                continue
            received.append(row[4])
            self._run.record(row[0], old, new)
        self._run.count(received)
