"""The playground: a draft run on real deliveries as you type, its impact, saving it (SPEC 15, 16)."""

from __future__ import annotations

import json
import re
import statistics
from html import unescape
from pathlib import Path
from typing import Any

import pytest

from actions.registry import load_registry
from engine.console.drafts import read_draft, write_draft
from tests.console.conftest import PO_TOKEN, RENTALS, REORDER, Console, low_stock


async def evaluate(console: Console, text: str, **form: str) -> tuple[str, Any]:
    fields = {"path": "reorder.yaml", "text": text, "source": "delivery", **form}
    answer = await console.post("/playground/evaluate", fields)
    assert answer.status_code == 200
    return unescape(await answer.get_data(as_text=True)), answer


async def test_a_draft_runs_on_a_stored_delivery_with_the_explanation_and_rendered_actions(
    console: Console,
) -> None:
    await console.add("low-1", low_stock(3))
    await console.login()

    page, _ = await evaluate(console, REORDER.replace("* 2", "* 3"), delivery_id="low-1")

    assert "On delivery low-1 (item.low_stock)" in page
    assert "data.quantity (3) <= data.minimum_quantity (5) -> true" in page
    assert '"message": "order 12 x TENT (token ***)"' in page
    assert PO_TOKEN not in page
    assert "dry run: nothing sent" in page


async def test_a_problem_is_shown_at_its_line_and_column(console: Console) -> None:
    await console.add("low-1", low_stock(3))
    await console.login()
    broken = REORDER.replace(
        "data.quantity <= data.minimum_quantity", "data.quantity =< data.minimum_quantity"
    )

    page, _ = await evaluate(console, broken, delivery_id="low-1")

    found = re.search(r'<li class="problem" data-line="(\d+)" data-column="(\d+)"', page)
    assert found is not None, page
    assert found.groups() == ("4", "21")
    assert "reorder-low-stock" in page


async def test_the_answer_takes_well_under_100_ms_of_server_time(console: Console) -> None:
    await console.add("low-1", low_stock(3))
    await console.login()
    await evaluate(console, REORDER, delivery_id="low-1")  # first use: templates compiled

    times = []
    for step in range(7):
        _, answer = await evaluate(console, REORDER.replace("* 2", f"* {step + 2}"), delivery_id="low-1")
        times.append(float(re.search(r"dur=([\d.]+)", answer.headers["Server-Timing"]).group(1)))

    assert statistics.median(times) < 100, times


async def test_a_fixture_and_pasted_json_are_inputs_too(console: Console) -> None:
    await console.login()

    from_fixture, _ = await evaluate(
        console, REORDER, source="fixture", fixture=f"{console.root / 'fixtures' / 'tent.json'}#0"
    )
    pasted, _ = await evaluate(console, REORDER, source="json", payload=json.dumps(low_stock(9)))
    broken, _ = await evaluate(
        console, REORDER, source="json", payload='{"event": "item.low_stock",\n "data": {'
    )

    assert "On fixture tent below minimum (item.low_stock)" in from_fixture
    assert "-> true" in from_fixture
    assert "data.quantity (9) <= data.minimum_quantity (5) -> false" in pasted
    assert "the pasted JSON, line 2 column" in broken


async def test_the_impact_of_a_draft_on_stored_deliveries(console: Console) -> None:
    for index, quantity in enumerate([1, 3, 4, 9]):
        await console.add(f"low-{index}", low_stock(quantity), minutes=index)
    await console.login()

    answer = await console.post(
        "/playground/impact",
        {"path": "reorder.yaml", "text": REORDER.replace("<= data.minimum_quantity", "< 2")},
    )
    page = unescape(await answer.get_data(as_text=True))

    assert "4 stored deliveries replayed" in page
    row = re.search(r'<tr class="impact-row" data-rule="reorder-low-stock">(.*?)</tr>', page, re.S)
    assert row is not None, page
    cells = re.findall(r"<td>(.*?)</td>", row.group(1), re.S)
    assert "<strong>0</strong>" in cells[2]  # newly fired
    assert re.findall(r">(low-\d)</a>", cells[3]) == ["low-1", "low-2"]  # stopped firing
    assert "rental-log" not in page  # written the same: no change


async def test_the_case_is_saved_as_a_fixture_with_its_expectations(console: Console) -> None:
    await console.add("low-1", low_stock(3))
    await console.login()

    answer = await console.post(
        "/playground/fixture",
        {"path": "x.yaml", "text": REORDER, "source": "delivery", "delivery_id": "low-1"},
    )

    assert answer.headers["Content-Disposition"] == 'attachment; filename="reorder-low-stock-case.json"'
    fixture = json.loads(await answer.get_data())
    assert fixture["delivery_id"] == "low-1"
    assert fixture["payload"] == low_stock(3)
    assert fixture["expect"] == {
        "fired": ["reorder-low-stock"],
        "not_fired": [],
        "actions": [
            {"rule": "reorder-low-stock", "type": "log", "params": {"message": "order 7 x TENT (token ***)"}}
        ],
    }


