"""`stockaj-rules impact`: what a draft of the rules would change on the deliveries stored so far.

Replays the stored deliveries whose body is kept, oldest first, dry through the current rules
(`--against`, default RULES_DIR) and through the draft (`--rules`), and prints per rule the
deliveries that would newly fire, stop firing or render different params (SPEC section 15).
Nothing is sent. Exit 0, or 2 for bad rules, bad options or a store that cannot be read.
"""

from __future__ import annotations

import asyncio
import gc
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import NoReturn

import click

from actions.registry import load_registry
from engine.cli.report import problems_text
from engine.config import Settings, load_settings, secret_variables
from engine.errors import SourceErrors
from engine.language.impact import ImpactReport, RuleImpact, impact
from engine.language.loader import load_rules
from engine.language.rules import RuleSet, parse_duration
from engine.pipeline.service import masker_for, open_store
from engine.printable import printable
from engine.store.history import HistoryFilter, count_kept, kept_deliveries

EXIT_OK, EXIT_BAD_INPUT = 0, 2
EXAMPLES_SHOWN = 5
# Given the number of deliveries to replay: a context whose value is told how many are done.
Progress = Callable[[int], AbstractContextManager[Callable[[int], None]]]


@click.command("impact")
@click.option(
    "--rules",
    "draft_dir",
    required=True,
    type=click.Path(path_type=Path),
    help="The draft: a folder (or file) of rules to compare with the current ones.",
)
@click.option(
    "--against",
    "current_dir",
    type=click.Path(path_type=Path),
    default=None,
    help="The current rules (default: RULES_DIR, or ./rules).",
)
@click.option("--since", default=None, help="Only deliveries received this long ago or later: 30m, 12h, 7d.")
@click.option("--last", type=click.IntRange(min=1), default=None, help="Only the last N deliveries received.")
@click.option("--event", default=None, help="Only deliveries of this event.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON, for scripts, instead of text.")
def impact_command(
    draft_dir: Path,
    current_dir: Path | None,
    since: str | None,
    last: int | None,
    event: str | None,
    as_json: bool,
) -> None:
    """What draft rules would change on stored deliveries.

    Replayed dry: nothing is sent.
    """
    if since is not None and last is not None:
        _usage("--since and --last choose the deliveries two ways: give one of them")
    chosen = HistoryFilter(since=_since(since), event=event, last=last)
    settings = load_settings()
    current = _rules(current_dir or settings.rules_dir, "--against", settings)
    draft = _rules(draft_dir, "--rules", settings)
    gc.freeze()  # the loaded rules live as long as the command
    folders = (current_dir or settings.rules_dir, draft_dir)
    report = asyncio.run(_replay(settings, (current, draft), folders, chosen, _show_progress()))
    if as_json:
        click.echo(json.dumps(report.as_json(), indent=2, ensure_ascii=False))
        return
    for line in report_lines(report, draft_dir, current_dir or settings.rules_dir):
        click.echo(line)


async def _replay(
    settings: Settings,
    rules: tuple[RuleSet, RuleSet],
    folders: tuple[Path, Path],
    chosen: HistoryFilter,
    progress: Progress,
) -> ImpactReport:
    store = await open_store(settings)
    try:
        total = await count_kept(store, chosen)
        with progress(total) as advance:
            gc.disable()  # a replay keeps its results and makes little garbage (see `test`)
            try:
                return await impact(
                    *rules,
                    kept_deliveries(store, chosen),
                    secret_variables(),
                    advance,
                    folders=folders,
                    expected=total,
                )
            finally:
                gc.enable()
    finally:
        await store.close()


def _show_progress() -> Progress:
    """A progress bar on stderr when it is a terminal; nothing otherwise."""

    @contextmanager
    def progress(total: int) -> Iterator[Callable[[int], None]]:
        if not sys.stderr.isatty() or total == 0:
            yield lambda _done: None
            return
        with click.progressbar(length=total, label="replaying", file=sys.stderr) as bar:
            yield bar.update

    return progress


def report_lines(report: ImpactReport, draft: Path, current: Path) -> Iterator[str]:
    """The text report: a line per rule the draft changes, with counts and a few examples."""
    span = ""
    if report.first_received and report.last_received:
        span = f", received {_moment(report.first_received)} to {_moment(report.last_received)}"
    yield f"impact of {draft} against {current}: {report.deliveries:,} stored deliveries replayed{span}"
    if report.unreadable:
        yield f"  skipped {len(report.unreadable)} stored deliveries whose body is not a JSON object"
    unchanged = [rule for rule in report.rules if rule.status == "unchanged"]
    for rule in report.rules:
        if rule.status != "unchanged":
            yield from _rule_lines(rule)
    if unchanged:
        yield f"  {len(unchanged)} rule(s) written the same in both: no change"
    if all(rule.affected == 0 for rule in report.rules):
        yield "no delivery would be handled differently"


def _rule_lines(rule: RuleImpact) -> Iterator[str]:
    counts = (
        f"{len(rule.newly_fired):,} newly fired, {len(rule.stopped_firing):,} stopped firing, "
        f"{len(rule.changed_params):,} with different params"
    )
    yield f"  {click.style(rule.id, bold=True)} ({rule.status}): {counts}"
    for label, ids in (
        ("newly fired", rule.newly_fired),
        ("stopped firing", rule.stopped_firing),
        ("different params", rule.changed_params),
    ):
        if ids:
            shown = ", ".join(printable(i) for i in ids[:EXAMPLES_SHOWN])
            more = f" and {len(ids) - EXAMPLES_SHOWN:,} more" if len(ids) > EXAMPLES_SHOWN else ""
            yield f"      {label}: {shown}{more}"


def _moment(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds")


def _since(text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        return datetime.now(UTC) - parse_duration(text.strip())
    except ValueError:
        _usage(f"--since {text!r} is not a duration; write e.g. 30m, 12h or 7d")


def _rules(folder: Path, option: str, settings: Settings) -> RuleSet:
    try:
        return load_rules(folder, load_registry())
    except SourceErrors as exc:
        click.echo(masker_for(settings).mask(problems_text(exc.problems)), err=True)
        _usage(f"fix the rules of {option} {folder} above (stockaj-rules check lists them all)")


def _usage(message: str) -> NoReturn:
    click.echo(message, err=True)
    sys.exit(EXIT_BAD_INPUT)
