"""`stockaj-rules deliveries`: read the delivery log (list, show, export as a fixture).

`show` and `export` exit 1 for an unknown delivery, `export` also for a delivery whose
body retention dropped. Rules are shown and exported in rule-file order when the rule
files load here (RULES_DIR), alphabetically otherwise.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from actions.registry import ActionRegistry, load_registry
from engine.cli.delivery_story import Destinations, RuleOrder, Story, in_rule_order, list_lines, story_lines
from engine.cli.operator_support import EXIT_FAILED, run, unknown_delivery, usage_error
from engine.cli.output_files import write_for_command
from engine.config import Settings, load_settings
from engine.errors import SourceErrors
from engine.language.delivery import Delivery
from engine.language.fixtures import fixture_document
from engine.language.loader import load_rules
from engine.language.matching import RuleStatus
from engine.pipeline.service import masker_for, open_store
from engine.store import RuleOutcomeRow, StoredDelivery
from engine.store.tables import DeliveryStatus

# What `export --expect` puts before a throttled delivery, so that the throttle holds it back in `test`.
EARLIER_ID_SUFFIX = "-earlier"


@click.group()
def deliveries() -> None:
    """Read the delivery log."""


@deliveries.command("list")
@click.option(
    "--status",
    type=click.Choice([s.value for s in DeliveryStatus]),
    default=None,
    help="Only the deliveries with this status.",
)
@click.option(
    "--limit", type=click.IntRange(min=1), default=50, show_default=True, help="Show at most this many."
)
def deliveries_list(status: str | None, limit: int) -> None:
    """The newest deliveries, newest first."""

    async def main(settings: Settings) -> list[StoredDelivery]:
        store = await open_store(settings)
        try:
            return await store.recent(DeliveryStatus(status) if status else None, limit)
        finally:
            await store.close()

    rows = run(main)
    if not rows:
        click.echo("no deliveries" + (f" with status {status}" if status else ""))
        return
    for line in list_lines(rows):
        click.echo(line)


@deliveries.command("show")
@click.argument("delivery_id")
def deliveries_show(delivery_id: str) -> None:
    """A delivery's whole story: headers, body, rules and actions.

    Each rule's outcome and why, in rule-file order; each action's params, where it
    was sent, attempts, errors and answer.
    """
    settings = load_settings()
    story = run(lambda settings: _story(settings, delivery_id), settings)
    if story is None:
        unknown_delivery(delivery_id)
    masker = masker_for(settings)
    registry = load_registry()
    sent_to = Destinations(registry, settings.plugins, masker)
    order = rule_order(settings, registry) if story.outcomes or story.runs else {}
    for line in story_lines(story, order, masker, sent_to):
        click.echo(line)


async def _story(settings: Settings, delivery_id: str) -> Story | None:
    store = await open_store(settings)
    try:
        stored = await store.get(delivery_id)
        if stored is None:
            return None
        return Story(stored, await store.outcomes(delivery_id), await store.action_runs(delivery_id))
    finally:
        await store.close()


def rule_order(settings: Settings, registry: ActionRegistry) -> RuleOrder:
    """Each rule's place in the rule files of RULES_DIR; None when they do not load here."""
    try:
        rules = load_rules(settings.rules_dir, registry)
    except SourceErrors:
        return None
    return {rule.id: place for place, rule in enumerate(rules.rules)}


@deliveries.command("export")
@click.argument("delivery_id")
@click.option("--name", default=None, help="The fixture's name (default: event and delivery id).")
@click.option(
    "--expect",
    "with_expectations",
    is_flag=True,
    help=(
        "Also write expect.fired / expect.not_fired as the delivery log recorded them (a throttled "
        "delivery comes after a made-up earlier one that takes the throttle, so that `test` holds it back)."
    ),
)
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Write the fixture to this file (default: print it); never through a symbolic link.",
)
@click.option("--force", is_flag=True, help="Replace the --output file if it exists (a regular file only).")
def deliveries_export(
    delivery_id: str, name: str | None, with_expectations: bool, output: Path | None, force: bool
) -> None:
    """Write a stored delivery as a fixture for `stockaj-rules test`."""

    async def main(settings: Settings) -> tuple[StoredDelivery | None, list[RuleOutcomeRow]]:
        store = await open_store(settings)
        try:
            stored = await store.get(delivery_id)
            outcomes = await store.outcomes(delivery_id) if stored and with_expectations else []
            return stored, outcomes
        finally:
            await store.close()

    settings = load_settings()
    stored, outcomes = run(main, settings)
    if stored is None:
        unknown_delivery(delivery_id)
    if stored.body is None:
        click.echo(
            f"delivery {delivery_id}'s body was dropped by retention (BODY_RETENTION_DAYS); "
            "nothing to export",
            err=True,
        )
        sys.exit(EXIT_FAILED)
    order = rule_order(settings, load_registry()) if outcomes else {}
    document = fixture_for(stored, stored.body, name, outcomes if with_expectations else None, order)
    text = json.dumps(masker_for(settings).mask(document), indent=2, ensure_ascii=False) + "\n"
    if output is None:
        click.echo(text, nl=False)
        return
    replace = (lambda _: None) if force else None
    problem = write_for_command("the fixture", output, text.encode(), option="--output", replace=replace)
    if problem:
        usage_error(problem)
    click.echo(f"wrote {output}: try it with `stockaj-rules test {output}`")


def fixture_for(
    stored: StoredDelivery,
    body: bytes,
    name: str | None,
    outcomes: list[RuleOutcomeRow] | None,
    order: RuleOrder,
) -> dict[str, Any] | list[dict[str, Any]]:
    """The delivery as a fixture; with `outcomes`, with the expectations they record.

    A throttled rule fires in a dry run of the delivery alone (the test's throttle starts
    empty), so it is expected in `not_fired` after a made-up earlier delivery, the same
    payload under another id, that fires it and takes the throttle: the two as a list.
    """
    delivery = Delivery(stored.event, stored.delivery_id, json.loads(body))
    name = name or f"{stored.event} {stored.delivery_id}"
    fixture = fixture_document(delivery, name)
    if outcomes is None:
        return fixture
    status = {outcome.rule_id: outcome.status for outcome in outcomes}
    ordered = in_rule_order(list(status), order)
    fixture["expect"] = {
        "fired": [rule_id for rule_id in ordered if status[rule_id] == RuleStatus.FIRED],
        "not_fired": [rule_id for rule_id in ordered if status[rule_id] != RuleStatus.FIRED],
    }
    throttled = [rule_id for rule_id in ordered if status[rule_id] == RuleStatus.THROTTLED]
    if not throttled:
        return fixture
    earlier = Delivery(stored.event, stored.delivery_id + EARLIER_ID_SUFFIX, delivery.payload)
    made_up = fixture_document(
        earlier,
        f"{name}: an earlier delivery with the same throttle key (made up, so the throttle holds this one)",
    )
    made_up["expect"] = {"fired": throttled}
    return [made_up, fixture]
