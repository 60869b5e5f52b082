"""Executing one rendered action: the plugin's run, its failure sorted, its retry planned.

A run that raises `ActionFailed` is transient (connection errors, timeouts, 408,
429, 5xx) or not; a transient failure is retried after a full-jitter exponential
backoff, never sooner than the server's Retry-After, up to `max_attempts`
(engine/pipeline/retry.py). Any other exception is a plugin's bug: the action
fails, the worker goes on. Each execution leaves one row for the action ledger
(params and errors masked), which the worker records (engine/pipeline/worker.py).
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timedelta

import httpx

from actions.base import ActionContext, ActionFailed, Clock, DatabaseEngines
from engine.config_plugins import PluginSettings
from engine.language.matching import PlannedAction
from engine.language.outgoing_urls import allowed_origins
from engine.language.rules import Rule
from engine.pipeline.metrics import Metrics
from engine.pipeline.retry import RetryPolicy
from engine.secrets import Masker
from engine.store import ActionRun
from engine.store.tables import ActionStatus

log = logging.getLogger(__name__)


class ActionExecutor:
    """Runs planned actions with what they may use (engine/pipeline/worker.py decides which, and when)."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        databases: DatabaseEngines,
        action_settings: PluginSettings,
        masker: Masker,
        metrics: Metrics,
        retry: RetryPolicy,
        clock: Clock,
    ) -> None:
        self._http = http
        self._databases = databases
        self._settings = action_settings
        self._masker = masker
        self._metrics = metrics
        self._retry = retry
        self._clock = clock

    async def execute(
        self, delivery_id: str, rule: Rule, planned: PlannedAction, previous: ActionRun | None
    ) -> ActionRun:
        """Run one action; the ledger row it leaves (not saved yet)."""
        attempts = (previous.attempts if previous else 0) + 1
        started = time.perf_counter()
        status, error, response_status, next_attempt = await self._attempt(
            delivery_id, rule, planned, attempts
        )
        self._metrics.action_runs.labels(planned.type, status.value).inc()
        self._metrics.action_latency.labels(planned.type).observe(time.perf_counter() - started)
        return ActionRun(
            rule_id=rule.id,
            action_index=planned.index,
            type=planned.type,
            status=status,
            params=self._masker.mask(planned.params),
            attempts=attempts,
            last_error=self._masker.mask(error),
            response_status=response_status,
            next_attempt_at=next_attempt,
            updated_at=self._clock(),
        )

    async def _attempt(
        self, delivery_id: str, rule: Rule, planned: PlannedAction, attempts: int
    ) -> tuple[ActionStatus, str | None, int | None, datetime | None]:
        """Run the action once: (status, error, response status, when to try again)."""
        if planned.error is not None or planned.validated is None:
            return ActionStatus.FAILED, planned.error or "params were not validated", None, None
        plugin = rule.actions[planned.index].plugin
        settings = self._settings.for_action(type(plugin))
        ctx = ActionContext(
            http=self._http,
            databases=self._databases,
            delivery_id=delivery_id,
            rule_id=rule.id,
            action_index=planned.index,
            clock=self._clock,
            allowed_origins=allowed_origins(plugin, planned.origins, settings),
            settings=settings,
        )
        try:
            result = await plugin.run(planned.validated, ctx)
        except ActionFailed as exc:
            if not exc.transient or attempts >= self._retry.max_attempts:
                return ActionStatus.FAILED, str(exc), exc.status, None
            delay = self._retry.delay(attempts, exc.retry_after)
            if delay is None:
                error = (
                    f"{exc}; the server asked to wait {exc.retry_after:g} s (Retry-After), over the "
                    f"{self._retry.max_retry_after_seconds:g} s limit, so it is not retried"
                )
                return ActionStatus.FAILED, error, exc.status, None
            return ActionStatus.PENDING, str(exc), exc.status, self._clock() + timedelta(seconds=delay)
        except Exception as exc:  # a plugin bug must not take the worker down
            log.exception(
                "action %s of rule %s crashed", planned.type, rule.id, extra={"delivery_id": delivery_id}
            )
            return ActionStatus.FAILED, f"unexpected error: {type(exc).__name__}: {exc}", None, None
        return ActionStatus.SUCCEEDED, None, result.status, None

    def skipped(self, rule: Rule, planned: PlannedAction) -> ActionRun:
        return ActionRun(
            rule_id=rule.id,
            action_index=planned.index,
            type=planned.type,
            status=ActionStatus.SKIPPED,
            params=self._masker.mask(planned.params),
            attempts=0,
            last_error="skipped: an earlier action of this rule failed",
            response_status=None,
            next_attempt_at=None,
            updated_at=self._clock(),
        )
