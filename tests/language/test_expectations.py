"""Expectations that mean what they say (spec section 13): reasons, `because`, `errors`, defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from actions.registry import load_registry
from engine.language.expectations import FixtureResult, Remark, replay
from engine.language.fixtures import load_fixtures
from engine.language.loader import load_rules

RULES = """\
- id: vip-rental
  on: rent.created
  when: {"==": [{var: data.renter.tags}, "vip"]}
  actions: [{type: log, message: "VIP rental {{ data.id }}"}]
- id: big-rental
  on: rent.created
  when: len(data.items) > 2
  actions: [{type: log, message: "big rental {{ data.id }}"}]
- id: crm-hook
  on: rent.created
  actions:
    - type: http
      url: https://crm.example.com/hook
      headers: {Authorization: "Bearer {{ secrets.CRM_TOKEN }}"}
      json: {rental: "{{ data.id }}"}
- id: reorder
  on: item.low_stock
  when: data.quantity <= data.minimum_quantity
  throttle: {key: "{{ data.sku }}", per: 1h}
  actions: [{type: log, message: "reorder {{ data.sku }}"}]
- id: switched-off
  on: "*"
  enabled: false
  actions: [{type: log, message: never}]
"""

RENTAL = '{"timestamp": "2026-03-01T09:00:00Z", "data": {"id": 7, "renter": {"tags": ["vip"]}, "items": [1]}}'
REGULAR = (
    '{"timestamp": "2026-03-01T09:00:00Z", "data": {"id": 7, "renter": {"tags": "regular"}, "items": [1]}}'
)
NO_RENTER = '{"timestamp": "2026-03-01T09:00:00Z", "data": {"id": 8, "items": [1, 2, 3]}}'


async def _replay(
    tmp_path: Path, fixtures: str, secrets: dict[str, str] | None = None
) -> list[FixtureResult]:
    (tmp_path / "rules").mkdir(parents=True)
    (tmp_path / "rules" / "r.yaml").write_text(RULES)
    (tmp_path / "f.yaml").write_text(fixtures)
    rules = load_rules(tmp_path / "rules", load_registry())
    files, problems = load_fixtures([tmp_path / "f.yaml"])
    assert problems == []
    return await replay(rules, files, secrets or {})


def _messages(result: FixtureResult) -> list[tuple[str, str | None, str | None]]:
    return [(f.message, f.expected, f.actual) for f in result.failures]


async def test_not_fired_fails_when_the_rule_did_not_fire_because_its_condition_raised(
    tmp_path: Path,
) -> None:
    # The "not a VIP" fixture: == between a list and a text raises, and used to pass.
    (result,) = await _replay(
        tmp_path,
        f"name: not a VIP\nevent: rent.created\npayload: {RENTAL}\nexpect: {{not_fired: [vip-rental]}}\n",
    )

    assert _messages(result) == [
        (
            "vip-rental did not fire because of an error, which not_fired does not accept",
            "not fired, for any reason but an error "
            "(fix the rule, or list it under errors if this fixture shows the error on purpose)",
            "error: condition could not be evaluated in '==': Invalid arguments: NaN",
        )
    ]


async def test_errors_excuses_an_error_and_requires_it(tmp_path: Path) -> None:
    results = await _replay(
        tmp_path,
        f"""\
