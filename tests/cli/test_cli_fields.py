"""Payload fields (SPEC section 14) and conditions both ways: `fields`, `check`'s warnings and
`--strict`, `conditions` and `conditions --rewrite`, as a rule author runs them.

Each test writes its rules and fixtures into `tmp_path` and runs the real CLI from there,
so messages show the paths a person would type (`rules/r.yaml:3:7`).
"""

from __future__ import annotations

import asyncio
import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from engine.cli.main import cli
from engine.config import Settings
from engine.store import NewDelivery, Store, database

_CONFIG_VARIABLES = tuple(name.upper() for name in Settings.model_fields)

RENTAL = {
    "event": "rent.created",
    "timestamp": "2026-03-01T09:00:00Z",
    "data": {
        "id": 1001,
        "status": "reserved",
        "total": 640,
        "renter": {"name": "Ada Lovelace", "email": "ada@example.com", "tags": ["vip"]},
        "items": [{"sku": "CAM-1", "category": "cameras", "price": 200, "quantity": 2}],
    },
}
RENTAL_TIME = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
LOW_STOCK = {
    "event": "item.low_stock",
    "timestamp": "2026-03-01T09:00:00Z",
    "data": {"id": 42, "name": "Tent 4p", "quantity": 3, "minimum_quantity": 5, "external_id": "TENT-4P"},
}


def run(*args: str, env: dict[str, str] | None = None) -> Result:
    clean: dict[str, str | None] = {name: None for name in _CONFIG_VARIABLES}
    clean.update({name: None for name in os.environ if name.startswith("SECRET_")})
    clean.update(env or {})
    return CliRunner().invoke(cli, list(args), env=clean, catch_exceptions=False)


