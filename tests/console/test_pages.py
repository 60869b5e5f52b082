"""The console's pages over a real store: the log, one delivery, the rules (SPEC section 16)."""

from __future__ import annotations

import json
import re
from html import unescape

import pytest

from tests.console.conftest import PO_TOKEN, Console, low_stock

RENTAL = {"event": "rent.created", "data": {"id": 7, "renter": {"name": "Ada"}}}


def ids_in(page: str) -> list[str]:
    return [unescape(i) for i in re.findall(r'<td class="id"><a href="[^"]+">([^<]+)</a>', page)]


async def text(answer: object) -> str:
    return await answer.get_data(as_text=True)  # type: ignore[attr-defined,no-any-return]


async def test_the_log_is_newest_first_and_pages_by_keyset(console: Console) -> None:
    for index in range(7):
        await console.add(f"d{index}", low_stock(index), minutes=index, process=False)
    await console.login()

    pages, path = [], "/?size=3"
    while path:
        page = await text(await console.client.get(path))
        pages.append(ids_in(page))
        older = re.search(r'<a id="older" href="([^"]+)">', page)
        path = unescape(older.group(1)) if older else ""
        # A delivery arriving meanwhile shifts nothing from one page to the next.
        await console.add(f"new{len(pages)}", low_stock(1), minutes=100 + len(pages), process=False)

    assert pages == [["d6", "d5", "d4"], ["d3", "d2", "d1"], ["d0"]]


async def test_the_log_filters_by_status_event_rule_and_id_prefix(console: Console) -> None:
    await console.add("low-1", low_stock(3), minutes=1)  # fires reorder-low-stock: done
    await console.add("low-2", low_stock(9), minutes=2)  # no rule fires: no_match
    await console.add("rent-1", RENTAL, minutes=3)  # rental-log: done
    await console.login()

    async def shown(query: str) -> list[str]:
        return ids_in(await text(await console.client.get("/?" + query)))

    assert await shown("") == ["rent-1", "low-2", "low-1"]
    assert await shown("status=no_match") == ["low-2"]
    assert await shown("status=done") == ["rent-1", "low-1"]
    assert await shown("event=item.low_stock") == ["low-2", "low-1"]
    assert await shown("rule=reorder-low-stock") == ["low-1"]
    assert await shown("id=low-") == ["low-2", "low-1"]
    assert await shown("id=%25") == []  # a LIKE wildcard is a character like any other
    assert await shown("status=bogus") == ["rent-1", "low-2", "low-1"]


async def test_the_live_refresh_returns_only_the_rows(console: Console) -> None:
    await console.add("low-1", low_stock(3))
    await console.login()

    page = await text(await console.client.get("/?status=done&partial=rows"))

    assert "<html" not in page
    assert ids_in(page) == ["low-1"]


async def test_the_chart_counts_the_last_day_per_minute_by_status(console: Console) -> None:
    await console.add("low-1", low_stock(3), minutes=0)
    await console.add("low-2", low_stock(9), minutes=0)
    await console.add("low-3", low_stock(2), minutes=5)
    await console.login()

    svg = await text(await console.client.get("/chart"))

    assert svg.count('<rect class="bar s-done"') == 2
    assert svg.count('<rect class="bar s-no_match"') == 1
    assert "peak 2 per minute" in svg
    assert re.search(r"UTC: 1 no_match</title>", svg)


async def test_one_delivery_tells_the_whole_story_with_values_and_secrets_masked(console: Console) -> None:
    await console.add("low-1", low_stock(3))
    await console.login()

    page = unescape(await text(await console.client.get("/deliveries/low-1")))

    assert "data.quantity (3) <= data.minimum_quantity (5) -> true" in page  # the author's expression
    assert "event rent.created" not in page
    assert "reorder-low-stock · actions[0] · log" in page
    assert '"message": "order 7 x TENT (token ***)"' in page
    assert PO_TOKEN not in page
    assert "X-Stockaj-Event" in page
    assert "1 attempt(s)" in page


