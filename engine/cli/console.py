"""`stockaj-rules console`: the web console on its own (SPEC section 16).

`serve` already serves it in the embedded default; this command is for the distributed
topology (a receiver, workers on Redis, PostgreSQL) or a console apart from the receiver.
The server stack is imported only when the command runs.
"""

from __future__ import annotations

import click

from engine.config import listen_address, load_settings


@click.command("console")
@click.option("--host", default=None, help="Address to listen on (default: CONSOLE_HOST, or 127.0.0.1).")
@click.option(
    "--port", type=click.IntRange(1, 65535), default=None, help="Port (default: CONSOLE_PORT, or 8001)."
)
def console_command(host: str | None, port: int | None) -> None:
    """The web console: deliveries, rules and the playground."""
    if host is not None:
        try:
            listen_address(host)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--host") from None
    settings = load_settings()
    from engine.cli.operator_support import operator_errors
    from engine.console import server
    from engine.pipeline.service import masker_for

    with operator_errors(masker_for(settings)):
        server.run(settings, *server.console_address(settings, host, port))
