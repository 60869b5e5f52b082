"""Dry replays: expectations, subset matching with exact types, throttles, masking."""

from __future__ import annotations

from pathlib import Path

import pytest

from actions.registry import load_registry
from engine.language.fixtures import load_fixtures
from engine.language.harness import FixtureResult, contains, masked_results, replay
from engine.language.loader import load_rules
from engine.language.matching import RuleStatus
from engine.secrets import Masker

RULES = """\
- id: reorder
  on: item.low_stock
  when: {"<=": [{var: data.quantity}, {var: data.minimum_quantity}]}
  throttle: {key: "{{ data.external_id }}", per: 1h}
  actions:
    - type: purchase_order
      item_sku: "{{ data.external_id }}"
      quantity: "{{ data.minimum_quantity * 2 - data.quantity }}"
    - type: http
      url: https://crm.example.com/hook
      headers: {Authorization: "Bearer {{ secrets.CRM_TOKEN }}"}
      json: {sku: "{{ data.external_id }}"}
- id: off
  on: "*"
  enabled: false
  actions: [{type: log, message: never}]
"""


def _payload(quantity: int, stamp: str = "2026-03-01T09:00:00Z") -> str:
    return (
        f'{{"timestamp": "{stamp}", "data": {{"quantity": {quantity}, '
        '"minimum_quantity": 5, "external_id": "TENT-4P"}}'
    )


async def _replay(
    tmp_path: Path, fixtures: str, secrets: dict[str, str] | None = None
) -> list[FixtureResult]:
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "r.yaml").write_text(RULES)
    (tmp_path / "f.yaml").write_text(fixtures)
    rules = load_rules(tmp_path / "rules", load_registry())
    files, problems = load_fixtures([tmp_path / "f.yaml"])
    assert problems == []
    return await replay(rules, files, secrets or {})


async def test_expectations_that_hold_pass(tmp_path: Path) -> None:
    results = await _replay(
        tmp_path,
        f"""\
name: low
event: item.low_stock
payload: {_payload(3)}
expect:
  fired: [reorder]
  not_fired: ["off"]
  actions:
    - {{rule: reorder, type: purchase_order, params: {{item_sku: TENT-4P, quantity: 7}}}}
    - {{rule: reorder, type: http, params: {{json: {{sku: TENT-4P}}}}}}
""",
    )
    assert [r.failures for r in results] == [[]]
    statuses = {o.rule.id: o.status for o in results[0].outcomes}
    assert statuses == {"reorder": RuleStatus.FIRED, "off": RuleStatus.DISABLED}


async def test_param_types_must_match_exactly(tmp_path: Path) -> None:
    results = await _replay(
        tmp_path,
        f"""\
name: string seven is not seven
event: item.low_stock
payload: {_payload(3)}
expect:
  actions: [{{rule: reorder, type: purchase_order, params: {{quantity: "7"}}}}]
""",
    )
    (failure,) = results[0].failures
    assert failure.message == "reorder: a purchase_order action with these params"
    assert failure.expected == 'quantity: "7"'
    assert failure.actual == 'item_sku: "TENT-4P", quantity: 7'


async def test_a_rule_that_should_fire_but_does_not_shows_why(tmp_path: Path) -> None:
    results = await _replay(
        tmp_path,
        f"name: high\nevent: item.low_stock\npayload: {_payload(9)}\nexpect: {{fired: [reorder], not_fired: [reordr]}}\n",
    )
    messages = [(f.message, f.expected, f.actual) for f in results[0].failures]
    assert messages == [
        ("no rule has the id 'reordr' (did you mean 'reorder'?)", None, None),
        (
            "reorder should fire",
            "fired",
            "did not fire: data.quantity (9) <= data.minimum_quantity (5) -> false",
        ),
    ]


