"""Process one stored delivery: match, render, execute, record.

The matching is exactly what `stockaj-rules test` runs (engine.language.matching); here
the rendered actions are executed for real and every step is recorded. The
action ledger makes actions effectively once: an action recorded `succeeded`
for (delivery, rule, action index) is never run again for that delivery,
whatever crashes, retries or redeliveries happen. A rule's actions run in
order; one that fails for good stops the rule's later actions (`skipped`).
A redelivered delivery (reopened, so `received` again) gives its failed and
skipped actions a fresh start; only `redeliver --force` forgets the ledger.

Transient failures (connection errors, timeouts, 408, 429, 5xx) are retried
with exponential backoff and full jitter, never sooner than the server's
Retry-After, up to `max_attempts` (engine/pipeline/retry.py); the delivery stays
`processing` meanwhile, with `due_at` set so a lost retry is picked up by the sweeper.

A run keeps its claim alive while it lasts (engine/pipeline/claim_keeper.py), so only a dead
worker's delivery is taken over. A delivery whose runs keep dying (the process
killed, an error escaping processing) is failed after MAX_UNFINISHED_RUNS of them
in a row instead of being run again every REQUEUE_AFTER_SECONDS for ever. A
delivery that ends `failed` raises `stockaj_rules.delivery_failed`
(engine/pipeline/failure_alerts.py), stored with the failure and enqueued once it is recorded.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import Any

import httpx

from actions.base import Clock, DatabaseEngines, utc_now
from engine.config_plugins import PluginSettings
from engine.language.delivery import Delivery
from engine.language.matching import Matcher, RuleOutcome, RuleStatus
from engine.language.rules import RuleSet
from engine.pipeline.action_execution import ActionExecutor
from engine.pipeline.claim_keeper import ClaimKeeper, Hold
from engine.pipeline.failure_alerts import Failures, delivery_failed, raises_alert
from engine.pipeline.group_commit import GroupCommit
from engine.pipeline.metrics import Metrics
from engine.pipeline.retry import RetryPolicy
from engine.secrets import Masker, Secrets
from engine.store import ActionRun, ClaimedDelivery, Ledger, RunEnd, Store, StoredDelivery
from engine.store.tables import ActionStatus, DeliveryStatus
from engine.store.throttle_slots import StoreThrottle

__all__ = ["MAX_UNFINISHED_RUNS", "DeliveryProcessor"]

log = logging.getLogger(__name__)

# Runs in a row that never finished (and saved no progress) before a delivery is given up on.
MAX_UNFINISHED_RUNS = 3
DEFAULT_CONSOLE_URL = "http://127.0.0.1:8001"
# Where the deliveries a run raises go once recorded: the queue's `enqueue`.
Enqueue = Callable[[Sequence[str]], Awaitable[None]]


@dataclass(slots=True, kw_only=True)
class _RunState:
    """What one pass over a delivery's fired rules left behind.

    `unsaved` holds ledger rows not written yet: they go to the store with the next
    action's claim extension, or with the run's finish, so that a delivery with one
    action costs two transactions (claim, finish) besides the action itself.
    """

    hold: Hold
    wait: float | None = None
    failures: int = 0
    first_failure: str | None = None
    unsaved: list[ActionRun] = field(default_factory=list)
    failed_actions: list[tuple[str, ActionRun]] = field(default_factory=list)
    # Rules that could not be evaluated (RuleStatus.ERROR): (rule id, masked reason).
    rule_errors: list[tuple[str, str]] = field(default_factory=list)

    def waits(self, seconds: float) -> None:
        self.wait = seconds if self.wait is None else min(self.wait, seconds)

    def failed(self, rule_id: str, run: ActionRun) -> None:
        self.failures += 1
        self.failed_actions.append((rule_id, run))
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


def _gave_up(stored: StoredDelivery) -> str:
    """Why a delivery whose runs kept dying is failed instead of run again."""
    stopped = stored.unfinished_runs - 1
    last = f"; the last: {stored.error}" if stored.error else ""
    return (
        f"processing this delivery stopped {stopped} times before it finished (the process died, or "
        f"an error escaped processing){last}; it is not run again on its own: find the error in the "
        f"workers' log (delivery_id {stored.delivery_id}), fix its cause (a rule, an action, a "
        f"setting), then run `stockaj-rules redeliver {stored.delivery_id}`"
    )


class DeliveryProcessor:
    """Runs stored deliveries through the current rules, with real side effects."""

    def __init__(
        self,
        store: Store,
        rules: Callable[[], RuleSet],
        http: httpx.AsyncClient,
        databases: DatabaseEngines,
        action_settings: PluginSettings,
        secrets: Mapping[str, str],
        masker: Masker,
        metrics: Metrics,
        retry: RetryPolicy,
        requeue_after: timedelta,
        clock: Clock = utc_now,
        console_url: str = DEFAULT_CONSOLE_URL,
    ) -> None:
        self._store = store
        self._rules = rules
        self._executor = ActionExecutor(http, databases, action_settings, masker, metrics, retry, clock)
        self._secrets = Secrets(secrets)
        self._masker = masker
        self._metrics = metrics
        self._requeue_after = requeue_after
        self._clock = clock
        self._console_url = console_url
        self._enqueue: Enqueue | None = None
        self._keeper = ClaimKeeper(store, requeue_after, clock)
        # Deliveries this processor is running now: the sweeper may offer one again mid-run.
        self._running: set[str] = set()
        # Claims and finishes of concurrent runs share transactions (engine/pipeline/group_commit.py).
        self._claims = GroupCommit(self._claim_batch, "worker-claims")
        self._finishes = GroupCommit(self._finish_batch, "worker-finishes")

    def enqueue_raised_to(self, enqueue: Enqueue) -> None:
        """Where the events runs raise go once recorded (the queue this processor serves)."""
        self._enqueue = enqueue

    async def close(self) -> None:
        """Stop keeping claims alive: the runs in hand are over, or cut off and left to expire."""
        await self._keeper.close()

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

    async def _claim_batch(self, delivery_ids: Sequence[str]) -> list[ClaimedDelivery | None]:
        now = self._clock()
        claims = await self._store.claim_many(delivery_ids, now, now + self._requeue_after)
        # One claim, one run: an id submitted twice gets its claim once.
        return [claims.pop(delivery_id, None) for delivery_id in delivery_ids]

    async def _finish_batch(self, ends: Sequence[RunEnd]) -> list[bool]:
        recorded = await self._store.finish_runs(ends)
        return [end.delivery_id in recorded for end in ends]

    async def _process(self, delivery_id: str) -> float | None:
        claim = await self._claims.submit(delivery_id)
        if claim is None:
            return None  # unknown, finished by an earlier job, run by another worker, or still waiting
        hold = self._keeper.hold(delivery_id, claim.delivery.runs)
        try:
            return await self._run(claim, hold)
        except Exception as exc:
            await self._note_crash(hold, exc)
            raise
        finally:
            await self._keeper.release(hold)

    async def _run(self, claim: ClaimedDelivery, hold: Hold) -> float | None:
        now = self._clock()
        stored = claim.delivery
        # Its earlier runs kept dying: this one ends it, rather than die the same way.
        payload = _gave_up(stored) if stored.unfinished_runs > MAX_UNFINISHED_RUNS else _payload(stored)
        if isinstance(payload, str):
            # Matching an empty payload would overwrite the delivery's recorded outcomes with nonsense.
            end = RunEnd(
                delivery_id=stored.delivery_id,
                status=DeliveryStatus.FAILED,
                now=now,
                due_at=None,
                error=payload,
                token=hold.token,
            )
            await self._end(hold, stored, end)
            return None
        delivery = Delivery(stored.event, stored.delivery_id, payload, stored.headers)
        ledger = claim.ledger
        throttle = StoreThrottle(self._store, stored.delivery_id, frozenset(rule_id for rule_id, _ in ledger))
        matcher = Matcher(self._rules(), throttle, self._secrets, self._clock)
        outcomes = await matcher.match(delivery, now, explain=True)
        for outcome in outcomes:
            self._metrics.rule_outcomes.labels(outcome.status.value).inc()
        state = _RunState(hold=hold)
        state.rule_errors = [
            (o.rule.id, self._masker.mask(o.reason)) for o in outcomes if o.status is RuleStatus.ERROR
        ]
        for outcome in outcomes:
            if outcome.fired:
                await self._run_rule(stored.delivery_id, outcome, ledger, state)
                if hold.lost:
                    break  # another run has the delivery now; the end records only what succeeded
        return await self._finish(delivery, outcomes, state, stored)

    async def _note_crash(self, hold: Hold, exc: Exception) -> None:
        """Keep why this run crashed, for the delivery's error if it comes to be given up on."""
        error = self._masker.mask(f"{type(exc).__name__}: {exc}")
        try:
            await self._store.note_crash(hold.delivery_id, hold.token, error[:2000])
        except Exception as failure:  # the store may be why it crashed; the exception goes on up
            log.warning("could not record the crash of delivery %s: %s", hold.delivery_id, failure)

    async def _end(
        self,
        hold: Hold,
        stored: StoredDelivery,
        end: RunEnd,
        failures: Failures | None = None,
        fired: Sequence[str] = (),
    ) -> bool:
        """Record where the run left the delivery; False when another run owns it now.

        A failed delivery raises `stockaj_rules.delivery_failed` with its end, enqueued once recorded.
        """
        raised = None
        if end.status is DeliveryStatus.FAILED and raises_alert(stored.event):
            error = end.error or "failed"
            raised = delivery_failed(
                stored, hold.token, error, failures or Failures(), self._console_url, end.now
            )
            end = replace(end, raised=raised)
        await self._keeper.release(hold)  # no extension may land after the end
        if not await self._finishes.submit(end):
            log.warning(
                "delivery %s: this run's claim was taken over; the run that took it records the outcome",
                stored.delivery_id,
                extra={"delivery_id": stored.delivery_id},
            )
            return False
        if end.status not in (DeliveryStatus.PROCESSING, DeliveryStatus.RECEIVED):
            self._metrics.deliveries_processed.labels(stored.event, end.status.value).inc()
            self._metrics.processing_lag.observe((end.now - stored.received_at).total_seconds())
            self._log_end(stored, end, fired)
        if raised is not None and self._enqueue is not None:
            try:
                await self._enqueue([raised.delivery_id])
            except Exception as exc:  # stored and due: the sweeper enqueues it
                log.warning("could not enqueue %s (the sweeper will): %s", raised.delivery_id, exc)
        return True

    def _log_end(self, stored: StoredDelivery, end: RunEnd, fired: Sequence[str]) -> None:
        # A failed delivery needs someone to look at it: a warning, which log alerts catch. A
        # failed alert is an error: no further alert tells anyone about it.
        failed = end.status is DeliveryStatus.FAILED
        level = logging.INFO
        if failed:
            level = logging.WARNING if raises_alert(stored.event) else logging.ERROR
        log.log(
            level,
            "delivery %s",
            end.status.value,
            extra={
                "delivery_id": stored.delivery_id,
                "stockaj_event": stored.event,
                "status": end.status.value,
                "fired": list(fired),
                **({"error": end.error} if failed else {}),
            },
        )

    async def _finish(
        self, delivery: Delivery, outcomes: list[RuleOutcome], state: _RunState, claimed: StoredDelivery
    ) -> float | None:
        now = self._clock()
        recorded = [(o.rule.id, o.status.value, self._masker.mask(o.reason)) for o in outcomes]
        due, error = None, state.error()
        if state.wait is not None:
            # Claimable again once the wait is over: by this retry's job, or by the sweeper if it is lost.
            status, due, error = DeliveryStatus.PROCESSING, now + timedelta(seconds=state.wait), None
        elif state.failures or state.rule_errors:  # a rule in error needs someone to look at it
            status = DeliveryStatus.FAILED
        else:
            status = DeliveryStatus.DONE if any(o.fired for o in outcomes) else DeliveryStatus.NO_MATCH
        end = RunEnd(
            delivery_id=delivery.delivery_id,
            status=status,
            now=now,
            due_at=due,
            error=error,
            outcomes=recorded,
            runs=state.unsaved,
            first_run=claimed.runs == 1,
            token=state.hold.token,
        )
        errors = [
            (o.rule.id, why)
            for o, (_, _, why) in zip(outcomes, recorded, strict=True)
            if o.status is RuleStatus.ERROR
        ]
        fired = [o.rule.id for o in outcomes if o.fired]
        owned = await self._end(state.hold, claimed, end, Failures(errors, state.failed_actions), fired)
        return state.wait if owned else None

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
            if not await self._keep_claim(delivery_id, state):
                return  # the claim was lost: starting this action would run it beside the new run
            run = await self._executor.execute(delivery_id, rule, planned, run)
            state.unsaved.append(run)
            if run.status is ActionStatus.PENDING:
                assert run.next_attempt_at is not None
                state.waits(max(0.0, (run.next_attempt_at - self._clock()).total_seconds()))
                return
            if run.status is ActionStatus.FAILED:
                state.failed(rule.id, run)
                state.unsaved.extend(
                    self._executor.skipped(rule, later) for later in outcome.actions[position + 1 :]
                )
                return

    async def _keep_claim(self, delivery_id: str, state: _RunState) -> bool:
        """Before an action: save what earlier actions did; False when the claim is lost.

        An action's success is written before the next action starts, so a crash repeats at
        most the one action that was running. The claim itself is kept alive by the
        `ClaimKeeper` meanwhile, however long the action takes.
        """
        if state.unsaved:
            now = self._clock()
            saved = await self._store.save_progress(
                delivery_id, state.unsaved, now, now + self._requeue_after, token=state.hold.token
            )
            state.unsaved = []  # recorded, or (the claim lost) its successes recorded
            if saved:
                self._keeper.kept(state.hold)
            else:
                state.hold.lost = True
        return not state.hold.lost
