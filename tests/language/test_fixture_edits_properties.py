"""Property: rewriting a fixture's `expect` changes that and nothing else, in YAML and in JSON.

Random fixture files (payloads with awkward text, numbers, nesting; with or without an
old `expect`; several fixtures a file; block YAML at two indentations, JSON at two) get
a random new `expect` through `edit_text`. Read back with the project's own reader, every
fixture is exactly what it was but for `expect`, which is exactly the planned one.
"""

from __future__ import annotations

import json
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.language.fixture_edits import EXPECT_KEYS, Entry, NewExpect, edit_text, plain
from engine.language.sources import SourceDocument, parse_text

EDITS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])

_text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), max_size=12) | st.sampled_from(
    [
        "yes",
        "no",
        "on",
        "7",
        "010",
        "1_000",
        "2026-03-01",
        "null",
        "~",
        "a: b",
        "- x",
        "#",
        "' q",
        '"',
        "TENT-4P",
    ]
)
_scalar = _text | st.integers(-(2**40), 2**40) | st.booleans() | st.none()
_value = st.recursive(
    _scalar,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.sampled_from(["id", "sku", "q", "on"]), inner, max_size=3)
    ),
    max_leaves=8,
)
_rule = st.sampled_from(["reorder", "rental-to-slack", "vip", "on", "yes"])
_not_fired = st.fixed_dictionaries(
    {"rule": _rule, "because": st.sampled_from(["event", "disabled", "throttled", "condition", "missing"])}
)
_action = st.fixed_dictionaries(
    {"rule": _rule, "type": st.sampled_from(["slack", "log", "http"])},
    optional={
        "params": st.dictionaries(st.sampled_from(["text", "quantity", "json", "on"]), _value, max_size=3)
    },
)
_old_expect = st.none() | st.fixed_dictionaries(
    {}, optional={"fired": st.lists(_rule, max_size=3), "not_fired": st.lists(_rule | _not_fired, max_size=3)}
)
_fixture = st.fixed_dictionaries(
    {"name": _text, "event": st.just("item.low_stock"), "payload": st.fixed_dictionaries({"data": _value})}
)


@st.composite
def _plans(draw: st.DrawFn, old: Any) -> NewExpect:
    """A new expect: some old entries kept (in order), some rewritten in place, new ones after."""
    plan: NewExpect = {}
    for key in EXPECT_KEYS:
        old_items = old.get(key, []) if isinstance(old, dict) else []
        entries = []
        for index, item in enumerate(old_items):
            choice = draw(st.sampled_from(["keep", "rewrite", "drop"]))
            if choice == "keep":
                entries.append(Entry(item, index, kept=True))
            elif choice == "rewrite":
                entries.append(Entry(draw(_not_fired) if key == "not_fired" else draw(_rule), index))
        strategy = {"fired": _rule, "errors": _rule, "not_fired": _not_fired, "actions": _action}[key]
        entries += [Entry(value) for value in draw(st.lists(strategy, max_size=2))]
        plan[key] = entries
    return plan


@st.composite
def _files(draw: st.DrawFn) -> tuple[list[dict[str, Any]], dict[int, NewExpect]]:
    fixtures = []
    for fixture in draw(st.lists(_fixture, min_size=1, max_size=3)):
        old = draw(_old_expect)
        fixtures.append({**fixture, **({"expect": old} if old is not None else {})})
    chosen = draw(st.sets(st.integers(0, len(fixtures) - 1), min_size=1))
    return fixtures, {index: draw(_plans(fixtures[index].get("expect"))) for index in chosen}


def _read(text: str, *, yaml_syntax: bool) -> list[Any]:
    document = parse_text(text, "f", yaml_syntax=yaml_syntax)
    assert isinstance(document, SourceDocument), document
    value = document.value
    return value if isinstance(value, list) else [value]


def _expected(fixtures: list[dict[str, Any]], plans: dict[int, NewExpect]) -> list[Any]:
    out = []
    for index, fixture in enumerate(fixtures):
        if index in plans:
            fixture = {**fixture, "expect": plain(plans[index], fixture.get("expect"))}
        out.append(fixture)
    return out


def _same(a: Any, b: Any) -> bool:
    return json.dumps(a, ensure_ascii=False) == json.dumps(b, ensure_ascii=False)


@EDITS
@given(_files(), st.sampled_from([2, 4]), st.booleans())
def test_a_yaml_rewrite_changes_only_the_planned_expectations(
    case: tuple[list[dict[str, Any]], dict[int, NewExpect]], indent: int, one: bool
) -> None:
    fixtures, plans = case
    document: Any = fixtures[0] if one else fixtures
    plans = {0: plans[min(plans)]} if one else plans
    text = yaml.safe_dump(
        document, default_flow_style=False, allow_unicode=True, indent=indent, sort_keys=False
    )
    original = _read(text, yaml_syntax=True)  # the project's reading of what PyYAML wrote

    after = edit_text(text, plans, yaml_syntax=True)

    assert _same(_read(after, yaml_syntax=True), _expected(original, plans)), after


@EDITS
@given(_files(), st.sampled_from([2, 4, "\t"]))
def test_a_json_rewrite_changes_only_the_planned_expectations_and_keeps_key_order(
    case: tuple[list[dict[str, Any]], dict[int, NewExpect]], indent: int | str
) -> None:
    fixtures, plans = case
    text = json.dumps(fixtures, indent=indent, ensure_ascii=False) + "\n"

    after = edit_text(text, plans, yaml_syntax=False)

    assert _same(_read(after, yaml_syntax=False), _expected(fixtures, plans)), after
    untouched = [i for i in range(len(fixtures)) if i not in plans]
    assert all(_same(json.loads(after)[i], fixtures[i]) for i in untouched)
