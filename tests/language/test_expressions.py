"""Condition expressions: every form of SPEC section 12's table, every hint, explanations, rendering back."""

from __future__ import annotations

from typing import Any

import pytest

from engine.language.conditions import Condition, DeliveryData, new_session
from engine.language.expressions import CompiledExpression, ExpressionProblem, compile_expression
from engine.language.expressions.render import NoExpression, to_expression

ITEMS_COUNT = {"+": [{"var": "accumulator"}, 1]}

FORMS: list[tuple[str, Any]] = [
    # dotted paths from every context name, with [0] indexes and quoted keys
    ("data.renter.name", {"var": "data.renter.name"}),
    ("data.items[0].sku", {"var": "data.items.0.sku"}),
    ('data["first-name"]', {"var": "data.first-name"}),
    ('data["from"] == 1', {"==": [{"var": "data.from"}, 1]}),
    ('payload.data.id == event + "x"', {"==": [{"var": "payload.data.id"}, {"+": [{"var": "event"}, "x"]}]}),
    (
        'timestamp > "2026" or delivery_id == "d"',
        {"or": [{">": [{"var": "timestamp"}, "2026"]}, {"==": [{"var": "delivery_id"}, "d"]}]},
    ),
    # literals
    ("data.a == 1.5", {"==": [{"var": "data.a"}, 1.5]}),
    (
        "data.a == 'x' or data.a == \"y\"",
        {"or": [{"==": [{"var": "data.a"}, "x"]}, {"==": [{"var": "data.a"}, "y"]}]},
    ),
    (
        "data.a == true or data.a == false or data.a == null",
        {
            "or": [
                {"==": [{"var": "data.a"}, True]},
                {"==": [{"var": "data.a"}, False]},
                {"==": [{"var": "data.a"}, None]},
            ]
        },
    ),
    (
        "data.a == True or data.a == None",
        {"or": [{"==": [{"var": "data.a"}, True]}, {"==": [{"var": "data.a"}, None]}]},
    ),
    ("data.a in [1, 'x', null, [2]]", {"in": [{"var": "data.a"}, [1, "x", None, [2]]]}),
    # comparisons, chained
    ("data.a != 1", {"!=": [{"var": "data.a"}, 1]}),
    ("data.a < 1", {"<": [{"var": "data.a"}, 1]}),
    ("data.a >= 1", {">=": [{"var": "data.a"}, 1]}),
    ("0 < data.x <= 5", {"and": [{"<": [0, {"var": "data.x"}]}, {"<=": [{"var": "data.x"}, 5]}]}),
    # and, or, not
    (
        "data.a and data.b or not data.c",
        {"or": [{"and": [{"var": "data.a"}, {"var": "data.b"}]}, {"!": [{"var": "data.c"}]}]},
    ),
    # in, not in
    ('"vip" in data.renter.tags', {"in": ["vip", {"var": "data.renter.tags"}]}),
    ('data.category not in ["tents"]', {"!": [{"in": [{"var": "data.category"}, ["tents"]]}]}),
    # arithmetic, unary minus
    ("data.a + data.b + 1 > -5", {">": [{"+": [{"var": "data.a"}, {"var": "data.b"}, 1]}, -5]}),
    (
        "data.a - data.b * 2 / 3 % 4",
        {"-": [{"var": "data.a"}, {"%": [{"/": [{"*": [{"var": "data.b"}, 2]}, 3]}, 4]}]},
    ),
    ("-data.a < 0", {"<": [{"-": [0, {"var": "data.a"}]}, 0]}),
    # len, | length
    ("len(data.items) > 5", {">": [{"reduce": [{"var": "data.items"}, ITEMS_COUNT, 0]}, 5]}),
    ("data.items | length > 5", {">": [{"reduce": [{"var": "data.items"}, ITEMS_COUNT, 0]}, 5]}),
    # | default
    ("data.total | default(0) > 1000", {">": [{"var": ["data.total", 0]}, 1000]}),
    ('data.tags | default(["x"])', {"var": ["data.tags", ["x"]]}),
    ("data.delta | default(-1) < 0", {"<": [{"var": ["data.delta", -1]}, 0]}),
    # exists
    ("exists(data.supplier)", {"!==": [{"var": ["data.supplier", None]}, None]}),
    # any / all / not any, item-relative reads
    (
        "any(item.quantity > 3 for item in data.items)",
        {"some": [{"var": "data.items"}, {">": [{"var": "quantity"}, 3]}]},
    ),
    ('all(t != "x" for t in data.tags)', {"all": [{"var": "data.tags"}, {"!=": [{"var": ""}, "x"]}]}),
    ("not any(item.broken for item in data.items)", {"none": [{"var": "data.items"}, {"var": "broken"}]}),
    (
        "any(any(t == 1 for t in i.tags) for i in data.items)",
        {"some": [{"var": "data.items"}, {"some": [{"var": "tags"}, {"==": [{"var": ""}, 1]}]}]},
    ),
    # sum
    (
        "sum(item.quantity for item in data.items) > 5",
        {
            ">": [
                {
                    "reduce": [
                        {"var": "data.items"},
                        {"+": [{"var": "accumulator"}, {"var": "current.quantity"}]},
                        0,
                    ]
                },
                5,
            ]
        },
    ),
    (
        "sum(data.amounts) > 5",
        {
            ">": [
                {"reduce": [{"var": "data.amounts"}, {"+": [{"var": "accumulator"}, {"var": "current"}]}, 0]},
                5,
            ]
        },
    ),
    # if
    ("(1 if data.vip else 2) > data.n", {">": [{"if": [{"var": "data.vip"}, 1, 2]}, {"var": "data.n"}]}),
    # several lines, a comment
    (
        'data.status == "overdue"\n  and data.n > 1  # late\n',
        {"and": [{"==": [{"var": "data.status"}, "overdue"]}, {">": [{"var": "data.n"}, 1]}]},
    ),
]


