"""Compile a condition expression (`data.quantity <= 5`) to standard JsonLogic.

`compile_expression(text)` gives a `CompiledExpression` (the JsonLogic, and for
each JsonLogic node that stands for a piece of the text, that piece's span, so
explanations can show the author's own words with the values), or every
problem found, each located in the text. The syntax tree comes from Python's
parser (engine.language.expressions.syntax); a whitelist of node types is walked and
anything else is refused with what to write instead. Nothing is evaluated.

Choices where Python and JsonLogic read differently (docs/rules.md says the same):
`==` and `!=` compile to JsonLogic's `==` and `!=` (SPEC section 12), which convert
types as JsonLogic does (`"42" == 42` is true, and datalogic also finds `null` equal to
`0`, `""` and `false`); `in` compares without conversion; `all(...)` over an empty list
is false (JsonLogic);
`len(x)` counts the items of a list (standard JsonLogic cannot count a text's characters).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from engine.language.expressions.compiler import Compiler, Invalid
from engine.language.expressions.parts import Part
from engine.language.expressions.syntax import ExpressionProblem, Lines, parse

__all__ = ["CompiledExpression", "ExpressionProblem", "Part", "compile_expression"]


@dataclass(frozen=True, slots=True)
class CompiledExpression:
    """An expression and its JsonLogic; `parts` maps a JSON pointer in `logic` to its `Part`."""

    text: str
    logic: Any
    parts: Mapping[str, Part]


def compile_expression(text: str) -> CompiledExpression | list[ExpressionProblem]:
    """The JsonLogic for `text`, or every problem found in it."""
    tree = parse(text)
    if isinstance(tree, ExpressionProblem):
        return [tree]
    compiler = Compiler(Lines(text))
    try:
        logic = compiler.expr(tree.body, None)
    except Invalid:
        logic = None
    if compiler.problems:
        return sorted(compiler.problems, key=lambda p: p.start)
    if not compiler.reads:
        start, end = compiler.lines.span(tree.body)
        what = _constant_truth(logic)
        return [
            compiler.lines.problem(
                f"this condition reads no field, so it is always {what}; compare a field, such as "
                'data.status == "overdue" (or leave `when` out to fire on every event)',
                start,
                end,
            )
        ]
    return CompiledExpression(text, logic, _pointers(logic, compiler.parts))


def _constant_truth(logic: Any) -> str:
    if isinstance(logic, dict):
        return "the same"
    return "true" if logic else "false"


def _pointers(logic: Any, parts: Mapping[int, Part]) -> dict[str, Part]:
    """Each recorded node's JSON pointer (as datalogic's trace names them)."""
    found: dict[str, Part] = {}
    stack: list[tuple[Any, str]] = [(logic, "")]
    while stack:
        node, pointer = stack.pop()
        if isinstance(node, dict):
            if id(node) in parts:
                found[pointer] = parts[id(node)]
            for key, value in node.items():
                stack.append((value, f"{pointer}/{key.replace('~', '~0').replace('/', '~1')}"))
        elif isinstance(node, list):
            stack.extend((value, f"{pointer}/{index}") for index, value in enumerate(node))
    return found
