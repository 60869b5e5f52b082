"""`deliveries list`, `show` and `export --expect` as an operator reads them.

Colour and alignment as `test -v` has them (and none with NO_COLOR or off a
terminal), rules in rule-file order, where each action was sent, and a
throttled delivery exported as a fixture that `test` passes. The deliveries are
processed by the real DeliveryProcessor on a SQLite store; nothing is sent
(the rules' actions log, or go to a respx mock).
"""

from __future__ import annotations

import asyncio
import json
import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx
from click.testing import CliRunner, Result
from sqlalchemy.ext.asyncio import create_async_engine

from actions.base import DatabaseEngines
from actions.registry import load_registry
from engine.cli.main import cli
from engine.config import load_settings
from engine.language.loader import load_rules
from engine.pipeline.metrics import Metrics
from engine.pipeline.worker import DeliveryProcessor, RetryPolicy
from engine.secrets import Masker
from engine.store import NewDelivery, Store, database
from tests.cli.test_cli_ops import _CONFIG_VARIABLES, LOW_STOCK, T0

SLACK_URL = "https://hooks.slack.example.com/services/T000/B000/sl4ck-t0ken-path-99"
ANSI = re.compile(r"\x1b\[[0-9;]*m")

# In the file, zeta before alpha: rule-file order is not alphabetical.
RULES = """\
- id: zeta-reorder
  on: item.low_stock
  throttle: {key: "{{ data.external_id }}", per: 6h}
  actions:
    - type: http
      url: "https://po.example.com/orders/{{ data.external_id }}"
      json: {sku: "{{ data.external_id }}"}
    - type: slack
      text: "low: {{ data.external_id }}"
- id: alpha-log
  on: item.low_stock
  actions: [{type: log, message: "seen {{ data.external_id }}"}]
- id: middle-rentals
  on: rent.created
  actions: [{type: log, message: "rental"}]
"""


@pytest.fixture
def rules_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "rules"
    folder.mkdir()
    (folder / "rules.yaml").write_text(RULES)
    return folder


@pytest.fixture
def store_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'store.db'}"


def run(*args: str, env: dict[str, str], color: bool = False) -> Result:
    """The CLI in-process; `color=True` plays a terminal (click keeps the colour codes)."""
    clean: dict[str, str | None] = {name: None for name in (*_CONFIG_VARIABLES, "NO_COLOR")}
    return CliRunner().invoke(cli, list(args), env={**clean, **env}, catch_exceptions=False, color=color)


def _env(store_url: str, rules_dir: Path, **extra: str) -> dict[str, str]:
    return {"DATABASE_URL": store_url, "RULES_DIR": str(rules_dir), "SLACK_WEBHOOK_URL": SLACK_URL, **extra}


@pytest.fixture
async def processed(store_url: str, rules_dir: Path) -> list[str]:
    """Two low-stock deliveries of the same item, five minutes apart: the second is throttled."""
    engine = database.create_engine(store_url)
    await database.upgrade(engine)
    store = Store(engine)
    rule_set = load_rules(rules_dir, load_registry())
    ids = ["low-1", "low-2"]
    for minutes, delivery_id in enumerate(ids):
        payload = {**LOW_STOCK, "timestamp": (T0 + timedelta(minutes=5 * minutes)).isoformat()}
        new = NewDelivery(delivery_id, "item.low_stock", {}, json.dumps(payload).encode(), T0)
        await store.add_deliveries([new], due_at=T0)
    async with httpx.AsyncClient() as http, respx.mock(assert_all_called=True) as mock:
        mock.post("https://po.example.com/orders/TENT-4P").respond(201)
        mock.post(SLACK_URL).respond(200)
        processor = DeliveryProcessor(
            store=store,
            rules=lambda: rule_set,
            http=http,
            databases=DatabaseEngines(lambda url: create_async_engine(url)),
            action_settings=load_settings({"SLACK_WEBHOOK_URL": SLACK_URL}).plugins,
            secrets={},
            masker=Masker([SLACK_URL]),
            metrics=Metrics(),
            retry=RetryPolicy(max_attempts=2, base_seconds=0.01),
            requeue_after=timedelta(seconds=60),
        )
        for delivery_id in ids:
            assert await processor.process(delivery_id) is None
    await engine.dispose()
    return ids


def test_show_lists_rules_in_rule_file_order_with_each_reason_said_once(
    processed: list[str], store_url: str, rules_dir: Path
) -> None:
    result = run("deliveries", "show", "low-2", env=_env(store_url, rules_dir))

    assert result.exit_code == 0, result.output
    rules = result.stdout.split("\nrules\n")[1].split("\nactions")[0].splitlines()
    assert [line.split()[1] for line in rules] == ["zeta-reorder", "alpha-log", "middle-rentals"]
    assert rules[0].startswith("  · zeta-reorder    throttled: key 'TENT-4P' already fired at "), rules[0]
    assert "throttled: throttled" not in result.stdout
    assert rules[1] == "  ✓ alpha-log       fired: no condition: fires on every matching event"
    assert rules[2] == "  · middle-rentals  event item.low_stock does not match on: rent.created"


