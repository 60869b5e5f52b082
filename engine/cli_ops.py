"""Operator commands of `stockaj-rules`: serve, worker, send, deliveries, redeliver, db.

Every command reads its settings from the environment (engine.config); a bad
or missing setting ends with one line and exit 2, never a traceback.
"""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import click
import httpx

from engine import database, runners
from engine.config import Settings, load_settings
from engine.delivery import Delivery
from engine.errors import ConfigurationError
from engine.fixtures import fixture_document, load_fixtures
from engine.report import problems_text
from engine.service import masker_for, open_store
from engine.signing import DELIVERY_HEADER, EVENT_HEADER, SIGNATURE_HEADER, sign
from engine.store import Store, StoredDelivery
from engine.tables import DeliveryStatus

T = TypeVar("T")


def _run(main: Callable[[Settings], Coroutine[Any, Any, T]]) -> T:
    return asyncio.run(main(load_settings()))


def register(cli: click.Group) -> None:
    cli.add_command(serve)
    cli.add_command(worker)
    cli.add_command(send)
    cli.add_command(deliveries)
    cli.add_command(redeliver)
    cli.add_command(db)


@click.command()
@click.option("--host", default=None, help="Address to listen on (default: HOST, or 127.0.0.1).")
@click.option("--port", type=int, default=None, help="Port (default: PORT, or 8000).")
def serve(host: str | None, port: int | None) -> None:
    """The webhook receiver (and, without REDIS_URL, the workers in the same process)."""
    settings = load_settings()
    settings.require_webhook_secret()
    runners.serve(settings, host or settings.host, port or settings.port)


@click.command()
@click.option("--metrics-port", type=int, default=None, help="Serve Prometheus metrics on this port.")
def worker(metrics_port: int | None) -> None:
    """An arq worker: processes the deliveries the receivers enqueue on REDIS_URL."""
    settings = load_settings()
    if not settings.redis_url:
        raise ConfigurationError("REDIS_URL is not set: the worker takes its jobs from Redis; set it")
    runners.work(settings, metrics_port)


