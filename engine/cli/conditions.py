"""`stockaj-rules conditions`: each rule's condition both ways, as an expression and in JsonLogic.

With `--rewrite`, the JsonLogic conditions of the given rule files (every file of the
rules folder when none is given) are written as expressions in place, changing nothing
else in the files (engine.language.condition_rewrite), and the diff is printed.
"""

from __future__ import annotations

import difflib
import json
import os
import sys
import tempfile
from pathlib import Path

import click

from actions.registry import load_registry
from engine.cli import report
from engine.config import load_settings
from engine.errors import SourceErrors, SourceProblem
from engine.language.condition_rewrite import Rewrite, rewrite_conditions
from engine.language.expressions.render import NoExpression, to_expression
from engine.language.loader import load_file, load_rules
from engine.language.rules import Rule, RuleSet
from engine.language.source_files import MAX_RULE_FILE_BYTES, SourceTooBig, find_source_files, read_source

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2


@click.command()
@click.option(
    "--rules",
    "rules_dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Folder of rule files (default: RULES_DIR, or ./rules).",
)
@click.option(
    "--rewrite",
    is_flag=True,
    help="Write the JsonLogic conditions of FILES (default: every rule file) as expressions, in place.",
)
@click.argument("files", nargs=-1, type=click.Path(path_type=Path))
def conditions(rules_dir: Path | None, rewrite: bool, files: tuple[Path, ...]) -> None:
    """Show each rule's condition both ways.

    As an expression and as the JsonLogic it compiles to (FILES: only those files).
    """
    folder = rules_dir or load_settings().rules_dir
    if rewrite:
        _rewrite(files or _rule_files(folder))
        return
    rules = _loaded(folder)
    wanted = {str(path) for path in files}
    for rule in rules.rules:
        if not wanted or rule.source.rpartition(":")[0] in wanted:
            for line in _both_ways(rule):
                click.echo(line)


def _loaded(folder: Path) -> RuleSet:
    try:
        return load_rules(folder, load_registry())
    except SourceErrors as exc:
        click.echo(report.problems_text(exc.problems), err=True)
        click.echo("fix the rule files above (stockaj-rules check lists them all)", err=True)
        sys.exit(EXIT_BAD_INPUT)


def _both_ways(rule: Rule) -> list[str]:
    head = f"{rule.id}  ({rule.source})"
    condition = rule.condition
    if condition is None:
        return [head, "  no condition: fires on every event it is on"]
    logic = json.dumps(condition.logic, ensure_ascii=False)
    if condition.expression is not None:
        return [head, f"  expression  {condition.expression.text}  (as written)", f"  JsonLogic   {logic}"]
    try:
        expression = to_expression(condition.logic)
    except NoExpression as exc:
        expression = f"none: {exc}"
    return [head, f"  expression  {expression}", f"  JsonLogic   {logic}  (as written)"]


def _rule_files(folder: Path) -> tuple[Path, ...]:
    paths, problems = find_source_files(folder)
    if problems:
        click.echo(report.problems_text(problems), err=True)
        sys.exit(EXIT_BAD_INPUT)
    return tuple(paths)


def _rewrite(paths: tuple[Path, ...]) -> None:
    """Rewrite each file that loads; exit 2 when one could not be."""
    registry = load_registry()
    failed = False
    for path in paths:
        problems = _refusal(path) or list(load_file(path, registry).problems)
        if problems:
            click.echo(report.problems_text(problems), err=True)
            click.echo(f"{path}: not rewritten; fix the problems above first", err=True)
            failed = True
            continue
        text = read_source(path, MAX_RULE_FILE_BYTES).decode("utf-8")
        result = rewrite_conditions(text, str(path), yaml_syntax=path.suffix != ".json")
        if isinstance(result, SourceProblem):  # changed since it was checked
            click.echo(report.problems_text([result]), err=True)
            failed = True
            continue
        _report(path, text, result)
        if result.rewritten:
            _replace(path, result.text)
    sys.exit(EXIT_BAD_INPUT if failed else EXIT_OK)


def _refusal(path: Path) -> list[SourceProblem]:
    if path.is_symlink():
        message = "a symbolic link is not rewritten; rewrite the file it points to"
        return [SourceProblem(str(path), 1, 1, message)]
    if not path.is_file():
        return [SourceProblem(str(path), 1, 1, "no such rule file; give a .yaml, .yml or .json file")]
    try:
        read_source(path, MAX_RULE_FILE_BYTES)
    except (SourceTooBig, OSError) as exc:
        return [SourceProblem(str(path), 1, 1, str(exc))]
    return []


def _report(path: Path, text: str, result: Rewrite) -> None:
    for line in difflib.unified_diff(
        text.splitlines(keepends=True), result.text.splitlines(keepends=True), f"{path}", f"{path}"
    ):
        click.echo(line, nl=not line.endswith("\n"))
    if result.kept:
        click.echo(report.problems_text(result.kept), err=True)
    done = ", ".join(result.rewritten) if result.rewritten else "nothing to rewrite"
    click.echo(f"{path}: {done}", err=True)


def _replace(path: Path, text: str) -> None:
    """Write `text` over `path` at once (a reader sees the old file or the new), keeping its mode."""
    mode = path.stat().st_mode & 0o7777
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8", newline="") as file:
            file.write(text)
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