def _compiled(text: str) -> CompiledExpression:
    compiled = compile_expression(text)
    assert isinstance(compiled, CompiledExpression), compiled
    return compiled


@pytest.mark.parametrize(("text", "logic"), FORMS, ids=[text for text, _ in FORMS])
def test_every_form_compiles_to_standard_jsonlogic(text: str, logic: Any) -> None:
    assert _compiled(text).logic == logic


@pytest.mark.parametrize(("text", "logic"), FORMS, ids=[text for text, _ in FORMS])
def test_every_form_renders_back_to_an_expression_that_compiles_the_same(text: str, logic: Any) -> None:
    assert _compiled(to_expression(logic)).logic == logic


def _problems(text: str) -> list[tuple[str, int, int, str]]:
    found = compile_expression(text)
    assert isinstance(found, list), f"{text!r} compiled: {found}"
    return [(p.message, p.line, p.column, text[p.start : p.end]) for p in found]


# (expression, words the message must hold, line, column, the text the span covers)
HINTS: list[tuple[str, str, int, int, str]] = [
    ("data.a && data.b", "write `and` instead of `&&`", 1, 8, "&&"),
    ("data.a || data.b", "write `or` instead of `||`", 1, 8, "||"),
    ("data.a & data.b", "write `and`", 1, 1, "data.a & data.b"),
    ("!data.returned", "write `not` instead of `!`", 1, 1, "!"),
    ("data.a = 5", "write `==` to compare", 1, 8, "="),
    ("data.a === 5", "write `==` instead of `===`", 1, 8, "==="),
    ("data.a !== 5", "write `!=` instead of `!==`", 1, 8, "!=="),
    ("data.a => 5", "write `>=`", 1, 8, "=>"),
    ("data.a =< 5", "write `<=`", 1, 8, "=<"),
    ("data.a <> 5", "write `!=`", 1, 8, "<>"),
    ("{{ data.quantity }} < 5", "a condition is not a template", 1, 1, "{{ data.quantity }}"),
    ("{% if data.x %}", "a condition is not a template", 1, 1, "{%"),
    ("data.a AND data.b", "write `and` in small letters", 1, 8, "AND"),
    ("the stock is low", "words side by side are not a condition", 1, 1, "the stock"),
    ("data.quantity > 5 items", "two values side by side", 1, 17, "5 items"),
    ('data.x > 5 "a"', "two values side by side", 1, 10, '5 "a"'),
    ("data.x > 5 or", "ends too early", 1, 14, ""),
    ("data.x > 5;", "after the end of the condition", 1, 11, ";"),
    ("data.x >", "ends too early", 1, 9, ""),
    ("(data.x > 5", "'(' was never closed", 1, 1, "("),
    ("data.x > 5)", "unmatched ')'", 1, 11, ")"),
    ('data.x == "abc', "never closed; add the closing quote", 1, 11, '"'),
    ("data.from == 1", 'data["from"]', 1, 6, "from"),
    ("", "empty text", 1, 1, ""),
    ("status == overdue", "write data.status", 1, 1, "status"),
    ("data.a is None", "write == to compare", 1, 1, "data.a is None"),
    ("data.a is not None", "write != to compare", 1, 1, "data.a is not None"),
    ("foo(data.a)", "unknown function 'foo'", 1, 1, "foo(data.a)"),
    ('data.name.startswith("A")', "text methods such as .startswith()", 1, 1, 'data.name.startswith("A")'),
    ("len(data.a, data.b)", "expected one value in len(...)", 1, 1, "len(data.a, data.b)"),
    ("any(data.flags)", "expected any(test for item in list)", 1, 1, "any(data.flags)"),
    ("any(i.q > data.t for i in data.items)", "inside any(...) only i and its fields", 1, 11, "data"),
    (
        "any(any(t == o.x for t in o.tags) for o in data.items)",
        "inside any(...) only t and its fields",
        1,
        14,
        "o",
    ),
    ("any(i.q for i in data.items if i.ok)", "write the test before `for`", 1, 32, "i.ok"),
    ("data.a | upper", "after | write default(value) or length", 1, 1, "data.a | upper"),
    ("data.a | default(data.b)", "written-out value in default", 1, 18, "data.b"),
    ("(data.a + 1) | default(0)", "default(...) follows a field", 1, 2, "data.a + 1"),
    ("default(data.a)", "default(...) follows a field after |", 1, 1, "default(data.a)"),
    ("exists(data.a + 1)", "expected a field in exists", 1, 8, "data.a + 1"),
    ("data.a ** 2 > 1", "powers are not available", 1, 1, "data.a ** 2"),
    ("data.a // 2 > 1", "write /", 1, 1, "data.a // 2"),
    ("data.a in (1, 2)", "write a list in square brackets", 1, 11, "(1, 2)"),
    ("data.a in {1, 2}", "write a list in square brackets", 1, 11, "{1, 2}"),
    ('data.a == {"b": 1}', "objects { } are not available", 1, 11, '{"b": 1}'),
    ('f"{data.a}" == "x"', "f-strings are not available", 1, 1, 'f"{data.a}"'),
    ("[i for i in data.a]", "write any(test for item in list)", 1, 1, "[i for i in data.a]"),
    ("data.items[-1].sku", "from 0 (the first item)", 1, 12, "-1"),
    ("data.items[1:2]", "slices", 1, 12, "1:2"),
    ("secrets.TOKEN == 1", "conditions cannot read secrets", 1, 1, "secrets"),
    ("now > timestamp", "conditions cannot read the clock", 1, 1, "now"),
    ("true", "reads no field, so it is always true", 1, 1, "true"),
    ("1 > 2", "always the same", 1, 1, "1 > 2"),
    ("false", "always false", 1, 1, "false"),
    ("data.a == 99999999999999999999", "expected a number of at most", 1, 11, "99999999999999999999"),
    ("~data.a", "write `not`", 1, 1, "~data.a"),
    ("data.a + [1] > 0", "found a list", 1, 10, "[1]"),
    ("-[1, 2] < data.a", "found a list", 1, 2, "[1, 2]"),
    ("+data.a", "remove it", 1, 1, "+data.a"),
    ("data.a if data.b", "expected 'else'", 1, 1, "data.a if data.b"),
    ("data.a > 1 and\n  data.b !! 2", "write `not`", 2, 10, "!"),
]


