"""The field catalog and `check`'s warnings: paths as authors write them, bounded walks, exact places."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from actions.registry import load_registry
from engine.language.field_catalog import MAX_LIST_ITEMS, MAX_PATHS_PER_EVENT, FieldCatalog, lookup
from engine.language.field_warnings import rule_warnings
from engine.language.loader import load_rules

PAYLOAD: dict[str, Any] = {
    "event": "rent.created",
    "data": {"id": 1, "renter": {"name": "Ada", "tags": ["vip"]}, "items": [{"sku": "A", "price": 5}]},
}


def _catalog(*payloads: dict[str, Any], event: str = "rent.created") -> FieldCatalog:
    catalog = FieldCatalog("fixture")
    for payload in payloads:
        catalog.add(event, payload)
    return catalog


def _warnings(
    tmp_path: Path, files: dict[str, str], catalog: FieldCatalog, secrets: tuple[str, ...] = ()
) -> list[str]:
    for name, text in files.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    rules = load_rules(tmp_path, load_registry())
    return [str(w).removeprefix(f"{tmp_path}/") for w in rule_warnings(rules, catalog, secrets)]


def test_catalog_names_paths_as_rules_read_them_and_counts_deliveries() -> None:
    catalog = _catalog(PAYLOAD, {**PAYLOAD, "data": {"id": "x"}})
    fields = catalog.for_events(["rent.created"])
    names = {info.name: (dict(info.types), info.deliveries) for info in fields.values()}
    assert names["data.id"] == ({"number": 1, "string": 1}, 2)
    assert names["data.items[].sku"] == ({"string": 1}, 1)
    assert names["payload.event"] == ({"string": 2}, 2)
    assert lookup(fields, ("data", "items", "0", "sku")) is fields[("data", "items", "[]", "sku")]
    assert lookup(fields, ("data", "items", "0", "colour")) is None


def test_catalog_walks_a_bounded_part_of_huge_or_deep_payloads() -> None:
    deep: dict[str, Any] = {}
    inner = deep
    for _ in range(200):
        inner["x"] = {}
        inner = inner["x"]
    wide = {f"k{i}": i for i in range(MAX_PATHS_PER_EVENT + 100)}
    items = [{f"only{i}": i} for i in range(MAX_LIST_ITEMS + 50)]
    catalog = _catalog({"data": {"deep": deep, "wide": wide, "items": items}})
    event = catalog.events["rent.created"]
    assert len(event.fields) == MAX_PATHS_PER_EVENT
    assert event.paths_left_out > 0
    assert max(len(path) for path in event.fields) <= 25


def test_warnings_point_inside_block_scalars_and_multi_line_expressions(tmp_path: Path) -> None:
    rule = """\
id: r
on: rent.created
when: >-
  data.id > 0 and
  data.rentr.name == "Ada"
actions:
  - type: log
    message: |
      Rental {{ data.id }}
      for {{ data.renter.nmae }}
"""
    assert _warnings(tmp_path, {"r.yaml": rule}, _catalog(PAYLOAD)) == [
        "r.yaml:5:3: r: warning: data.rentr.name is not in the fixture of rent.created (did you mean "
        "data.renter.name?); check the spelling, or add a fixture whose delivery has it "
        "(stockaj-rules fields lists what the fixtures have)",
        "r.yaml:10:14: r: warning: data.renter.nmae is not in the fixture of rent.created (did you mean "
        "data.renter.name?); check the spelling, or add a fixture whose delivery has it "
        "(stockaj-rules fields lists what the fixtures have)",
    ]


def test_json_rules_and_payload_paths_are_checked_too(tmp_path: Path) -> None:
    rule = {
        "id": "j",
        "on": "rent.*",
        "when": {"some": [{"var": "payload.data.items"}, {">": [{"var": "prize"}, 3]}]},
        "actions": [{"type": "log", "message": "{{ payload.data.renter.name }} {{ payload.timestamp }}"}],
    }
    warnings = _warnings(tmp_path, {"r.json": json.dumps(rule)}, _catalog(PAYLOAD))
    assert [w.split(": warning: ")[1].split(" is not in")[0] for w in warnings] == [
        "prize (data.items[].prize)",
        "payload.timestamp",
    ]
    assert warnings[0].startswith("r.json:1:93: j: ")


def test_fields_that_are_there_give_no_warning(tmp_path: Path) -> None:
    rule = """\
id: ok
on: rent.created
when: any(item.price > 3 for item in data.items) and "vip" in data.renter.tags
actions:
  - type: log
    message: "{% for item in data.items %}{{ item.sku }}{% endfor %} {{ data.items | map(attribute='price') | sum }}"
  - type: log
    message: "{{ data.renter.name.upper() }} {{ data['renter'].tags[0] }} {{ now.year }} {{ event }}"
"""
    assert _warnings(tmp_path, {"r.yaml": rule}, _catalog(PAYLOAD)) == []


def test_a_default_of_another_type_than_the_fixtures_field_gets_the_default_of_its_type(
    tmp_path: Path,
) -> None:
    rules = """\
- id: e
  on: rent.created
  when: '"vip" in data.renter.tags | default("") and data.id | default(0) > 0'
  actions: [{type: log, message: x}]
- id: j
  on: rent.created
  when: {"==": [{"var": ["data.renter.name", 0]}, "Ada"]}
  actions: [{type: log, message: x}]
"""
    assert _warnings(tmp_path, {"r.yaml": rules}, _catalog(PAYLOAD)) == [
        'r.yaml:3:19: e: warning: data.renter.tags is a list in the fixture of rent.created, and its default "" '
        "is a text; give a default of its type: data.renter.tags | default([])",
        "r.yaml:7:26: j: warning: data.renter.name is a text in the fixture of rent.created, and its default 0 "
        'is a number; give a default of its type: {"var": ["data.renter.name", ""]}',
    ]
