"""Process one stored delivery: match, render, execute, record.

The matching is exactly what `stockaj-rules test` runs (engine.matching); here
the rendered actions are executed for real and every step is recorded. The
action ledger makes actions effectively once: an action recorded `succeeded`
for (delivery, rule, action index) is never run again for that delivery,
whatever crashes, retries or redeliveries happen. A rule's actions run in
order; one that fails for good stops the rule's later actions (`skipped`).
A redelivered delivery (reopened, so `received` again) gives its failed and
skipped actions a fresh start; only `redeliver --force` forgets the ledger.

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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import httpx

from actions.base import ActionContext, ActionDefaults, ActionFailed, Clock, DatabaseEngines, utc_now
from engine.delivery import Delivery
from engine.group_commit import GroupCommit
from engine.matching import Matcher, PlannedAction, RuleOutcome, RuleStatus
from engine.metrics import Metrics
from engine.rules import Rule, RuleSet
from engine.secrets import Masker, Secrets
from engine.store import ActionRun, Claim, Ledger, RunEnd, Store, StoredDelivery
from engine.tables import ActionStatus, DeliveryStatus

log = logging.getLogger(__name__)

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


class StoreThrottle:
    """Throttle slots in the store, so a limit holds across every worker.

    A rule that already fired for this delivery (it has rows in the ledger) keeps
    firing when the delivery is processed again: its slot may have passed to a
    later delivery meanwhile, but its own pending or failed actions still belong
    to that first firing and must not be abandoned as `throttled`.
    """

    def __init__(self, store: Store, delivery_id: str, fired_before: frozenset[str]) -> None:
        self._store = store
        self._delivery_id = delivery_id
        self._fired_before = fired_before

    async def acquire(self, rule_id: str, key: str, window: timedelta, now: datetime) -> datetime | None:
        if rule_id in self._fired_before:
            return None
        return await self._store.acquire_throttle(rule_id, key, window, now, self._delivery_id)


@dataclass(slots=True)
class _RunState:
    """What one pass over a delivery's fired rules left behind.

    `unsaved` holds ledger rows not written yet: they go to the store with the next
    action's claim extension, or with the run's finish, so that a delivery with one
    action costs two transactions (claim, finish) besides the action itself.
    """

    claim_due: datetime
    wait: float | None = None
    failures: int = 0
    first_failure: str | None = None
    unsaved: list[ActionRun] = field(default_factory=list)
    # Rules that could not be evaluated (RuleStatus.ERROR): (rule id, masked reason).
    rule_errors: list[tuple[str, str]] = field(default_factory=list)

    def waits(self, seconds: float) -> None:
        self.wait = seconds if self.wait is None else min(self.wait, seconds)

    def failed(self, rule_id: str, run: ActionRun) -> None:
        self.failures += 1
        if self.first_failure is None:
            self.first_failure = f"{rule_id} actions[{run.action_index}] ({run.type}): {run.last_error}"

    def error(self) -> str | None:
        if self.rule_errors:
            rule_id, reason = self.rule_errors[0]
            others = len(self.rule_errors) - 1 + self.failures
            more = f" (and {others} more failed; see the delivery's rules and actions)" if others else ""
            return f"rule {rule_id} could not be evaluated: {reason}{more}"
        if self.first_failure is None:
            return None
        more = f" (and {self.failures - 1} more)" if self.failures > 1 else ""
        return f"an action failed{more}: {self.first_failure}; see the delivery's actions"


def _payload(stored: StoredDelivery) -> dict[str, Any] | str:
    """The delivery's JSON body, or why it cannot be processed."""
    if stored.body is None:
        return (
            "the body of this delivery was purged by the retention settings, so it cannot be "
            "processed again; ask Stockaj to send the event again instead"
        )
    try:
        payload = json.loads(stored.body)
    except ValueError as exc:
        return f"the stored body is not JSON ({exc}); it cannot be processed"
    except RecursionError:
        return "the stored body is nested too deeply to read; it cannot be processed"
    if not isinstance(payload, dict):
        return f"the stored body is a JSON {type(payload).__name__}, not an object; it cannot be processed"
    return payload


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
        clock: Clock = utc_now,
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
        # Deliveries this processor is running now: the sweeper may offer one again mid-run.
        self._running: set[str] = set()
        # Claims and finishes of concurrent runs share transactions (engine/group_commit.py).
        self._claims = GroupCommit(self._claim_batch, "worker-claims")
        self._finishes = GroupCommit(self._finish_batch, "worker-finishes")

    async def process(self, delivery_id: str) -> float | None:
        """Process a delivery; the seconds until it must be processed again, or None when finished.

        None also when this processor is already running the delivery: that run reports its own wait.
        """
        if delivery_id in self._running:
            return None
        self._running.add(delivery_id)
        try:
            return await self._process(delivery_id)
        finally:
            self._running.discard(delivery_id)

    async def _claim_batch(self, delivery_ids: Sequence[str]) -> list[Claim | None]:
        now = self._clock()
        claims = await self._store.claim_many(delivery_ids, now, now + self._requeue_after)
        # One claim, one run: an id submitted twice gets its claim once.
        return [claims.pop(delivery_id, None) for delivery_id in delivery_ids]

    async def _finish_batch(self, ends: Sequence[RunEnd]) -> list[None]:
        await self._store.finish_runs(ends)
        return [None] * len(ends)

    async def _process(self, delivery_id: str) -> float | None:
        claim = await self._claims.submit(delivery_id)
        if claim is None:
            return None  # unknown, finished by an earlier job, run by another worker, or still waiting
        now = self._clock()
        stored = claim.delivery
        payload = _payload(stored)
        if isinstance(payload, str):
            # Matching an empty payload would overwrite the delivery's recorded outcomes with nonsense.
            await self._finishes.submit(RunEnd(delivery_id, DeliveryStatus.FAILED, now, None, payload))
            self._metrics.deliveries_processed.labels(stored.event, DeliveryStatus.FAILED.value).inc()
            log.error(
                "delivery %s not processed: %s", delivery_id, payload, extra={"delivery_id": delivery_id}
            )
            return None
        delivery = Delivery(stored.event, delivery_id, payload, stored.headers)
        ledger = claim.ledger
        throttle = StoreThrottle(self._store, delivery_id, frozenset(rule_id for rule_id, _ in ledger))
        matcher = Matcher(self._rules(), throttle, self._secrets, self._clock)
        outcomes = await matcher.match(delivery, now, explain=True)
        for outcome in outcomes:
            self._metrics.rule_outcomes.labels(outcome.status.value).inc()
        state = _RunState(claim_due=stored.due_at or now)
        state.rule_errors = [
            (o.rule.id, self._masker.mask(o.reason)) for o in outcomes if o.status is RuleStatus.ERROR
        ]
        for outcome in outcomes:
            if outcome.fired:
                await self._run_rule(delivery_id, outcome, ledger, state)
        return await self._finish(delivery, outcomes, state, stored)

    async def _finish(
        self, delivery: Delivery, outcomes: list[RuleOutcome], state: _RunState, claimed: StoredDelivery
    ) -> float | None:
        now = self._clock()
        recorded = [(o.rule.id, o.status.value, self._masker.mask(o.reason)) for o in outcomes]
        if state.wait is not None:
            # Claimable again once the wait is over: by this retry's job, or by the sweeper if it is lost.
            due = now + timedelta(seconds=state.wait)
            await self._finishes.submit(
                RunEnd(
                    delivery.delivery_id,
                    DeliveryStatus.PROCESSING,
                    now,
                    due,
                    None,
                    outcomes=recorded,
                    runs=state.unsaved,
                    first_run=claimed.runs == 1,
                )
            )
            return state.wait
        if state.failures or state.rule_errors:  # a rule in error needs someone to look at it
            status = DeliveryStatus.FAILED
        else:
            status = DeliveryStatus.DONE if any(o.fired for o in outcomes) else DeliveryStatus.NO_MATCH
        await self._finishes.submit(
            RunEnd(
                delivery.delivery_id,
                status,
                now,
                None,
                state.error(),
                outcomes=recorded,
                runs=state.unsaved,
                first_run=claimed.runs == 1,
            )
        )
        self._metrics.deliveries_processed.labels(delivery.event, status.value).inc()
        self._metrics.processing_lag.observe((now - claimed.received_at).total_seconds())
        # A failed delivery needs someone to look at it: a warning, which log alerts catch.
        log.log(
            logging.WARNING if status is DeliveryStatus.FAILED else logging.INFO,
            "delivery %s",
            status.value,
            extra={
                "delivery_id": delivery.delivery_id,
                "stockaj_event": delivery.event,
                "status": status.value,
                "fired": [o.rule.id for o in outcomes if o.fired],
                **({"error": state.error()} if status is DeliveryStatus.FAILED else {}),
            },
        )
        return None

    async def _run_rule(
        self, delivery_id: str, outcome: RuleOutcome, ledger: Ledger, state: _RunState
    ) -> None:
        """Run a fired rule's actions in order, up to the first that waits for a retry or fails."""
        rule = outcome.rule
        for position, planned in enumerate(outcome.actions):
            run = ledger.get((rule.id, planned.index))
            if run is not None and run.status is ActionStatus.SUCCEEDED:
                continue
            if run is not None and run.status in (ActionStatus.FAILED, ActionStatus.SKIPPED):
                state.failed(rule.id, run)  # an earlier run of this delivery; its later actions are skipped
                return
            now = self._clock()
            if run is not None and run.next_attempt_at is not None and run.next_attempt_at > now:
                state.waits((run.next_attempt_at - now).total_seconds())
                return
            await self._keep_claim(delivery_id, state)
            run = await self._execute(delivery_id, rule, planned, run)
            state.unsaved.append(run)
            if run.status is ActionStatus.PENDING:
                assert run.next_attempt_at is not None
                state.waits(max(0.0, (run.next_attempt_at - self._clock()).total_seconds()))
                return
            if run.status is ActionStatus.FAILED:
                state.failed(rule.id, run)
                state.unsaved.extend(self._skipped(rule, later) for later in outcome.actions[position + 1 :])
                return

    async def _keep_claim(self, delivery_id: str, state: _RunState) -> None:
        """Before an action: save what earlier actions did, and extend the claim if it runs short.

        An action's success is written before the next action starts, so a crash repeats at
        most the one action that was running.
        """
        now = self._clock()
        if not state.unsaved and now + self._requeue_after / 2 < state.claim_due:
            return
        await self._store.save_progress(delivery_id, state.unsaved, now, now + self._requeue_after)
        state.unsaved = []
        state.claim_due = now + self._requeue_after

    async def _execute(
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
            rule.id,
            planned.index,
            planned.type,
            status,
            self._masker.mask(planned.params),
            attempts,
            self._masker.mask(error),
            response_status,
            next_attempt,
            self._clock(),
        )

    async def _attempt(
        self, delivery_id: str, rule: Rule, planned: PlannedAction, attempts: int
    ) -> tuple[ActionStatus, str | None, int | None, datetime | None]:
        """Run the action once: (status, error, response status, when to try again)."""
        if planned.error is not None or planned.validated is None:
            return ActionStatus.FAILED, planned.error or "params were not validated", None, None
        plugin = rule.actions[planned.index].plugin
        ctx = ActionContext(
            self._http, self._databases, self._defaults, delivery_id, rule.id, planned.index, self._clock
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

    def _skipped(self, rule: Rule, planned: PlannedAction) -> ActionRun:
        return ActionRun(
            rule.id,
            planned.index,
            planned.type,
            ActionStatus.SKIPPED,
            self._masker.mask(planned.params),
            0,
            "skipped: an earlier action of this rule failed",
            None,
            None,
            self._clock(),
        )
