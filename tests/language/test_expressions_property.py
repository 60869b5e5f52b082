"""Property tests: compiled expressions agree with a direct reading of the expression.

Random expressions (over every form of the table) and random payloads (fields
of the expected type, of another type, null, or absent): the verdict of the
compiled JsonLogic on the real engine, missing-field guard included, must be
the verdict of tests/expression_reference.py, which reads the Python syntax
tree directly and never calls the compiler. And rendering the compiled
JsonLogic back to an expression and compiling that gives the same JsonLogic.

Run with `--hypothesis-show-statistics` to see the counts of examples and of
each verdict.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from engine.language.conditions import Condition, DeliveryData, Verdict, new_session
from engine.language.expressions import CompiledExpression, compile_expression
from engine.language.expressions.render import to_expression
from tests.examples import examples
from tests.language.expression_reference import verdict as reference_verdict

# The suite runs a few hundred examples (HYPOTHESIS_PROFILE=thorough: 2,000); EXPRESSION_EXAMPLES
# sets any other number.
EXAMPLES = int(os.environ.get("EXPRESSION_EXAMPLES", examples(400, 2000)))
PAYLOADS_PER_EXPRESSION = 6

NUMBERS = st.sampled_from(["0", "1", "2", "3", "5", "10", "-2", "2.5", "0.5"])
TEXTS = st.sampled_from(['"vip"', '"overdue"', '""', '"5"', "'a'", '"a b"'])
LISTS = st.sampled_from(["[1, 2]", '["vip", "x"]', "[]", "[null]", '[5, "5"]', "[[1]]"])
LITERALS = st.one_of(NUMBERS, TEXTS, LISTS, st.sampled_from(["true", "false", "null"]))
PATHS = st.sampled_from(
    [
        "data.a",
        "data.b",
        "data.s",
        "data.flag",
        "data.tags",
        "data.items",
        "data.renter.name",
        "data.renter.tags",
        "data.items[0].q",
        "data.tags[1]",
        'data["a"]',
        "event",
    ]
)
ITEM_PATHS = st.sampled_from(["i.q", "i.name", "i.tags", "i", "i.missing"])
COMPARE = st.sampled_from(["==", "!=", "<", "<=", ">", ">="])
ARITHMETIC = st.sampled_from(["+", "-", "*"])


def _values(paths: st.SearchStrategy[str], depth: int) -> st.SearchStrategy[str]:
    leaf = st.one_of(
        LITERALS,
        paths,
        paths,
        st.builds(lambda p, d: f"({p} | default({d}))", paths, LITERALS),
        st.builds(lambda p: f"len({p})", paths),
        st.builds(lambda p: f"({p} | length)", paths),
    )
    if depth == 0:
        return leaf
    inner = _values(paths, depth - 1)
    return st.one_of(
        leaf,
        st.builds(lambda a, op, b: f"({a} {op} {b})", inner, ARITHMETIC, inner),
        st.builds(
            lambda a, op, b: f"({a} {op} {b})",
            inner,
            st.sampled_from(["/", "%"]),
            NUMBERS.filter(lambda n: float(n) != 0),
        ),
        st.builds(lambda a: f"-{a}", inner),
        st.builds(lambda a, c, b: f"({a} if {c} else {b})", inner, _conditions(paths, depth - 1), inner),
        st.just("sum(i.q for i in data.items)"),
        st.just("sum(data.tags)"),
    )


def _conditions(paths: st.SearchStrategy[str], depth: int) -> st.SearchStrategy[str]:
    values = _values(paths, 0 if depth == 0 else 1)
    leaf = st.one_of(
        st.builds(lambda a, op, b: f"{a} {op} {b}", values, COMPARE, values),
        st.builds(lambda a, o1, b, o2, c: f"{a} {o1} {b} {o2} {c}", values, COMPARE, values, COMPARE, values),
        st.builds(lambda a, b: f"{a} in {b}", values, st.one_of(LISTS, TEXTS, paths)),
        st.builds(lambda a, b: f"{a} not in {b}", values, st.one_of(LISTS, paths)),
        st.builds(lambda p: f"exists({p})", paths),
        paths,
    )
    if paths is ITEM_PATHS:
        return leaf
    item_test = _conditions(ITEM_PATHS, 0)
    lists = st.sampled_from(["data.items", "data.tags", "data.renter", "data.s"])
    leaf = st.one_of(
        leaf,
        st.builds(
            lambda f, t, lst: f"{f}({t} for i in {lst})",
            st.sampled_from(["any", "all", "not any"]),
            item_test,
            lists,
        ),
    )
    if depth == 0:
        return leaf
    inner = _conditions(paths, depth - 1)
    return st.one_of(
        leaf,
        st.builds(lambda a, op, b: f"({a}) {op} ({b})", inner, st.sampled_from(["and", "or"]), inner),
        st.builds(lambda a: f"not ({a})", inner),
    )


EXPRESSIONS = _conditions(PATHS, 2)

_ANY = st.one_of(
    st.sampled_from([None, True, False, 0, 1, 2, 3, 5, 10, -2, 2.5, 0.5]),
    st.sampled_from(["", "vip", "overdue", "5", "a", "a b", "10", "2.5"]),
    st.lists(st.sampled_from([1, 5, "vip", "x", "5", None]), max_size=3),
    st.fixed_dictionaries({}, optional={"q": st.sampled_from([0, 3, 5, "4", None])}),
)


def _field(natural: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly a value of the field's type; sometimes any other value, null, or absent (None key)."""
    return st.one_of(natural, natural, natural, _ANY, st.just(_ABSENT))


