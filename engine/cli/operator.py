"""Operator commands of `stockaj-rules`: serve, worker, send, deliveries, redeliver, db.

Every command reads its settings from the environment (engine.config). What an
operator can fix — a bad or missing setting, a database or Redis that does not
answer, an unmigrated schema, broken rule files — ends with one line (the rule
problems with theirs) and exit 2, never a traceback; secrets are masked in all
of it. `deliveries show/export` and `redeliver` exit 1 for an unknown delivery.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sys
import uuid
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn, TypeVar
from urllib.parse import urlsplit

import click
import httpx
import redis.exceptions
from sqlalchemy.engine import make_url

from engine.cli.output_files import write_for_command
from engine.cli.report import problems_text
from engine.config import Settings, listen_address, load_settings
from engine.errors import ConfigurationError, SourceErrors
from engine.language.delivery import Delivery
from engine.language.fixtures import Fixture, fixture_document, load_fixtures
from engine.language.matching import RuleStatus
from engine.pipeline import runners
from engine.pipeline.service import masker_for, open_store
from engine.printable import printable
from engine.secrets import Masker
from engine.signing import DELIVERY_HEADER, EVENT_HEADER, SIGNATURE_HEADER, sign
from engine.store import Store, StoredDelivery, database
from engine.store.tables import DeliveryStatus

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2
SEND_TIMEOUT_SECONDS = 30  # Stockaj waits at most 30 s for an answer
SHOWN_RESPONSE_CHARS = 300
# A fixture's own `headers` are sent too, except these, which `send` writes itself.
_SIGNED_HEADERS = {h.lower() for h in ("Content-Type", EVENT_HEADER, DELIVERY_HEADER, SIGNATURE_HEADER)}

T = TypeVar("T")


def register(cli: click.Group) -> None:
    cli.add_command(serve)
    cli.add_command(worker)
    cli.add_command(send)
    cli.add_command(deliveries)
    cli.add_command(redeliver)
    cli.add_command(db)


@contextmanager
def _operator_errors(masker: Masker) -> Iterator[None]:
    """What an operator can fix, as one masked line (exit 2); anything else stays a bug's traceback."""
    try:
        yield
    except ConfigurationError as exc:
        raise ConfigurationError(_one_line(masker, str(exc))) from None
    except SourceErrors as exc:
        click.echo(masker.mask(problems_text(exc.problems)), err=True)
        click.echo("fix the rules above (stockaj-rules check lists every problem)", err=True)
        sys.exit(EXIT_BAD_INPUT)


