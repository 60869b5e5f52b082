"""The console in a real browser (Debian's chromium, driven by Playwright) against a real `serve`.

One `serve` process (SQLite, the in-process worker, the console on its own port, a password,
CONSOLE_RULES_WRITABLE=true) runs for the module; actions go to a local sink. Each test has
a browser context of its own. Every page visited is watched: a dialog, a script error or a
Content-Security-Policy violation fails the test that caused it.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, Playwright, expect, sync_playwright

from actions.base import idempotency_key
from tests.console.browser_harness import (
    CHROMIUM_FLAGS,
    PASSWORD,
    Installation,
    chromium_path,
    free_port,
    hostile_page,
    wait_for,
)
from tests.console.xss_corpus import XSS_CORPUS
from tests.e2e.conftest import Answer, Sink

pytestmark = [pytest.mark.browser, pytest.mark.timeout(180)]

REORDER = """\
id: reorder-low-stock
on: item.low_stock
when: data.quantity <= data.minimum_quantity
actions:
  - type: http
    url: "http://127.0.0.1:{port}/po/orders"
    json:
      sku: "{{{{ data.external_id }}}}"
      quantity: "{{{{ data.minimum_quantity * 2 - data.quantity }}}}"
"""
RENTALS = """\
id: rental-log
on: rent.created
actions:
  - type: log
    message: "rental {{ data.id }} for {{ data.renter.name }}"
"""


def low_stock(quantity: int, sku: str = "TENT") -> dict[str, Any]:
    return {
        "event": "item.low_stock",
        "data": {"id": 1, "name": "Tent", "quantity": quantity, "minimum_quantity": 5, "external_id": sku},
    }


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    executable = chromium_path()
    with sync_playwright() as playwright:
        launched = launch(playwright, executable)
        yield launched
        launched.close()


def launch(playwright: Playwright, executable: str) -> Browser:
    return playwright.chromium.launch(executable_path=executable, args=CHROMIUM_FLAGS, headless=True)


@pytest.fixture(scope="module")
def sink() -> Iterator[Sink]:
    found = Sink()
    yield found
    found.close()


@pytest.fixture(scope="module")
def installation(
    tmp_path_factory: pytest.TempPathFactory, sink: Sink, browser: Browser
) -> Iterator[Installation]:
    root = tmp_path_factory.mktemp("console-browser")
    found = Installation(root, {"reorder.yaml": REORDER.format(port=sink.port), "rentals.yaml": RENTALS})
    found.serve()
    try:
        yield found
    finally:
        logs = found.stop()
        print(logs)


class Watched:
    """A page whose dialogs, script errors and CSP violations are recorded."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.problems: list[str] = []
        page.on(
            "dialog", lambda dialog: (self.problems.append(f"dialog: {dialog.message}"), dialog.dismiss())
        )
        page.on("pageerror", lambda error: self.problems.append(f"script error: {error}"))
        page.on("console", self._console)

    def _console(self, message: Any) -> None:
        # An answer's status (a refused login is a 401) is not a problem of the page.
        if message.type in ("error", "warning") and not message.text.startswith("Failed to load resource"):
            self.problems.append(f"console {message.type}: {message.text}")


@pytest.fixture
def watched(browser: Browser, installation: Installation) -> Iterator[Callable[[], Watched]]:
    pages: list[Watched] = []

    def new_page() -> Watched:
        context = browser.new_context(base_url=installation.console, viewport={"width": 1300, "height": 900})
        page = Watched(context.new_page())
        pages.append(page)
        return page

    yield new_page
    problems = [problem for page in pages for problem in page.problems]
    for page in pages:
        page.page.context.close()
    assert problems == [], problems


def log_in(page: Page, password: str = PASSWORD) -> None:
    page.goto("/login")
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")


@pytest.fixture
def console_page(watched: Callable[[], Watched]) -> Page:
    page = watched().page
    log_in(page)
    expect(page.locator("h1")).to_have_text("Deliveries")
    return page


