"""Long-running processes: the receiver (`serve`) and the arq worker (`worker`).

The receiver runs on uvicorn with uvloop and httptools, the fastest of the
well-kept ASGI servers measured here (see bench/README.md), its connections
bounded by engine/pipeline/http_protocol.py. With METRICS_PORT it listens there too, for
`/metrics` alone. SIGTERM lets
in-flight requests and deliveries finish (up to GRACEFUL_SHUTDOWN_SECONDS
each); anything cut off stays pending in the store and is processed again,
the action ledger skipping what succeeded. A worker killed outright loses its
jobs' leases within `job_lease_seconds`, and another worker takes them over.
"""

from __future__ import annotations

import asyncio
import dataclasses
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
from hypercorn.typing import ASGIReceiveCallable, ASGISendCallable, Scope
from sqlalchemy.exc import DBAPIError

from engine.config import Settings
from engine.errors import ConfigurationError
from engine.pipeline.http_protocol import (
    ConnectionLimits,
    connection_limit,
    raise_open_files_limit,
    server_config,
)
from engine.pipeline.logs import configure_logging
from engine.pipeline.receiver import ASGIApp, create_app, metrics_app
from engine.pipeline.service import job_lease_seconds, masker_for, open_service, open_store, sweep_interval
from engine.queue import PROCESS_FUNCTION, ArqQueue, Processor, job_lease
from engine.queue.arq_worker import DeliveryWorker
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


def bound_socket(host: str, port: int, names: tuple[str, str] = ("HOST", "PORT")) -> socket.socket:
    """The receiver's socket, bound (uvicorn listens on it) before anything else starts: a port
    in use is one clear line, not a failure after the service opened. `names`: the settings
    of the address and port, for that line."""
    host_name, port_name = names
    options = {"HOST": " (or --host)", "PORT": " (or --port)"}
    host_fix, port_fix = host_name + options.get(host_name, ""), port_name + options.get(port_name, "")
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    except OSError as exc:
        reason = exc.strerror or exc
        raise ConfigurationError(f"cannot listen on {host}:{port}: {reason}; fix {host_fix}") from None
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            fix = f"choose another {port_fix}, or stop the process that uses it"
        elif exc.errno == errno.EACCES:
            fix = f"ports below 1024 need privileges: choose another {port_fix}"
        else:
            fix = f"fix {host_fix}: it must be an address of this machine"
        raise ConfigurationError(f"cannot listen on {host}:{port}: {exc.strerror or exc}; {fix}") from None
    return sock


async def _serve(settings: Settings, host: str, port: int) -> None:
    sockets = _listening_sockets(settings, host, port)
    limits = connection_limits(settings)
    try:
        service = await open_service(settings, receive=True, process_in_process=not settings.redis_url)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    parts = service.receiver_parts()
    app = create_app(dataclasses.replace(parts, serve_metrics=len(sockets) == 1))
    # Closed at the lifespan's shutdown, after the last request: uvicorn raises the signal it
    # stopped on again as soon as it returns, which would end the process before a `finally`
    # here could let the in-process deliveries finish.
    app.after_serving(service.close)
    served: ASGIApp = app
    if len(sockets) == 2:
        served = by_local_port(sockets[1].getsockname()[1], metrics_app(parts), served)
    config = server_config(
        served,
        limits,
        loop="none",  # the uvloop loop we are already running on
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
    )
    try:
        await uvicorn.Server(config).serve(sockets=sockets)
    finally:
        await service.close()


def _listening_sockets(settings: Settings, host: str, port: int) -> list[socket.socket]:
    """The webhook port's socket, then METRICS_PORT's when it is set."""
    sockets = [bound_socket(host, port)]
    if settings.metrics_port is not None:
        metrics_host = settings.metrics_host or host
        if (metrics_host, settings.metrics_port) == (host, port):
            sockets[0].close()
            raise ConfigurationError(
                f"METRICS_PORT is the webhook port ({port}); choose another port for the metrics, "
                "or unset METRICS_PORT to serve /metrics on the webhook port"
            )
        try:
            sockets.append(
                bound_socket(metrics_host, settings.metrics_port, ("METRICS_HOST", "METRICS_PORT"))
            )
        except ConfigurationError:
            sockets[0].close()
            raise
    return sockets


def connection_limits(settings: Settings) -> ConnectionLimits:
    """The receiver's connection limits; the open-files limit raised to make room for them."""
    open_files = raise_open_files_limit()
    connections = connection_limit(settings.max_connections, open_files)
    if connections < settings.max_connections:
        log.warning(
            "MAX_CONNECTIONS is %d but this process may open only %d files: at most %d connections "
            "are taken; raise the open-files limit (ulimit -n, LimitNOFILE= in systemd, "
            "--ulimit nofile= in Docker)",
            settings.max_connections,
            open_files,
            connections,
        )
    return ConnectionLimits(
        header_timeout=settings.header_timeout_seconds,
        max_header_bytes=settings.max_header_bytes,
        keep_alive_timeout=settings.keep_alive_timeout_seconds,
        max_connections=connections,
    )


def by_local_port(port: int, on_port: ASGIApp, otherwise: ASGIApp) -> ASGIApp:
    """Requests that came in on local `port` go to `on_port`, all else (and the lifespan) to `otherwise`."""

    async def app(scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
        server = scope.get("server") if scope["type"] == "http" else None
        target = on_port if server is not None and server[1] == port else otherwise
        await target(scope, receive, send)

    return app


def work(settings: Settings, metrics_port: int | None) -> None:
    configure_logging(settings.log_level, settings.log_format, masker_for(settings))
    uvloop.run(_work(settings, metrics_port))


async def _work(settings: Settings, metrics_port: int | None) -> None:
    assert settings.redis_url
    service = await open_service(settings, receive=False, process_in_process=False)
    metrics_port = metrics_port or settings.metrics_port
    if metrics_port:
        metrics_host = settings.metrics_host or settings.host
        prometheus_client.start_http_server(metrics_port, metrics_host, registry=service.metrics.registry)

    lease = job_lease_seconds(settings)

    async def process_delivery(ctx: dict[str, Any], delivery_id: str) -> None:
        async with job_lease(ctx["redis"], ctx["job_id"], lease):
            wait = await process_surviving_connection_loss(service.processor.process, delivery_id)
        if wait is not None:
            raise Retry(defer=wait)

    every = max(1, int(sweep_interval(settings)))

    async def sweep(ctx: dict[str, object]) -> None:
        await service.sweeper.sweep_or_warn(every)  # not a traceback from arq: a warning line
        await service.refresh_metrics()  # the queue lag gauge of the worker's --metrics-port

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
