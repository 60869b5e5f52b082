"""`test --update`'s rewrite: what it writes into `expect`, and that it changes nothing else of a file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from actions.registry import load_registry
from engine.language import approval as approval_module
from engine.language.approval import Approval, approve
from engine.language.expectations import replay
from engine.language.fixture_edits import EditRefused, Entry, edit_text
from engine.language.fixtures import load_fixtures
from engine.language.loader import load_rules
from engine.secrets import Masker

RULES = """\
- id: reorder
  on: item.low_stock
  when: data.quantity <= data.minimum_quantity
  actions:
    - {type: purchase_order, item_sku: "{{ data.sku }}", quantity: "{{ data.minimum_quantity * 2 - data.quantity }}"}
    - {type: slack, text: "Ordered {{ data.sku }}"}
- id: vip
  on: item.low_stock
  when: {"==": [{var: data.tags}, "vip"]}
  actions: [{type: log, message: vip}]
- id: rentals
  on: rent.created
  actions:
    - type: http
      url: https://crm.example.com/hook
      headers: {Authorization: "Bearer {{ secrets.CRM_TOKEN }}"}
"""


TAGS_X = ', "tags": "x"'
TAGS_VIP = ', "tags": ["vip"]'


def _low(quantity: int, extra: str = "") -> str:
    return f'{{"data": {{"quantity": {quantity}, "minimum_quantity": 5, "sku": "TENT"{extra}}}}}'


async def _approve(tmp_path: Path, name: str, text: str, secrets: dict[str, str] | None = None) -> Approval:
    (tmp_path / "rules").mkdir(exist_ok=True)
    (tmp_path / "rules" / "r.yaml").write_text(RULES)
    path = tmp_path / name
    path.write_text(text)
    rules = load_rules(tmp_path / "rules", load_registry())
    files, problems = load_fixtures([path])
    assert problems == []
    results = await replay(rules, files, secrets or {})
    return approve(results, rules, Masker((secrets or {}).values()))


def _after(approval: Approval) -> str:
    assert approval.problems == []
    (update,) = approval.updates
    return update.after


async def test_a_fixture_without_expect_gets_what_happened(tmp_path: Path) -> None:
    approval = await _approve(
        tmp_path, "f.yaml", f"name: low\nevent: item.low_stock\npayload: {_low(3, TAGS_X)}\n"
    )

    assert _after(approval).split("payload: ")[1].split("\n", 1)[1] == (
        "expect:\n"
        "  fired: [reorder]\n"
        "  not_fired:\n"
        "    - {rule: vip, because: condition}\n"
        "  actions:\n"
        "    - {rule: reorder, type: purchase_order, params: {item_sku: TENT, quantity: 7}}\n"
        "    - {rule: reorder, type: slack, params: {text: Ordered TENT}}\n"
    )
    assert [r.passed for r in approval.results] == [True]


async def test_an_expect_that_already_says_what_happened_is_left_alone(tmp_path: Path) -> None:
    text = (
        f"name: low\nevent: item.low_stock\npayload: {_low(9)}\n"
        "expect:\n  not_fired: [{rule: reorder, because: condition}, {rule: vip, because: missing}]\n"
    )
    approval = await _approve(tmp_path, "f.yaml", text)

    assert (approval.updates, approval.problems) == ([], [])


async def test_entries_that_hold_are_kept_as_written_and_stale_ones_rewritten_in_place(
    tmp_path: Path,
) -> None:
    text = f"""\
# Low stock.
name: low   # the usual case
event: item.low_stock
payload: {_low(3)}
expect:
  # what should happen
  fired: [vip, reorder]   # vip is a mistake
  not_fired:
    - rentals    # another event
  actions:
    - {{rule: reorder, params: {{quantity: 7}}}}  # only the quantity matters
    - {{rule: reorder, type: slack, params: {{text: Ordered a tent}}}}
# the end
"""
    after = _after(await _approve(tmp_path, "f.yaml", text))

    assert (
        after
        == f"""\
# Low stock.
name: low   # the usual case
event: item.low_stock
payload: {_low(3)}
expect:
  # what should happen
  fired: [reorder]        # vip is a mistake
  not_fired:
    - {{rule: rentals, because: event}} # another event
    - {{rule: vip, because: missing}}
  actions:
    - {{rule: reorder, params: {{quantity: 7}}}}  # only the quantity matters
    - {{rule: reorder, type: slack, params: {{text: Ordered TENT}}}}