@click.command()
@click.argument("fixture", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@click.option("--url", required=True, help="The receiver, e.g. http://127.0.0.1:8000/webhooks/stockaj")
@click.option("--secret", default=None, help="Signing secret (default: STOCKAJ_WEBHOOK_SECRET).")
def send(fixture: Path, url: str, secret: str | None) -> None:
    """Sign and POST a fixture exactly as Stockaj does (Stockaj's "Send Test", from this side)."""
    secret = secret or load_settings().stockaj_webhook_secret
    if not secret:
        raise ConfigurationError("no secret: pass --secret or set STOCKAJ_WEBHOOK_SECRET")
    files, problems = load_fixtures([fixture])
    if problems:
        click.echo(problems_text(problems), err=True)
        sys.exit(2)
    failed = False
    for item in (f for file in files for f in file.fixtures):
        body = json.dumps(item.delivery.payload).encode()
        delivery_id = item.delivery.delivery_id if item.delivery.delivery_id else str(uuid.uuid4())
        headers = {
            "Content-Type": "application/json",
            EVENT_HEADER: item.delivery.event,
            DELIVERY_HEADER: delivery_id,
            SIGNATURE_HEADER: sign(body, secret),
        }
        try:
            response = httpx.post(url, content=body, headers=headers, timeout=30)
        except httpx.HTTPError as exc:
            click.echo(f"{item.name}: could not reach {url}: {type(exc).__name__}: {exc}", err=True)
            sys.exit(1)
        click.echo(f"{item.name}: {response.status_code} {response.text.strip()}")
        failed |= not response.is_success
    sys.exit(1 if failed else 0)


@click.group()
def deliveries() -> None:
    """Read the delivery log."""


@deliveries.command("list")
@click.option("--status", type=click.Choice([s.value for s in DeliveryStatus]), default=None)
@click.option("--limit", type=int, default=50, show_default=True)
def deliveries_list(status: str | None, limit: int) -> None:
    """The newest deliveries, newest first."""

    async def main(settings: Settings) -> list[StoredDelivery]:
        store = await open_store(settings)
        try:
            return await store.recent(DeliveryStatus(status) if status else None, limit)
        finally:
            await store.engine.dispose()

    rows = _run(main)
    if not rows:
        click.echo("no deliveries")
    for row in rows:
        click.echo(
            f"{row.received_at.isoformat(timespec='seconds')}  {row.status.value:<10}  "
            f"{row.event:<22}  {row.delivery_id}"
        )


@deliveries.command("show")
@click.argument("delivery_id")
def deliveries_show(delivery_id: str) -> None:
    """The whole story of a delivery: headers, body, each rule's outcome, each action's runs."""

    async def main(settings: Settings) -> list[str]:
        store = await open_store(settings)
        try:
            return await _story(store, delivery_id, settings)
        finally:
            await store.engine.dispose()

    for line in _run(main):
        click.echo(line)


async def _story(store: Store, delivery_id: str, settings: Settings) -> list[str]:
    masker = masker_for(settings)
    stored = await _stored_or_exit(store, delivery_id)
    lines = [
        f"delivery {stored.delivery_id}",
        f"  event     {stored.event}",
        f"  status    {stored.status.value}" + (f" ({stored.error})" if stored.error else ""),
        f"  received  {stored.received_at.isoformat()}  (runs: {stored.runs}, last progress "
        f"{stored.updated_at.isoformat()})",
        "headers",
        *(f"  {name}: {value}" for name, value in stored.headers.items()),
        "body" + ("" if stored.body is not None else " (dropped by retention)"),
    ]
    if stored.body is not None:
        body = masker.mask(json.dumps(json.loads(stored.body), indent=2, ensure_ascii=False))
        lines += [f"  {line}" for line in body.splitlines()]
    lines.append("rules")
    for outcome in await store.outcomes(delivery_id):
        mark = "✓" if outcome.status == "fired" else "·"
        lines.append(f"  {mark} {outcome.rule_id}: {outcome.status}: {outcome.reason}")
    runs = await store.action_runs(delivery_id)
    lines.append("actions" + ("" if runs else " (none ran)"))
    for (rule_id, index), run in sorted(runs.items()):
        lines.append(
            f"  {rule_id} actions[{index}] {run.type}: {run.status.value}, {run.attempts} attempt(s)"
            + (f", response {run.response_status}" if run.response_status else "")
        )
        lines.append(f"      params: {json.dumps(masker.mask(run.params), ensure_ascii=False)}")
        if run.last_error:
            lines.append(f"      last error: {masker.mask(run.last_error)}")
        if run.next_attempt_at:
            lines.append(f"      next attempt: {run.next_attempt_at.isoformat()}")
    return lines


@deliveries.command("export")
@click.argument("delivery_id")
@click.option("--name", default=None, help="The fixture's name (default: event and delivery id).")
def deliveries_export(delivery_id: str, name: str | None) -> None:
    """Write a stored delivery as a fixture (JSON), ready to gain expectations."""

    async def main(settings: Settings) -> dict[str, Any]:
        store = await open_store(settings)
        try:
            stored = await _stored_or_exit(store, delivery_id)
        finally:
            await store.engine.dispose()
        if stored.body is None:
            raise ConfigurationError(
                f"delivery {delivery_id}'s body was dropped by retention; nothing to export"
            )
        delivery = Delivery(stored.event, stored.delivery_id, json.loads(stored.body))
        fixture = fixture_document(delivery, name or f"{stored.event} {stored.delivery_id}")
        return dict(masker_for(settings).mask(fixture))

    click.echo(json.dumps(_run(main), indent=2, ensure_ascii=False))


@click.command()
@click.argument("delivery_id")
@click.option("--force", is_flag=True, help="Run succeeded actions again too.")
def redeliver(delivery_id: str, force: bool) -> None:
    """Run a stored delivery through the current rules again."""
    settings = load_settings()
    status = runners.redeliver(settings, delivery_id, force)
    if status is None:
        click.echo(f"no delivery {delivery_id} in the store (see: stockaj-rules deliveries list)", err=True)
        sys.exit(1)
    click.echo(f"{delivery_id}: {status}")


@click.group("db")
def db() -> None:
    """Database schema."""


@db.command("upgrade")
def db_upgrade() -> None:
    """Apply every migration not yet applied to DATABASE_URL."""

    async def main(settings: Settings) -> None:
        engine = database.create_engine(settings.database_url)
        try:
            await database.upgrade(engine)
        finally:
            await engine.dispose()

    _run(main)
    click.echo("database schema is up to date")


async def _stored_or_exit(store: Store, delivery_id: str) -> StoredDelivery:
    stored = await store.get(delivery_id)
    if stored is None:
        click.echo(f"no delivery {delivery_id} in the store (see: stockaj-rules deliveries list)", err=True)
        sys.exit(1)
    return stored
