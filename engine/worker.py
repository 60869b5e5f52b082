"""Process one stored delivery: match, render, execute, record.

The matching is exactly what `stockaj-rules test` runs (engine.matching); here
the rendered actions are executed for real and every step is recorded. The
action ledger makes actions effectively once: an action recorded `succeeded`
for (delivery, rule, action index) is never run again for that delivery,
whatever crashes, retries or redeliveries happen. A rule's actions run in
order; one that fails for good stops the rule's later actions (`skipped`).

Transient failures (connection errors, timeouts, 408, 429, 5xx) are retried
with exponential backoff and full jitter, never sooner than the server's
Retry-After, up to `max_attempts`; the delivery stays `processing` meanwhile,
with `due_at` set so a lost retry is picked up by the sweeper.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import httpx

from actions.base import ActionContext, ActionDefaults, ActionFailed, DatabaseEngines
from engine.delivery import Delivery
from engine.matching import Matcher, PlannedAction, RuleOutcome
from engine.metrics import Metrics
from engine.rules import Rule, RuleSet
from engine.secrets import Masker, Secrets
from engine.store import ActionRun, Store
from engine.tables import PENDING_STATUSES, ActionStatus, DeliveryStatus

log = logging.getLogger(__name__)

MAX_BACKOFF_SECONDS = 3600.0


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int = 8
    base_seconds: float = 1.0

    def delay(self, attempt: int, retry_after: float | None) -> float:
        """Full-jitter exponential backoff, never sooner than the server asked."""
        backoff = random.uniform(0, min(MAX_BACKOFF_SECONDS, self.base_seconds * 2 ** (attempt - 1)))
        return min(MAX_BACKOFF_SECONDS, max(backoff, retry_after or 0.0))


class StoreThrottle:
    """Throttle slots in the store, so a limit holds across every worker."""

    def __init__(self, store: Store, delivery_id: str) -> None:
        self._store = store
        self._delivery_id = delivery_id

    async def acquire(self, rule_id: str, key: str, window: timedelta, now: datetime) -> datetime | None:
        return await self._store.acquire_throttle(rule_id, key, window, now, self._delivery_id)


def _utc_now() -> datetime:
    return datetime.now(UTC)


class DeliveryProcessor:
    """Runs stored deliveries through the current rules, with real side effects."""

    def __init__(
        self,
        store: Store,
        rules: Callable[[], RuleSet],
        http: httpx.AsyncClient,
        databases: DatabaseEngines,
        defaults: ActionDefaults,
        secrets: Mapping[str, str],
        masker: Masker,
        metrics: Metrics,
        retry: RetryPolicy,
        requeue_after: timedelta,
        clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        self._store = store
        self._rules = rules
        self._http = http
        self._databases = databases
        self._defaults = defaults
        self._secrets = Secrets(secrets)
        self._masker = masker
        self._metrics = metrics
        self._retry = retry
        self._requeue_after = requeue_after
        self._clock = clock

    async def process(self, delivery_id: str) -> float | None:
        """Process a delivery; the seconds until it must be processed again, or None when finished."""
        stored = await self._store.get(delivery_id)
        if stored is None or stored.status not in PENDING_STATUSES:
            return None  # unknown, or finished by an earlier job: nothing to do
        now = self._clock()
        await self._store.start_run(delivery_id, now, due_at=now + self._requeue_after)
        delivery = Delivery(stored.event, delivery_id, json.loads(stored.body or b"{}"), stored.headers)
        matcher = Matcher(self._rules(), StoreThrottle(self._store, delivery_id), self._secrets, self._clock)
        outcomes = await matcher.match(delivery)
        await self._store.record_outcomes(
            delivery_id, ((o.rule.id, o.status.value, self._masker.mask(o.reason)) for o in outcomes), now
        )
        for outcome in outcomes:
            self._metrics.rule_outcomes.labels(outcome.status.value).inc()
        ledger = await self._store.action_runs(delivery_id)
        wait: float | None = None
        failed = False
        for outcome in outcomes:
            if outcome.fired:
                rule_wait, rule_failed = await self._run_rule(delivery_id, outcome, ledger)
                failed |= rule_failed
                if rule_wait is not None:
                    wait = rule_wait if wait is None else min(wait, rule_wait)
        return await self._finish(delivery, outcomes, wait, failed, stored.received_at)

    async def _finish(
        self,
        delivery: Delivery,
        outcomes: list[RuleOutcome],
        wait: float | None,
        failed: bool,
        received_at: datetime,
    ) -> float | None:
        now = self._clock()
        if wait is not None:
            due = now + timedelta(seconds=wait) + self._requeue_after
            await self._store.finish_run(delivery.delivery_id, DeliveryStatus.PROCESSING, now, due, None)
            return wait
        if not any(o.fired for o in outcomes):
            status = DeliveryStatus.NO_MATCH
        else:
            status = DeliveryStatus.FAILED if failed else DeliveryStatus.DONE
        error = "an action failed; see its last_error" if failed else None
        await self._store.finish_run(delivery.delivery_id, status, now, None, error)
        self._metrics.deliveries_processed.labels(delivery.event, status.value).inc()
        self._metrics.processing_lag.observe((now - received_at).total_seconds())
        log.info(
            "delivery %s",
            status.value,
            extra={
                "delivery_id": delivery.delivery_id,
                "stockaj_event": delivery.event,
                "status": status.value,
                "fired": [o.rule.id for o in outcomes if o.fired],
            },
        )
        return None

    async def _run_rule(
        self, delivery_id: str, outcome: RuleOutcome, ledger: dict[tuple[str, int], ActionRun]
    ) -> tuple[float | None, bool]:
        """Run a fired rule's actions in order; (seconds to wait for a retry, whether one failed)."""
        rule = outcome.rule
        for position, planned in enumerate(outcome.actions):
            run = ledger.get((rule.id, planned.index))
            if run is not None and run.status is ActionStatus.SUCCEEDED:
                continue
            if run is not None and run.status in (ActionStatus.FAILED, ActionStatus.SKIPPED):
                return None, True
            now = self._clock()
            if run is not None and run.next_attempt_at is not None and run.next_attempt_at > now:
                return (run.next_attempt_at - now).total_seconds(), False
            run = await self._execute(delivery_id, rule, planned, run)
            if run.status is ActionStatus.PENDING:
                assert run.next_attempt_at is not None
                return max(0.0, (run.next_attempt_at - self._clock()).total_seconds()), False
            if run.status is ActionStatus.FAILED:
                for later in outcome.actions[position + 1 :]:
                    await self._skip(delivery_id, rule, later)
                return None, True
        return None, False

    async def _execute(
        self, delivery_id: str, rule: Rule, planned: PlannedAction, previous: ActionRun | None
    ) -> ActionRun:
        attempts = (previous.attempts if previous else 0) + 1
        params = self._masker.mask(planned.params)
        started = time.perf_counter()
        status, error, response_status, next_attempt = ActionStatus.SUCCEEDED, None, None, None
        if planned.error is not None or planned.validated is None:
            status, error = ActionStatus.FAILED, planned.error or "params were not validated"
        else:
            plugin = rule.actions[planned.index].plugin
            ctx = ActionContext(
                self._http, self._databases, self._defaults, delivery_id, rule.id, planned.index, self._clock
            )
            try:
                result = await plugin.run(planned.validated, ctx)
                response_status = result.status
            except ActionFailed as exc:
                error, response_status = self._masker.mask(str(exc)), exc.status
                if exc.transient and attempts < self._retry.max_attempts:
                    status = ActionStatus.PENDING
                    next_attempt = self._clock() + timedelta(
                        seconds=self._retry.delay(attempts, exc.retry_after)
                    )
                else:
                    status = ActionStatus.FAILED
            except Exception as exc:  # a plugin bug must not take the worker down
                log.exception(
                    "action %s of rule %s crashed", planned.type, rule.id, extra={"delivery_id": delivery_id}
                )
                status, error = (
                    ActionStatus.FAILED,
                    self._masker.mask(f"unexpected error: {type(exc).__name__}: {exc}"),
                )
        self._metrics.action_runs.labels(planned.type, status.value).inc()
        self._metrics.action_latency.labels(planned.type).observe(time.perf_counter() - started)
        run = ActionRun(
            rule.id,
            planned.index,
            planned.type,
            status,
            params,
            attempts,
            error,
            response_status,
            next_attempt,
            self._clock(),
        )
        await self._store.save_action_run(delivery_id, run)
        return run

    async def _skip(self, delivery_id: str, rule: Rule, planned: PlannedAction) -> None:
        reason = "skipped: an earlier action of this rule failed"
        run = ActionRun(
            rule.id,
            planned.index,
            planned.type,
            ActionStatus.SKIPPED,
            self._masker.mask(planned.params),
            0,
            reason,
            None,
            None,
            self._clock(),
        )
        await self._store.save_action_run(delivery_id, run)