@pytest.mark.parametrize(("text", "words", "line", "column", "covers"), HINTS, ids=[h[0] for h in HINTS])
def test_every_slip_gets_a_hint_at_its_line_and_column(
    text: str, words: str, line: int, column: int, covers: str
) -> None:
    message, found_line, found_column, found_covers = _problems(text)[0]
    assert words in message
    assert (found_line, found_column, found_covers) == (line, column, covers)


def test_every_problem_of_an_expression_is_reported_at_once() -> None:
    assert [(p[0].split(":")[0], p[2]) for p in _problems("status == overdue")] == [
        ("unknown name 'status'", 1),
        ("unknown name 'overdue'", 11),
    ]


def test_columns_count_characters_not_bytes() -> None:
    [(_message, line, column, covers)] = _problems('data.name == "Zoë" && data.ok')
    assert (line, column, covers) == (1, 20, "&&")
    [(_message, line, column, covers)] = _problems('data.name == "Zoë" and size == 1')
    assert (column, covers) == (24, "size")


def test_deep_nesting_and_long_text_are_refused_not_crashed() -> None:
    assert "levels of nesting" in _problems("-" * 70 + "data.a")[0][0]
    assert "levels of nesting" in _problems("(" * 300 + "data.a" + ")" * 300)[0][0]
    assert "at most 4000 characters" in _problems("data.a + " * 600 + "1")[0][0]