def _one_line(masker: Masker, text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return str(masker.mask(lines[0] if lines else text))


def _run(main: Callable[[Settings], Coroutine[Any, Any, T]], settings: Settings | None = None) -> T:
    settings = settings or load_settings()
    with _operator_errors(masker_for(settings)):
        return asyncio.run(main(settings))


def _shown_url(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


@click.command()
@click.option("--host", default=None, help="Address to listen on (default: HOST, or 127.0.0.1).")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=None,
    help="Port (default: PORT, or 8000); 0 for a free one. The address bound is logged.",
)
def serve(host: str | None, port: int | None) -> None:
    """The webhook receiver (and, without REDIS_URL, the workers in the same process)."""
    try:
        listen_address(host or "")
    except ValueError as exc:
        _usage(f"Error: Invalid value for '--host': {exc}")
    settings = load_settings()
    settings.require_webhook_secret()
    with _operator_errors(masker_for(settings)):
        runners.serve(settings, host or settings.host, settings.port if port is None else port)


@click.command()
@click.option(
    "--metrics-port",
    type=click.IntRange(0, 65535),
    default=None,
    help="Serve Prometheus metrics on this port (default: METRICS_PORT, or none); 0 for a free one.",
)
def worker(metrics_port: int | None) -> None:
    """An arq worker: processes the deliveries the receivers enqueue on REDIS_URL."""
    settings = load_settings()
    if not settings.redis_url:
        raise ConfigurationError("REDIS_URL is not set: the worker takes its jobs from Redis; set it")
    masker = masker_for(settings)
    with _operator_errors(masker):
        try:
            runners.work(settings, metrics_port)
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
            raise ConfigurationError(
                f"cannot reach REDIS_URL ({_shown_url(settings.redis_url)}): {type(exc).__name__}: "
                f"{exc}; start Redis or fix REDIS_URL"
            ) from None
        except OSError as exc:  # e.g. --metrics-port (or METRICS_PORT) taken
            raise ConfigurationError(f"the worker cannot start: {type(exc).__name__}: {exc}") from None


@click.command()
@click.argument("fixture", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@click.option("--url", required=True, help="The receiver, e.g. http://127.0.0.1:8000/webhooks/stockaj")
@click.option("--secret", default=None, help="Signing secret (default: STOCKAJ_WEBHOOK_SECRET).")
def send(fixture: Path, url: str, secret: str | None) -> None:
    """Sign and POST a fixture exactly as Stockaj does (Stockaj's "Send Test", from this side).

    A fixture's own delivery_id is sent as written (send it twice to see the
    duplicate answer); a fixture without one gets a new id every time.
    Exit 0 when every answer is 2xx, 1 otherwise or when the URL does not answer.
    """
    secret = secret or load_settings().stockaj_webhook_secret
    if not secret:
        raise ConfigurationError("no secret: pass --secret or set STOCKAJ_WEBHOOK_SECRET")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        _usage(f"--url {url!r} is not an http(s) URL; write e.g. http://127.0.0.1:8000/webhooks/stockaj")
    files, problems = load_fixtures([fixture])
    if problems:
        click.echo(problems_text(problems), err=True)
        sys.exit(EXIT_BAD_INPUT)
    masker = Masker([secret])
    failed = False
    with httpx.Client(timeout=SEND_TIMEOUT_SECONDS, follow_redirects=False) as client:
        for item in (f for file in files for f in file.fixtures):
            body = json.dumps(item.delivery.payload).encode()
            headers = {
                **{k: v for k, v in item.delivery.headers.items() if k.lower() not in _SIGNED_HEADERS},
                "Content-Type": "application/json",
                EVENT_HEADER: item.delivery.event,
                DELIVERY_HEADER: _explicit_delivery_id(item) or str(uuid.uuid4()),
                SIGNATURE_HEADER: sign(body, secret),
            }
            try:
                response = client.post(url, content=body, headers=headers)
            except httpx.HTTPError as exc:
                click.echo(f"{item.name}: could not reach {url}: {type(exc).__name__}: {exc}", err=True)
                sys.exit(EXIT_FAILED)
            text = masker.mask(" ".join(response.text.split()))[:SHOWN_RESPONSE_CHARS]
            click.echo(f"{item.name}: {response.status_code} {text}")
            failed |= not response.is_success
    sys.exit(EXIT_FAILED if failed else EXIT_OK)


def _explicit_delivery_id(item: Fixture) -> str | None:
    """The fixture's written delivery_id; None when the loader derived one from its name."""
    derived = "fixture-" + hashlib.sha256(item.name.encode()).hexdigest()[:16]
    return None if item.delivery.delivery_id == derived else item.delivery.delivery_id


@click.group()
def deliveries() -> None:
    """Read the delivery log."""


@deliveries.command("list")
@click.option("--status", type=click.Choice([s.value for s in DeliveryStatus]), default=None)
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True)
def deliveries_list(status: str | None, limit: int) -> None:
    """The newest deliveries, newest first."""

    async def main(settings: Settings) -> list[StoredDelivery]:
        store = await open_store(settings)
        try:
            return await store.recent(DeliveryStatus(status) if status else None, limit)
        finally:
            await store.close()

    rows = _run(main)
    if not rows:
        click.echo("no deliveries" + (f" with status {status}" if status else ""))
        return
    click.echo(f"{'received (UTC)':<25}  {'status':<10}  {'event':<22}  delivery id")
    for row in rows:
        click.echo(
            f"{row.received_at.isoformat(timespec='seconds'):<25}  {row.status.value:<10}  "
            f"{printable(row.event):<22}  {printable(row.delivery_id)}"
        )


@deliveries.command("show")
@click.argument("delivery_id")
def deliveries_show(delivery_id: str) -> None:
    """The whole story of a delivery: headers, body, each rule's outcome, each action's runs."""

    async def main(settings: Settings) -> list[str] | None:
        store = await open_store(settings)
        try:
            return await _story(store, delivery_id, masker_for(settings))
        finally:
            await store.close()

    lines = _run(main)
    if lines is None:
        _unknown(delivery_id)
    for line in lines:
        click.echo(line)


async def _story(store: Store, delivery_id: str, masker: Masker) -> list[str] | None:
    stored = await store.get(delivery_id)
    if stored is None:
        return None
    error = f" ({masker.mask(stored.error)})" if stored.error else ""
    lines = [
        f"delivery {printable(stored.delivery_id)}",  # ids from before the receiver refused such
        f"  event     {printable(stored.event)}",
        f"  status    {stored.status.value}{error}",
        f"  received  {stored.received_at.isoformat()}  (runs: {stored.runs}, last progress "
        f"{stored.updated_at.isoformat()})",
        "headers",
        *(f"  {printable(name)}: {printable(masker.mask(value))}" for name, value in stored.headers.items()),
        "body" + ("" if stored.body is not None else " (dropped by retention)"),
    ]
    if stored.body is not None:
        body = masker.mask(_pretty(stored.body))
        lines += [f"  {line}" for line in body.splitlines()]
    outcomes = await store.outcomes(delivery_id)
    lines.append("rules" + ("" if outcomes else " (not matched yet)"))
    for outcome in outcomes:
        mark = "✓" if outcome.status == RuleStatus.FIRED else "·"
        lines.append(f"  {mark} {outcome.rule_id}: {outcome.status}: {masker.mask(outcome.reason)}")
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
@click.option(
    "--expect",
    "with_expectations",
    is_flag=True,
    help="Also write expect.fired / expect.not_fired as the delivery log recorded them.",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Write the fixture to this file (default: print it); never through a symbolic link.",
)
@click.option("--force", is_flag=True, help="Replace the --output file if it exists (a regular file only).")
def deliveries_export(
    delivery_id: str, name: str | None, with_expectations: bool, output: Path | None, force: bool
) -> None:
    """Write a stored delivery as a fixture (JSON), ready for `stockaj-rules test`."""

    async def main(settings: Settings) -> tuple[StoredDelivery | None, dict[str, Any]]:
        store = await open_store(settings)
        try:
            return await _fixture(store, delivery_id, name, with_expectations)
        finally:
            await store.close()

    settings = load_settings()
    stored, fixture = _run(main, settings)
    if stored is None:
        _unknown(delivery_id)
    if stored.body is None:
        click.echo(
            f"delivery {delivery_id}'s body was dropped by retention (BODY_RETENTION_DAYS); "
            "nothing to export",
            err=True,
        )
        sys.exit(EXIT_FAILED)
    text = json.dumps(masker_for(settings).mask(fixture), indent=2, ensure_ascii=False) + "\n"
    if output is None:
        click.echo(text, nl=False)
        return
    replace = (lambda _: None) if force else None
    problem = write_for_command("the fixture", output, text.encode(), option="--output", replace=replace)
    if problem:
        _usage(problem)
    click.echo(f"wrote {output}: try it with `stockaj-rules test {output}`")


def _pretty(body: bytes) -> str:
    """The body as indented JSON, or as it was stored when it does not parse."""
    try:
        return json.dumps(json.loads(body), indent=2, ensure_ascii=False)
    except (ValueError, RecursionError):
        return body.decode("utf-8", errors="replace")


async def _fixture(
    store: Store, delivery_id: str, name: str | None, expectations: bool
) -> tuple[StoredDelivery | None, dict[str, Any]]:
    """The stored delivery (None when unknown) and, when it still has its body, its fixture."""
    stored = await store.get(delivery_id)
    if stored is None or stored.body is None:
        return stored, {}
    delivery = Delivery(stored.event, stored.delivery_id, json.loads(stored.body))
    fixture = fixture_document(delivery, name or f"{stored.event} {stored.delivery_id}")
    if expectations:
        outcomes = await store.outcomes(delivery_id)
        fixture["expect"] = {
            "fired": [o.rule_id for o in outcomes if o.status == RuleStatus.FIRED],
            # A throttled rule fires in a dry run (its throttle is empty): expect nothing of it.
            "not_fired": [
                o.rule_id for o in outcomes if o.status not in (RuleStatus.FIRED, RuleStatus.THROTTLED)
            ],
        }
    return stored, fixture


@click.command()
@click.argument("delivery_id")
@click.option("--force", is_flag=True, help="Run succeeded actions again too.")
def redeliver(delivery_id: str, force: bool) -> None:
    """Run a stored delivery through the current rules again.

    Actions that already succeeded for it are not run again unless --force.
    Without REDIS_URL it is processed here and now; with it, the workers take it.
    Exit 0 when it ends done, no_match or waiting for a retry, 1 when it ends failed
    or is not redelivered (a run is processing it right now).
    """
    settings = load_settings()
    with _operator_errors(masker_for(settings)):
        status = runners.redeliver(settings, delivery_id, force)
    if status is None:
        _unknown(delivery_id)
    click.echo(f"{delivery_id}: {status}")
    sys.exit(EXIT_FAILED if status.startswith((DeliveryStatus.FAILED.value, "not redelivered")) else EXIT_OK)


@click.group("db")
def db() -> None:
    """Database schema."""


@db.command("upgrade")
def db_upgrade() -> None:
    """Apply every migration not yet applied to DATABASE_URL (SQLite or PostgreSQL)."""

    async def main(settings: Settings) -> None:
        engine = database.create_engine(settings.database_url)
        try:
            await database.upgrade(engine)
        except Exception as exc:
            # Whatever stopped it (no server, wrong password, no rights) is the operator's to fix.
            raise ConfigurationError(
                f"cannot upgrade the database at {_shown_url(settings.database_url)}: "
                f"{type(exc).__name__}: {exc}"
            ) from None
        finally:
            await engine.dispose()

    settings = load_settings()
    _run(main, settings)
    click.echo(f"database schema is up to date at {_shown_url(settings.database_url)}")


def _unknown(delivery_id: str) -> NoReturn:
    click.echo(f"no delivery {delivery_id!r} in the store (see: stockaj-rules deliveries list)", err=True)
    sys.exit(EXIT_FAILED)


def _usage(message: str) -> NoReturn:
    click.echo(message, err=True)
    sys.exit(EXIT_BAD_INPUT)
