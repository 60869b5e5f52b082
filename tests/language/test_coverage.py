"""`test --coverage`: fixtures per rule, and each and/or operand's outcomes, in the author's words."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from actions.registry import load_registry
from engine.language.conditions import Condition, new_session
from engine.language.coverage import (
    Coverage,
    RuleCoverage,
    _Delivery,
    _skeleton,
    _walk,
    coverage,
    coverage_document,
)
from engine.language.coverage import (
    _operands as operands_of,
)
from engine.language.expectations import replay
from engine.language.expressions import CompiledExpression, compile_expression
from engine.language.fixtures import load_fixtures
from engine.language.loader import load_rules
from tests.language.test_expressions_property import EXPRESSIONS, PAYLOADS

RULES = """\
- id: restock
  on: item.low_stock
  when: data.quantity <= data.minimum_quantity and not data.discontinued | default(false)
  actions: [{type: log, message: restock}]
- id: camera-cancelled
  on: rent.status_changed
  when: data.status == "cancelled" and any(item.category == "cameras" or item.rush for item in data.items)
  actions: [{type: log, message: camera}]
- id: json-written
  on: item.low_stock
  when: {"or": [{"<": [{"var": "data.quantity"}, 1]}, {"in": ["urgent", {"var": ["data.tags", []]}]}]}
  actions: [{type: log, message: urgent}]
- id: always
  on: rent.created
  actions: [{type: log, message: always}]
- id: never-tested
  on: item.updated
  when: data.x == 1
  actions: [{type: log, message: x}]
"""

FIXTURES = """\
- name: low tent
  event: item.low_stock
  payload: {data: {quantity: 2, minimum_quantity: 5}}
- name: plenty
  event: item.low_stock
  payload: {data: {quantity: 9, minimum_quantity: 5, tags: [urgent]}}
- name: no quantity
  event: item.low_stock
  payload: {data: {minimum_quantity: 5}}
- name: cancelled with a camera
  event: rent.status_changed
  payload: {data: {status: cancelled, items: [{category: tents}, {category: cameras}]}}
- name: returned
  event: rent.status_changed
  payload: {data: {status: returned, items: []}}
- name: new rental
  event: rent.created
  payload: {data: {}}
"""


async def _coverage(tmp_path: Path) -> Coverage:
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "r.yaml").write_text(RULES)
    (tmp_path / "f.yaml").write_text(FIXTURES)
    rules = load_rules(tmp_path / "rules", load_registry())
    files, problems = load_fixtures([tmp_path / "f.yaml"])
    assert problems == []
    return coverage(rules, await replay(rules, files, {}))


def _rule(found: Coverage, rule_id: str) -> RuleCoverage:
    return next(r for r in found.rules if r.rule.id == rule_id)


def _operands(rule: RuleCoverage) -> list[tuple[str, dict[str, int]]]:
    return [(o.text, {k: v for k, v in o.tally.document().items() if v}) for o in rule.operands]


async def test_each_operand_of_an_expression_is_counted_in_the_authors_words(tmp_path: Path) -> None:
    restock = _rule(await _coverage(tmp_path), "restock")

    assert [s.fixture.name for s in restock.fired] == ["low tent"]
    assert [(s.fixture.name, s.detail) for s in restock.not_fired] == [
        ("plenty", "condition"),
        ("no quantity", "missing"),
    ]
    assert _operands(restock) == [
        ("data.quantity <= data.minimum_quantity", {"true": 1, "false": 1, "missing": 1}),
        ("not data.discontinued | default(false)", {"true": 1, "not_reached": 2}),
    ]
    assert [o.gaps for o in restock.operands] == [[], ["false"]]


async def test_operands_inside_any_count_every_item(tmp_path: Path) -> None:
    camera = _rule(await _coverage(tmp_path), "camera-cancelled")

    assert _operands(camera) == [
        ('data.status == "cancelled"', {"true": 1, "false": 1}),
        (
            'any(item.category == "cameras" or item.rush for item in data.items)',
            {"true": 1, "not_reached": 1},
        ),
        ('item.category == "cameras"', {"true": 1, "false": 1, "not_reached": 1}),
        ("item.rush", {"false": 1, "not_reached": 1}),
    ]


async def test_a_jsonlogic_condition_is_shown_as_an_expression(tmp_path: Path) -> None:
    written = _rule(await _coverage(tmp_path), "json-written")

    assert written.condition == 'data.quantity < 1 or "urgent" in data.tags | default([])'
    assert _operands(written) == [
        ("data.quantity < 1", {"false": 2, "missing": 1}),
        ('"urgent" in data.tags | default([])', {"true": 1, "false": 1, "not_reached": 1}),
    ]


async def test_the_gaps_name_rules_never_fired_never_kept_from_firing_and_one_sided_operands(
    tmp_path: Path,
) -> None:
    found = await _coverage(tmp_path)

    assert found.never_fired == ["never-tested"]
    # `always` has no condition: no fixture of its event could keep it from firing.
    assert found.never_kept_from_firing == ["never-tested"]
    assert [(r.rule.id, o.text, o.gaps) for r, o in found.operand_gaps()] == [
        ("restock", "not data.discontinued | default(false)", ["false"]),
        (
            "camera-cancelled",
            'any(item.category == "cameras" or item.rush for item in data.items)',
            ["false"],
        ),
        ("camera-cancelled", "item.rush", ["true"]),
        ("json-written", "data.quantity < 1", ["true"]),
    ]


async def test_the_json_document_lists_every_rule_and_the_gaps(tmp_path: Path) -> None:
    document = coverage_document(await _coverage(tmp_path))

    assert document["report"] == "stockaj-rules test --coverage"
    assert document["fixtures"] == 6
    assert [r["id"] for r in document["rules"]] == [
        "restock",
        "camera-cancelled",
        "json-written",
        "always",
        "never-tested",
    ]
    restock = document["rules"][0]
    assert restock["not_fired"][1] == {
        "fixture": "no quantity",
        "file": restock["not_fired"][1]["file"],
        "because": "missing",
    }
    assert restock["operands"][0] == {
        "pointer": "/and/0",
        "operator": "and",
        "text": "data.quantity <= data.minimum_quantity",
        "true": 1,
        "false": 1,
        "missing": 1,
        "error": 0,
        "not_reached": 0,
    }
    assert document["never_fired"] == ["never-tested"]
    assert document["operands_never_true"] == [
        {"rule": "camera-cancelled", "pointer": "/and/1/some/1/or/1", "text": "item.rush"},
        {"rule": "json-written", "pointer": "/or/0", "text": "data.quantity < 1"},
    ]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(EXPRESSIONS, st.lists(PAYLOADS, min_size=3, max_size=3))
def test_operands_worked_out_piece_by_piece_match_a_trace_of_the_whole_condition(
    text: str, payloads: list[dict[str, Any]]
) -> None:
    compiled = compile_expression(text)
    if not isinstance(compiled, CompiledExpression):
        return
    condition = Condition(compiled.logic, compiled)
    skeleton = _skeleton(condition.logic, "")
    event("pieces" if skeleton is not None else "trace only")
    if skeleton is None:
        return
    pointers = frozenset(["", *(o.pointer for o in operands_of(condition))])
    session = new_session()
    for data in payloads:
        context = {"event": "item.low_stock", "data": data, "payload": {"data": data}}
        walked: dict[str, list[str]] = {}
        _walk(skeleton, _Delivery(context, session), walked)
        traced = condition.trace(context, pointers)
        assert {p: walked[p] for p in pointers if p in walked} == traced, (text, data, condition.logic)