def test_nothing_is_ever_evaluated_by_python() -> None:
    # Would-be side effects are refused as unknown names and calls, never run.
    for text in ("__import__('os').system('true')", "(lambda: 1)()", "[].__class__"):
        assert isinstance(compile_expression(text), list)
    # A dunder name is only the name of a payload field here.
    assert _compiled("data.__class__.__mro__").logic == {"var": "data.__class__.__mro__"}


# ---------------------------------------------------------------- semantics through the real engine


def _verdict(text: str, data: dict[str, Any]) -> tuple[bool, str | None, str | None]:
    compiled = _compiled(text)
    verdict = Condition(compiled.logic, compiled).test(DeliveryData({"data": data}), new_session())
    return verdict.fired, verdict.missing_field, verdict.error


def test_a_missing_field_does_not_fire_and_is_named() -> None:
    assert _verdict("data.quantity <= data.minimum_quantity", {"minimum_quantity": 5}) == (
        False,
        "data.quantity",
        None,
    )
    assert _verdict("data.quantity | default(0) <= data.minimum_quantity", {"minimum_quantity": 5}) == (
        True,
        None,
        None,
    )


def test_exists_and_default_are_not_guarded_and_null_is_not_absent() -> None:
    assert _verdict("not exists(data.supplier)", {}) == (True, None, None)
    assert _verdict("not exists(data.supplier)", {"supplier": None}) == (True, None, None)
    assert _verdict("exists(data.supplier)", {"supplier": 0}) == (True, None, None)
    assert _verdict("data.note | default(1) == null", {"note": None}) == (True, None, None)


def test_equality_converts_types_as_jsonlogic_does() -> None:
    # An id written as text matches the number Stockaj sends: what a rule author means.
    assert _verdict('data.id == "42"', {"id": 42})[0] is True
    assert _verdict("data.sku == 5", {"sku": "5"})[0] is True
    assert _verdict("data.quantity == 5", {"quantity": 5.0})[0] is True
    assert _verdict('data.status != "returned"', {"status": "returned"})[0] is False
    assert _verdict('data.tags == ["vip"]', {"tags": ["vip"]})[0] is True


def test_equality_between_a_list_and_one_value_is_an_error_not_a_verdict() -> None:
    # `check` warns about it (SPEC section 14): did you mean `"vip" in data.tags`?
    fired, missing, error = _verdict('data.tags == "vip"', {"tags": ["vip"]})
    assert (fired, missing) == (False, None)
    assert error is not None


def test_in_is_list_membership_or_part_of_a_text() -> None:
    assert _verdict('"vip" in data.tags', {"tags": ["vip", "x"]})[0] is True
    assert _verdict('"@acme.com" in data.email', {"email": "a@acme.com"})[0] is True
    assert _verdict("5 in data.tags", {"tags": ["5"]})[0] is False
    assert _verdict('"x" not in data.tags', {"tags": None})[0] is True


def test_truthiness_is_pythons() -> None:
    for falsy in (0, "", [], {}, None, False):
        assert _verdict("not data.v", {"v": falsy})[0] is True
    for truthy in ("0", [0], 1, "no"):
        assert _verdict("data.v", {"v": truthy})[0] is True


def test_plus_on_text_is_arithmetic_and_fails_on_words() -> None:
    assert _verdict('data.a + "2" == 3', {"a": 1})[0] is True
    fired, missing, error = _verdict('data.a + "b" == 3', {"a": "c"})
    assert (fired, missing) == (False, None)
    assert error is not None


def test_all_over_an_empty_list_is_false_as_in_jsonlogic() -> None:
    assert _verdict("all(i.ok for i in data.items)", {"items": []})[0] is False
    assert _verdict("not any(i.ok for i in data.items)", {"items": []})[0] is True


# ---------------------------------------------------------------- explanations


def _explain(text: str, data: dict[str, Any]) -> str:
    compiled = _compiled(text)
    return Condition(compiled.logic, compiled).explain(DeliveryData({"data": data}))


def test_explanations_show_the_expression_with_its_values() -> None:
    assert (
        _explain("data.quantity <= data.minimum_quantity", {"quantity": 3, "minimum_quantity": 5})
        == "data.quantity (3) <= data.minimum_quantity (5) -> true"
    )
    assert (
        _explain(
            'data.status == "overdue" and "vip" in data.renter.tags',
            {"status": "overdue", "renter": {"tags": ["x"]}},
        )
        == '(data.status ("overdue") == "overdue" -> true) and ("vip" in data.renter.tags (["x"]) -> false) -> false'
    )


