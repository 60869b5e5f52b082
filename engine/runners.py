"""Long-running processes: the receiver (`serve`) and the arq worker (`worker`).

The receiver runs on uvicorn with uvloop and httptools, the fastest of the
well-kept ASGI servers measured here (see bench/README.md). SIGTERM lets
in-flight requests and deliveries finish (up to GRACEFUL_SHUTDOWN_SECONDS
each); anything cut off stays pending in the store and is processed again,
the action ledger skipping what succeeded. A worker killed outright loses its
jobs' leases within `job_lease_seconds`, and another worker takes them over.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from datetime import UTC, datetime, timedelta
from typing import Any

import prometheus_client
import uvicorn
import uvloop
from arq import Retry, cron, func
from arq.connections import RedisSettings
from sqlalchemy.exc import DBAPIError

from engine.arq_worker import DeliveryWorker
from engine.config import Settings
from engine.errors import ConfigurationError
from engine.logs import configure_logging
from engine.queue import PROCESS_FUNCTION, ArqQueue, Processor, job_lease
from engine.receiver import create_app
from engine.service import job_lease_seconds, masker_for, open_service, open_store, sweep_interval
from engine.store import Reopened

ARQ_JOB_TIMEOUT_SECONDS = 600
NOT_REDELIVERED = (
    "not redelivered: a run is processing it right now (or its worker died less than "
    "REQUEUE_AFTER_SECONDS ago); run redeliver again once `deliveries show` says it is finished"
)
GRACEFUL_SHUTDOWN_SECONDS = 10
CONNECTION_LOST_RETRY_SECONDS = 1.0

log = logging.getLogger(__name__)


def serve(settings: Settings, host: str, port: int) -> None:
    configure_logging(settings.log_level, settings.log_format, masker_for(settings))
    uvloop.run(_serve(settings, host, port))


def bound_socket(host: str, port: int) -> socket.socket:
    """The receiver's socket, bound (uvicorn listens on it) before anything else starts: a port
    in use is one clear line, not a failure after the service opened."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    except OSError as exc:
        reason = exc.strerror or exc
        raise ConfigurationError(f"cannot listen on {host}:{port}: {reason}; fix HOST (or --host)") from None
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            fix = "choose another PORT (or --port), or stop the process that uses it"
        elif exc.errno == errno.EACCES:
            fix = "ports below 1024 need privileges: choose another PORT (or --port)"
        else:
            fix = "fix HOST (or --host): it must be an address of this machine"
        raise ConfigurationError(f"cannot listen on {host}:{port}: {exc.strerror or exc}; {fix}") from None
    return sock


async def _serve(settings: Settings, host: str, port: int) -> None:
    sock = bound_socket(host, port)
    try:
        service = await open_service(settings, receive=True, process_in_process=not settings.redis_url)
    except BaseException:
        sock.close()
        raise
    app = create_app(service.receiver_parts())
    # Closed at the lifespan's shutdown, after the last request: uvicorn raises the signal it
    # stopped on again as soon as it returns, which would end the process before a `finally`
    # here could let the in-process deliveries finish.
    app.after_serving(service.close)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        loop="none",  # the uvloop loop we are already running on
        http="httptools",
        lifespan="on",
        access_log=False,
        log_config=None,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
        server_header=False,
    )
    try:
        await uvicorn.Server(config).serve(sockets=[sock])
    finally:
        await service.close()


def work(settings: Settings, metrics_port: int | None) -> None:
    configure_logging(settings.log_level, settings.log_format, masker_for(settings))
    uvloop.run(_work(settings, metrics_port))