def test_login_logout_and_refusal(watched: Callable[[], Watched]) -> None:
    page = watched().page
    page.goto("/rules")
    expect(page).to_have_url(re.compile(r"/login\?next=/rules"))

    page.fill("input[name=password]", "not-the-password")
    page.click("button[type=submit]")
    expect(page.locator(".flash.problem")).to_have_text("wrong password")

    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    expect(page.locator("h1")).to_have_text("Rules")

    page.click("text=Log out")
    expect(page).to_have_url(re.compile(r"/login$"))
    page.goto("/")
    expect(page).to_have_url(re.compile(r"/login\?next="))


def test_a_forged_cross_site_post_is_refused(
    console_page: Page, installation: Installation, sink: Sink
) -> None:
    delivery_id = installation.send(low_stock(3, "FORGED"))
    assert installation.wait_finished(delivery_id) == "done"
    key = idempotency_key(delivery_id, "reorder-low-stock", 0)
    assert sink.counts([key]) == {key: 1}

    target = f"{installation.console}/redeliver/{delivery_id}"
    with hostile_page(target, {"force": "yes", "confirm": "yes"}) as evil:
        console_page.goto(evil.url)
        console_page.click("#go")
        expect(console_page.locator("body")).to_contain_text("refused")

    time.sleep(1)
    assert sink.counts([key]) == {key: 1}
    assert installation.status(delivery_id) == "done"


def test_filters_and_paging(console_page: Page, installation: Installation) -> None:
    sent = [installation.send({"event": "paging.test", "data": {"n": n}}, f"page-{n}") for n in range(7)]
    for delivery_id in sent:
        installation.wait_finished(delivery_id)

    console_page.fill("input[name=event]", "paging.test")
    console_page.select_option("select[name=status]", "no_match")
    console_page.click("text=Filter")
    expect(console_page.locator("td.id")).to_have_count(7)
    expect(console_page.locator("td.id").first).to_have_text("page-6")

    console_page.goto("/?event=paging.test&size=3")
    seen = []
    while True:
        seen += console_page.locator("td.id").all_inner_texts()
        older = console_page.locator("#older")
        if older.count() == 0:
            break
        older.click()
    assert seen == [f"page-{n}" for n in reversed(range(7))]


def test_one_delivery_s_page(console_page: Page, installation: Installation) -> None:
    delivery_id = installation.send(low_stock(3, "ONE"))
    installation.wait_finished(delivery_id)

    console_page.goto(f"/?id={delivery_id}")
    console_page.click(f"text={delivery_id}")

    expect(console_page.locator("h1")).to_contain_text(delivery_id)
    expect(console_page.locator("#status")).to_have_text("done")
    expect(console_page.locator("tr.verdict-row", has_text="reorder-low-stock")).to_contain_text(
        "data.quantity (3) <= data.minimum_quantity (5) -> true"
    )
    action = console_page.locator("section.action")
    expect(action).to_contain_text('"sku": "ONE"')
    expect(action).to_contain_text('"quantity": 7')
    expect(action).to_contain_text("response 200")


def test_redeliver_from_the_page_runs_the_action_once_at_the_sink(
    console_page: Page, installation: Installation, sink: Sink
) -> None:
    sink.script("/po/orders", Answer(500))
    delivery_id = installation.send(low_stock(2, "REDELIVER"))
    assert installation.wait_finished(delivery_id) == "failed"
    key = idempotency_key(delivery_id, "reorder-low-stock", 0)
    assert sink.counts([key]) == {key: 1}

    console_page.goto(f"/deliveries/{delivery_id}")
    console_page.click("#redeliver")
    expect(console_page.locator(".flash")).to_contain_text("redelivered")
    expect(console_page.locator("#status")).to_have_text("done", timeout=20_000)
    assert sink.counts([key]) == {key: 2}  # the failed action ran once more, and succeeded

    console_page.click("#redeliver")  # succeeded actions are not run again
    expect(console_page.locator("#status")).to_have_text("done", timeout=20_000)
    time.sleep(1)
    assert sink.counts([key]) == {key: 2}

    console_page.click("details.force summary")
    console_page.check("input[name=confirm]")
    console_page.click("#force-redeliver")
    expect(console_page.locator(".flash")).to_contain_text("forced")
    expect(console_page.locator("#status")).to_have_text("done", timeout=20_000)
    deadline = time.monotonic() + 10
    while sink.counts([key])[key] < 3 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert sink.counts([key]) == {key: 3}


