"""`stockaj-rules test --update`: rewrite the fixtures' expectations and print the diff.

What to write comes from engine.language.approval; this module writes the files (whole
or not at all, never through a symbolic link, and only if nobody changed them since
they were read) and prints each file's unified diff, coloured on a terminal, every
secret masked. Reviewing that diff is the approval.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator
from pathlib import Path

import click

from engine.cli.output_files import RefusedOutput, write_output
from engine.errors import SourceProblem
from engine.language.approval import FileUpdate, approve
from engine.language.expectations import FixtureResult
from engine.language.rules import RuleSet
from engine.secrets import Masker


def update_fixtures(
    results: list[FixtureResult], rules: RuleSet, masker: Masker
) -> tuple[list[FixtureResult], list[SourceProblem]]:
    """Write the new expectations, print the diffs; the results checked against what was written."""
    approval = approve(results, rules, masker)
    written, failed = 0, set()
    for update in approval.updates:
        problem = _write(update)
        if problem is not None:
            approval.problems.append(problem)
            failed.add(update.path)
            continue
        written += update.fixtures
        for line in diff_lines(update, masker):
            click.echo(line)
    if written or not approval.problems:
        click.echo(_summary(written, len(results)))
    # A file that could not be written keeps its old expectations, so its results stay as they were.
    rechecked = {
        (r.fixture.file, r.fixture.index): r for r in approval.results if r.fixture.file not in failed
    }
    return [rechecked.get((r.fixture.file, r.fixture.index), r) for r in results], approval.problems


def diff_lines(update: FileUpdate, masker: Masker) -> Iterator[str]:
    """The file's unified diff: removed lines red, added lines green (on a terminal)."""
    lines = difflib.unified_diff(
        update.before.splitlines(keepends=True),
        update.after.splitlines(keepends=True),
        fromfile=update.path,
        tofile=f"{update.path} (updated)",
    )
    for line in lines:
        text = masker.mask(line.rstrip("\r\n"))
        if text.startswith(("---", "+++")):
            yield click.style(text, bold=True)
        elif text.startswith("@@"):
            yield click.style(text, fg="cyan")
        elif text.startswith("+"):
            yield click.style(text, fg="green")
        elif text.startswith("-"):
            yield click.style(text, fg="red")
        else:
            yield text


def _write(update: FileUpdate) -> SourceProblem | None:
    path = Path(update.path)

    def unchanged(_: Path) -> str | None:
        if path.read_text(encoding="utf-8") != update.before:
            return "changed while it was being updated; run the tests again"
        return None

    try:
        write_output(path, update.after.encode("utf-8"), why_not_replace=unchanged)
    except RefusedOutput as exc:
        return SourceProblem(update.path, 1, 1, f"not updated: {exc}")
    except OSError as exc:
        return SourceProblem(update.path, 1, 1, f"not updated: {exc.strerror or exc}")
    return None


def _summary(written: int, fixtures: int) -> str:
    if not written:
        return "nothing to update: every fixture's expect already says what happened"
    return (
        f"updated the expectations of {written} of {fixtures} fixture(s): "
        "review the diff above, then commit it"
    )
