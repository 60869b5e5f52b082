"""`stockaj-rules fields [EVENT...]`: the payload fields each event's deliveries have.

Built from the fixtures (and, with `--from-store`, the newest stored deliveries): per
event, each path as a rule reads it, its JSON types, in how many deliveries it was and
an example value. `check` warns with the same catalog (SPEC section 14).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from engine.cli import report
from engine.cli.field_sources import add_stored, fixture_catalog
from engine.config import load_settings, secret_variables
from engine.language.field_catalog import EventFields, FieldCatalog, FieldInfo
from engine.language.fixtures import DEFAULT_FIXTURES_DIR
from engine.secrets import Masker

EXIT_OK, EXIT_BAD_INPUT = 0, 2
DEFAULT_STORE_LIMIT = 1000


@click.command()
@click.argument("events", nargs=-1)
@click.option(
    "--fixtures",
    "fixture_paths",
    multiple=True,
    type=click.Path(path_type=Path),
    help="Fixture files or folders (default: ./fixtures).",
)
@click.option("--from-store", is_flag=True, help="Also read the newest stored deliveries (DATABASE_URL).")
@click.option(
    "--limit",
    type=click.IntRange(min=1, max=100_000),
    default=DEFAULT_STORE_LIMIT,
    show_default=True,
    help="How many stored deliveries --from-store reads, newest first.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def fields(
    events: tuple[str, ...], fixture_paths: tuple[Path, ...], from_store: bool, limit: int, as_json: bool
) -> None:
    """List the payload fields of each event.

    As seen in the fixtures (or the store); EVENT may end in *.
    """
    settings = load_settings()
    masker = Masker([*settings.sensitive_values(), *secret_variables().values()])
    paths = fixture_paths or (
        (DEFAULT_FIXTURES_DIR,) if DEFAULT_FIXTURES_DIR.exists() or not from_store else ()
    )
    catalog, problems = fixture_catalog(paths)
    if problems:
        click.echo(masker.mask(report.problems_text(problems)), err=True)
    catalog = catalog or FieldCatalog("fixture")
    if from_store:
        catalog.noun = "delivery"
        add_stored(catalog, settings, limit)
    shown = catalog.matching(events or ("*",))
    if not shown:
        where = " or in the store" if from_store else ""
        wanted = f" of {', '.join(events)}" if events else ""
        click.echo(
            f"no deliveries{wanted} in the fixtures ({', '.join(map(str, paths)) or 'none given'}){where}: "
            "add fixtures (stockaj-rules deliveries export ID prints one), "
            "or give --fixtures or --from-store",
            err=True,
        )
        sys.exit(EXIT_BAD_INPUT)
    selected = [catalog.events[event] for event in sorted(shown)]
    if as_json:
        click.echo(masker.mask(json.dumps({"events": [_event_json(e) for e in selected]}, indent=2)))
    else:
        for line in _table(selected, catalog):
            click.echo(masker.mask(line))
    sys.exit(EXIT_BAD_INPUT if problems else EXIT_OK)


def _table(selected: list[EventFields], catalog: FieldCatalog) -> list[str]:
    lines: list[str] = []
    for event in selected:
        infos = sorted(event.fields.values(), key=lambda info: info.path)
        count = catalog.noun if event.deliveries == 1 else catalog.plural
        lines.append(f"{event.event}  ({event.deliveries} {count})")
        width = max((len(info.name) for info in infos), default=0)
        type_width = max((len(_types(info)) for info in infos), default=0)
        for info in infos:
            seen = f"{info.deliveries} of {event.deliveries}"
            example = f"  e.g. {info.example}" if info.example is not None else ""
            lines.append(f"  {info.name:<{width}}  {_types(info):<{type_width}}  {seen:>9}{example}".rstrip())
        if event.paths_left_out:
            lines.append(f"  … and {event.paths_left_out} more path(s), over the limit of what is listed")
    return lines


def _types(info: FieldInfo) -> str:
    return " or ".join(name for name, _ in info.types.most_common())


def _event_json(event: EventFields) -> dict[str, Any]:
    return {
        "event": event.event,
        "deliveries": event.deliveries,
        "fields": [
            {
                "path": info.name,
                "types": dict(info.types.most_common()),
                "deliveries": info.deliveries,
                "example": info.example,
            }
            for info in sorted(event.fields.values(), key=lambda info: info.path)
        ],
    }
