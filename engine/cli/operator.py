"""Operator commands of `stockaj-rules`: serve, worker, send, deliveries, redeliver, db.

Every command reads its settings from the environment (engine.config). What an
operator can fix ends with one line and exit 2 (engine/cli/operator_support.py).
`deliveries` is engine/cli/deliveries.py. `deliveries show/export` and `redeliver`
exit 1 for an unknown delivery.
"""

from __future__ import annotations

import hashlib
import json
import sys
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import click
import httpx
import redis.exceptions

from engine.cli.deliveries import deliveries
from engine.cli.operator_support import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK
from engine.cli.operator_support import operator_errors as _operator_errors
from engine.cli.operator_support import run as _run
from engine.cli.operator_support import shown_url as _shown_url
from engine.cli.operator_support import unknown_delivery as _unknown
from engine.cli.operator_support import usage_error as _usage
from engine.cli.report import problems_text
from engine.config import Settings, listen_address, load_settings
from engine.errors import ConfigurationError
from engine.language.fixtures import Fixture, load_fixtures
from engine.pipeline import redelivery, runners
from engine.pipeline.service import masker_for
from engine.secrets import Masker
from engine.signing import DELIVERY_HEADER, EVENT_HEADER, SIGNATURE_HEADER, sign
from engine.store import database
from engine.store.open_problems import open_problem, sqlite_file_problem

SEND_TIMEOUT_SECONDS = 30  # Stockaj waits at most 30 s for an answer
SHOWN_RESPONSE_CHARS = 300
REDELIVER_TIMEOUT_SECONDS = 60.0
# A fixture's own `headers` are sent too, except these, which `send` writes itself.
_SIGNED_HEADERS = {h.lower() for h in ("Content-Type", EVENT_HEADER, DELIVERY_HEADER, SIGNATURE_HEADER)}


def register(cli: click.Group) -> None:
    cli.add_command(serve)
    cli.add_command(worker)
    cli.add_command(send)
    cli.add_command(deliveries)
    cli.add_command(redeliver)
    cli.add_command(db)


@click.command()
@click.option("--host", default=None, help="Address to listen on (default: HOST, or 127.0.0.1).")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=None,
    help="Port (default: PORT, or 8000); 0 for a free one. The address bound is logged.",
)
def serve(host: str | None, port: int | None) -> None:
    """Receive webhooks (and, without REDIS_URL, process them too)."""
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
    """Process the deliveries the receivers enqueue on REDIS_URL."""
    settings = load_settings()
    if not settings.redis_url:
        raise ConfigurationError("REDIS_URL is not set: the worker takes its jobs from Redis; set it")
    masker = masker_for(settings)
    with _operator_errors(masker):
        try:
            runners.work(settings, metrics_port)
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
            reason = str(exc).rstrip(".") or type(exc).__name__
            raise ConfigurationError(
                f"cannot reach REDIS_URL ({_shown_url(settings.redis_url)}): {reason}; "
                "start Redis or fix REDIS_URL"
            ) from None


@click.command()
@click.argument("fixture", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@click.option("--url", required=True, help="The receiver, e.g. http://127.0.0.1:8000/webhooks/stockaj")
@click.option("--secret", default=None, help="Signing secret (default: STOCKAJ_WEBHOOK_SECRET).")
def send(fixture: Path, url: str, secret: str | None) -> None:
    """Sign and POST a fixture exactly as Stockaj does.

    Stockaj's "Send Test", from this side.
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


@click.command()
@click.argument("delivery_id")
@click.option("--force", is_flag=True, help="Run succeeded actions again too.")
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=REDELIVER_TIMEOUT_SECONDS,
    show_default=True,
    help="With REDIS_URL: seconds to wait for the workers to finish it; past them, exit 1.",
)
@click.option(
    "--no-wait",
    is_flag=True,
    help="With REDIS_URL: exit 0 once it is enqueued, without waiting for the workers.",
)
def redeliver(delivery_id: str, force: bool, timeout: float, no_wait: bool) -> None:
    """Run a stored delivery through the current rules again.

    Actions that already succeeded for it are not run again unless --force.
    Without REDIS_URL it is processed here and now; with it, the workers take it
    and this command waits for their outcome (up to --timeout; --no-wait does not).
    Exit 0 when it ends done, no_match or waiting for a retry (or, with --no-wait,
    once enqueued); 1 when it ends failed (the reason is printed), is not
    redelivered (a run is processing it right now), or is not finished in time.
    """
    settings = load_settings()
    masker = masker_for(settings)
    with _operator_errors(masker):
        outcome = redelivery.redeliver(settings, delivery_id, force, None if no_wait else timeout)
    if outcome is None:
        _unknown(delivery_id)
    click.echo(f"{delivery_id}: {masker.mask(outcome.text)}")
    sys.exit(EXIT_OK if outcome.ok else EXIT_FAILED)


@click.group("db")
def db() -> None:
    """Database schema."""


@db.command("upgrade")
def db_upgrade() -> None:
    """Apply the migrations not yet applied to DATABASE_URL.

    SQLite or PostgreSQL; SQLite is also migrated by the commands that open it.
    """

    async def main(settings: Settings) -> None:
        where = f"cannot upgrade the database at {_shown_url(settings.database_url)}"
        problem = sqlite_file_problem(settings.database_url)
        if problem:
            raise ConfigurationError(f"{where}: {problem}")
        engine = database.create_engine(settings.database_url)
        try:
            await database.upgrade(engine)
        except Exception as exc:
            # Whatever stopped it (no server, wrong password, no rights) is the operator's to fix.
            raise ConfigurationError(f"{where}: {open_problem(exc, settings.database_url)}") from None
        finally:
            await engine.dispose()

    settings = load_settings()
    _run(main, settings)
    click.echo(f"database schema is up to date at {_shown_url(settings.database_url)}")
