"""What to write instead: the messages for expression parts a condition cannot hold.

The compiler (engine.language.expressions) walks a whitelist of Python syntax; every
other node, operator, call or name ends up here, to be named in words a rule
author knows, with the form that does work.
"""

from __future__ import annotations

import ast

from engine.language.expressions.syntax import Lines

CONTEXT_NAMES = ("data", "payload", "event", "timestamp", "delivery_id")
FUNCTIONS = "len, exists, any, all and sum"
_TEMPLATE_ONLY = {
    "secrets": "conditions cannot read secrets (only actions can)",
    "now": "conditions cannot read the clock; compare timestamp, the delivery's time",
    "item": "item means an item only inside any(... for item in list)",
}
_WORDS = {"and", "or", "not", "in", "is"}
_NODE_HINTS: dict[type[ast.AST], str] = {
    ast.Dict: "objects { } are not available in a condition; compare their fields, such as data.renter.name",
    ast.Set: 'write a list in square brackets: data.category in ["tents", "cameras"]',
    ast.Tuple: 'write a list in square brackets: data.category in ["tents", "cameras"]',
    ast.JoinedStr: 'f-strings are not available; compare with == or in ("vip" in data.renter.tags)',
    ast.ListComp: "write any(test for item in list), such as any(item.quantity > 3 for item in data.items)",
    ast.GeneratorExp: "write any(...), all(...) or sum(...) around `... for item in list`",
    ast.Lambda: "lambda is not available in a condition",
    ast.NamedExpr: "':=' is not available in a condition; to compare write ==",
    ast.Slice: "slices [a:b] are not available; read one item such as data.items[0]",
    ast.Starred: "'*' before a value is not available in a condition",
}
_OPERATORS: dict[type[ast.operator], str] = {
    ast.BitAnd: "unexpected '&': write `and` to join conditions",
    ast.BitXor: "unexpected '^': write != to say one or the other",
    ast.Pow: "unexpected '**': powers are not available; multiply with *",
    ast.FloorDiv: "unexpected '//': write / (JsonLogic has no whole-number division)",
    ast.LShift: "unexpected '<<': compare with <= or <",
    ast.RShift: "unexpected '>>': compare with >= or >",
    ast.MatMult: "unexpected '@': write the text in quotes",
}
_TEXT_METHODS = {"startswith", "endswith", "lower", "upper", "strip", "split", "replace", "count", "find"}


def refusal(node: ast.AST, text: str) -> str:
    """Why `node` cannot be in a condition, and what to write instead."""
    if isinstance(node, ast.Set | ast.Dict) and text[_start(node, text) :].startswith("{{"):
        return "a condition is not a template: write the expression without {{ }}, such as data.quantity <= 5"
    hint = _NODE_HINTS.get(type(node))
    if hint is not None:
        return hint
    if isinstance(node, ast.Constant) and isinstance(node.value, bytes):
        return 'write text in plain quotes, such as "overdue"'
    return (
        f"{describe(node, text)} is not available in a condition; see the expression table in docs/rules.md"
    )


def _start(node: ast.AST, text: str) -> int:
    return Lines(text).span(node)[0]


def describe(node: ast.AST, text: str) -> str:
    """A short quote of the node's text, for messages."""
    start, end = Lines(text).span(node)
    quoted = " ".join(text[start:end].split())
    return f"'{quoted[:40]}…'" if len(quoted) > 40 else f"'{quoted}'"


def unknown_name(name: str, keys: list[str]) -> str:
    """A bare word that is not a context name: a field without `data.`, or unquoted text."""
    if name.lower() in _WORDS:
        return f"unexpected '{name}': write `{name.lower()}` in small letters"
    if name in ("True", "False", "None"):
        return f"{name} is a value and has no fields"
    if name in _TEMPLATE_ONLY:
        return f"unexpected '{name}': {_TEMPLATE_ONLY[name]}"
    if name in ("len", "exists", "any", "all", "sum", "default", "length"):
        return f"'{name}' is a function: write {name}(...), such as len(data.items)"
    path = ".".join([name, *keys])
    names = ", ".join(CONTEXT_NAMES)
    if keys:
        return (
            f"unknown name '{name}': to read the field write data.{path} (fields start with one of {names})"
        )
    return (
        f"unknown name '{name}': to read the field write data.{name}; "
        f'to compare with the text write "{name}" in quotes'
    )


def operator_hint(op: ast.operator) -> str:
    return _OPERATORS.get(type(op), "this operator is not available in a condition")


def call_hint(node: ast.Call, text: str) -> str:
    """A call of anything but len, exists, any, all and sum."""
    func = node.func
    if isinstance(func, ast.Attribute) and func.attr in _TEXT_METHODS:
        return (
            f"text methods such as .{func.attr}() are not available in a condition; "
            'test a part of a text with in: "@example.com" in data.renter.email'
        )
    if isinstance(func, ast.Name) and func.id == "default":
        return "default(...) follows a field after |, such as data.quantity | default(0)"
    if isinstance(func, ast.Name):
        return f"unknown function '{func.id}': the functions are {FUNCTIONS}"
    return f"{describe(func, text)}(...) cannot be called; the functions are {FUNCTIONS}"
