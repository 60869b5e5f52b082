"""What the operator commands share: exit codes, running with settings, one-line refusals.

What an operator can fix — a bad or missing setting, a database or Redis that does not
answer, an unmigrated schema, broken rule files — ends with one line (the rule problems
with theirs) and exit 2, never a traceback; secrets are masked in all of it.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from typing import Any, NoReturn, TypeVar

import click
from sqlalchemy.engine import make_url

from engine.cli.report import problems_text
from engine.config import Settings, load_settings
from engine.errors import ConfigurationError, SourceErrors
from engine.pipeline.service import masker_for
from engine.secrets import Masker

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2

T = TypeVar("T")


@contextmanager
def operator_errors(masker: Masker) -> Iterator[None]:
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


def run(main: Callable[[Settings], Coroutine[Any, Any, T]], settings: Settings | None = None) -> T:
    """`main(settings)` on a new event loop, what an operator can fix ending in one line."""
    settings = settings or load_settings()
    with operator_errors(masker_for(settings)):
        return asyncio.run(main(settings))


def shown_url(url: str) -> str:
    """A database or Redis URL with its password hidden."""
    return make_url(url).render_as_string(hide_password=True)


def unknown_delivery(delivery_id: str) -> NoReturn:
    click.echo(f"no delivery {delivery_id!r} in the store (see: stockaj-rules deliveries list)", err=True)
    sys.exit(EXIT_FAILED)


def usage_error(message: str) -> NoReturn:
    click.echo(message, err=True)
    sys.exit(EXIT_BAD_INPUT)
