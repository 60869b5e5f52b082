"""`stockaj-rules check`: validate every rule file, then warn about what may be wrong.

Problems (the rules do not load) are errors: exit 1. Warnings (SPEC section 14) are
fields no fixture of the rule's events has, a list compared with `==` to one value,
and `secrets.NAME` without `SECRET_NAME` in the environment; they leave the exit code
at 0 unless `--strict` makes them errors.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from actions.registry import load_registry
from engine.cli import report
from engine.cli.field_sources import fixture_catalog
from engine.config import Settings, load_settings, secret_variables
from engine.errors import SourceErrors
from engine.language.field_warnings import rule_warnings
from engine.language.fixtures import DEFAULT_FIXTURES_DIR
from engine.language.loader import load_rules
from engine.secrets import Masker

EXIT_OK, EXIT_FAILED = 0, 1


@click.command()
@click.option(
    "--rules",
    "rules_dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Folder of rule files (default: RULES_DIR, or ./rules).",
)
@click.option(
    "--fixtures",
    "fixture_paths",
    multiple=True,
    type=click.Path(path_type=Path),
    help="Fixture files or folders whose payload fields the rules are checked against "
    "(default: ./fixtures, when it exists).",
)
@click.option("--strict", is_flag=True, help="Warnings are errors: exit 1 when there is any.")
def check(rules_dir: Path | None, fixture_paths: tuple[Path, ...], strict: bool) -> None:
    """Check every rule file; each problem at its file:line:col."""
    settings = load_settings()
    masker = _masker(settings)
    folder = rules_dir or settings.rules_dir
    try:
        rules = load_rules(folder, load_registry())
    except SourceErrors as exc:
        click.echo(masker.mask(report.problems_text(exc.problems)), err=True)
        files = len({p.path for p in exc.problems})
        click.echo(f"{len(exc.problems)} problem(s) in {files} file(s) under {folder}", err=True)
        sys.exit(EXIT_FAILED)
    if not rules.files:
        click.echo(f"no rule files (*.json, *.yaml, *.yml) found under {folder}", err=True)
    paths = fixture_paths or ((DEFAULT_FIXTURES_DIR,) if DEFAULT_FIXTURES_DIR.is_dir() else ())
    catalog, problems = fixture_catalog(paths)
    if problems and fixture_paths:
        click.echo(masker.mask(report.problems_text(problems)), err=True)
    warnings = rule_warnings(rules, catalog, secret_variables())
    if warnings:
        click.echo(masker.mask(report.problems_text(warnings)), err=True)
    if strict and warnings:
        click.echo(f"{len(warnings)} warning(s) under {folder}, errors with --strict", err=True)
        sys.exit(EXIT_FAILED)
    click.echo(f"OK: {len(rules)} rule(s) in {len(rules.files)} file(s) under {folder}")
    if warnings:
        click.echo(f"{len(warnings)} warning(s) (stockaj-rules check --strict makes them errors)", err=True)


def _masker(settings: Settings) -> Masker:
    return Masker([*settings.sensitive_values(), *secret_variables().values()])
