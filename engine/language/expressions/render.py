"""Write a JsonLogic condition as an expression, for the conditions that have one.

`to_expression(logic)` is the reverse of engine.language.expressions: compiling its
result gives JsonLogic that means the same. It raises `NoExpression`, saying
why, for the conditions that have no expression form:

- operators with no counterpart: `cat`, `substr`, `min`, `max`, `merge`, `map`,
  `filter`, `missing`, `missing_some`, and `reduce` other than a sum or a count;
- reads of a path that does not start with a context name (`data`, `payload`,
  `event`, `timestamp`, `delivery_id`), or of a whole item scope from outside;
- `+` or `*` with one value (a conversion to a number), `if` with one value;
- JsonLogic's strict `===` / `!==`, which never convert types where an expression's
  `==` does (it compiles to JsonLogic's `==`): rendered as `==` / `!=` only when one
  side is a text that no conversion can match (`"returned"`), or when
  `strict_equality=True` (then the caller must say that the meaning changed for
  values of other types).
"""

from __future__ import annotations

import json
import keyword
import math
from typing import Any

from engine.language.expressions.hints import CONTEXT_NAMES

# Python's precedence, loosest first: what needs parentheses where.
_IF, _OR, _AND, _NOT, _COMPARE, _FILTER, _ADD, _MUL, _UNARY, _ATOM = range(10)
_COMPARISONS = {"==": "==", "!=": "!=", "<": "<", "<=": "<=", ">": ">", ">=": ">=", "in": "in"}
_ARITHMETIC = {"+": _ADD, "-": _ADD, "*": _MUL, "/": _MUL, "%": _MUL}
_NO_FORM = ("cat", "substr", "min", "max", "merge", "map", "filter", "missing", "missing_some")


class NoExpression(ValueError):
    """The condition has no expression form; the message says why."""


def to_expression(logic: Any, *, strict_equality: bool = False, quote: str = '"') -> str:
    """`logic` written as an expression; raises `NoExpression`.

    `quote="'"` writes text in single quotes where it can (`'returned'`): easier to read
    inside a JSON string, where a double quote needs a backslash.
    """
    return _Renderer(strict_equality, quote).render(logic, None)[0]