_ABSENT = "<absent>"
_ITEM = st.fixed_dictionaries(
    {},
    optional={
        "q": st.sampled_from([0, 1, 3, 5, "4", None]),
        "name": st.sampled_from(["vip", "tent", ""]),
        "tags": st.lists(st.sampled_from(["vip", "x"]), max_size=2),
    },
)
PAYLOADS = st.fixed_dictionaries(
    {
        "a": _field(st.sampled_from([0, 1, 2, 3, 5, 10, -2, 2.5])),
        "b": _field(st.sampled_from([0, 1, 3, 5])),
        "s": _field(st.sampled_from(["vip", "overdue", "", "5", "a b", "a"])),
        "flag": _field(st.booleans()),
        "tags": _field(st.lists(st.sampled_from(["vip", "x", "5", "a"]), max_size=3)),
        "items": _field(st.lists(_ITEM, max_size=3)),
        "renter": _field(
            st.fixed_dictionaries(
                {},
                optional={
                    "name": st.sampled_from(["Zoë", "vip"]),
                    "tags": st.lists(st.sampled_from(["vip", "x"]), max_size=2),
                },
            )
        ),
    }
).map(lambda fields: {key: value for key, value in fields.items() if value != _ABSENT})


def _engine_verdict(compiled: CompiledExpression, data: dict[str, Any]) -> str:
    context = {"event": "item.low_stock", "data": data, "payload": {"data": data}}
    found: Verdict = Condition(compiled.logic, compiled).test(DeliveryData(context), new_session())
    if found.missing_field is not None:
        return f"missing:{found.missing_field}"
    if found.error is not None:
        return "error"
    return "fired" if found.fired else "not_fired"


def _compiled(text: str) -> CompiledExpression | None:
    compiled = compile_expression(text)
    if isinstance(compiled, CompiledExpression):
        return compiled
    # Refused only for what the generator may write and the compiler knows to be wrong.
    for problem in compiled:
        assert any(reason in problem.message for reason in _REFUSALS), (text, compiled)
        event(f"refused: {problem.message.split(';')[0][:40]}")
    return None


_REFUSALS = ("reads no field", "found a list")


@pytest.mark.timeout(max(180, EXAMPLES // 10))
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(EXPRESSIONS, st.lists(PAYLOADS, min_size=PAYLOADS_PER_EXPRESSION, max_size=PAYLOADS_PER_EXPRESSION))
def test_compiled_jsonlogic_gives_the_verdict_of_a_direct_reading(
    text: str, payloads: list[dict[str, Any]]
) -> None:
    compiled = _compiled(text)
    if compiled is None:
        return
    for data in payloads:
        context = {"event": "item.low_stock", "data": data, "payload": {"data": data}}
        expected = reference_verdict(text, context)
        event(f"verdict: {expected.split(':')[0]}")
        assert _engine_verdict(compiled, data) == expected, (text, data, compiled.logic)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(EXPRESSIONS)
def test_expression_to_jsonlogic_to_expression_is_stable(text: str) -> None:
    compiled = _compiled(text)
    if compiled is None:
        return
    rendered = to_expression(compiled.logic)
    again = compile_expression(rendered)
    assert isinstance(again, CompiledExpression), (text, rendered, again)
    assert again.logic == compiled.logic, (text, rendered)
    assert to_expression(again.logic) == rendered
