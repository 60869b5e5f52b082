"""Wiring: build the running service from settings, for `serve`, `worker` and the CLI.

`serve` without REDIS_URL is the embedded default: SQLite (migrated at start),
the receiver, and in-process workers in one process. With REDIS_URL the
receiver only stores and enqueues, and `stockaj-rules worker` processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from sqlalchemy.ext.asyncio import create_async_engine

from actions.base import DatabaseEngines
from actions.registry import load_registry
from engine.config import Settings, secret_variables
from engine.errors import ConfigurationError
from engine.pipeline.health_records import SignatureFailureTally, record_health
from engine.pipeline.http_client import create_http_client
from engine.pipeline.intake import DeliveryIntake
from engine.pipeline.metrics import Metrics
from engine.pipeline.receiver import ReceiverParts
from engine.pipeline.retry import RetryPolicy
from engine.pipeline.rule_reload import LiveRules
from engine.pipeline.sweeper import Sweeper
from engine.pipeline.worker import DeliveryProcessor
from engine.queue.arq_queue import ArqQueue
from engine.queue.delivery_queue import DeliveryQueue
from engine.queue.in_process import InProcessQueue
from engine.secrets import Masker
from engine.store import Store, database
from engine.store.open_problems import open_problem, sqlite_file_problem

log = logging.getLogger(__name__)


def masker_for(settings: Settings) -> Masker:
    return Masker([*settings.sensitive_values(), *secret_variables().values()])


@dataclass(kw_only=True)
class Service:
    """Everything a running process holds; `close()` releases it."""

    settings: Settings
    store: Store
    rules: LiveRules
    metrics: Metrics
    processor: DeliveryProcessor
    queue: DeliveryQueue
    sweeper: Sweeper
    http: httpx.AsyncClient
    databases: DatabaseEngines
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)
    intake: DeliveryIntake | None = None
    closed: bool = False
    masker: Masker = field(default_factory=Masker)
    signature_tally: SignatureFailureTally = field(default_factory=SignatureFailureTally)

    async def readiness(self) -> dict[str, Any]:
        """Ready or not, and where a problem is; never what a file says (anyone may ask), masked."""
        checks: dict[str, Any] = {}
        for name, probe in (("store", self.store.ping), ("queue", self.queue.ping)):
            try:
                await asyncio.wait_for(probe(), 2)
                checks[name] = {"ok": True}
            except Exception as exc:
                checks[name] = {"ok": False, "error": type(exc).__name__}
        checks["rules"] = {"ok": self.rules.error is None, "loaded": len(self.rules.current)}
        if self.rules.error is not None:
            checks["rules"]["error"] = self.rules.error
            checks["rules"]["problems"] = list(self.rules.problems)
        masked: dict[str, Any] = self.masker.mask(checks)
        return masked

    async def refresh_metrics(self) -> None:
        with contextlib.suppress(Exception):
            oldest = await self.store.oldest_pending_received_at()
            lag = (datetime.now(UTC) - oldest).total_seconds() if oldest else 0.0
            self.metrics.queue_lag.set(max(0.0, lag))

    def receiver_parts(self) -> ReceiverParts:
        assert self.intake is not None
        return ReceiverParts(
            secrets=self.settings.require_webhook_secret(),
            previous_secret_until=self.settings.stockaj_webhook_rotation_ends_at,
            max_body_bytes=self.settings.max_body_bytes,
            intake=self.intake,
            metrics=self.metrics,
            readiness=self.readiness,
            refresh_metrics=self.refresh_metrics,
            signature_tally=self.signature_tally,
        )

    async def close(self) -> None:
        """Stop intake, let the deliveries in hand finish, release everything; idempotent."""
        if self.closed:
            return
        self.closed = True
        if self.intake is not None:
            await self.intake.stop()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.queue.close()
        await self.processor.close()
        await self.http.aclose()
        await self.databases.dispose()
        await self.store.close()
        log.info("stopped: the deliveries in hand are finished, anything still pending waits in the store")


async def open_store(settings: Settings) -> Store:
    """The store, migrated when it is the embedded SQLite; PostgreSQL must be upgraded first."""
    problem = sqlite_file_problem(settings.database_url)
    if problem:
        raise ConfigurationError(f"cannot open DATABASE_URL: {problem}")
    engine = database.create_engine(settings.database_url)
    try:
        if database.is_sqlite(settings.database_url):
            await database.upgrade(engine)
        elif not await database.schema_is_current(engine):
            raise ConfigurationError(
                "the database schema is not up to date: run `stockaj-rules db upgrade` first"
            )
    except ConfigurationError:
        await engine.dispose()
        raise
    except Exception as exc:
        await engine.dispose()
        raise ConfigurationError(
            f"cannot open DATABASE_URL: {open_problem(exc, settings.database_url)}"
        ) from None
    return Store(engine)


async def open_service(
    settings: Settings, *, receive: bool, process_in_process: bool, background: bool = True
) -> Service:
    """Build the service; `receive` adds the intake, `process_in_process` the in-process workers.

    `background=False` is for one-shot commands (`redeliver`): no rules watcher and no
    sweeper, which would otherwise take up every other due delivery in that command.
    """
    metrics = Metrics()
    store = await open_store(settings)
    rules = LiveRules(settings.rules_dir, load_registry(), metrics)
    http = create_http_client()
    databases = DatabaseEngines(
        lambda url: create_async_engine(url, pool_pre_ping=True, hide_parameters=True)
    )
    requeue_after = timedelta(seconds=settings.requeue_after_seconds)
    processor = DeliveryProcessor(
        store=store,
        rules=rules,
        http=http,
        databases=databases,
        action_settings=settings.plugins,
        secrets=secret_variables(),
        masker=masker_for(settings),
        metrics=metrics,
        retry=RetryPolicy(settings.max_attempts, settings.retry_base_seconds),
        requeue_after=requeue_after,
        console_url=settings.console_url,
    )
    queue: DeliveryQueue
    if process_in_process:
        queue = InProcessQueue(processor.process, settings.worker_concurrency)
    else:
        if not settings.redis_url:
            raise ConfigurationError("REDIS_URL is not set: workers take their jobs from Redis; set it")
        queue = await ArqQueue.connect(
            settings.redis_url, settings.queue_name, "receiver" if receive else "worker"
        )
    processor.enqueue_raised_to(queue.enqueue)  # `stockaj_rules.delivery_failed` events
    sweeper = Sweeper(
        store,
        queue,
        metrics,
        timedelta(days=settings.body_retention_days),
        timedelta(days=settings.delivery_retention_days),
    )
    service = Service(
        settings=settings,
        store=store,
        rules=rules,
        metrics=metrics,
        processor=processor,
        queue=queue,
        sweeper=sweeper,
        http=http,
        databases=databases,
        masker=masker_for(settings),
    )
    if background:
        service.tasks.append(asyncio.create_task(rules.watch(), name="rules-watcher"))
        role = "serve" if receive else "worker"
        health = record_health(store, role, service.signature_tally)
        service.tasks.append(asyncio.create_task(health, name="health-records"))
    if receive:
        service.intake = DeliveryIntake(store, queue, metrics, requeue_after)
        service.intake.start()
        quiet = service.intake.activity.quiet
        rules.yield_to(lambda: not quiet.is_set())  # a reload lets webhook answers go first
        if isinstance(queue, InProcessQueue):
            queue.yield_to(service.intake.activity)  # one process, one core: webhook answers first
    if process_in_process and background:
        service.tasks.append(asyncio.create_task(sweeper.run(sweep_interval(settings)), name="sweeper"))
    return service


def sweep_interval(settings: Settings) -> float:
    return max(0.5, min(15.0, settings.requeue_after_seconds / 4))


def job_lease_seconds(settings: Settings) -> float:
    """How long a worker's hold on a job outlives the worker: REQUEUE_AFTER_SECONDS, at least 3 s.

    The floor leaves room for a busy event loop to renew the lease in time.
    """
    return max(3.0, settings.requeue_after_seconds)