def write(folder: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


def fixture(name: str, payload: dict[str, Any]) -> str:
    return json.dumps({"name": name, "event": payload["event"], "payload": payload})


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    write(
        tmp_path,
        {
            "fixtures/rental.json": fixture("a rental", RENTAL),
            "fixtures/stock.json": fixture("low stock", LOW_STOCK),
            "fixtures/stock-without-quantity.json": fixture(
                "no quantity", {**LOW_STOCK, "data": {"id": 43, "name": "Lantern", "minimum_quantity": 2}}
            ),
        },
    )


# --- fields --------------------------------------------------------------------------------


def test_fields_lists_each_events_paths_with_types_counts_and_an_example() -> None:
    result = run("fields")

    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == "item.low_stock  (2 fixtures)"
    assert "  data.quantity          number     1 of 2  e.g. 3" in lines
    assert '  data.external_id       string     1 of 2  e.g. "TENT-4P"' in lines
    assert "rent.created  (1 fixture)" in lines
    assert any(
        line.split() == ["data.items[].sku", "string", "1", "of", "1", "e.g.", '"CAM-1"'] for line in lines
    )
    assert any(line.split()[:2] == ["data.renter.tags", "array"] for line in lines)
    assert any(line.split()[:2] == ["payload.timestamp", "string"] for line in lines)


def test_fields_of_some_events_only_and_as_json() -> None:
    result = run("fields", "rent.*", "--json")

    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert [event["event"] for event in document["events"]] == ["rent.created"]
    paths = {entry["path"]: entry for entry in document["events"][0]["fields"]}
    assert paths["data.renter.tags"] == {
        "path": "data.renter.tags",
        "types": {"array": 1},
        "deliveries": 1,
        "example": None,
    }
    assert paths["data.total"]["example"] == "640"


def test_fields_without_fixtures_says_how_to_get_some(tmp_path: Path) -> None:
    result = run("fields", "--fixtures", str(tmp_path / "none"))

    assert result.exit_code == 2
    assert "none:1:1: no such file or folder" in result.stderr
    assert "add fixtures (stockaj-rules deliveries export ID prints one)" in result.stderr


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    url: str = (
        request.getfixturevalue("fresh_postgres_url")
        if request.param == "postgres"
        else f"sqlite+aiosqlite:///{tmp_path / 'store.db'}"
    )

    async def seed() -> None:
        engine = database.create_engine(url)
        try:
            await database.upgrade(engine)
            payload = {**RENTAL, "data": {**RENTAL["data"], "channel": "web"}}
            new = NewDelivery("d-1", "rent.created", {}, json.dumps(payload).encode(), RENTAL_TIME)
            await Store(engine).add_deliveries([new], due_at=RENTAL_TIME)
        finally:
            await engine.dispose()

    asyncio.run(seed())
    return url


def test_fields_from_the_store_adds_the_stored_deliveries(store_url: str) -> None:
    result = run("fields", "rent.created", "--from-store", env={"DATABASE_URL": store_url})

    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == "rent.created  (2 deliveries)"
    assert any(line.split() == ["data.channel", "string", "1", "of", "2", "e.g.", '"web"'] for line in lines)


# --- check: warnings ------------------------------------------------------------------------


def test_check_warns_about_fields_no_fixture_has_with_a_did_you_mean(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "rules/big.yaml": """\
- id: big-rental
  on: rent.created
  when: data.total_price | default(0) > 500
  actions:
    - type: log
      message: "{{ data.renter.nme }}: {% for item in data.items %}{{ item.prise }}{% endfor %}"
- id: json-rule
  on: rent.created
  when: {"==": [{"var": "data.categroy"}, "tents"]}
  actions: [{type: log, message: x}]
""",
        },
    )

    result = run("check")

    assert result.exit_code == 0, result.output
    assert result.stdout == "OK: 2 rule(s) in 1 file(s) under rules\n"
    advice = "check the spelling, or add a fixture whose delivery has it (stockaj-rules fields lists what the fixtures have)"
    assert result.stderr.splitlines() == [
        "rules/big.yaml:3:9: big-rental: warning: data.total_price is not in the fixture of rent.created "
        f"(did you mean data.total?); {advice}",
        "rules/big.yaml:6:20: big-rental: warning: data.renter.nme is not in the fixture of rent.created "
        f"(did you mean data.renter.name?); {advice}",
        "rules/big.yaml:6:71: big-rental: warning: item.prise (data.items[].prise) is not in the fixture "
        f"of rent.created (did you mean data.items[].price?); {advice}",
        "rules/big.yaml:9:25: json-rule: warning: data.categroy is not in the fixture of rent.created "
        f"(did you mean data.items[].category?); {advice}",
        "4 warning(s) (stockaj-rules check --strict makes them errors)",
    ]


def test_check_warns_when_a_list_is_compared_with_one_value() -> None:
    write(
        Path(),
        {
            "rules/vip.yaml": """\
- id: vip
  on: rent.created
  when: data.renter.tags == "vip"
  actions: [{type: log, message: x}]
- id: not-vip
  on: rent.created
  when: {"!=": [{"var": "data.renter.tags"}, "vip"]}
  actions: [{type: log, message: x}]
""",
        },
    )

    result = run("check")

    assert result.exit_code == 0
    assert result.stderr.splitlines()[:2] == [
        "rules/vip.yaml:3:9: vip: warning: data.renter.tags is a list in the fixture of rent.created, and == "
        'compares the whole list with "vip", an error when the rule runs; did you mean "vip" in data.renter.tags?',
        "rules/vip.yaml:7:25: not-vip: warning: data.renter.tags is a list in the fixture of rent.created, "
        'and != compares the whole list with "vip", an error when the rule runs; did you mean '
        '{"!": {"in": ["vip", {"var": "data.renter.tags"}]}}?',
    ]


def test_check_warns_about_a_secret_that_is_not_set_with_a_did_you_mean() -> None:
    write(
        Path(),
        {
            "rules/order.yaml": """\
id: order
on: item.low_stock
actions:
  - type: http
    url: https://supplier.example.com/orders
    headers: {Authorization: "Bearer {{ secrets.SUPLIER_TOKEN }}"}
""",
        },
    )

    result = run("check", env={"SECRET_SUPPLIER_TOKEN": "supplier-token-1234"})

    assert result.exit_code == 0
    assert result.stderr.splitlines()[0] == (
        "rules/order.yaml:6:41: order: warning: secrets.SUPLIER_TOKEN is not set: there is no "
        "SECRET_SUPLIER_TOKEN in the environment (did you mean secrets.SUPPLIER_TOKEN?); set it where "
        "the engine runs, or correct the name (tests show an unset secret as ***)"
    )


