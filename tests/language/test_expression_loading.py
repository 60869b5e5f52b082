"""Expression conditions in rule files: compiled when rules load, problems at their line and column.

The column of a problem inside an expression depends on how the string is
written in the file: plain, 'single' or "double" quoted, a block scalar (| or
>), or a JSON string, where escapes shift everything after them.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from actions.registry import load_registry
from engine.errors import SourceErrors
from engine.language.delivery import Delivery
from engine.language.loader import load_rules
from engine.language.matching import Matcher
from engine.language.rules import RuleSet
from engine.language.throttle import InMemoryThrottleState
from engine.secrets import Secrets

ACTIONS = "  actions: [{type: log, message: hi}]\n"


def _load(folder: Path, files: dict[str, str]) -> RuleSet:
    for name, text in files.items():
        (folder / name).write_text(text, encoding="utf-8")
    return load_rules(folder, load_registry())


def _problems(folder: Path, files: dict[str, str]) -> list[str]:
    with pytest.raises(SourceErrors) as raised:
        _load(folder, files)
    return [str(problem).removeprefix(f"{folder}/") for problem in raised.value.problems]


def _rule(rule_id: str, when: str) -> str:
    return f"- id: {rule_id}\n  on: item.low_stock\n  when: {when}\n{ACTIONS}"


def test_a_when_string_is_never_a_truthy_constant(tmp_path: Path) -> None:
    # Before expressions, both loaded as the JsonLogic text constant: true on every delivery.
    problems = _problems(
        tmp_path,
        {
            "a.yaml": _rule("template", '"{{ data.quantity }} < 5"') + _rule("prose", "the stock is low"),
        },
    )
    assert problems == [
        "a.yaml:3:10: template: a condition is not a template: write the expression without {{ }}, "
        "such as data.quantity <= 5",
        "a.yaml:7:9: prose: unexpected 'the stock': words side by side are not a condition; compare with "
        '== != < <= > >= or in, join conditions with and / or, and quote text ("overdue")',
    ]


def _where(tmp_path: Path, name: str, text: str) -> list[tuple[int, int]]:
    problems = _problems(tmp_path, {name: text})
    return [(int(p.split(":")[1]), int(p.split(":")[2])) for p in problems]


@pytest.mark.parametrize(
    ("when", "line", "column"),
    [
        ("data.status == overdue", 3, 24),  # plain
        ("'data.name == ''it''''s'' and overdue'", 3, 39),  # single quotes, '' for '
        ('"data.name == \\"Zoë\\" and overdue"', 3, 35),  # double quotes with escapes
        ("\"data.name == '\\u00e9' and overdue\"", 3, 36),  # \\u00e9 is one character of the value
        ('"data.name == \\"\\U0001F600\\" or \\\n    overdue"', 4, 5),  # escaped line break
        ('|\n    data.status == "overdue"\n      and overdue', 5, 11),  # block, kept lines
        ('>\n    data.status == "overdue"\n    and overdue', 5, 9),  # block, folded lines
        ('data.status == "overdue"\n    and overdue', 4, 9),  # plain over two lines
        ("|  # a comment after the indicator\n    data.x > 1 and overdue", 4, 20),
    ],
)
def test_problems_point_inside_yaml_strings(tmp_path: Path, when: str, line: int, column: int) -> None:
    assert _where(tmp_path, "r.yaml", _rule("r", when)) == [(line, column)]


def test_problems_point_inside_json_strings_after_escapes(tmp_path: Path) -> None:
    text = (
        '[{"id": "j", "on": "item.low_stock", "actions": [{"type": "log", "message": "hi"}],\n'
        '  "when": "data.name == \\"\\u00e9\\ud83d\\ude00\\\\\\/\\" && data.ok"}]\n'
    )
    line = text.splitlines()[1]
    assert _where(tmp_path, "r.json", text) == [(2, line.index("&&") + 1)]


def test_every_rule_and_every_problem_of_a_file_is_reported(tmp_path: Path) -> None:
    problems = _problems(
        tmp_path,
        {"a.yaml": _rule("one", "status == overdue") + _rule("two", "data.x => 1")},
    )
    assert [p.split(": ", 2)[0:2] for p in problems] == [
        ["a.yaml:3:9", "one"],
        ["a.yaml:3:19", "one"],
        ["a.yaml:7:16", "two"],
    ]


def test_the_compiled_jsonlogic_is_what_runs(tmp_path: Path) -> None:
    rules = _load(tmp_path, {"a.yaml": _rule("low", "data.quantity <= data.minimum_quantity")})
    condition = rules.rules[0].condition
    assert condition is not None
    assert condition.logic == {"<=": [{"var": "data.quantity"}, {"var": "data.minimum_quantity"}]}


async def _reasons(rules: RuleSet, data: dict[str, object]) -> list[tuple[str, str]]:
    delivery = Delivery("item.low_stock", "d-1", {"timestamp": "2026-03-01T09:00:00Z", "data": data})
    outcomes = await Matcher(rules, InMemoryThrottleState(), Secrets({})).match(delivery)
    return [(outcome.status.value, outcome.reason) for outcome in outcomes]


async def test_explanations_and_the_missing_field_guard_through_the_matcher(tmp_path: Path) -> None:
    rules = _load(tmp_path, {"a.yaml": _rule("low", "data.quantity <= data.minimum_quantity")})
    assert await _reasons(rules, {"quantity": 3, "minimum_quantity": 5}) == [
        ("fired", "data.quantity (3) <= data.minimum_quantity (5) -> true")
    ]
    assert await _reasons(rules, {"quantity": 7, "minimum_quantity": 5}) == [
        ("condition_false", "data.quantity (7) <= data.minimum_quantity (5) -> false")
    ]
    [(status, reason)] = await _reasons(rules, {"minimum_quantity": 5})
    assert status == "field_missing"
    assert reason.startswith("data.quantity is missing from the delivery")