def replace_editor_text(page: Page, text: str) -> None:
    """As a paste does: one change of the whole text, through the editor's own transactions."""
    page.wait_for_function("() => window.ruleEditor !== undefined")
    page.evaluate(
        "text => ruleEditor.dispatch({changes: {from: 0, to: ruleEditor.state.doc.length, insert: text},"
        " userEvent: 'input.paste'})",
        text,
    )


def test_typing_in_the_playground_shows_the_result_and_an_error_at_its_line(
    console_page: Page, installation: Installation, sink: Sink
) -> None:
    delivery_id = installation.send(low_stock(3, "PLAY"))
    installation.wait_finished(delivery_id)
    console_page.goto(f"/playground?rule=reorder-low-stock&delivery={delivery_id}")
    expect(console_page.locator(".cm-lineNumbers")).to_be_visible()
    expect(console_page.locator("#result .outcome.fired")).to_contain_text("reorder-low-stock")

    rule = REORDER.format(port=sink.port)
    replace_editor_text(console_page, rule.replace("* 2", "* 4"))
    expect(console_page.locator("#result .outcome.fired")).to_contain_text('"quantity": 17')

    # Typed key by key at the end of line 3 (`when: ...`): a slip, shown at its line.
    editor = console_page.locator(".cm-content")
    editor.click()
    console_page.keyboard.press("Control+Home")
    for _ in range(2):
        console_page.keyboard.press("ArrowDown")
    console_page.keyboard.press("End")
    console_page.keyboard.type(" && data.quantity > 0")
    expect(console_page.locator('#result li.problem[data-line="3"]')).to_contain_text("line 3")
    expect(console_page.locator("#result li.problem")).to_contain_text("and")
    expect(console_page.locator(".cm-lint-marker-error")).to_have_count(1)

    for _ in range(len(" && data.quantity > 0")):
        console_page.keyboard.press("Backspace")
    expect(console_page.locator("#result .outcome.fired")).to_contain_text('"quantity": 17')
    expect(console_page.locator(".cm-lint-marker-error")).to_have_count(0)

    # Completion offers the payload's fields after `data.`.
    console_page.keyboard.press("Control+End")
    console_page.keyboard.type("# data.mini")
    expect(console_page.locator(".cm-tooltip-autocomplete")).to_contain_text("data.minimum_quantity")


def test_the_impact_of_a_draft(console_page: Page, installation: Installation, sink: Sink) -> None:
    first = installation.send(low_stock(1, "IMPACT"))
    installation.wait_finished(first)
    console_page.goto("/playground?rule=reorder-low-stock")
    replace_editor_text(
        console_page, REORDER.format(port=sink.port).replace("<= data.minimum_quantity", "< 0")
    )

    console_page.click("#impact-button")

    row = console_page.locator('#impact tr.impact-row[data-rule="reorder-low-stock"]')
    expect(row).to_be_visible()
    expect(row.locator("td").nth(3)).to_contain_text(first)  # stopped firing
    expect(console_page.locator("#impact")).to_contain_text("nothing sent")