def test_check_says_when_no_fixture_has_a_rules_event() -> None:
    write(
        Path(),
        {
            "rules/sync.yaml": "id: sync\non: item.updated\nwhen: data.quantity > 0\nactions: [{type: log, message: x}]\n"
        },
    )

    result = run("check")

    assert result.stderr.splitlines()[0] == (
        "rules/sync.yaml:2:5: sync: warning: no fixture is a delivery of item.updated, so the fields this "
        "rule reads (data.quantity) are not checked; add a fixture of that event "
        "(stockaj-rules deliveries export ID prints one)"
    )


def test_check_strict_makes_warnings_errors_and_a_clean_rule_set_passes() -> None:
    write(
        Path(),
        {
            "rules/low.yaml": "id: low\non: item.low_stock\nwhen: data.quantitty < 5\nactions: [{type: log, message: x}]\n"
        },
    )

    strict = run("check", "--strict")
    assert strict.exit_code == 1
    assert strict.stdout == ""
    assert strict.stderr.splitlines()[-1] == "1 warning(s) under rules, errors with --strict"

    Path("rules/low.yaml").write_text(
        "id: low\non: item.low_stock\nwhen: data.quantity < 5\nactions: [{type: log, message: '{{ data.name }}'}]\n"
    )
    clean = run("check", "--strict")
    assert clean.exit_code == 0, clean.output
    assert clean.stderr == ""


def test_check_without_fixtures_checks_no_fields_but_still_secrets(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "rules/r.yaml": "id: r\non: x\nwhen: data.anything\nactions: [{type: log, message: '{{ secrets.NOPE }}'}]\n"
        },
    )

    (tmp_path / "empty").mkdir()
    result = run("check", "--fixtures", "empty")

    assert result.exit_code == 0
    assert result.stderr.splitlines() == [
        "rules/r.yaml:4:36: r: warning: secrets.NOPE is not set: there is no SECRET_NOPE in the "
        "environment; set it where the engine runs, or correct the name (tests show an unset secret as ***)",
        "1 warning(s) (stockaj-rules check --strict makes them errors)",
    ]


# --- conditions ----------------------------------------------------------------------------


def test_conditions_shows_each_condition_both_ways() -> None:
    write(
        Path(),
        {
            "rules/r.yaml": """\
- id: low
  on: item.low_stock
  when: data.quantity <= data.minimum_quantity
  actions: [{type: log, message: x}]
- id: returned
  on: rent.status_changed
  when: {"==": [{"var": "data.status"}, "returned"]}
  actions: [{type: log, message: x}]
- id: labelled
  on: rent.created
  when: {"==": [{"cat": ["a", {"var": "data.id"}]}, "a1"]}
  actions: [{type: log, message: x}]
- id: always
  on: rent.created
  actions: [{type: log, message: x}]
""",
        },
    )

    result = run("conditions")

    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        "low  (rules/r.yaml:1)",
        "  expression  data.quantity <= data.minimum_quantity  (as written)",
        '  JsonLogic   {"<=": [{"var": "data.quantity"}, {"var": "data.minimum_quantity"}]}',
        "returned  (rules/r.yaml:5)",
        '  expression  data.status == "returned"',
        '  JsonLogic   {"==": [{"var": "data.status"}, "returned"]}  (as written)',
        "labelled  (rules/r.yaml:9)",
        "  expression  none: JsonLogic's 'cat' has no expression form; keep this condition in JsonLogic",
        '  JsonLogic   {"==": [{"cat": ["a", {"var": "data.id"}]}, "a1"]}  (as written)',
        "always  (rules/r.yaml:13)",
        "  no condition: fires on every event it is on",
    ]


