"""A direct reading of a condition expression, for the property tests: no JsonLogic involved.

It walks Python's syntax tree of the expression and computes the verdict with
the semantics docs/rules.md gives expressions, written independently of the
compiler (engine.language.expressions is not imported): if the compiled JsonLogic ever
disagrees with this reading, one of the two is wrong.

The semantics, in short: a field read that cannot be reached stops the rule
(verdict "missing:<path>"), except with `| default(v)`, in `exists(...)`, and
inside any/all/sum (where it reads as null); `==` and `in` never convert
types; `< <= > >=` compare two texts by code point and anything else as
numbers (null is 0, true 1, numeric text its number, other text an error, but
false against true/false/null);
arithmetic converts the same way, a sum (or product) reads all its terms
before adding them, `/` and `%` by zero are errors and `%` keeps the sign of
the dividend; truthiness is Python's; any/all/sum/len see a list's items, an
object's values, and nothing in any other value; `all` of nothing is false.
"""

from __future__ import annotations

import ast
import math
import re
from typing import Any

CONTEXT = ("data", "payload", "event", "timestamp", "delivery_id")
_NUMBER = re.compile(r"-?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")
_UNREACHABLE = object()


class Missing(Exception):
    def __init__(self, path: str) -> None:
        self.path = path


class Failed(Exception):
    """The condition cannot be worked out (a value that is not a number, a division by zero)."""


def verdict(text: str, context: dict[str, Any]) -> str:
    """ "fired", "not_fired", "missing:<path>" or "error"."""
    tree = ast.parse(f"(\n{text}\n)", mode="eval")
    try:
        return "fired" if truthy(_Reader(context).value(tree.body, {})) else "not_fired"
    except Missing as missing:
        return f"missing:{missing.path}"
    except Failed:
        return "error"


def truthy(value: Any) -> bool:
    return bool(value)


def same(a: Any, b: Any) -> bool:
    """Equality without conversion: 1 == 1.0, but "1" != 1, true != 1, null != 0."""
    if _is_number(a) and _is_number(b):
        return bool(a == b)
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return bool(a == b)


def loose_equal(a: Any, b: Any) -> bool:
    """JsonLogic's `==` as the engine's datalogic computes it, which converts types.

    Numbers and numeric text compare as numbers, true/false as 1/0; null equals null,
    0, "" and false; text that is not a number cannot be compared with a number (an
    error), nor can a list or object with anything but an equal list (an error), and
    two objects are never equal.
    """
    if isinstance(a, list | dict) or isinstance(b, list | dict):
        if isinstance(a, list) and isinstance(b, list) and same(a, b):
            return True
        if isinstance(a, dict) and isinstance(b, dict) and not a and not b:
            return False
        raise Failed("a list or object compared with ==")
    if a is None or b is None:
        other = b if a is None else a
        return other is None or other is False or other == "" or (_is_number(other) and other == 0)
    if isinstance(a, str) and isinstance(b, str):
        return a == b
    if isinstance(a, bool) and isinstance(b, bool):
        return a == b
    if isinstance(a, str) or isinstance(b, str):
        text, other = (a, b) if isinstance(a, str) else (b, a)
        if isinstance(other, bool):
            return False
        if not _NUMBER.fullmatch(text):
            raise Failed(f"text {text!r} compared with a number")
        return float(text) == float(other)
    return number(a) == number(b)


def number(value: Any) -> float:
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if _is_number(value):
        return float(value)
    if value is None or value == "":
        return 0.0
    if isinstance(value, str) and _NUMBER.fullmatch(value):
        return float(value)
    raise Failed(f"not a number: {value!r}")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _items(value: Any) -> list[Any]:
    if isinstance(value, list):
        return value
    return list(value.values()) if isinstance(value, dict) else []


def _walk(value: Any, keys: list[str]) -> Any:
    for key in keys:
        if isinstance(value, dict) and key in value:
            value = value[key]
        elif isinstance(value, list) and key.isdigit() and int(key) < len(value):
            value = value[int(key)]
        else:
            return _UNREACHABLE
    return value


