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
from typing import Any

import prometheus_client
import uvicorn
import uvloop
from arq import Retry, cron, func
from hypercorn.typing import ASGIReceiveCallable, ASGISendCallable, Scope
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis
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
from engine.pipeline.service import job_lease_seconds, masker_for, open_service, sweep_interval
from engine.queue import PROCESS_FUNCTION, Processor, job_id, job_lease
from engine.queue.arq_worker import DeliveryWorker, worker_pool

ARQ_JOB_TIMEOUT_SECONDS = 600
GRACEFUL_SHUTDOWN_SECONDS = 10
CONNECTION_LOST_RETRY_SECONDS = 1.0

log = logging.getLogger(__name__)


def serve(settings: Settings, host: str, port: int) -> None:
    configure_logging(settings.log_level, settings.log_format, masker_for(settings))
    try:
        uvloop.run(_serve(settings, host, port))
    except KeyboardInterrupt:
        # Ctrl-C: uvicorn has stopped cleanly by now, then raised the signal again, which Python
        # turns into KeyboardInterrupt. The stop was asked for and went well: no "Aborted!", exit 0.
        return


def listening_line(sock: socket.socket, path: str = "") -> str:
    """`listening on http://HOST:PORT`: the address `sock` is bound to, with the port it got."""
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    return f"listening on http://{shown}:{port}{path}"


class _Server(uvicorn.Server):
    """uvicorn's server, saying where it listens once it does: handed sockets, uvicorn says nothing."""

    metrics_socket: socket.socket | None = None  # METRICS_PORT's, when set (the console's is said apart)

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if sockets and not self.should_exit:
            log.info(listening_line(sockets[0]))
            if self.metrics_socket is not None:
                log.info("metrics on %s/metrics", http_address(self.metrics_socket.getsockname()))


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
        raise cannot_listen(f"listen on {host}:{port}", exc, host_fix, port_fix) from None
    return sock


def cannot_listen(what: str, exc: OSError, host_fix: str, port_fix: str) -> ConfigurationError:
    """`cannot WHAT: why; what to do`, for an address that could not be bound."""
    if exc.errno == errno.EADDRINUSE:
        fix = f"choose another {port_fix}, or stop the process that uses it"
    elif exc.errno == errno.EACCES:
        fix = f"ports below 1024 need privileges: choose another {port_fix}"
    else:
        fix = f"fix {host_fix}: it must be an address of this machine"
    return ConfigurationError(f"cannot {what}: {exc.strerror or exc}; {fix}")


async def _serve(settings: Settings, host: str, port: int) -> None:
    from engine.console import server as console_server  # the console's pages, only when served
    from engine.console.app import create_console

    sockets = _listening_sockets(settings, host, port)
    console_socket = console_server.bind_in_serve(settings)
    limits = connection_limits(settings)
    try:
        service = await open_service(settings, receive=True, process_in_process=not settings.redis_url)
    except BaseException:
        for sock in [*sockets, *([console_socket] if console_socket else [])]:
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
    if console_socket is not None:
        console = create_console(console_server.service_parts(service))
        app.before_serving(console.startup)
        app.after_serving(console.shutdown)
        console_port = console_socket.getsockname()[1]
        served = by_local_port(console_port, console.asgi_app, served)
        sockets.append(console_socket)
        log.info("console at %s", console_server.address_text(settings.console_host, console_port))
    config = server_config(
        served,
        limits,
        loop="none",  # the uvloop loop we are already running on
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
    )
    server = _Server(config)
    server.metrics_socket = sockets[1] if len(sockets) >= 2 and sockets[1] is not console_socket else None
    try:
        await server.serve(sockets=sockets)
    finally:
        await service.close()


def http_address(address: tuple[Any, ...]) -> str:
    """`http://host:port` of a bound socket's address (IPv6 in brackets)."""
    host, port = address[0], address[1]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _listening_sockets(settings: Settings, host: str, port: int) -> list[socket.socket]:
    """The webhook port's socket, then METRICS_PORT's when it is set (port 0: one the system picks)."""
    sockets = [bound_socket(host, port)]
    if settings.metrics_port is not None:
        metrics_host = settings.metrics_host or host
        if port and (metrics_host, settings.metrics_port) == (host, port):
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
    # Both before anything opens: Redis down or the port taken is one line, with nothing to undo.
    await require_redis(settings.redis_url)
    metrics_port = metrics_port if metrics_port is not None else settings.metrics_port
    metrics_host = settings.metrics_host or settings.host
    if metrics_port is not None:
        _check_metrics_port(metrics_host, metrics_port)
    service = await open_service(settings, receive=False, process_in_process=False)
    if metrics_port is not None:
        # Served once the service is open: metrics that answer mean a worker that works.
        try:
            _serve_worker_metrics(metrics_host, metrics_port, service.metrics.registry)
        except BaseException:
            await service.close()
            raise

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
        # Its job ids carry the queue's name: each installation on a Redis database sweeps.
        cron_jobs=[
            cron(
                sweep,
                name=job_id(settings.queue_name, "sweep"),
                second=set(range(0, 60, every)),
                run_at_startup=True,
            )
        ],
        queue_name=settings.queue_name,
        redis_pool=worker_pool(settings.redis_url, settings.queue_name),
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


async def require_redis(url: str) -> None:
    """Ping Redis once; raise redis-py's ConnectionError or TimeoutError when it does not answer.

    The worker stops at once then, instead of arq's five warnings a second apart.
    """
    client = Redis.from_url(url, socket_connect_timeout=2, socket_timeout=5)
    try:
        await client.ping()
    finally:
        await client.aclose()


def _check_metrics_port(host: str, port: int) -> None:
    """Bind the worker's metrics address once and let it go: taken, it stops the worker in one line."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    except OSError as exc:
        raise _metrics_port_problem(host, port, exc) from None


def _serve_worker_metrics(host: str, port: int, registry: CollectorRegistry) -> None:
    try:
        server, _ = prometheus_client.start_http_server(port, host, registry=registry)
    except OSError as exc:  # taken since the check
        raise _metrics_port_problem(host, port, exc) from None
    log.info("metrics on %s/metrics", http_address(server.server_address))


def _metrics_port_problem(host: str, port: int, exc: OSError) -> ConfigurationError:
    where = f"serve the worker's metrics on {host}:{port}"
    return cannot_listen(where, exc, "METRICS_HOST", "--metrics-port (or METRICS_PORT)")


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