YAML_RULES = """\
# Stock rules. Keep this comment.
- id: low   # the reorder rule
  on: item.low_stock
  when:   # at or under the minimum
    "<=":
      - var: data.quantity   # what is left
      - var: data.minimum_quantity
  actions: [{type: log, message: "{{ data.name }}"}]

- id: labelled
  on: rent.created
  when: {"==": [{"cat": ["a", {"var": "data.id"}]}, "a1"]}
  actions: [{type: log, message: x}]
- {id: vip, on: rent.created, when: {"in": ["vip", {"var": "data.renter.tags"}]}, actions: [{type: log, message: x}]}
"""


def test_conditions_rewrite_turns_jsonlogic_into_expressions_keeping_everything_else() -> None:
    write(Path(), {"rules/stock.yaml": YAML_RULES})

    result = run("conditions", "--rewrite", "rules/stock.yaml")

    assert result.exit_code == 0, result.output
    assert (
        Path("rules/stock.yaml").read_text()
        == """\
# Stock rules. Keep this comment.
- id: low   # the reorder rule
  on: item.low_stock
  # what is left
  when: data.quantity <= data.minimum_quantity  # at or under the minimum
  actions: [{type: log, message: "{{ data.name }}"}]

- id: labelled
  on: rent.created
  when: {"==": [{"cat": ["a", {"var": "data.id"}]}, "a1"]}
  actions: [{type: log, message: x}]
- {id: vip, on: rent.created, when: '"vip" in data.renter.tags', actions: [{type: log, message: x}]}
"""
    )
    assert "-  when:   # at or under the minimum\n" in result.stdout
    assert "+  when: data.quantity <= data.minimum_quantity  # at or under the minimum\n" in result.stdout
    assert result.stderr.splitlines() == [
        "rules/stock.yaml:12:3: labelled: kept in JsonLogic: JsonLogic's 'cat' has no expression form; "
        "keep this condition in JsonLogic",
        "rules/stock.yaml: low, vip",
    ]
    assert run("check").exit_code == 0


def test_conditions_rewrite_keeps_a_json_files_key_order_and_indentation() -> None:
    original = """\
[
    {
        "when": {"and": [{"==": [{"var": "data.status"}, "returned"]}, {">": [{"var": "data.fee"}, 0]}]},
        "id": "returned",
        "on": "rent.status_changed",
        "actions": [{"type": "log", "message": "x"}]
    }
]
"""
    write(Path(), {"rules/status.json": original})

    result = run("conditions", "--rewrite")

    assert result.exit_code == 0, result.output
    assert Path("rules/status.json").read_text() == original.replace(
        '{"and": [{"==": [{"var": "data.status"}, "returned"]}, {">": [{"var": "data.fee"}, 0]}]}',
        "\"data.status == 'returned' and data.fee > 0\"",
    )


def test_conditions_rewrite_refuses_a_file_that_does_not_load() -> None:
    broken = 'id: r\non: x\nwhen: {"=<": [{"var": "data.q"}, 1]}\nactions: [{type: log, message: x}]\n'
    write(Path(), {"rules/broken.yaml": broken})

    result = run("conditions", "--rewrite", "rules/broken.yaml")

    assert result.exit_code == 2
    assert result.stderr.splitlines() == [
        "rules/broken.yaml:3:7: r: expected a JsonLogic operator, found '=<'",
        "rules/broken.yaml: not rewritten; fix the problems above first",
    ]
    assert Path("rules/broken.yaml").read_text() == broken


def test_conditions_rewrite_refuses_a_symbolic_link(tmp_path: Path) -> None:
    write(tmp_path, {"real/r.yaml": YAML_RULES})
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "r.yaml").symlink_to(tmp_path / "real" / "r.yaml")

    result = run("conditions", "--rewrite", "rules/r.yaml")

    assert result.exit_code == 2
    assert (
        "rules/r.yaml:1:1: a symbolic link is not rewritten; rewrite the file it points to" in result.stderr
    )
    assert (tmp_path / "real" / "r.yaml").read_text() == YAML_RULES