def test_saving_a_rule_is_picked_up_by_the_running_serve(
    console_page: Page, installation: Installation
) -> None:
    console_page.goto("/playground?rule=rental-log")
    replace_editor_text(
        console_page, RENTALS.replace('"rental {{ data.id }}', '"saved from the console {{ data.id }}')
    )
    expect(console_page.locator("#result")).not_to_contain_text("line ")

    console_page.click("#save-rule")
    expect(console_page.locator(".flash")).to_contain_text("saved rentals.yaml")
    assert "saved from the console" in (installation.rules_dir / "rentals.yaml").read_text()

    deadline, message = time.monotonic() + 20, ""
    while time.monotonic() < deadline and "saved from the console" not in message:
        delivery_id = installation.send(
            {"event": "rent.created", "data": {"id": 5, "renter": {"name": "Ada"}}}
        )
        installation.wait_finished(delivery_id)
        console_page.goto(f"/deliveries/{delivery_id}")
        message = console_page.locator("section.action pre.params").inner_text()
    assert '"message": "saved from the console 5 for Ada"' in message


def test_a_read_only_console(browser: Browser, installation: Installation) -> None:
    port = free_port()
    process = installation.start("console", "--port", str(port), CONSOLE_READ_ONLY="true")
    try:
        wait_for(f"http://127.0.0.1:{port}/healthz")
        delivery_id = installation.send(low_stock(3, "READONLY"))
        installation.wait_finished(delivery_id)
        context = browser.new_context(base_url=f"http://127.0.0.1:{port}")
        page = context.new_page()
        log_in(page)
        expect(page.locator(".badge.read-only")).to_be_visible()
        page.goto(f"/deliveries/{delivery_id}")
        expect(page.locator("#redeliver")).to_have_count(0)
        page.goto("/playground?rule=rental-log")
        expect(page.locator("#save-rule")).to_have_count(0)
        token = page.locator('meta[name="csrf-token"]').get_attribute("content")
        answer = page.request.post(f"/redeliver/{delivery_id}", form={"csrf_token": token or ""})
        assert answer.status == 403
        assert "read-only" in answer.text()
        context.close()
    finally:
        process.terminate()
        process.wait(15)


def test_a_stored_xss_corpus_is_shown_as_text_everywhere(
    watched: Callable[[], Watched], installation: Installation
) -> None:
    """Payload values and keys, a header and the delivery id hold each entry: no dialog, no script
    error, no CSP violation (which would mean markup got in and was only stopped by the policy)."""
    page = watched().page
    log_in(page)
    sent = []
    for index, hostile in enumerate(XSS_CORPUS):
        payload = {
            "event": "rent.created",
            "data": {"id": index, "renter": {"name": hostile}, hostile: hostile},
        }
        delivery_id = installation.send(payload, f"xss-{index}-{hostile}", **{"User-Agent": hostile})
        sent.append((delivery_id, hostile))
    for delivery_id, _ in sent:
        installation.wait_finished(delivery_id)

    for path in ["/", "/?event=rent.created", "/?id=xss-", "/rules"]:
        answer = page.goto(path)
        assert answer is not None
        assert "script-src 'self'" in answer.headers["content-security-policy"]
    for delivery_id, hostile in sent:
        answer = page.goto(f"/deliveries/{delivery_id}")
        assert answer is not None
        assert answer.status == 200
        assert "frame-ancestors 'none'" in answer.headers["content-security-policy"]
        as_json = json.dumps(hostile, ensure_ascii=False)[1:-1]
        assert f'"name": "{as_json}"' in page.locator("pre.body").inner_text()  # shown, as text
        expect(page.locator("h1 code")).to_have_text(delivery_id)
        expect(page.locator("table.headers")).to_contain_text(hostile)  # the User-Agent header
        expect(page.locator("section.action pre.params")).to_contain_text(f"for {as_json}")
        page.goto(f"/playground?rule=rental-log&delivery={delivery_id}")
        expect(page.locator("#result .outcome.fired")).to_contain_text("rental-log")
    assert page.evaluate("typeof window.__xss") == "undefined"