async def test_without_rules_writable_saving_downloads_the_file(console: Console) -> None:
    await console.login()

    answer = await console.post("/playground/save", {"path": "stock/reorder.yaml", "text": REORDER})

    assert answer.headers["Content-Disposition"] == 'attachment; filename="reorder.yaml"'
    assert await answer.get_data(as_text=True) == REORDER
    assert not (console.root / "rules" / "stock").exists()


@pytest.mark.console(rules_writable=True)
async def test_saving_writes_the_file_when_the_whole_folder_still_loads(console: Console) -> None:
    await console.login()
    changed = REORDER.replace("* 2", "* 4")

    saved = await console.post("/playground/save", {"path": "reorder.yaml", "text": changed})
    clash = await console.post("/playground/save", {"path": "more/rentals-copy.yaml", "text": RENTALS})

    assert saved.status_code == clash.status_code == 302
    assert (console.root / "rules" / "reorder.yaml").read_text() == changed
    assert not (console.root / "rules" / "more" / "rentals-copy.yaml").exists()
    page = unescape(await (await console.client.get(clash.headers["Location"])).get_data(as_text=True))
    assert "not saved: the rules folder would not load" in page
    assert "duplicate rule id" in page
    assert [p.name for p in (console.root / "rules").iterdir() if p.name.startswith(".")] == []


@pytest.mark.console(rules_writable=True)
@pytest.mark.parametrize(
    "path", ["../outside.yaml", "/etc/x.yaml", ".hidden.yaml", "notes.txt", "a/../../b.yaml"]
)
async def test_saving_refuses_a_path_outside_the_rules_folder(console: Console, path: str) -> None:
    await console.login()

    answer = await console.post("/playground/save", {"path": path, "text": REORDER})

    assert answer.status_code == 400
    assert not (console.root / "outside.yaml").exists()


async def test_the_fields_seen_are_offered_for_completion(console: Console) -> None:
    await console.add("rent-1", {"event": "rent.created", "data": {"id": 7, "renter": {"name": "Ada"}}})
    await console.login()

    answer = await console.client.get("/playground/fields.json?event=rent.created")
    fields = {f["path"]: f for f in (await answer.get_json())["fields"]}

    assert fields["data.renter.name"] == {"path": "data.renter.name", "type": "string", "example": '"Ada"'}
    assert "data.quantity" not in fields  # the fixture's item.low_stock fields are another event's
    everything = (await (await console.client.get("/playground/fields.json")).get_json())["fields"]
    assert "data.minimum_quantity" in {f["path"] for f in everything}


async def test_the_playground_opens_a_rule_s_file_on_a_chosen_delivery(console: Console) -> None:
    await console.add("low-1", low_stock(3))
    await console.login()

    page = unescape(
        await (await console.client.get("/playground?rule=rental-log&delivery=low-1")).get_data(as_text=True)
    )

    assert 'name="path" value="rentals.yaml"' in page
    assert "id: rental-log" in page
    assert 'id="delivery-id" list="recent" value="low-1"' in page


@pytest.mark.console(rules_writable=True)
async def test_a_link_in_the_rules_folder_leads_nowhere_outside(
    console: Console, tmp_path_factory: pytest.TempPathFactory
) -> None:
    outside = tmp_path_factory.mktemp("outside")
    (outside / "secret.yaml").write_text("id: not-yours\n")
    (console.root / "rules" / "elsewhere").symlink_to(outside, target_is_directory=True)
    await console.login()

    opened = await console.client.get("/playground?file=elsewhere/secret.yaml")
    saved = await console.post(
        "/playground/save", {"path": "elsewhere/new.yaml", "text": RENTALS.replace("rental-log", "x")}
    )

    assert "not-yours" not in await opened.get_data(as_text=True)
    assert saved.status_code == 302  # the folder with that link does not load: refused, as `check` would
    page = await (await console.client.get(saved.headers["Location"])).get_data(as_text=True)
    assert "not saved: the rules folder would not load" in page
    assert "outside" in page
    assert sorted(p.name for p in outside.iterdir()) == ["secret.yaml"]


def test_writing_through_a_link_that_leads_outside_is_refused_whatever_the_loader_says(
    tmp_path: Path,
) -> None:
    rules_dir, outside = tmp_path / "rules", tmp_path / "outside"
    rules_dir.mkdir()
    outside.mkdir()
    (rules_dir / "elsewhere").symlink_to(outside, target_is_directory=True)
    draft = read_draft(RENTALS, "elsewhere/new.yaml", load_registry())

    with pytest.raises(OSError, match="leads outside the rules folder"):
        write_draft(rules_dir, draft)
    assert list(outside.iterdir()) == []