# the end
"""
    )


async def test_errors_are_never_approved(tmp_path: Path) -> None:
    text = f"name: vip\nevent: item.low_stock\npayload: {_low(9, TAGS_VIP)}\nexpect:\n  not_fired: [vip]\n"
    approval = await _approve(tmp_path, "f.yaml", text)

    assert "errors" not in _after(approval)
    assert _after(approval).endswith("expect:\n  not_fired: [vip, {rule: reorder, because: condition}]\n")
    (result,) = approval.results
    assert [f.message for f in result.failures] == [
        "vip did not fire because of an error, which not_fired does not accept"
    ]


async def test_an_errors_entry_is_dropped_once_the_rule_no_longer_fails(tmp_path: Path) -> None:
    text = f"name: fixed\nevent: item.low_stock\npayload: {_low(9)}\nexpect: {{errors: [vip]}}\n"

    after = _after(await _approve(tmp_path, "f.yaml", text))

    assert after.endswith(
        "expect: {not_fired: [{rule: reorder, because: condition}, {rule: vip, because: missing}]}\n"
    )


async def test_params_are_written_with_secrets_masked(tmp_path: Path) -> None:
    text = 'name: rental\nevent: rent.created\npayload: {"data": {"id": 1}}\n'

    after = _after(await _approve(tmp_path, "f.yaml", text, {"CRM_TOKEN": "s3cr3t-crm-token"}))

    assert "s3cr3t" not in after
    assert "params: {url: https://crm.example.com/hook, headers: {Authorization: Bearer ***}}" in after


async def test_json_keeps_key_order_and_indentation_and_changes_only_expect(tmp_path: Path) -> None:
    text = (
        "[\n"
        "    {\n"
        '        "payload": {"data": {"quantity": 3, "minimum_quantity": 5, "sku": "TENT", "tags": "x"}},\n'
        '        "name": "low",\n'
        '        "event": "item.low_stock"\n'
        "    }\n"
        "]\n"
    )
    after = _after(await _approve(tmp_path, "f.json", text))

    head = text.rsplit("\n    }", 1)[0]
    assert after.startswith(head + ",\n")
    assert list(json.loads(after)[0]) == ["payload", "name", "event", "expect"]
    assert after[len(head) :] == (
        ",\n"
        '        "expect": {\n'
        '            "fired": ["reorder"],\n'
        '            "not_fired": [{"rule": "vip", "because": "condition"}],\n'
        '            "actions": [\n'
        "                {\n"
        '                    "rule": "reorder",\n'
        '                    "type": "purchase_order",\n'
        '                    "params": {"item_sku": "TENT", "quantity": 7}\n'
        "                },\n"
        '                {"rule": "reorder", "type": "slack", "params": {"text": "Ordered TENT"}}\n'
        "            ]\n"
        "        }\n"
        "    }\n"
        "]\n"
    )


async def test_a_rewrite_that_would_change_more_than_expect_is_not_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def careless(text: str, edits: object, *, yaml_syntax: bool) -> str:
        return text.replace("TENT", "TENT-2") + "expect: {fired: [reorder]}\n"

    monkeypatch.setattr(approval_module, "edit_text", careless)

    approval = await _approve(tmp_path, "f.yaml", f"name: low\nevent: item.low_stock\npayload: {_low(3)}\n")

    assert approval.updates == []
    assert [p.message for p in approval.problems] == [
        "not updated: rewriting the expectations would change more than them; this is a bug, please report it"
    ]


def test_a_yaml_fixture_written_on_one_line_is_refused_with_what_to_do() -> None:
    with pytest.raises(EditRefused, match="written on one line"):
        edit_text("- {name: a, payload: {}}\n", {0: {"fired": [Entry("r")]}}, yaml_syntax=True)


@pytest.mark.parametrize(
    "text",
    [
        "- name: a\n  payload: {data: 1}\n\n- name: b\n  payload:\n      data: |\n        two\n        lines\n",
        "name: a\npayload:\n  data: {x: '010', y: 1_000, when: 2026-03-01}\n# trailing\n",
        "- name: a\n  payload: {}\n  expect:\n    fired:\n    - old\n",
        "- expect: {fired: [old]}\n  payload: {}\n",
        "name: a\r\npayload: {}\r\nexpect:\r\n  fired: [old]\r\n",
    ],
)
def test_yaml_edits_change_only_the_expect_of_the_edited_fixture(text: str) -> None:
    new = {"fired": [Entry("x")], "not_fired": [Entry({"rule": "y", "because": "condition"})]}

    after = edit_text(text, {0: new}, yaml_syntax=True)

    before_value, after_value = _items(yaml.safe_load(text)), _items(yaml.safe_load(after))
    assert after_value[0].pop("expect") == {
        "fired": ["x"],
        "not_fired": [{"rule": "y", "because": "condition"}],
    }
    before_value[0].pop("expect", None)
    assert after_value == before_value
    kept = [
        line
        for line in text.splitlines()
        if "expect" not in line and "fired" not in line and "old" not in line
    ]
    assert all(line in after.splitlines() for line in kept)


def test_new_text_that_would_read_as_another_type_is_quoted() -> None:
    entries = {
        "actions": [Entry({"rule": "r", "params": {"a": "7", "b": "yes", "c": "2026-03-01", "d": "a: b"}})]
    }

    after = edit_text("name: a\npayload: {}\n", {0: entries}, yaml_syntax=True)

    assert yaml.safe_load(after)["expect"]["actions"][0]["params"] == {
        "a": "7",
        "b": "yes",
        "c": "2026-03-01",
        "d": "a: b",
    }


def _items(value: object) -> list[dict[str, object]]:
    return value if isinstance(value, list) else [value]  # type: ignore[list-item]
