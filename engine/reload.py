"""The rules a running process uses, reloaded when RULES_DIR changes.

A broken file never takes the engine down: the last good rule set stays
active, the problems are logged with file:line, and `/readyz` reports them
until the files are fixed.
"""

from __future__ import annotations

import gc
import logging
from pathlib import Path

import watchfiles

from actions.registry import ActionRegistry
from engine.errors import SourceErrors
from engine.loader import load_rules
from engine.metrics import Metrics
from engine.rules import RuleSet

log = logging.getLogger(__name__)


class LiveRules:
    """The current rule set, and why the newest files were refused, if they were."""

    def __init__(self, rules_dir: Path, registry: ActionRegistry, metrics: Metrics) -> None:
        self._dir = rules_dir
        self._registry = registry
        self._metrics = metrics
        self.current = load_rules(rules_dir, registry)  # at start, broken rules are fatal
        self.error: str | None = None
        gc.freeze()

    def __call__(self) -> RuleSet:
        return self.current

    def reload(self) -> bool:
        """Load the files again; keep the last good set when they are broken."""
        try:
            rules = load_rules(self._dir, self._registry)
        except SourceErrors as exc:
            self.error = str(exc)
            self._metrics.rules_reload_failures.inc()
            log.error("rule files are broken; the last good rules stay active:\n%s", exc)
            return False
        self.current, self.error = rules, None
        gc.freeze()
        log.info("rules reloaded: %d rule(s) from %d file(s)", len(rules), len(rules.files))
        return True

    async def watch(self) -> None:
        """Reload on every change under the rules folder (runs until cancelled)."""
        async for _changes in watchfiles.awatch(self._dir, debounce=300, step=100):
            self.reload()
