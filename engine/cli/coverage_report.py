"""What `stockaj-rules test --coverage` prints, and the JSON `--coverage-json FILE` writes.

The JSON report replaces an empty file or an earlier report of this command, never any
other file, and never writes through a symbolic link (engine/cli/output_files.py).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import click

from engine.cli.output_files import write_for_command
from engine.language.coverage import (
    REPORT_NAME,
    Coverage,
    OperandCoverage,
    RuleCoverage,
    Seen,
    coverage_document,
)
from engine.secrets import Masker

SHOWN_FIXTURES = 3  # fixture names listed per line before "and N more"


def coverage_lines(found: Coverage, masker: Masker) -> Iterator[str]:
    """Each rule's fixtures and operands, then what no fixture covers."""
    yield click.style(f"Coverage of {len(found.rules)} rule(s) by {found.fixtures} fixture(s)", bold=True)
    width = max((len(o.text) for r in found.rules for o in r.operands), default=0)
    for rule in found.rules:
        yield from _rule_lines(rule, masker, min(width, 60))
    yield from _gaps(found)


def _rule_lines(rule: RuleCoverage, masker: Masker, width: int) -> Iterator[str]:
    yield f"{click.style(rule.rule.id, bold=True)}  {click.style(f'({rule.rule.source})', dim=True)}"
    if not rule.rule.enabled:
        yield f"  {click.style('· disabled (enabled: false)', dim=True)}"
    if not rule.fixtures:
        yield f"  {_red('✗')} no fixture for its events ({', '.join(rule.rule.events)})"
        return
    if rule.fired:
        yield f"  {_green('✓')} fired in {len(rule.fired)}{_names(rule.fired, masker)}"
    elif rule.rule.enabled:
        yield f"  {_red('✗')} no fixture fires it"
    kept = [_with(s, s.detail) for s in rule.not_fired]
    if rule.not_fired:
        yield f"  {_green('✓')} not fired in {len(rule.not_fired)}{_listed(kept, masker)}"
    elif rule.can_be_kept_from_firing:
        yield f"  {_red('✗')} no fixture keeps it from firing"
    else:
        yield f"  {click.style('· no condition: it fires on every delivery of its events', dim=True)}"
    if rule.errors:
        failed = [_with(s, masker.mask(s.detail)) for s in rule.errors]
        yield f"  {_red('✗')} errors in {len(rule.errors)}{_listed(failed, masker)}"
    if rule.condition is None:
        return
    yield f"  when: {masker.mask(rule.condition)}  {click.style(_tally(rule.verdicts.document()), dim=True)}"
    for operand in rule.operands:
        yield f"    {_mark(not operand.gaps)} {_operand(operand, width)}"


def _operand(operand: OperandCoverage, width: int) -> str:
    counts = operand.tally.document()
    never = [f"never {gap}" for gap in operand.gaps]
    return (
        f"{operand.text.ljust(width)}  {', '.join([*never, _tally(counts)] if never else [_tally(counts)])}"
    )


def _tally(counts: dict[str, int]) -> str:
    names = {"not_reached": "not reached"}
    return " · ".join(f"{names.get(k, k)} {v}" for k, v in counts.items() if v)


def _gaps(found: Coverage) -> Iterator[str]:
    never_fired = found.never_fired
    never_kept = found.never_kept_from_firing
    operands = list(found.operand_gaps())
    if not (never_fired or never_kept or operands):
        yield _green(
            "Every rule fires in a fixture and is kept from firing in another; every operand is both."
        )
        return
    yield click.style("Not covered:", bold=True)
    if never_fired:
        yield f"  {_red('✗')} no fixture fires: {', '.join(never_fired)}"
    if never_kept:
        yield f"  {_red('✗')} no fixture keeps from firing: {', '.join(never_kept)}"
    for rule, operand in operands:
        never = " and ".join(f"never {gap}" for gap in operand.gaps)
        yield f"  {_red('✗')} {rule.rule.id}: {operand.text}: {never}"


def _with(seen: Seen, detail: str) -> str:
    return f"{seen.fixture.name} ({detail})" if detail else seen.fixture.name


def _names(seen: list[Seen], masker: Masker) -> str:
    return _listed([s.fixture.name for s in seen], masker)


def _listed(names: list[str], masker: Masker) -> str:
    if not names:
        return ""
    shown = ", ".join(masker.mask(name) for name in names[:SHOWN_FIXTURES])
    more = len(names) - SHOWN_FIXTURES
    return f": {shown}" + (f" and {more} more" if more > 0 else "")


def _mark(ok: bool) -> str:
    return _green("✓") if ok else _red("✗")


def _green(text: str) -> str:
    return click.style(text, fg="green", bold=True)


def _red(text: str) -> str:
    return click.style(text, fg="red", bold=True)


def write_coverage_json(path: Path, found: Coverage, masker: Masker) -> str | None:
    """Write the JSON report at `path`; None when written, else the line saying why not."""
    document = masker.mask(coverage_document(found))
    data = (json.dumps(document, indent=2, ensure_ascii=False) + "\n").encode("utf-8")
    return write_for_command(
        "the coverage report", path, data, option="--coverage-json", replace=_not_own_report
    )


def _not_own_report(path: Path) -> str | None:
    """None when `path` may be replaced: it is empty, or a report this module wrote."""
    with path.open("rb") as file:
        start = file.read(4096)
    if not start.strip() or f'"report": "{REPORT_NAME}"'.encode() in start:
        return None
    return "already exists and is not a coverage report of stockaj-rules"
