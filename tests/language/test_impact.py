"""The impact of a rule change (SPEC section 15): stored deliveries replayed through two rule sets."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from actions.registry import load_registry
from engine.language import impact as impact_module
from engine.language.delivery import Delivery
from engine.language.impact import ImpactRun, PastDelivery, impact, past_delivery
from engine.language.impact_workers import RulesChanged
from engine.language.loader import load_rules
from engine.language.rules import RuleSet

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)

REORDER = """\
id: reorder
on: item.low_stock
when: data.quantity <= data.minimum_quantity
actions:
  - type: log
    message: "order {{ data.minimum_quantity * 2 - data.quantity }} x {{ data.external_id }}"
"""
RENTALS = """\
id: rentals
on: rent.created
actions: [{type: log, message: "rental {{ data.id }}"}]
"""


def rules(tmp_path: Path, name: str, *texts: str) -> RuleSet:
    folder = tmp_path / name
    folder.mkdir()
    for index, text in enumerate(texts):
        (folder / f"r{index}.yaml").write_text(text)
    return load_rules(folder, load_registry())


def low_stock(delivery_id: str, quantity: Any, minutes: int = 0, sku: str = "TENT") -> PastDelivery:
    data = {"id": 1, "name": "Tent", "quantity": quantity, "minimum_quantity": 5, "external_id": sku}
    payload = {"event": "item.low_stock", "data": data}
    return PastDelivery(Delivery("item.low_stock", delivery_id, payload), T0 + timedelta(minutes=minutes))


async def run(current: RuleSet, draft: RuleSet, *batches: list[PastDelivery]) -> dict[str, Any]:
    impact = ImpactRun(current, draft, {})
    for batch in batches:
        await impact.feed(batch)
    return impact.report().as_json()


async def test_a_stricter_condition_lists_the_deliveries_that_stop_firing_in_received_order(
    tmp_path: Path,
) -> None:
    current = rules(tmp_path, "current", REORDER, RENTALS)
    draft = rules(tmp_path, "draft", REORDER.replace("<= data.minimum_quantity", "< 2"), RENTALS)
    deliveries = [low_stock("d1", 1), low_stock("d2", 3, 1), low_stock("d3", 9, 2), low_stock("d4", 4, 3)]

    report = await run(current, draft, deliveries[:2], deliveries[2:])

    assert report == {
        "deliveries": 4,
        "rules": [
            {"id": "reorder", "newly_fired": [], "stopped_firing": ["d2", "d4"], "changed_params": []},
            {"id": "rentals", "newly_fired": [], "stopped_firing": [], "changed_params": []},
        ],
    }


async def test_a_looser_condition_lists_newly_fired_and_a_changed_template_lists_changed_params(
    tmp_path: Path,
) -> None:
    current = rules(tmp_path, "current", REORDER)
    looser = REORDER.replace("<= data.minimum_quantity", "<= data.minimum_quantity + 5")
    draft = rules(tmp_path, "draft", looser.replace("order {{", "reorder {{"))

    report = await run(current, draft, [low_stock("d1", 3), low_stock("d2", 8, 1), low_stock("d3", 20, 2)])

    assert report["rules"] == [
        {"id": "reorder", "newly_fired": ["d2"], "stopped_firing": [], "changed_params": ["d1"]}
    ]


async def test_a_new_rule_and_a_removed_rule_are_both_listed(tmp_path: Path) -> None:
    current = rules(tmp_path, "current", REORDER)
    draft = rules(tmp_path, "draft", RENTALS.replace("rent.created", "item.low_stock"))
    impact = ImpactRun(current, draft, {})

    await impact.feed([low_stock("d1", 3), low_stock("d2", 9, 1)])
    report = impact.report()

    assert [(r.id, r.status) for r in report.rules] == [("reorder", "removed"), ("rentals", "new")]
    assert report.as_json()["rules"] == [
        {"id": "reorder", "newly_fired": [], "stopped_firing": ["d1"], "changed_params": []},
        {"id": "rentals", "newly_fired": ["d1", "d2"], "stopped_firing": [], "changed_params": []},
    ]


async def test_a_rule_written_the_same_is_not_evaluated_even_when_it_would_fail(tmp_path: Path) -> None:
    broken_at_run_time = REORDER.replace("{{ data.external_id }}", "{{ data.no_such_field }}")
    current = rules(tmp_path, "current", broken_at_run_time, RENTALS)
    # Only the layout differs (flow style, key order): the same rule.
    rentals_again = (
        "{id: rentals, actions: [{message: 'rental {{ data.id }}', type: log}], on: rent.created}\n"
    )
    draft = rules(tmp_path, "draft", broken_at_run_time, rentals_again)
    impact = ImpactRun(current, draft, {})

    await impact.feed([low_stock("d1", 3)])

    assert impact.changed_rules == []
    assert [(r.id, r.status, r.affected) for r in impact.report().rules] == [
        ("reorder", "unchanged", 0),
        ("rentals", "unchanged", 0),
    ]


async def test_a_throttle_added_by_the_draft_holds_back_later_deliveries_by_when_they_were_received(
    tmp_path: Path,
) -> None:
    current = rules(tmp_path, "current", REORDER)
    throttled = REORDER + "throttle: {key: '{{ data.external_id }}', per: 1h}\n"
    draft = rules(tmp_path, "draft", throttled)
    deliveries = [
        low_stock("d1", 3),
        low_stock("d2", 3, 30),
        low_stock("d3", 3, 61),
        low_stock("d4", 3, 62, "X"),
    ]

    report = await run(current, draft, deliveries)

    assert report["rules"][0]["stopped_firing"] == ["d2"]


async def test_secrets_are_placeholders_and_an_action_that_fails_to_render_stops_firing(
    tmp_path: Path,
) -> None:
    current = rules(tmp_path, "current", REORDER)
    draft = rules(
        tmp_path,
        "draft",
        REORDER.replace("x {{ data.external_id }}", "{{ secrets.PO_TOKEN }}").replace(
            "data.minimum_quantity * 2", "data.missing * 2"
        ),
    )
    report = await run(current, draft, [low_stock("d1", 3)])

    # The rule fires in both, but the draft's action cannot render: its params differ (an error).
    assert report["rules"][0]["changed_params"] == ["d1"]


def test_a_stored_body_that_is_not_a_json_object_is_not_replayed() -> None:
    assert past_delivery("d1", "e", {}, b"[1, 2]", T0) is None
    assert past_delivery("d1", "e", {}, b"{not json", T0) is None
    past = past_delivery("d1", "e", {"X-A": "b"}, b'{"data": {"n": 1}}', T0)
    assert past is not None
    assert past.delivery.context()["data"] == {"n": 1}


@pytest.mark.parametrize("event", ["rent.created", "item.updated"])
async def test_deliveries_of_events_no_changed_rule_listens_to_are_counted_but_not_matched(
    tmp_path: Path, event: str
) -> None:
    current = rules(tmp_path, "current", REORDER)
    draft = rules(tmp_path, "draft", REORDER.replace("<=", "<"))
    impact = ImpactRun(current, draft, {})
    other = PastDelivery(Delivery(event, "x1", {"data": {"id": 1}}), T0)

    await impact.feed([other, low_stock("d1", 5)])

    assert impact.report().deliveries == 2
    assert impact.report().rules[0].stopped_firing == ["d1"]


@dataclass(frozen=True)
class Stored:
    delivery_id: str
    event: str
    headers: dict[str, str]
    body: bytes
    received_at: datetime


async def batches_of(items: list[Stored], size: int) -> AsyncIterator[list[Stored]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def stored(count: int) -> list[Stored]:
    items = []
    for index in range(count):
        data = {"quantity": index % 9, "minimum_quantity": 5, "external_id": f"S{index % 4}"}
        body = json.dumps({"event": "item.low_stock", "data": data}).encode()
        items.append(Stored(f"d{index:03d}", "item.low_stock", {}, body, T0 + timedelta(minutes=index)))
    items.append(Stored("bad", "item.low_stock", {}, b"[]", T0 + timedelta(minutes=count)))
    return items


async def test_matching_each_set_in_a_worker_process_gives_the_same_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    throttled = REORDER + "throttle: {key: '{{ data.external_id }}', per: 10m}\n"
    current = rules(tmp_path, "current", REORDER, RENTALS)
    draft = rules(tmp_path, "draft", throttled.replace("<=", "<"), RENTALS)
    items = stored(60)

    here = await impact(current, draft, batches_of(items, 7), {})
    monkeypatch.setattr(impact_module, "PARALLEL_FROM", 1)
    folders = (tmp_path / "current", tmp_path / "draft")
    seen: list[int] = []
    apart = await impact(current, draft, batches_of(items, 7), {}, seen.append, folders=folders, expected=61)

    assert apart.as_json() == here.as_json()
    assert here.as_json()["rules"][0]["stopped_firing"][:3] == ["d004", "d005", "d009"]
    assert (apart.deliveries, apart.unreadable, sum(seen)) == (60, ["bad"], 61)


async def test_a_rule_file_changed_before_the_workers_load_it_stops_the_impact_with_a_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    current = rules(tmp_path, "current", REORDER)
    draft = rules(tmp_path, "draft", REORDER.replace("<=", "<"))
    (tmp_path / "draft" / "r0.yaml").write_text(REORDER.replace("<=", ">"))
    monkeypatch.setattr(impact_module, "PARALLEL_FROM", 1)
    folders = (tmp_path / "current", tmp_path / "draft")

    with pytest.raises(
        RulesChanged, match=r"rules changed in .*draft while the impact ran: reorder; run it again"
    ):
        await impact(current, draft, batches_of(stored(5), 2), {}, folders=folders, expected=5)
