"""The console against a real store and real rules: deliveries processed by the real worker code.

`Console` is one installation: a rules folder, a fixtures folder, a SQLite store whose
deliveries went through `DeliveryProcessor` (their outcomes and action ledger are the real
ones), and the console app over them, driven through Quart's test client.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from quart import Quart
from quart.testing import QuartClient

from actions.registry import load_registry
from engine.config import load_settings
from engine.console.access import COOKIE
from engine.console.app import ConsoleParts, create_console
from engine.pipeline.service import Service, open_service
from engine.secrets import Masker
from engine.store import NewDelivery

PASSWORD = "console-test-password-1"
PO_TOKEN = "po-token-console-7731"
T0 = datetime.now(UTC) - timedelta(hours=2)

REORDER = """\
id: reorder-low-stock
description: Reorder an item that fell to its minimum stock.
on: item.low_stock
when: data.quantity <= data.minimum_quantity
actions:
  - type: log
    message: "order {{ data.minimum_quantity * 2 - data.quantity }} x {{ data.external_id }} (token {{ secrets.PO_TOKEN }})"
"""
RENTALS = """\
id: rental-log
on: rent.created
actions:
  - type: log
    message: "rental {{ data.id }} for {{ data.renter.name }}"
"""
FIXTURE = {
    "name": "tent below minimum",
    "event": "item.low_stock",
    "payload": {
        "event": "item.low_stock",
        "timestamp": "2026-03-01T09:00:00Z",
        "data": {"id": 42, "name": "Tent", "quantity": 3, "minimum_quantity": 5, "external_id": "TENT"},
    },
}


def low_stock(quantity: int, sku: str = "TENT") -> dict[str, Any]:
    return {
        "event": "item.low_stock",
        "data": {"id": 1, "name": "Tent", "quantity": quantity, "minimum_quantity": 5, "external_id": sku},
    }


@dataclass
class Console:
    root: Path
    service: Service
    parts: ConsoleParts
    app: Quart
    client: QuartClient
    redelivered: list[tuple[str, bool]] = field(default_factory=list)

    async def add(
        self, delivery_id: str, payload: dict[str, Any], minutes: float = 0, process: bool = True
    ) -> None:
        received = T0 + timedelta(minutes=minutes)
        body = json.dumps(payload).encode()
        headers = {"Content-Type": "application/json", "X-Stockaj-Event": payload["event"]}
        new = NewDelivery(delivery_id, payload["event"], headers, body, received)
        await self.service.store.add_deliveries([new], received)
        if process:
            await self.service.processor.process(delivery_id)

    def session_cookie(self) -> str | None:
        jar = self.client.cookie_jar
        assert jar is not None
        return next((cookie.value for cookie in jar if cookie.name == COOKIE), None)

    async def csrf(self, path: str = "/") -> str:
        page = await self.client.get(path)
        text = await page.get_data(as_text=True)
        found = re.search(r'<meta name="csrf-token" content="([^"]+)">', text)
        assert found is not None, text[:500]
        return found.group(1)

    async def login(self) -> None:
        token = await self.csrf("/login")
        answer = await self.client.post("/login", form={"password": PASSWORD, "csrf_token": token})
        assert answer.status_code == 302, await answer.get_data(as_text=True)

    async def post(self, path: str, form: dict[str, str] | None = None, **kwargs: Any) -> Any:
        token = await self.csrf()
        return await self.client.post(path, form={"csrf_token": token, **(form or {})}, **kwargs)


async def _redeliver_recorder(console: list[Console], delivery_id: str, force: bool) -> str | None:
    console[0].redelivered.append((delivery_id, force))
    return "queued" if delivery_id != "unknown" else None


@pytest.fixture
async def console(
    tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Console]:
    """A console with a password over a store of processed deliveries; options by marker."""
    monkeypatch.setenv("SECRET_PO_TOKEN", PO_TOKEN)
    options = request.node.get_closest_marker("console")
    kwargs = dict(options.kwargs) if options else {}
    rules_dir, fixtures_dir = tmp_path / "rules", tmp_path / "fixtures"
    rules_dir.mkdir()
    fixtures_dir.mkdir()
    (rules_dir / "reorder.yaml").write_text(REORDER)
    (rules_dir / "rentals.yaml").write_text(RENTALS)
    (fixtures_dir / "tent.json").write_text(json.dumps(FIXTURE))
    settings = load_settings(
        {"DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'store.db'}", "RULES_DIR": str(rules_dir)}
    )
    service = await open_service(settings, receive=False, process_in_process=True, background=False)
    holder: list[Console] = []
    parts = ConsoleParts(
        store=service.store,
        rules=service.rules,
        rules_dir=rules_dir,
        fixtures_dir=fixtures_dir,
        registry=load_registry(),
        masker=Masker([PO_TOKEN, PASSWORD]),
        secrets={"PO_TOKEN": PO_TOKEN},
        redeliver=lambda delivery_id, force: _redeliver_recorder(holder, delivery_id, force),
        password=kwargs.get("password", PASSWORD),
        read_only=kwargs.get("read_only", False),
        rules_writable=kwargs.get("rules_writable", False),
        settings=settings,
    )
    app = create_console(parts)
    found = Console(tmp_path, service, parts, app, app.test_client())
    holder.append(found)
    try:
        yield found
    finally:
        await service.close()
