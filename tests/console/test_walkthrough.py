"""The console as a new user meets it, in chromium: the shipped rules and fixtures, every page.

`serve` runs on a copy of the shipped `rules/` with its actions pointed at a local sink; the
shipped `fixtures/` are sent as Stockaj sends them. Then: the log, one delivery, open it in
the playground, change the rule, see the impact, save it, send again and see the new outcome.
With CONSOLE_SCREENSHOTS=FOLDER (scripts/console-screenshots) each step is saved as a PNG
there: the pictures of docs/console.md.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect

from tests.console.browser_harness import CLI, SECRET, Installation
from tests.console.test_browser import browser, log_in, replace_editor_text, sink  # noqa: F401
from tests.e2e.conftest import Sink

pytestmark = [pytest.mark.browser, pytest.mark.timeout(240)]

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def shipped(tmp_path_factory: pytest.TempPathFactory, sink: Sink) -> Iterator[Installation]:  # noqa: F811
    root = tmp_path_factory.mktemp("walkthrough")
    rules = {path.name: path.read_text() for path in (REPO / "rules").iterdir() if path.is_file()}
    sync_db = root / "warehouse.db"
    with closing(sqlite3.connect(sync_db)) as db:
        db.execute(
            "CREATE TABLE inventory_items (stockaj_id TEXT PRIMARY KEY, name TEXT, quantity INTEGER, updated_at TEXT)"
        )
        db.commit()
    found = Installation(
        root,
        rules,
        SLACK_WEBHOOK_URL=sink.url("/slack/T000/B000/walkthrough-slack-token"),
        PURCHASE_ORDER_URL=sink.url("/po/orders"),
        SYNC_DATABASE_URL=f"sqlite+aiosqlite:///{sync_db}",
    )
    shutil.copytree(REPO / "fixtures", root / "fixtures", dirs_exist_ok=True)
    found.serve()
    try:
        yield found
    finally:
        print(found.stop())


def send_fixture(installation: Installation, fixture: Path) -> list[str]:
    sent = subprocess.run(
        [
            CLI,
            "send",
            str(fixture),
            "--url",
            f"http://127.0.0.1:{installation.port}/webhooks/stockaj",
            "--secret",
            SECRET,
        ],
        env=installation.env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [
        line.rsplit('"delivery_id":"', 1)[1].split('"')[0]
        for line in sent.splitlines()
        if "delivery_id" in line
    ]


class Camera:
    def __init__(self, page: Page) -> None:
        folder = os.environ.get("CONSOLE_SCREENSHOTS")
        self.folder = Path(folder) if folder else None
        self.page = page

    def shot(self, name: str) -> None:
        if self.folder is not None:
            self.folder.mkdir(parents=True, exist_ok=True)
            self.page.screenshot(path=str(self.folder / f"{name}.png"), full_page=True)


def test_a_new_user_follows_a_delivery_changes_its_rule_and_sees_the_new_outcome(
    browser: Browser,  # noqa: F811
    shipped: Installation,
) -> None:
    ids = [i for fixture in sorted((REPO / "fixtures").iterdir()) for i in send_fixture(shipped, fixture)]
    for delivery_id in ids:
        shipped.wait_finished(delivery_id)
    page = browser.new_context(base_url=shipped.console, viewport={"width": 1280, "height": 860}).new_page()
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(str(error)))
    page.on("dialog", lambda dialog: problems.append(dialog.message))
    camera = Camera(page)

    page.goto("/")
    camera.shot("01-login")
    log_in(page)
    expect(page.locator("svg.chart rect.bar").first).to_be_attached()
    camera.shot("02-delivery-log")

    page.click("text=7f1c2a4e-low-stock-1")
    expect(page.locator("tr.verdict-row", has_text="reorder-low-stock")).to_contain_text(
        "data.quantity (3) <= data.minimum_quantity (5) -> true"
    )
    camera.shot("03-one-delivery")

    page.locator("tr.verdict-row", has_text="reorder-low-stock").locator("text=try it").click()
    expect(page.locator("#result .outcome.fired")).to_contain_text('"quantity": 7')
    rule = (shipped.rules_dir / "reorder-low-stock.yaml").read_text()
    replace_editor_text(
        page, rule.replace("minimum_quantity * 2 - data.quantity", "minimum_quantity * 3 - data.quantity")
    )
    expect(page.locator("#result .outcome.fired")).to_contain_text('"quantity": 12')
    page.click("#impact-button")
    expect(page.locator('#impact tr.impact-row[data-rule="reorder-low-stock"]')).to_be_visible()
    camera.shot("04-playground-and-impact")

    page.click("#save-rule")
    expect(page.locator(".flash")).to_contain_text("saved reorder-low-stock.yaml")
    camera.shot("05-saved")

    page.goto("/rules")
    expect(page.locator("tr.rule-row", has_text="reorder-low-stock")).to_be_visible()
    camera.shot("06-rules")

    # Sent again (a new item: the rule is throttled per item for 6 hours), it follows the new rule.
    another = shipped.root / "another-item.json"
    payload = {
        "event": "item.low_stock",
        "data": {"id": 7, "name": "Stove", "quantity": 3, "minimum_quantity": 5},
    }
    quantities: list[str] = []
    for attempt in range(20):
        payload["data"]["external_id"] = f"STOVE-{attempt}"  # type: ignore[index]
        another.write_text(
            json.dumps({"name": "a stove below minimum", "event": "item.low_stock", "payload": payload})
        )
        (again,) = send_fixture(shipped, another)
        shipped.wait_finished(again)
        page.goto(f"/deliveries/{again}")
        quantities = page.locator("section.action pre.params").all_inner_texts()
        if quantities and '"quantity": 12' in quantities[0]:
            break
        page.wait_for_timeout(500)
    assert quantities, "the new delivery ran no action"
    assert '"quantity": 12' in quantities[0], quantities
    camera.shot("07-the-new-outcome")
    assert problems == []
