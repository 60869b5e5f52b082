"""Conditions: the official JsonLogic suite, the missing-field guard, explanations."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from engine.language.conditions import Condition, DeliveryData, check, evaluate, new_session

# The official suite (jsonlogic.com's tests.json, 278 cases), vendored so a fresh clone runs it.
OFFICIAL_SUITE = Path(__file__).parent / "data" / "jsonlogic" / "tests.json"
SHARED_COPY = Path(__file__).resolve().parents[3] / "shared" / "jsonlogic" / "tests.json"


def _official_cases() -> list[tuple[Any, Any, Any]]:
    return [tuple(case) for case in json.loads(OFFICIAL_SUITE.read_text()) if not isinstance(case, str)]


def test_vendored_suite_is_the_shared_one() -> None:
    if not SHARED_COPY.exists():
        pytest.skip(f"no shared copy of the suite at {SHARED_COPY} to compare with")
    assert json.loads(OFFICIAL_SUITE.read_text()) == json.loads(SHARED_COPY.read_text())


def _same_json(a: Any, b: Any) -> bool:
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def test_official_jsonlogic_suite_passes_at_least_277_of_278() -> None:
    cases = _official_cases()
    failures = []
    for logic, data, expected in cases:
        try:
            got = evaluate(logic, data)
        except Exception as exc:  # a crash is a failure of that case, reported below
            got = f"raised {exc!r}"
        if not _same_json(got, expected):
            failures.append((logic, data, expected, got))
    assert len(cases) == 278
    assert len(cases) - len(failures) >= 277, failures


def test_string_rule_is_a_literal_not_json_text() -> None:
    assert evaluate("apple", {}) == "apple"


def _test(logic: Any, context: dict[str, Any]) -> Any:
    return Condition(logic).test(DeliveryData(context), new_session())


LOW_STOCK = {"<=": [{"var": "data.quantity"}, {"var": "data.minimum_quantity"}]}


def test_condition_fires_when_true() -> None:
    verdict = _test(LOW_STOCK, {"data": {"quantity": 3, "minimum_quantity": 5}})
    assert verdict.fired is True
    assert verdict.missing_field is None


def test_missing_field_does_not_fire_and_names_the_field() -> None:
    # Plain JsonLogic reads the missing quantity as null, and null <= 5 is true.
    assert evaluate(LOW_STOCK, {"data": {"minimum_quantity": 5}}) is True
    verdict = _test(LOW_STOCK, {"data": {"minimum_quantity": 5}})
    assert verdict.fired is False
    assert verdict.missing_field == "data.quantity"


def test_present_null_is_not_missing() -> None:
    verdict = _test({"==": [{"var": "data.note"}, None]}, {"data": {"note": None}})
    assert verdict.fired is True


def test_default_opts_out_of_the_missing_field_guard() -> None:
    logic = {"<=": [{"var": ["data.quantity", 0]}, {"var": "data.minimum_quantity"}]}
    assert _test(logic, {"data": {"minimum_quantity": 5}}).fired is True


def test_missing_and_missing_some_still_work_for_rules_about_absence() -> None:
    assert _test({"missing": ["data.quantity"]}, {"data": {}}).fired is True
    assert _test({"missing_some": [1, ["data.a", "data.b"]]}, {"data": {}}).fired is True
    absent_else_read = {"if": [{"missing": "data.x"}, True, {"var": "data.x"}]}
    assert _test(absent_else_read, {"data": {}}).fired is True


def test_branch_not_taken_does_not_count_as_a_missing_read() -> None:
    logic = {"or": [{"==": [{"var": "data.status"}, "returned"]}, {"var": "data.never_there"}]}
    assert _test(logic, {"data": {"status": "returned"}}).fired is True
    assert _test(logic, {"data": {"status": "reserved"}}).missing_field == "data.never_there"


def test_paths_inside_some_are_item_relative_and_not_guarded() -> None:
    logic = {"some": [{"var": "data.items"}, {">": [{"var": "quantity"}, 2]}]}
    items = [{"name": "tent"}, {"name": "chair", "quantity": 4}]
    assert _test(logic, {"data": {"items": items}}).fired is True
    assert _test(logic, {"data": {"items": [{"name": "tent"}]}}).fired is False
    assert _test(logic, {"data": {}}).missing_field == "data.items"


def test_evaluation_error_is_a_non_fire_with_a_reason() -> None:
    verdict = _test({"+": [1, {"*": ["x", 2]}]}, {"data": {}})
    assert verdict.fired is False
    assert verdict.error is not None
    assert "*" in verdict.error


def test_explanation_shows_the_values_the_condition_saw() -> None:
    data = DeliveryData({"data": {"quantity": 7, "minimum_quantity": 5}})
    assert Condition(LOW_STOCK).explain(data) == "data.quantity (7) <= data.minimum_quantity (5) -> false"


def test_explanation_of_a_compound_condition_shows_each_part() -> None:
    logic = {"and": [LOW_STOCK, {"==": [{"var": "data.kind"}, "tent"]}]}
    data = DeliveryData({"data": {"quantity": 3, "minimum_quantity": 5, "kind": "chair"}})
    assert Condition(logic).explain(data) == (
        "(data.quantity (3) <= data.minimum_quantity (5) -> true) and "
        '(data.kind ("chair") == "tent" -> false) -> false'
    )


def test_check_reports_unknown_operators_with_their_location() -> None:
    problems = check({"and": [{"<=": [1, 2]}, {"vr": "data.x"}]})
    assert [(p.loc, p.message) for p in problems] == [
        (("and", 1), "expected a JsonLogic operator, found 'vr'; did you mean 'var'?")
    ]


@pytest.mark.parametrize("key", ["³", "12", "٣"])
def test_check_locates_a_digit_like_object_key_as_that_key_never_as_a_list_index(key: str) -> None:
    # Found by tests/language/test_sources_properties.py: '³' passed str.isdigit() and int()
    # raised (a traceback from `check`); '12' and '٣' became list indexes of an object.
    problems = check([False, 0, {key: {"a": None}}])
    assert [(p.loc, p.message) for p in problems] == [
        ((2,), f"expected a JsonLogic operator, found '{key}'"),
        ((2, key), "expected a JsonLogic operator, found 'a'"),
    ]


def test_check_finds_operators_outside_the_jsonlogic_core() -> None:
    # datalogic has extension families; rules stay portable JsonLogic.
    assert check({"upper": "abc"})


def test_explanation_cuts_a_long_text_and_says_how_long_it_was() -> None:
    note = "y" * 888_000
    data = DeliveryData({"data": {"note": note}})
    reason = Condition({"==": [{"var": "data.note"}, "x"]}).explain(data)
    assert len(reason) < 600
    assert "888,000 characters" in reason
    assert reason.startswith('data.note ("yyyy')
    assert reason.endswith('== "x" -> false')


def test_explanation_cuts_a_long_list_and_an_object_and_says_how_many_items() -> None:
    data = DeliveryData({"data": {"items": list(range(100_000)), "meta": {f"k{i}": i for i in range(5_000)}}})
    logic = {"or": [{"in": [-1, {"var": "data.items"}]}, {"==": [{"var": "data.meta"}, 1]}]}
    reason = Condition(logic).explain(data)
    assert len(reason) < 1_500
    assert "100,000 items" in reason
    assert "5,000 items" in reason


def test_an_explanation_stays_bounded_however_many_values_it_shows() -> None:
    fields = {f"f{i}": "z" * 10_000 for i in range(200)}
    logic = {"and": [{"==": [{"var": f"data.f{i}"}, {"var": f"data.f{i}"}]} for i in range(200)] + [False]}
    reason = Condition(logic).explain(DeliveryData({"data": fields}))
    assert len(reason) <= 4_000
    assert reason.endswith("characters)")
