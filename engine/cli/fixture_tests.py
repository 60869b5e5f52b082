"""The options `stockaj-rules test` has for approval and coverage, and what the coverage prints.

`--update` rewrites the fixtures' expectations from what happened (engine/cli/updates.py);
`--coverage` prints what the fixtures exercise of each rule, down to each operand of its
condition's and/or; `--coverage-json FILE` writes the same as JSON for CI.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from engine.cli.coverage_report import coverage_lines, write_coverage_json
from engine.language.coverage import coverage
from engine.language.expectations import FixtureResult
from engine.language.rules import RuleSet
from engine.secrets import Masker

EXIT_BAD_INPUT = 2
F = TypeVar("F", bound=Callable[..., Any])


def update_and_coverage(command: F) -> F:
    """The --update, --coverage and --coverage-json options, for `test`."""
    options = [
        click.option(
            "--update",
            is_flag=True,
            help=(
                "Write what happened into each fixture's expect (fired, not fired and why, action "
                "params), keeping the files' comments and layout, and print the diff to review."
            ),
        ),
        click.option(
            "--coverage",
            is_flag=True,
            help="Also print, per rule, where it fired and did not, and each and/or operand's outcomes.",
        ),
        click.option(
            "--coverage-json",
            type=click.Path(path_type=Path, dir_okay=False),
            help=(
                "Also write the coverage as JSON here, for CI. An empty file or an earlier coverage "
                "report is replaced; any other file, and a symbolic link, is refused."
            ),
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def show_coverage(
    rules: RuleSet, results: list[FixtureResult], masker: Masker, *, terminal: bool, json_path: Path | None
) -> None:
    """Print the coverage and/or write its JSON; exit 2 when the JSON cannot be written."""
    found = coverage(rules, results)
    if terminal:
        for line in coverage_lines(found, masker):
            click.echo(line)
    if json_path is not None:
        problem = write_coverage_json(json_path, found, masker)
        if problem:
            click.echo(problem, err=True)
            sys.exit(EXIT_BAD_INPUT)
