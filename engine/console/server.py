"""Serving the console: on its own (`stockaj-rules console`) or inside `serve` (the embedded default).

Inside `serve` the console shares the running service: its store, its live rules (the ones
that process deliveries), its queue (a redeliver goes to the in-process workers). On its own
it opens the store, watches RULES_DIR itself, and a redeliver is enqueued for the workers
(REDIS_URL) or run in this process, as `stockaj-rules redeliver` does.
Either way it listens on CONSOLE_HOST:CONSOLE_PORT, and never beyond loopback without
CONSOLE_PASSWORD.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from datetime import UTC, datetime

import uvicorn
import uvloop

from actions.registry import load_registry
from engine.config import Settings, secret_variables
from engine.console.access import check_listening
from engine.console.app import ConsoleParts, Redeliver, create_console
from engine.pipeline import redelivery, runners
from engine.pipeline.http_protocol import server_config
from engine.pipeline.logs import configure_logging
from engine.pipeline.metrics import Metrics
from engine.pipeline.rule_reload import LiveRules
from engine.pipeline.service import Service, masker_for, open_store
from engine.queue import ArqQueue
from engine.store import Reopened, Store

log = logging.getLogger(__name__)


def console_address(settings: Settings, host: str | None = None, port: int | None = None) -> tuple[str, int]:
    return host or settings.console_host, port or settings.console_port


def address_text(host: str, port: int) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/"


def service_parts(service: Service) -> ConsoleParts:
    """The console of a running `serve`: its store, rules and queue."""
    settings = service.settings

    async def redeliver(delivery_id: str, force: bool) -> str | None:
        reopened = await service.store.reopen(delivery_id, datetime.now(UTC))
        if reopened is Reopened.UNKNOWN:
            return None
        if reopened is Reopened.RUNNING:
            return redelivery.NOT_REDELIVERED
        if force:
            await service.store.forget_action_runs(delivery_id)
        await service.queue.enqueue([delivery_id])
        return "queued: the page follows it until it is finished"

    return _parts(settings, service.store, service.rules, redeliver)


def _parts(settings: Settings, store: Store, rules: LiveRules, redeliver: Redeliver) -> ConsoleParts:
    return ConsoleParts(
        store=store,
        rules=rules,
        rules_dir=settings.rules_dir,
        fixtures_dir=settings.console_fixtures_dir,
        registry=load_registry(),
        masker=masker_for(settings),
        secrets=secret_variables(),
        redeliver=redeliver,
        password=settings.console_password,
        read_only=settings.console_read_only,
        rules_writable=settings.console_rules_writable,
        settings=settings,
    )


def standalone_redeliver(settings: Settings, store: Store) -> Redeliver:
    """Redeliver from `stockaj-rules console`: the workers run it (REDIS_URL), or this process does."""

    async def redeliver(delivery_id: str, force: bool) -> str | None:
        if not settings.redis_url:
            outcome = await redelivery.redeliver_now(settings, delivery_id, force, wait=None)
            return outcome.text if outcome is not None else None
        reopened = await store.reopen(delivery_id, datetime.now(UTC))
        if reopened is Reopened.UNKNOWN:
            return None
        if reopened is Reopened.RUNNING:
            return redelivery.NOT_REDELIVERED
        if force:
            await store.forget_action_runs(delivery_id)
        queue = await ArqQueue.connect(settings.redis_url, settings.queue_name, "console")
        try:
            await queue.enqueue([delivery_id])
        finally:
            await queue.close()
        return "enqueued for the workers: the page follows it until it is finished"

    return redeliver


def bind_in_serve(settings: Settings) -> socket.socket | None:
    """`serve`'s console socket, or None (CONSOLE_ENABLED=false, or the address is taken: said)."""
    if not settings.console_enabled or settings.redis_url:
        return None
    host, port = console_address(settings)
    check_listening(host, settings.console_password)
    try:
        return runners.bound_socket(host, port, ("CONSOLE_HOST", "CONSOLE_PORT"))
    except Exception as exc:  # the receiver matters more than the console: go on without it
        log.warning("the console is not served: %s", exc)
        return None


def run(settings: Settings, host: str, port: int) -> None:
    """`stockaj-rules console`: the console alone, until SIGTERM or Ctrl-C."""
    check_listening(host, settings.console_password)
    configure_logging(settings.log_level, settings.log_format, masker_for(settings))
    uvloop.run(_run(settings, host, port))


async def _run(settings: Settings, host: str, port: int) -> None:
    sock = runners.bound_socket(host, port, ("CONSOLE_HOST", "CONSOLE_PORT"))
    try:
        store = await open_store(settings)
    except BaseException:
        sock.close()
        raise
    rules = LiveRules(settings.rules_dir, load_registry(), Metrics())
    watcher = asyncio.create_task(rules.watch(), name="rules-watcher")
    app = create_console(_parts(settings, store, rules, standalone_redeliver(settings, store)))
    limits = runners.connection_limits(settings)
    config = server_config(
        app, limits, loop="none", timeout_graceful_shutdown=runners.GRACEFUL_SHUTDOWN_SECONDS
    )
    log.info("console at %s", address_text(host, port))
    try:
        await uvicorn.Server(config).serve(sockets=[sock])
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
        await store.close()
