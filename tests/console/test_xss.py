"""Stored XSS, without a browser: whatever a delivery holds reaches the HTML escaped, everywhere.

The browser tests (test_browser.py) show the same corpus raising no dialog, no script error
and no CSP violation in chromium; these run wherever the suite runs.
"""

from __future__ import annotations

import json
from html.parser import HTMLParser
from urllib.parse import quote

import pytest

from tests.console.conftest import Console
from tests.console.xss_corpus import XSS_CORPUS


class _Tags(HTMLParser):
    """Every element as a browser parses it, with its attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[tuple[str, list[tuple[str, str | None]]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.found.append((tag, attrs))


def dangerous_markup(html: str) -> list[str]:
    """Event handler attributes, javascript: URLs, and elements the console never writes."""
    parser = _Tags()
    parser.feed(html)
    found = []
    for tag, attrs in parser.found:
        if tag in ("iframe", "img", "math", "object", "embed", "style"):
            found.append(f"<{tag}>")
        if tag == "script" and not dict(attrs).get("src", "").startswith("/static/"):
            found.append("<script> not from /static/")
        for name, value in attrs:
            if name.startswith("on") or (
                name in ("href", "src", "action", "formaction")
                and (value or "").strip().lower().startswith("javascript:")
            ):
                found.append(f"<{tag} {name}={value!r}>")
    return found


@pytest.mark.parametrize("hostile", XSS_CORPUS)
async def test_payload_values_keys_headers_and_ids_are_escaped_on_every_page(
    console: Console, hostile: str
) -> None:
    delivery_id = f"xss-{hostile}"
    payload = {"event": "rent.created", "data": {"id": 1, "renter": {"name": hostile}, hostile: hostile}}
    await console.add(delivery_id, payload)
    stored = await console.service.store.get(delivery_id)
    assert stored is not None
    await console.login()

    pages = {
        "log": "/",
        "log filtered": f"/?id={quote(delivery_id)}",
        "rows": "/?partial=rows",
        "delivery": f"/deliveries/{quote(delivery_id)}",
        "rules": "/rules",
        "playground": f"/playground?rule=rental-log&delivery={quote(delivery_id)}",
    }
    markup = any(character in hostile for character in "<>\"'")
    for name, path in pages.items():
        html = await (await console.client.get(path)).get_data(as_text=True)
        if markup:  # text without these characters is text in HTML too, as written
            assert hostile not in html, name
            assert json.dumps(hostile)[1:-1] not in html, name
        assert dangerous_markup(html) == [], name

    evaluated = await console.post(
        "/playground/evaluate",
        {
            "path": "rentals.yaml",
            "text": (console.root / "rules" / "rentals.yaml").read_text(),
            "delivery_id": delivery_id,
        },
    )
    html = await evaluated.get_data(as_text=True)
    assert "rental-log" in html
    assert not markup or hostile not in html