class _Reader:
    def __init__(self, context: dict[str, Any]) -> None:
        self.context = context

    def value(self, node: ast.expr, scope: dict[str, Any]) -> Any:
        method = getattr(self, f"_{type(node).__name__}")
        return method(node, scope)

    def path(self, node: ast.expr) -> tuple[str, list[str]]:
        keys: list[str] = []
        while not isinstance(node, ast.Name):
            if isinstance(node, ast.Attribute):
                keys.insert(0, node.attr)
                node = node.value
            else:
                assert isinstance(node, ast.Subscript)
                assert isinstance(node.slice, ast.Constant)
                keys.insert(0, str(node.slice.value))
                node = node.value
        return node.id, keys

    def read(self, node: ast.expr, scope: dict[str, Any]) -> Any:
        """The field's value, or _UNREACHABLE."""
        name, keys = self.path(node)
        if name in scope:
            return _walk(scope[name], keys)
        assert name in CONTEXT, name
        return _walk(self.context, [name, *keys])

    def guarded(self, node: ast.expr, scope: dict[str, Any]) -> Any:
        found = self.read(node, scope)
        if found is not _UNREACHABLE:
            return found
        if scope:  # inside any/all/sum: an absent field is null
            return None
        name, keys = self.path(node)
        raise Missing(".".join([name, *keys]))

    def _Name(self, node: ast.Name, scope: dict[str, Any]) -> Any:
        literals = {"true": True, "false": False, "null": None}
        return literals[node.id] if node.id in literals else self.guarded(node, scope)

    _Attribute = _Subscript = guarded

    def _Constant(self, node: ast.Constant, scope: dict[str, Any]) -> Any:
        return node.value

    def _List(self, node: ast.List, scope: dict[str, Any]) -> Any:
        return [self.value(item, scope) for item in node.elts]

    def _Compare(self, node: ast.Compare, scope: dict[str, Any]) -> Any:
        left = self.value(node.left, scope)
        for op, right_node in zip(node.ops, node.comparators, strict=True):
            right = self.value(right_node, scope)
            if not _compare(op, left, right):
                return False
            left = right
        return True

    def _BoolOp(self, node: ast.BoolOp, scope: dict[str, Any]) -> Any:
        result: Any = None
        for operand in node.values:
            result = self.value(operand, scope)
            if truthy(result) != isinstance(node.op, ast.And):
                return result
        return result

    def _UnaryOp(self, node: ast.UnaryOp, scope: dict[str, Any]) -> Any:
        if isinstance(node.op, ast.Not):
            return not truthy(self.value(node.operand, scope))
        assert isinstance(node.op, ast.USub)
        return -number(self.value(node.operand, scope))

    def _BinOp(self, node: ast.BinOp, scope: dict[str, Any]) -> Any:
        if isinstance(node.op, ast.BitOr):
            return self.filter(node, scope)
        if isinstance(node.op, ast.Add | ast.Mult):
            terms = self.terms(node, type(node.op), scope)
            numbers = [number(term) for term in terms]
            return sum(numbers) if isinstance(node.op, ast.Add) else math.prod(numbers)
        left_value, right_value = self.value(node.left, scope), self.value(node.right, scope)
        left, right = number(left_value), number(right_value)  # both read, then converted
        if isinstance(node.op, ast.Sub):
            return left - right
        if right == 0:
            raise Failed("division by zero")
        return left / right if isinstance(node.op, ast.Div) else math.fmod(left, right)

    def terms(self, node: ast.expr, op: type, scope: dict[str, Any]) -> list[Any]:
        """A sum reads all of its terms first: `a + b + c`."""
        if isinstance(node, ast.BinOp) and type(node.op) is op:
            return [*self.terms(node.left, op, scope), self.value(node.right, scope)]
        return [self.value(node, scope)]

    def filter(self, node: ast.BinOp, scope: dict[str, Any]) -> Any:
        if isinstance(node.right, ast.Name):  # | length
            return _count(self.value(node.left, scope))
        assert isinstance(node.right, ast.Call)
        fallback = self.value(node.right.args[0], {})  # a written-out value
        found = self.read(node.left, scope)
        return fallback if found is _UNREACHABLE else found

    def _IfExp(self, node: ast.IfExp, scope: dict[str, Any]) -> Any:
        chosen = node.body if truthy(self.value(node.test, scope)) else node.orelse
        return self.value(chosen, scope)

    def _Call(self, node: ast.Call, scope: dict[str, Any]) -> Any:
        assert isinstance(node.func, ast.Name)
        name, argument = node.func.id, node.args[0]
        if name == "len":
            return _count(self.value(argument, scope))
        if name == "exists":
            found = self.read(argument, scope)
            return found is not _UNREACHABLE and found is not None
        if not isinstance(argument, ast.GeneratorExp):  # sum(list)
            return sum(number(item) for item in _items(self.value(argument, scope)))
        loop = argument.generators[0]
        assert isinstance(loop.target, ast.Name)
        items = _items(self.value(loop.iter, scope))
        results = (self.value(argument.elt, {loop.target.id: item}) for item in items)
        if name == "sum":
            return sum(number(result) for result in results)
        if name == "all":  # stops at the first item that fails the test
            return bool(items) and all(truthy(result) for result in results)
        return any(truthy(result) for result in results)  # stops at the first that passes


def _count(value: Any) -> int:
    return len(value) if isinstance(value, list | dict) else 0


def _word_against_flag(text: Any, other: Any) -> bool:
    return (
        isinstance(text, str)
        and text != ""
        and not _NUMBER.fullmatch(text)
        and (other is None or isinstance(other, bool))
    )


def _compare(op: ast.cmpop, left: Any, right: Any) -> bool:
    if isinstance(op, ast.Eq | ast.NotEq):
        return loose_equal(left, right) == isinstance(op, ast.Eq)
    if isinstance(op, ast.In | ast.NotIn):
        if isinstance(right, list):
            found = any(same(left, item) for item in right)
        else:
            found = isinstance(right, str) and isinstance(left, str) and left in right
        return found == isinstance(op, ast.In)
    if isinstance(left, str) and isinstance(right, str):
        a: Any = left
        b: Any = right
    elif _word_against_flag(left, right) or _word_against_flag(right, left):
        return False  # JavaScript's NaN: no order between a word and true/false/null
    else:
        a, b = number(left), number(right)
    return {ast.Lt: a < b, ast.LtE: a <= b, ast.Gt: a > b, ast.GtE: a >= b}[type(op)]