async def test_an_unknown_delivery_is_a_404(console: Console) -> None:
    await console.login()
    assert (await console.client.get("/deliveries/nope")).status_code == 404


async def test_the_raw_body_is_a_text_plain_attachment_exactly_as_received(console: Console) -> None:
    payload = {"event": "item.low_stock", "data": {"name": "<script>alert(1)</script>"}}
    await console.add("x-1", payload, process=False)
    await console.login()

    answer = await console.client.get("/raw/x-1")

    assert answer.headers["Content-Type"] == "text/plain; charset=utf-8"
    assert answer.headers["Content-Disposition"] == 'attachment; filename="delivery-x-1.txt"'
    assert answer.headers["X-Content-Type-Options"] == "nosniff"
    assert json.loads(await answer.get_data()) == payload


async def test_export_as_fixture_gives_the_payload_and_the_recorded_verdicts(console: Console) -> None:
    await console.add("low-1", low_stock(3))
    await console.login()

    answer = await console.client.get("/fixture/low-1")

    assert answer.headers["Content-Disposition"].startswith("attachment;")
    fixture = json.loads(await answer.get_data())
    assert fixture["payload"] == low_stock(3)
    assert fixture["expect"] == {"fired": ["reorder-low-stock"], "not_fired": ["rental-log"]}


async def test_redeliver_and_force_redeliver_need_the_confirmation(console: Console) -> None:
    await console.add("low-1", low_stock(3))
    await console.login()

    plain = await console.post("/redeliver/low-1")
    unconfirmed = await console.post("/redeliver/low-1", {"force": "yes"})
    forced = await console.post("/redeliver/low-1", {"force": "yes", "confirm": "yes"})

    assert plain.status_code == unconfirmed.status_code == forced.status_code == 302
    assert console.redelivered == [("low-1", False), ("low-1", True)]
    page = await text(await console.client.get("/deliveries/low-1"))
    assert "redelivered (forced: every action runs again): queued" in page


@pytest.mark.console(read_only=True)
async def test_a_read_only_console_refuses_redeliver_and_saving_and_hides_the_buttons(
    console: Console,
) -> None:
    await console.add("low-1", low_stock(3))
    await console.login()

    page = await text(await console.client.get("/deliveries/low-1"))
    redeliver = await console.post("/redeliver/low-1")
    save = await console.post("/playground/save", {"path": "x.yaml", "text": "id: x"})

    assert 'id="redeliver"' not in page
    assert ">read-only<" in page
    assert redeliver.status_code == save.status_code == 403
    assert "read-only" in await text(redeliver)
    assert console.redelivered == []


async def test_the_rules_page_shows_traffic_never_fired_and_the_folder_s_problems(console: Console) -> None:
    await console.add("low-1", low_stock(3))
    await console.add("low-2", low_stock(9))
    await console.login()

    page = unescape(await text(await console.client.get("/rules")))
    assert re.search(r'<td class="fired">1</td>', page)
    assert "condition_false 1" in page
    assert re.search(r'<ul class="never-fired"><li>rental-log', page)

    (console.root / "rules" / "broken.yaml").write_text("id: broken\non: x\nactions:\n  - type: slak\n")
    assert console.service.rules.reload() is False
    page = unescape(await text(await console.client.get("/rules")))
    assert "The newest rule files were refused" in page
    assert "broken.yaml:4:" in page
    assert "unknown action type 'slak'" in page


async def test_the_health_page_shows_doctors_findings_with_their_fixes(console: Console) -> None:
    await console.add("h1", low_stock(1), minutes=1)
    refused = await console.client.get("/health")
    assert refused.status_code in (302, 303, 401)  # behind the password like every page
    await console.login()
    page = await text(await console.client.get("/health"))
    assert "STOCKAJ_WEBHOOK_SECRET is not set" in page  # the fixture's settings have none
    assert "set it to the secret in Stockaj's webhook settings" in unescape(page)
    assert "reachable and migrated" in page
    assert "1 problem(s) to fix." in page
