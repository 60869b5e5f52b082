"""`conditions --rewrite`: every JsonLogic form with an expression, in every way a file can hold it,
is rewritten so that the file loads to the same rules, and nothing else in the file changes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from actions.registry import load_registry
from engine.errors import SourceProblem
from engine.language.condition_rewrite import Rewrite, rewrite_conditions
from engine.language.expressions import CompiledExpression, compile_expression
from engine.language.expressions.render import to_expression
from engine.language.loader import load_file
from tests.language.test_expressions import FORMS

ACTIONS = '[{"type": "log", "message": "x"}]'
TRICKY_TEXTS = ["a #b", "it's", 'say "hi"', "x: y", "- z", "{{ data.x }}", "back\\slash", "tab\there", "ü €"]


def _layouts(logic: Any) -> dict[str, str]:
    """The same rule as a YAML block, a YAML flow mapping, a YAML list item, and JSON."""
    flow = json.dumps(logic, ensure_ascii=False)
    block = "\n".join(f"  {line}" for line in json.dumps(logic, indent=2).splitlines())
    return {
        "block.yaml": f"# a comment\nid: r  # the id\non: x\nwhen:\n{block}\nactions: {ACTIONS}\n",
        "flow.yaml": f"- {{id: r, on: x, when: {flow}, actions: {ACTIONS}}}\n",
        "item.yaml": f"- id: r\n  when: {flow}   # why\n  on: x\n  actions: {ACTIONS}\n",
        "rule.json": f'{{\n  "id": "r",\n  "when": {flow},\n  "on": "x",\n  "actions": {ACTIONS}\n}}\n',
    }


def _rewritten(tmp_path: Path, name: str, text: str) -> tuple[Rewrite, Any]:
    result = rewrite_conditions(text, name, yaml_syntax=not name.endswith(".json"))
    assert not isinstance(result, SourceProblem), result
    path = tmp_path / name
    path.write_text(result.text, encoding="utf-8")
    loaded = load_file(path, load_registry())
    assert loaded.problems == (), loaded.problems
    ((rule, _),) = loaded.rules
    return result, rule


CASES = [logic for _, logic in FORMS] + [{"==": [{"var": "data.note"}, text]} for text in TRICKY_TEXTS]


@pytest.mark.parametrize("logic", CASES, ids=[json.dumps(logic)[:60] for logic in CASES])
def test_every_layout_rewrites_to_a_condition_that_compiles_the_same(tmp_path: Path, logic: Any) -> None:
    for name, text in _layouts(logic).items():
        result, rule = _rewritten(tmp_path, name, text)
        assert result.rewritten == ["r"], (name, result.kept)
        assert rule.condition is not None
        assert rule.condition.expression is not None, (name, result.text)
        expected = compile_expression(to_expression(logic, quote="'" if name.endswith(".json") else '"'))
        assert isinstance(expected, CompiledExpression)
        assert rule.condition.logic == expected.logic, name
        assert rule.condition.expression.text == expected.text, name


def test_only_the_condition_changes_and_its_comments_move_above_it(tmp_path: Path) -> None:
    text = (
        "# head\n- id: r   # keep\n  on: x\n  when:  # why\n    and:\n      - var: data.a  # first\n"
        "      - var: data.b\n  # tail\n  actions: " + ACTIONS + "\n"
    )
    result, _ = _rewritten(tmp_path, "r.yaml", text)
    assert result.text == (
        "# head\n- id: r   # keep\n  on: x\n  # first\n  when: data.a and data.b  # why\n  # tail\n"
        "  actions: " + ACTIONS + "\n"
    )


def test_windows_line_ends_stay_windows_line_ends(tmp_path: Path) -> None:
    text = "id: r\r\non: x\r\nwhen:\r\n  and:  # c\r\n    - var: data.a\r\n    - var: data.b  # d\r\nactions: []\r\n"
    result, _ = _rewritten(tmp_path, "r.yaml", text.replace("[]", ACTIONS))
    assert (
        result.text == "id: r\r\non: x\r\n# c\r\nwhen: data.a and data.b  # d\r\nactions: " + ACTIONS + "\r\n"
    )


def test_a_condition_without_an_expression_form_and_an_alias_stay_with_the_reason() -> None:
    text = (
        "- id: cat\n  on: x\n  when: {cat: [a, {var: data.a}]}\n  actions: []\n"
        "- id: shared\n  on: x\n  when: &low {'<': [{var: data.q}, 3]}\n  actions: []\n"
        "- id: again\n  on: x\n  when: *low\n  actions: []\n"
    )
    result = rewrite_conditions(text, "r.yaml", yaml_syntax=True)
    assert isinstance(result, Rewrite)
    assert result.text == text
    assert result.rewritten == []
    assert [str(problem) for problem in result.kept] == [
        "r.yaml:3:3: cat: kept in JsonLogic: JsonLogic's 'cat' has no expression form; keep this condition in JsonLogic",
        "r.yaml:7:3: shared: kept in JsonLogic: its condition is a YAML anchor or alias; rewrite it by hand",
        "r.yaml:11:3: again: kept in JsonLogic: its condition is a YAML anchor or alias; rewrite it by hand",
    ]