class _Renderer:
    def __init__(self, strict_equality: bool, quote: str = '"') -> None:
        self.strict_equality = strict_equality
        self.quote = quote

    def render(self, logic: Any, scope: tuple[str, str] | None) -> tuple[str, int]:
        """(text, precedence); `scope` is (loop variable, JsonLogic prefix) inside any/all/sum."""
        if isinstance(logic, list):
            return f"[{', '.join(self.operand(item, scope, _IF) for item in logic)}]", _ATOM
        if not isinstance(logic, dict):
            return _literal(logic, self.quote), (
                _UNARY if isinstance(logic, int | float) and logic < 0 else _ATOM
            )
        if len(logic) != 1:
            raise NoExpression("an object with several keys is not a JsonLogic operation")
        ((op, args),) = logic.items()
        items = args if isinstance(args, list) else [args]
        if op == "var":
            return self.read(items, scope), (_FILTER if len(items) == 2 else _ATOM)
        if op in _COMPARISONS or op in ("===", "!=="):
            return self.compare(op, items, scope)
        if op in ("and", "or"):
            return self.boolean(op, items, scope)
        if op in ("!", "!!") and len(items) == 1:
            return self.negate(op, items[0], scope)
        if op in _ARITHMETIC:
            return self.arithmetic(op, items, scope)
        if op == "if":
            return self.choose(items, scope)
        if op in ("some", "all", "none") and len(items) == 2:
            return self.list_test(op, items, scope)
        if op == "reduce" and len(items) == 3:
            return self.reduce(items, scope)
        if op in _NO_FORM:
            raise NoExpression(f"JsonLogic's '{op}' has no expression form; keep this condition in JsonLogic")
        raise NoExpression(f"'{op}' with these arguments has no expression form")

    def operand(self, logic: Any, scope: tuple[str, str] | None, needed: int) -> str:
        text, precedence = self.render(logic, scope)
        return f"({text})" if precedence < needed else text

    def read(self, items: list[Any], scope: tuple[str, str] | None) -> str:
        if not items or not isinstance(items[0], str):
            raise NoExpression("a var whose path is not a text has no expression form")
        if len(items) > 2:
            raise NoExpression("a var with more than a path and a default has no expression form")
        path = _path(items[0], scope)
        if len(items) == 2:
            return f"{path} | default({_written(items[1], self.quote)})"
        return path

    def compare(self, op: str, items: list[Any], scope: tuple[str, str] | None) -> tuple[str, int]:
        if op == "!==" and len(items) == 2 and items[1] is None and _is_default_null_read(items[0]):
            return f"exists({_path(items[0]['var'][0], scope)})", _ATOM
        if op in ("===", "!=="):
            if not (self.strict_equality or any(_unconvertible_text(item) for item in items[:2])):
                raise NoExpression(
                    f"JsonLogic's '{op}' never converts types and an expression's '{op[:2]}' does "
                    f"(\"5\" == 5 is true); write '{op[:2]}' in the JsonLogic if that is meant, or keep it"
                )
            op = op[:2]
        if len(items) == 3 and op in ("<", "<="):
            a, b, c = (self.operand(item, scope, _FILTER) for item in items)
            return f"{a} {op} {b} {op} {c}", _COMPARE
        if len(items) != 2:
            raise NoExpression(f"'{op}' with {len(items)} values has no expression form")
        left, right = (self.operand(item, scope, _FILTER) for item in items)
        return f"{left} {_COMPARISONS[op]} {right}", _COMPARE

    def boolean(self, op: str, items: list[Any], scope: tuple[str, str] | None) -> tuple[str, int]:
        if not items:
            raise NoExpression(f"'{op}' with no values has no expression form")
        level = _AND if op == "and" else _OR
        if len(items) == 1:
            return self.render(items[0], scope)
        return f" {op} ".join(self.operand(item, scope, level + 1) for item in items), level

    def negate(self, op: str, item: Any, scope: tuple[str, str] | None) -> tuple[str, int]:
        inside = item.get("in") if op == "!" and isinstance(item, dict) and len(item) == 1 else None
        if isinstance(inside, list) and len(inside) == 2:
            left, right = (self.operand(value, scope, _FILTER) for value in inside)
            return f"{left} not in {right}", _COMPARE
        text = self.operand(item, scope, _NOT)
        return (f"not {text}" if op == "!" else f"not not {text}"), _NOT

    def arithmetic(self, op: str, items: list[Any], scope: tuple[str, str] | None) -> tuple[str, int]:
        level = _ARITHMETIC[op]
        # `-x` compiles to `0 - x`, but `-5` to the number -5: a number keeps its subtraction.
        negated = len(items) == 2 and _is_zero(items[0]) and not _is_number(items[1])
        if op == "-" and (len(items) == 1 or negated):
            return f"-{self.operand(items[-1], scope, _UNARY)}", _UNARY
        if len(items) < 2 or (len(items) > 2 and op not in ("+", "*")):
            raise NoExpression(f"'{op}' with {len(items)} values has no expression form")
        first = self.operand(items[0], scope, level)
        rest = [self.operand(item, scope, level + 1) for item in items[1:]]
        return f" {op} ".join([first, *rest]), level

    def choose(self, items: list[Any], scope: tuple[str, str] | None) -> tuple[str, int]:
        if len(items) < 2:
            raise NoExpression("'if' with one value has no expression form")
        if len(items) == 2:
            items = [*items, None]
        test, body, rest = items[0], items[1], items[2:]
        orelse = self.operand(rest[0] if len(rest) == 1 else {"if": rest}, scope, _IF)
        return f"{self.operand(body, scope, _OR)} if {self.operand(test, scope, _OR)} else {orelse}", _IF

    def list_test(self, op: str, items: list[Any], scope: tuple[str, str] | None) -> tuple[str, int]:
        name = _loop_name(scope)
        source = self.operand(items[0], scope, _OR)
        body = self.operand(items[1], (name, ""), _IF)
        call = f"{'any' if op != 'all' else 'all'}({body} for {name} in {source})"
        return (f"not {call}", _NOT) if op == "none" else (call, _ATOM)

    def reduce(self, items: list[Any], scope: tuple[str, str] | None) -> tuple[str, int]:
        source, step, start = items
        added = step.get("+") if isinstance(step, dict) and len(step) == 1 else None
        if start != 0 or not (isinstance(added, list) and len(added) == 2):
            raise NoExpression("a reduce other than a sum or a count has no expression form")
        rest = [item for item in added if item != {"var": "accumulator"}]
        if len(rest) != 1:
            raise NoExpression("a reduce other than a sum or a count has no expression form")
        if rest[0] == 1:
            return f"len({self.render(source, scope)[0]})", _ATOM
        name = _loop_name(scope)
        body = self.operand(rest[0], (name, "current"), _IF)
        return f"sum({body} for {name} in {self.operand(source, scope, _OR)})", _ATOM


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_zero(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value == 0


def _loop_name(scope: tuple[str, str] | None) -> str:
    if scope is None:
        return "item"
    return f"item{int(scope[0].removeprefix('item') or 1) + 1}"


def _path(path: str, scope: tuple[str, str] | None) -> str:
    keys = path.split(".") if path else []
    if scope is not None:
        name, prefix = scope
        if prefix:
            if not keys or keys[0] != prefix:
                raise NoExpression(f"'{path}' inside a reduce has no expression form")
            keys = keys[1:]
        return name + "".join(_key(key) for key in keys)
    if not keys or keys[0] not in CONTEXT_NAMES:
        raise NoExpression(f"reads '{path}', which does not start with one of {', '.join(CONTEXT_NAMES)}")
    return keys[0] + "".join(_key(key) for key in keys[1:])


def _key(key: str) -> str:
    if key.isdigit() and (key == "0" or not key.startswith("0")):
        return f"[{key}]"
    if not key:
        raise NoExpression("a path with an empty part ('data..x') has no expression form")
    if key.isascii() and key.isidentifier() and not keyword.iskeyword(key):
        return f".{key}"
    return f"[{json.dumps(key, ensure_ascii=False)}]"


def _literal(value: Any, quote: str = '"') -> str:
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    if isinstance(value, float) and not math.isfinite(value):
        raise NoExpression("an infinite number has no expression form")
    if isinstance(value, str) and quote == "'" and value.isprintable() and not set("'\\") & set(value):
        return f"'{value}'"
    if isinstance(value, int | float | str):
        return json.dumps(value, ensure_ascii=False)
    raise NoExpression(f"the value {json.dumps(value)[:40]} has no expression form")


def _written(value: Any, quote: str = '"') -> str:
    """A default: a written-out value, or a list of them."""
    if isinstance(value, list):
        return f"[{', '.join(_written(item, quote) for item in value)}]"
    if isinstance(value, dict):
        raise NoExpression("a default that is computed has no expression form; write a value")
    return _literal(value, quote)


def _is_default_null_read(logic: Any) -> bool:
    if not (isinstance(logic, dict) and list(logic) == ["var"]):
        return False
    args = logic["var"]
    return isinstance(args, list) and len(args) == 2 and isinstance(args[0], str) and args[1] is None


def _unconvertible_text(value: Any) -> bool:
    """A text that JsonLogic's `==` can only find equal to the same text."""
    if not isinstance(value, str) or not value.strip():
        return False
    try:
        float(value)
    except ValueError:
        return value.strip().lower() not in ("true", "false", "null", "nan", "infinity", "-infinity")
    return False
