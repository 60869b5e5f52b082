"""The missing-field reason suggests a default of the field's type, and warns when it would fire."""

from __future__ import annotations

from typing import Any

import pytest

from engine.language.conditions import Condition, DeliveryData, new_session
from engine.language.expressions import CompiledExpression, compile_expression
from engine.language.missing_hint import missing_reason

SAID = "is missing from the delivery, so the condition does not fire"


def _reason(text: str, data: dict[str, Any], field: str) -> str:
    compiled = compile_expression(text)
    assert isinstance(compiled, CompiledExpression)
    condition = Condition(compiled.logic, compiled)
    verdict = condition.test(DeliveryData({"data": data}), new_session())
    assert verdict.missing_field == field
    return missing_reason(condition, field, DeliveryData({"data": data}))


@pytest.mark.parametrize(
    ("text", "data", "field", "suggestion"),
    [
        ("data.quantity > 10", {}, "data.quantity", "data.quantity | default(0)"),
        ('data.external_id == "TENT-4P"', {}, "data.external_id", 'data.external_id | default("")'),
        ("any(item.quantity > 3 for item in data.items)", {}, "data.items", "data.items | default([])"),
        ("sum(item.price for item in data.items) > 500", {}, "data.items", "data.items | default([])"),
        ("data.returned and data.id > 1", {"id": 2}, "data.returned", "data.returned | default(false)"),
        (
            '"vip" in data.renter.tags',
            {"renter": {}},
            "data.renter.tags",
            'data.renter.tags | default([]) for a list or data.renter.tags | default("") for a text',
        ),
        (
            '"@acme.com" in data.renter.email',
            {"renter": {}},
            "data.renter.email",
            'data.renter.email | default("") for a text or data.renter.email | default([]) for a list',
        ),
        ('data.category in ["tents", "cameras"]', {}, "data.category", 'data.category | default("")'),
    ],
)
def test_the_default_suggested_has_the_type_the_condition_uses(
    text: str, data: dict[str, Any], field: str, suggestion: str
) -> None:
    assert (
        _reason(text, data, field)
        == f"{field} {SAID} (to give it a value when it is missing, write {suggestion})"
    )


@pytest.mark.parametrize(
    ("text", "field", "default"),
    [
        ("data.quantity == 0", "data.quantity", "data.quantity | default(0)"),
        ("data.quantity <= data.minimum_quantity", "data.quantity", "data.quantity | default(0)"),
        ('data.status != "returned"', "data.status", 'data.status | default("")'),
        ("len(data.items) == 0", "data.items", "data.items | default([])"),
        ("not data.returned", "data.returned", "data.returned | default(false)"),
    ],
)
def test_a_default_that_would_make_the_rule_fire_where_the_field_is_absent_is_not_recommended(
    text: str, field: str, default: str
) -> None:
    reason = _reason(text, {"minimum_quantity": 5}, field)
    assert reason == (
        f"{field} {SAID}; a default would not help: with {default} the rule would fire on this delivery, "
        f"and so on others without {field}. Leave it without a default unless that is meant"
    )


def test_jsonlogic_rules_get_the_default_written_in_jsonlogic() -> None:
    condition = Condition({"==": [{"var": "data.sku"}, "TENT"]})
    reason = missing_reason(condition, "data.sku", DeliveryData({"data": {}}))
    assert (
        reason
        == f'data.sku {SAID} (to give it a value when it is missing, write {{"var": ["data.sku", ""]}})'
    )


def test_a_field_whose_type_the_condition_does_not_tell_gets_every_kind_of_default() -> None:
    reason = _reason("data.a == data.b", {"b": 1}, "data.a")
    assert reason.endswith(
        'write data.a | default(…) with a value of its type: 0 for a number, "" for a text, [] for a list)'
    )