def test_show_says_where_each_action_was_sent_masked(
    processed: list[str], store_url: str, rules_dir: Path
) -> None:
    result = run("deliveries", "show", "low-1", env=_env(store_url, rules_dir))

    assert result.exit_code == 0, result.output
    actions = result.stdout.split("\nactions\n")[1]
    assert actions.splitlines()[:2] == [
        "  zeta-reorder actions[0] http: succeeded, 1 attempt(s), response 201",
        "      sent to:      https://po.example.com/orders/TENT-4P",
    ]
    assert "  zeta-reorder actions[1] slack: succeeded, 1 attempt(s), response 200\n" in actions
    # The Slack webhook's path is its token: its origin only, and the setting it came from.
    assert "      sent to:      https://hooks.slack.example.com/… (SLACK_WEBHOOK_URL)\n" in actions
    assert "sl4ck-t0ken" not in result.output
    assert actions.index("zeta-reorder actions[0]") < actions.index("alpha-log actions[0]")
    assert "  alpha-log actions[0] log: succeeded, 1 attempt(s)\n      params: " in actions  # nothing sent


def test_show_without_the_setting_here_says_so_instead_of_guessing(
    processed: list[str], store_url: str, rules_dir: Path
) -> None:
    env = _env(store_url, rules_dir)
    del env["SLACK_WEBHOOK_URL"]

    result = run("deliveries", "show", "low-1", env=env)

    assert (
        "      sent to:      SLACK_WEBHOOK_URL (not set in this environment, so not shown)\n" in result.stdout
    )


def test_list_and_show_are_coloured_on_a_terminal_and_plain_with_no_color(
    processed: list[str], store_url: str, rules_dir: Path
) -> None:
    env = _env(store_url, rules_dir)

    listed = run("deliveries", "list", env=env, color=True)
    shown = run("deliveries", "show", "low-1", env=env, color=True)
    plain_list = run("deliveries", "list", env={**env, "NO_COLOR": "1"}, color=True)
    plain_show = run("deliveries", "show", "low-1", env={**env, "NO_COLOR": "1"}, color=True)
    piped = run("deliveries", "show", "low-1", env=env)  # not a terminal

    assert "\x1b[32mdone" in listed.stdout  # green, as `test` shows a pass
    assert "\x1b[32m" in shown.stdout
    assert "\x1b[32m\x1b[1m✓\x1b[0m alpha-log" in shown.stdout
    for plain in (plain_list, plain_show, piped):
        assert not ANSI.search(plain.stdout), plain.stdout
    assert ANSI.sub("", listed.stdout) == plain_list.stdout
    assert ANSI.sub("", shown.stdout) == plain_show.stdout


def test_list_lines_up_its_columns_whatever_the_width_of_the_events(store_url: str, rules_dir: Path) -> None:
    long_event = "inventory.item.low_stock_reached"

    async def add() -> None:
        engine = database.create_engine(store_url)
        await database.upgrade(engine)
        store = Store(engine)
        for n, event in enumerate(["rent.created", long_event, "x"]):
            new = NewDelivery(f"d-{n}", event, {}, b"{}", T0 + timedelta(minutes=n))
            await store.add_deliveries([new], due_at=T0)
        await engine.dispose()

    asyncio.run(add())

    listed = run("deliveries", "list", env=_env(store_url, rules_dir))

    header, *rows = listed.stdout.splitlines()
    starts = {
        header.index("delivery id"),
        *(row.index(f"d-{n}") for n, row in zip((2, 1, 0), rows, strict=True)),
    }
    assert len(starts) == 1, listed.stdout  # the ids start in one column, under their heading
    assert long_event in listed.stdout


def test_export_of_a_throttled_delivery_expects_the_throttle_and_passes_test(
    processed: list[str], store_url: str, rules_dir: Path, tmp_path: Path
) -> None:
    target = tmp_path / "throttled.json"
    env = _env(store_url, rules_dir)

    exported = run("deliveries", "export", "low-2", "--expect", "-o", str(target), env=env)
    tested = run("test", str(target), env=env)

    assert exported.exit_code == 0, exported.output
    earlier, fixture = json.loads(target.read_text())
    assert fixture["delivery_id"] == "low-2"
    assert fixture["expect"] == {"fired": ["alpha-log"], "not_fired": ["zeta-reorder", "middle-rentals"]}
    assert earlier["delivery_id"] == "low-2-earlier"
    assert earlier["payload"] == fixture["payload"]
    assert earlier["expect"] == {"fired": ["zeta-reorder"]}
    assert tested.exit_code == 0, tested.output
    assert "2 passed, 0 failed" in tested.stdout


def test_export_of_a_delivery_that_fired_lists_rules_in_rule_file_order(
    processed: list[str], store_url: str, rules_dir: Path
) -> None:
    exported = run("deliveries", "export", "low-1", "--expect", env=_env(store_url, rules_dir))

    fixture: dict[str, Any] = json.loads(exported.stdout)
    assert fixture["expect"] == {"fired": ["zeta-reorder", "alpha-log"], "not_fired": ["middle-rentals"]}
