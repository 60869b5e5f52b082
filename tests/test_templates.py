"""Templates: native types, payload values as data, strict fields, escaping, runaway limits."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from actions.slack import slack_escape
from engine.errors import TemplateRenderError
from engine.secrets import Secrets
from engine.templates import compile_value, render

CONTEXT: dict[str, Any] = {
    "event": "item.low_stock",
    "delivery_id": "d-1",
    "timestamp": "2026-03-01T09:00:00Z",
    "data": {
        "id": 42,
        "name": "Tent 4p",
        "quantity": 3,
        "minimum_quantity": 5,
        "items": [{"sku": "A"}, {"sku": "B"}],
        "renter": {"name": "{{ 7*7 }} <b>&"},
    },
    "secrets": Secrets({"CRM_TOKEN": "crm-token-value"}),
    "now": datetime(2026, 3, 1, 9, 0, tzinfo=UTC),
}


def _render(value: Any, escape: Any = None) -> Any:
    template, problems = compile_value(value, escape=escape)
    assert problems == []
    return render(template, CONTEXT)


def test_single_expression_keeps_its_native_type() -> None:
    assert _render("{{ data.minimum_quantity * 2 - data.quantity }}") == 7
    assert _render("{{ data.items }}") == [{"sku": "A"}, {"sku": "B"}]
    assert _render("{{ data.quantity > 1 }}") is True


def test_mixed_text_renders_to_text() -> None:
    assert _render("order {{ data.minimum_quantity * 2 - data.quantity }} now") == "order 7 now"


def test_text_from_the_payload_stays_text_even_when_it_looks_like_a_number() -> None:
    context = {**CONTEXT, "data": {"code": "007", "list": "[1, 2]"}}
    template, _ = compile_value("{{ data.code }}")
    assert render(template, context) == "007"
    template, _ = compile_value("{{ data.list }}")
    assert render(template, context) == "[1, 2]"


def test_payload_values_are_never_evaluated_as_templates() -> None:
    assert _render("{{ data.renter.name }}") == "{{ 7*7 }} <b>&"
    assert _render("Renter: {{ data.renter.name }}") == "Renter: {{ 7*7 }} <b>&"


def test_dotted_name_means_the_payload_field_not_the_dict_method() -> None:
    assert _render("{{ data.items | length }}") == 2


def test_nested_params_render_every_string() -> None:
    value = {"headers": {"X-Item": "{{ data.id }}"}, "json": [{"n": "{{ data.quantity }}"}, 5]}
    assert _render(value) == {"headers": {"X-Item": 42}, "json": [{"n": 3}, 5]}


def test_now_is_iso_text_in_native_params() -> None:
    assert _render("{{ now }}") == "2026-03-01T09:00:00+00:00"


def test_slack_escaping_applies_to_interpolated_values_only() -> None:
    text = _render("<https://x.example/r|Rental> for {{ data.renter.name }}", escape=slack_escape)
    assert text == "<https://x.example/r|Rental> for {{ 7*7 }} &lt;b&gt;&amp;"


def test_missing_field_error_names_the_field_and_suggests() -> None:
    with pytest.raises(TemplateRenderError) as raised:
        _render("{{ data.quantitty }}")
    message = str(raised.value)
    assert message.startswith("data.quantitty is not in the delivery (did you mean data.quantity?)")
    assert "data has: id, items, minimum_quantity, name, quantity, renter" in message


def test_missing_nested_field_in_text_names_the_full_path() -> None:
    with pytest.raises(TemplateRenderError, match=r"^data\.renter\.email is not in the delivery"):
        _render("Mail {{ data.renter.email }}")


def test_unknown_top_level_name_lists_what_templates_see() -> None:
    with pytest.raises(TemplateRenderError, match="dta is not defined \\(did you mean data\\?\\)"):
        _render("{{ dta.id }}")


def test_secrets_come_from_secret_variables_and_unset_ones_name_the_variable() -> None:
    assert _render("Bearer {{ secrets.CRM_TOKEN }}") == "Bearer crm-token-value"
    with pytest.raises(TemplateRenderError, match="set the environment variable SECRET_ERP_TOKEN"):
        _render("{{ secrets.ERP_TOKEN }}")


def test_dry_run_secrets_read_as_a_mask_when_unset() -> None:
    template, _ = compile_value("{{ secrets.ERP_TOKEN }}")
    assert render(template, {**CONTEXT, "secrets": Secrets({}, placeholders=True)}) == "***"


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("{% for i in range(10**9) %}x{% endfor %}", "range\\(\\) asked for more than 10,000 items"),
        ("{% for i in range(200) %}{% for j in range(200) %}{% endfor %}{% endfor %}", "range"),
        ('{{ "a" * 10**9 }}', "over the 1,000,000 limit"),
        ("{{ [1] * 10**8 }}", "over the 1,000,000 limit"),
        ("{{ 2 ** 1000000 }}", "exponent"),
        ('{{ "x" | center(10**9) }}', "width"),
        ('{{ "%999999999d" | format(1) }}', "width"),
        ('{{ "{:>999999999}".format(1) }}', "str.format"),
        ('{{ "a".ljust(10**9) }}', "unsafe"),
        ("{{ data.items.append(1) }}", "unsafe"),
        ("{{ data.__class__.__mro__ }}", "__class__ is not in the delivery"),
    ],
)
def test_runaway_or_unsafe_templates_fail_fast_with_a_clear_error(source: str, expected: str) -> None:
    with pytest.raises(TemplateRenderError, match=expected):
        _render(source)
    assert CONTEXT["data"]["items"] == [{"sku": "A"}, {"sku": "B"}]


def test_syntax_errors_are_found_when_compiled_with_their_location() -> None:
    _, problems = compile_value({"a": ["ok", "{% if %}"], "b": "{{ data.x "})
    assert [(p.loc, p.line) for p in problems] == [(("a", 1), 1), (("b",), 1)]
    assert all(p.message.startswith("template syntax error:") for p in problems)


def test_literal_strings_and_non_strings_pass_through() -> None:
    assert _render({"a": "plain text", "b": 5, "c": None, "d": "{ not a template }"}) == {
        "a": "plain text",
        "b": 5,
        "c": None,
        "d": "{ not a template }",
    }