async def test_fixtures_of_one_file_share_throttle_state_on_their_own_clock(tmp_path: Path) -> None:
    results = await _replay(
        tmp_path,
        f"""\
- {{name: first, event: item.low_stock, payload: {_payload(3, "2026-03-01T09:00:00Z")}, expect: {{fired: [reorder]}}}}
- {{name: 30 min later, event: item.low_stock, payload: {_payload(2, "2026-03-01T09:30:00Z")}, expect: {{not_fired: [reorder]}}}}
- {{name: 2 h later, event: item.low_stock, payload: {_payload(2, "2026-03-01T11:00:00Z")}, expect: {{fired: [reorder]}}}}
""",
    )
    assert [r.passed for r in results] == [True, True, True]
    assert results[1].outcomes[0].reason == (
        "throttled: key 'TENT-4P' already fired at 2026-03-01T09:00:00+00:00 (at most once per 1h)"
    )


async def test_a_render_error_in_a_fired_rule_fails_the_fixture(tmp_path: Path) -> None:
    results = await _replay(
        tmp_path,
        'name: no sku\nevent: item.low_stock\npayload: {"data": {"quantity": 1, "minimum_quantity": 5}}\n',
    )
    (failure,) = results[0].failures
    assert failure.message.startswith("reorder: throttle key: data.external_id is not in the delivery")


async def test_an_action_that_cannot_render_fails_the_fixture(tmp_path: Path) -> None:
    results = await _replay(
        tmp_path,
        'name: no min\nevent: item.low_stock\npayload: {"data": {"quantity": 1, "minimum_quantity": 5, '
        '"external_id": ""}}\n',
    )
    (failure,) = results[0].failures
    assert failure.message.startswith("reorder: actions[0] (purchase_order): rendered params are not valid:")
    assert "item_sku" in failure.message


async def test_secret_values_are_masked_in_replay_output(tmp_path: Path) -> None:
    results = await _replay(
        tmp_path,
        f"name: low\nevent: item.low_stock\npayload: {_payload(3)}\n",
        secrets={"CRM_TOKEN": "s3cr3t-crm-token"},
    )
    http = results[0].outcomes[0].actions[1]
    assert http.params is not None
    assert http.params["headers"] == {"Authorization": "Bearer s3cr3t-crm-token"}  # what is sent
    shown = masked_results(results, Masker(["s3cr3t-crm-token"]))
    assert shown[0]["rules"][0]["actions"][1]["params"]["headers"] == {"Authorization": "Bearer ***"}


async def test_unset_secrets_read_as_a_mask_in_dry_runs(tmp_path: Path) -> None:
    results = await _replay(tmp_path, f"name: low\nevent: item.low_stock\npayload: {_payload(3)}\n")
    params = results[0].outcomes[0].actions[1].params
    assert params is not None
    assert params["headers"] == {"Authorization": "Bearer ***"}


@pytest.mark.parametrize(
    ("actual", "expected", "holds"),
    [
        ({"a": 1, "b": 2}, {"a": 1}, True),
        ({"a": 1}, {"a": 1.0}, True),
        ({"a": 1}, {"a": True}, False),
        ({"a": True}, {"a": 1}, False),
        ({"a": {"x": 1, "y": 2}}, {"a": {"x": 1}}, True),
        ({"a": [1, 2]}, {"a": [1]}, False),
        ({"a": "7"}, {"a": 7}, False),
        ({}, {"a": None}, False),
    ],
)
def test_subset_match_is_exact_in_value_and_type(actual: object, expected: object, holds: bool) -> None:
    assert contains(actual, expected) is holds


async def test_a_dry_run_reports_a_poisonous_template_as_the_live_engine_does(tmp_path: Path) -> None:
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "r.yaml").write_text(
        """\
- id: recursive-key
  on: item.low_stock
  throttle: {key: "{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}", per: 1h}
  actions: [{type: log, message: x}]
- id: runaway
  on: item.low_stock
  actions: [{type: log, message: "{{ '%*d' % (300000000, 1) }}"}]
"""
    )
    (tmp_path / "f.yaml").write_text(f"name: poison\nevent: item.low_stock\npayload: {_payload(3)}\n")
    files, _ = load_fixtures([tmp_path / "f.yaml"])

    (result,) = await replay(load_rules(tmp_path / "rules", load_registry()), files, {})

    messages = [failure.message for failure in result.failures]
    assert any(m.startswith("recursive-key: throttle key: ") and "nested" in m for m in messages), messages
    assert any(m.startswith("runaway: actions[0] (log) param message: ") and "limit" in m for m in messages)