- {{name: error expected, event: rent.created, payload: {RENTAL}, expect: {{errors: [vip-rental]}}}}
- {{name: no error happens, event: rent.created, payload: {NO_RENTER}, expect: {{errors: [big-rental]}}}}
""",
    )

    assert [r.passed for r in results] == [True, False]
    assert _messages(results[1]) == [
        (
            "big-rental should run into an error (it is listed under errors)",
            "an error",
            "fired: len(data.items) (3) > 2 -> true",
        )
    ]


@pytest.mark.parametrize(
    ("because", "passes"),
    [("missing", True), ("condition", False), ("event", False)],
)
async def test_because_pins_the_reason_a_rule_did_not_fire(
    tmp_path: Path, because: str, passes: bool
) -> None:
    (result,) = await _replay(
        tmp_path,
        f"name: no renter\nevent: rent.created\npayload: {NO_RENTER}\n"
        f"expect: {{not_fired: [{{rule: vip-rental, because: {because}}}]}}\n",
    )

    assert result.passed is passes
    if not passes:
        assert _messages(result) == [
            (
                f"vip-rental should not fire because: {because}",
                f"not fired because: {because}",
                "not fired because: missing: data.renter.tags is missing from the delivery, so the condition "
                'does not fire (to give it a value when it is missing, write {"var": ["data.renter.tags", ""]})',
            )
        ]


@pytest.mark.parametrize(
    ("fixture", "rule", "because"),
    [
        (f"event: rent.created\npayload: {NO_RENTER}", "vip-rental", "missing"),
        (f"event: rent.created\npayload: {NO_RENTER}", "reorder", "event"),
        (f"event: rent.created\npayload: {NO_RENTER}", "switched-off", "disabled"),
    ],
)
async def test_a_not_fired_that_held_for_another_reason_than_its_condition_is_remarked(
    tmp_path: Path, fixture: str, rule: str, because: str
) -> None:
    (result,) = await _replay(tmp_path, f"name: x\n{fixture}\nexpect: {{not_fired: [{rule}]}}\n")

    assert result.passed
    assert result.remarks == [Remark(rule, because)]


async def test_a_not_fired_held_by_its_condition_or_pinned_is_not_remarked(tmp_path: Path) -> None:
    (result,) = await _replay(
        tmp_path,
        f"name: x\nevent: rent.created\npayload: {RENTAL}\n"
        "expect: {errors: [vip-rental], not_fired: [big-rental, {rule: reorder, because: event}]}\n",
    )

    assert result.passed
    assert result.remarks == []


async def test_throttled_is_a_reason_of_its_own(tmp_path: Path) -> None:
    low = '{"timestamp": "2026-03-01T09:%s:00Z", "data": {"quantity": 1, "minimum_quantity": 5, "sku": "T"}}'
    results = await _replay(
        tmp_path,
        f"""\
- {{name: first, event: item.low_stock, payload: {low % "00"}, expect: {{fired: [reorder]}}}}
- {{name: again, event: item.low_stock, payload: {low % "10"}, expect: {{not_fired: [{{rule: reorder, because: throttled}}]}}}}
- {{name: unpinned, event: item.low_stock, payload: {low % "20"}, expect: {{not_fired: [reorder]}}}}
""",
    )

    assert [r.passed for r in results] == [True, True, True]
    assert results[2].remarks == [Remark("reorder", "throttled")]


async def test_params_are_compared_with_the_actions_defaults_applied(tmp_path: Path) -> None:
    # The rule relies on http's default method (POST) and timeout (10 seconds).
    (result,) = await _replay(
        tmp_path,
        f"name: x\nevent: rent.created\npayload: {REGULAR}\nexpect:\n  actions:\n"
        "    - {rule: crm-hook, type: http, params: {method: POST, timeout: 10, json: {rental: 7}}}\n",
    )

    assert result.passed, _messages(result)


async def test_a_wrong_default_shows_the_default_it_was_compared_with(tmp_path: Path) -> None:
    (result,) = await _replay(
        tmp_path,
        f"name: x\nevent: rent.created\npayload: {REGULAR}\nexpect:\n  actions:\n"
        "    - {rule: crm-hook, type: http, params: {method: GET}}\n",
    )

    ((message, expected, actual),) = _messages(result)
    assert (message, expected) == ("crm-hook: a http action with these params", 'method: "GET"')
    assert actual is not None
    assert actual.endswith(', method: "POST" (default)')


async def test_an_expected_secret_may_be_written_masked_whether_or_not_it_is_set(tmp_path: Path) -> None:
    fixture = (
        f"name: x\nevent: rent.created\npayload: {REGULAR}\nexpect:\n  actions:\n"
        "    - {rule: crm-hook, params: {headers: {Authorization: Bearer ***}}}\n"
    )
    (unset,) = await _replay(tmp_path / "unset", fixture)
    (set_,) = await _replay(tmp_path / "set", fixture, {"CRM_TOKEN": "s3cr3t-crm-token"})

    assert (unset.passed, set_.passed) == (True, True)


async def test_a_fixture_without_expect_still_fails_on_an_error(tmp_path: Path) -> None:
    (result,) = await _replay(tmp_path, f"name: x\nevent: rent.created\npayload: {RENTAL}\n")

    assert [f.message for f in result.failures] == [
        "vip-rental: condition could not be evaluated in '==': Invalid arguments: NaN"
    ]


def test_a_not_fired_entry_must_be_a_rule_id_or_rule_and_because(tmp_path: Path) -> None:
    (tmp_path / "f.yaml").write_text(
        f"name: x\nevent: rent.created\npayload: {RENTAL}\nexpect: {{not_fired: [{{rule: a, because: misin}}, 3]}}\n"
    )
    _, problems = load_fixtures([tmp_path / "f.yaml"])

    assert [p.message for p in problems] == [
        "expected 'event', 'disabled', 'throttled', 'condition' or 'missing', found the text \"misin\"",
        "expected a rule id, or {rule: ..., because: ...}, found the number 3",
    ]