def test_explanations_keep_the_authors_parentheses_and_skip_what_was_not_evaluated() -> None:
    text = _explain("(data.a > 1 or data.b > 1) and not data.c", {"a": 2, "b": 0, "c": False})
    assert text == "((data.a (2) > 1 -> true) or data.b > 1 -> true) and (not data.c (false) -> true) -> true"


def test_explanations_of_calls_chains_and_several_lines() -> None:
    assert (
        _explain("len(data.items) > 1 or data.total | default(0) > 9", {"items": [1, 2]})
        == "(len(data.items) (2) > 1 -> true) or data.total | default(0) > 9 -> true"
    )
    assert _explain("0 < data.x <= 5", {"x": 3}) == "0 < data.x (3) <= 5 -> true"
    assert (
        _explain('data.s == "a"  # the status\n  and any(i > 1 for i in data.n)', {"s": "a", "n": [2]})
        == '(data.s ("a") == "a" -> true) and (any(i > 1 for i in data.n) -> true) -> true'
    )


def test_long_values_are_cut_short() -> None:
    text = _explain("data.tags == [1]", {"tags": ["x" * 10] * 20})
    assert "…)" in text
    assert len(text) < 160


# ---------------------------------------------------------------- rendering JsonLogic as expressions


@pytest.mark.parametrize(
    ("logic", "expected"),
    [
        ({"==": [{"var": "data.status"}, "returned"]}, 'data.status == "returned"'),
        ({"<": [1, {"var": "data.x"}, 5]}, "1 < data.x < 5"),
        ({"if": [{"var": "data.a"}, 1, {"var": "data.b"}, 2, 3]}, "1 if data.a else 2 if data.b else 3"),
        ({"!!": [{"var": "data.a"}]}, "not not data.a"),
        ({"var": ["data.a"]}, "data.a"),
        ({"and": [{"var": "data.a"}]}, "data.a"),
        # `-0` would compile to the number 0, not to this subtraction (found by the round-trip property).
        ({"==": [{"var": "data.a"}, {"-": [0, 0]}]}, "data.a == 0 - 0"),
        ({"-": [0, {"var": "data.a"}]}, "-data.a"),
    ],
)
def test_jsonlogic_written_by_hand_renders_as_an_expression(logic: Any, expected: str) -> None:
    assert to_expression(logic) == expected


@pytest.mark.parametrize(
    ("logic", "reason"),
    [
        ({"===": [{"var": "data.quantity"}, 0]}, "never converts types"),
        ({"!==": [{"var": "data.a"}, "5"]}, "never converts types"),
        ({"cat": ["a", {"var": "data.b"}]}, "'cat' has no expression form"),
        ({"missing": ["data.a"]}, "'missing' has no expression form"),
        ({"var": "quantity"}, "does not start with one of data"),
        ({"+": [{"var": "data.a"}]}, r"'\+' with 1 values"),
        (
            {"reduce": [{"var": "data.a"}, {"*": [{"var": "accumulator"}, 2]}, 1]},
            "other than a sum or a count",
        ),
        ({"var": ["data.a", {"var": "data.b"}]}, "default that is computed"),
    ],
)
def test_jsonlogic_without_an_expression_form_says_why(logic: Any, reason: str) -> None:
    with pytest.raises(NoExpression, match=reason):
        to_expression(logic)


def test_strict_equality_renders_when_asked() -> None:
    assert to_expression({"===": [{"var": "data.quantity"}, 0]}, strict_equality=True) == "data.quantity == 0"


def test_strict_equality_against_a_word_renders_as_equality() -> None:
    assert to_expression({"===": [{"var": "data.status"}, "returned"]}) == 'data.status == "returned"'


def test_equality_compiles_to_jsonlogic_equality_as_the_spec_says() -> None:
    compiled = compile_expression('data.id == "42" and data.status != "returned"')
    assert not isinstance(compiled, list)
    assert compiled.logic == {
        "and": [{"==": [{"var": "data.id"}, "42"]}, {"!=": [{"var": "data.status"}, "returned"]}]
    }


def test_problem_type_is_exported() -> None:
    found = compile_expression("data.a &&")
    assert isinstance(found, list)
    assert isinstance(found[0], ExpressionProblem)
