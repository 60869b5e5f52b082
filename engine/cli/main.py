"""The `stockaj-rules` command line.

Exit codes follow the spec: `check` 0 ok / 1 errors; `test` 0 all pass /
1 a failure / 2 bad rules or usage; `replay` 0, or 2 on bad input. Bad
configuration or input ends with one clear line, never a traceback.
"""

from __future__ import annotations

import asyncio
import gc
import json
import sys
from pathlib import Path

import click

from actions.registry import ActionRegistry, load_registry
from engine.cli import report
from engine.cli.check import check
from engine.cli.conditions import conditions
from engine.cli.fields import fields
from engine.cli.fixture_tests import show_coverage, update_and_coverage
from engine.cli.junit import write_junit
from engine.cli.lazy_commands import LazyGroup
from engine.cli.updates import update_fixtures
from engine.config import Settings, colour_wanted, error_line, load_settings, secret_variables
from engine.errors import ConfigurationError, SourceErrors
from engine.language import harness
from engine.language.fixtures import DEFAULT_FIXTURES_DIR, FixtureFile, load_fixtures
from engine.language.loader import load_rules
from engine.language.rules import RuleSet
from engine.language.schema import rule_schema
from engine.secrets import Masker

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2
# The operator's commands need the server stack: imported when one runs, so that the rule
# author's commands here start without it (engine/cli/lazy_commands.py).
_OPERATOR_COMMAND_NAMES = ("serve", "worker", "send", "deliveries", "redeliver", "db")
OPERATOR_COMMANDS = {
    **{name: f"engine.cli.operator:{name}" for name in _OPERATOR_COMMAND_NAMES},
    "doctor": "engine.cli.doctor:doctor",
    "impact": "engine.cli.impact:impact_command",
    "console": "engine.cli.console:console_command",
    "plugins": "engine.cli.plugins:plugins",
}

rules_option = click.option(
    "--rules",
    "rules_dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Folder of rule files (default: RULES_DIR, or ./rules).",
)


def _settings() -> Settings:
    return load_settings()


def _masker(settings: Settings) -> Masker:
    return Masker([*settings.sensitive_values(), *secret_variables().values()])


def _load(rules_dir: Path | None, settings: Settings, registry: ActionRegistry) -> RuleSet:
    return load_rules(rules_dir or settings.rules_dir, registry)


@click.group(
    cls=LazyGroup, lazy_commands=OPERATOR_COMMANDS, context_settings={"help_option_names": ["-h", "--help"]}
)
@click.version_option(package_name="stockaj-rules")
@click.pass_context
def cli(ctx: click.Context) -> None:
    """Stockaj Rules: run your workflow rules on Stockaj webhooks."""
    ctx.color = colour_wanted()  # every command's colour goes out on a terminal only, never with NO_COLOR


@cli.command()
@rules_option
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
@click.option(
    "--junit",
    "junit_path",
    type=click.Path(path_type=Path, dir_okay=False),
    help=(
        "Also write JUnit XML here. An empty file or an earlier report of this command is "
        "replaced; any other file, and a symbolic link, is refused."
    ),
)
@click.option(
    "-v",
    "--verbose",
    is_flag=True,
    help="Show why every rule did not fire, also for passing fixtures (failing ones always show it).",
)
@update_and_coverage
def test(
    rules_dir: Path | None,
    paths: tuple[Path, ...],
    junit_path: Path | None,
    verbose: bool,
    update: bool,
    coverage: bool,
    coverage_json: Path | None,
) -> None:
    """Replay fixtures dry and check their expectations.

    PATHS are fixture files or folders (default ./fixtures).
    """
    settings = _settings()
    masker = _masker(settings)
    rules = _rules_or_exit(rules_dir, settings)
    if not rules.rules:
        click.echo(f"warning: no rules loaded from {rules_dir or settings.rules_dir}", err=True)
    files, problems = load_fixtures(paths or (DEFAULT_FIXTURES_DIR,))
    results = _replay(rules, files)
    if update:
        results, not_updated = update_fixtures(results, rules, masker)
        problems += not_updated
    for line in report.test_report(results, masker, verbose=verbose):
        click.echo(line)
    if problems:
        click.echo(masker.mask(report.problems_text(problems)), err=True)
    if junit_path is not None:
        problem = write_junit(junit_path, results, problems, masker)
        if problem:
            click.echo(problem, err=True)
            sys.exit(EXIT_BAD_INPUT)
    if coverage or coverage_json:
        show_coverage(rules, results, masker, terminal=coverage, json_path=coverage_json)
    click.echo(report.summary(results, len(problems)))
    if problems or not (results or problems):
        if not results and not problems:
            click.echo(
                "no fixtures found: give fixture files or folders, or add some to ./fixtures",
                err=True,
            )
        sys.exit(EXIT_BAD_INPUT)
    sys.exit(EXIT_OK if all(r.passed for r in results) else EXIT_FAILED)


@cli.command()
@rules_option
@click.argument("fixtures", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--json", "as_json", is_flag=True, help="Print the verdicts as JSON, for programs, instead of text."
)
def replay(rules_dir: Path | None, fixtures: tuple[Path, ...], as_json: bool) -> None:
    """Dry run: every rule's verdict on each fixture.

    With the condition's values and the actions as they would be sent.
    """
    settings = _settings()
    masker = _masker(settings)
    rules = _rules_or_exit(rules_dir, settings)
    if not rules.rules:
        click.echo(f"warning: no rules loaded from {rules_dir or settings.rules_dir}", err=True)
    files, problems = load_fixtures(fixtures)
    if problems:
        click.echo(masker.mask(report.problems_text(problems)), err=True)
        sys.exit(EXIT_BAD_INPUT)
    results = _replay(rules, files)
    if as_json:
        click.echo(report.replay_json(harness.masked_results(results, masker)))
        return
    for line in report.replay_report(results, masker):
        click.echo(line)


@cli.command()
def schema() -> None:
    """Print the JSON Schema of rule files.

    The project commits it as schema/rule.schema.json, for editors.
    """
    click.echo(json.dumps(rule_schema(load_registry()), indent=2))


def _replay(rules: RuleSet, files: list[FixtureFile]) -> list[harness.FixtureResult]:
    # A replay keeps every result until it prints them and makes little garbage: the cyclic
    # collector would rescan the growing results again and again (half the replay's time).
    gc.disable()
    try:
        return asyncio.run(harness.replay(rules, files, secret_variables()))
    finally:
        gc.enable()


def _rules_or_exit(rules_dir: Path | None, settings: Settings) -> RuleSet:
    try:
        rules = _load(rules_dir, settings, load_registry())
    except SourceErrors as exc:
        # A broken file's message may quote what the file holds (an env file copied in by mistake).
        click.echo(_masker(settings).mask(report.problems_text(exc.problems)), err=True)
        click.echo("fix the rule files above (stockaj-rules check lists them all)", err=True)
        sys.exit(EXIT_BAD_INPUT)
    # Loaded rules live as long as the process: keep the garbage collector from rescanning them.
    gc.freeze()
    return rules


cli.add_command(check)
cli.add_command(fields)
cli.add_command(conditions)


def main() -> None:
    """Console-script entry point: configuration errors become one line and exit 2."""
    try:
        cli.main(standalone_mode=True)
    except ConfigurationError as exc:
        click.echo(f"configuration error: {error_line(str(exc))}", err=True)
        sys.exit(EXIT_BAD_INPUT)
