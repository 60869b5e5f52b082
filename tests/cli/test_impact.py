"""`stockaj-rules impact` (SPEC section 15) against a real store: SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from engine.cli.main import cli
from engine.config import Settings
from engine.store import NewDelivery, Store, database

T0 = datetime.now(UTC) - timedelta(days=3)
RULE = """\
- id: reorder
  on: item.low_stock
  when: data.quantity <= data.minimum_quantity
  actions:
    - type: http
      url: https://po.example.com/orders
      headers: {Authorization: "Bearer {{ secrets.PO_TOKEN }}"}
      json: {sku: "{{ data.external_id }}", quantity: "{{ data.minimum_quantity * 2 - data.quantity }}"}
- id: rentals
  on: rent.created
  actions: [{type: log, message: "rental {{ data.id }}"}]
"""
_CONFIG_VARIABLES = tuple(name.upper() for name in Settings.model_fields)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "postgres":
        url: str = request.getfixturevalue("fresh_postgres_url")
    else:
        url = f"sqlite+aiosqlite:///{tmp_path / 'store.db'}"

    async def fill() -> None:
        engine = database.create_engine(url)
        try:
            await database.upgrade(engine)
            store = Store(engine)
            for index, quantity in enumerate([1, 3, 4, 9, 2]):
                data = {"id": index, "quantity": quantity, "minimum_quantity": 5, "external_id": f"S{index}"}
                body = json.dumps({"event": "item.low_stock", "data": data}).encode()
                received = T0 + timedelta(hours=index * 12)
                new = NewDelivery(f"d{index}", "item.low_stock", {}, body, received)
                await store.add_deliveries([new], received)
            rental = json.dumps({"event": "rent.created", "data": {"id": 7}}).encode()
            new = NewDelivery("r1", "rent.created", {}, rental, T0)
            await store.add_deliveries([new], T0)
        finally:
            await engine.dispose()

    asyncio.run(fill())
    return url


def folders(tmp_path: Path, draft_text: str) -> tuple[Path, Path]:
    current, draft = tmp_path / "rules", tmp_path / "draft"
    current.mkdir()
    draft.mkdir()
    (current / "rules.yaml").write_text(RULE)
    (draft / "rules.yaml").write_text(draft_text)
    return current, draft


def run(store_url: str, current: Path, *args: str) -> Result:
    env: dict[str, str | None] = {name: None for name in _CONFIG_VARIABLES}
    env.update({name: None for name in os.environ if name.startswith("SECRET_")})
    env.update({"DATABASE_URL": store_url, "RULES_DIR": str(current), "SECRET_PO_TOKEN": "po-token-1234"})
    return CliRunner().invoke(cli, ["impact", *args], env=env, catch_exceptions=False)


def test_impact_json_lists_every_rule_with_the_deliveries_it_changes(store_url: str, tmp_path: Path) -> None:
    current, draft = folders(tmp_path, RULE.replace("<= data.minimum_quantity", "< 3").replace("* 2", "* 3"))

    result = run(store_url, current, "--rules", str(draft), "--json")

    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {
        "deliveries": 6,
        "rules": [
            {
                "id": "reorder",
                "newly_fired": [],
                "stopped_firing": ["d1", "d2"],
                "changed_params": ["d0", "d4"],
            },
            {"id": "rentals", "newly_fired": [], "stopped_firing": [], "changed_params": []},
        ],
    }


def test_impact_text_gives_counts_and_examples_and_never_a_secret(store_url: str, tmp_path: Path) -> None:
    current, draft = folders(tmp_path, RULE.replace("<= data.minimum_quantity", "<= 10"))

    result = run(store_url, current, "--rules", str(draft))

    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith(
        f"impact of {draft} against {current}: 6 stored deliveries replayed, received "
    )
    assert "  reorder (changed): 1 newly fired, 0 stopped firing, 0 with different params" in lines
    assert "      newly fired: d3" in lines
    assert "  1 rule(s) written the same in both: no change" in lines
    assert "po-token-1234" not in result.output


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (["--last", "2"], {"deliveries": 2, "stopped": ["d4"]}),
        (["--since", "40h"], {"deliveries": 2, "stopped": ["d4"]}),
        (["--event", "rent.created"], {"deliveries": 1, "stopped": []}),
    ],
)
def test_impact_chooses_the_deliveries_by_last_since_and_event(
    store_url: str, tmp_path: Path, options: list[str], expected: dict[str, object]
) -> None:
    current, draft = folders(tmp_path, RULE.replace("<= data.minimum_quantity", "< 2"))

    result = run(store_url, current, "--rules", str(draft), "--json", *options)

    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["deliveries"] == expected["deliveries"]
    assert report["rules"][0]["stopped_firing"] == expected["stopped"]


def test_impact_of_a_broken_draft_names_the_place_and_exits_2(store_url: str, tmp_path: Path) -> None:
    current, draft = folders(tmp_path, RULE.replace("data.quantity <=", "data.quantity =<"))

    result = run(store_url, current, "--rules", str(draft))

    assert result.exit_code == 2
    assert f"{draft / 'rules.yaml'}:3:" in result.stderr
    assert f"fix the rules of --rules {draft} above" in result.stderr


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--since", "7d", "--last", "3"], "give one of them"),
        (["--since", "a week"], "--since 'a week' is not a duration; write e.g. 30m, 12h or 7d"),
    ],
)
def test_impact_refuses_bad_options_with_exit_2(
    store_url: str, tmp_path: Path, options: list[str], message: str
) -> None:
    current, draft = folders(tmp_path, RULE)

    result = run(store_url, current, "--rules", str(draft), *options)

    assert result.exit_code == 2
    assert message in result.stderr


def test_impact_with_no_change_says_so(store_url: str, tmp_path: Path) -> None:
    current, draft = folders(tmp_path, RULE)

    result = run(store_url, current, "--rules", str(draft))

    assert result.exit_code == 0
    assert result.stdout.splitlines()[-1] == "no delivery would be handled differently"