async def _work(settings: Settings, metrics_port: int | None) -> None:
    assert settings.redis_url
    service = await open_service(settings, receive=False, process_in_process=False)
    if metrics_port:
        prometheus_client.start_http_server(metrics_port, registry=service.metrics.registry)

    lease = job_lease_seconds(settings)

    async def process_delivery(ctx: dict[str, Any], delivery_id: str) -> None:
        async with job_lease(ctx["redis"], ctx["job_id"], lease):
            wait = await process_surviving_connection_loss(service.processor.process, delivery_id)
        if wait is not None:
            raise Retry(defer=wait)

    async def sweep(ctx: dict[str, object]) -> None:
        await service.sweeper.sweep()
        await service.refresh_metrics()  # the queue lag gauge of the worker's --metrics-port

    every = max(1, int(sweep_interval(settings)))
    arq_worker = DeliveryWorker(
        functions=[func(process_delivery, name=PROCESS_FUNCTION)],
        cron_jobs=[cron(sweep, name="sweep", second=set(range(0, 60, every)), run_at_startup=True)],
        redis_settings=RedisSettings.from_dsn(settings.redis_url),
        max_jobs=settings.worker_concurrency,
        job_timeout=ARQ_JOB_TIMEOUT_SECONDS,
        max_tries=1_000_000,  # the action ledger counts attempts, per action
        keep_result=0,
        poll_delay=0,  # DeliveryWorker waits for jobs itself
        handle_signals=True,
        job_completion_wait=GRACEFUL_SHUTDOWN_SECONDS,  # SIGTERM: take no new job, finish these
    )
    arq_worker.in_progress_timeout_s = lease  # renewed by job_lease() while the job runs
    try:
        await arq_worker.async_run()
    except asyncio.CancelledError:
        # arq cancels its own main task on SIGTERM/SIGINT, once the jobs in hand are done:
        # the normal way out. Only a cancellation of this task itself goes on up.
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise
    finally:
        await arq_worker.close()
        await service.close()


async def process_surviving_connection_loss(process: Processor, delivery_id: str) -> float | None:
    """`process(delivery_id)`, a database connection lost on the way making it a retry.

    The database dropped the connection (it restarted); SQLAlchemy has replaced the pooled
    ones. A run that was claimed waits for its claim to expire; an unclaimed one runs again
    after CONNECTION_LOST_RETRY_SECONDS. Returns the seconds until the delivery should run
    again, or None when it is done.
    """
    try:
        return await process(delivery_id)
    except DBAPIError as exc:
        if not exc.connection_invalidated:
            raise
        log.warning("database connection lost; delivery %s is retried", delivery_id)
        return CONNECTION_LOST_RETRY_SECONDS


def redeliver(settings: Settings, delivery_id: str, force: bool) -> str | None:
    """Make a stored delivery pending again and process it; its final status, or None if unknown."""
    return asyncio.run(_redeliver(settings, delivery_id, force))


async def _redeliver(settings: Settings, delivery_id: str, force: bool) -> str | None:
    """With REDIS_URL the workers run it now: its job is enqueued, or brought forward if a retry
    deferred it. Without, this process runs it; what a running `serve` still plans for it (a
    retry's timer) then finds it finished, or claims it only once it is due again."""
    store = await open_store(settings)
    try:
        now = datetime.now(UTC)
        # Due at once for the workers' sweeper; here, only if this process dies before it ran it.
        later = now if settings.redis_url else now + timedelta(seconds=settings.requeue_after_seconds)
        reopened = await store.reopen(delivery_id, now, later)
        if reopened is Reopened.UNKNOWN:
            return None
        if reopened is Reopened.RUNNING:
            return NOT_REDELIVERED
        if force:
            await store.forget_action_runs(delivery_id)
        if settings.redis_url:
            queue = await ArqQueue.connect(settings.redis_url)
            try:
                await queue.enqueue([delivery_id])
            finally:
                await queue.close()
            return "enqueued for the workers"
    finally:
        await store.close()
    service = await open_service(settings, receive=False, process_in_process=True, background=False)
    try:
        wait = await service.processor.process(delivery_id)
        stored = await service.store.get(delivery_id)
        status = stored.status.value if stored else "unknown"
        return status if wait is None else f"{status}; an action will be retried in {wait:.0f}s"
    finally:
        await service.close()
