"""What `deliveries list` and `deliveries show` print: aligned columns, coloured like `test -v`.

Colour comes from click.style; click.echo drops it when the output is not a terminal,
and the command line drops it when NO_COLOR is set. Widths are measured before
styling, so the columns line up either way. Rules come in rule-file order (the order
`test` and `replay` show them in), rules no longer in the files after them; every
value shown passes through the `Masker` and `printable` first.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import click
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from actions.base import OutgoingURL, redact_url
from actions.registry import ActionRegistry
from engine.config_plugins import PluginSettings
from engine.language.matching import RuleStatus
from engine.printable import printable
from engine.secrets import MASK, Masker
from engine.store import ActionRun, Ledger, RuleOutcomeRow, StoredDelivery
from engine.store.tables import ActionStatus, DeliveryStatus

MAX_EVENT_WIDTH = 40
_DELIVERY_COLOURS = {
    DeliveryStatus.DONE: "green",
    DeliveryStatus.FAILED: "red",
    DeliveryStatus.RECEIVED: "yellow",
    DeliveryStatus.PROCESSING: "yellow",
}
_ACTION_COLOURS = {
    ActionStatus.SUCCEEDED: "green",
    ActionStatus.FAILED: "red",
    ActionStatus.PENDING: "yellow",
}
# Rule id -> its place in the rule files; None when the rule files did not load.
RuleOrder = Mapping[str, int] | None


def _bold(text: str) -> str:
    return click.style(text, bold=True)


def _dim(text: str) -> str:
    return click.style(text, dim=True)


def delivery_status(status: DeliveryStatus, width: int = 0) -> str:
    """The status, padded to `width`, in its colour (no_match dim: nothing to do)."""
    colour = _DELIVERY_COLOURS.get(status)
    padded = status.value.ljust(width)
    bold = True if status is DeliveryStatus.FAILED else None
    return click.style(padded, fg=colour, bold=bold) if colour else _dim(padded)


def list_lines(rows: Sequence[StoredDelivery]) -> Iterator[str]:
    """A header and one aligned row per delivery: received, status, event, delivery id."""
    events = [printable(row.event) for row in rows]
    event_width = min(max(len("event"), *map(len, events)), MAX_EVENT_WIDTH)
    status_width = max(len(status.value) for status in DeliveryStatus)
    yield _bold(f"{'received (UTC)':<25}  {'status':<{status_width}}  {'event':<{event_width}}  delivery id")
    for row, event in zip(rows, events, strict=True):
        received = row.received_at.isoformat(timespec="seconds")
        yield (
            f"{received:<25}  {delivery_status(row.status, status_width)}  {event:<{event_width}}  "
            f"{printable(row.delivery_id)}"
        )


@dataclass(frozen=True, slots=True)
class Story:
    """Everything the store keeps about one delivery."""

    delivery: StoredDelivery
    outcomes: list[RuleOutcomeRow]
    runs: Ledger


def in_rule_order(rule_ids: Sequence[str], order: RuleOrder) -> list[str]:
    """`rule_ids` as the rule files list them; ids no longer there after them, alphabetically."""
    if order is None:
        return sorted(rule_ids)
    return sorted(rule_ids, key=lambda rule_id: (order.get(rule_id, len(order)), rule_id))


def story_lines(story: Story, order: RuleOrder, masker: Masker, sent_to: Destinations) -> list[str]:
    stored = story.delivery
    error = f" ({masker.mask(stored.error)})" if stored.error else ""
    lines = [
        _bold(f"delivery {printable(stored.delivery_id)}"),  # ids from before the receiver refused such
        f"  event     {printable(stored.event)}",
        f"  status    {delivery_status(stored.status)}{error}",
        f"  received  {stored.received_at.isoformat()}  (runs: {stored.runs}, last progress "
        f"{stored.updated_at.isoformat()})",
        _bold("headers"),
        *(f"  {printable(name)}: {printable(masker.mask(value))}" for name, value in stored.headers.items()),
        _bold("body") + ("" if stored.body is not None else _dim(" (dropped by retention)")),
    ]
    if stored.body is not None:
        lines += [f"  {line}" for line in masker.mask(pretty(stored.body)).splitlines()]
    lines += _rule_lines(story.outcomes, order, masker)
    lines += _action_lines(story.runs, order, masker, sent_to)
    return lines


def pretty(body: bytes) -> str:
    """The body as indented JSON, or as it was stored when it does not parse."""
    try:
        return json.dumps(json.loads(body), indent=2, ensure_ascii=False)
    except (ValueError, RecursionError):
        return body.decode("utf-8", errors="replace")


def _rule_lines(outcomes: list[RuleOutcomeRow], order: RuleOrder, masker: Masker) -> list[str]:
    heading = _bold("rules") + ("" if outcomes else _dim(" (not matched yet)"))
    if outcomes and order is None:
        heading += _dim(" (alphabetical: the rule files did not load here)")
    by_id = {outcome.rule_id: outcome for outcome in outcomes}
    width = max((len(rule_id) for rule_id in by_id), default=0)
    lines = [heading]
    for rule_id in in_rule_order(list(by_id), order):
        outcome = by_id[rule_id]
        reason = printable(masker.mask(outcome.reason))
        if outcome.status == RuleStatus.FIRED:
            lines.append(
                f"  {click.style('✓', fg='green', bold=True)} {rule_id.ljust(width)}  fired: {reason}"
            )
        elif outcome.status == RuleStatus.ERROR:
            lines.append(f"  {click.style('✗', fg='red', bold=True)} {rule_id.ljust(width)}  error: {reason}")
        else:  # each of these reasons says why by itself: "throttled: …", "… -> false"
            lines.append(f"  {_dim('·')} {rule_id.ljust(width)}  {reason}")
    return lines


def _action_lines(runs: Ledger, order: RuleOrder, masker: Masker, sent_to: Destinations) -> list[str]:
    lines = [_bold("actions") + ("" if runs else _dim(" (none ran)"))]
    rules = in_rule_order(list(dict.fromkeys(rule_id for rule_id, _ in runs)), order)
    for rule_id in rules:
        for index in sorted(i for r, i in runs if r == rule_id):
            run = runs[(rule_id, index)]
            colour = _ACTION_COLOURS.get(run.status)
            status = click.style(run.status.value, fg=colour) if colour else _dim(run.status.value)
            response = f", response {run.response_status}" if run.response_status else ""
            lines.append(
                f"  {rule_id} actions[{index}] {run.type}: {status}, {run.attempts} attempt(s){response}"
            )
            details = {
                "sent to": sent_to.of(run),
                "params": json.dumps(masker.mask(run.params), ensure_ascii=False),
                "last error": masker.mask(run.last_error) if run.last_error else None,
                "next attempt": run.next_attempt_at.isoformat() if run.next_attempt_at else None,
            }
            lines += [f"      {label + ':':<13} {value}" for label, value in details.items() if value]
    return lines


class Destinations:
    """Where each action sent its request (or wrote its row), masked, from the action's own params.

    An outgoing URL param as the run rendered it (the ledger keeps it, masked); for a param
    left out, the configuration the action falls back on, named, as this environment has it.
    """

    def __init__(self, registry: ActionRegistry, plugin_settings: PluginSettings, masker: Masker) -> None:
        self._registry = registry
        self._plugin_settings = plugin_settings
        self._masker = masker

    def of(self, run: ActionRun) -> str | None:
        plugin = self._registry.get(run.type)
        if plugin is None or run.attempts == 0 or run.status is ActionStatus.SKIPPED:
            return None
        params = run.params if isinstance(run.params, dict) else {}
        for name, field in plugin.Params.model_fields.items():
            for marker in field.metadata:
                if not isinstance(marker, OutgoingURL):
                    continue
                value = params.get(field.alias or name)
                if isinstance(value, str) and value:
                    return self._shown(value, http=marker.http)
                if marker.default:
                    variable = marker.default.variable
                    configured = self._plugin_settings.for_action(type(plugin)).get(variable)
                    if not isinstance(configured, str) or not configured:
                        return f"{variable} (not set in this environment, so not shown)"
                    return f"{self._shown(configured, http=marker.http)} ({variable})"
        return None

    def _shown(self, url: str, *, http: bool) -> str:
        if not http:
            try:
                url = make_url(url).render_as_string(hide_password=True)
            except ArgumentError:
                return MASK
        shown = str(self._masker.mask(url))
        # A secret URL (a chat webhook's path is its token): its origin, never the rest.
        return printable(redact_url(url) if MASK in shown and http else shown)
