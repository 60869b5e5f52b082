"""The rules a running process uses, reloaded when RULES_DIR changes.

A broken file never takes the engine down: the last good rule set stays
active, the problems are logged with file:line, and `/readyz` reports them
until the files are fixed.

Changes are noticed through filesystem events, and every second the rule
files' sizes and modification times are compared with what was last loaded:
that catches an edit made while the process was starting, before the watch
was in place, and filesystems whose events do not arrive.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from pathlib import Path

import watchfiles

from actions.registry import ActionRegistry
from engine.errors import SourceErrors
from engine.loader import load_rules
from engine.metrics import Metrics
from engine.rules import RuleSet
from engine.sources import find_source_files

log = logging.getLogger(__name__)

DEBOUNCE_MS = 300
CHECK_EVERY_MS = 1000
REWATCH_SECONDS = 1.0

Fingerprint = frozenset[tuple[str, int, int]]


class LiveRules:
    """The current rule set, and why the newest files were refused, if they were."""

    def __init__(self, rules_dir: Path, registry: ActionRegistry, metrics: Metrics) -> None:
        self._dir = rules_dir
        self._registry = registry
        self._metrics = metrics
        self._loaded = _fingerprint(rules_dir)  # taken before reading: a change while loading shows
        self.current = load_rules(rules_dir, registry)  # at start, broken rules are fatal
        self.error: str | None = None
        _freeze()

    def __call__(self) -> RuleSet:
        return self.current

    def reload(self) -> bool:
        """Load the files again; keep the last good set when they are broken."""
        self._loaded = _fingerprint(self._dir)
        try:
            rules = load_rules(self._dir, self._registry)
        except SourceErrors as exc:
            self.error = str(exc)
            self._metrics.rules_reload_failures.inc()
            log.error("rule files are broken; the last good rules stay active:\n%s", exc)
            return False
        self.current, self.error = rules, None
        _freeze()
        log.info("rules reloaded: %d rule(s) from %d file(s)", len(rules), len(rules.files))
        return True

    async def watch(self) -> None:
        """Reload on every change under the rules folder (runs until cancelled).

        A folder removed and created again (a deploy that replaces it) is watched
        anew: a watch on the removed folder would never report anything again.
        """
        while True:
            try:
                async for changes in watchfiles.awatch(
                    self._dir,
                    debounce=DEBOUNCE_MS,
                    step=100,
                    rust_timeout=CHECK_EVERY_MS,
                    yield_on_timeout=True,  # an empty set every CHECK_EVERY_MS without events
                ):
                    if changes or _fingerprint(self._dir) != self._loaded:
                        self.reload()
                    if not self._dir.is_dir():
                        break
            except Exception as exc:  # the watch itself failed: never stop reloading for good
                log.warning(
                    "watching %s failed (%s: %s); watching again in %gs",
                    self._dir,
                    type(exc).__name__,
                    exc,
                    REWATCH_SECONDS,
                )
                await asyncio.sleep(REWATCH_SECONDS)
            await self._folder_back()
            self.reload()

    async def _folder_back(self) -> None:
        """Return once the rules folder exists (polled: there is no folder to watch meanwhile)."""
        while True:
            if self._dir.is_dir():
                await asyncio.sleep(DEBOUNCE_MS / 1000)  # let the copy that brought it back settle
                return
            await asyncio.sleep(REWATCH_SECONDS)


def _fingerprint(rules_dir: Path) -> Fingerprint:
    """The rule files a reload would read, with their sizes and modification times."""
    paths, _ = find_source_files(rules_dir)
    stamps = set()
    for path in paths:
        try:
            stat = path.stat()
        except OSError:  # gone meanwhile, or not a file: a reload will say what it is
            continue
        stamps.add((str(path), stat.st_mtime_ns, stat.st_size))
    return frozenset(stamps)


def _freeze() -> None:
    """Keep the long-lived objects (modules, the rule set) out of the collector's scans.

    Unfreezing and collecting first lets the replaced rule set, which holds
    reference cycles, be freed instead of frozen for the life of the process.
    """
    gc.unfreeze()
    gc.collect()
    gc.freeze()
