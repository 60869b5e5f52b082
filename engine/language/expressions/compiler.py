"""The walk from a Python syntax tree to JsonLogic, behind engine.language.expressions.

`Compiler.expr` dispatches on a whitelist of node types; any other node is refused with a
hint from engine.language.expressions.hints. Each JsonLogic object it emits is recorded with
the span of the text it stands for (a `Part`, engine.language.expressions.parts), so
explanations show the author's words with values.
"""

from __future__ import annotations

import ast
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from engine.language.expressions.hints import (
    CONTEXT_NAMES,
    call_hint,
    describe,
    operator_hint,
    refusal,
    unknown_name,
)
from engine.language.expressions.parts import Part
from engine.language.expressions.syntax import MAX_DEPTH, TOO_DEEP, ExpressionProblem, Lines

LITERAL_NAMES: Mapping[str, Any] = {"true": True, "false": False, "null": None}
_COMPARISONS: Mapping[type[ast.cmpop], str] = {
    ast.Eq: "==",
    ast.NotEq: "!=",
    ast.Lt: "<",
    ast.LtE: "<=",
    ast.Gt: ">",
    ast.GtE: ">=",
    ast.In: "in",
}
_ARITHMETIC: Mapping[type[ast.operator], str] = {
    ast.Add: "+",
    ast.Sub: "-",
    ast.Mult: "*",
    ast.Div: "/",
    ast.Mod: "%",
}
_MAX_INT = 2**53  # beyond this a number is not exact in JsonLogic
_LIST_TESTS = {"any": "some", "all": "all"}


@dataclass(frozen=True, slots=True)
class _Scope:
    """Inside `any`/`all`/`sum`: the loop variable, and how JsonLogic reads the item."""

    name: str
    prefix: str  # "" for some/all/none (the item is the data), "current" for reduce
    label: str  # "any(...)", for messages
    outer: tuple[str, ...] = ()  # the loop variables around this one, out of reach in JsonLogic


class Invalid(Exception):
    """A node that cannot be compiled; the problem is already recorded."""


class Compiler:
    def __init__(self, lines: Lines) -> None:
        self.lines = lines
        self.problems: list[ExpressionProblem] = []
        self.parts: dict[int, Part] = {}
        self.reads = 0
        self.depth = 0
        self._kept: list[Any] = []  # recorded nodes stay alive, so their ids stay theirs
        self._handlers: dict[type[ast.AST], Callable[[Any, _Scope | None], Any]] = {
            ast.Constant: self._constant,
            ast.Name: self._read,
            ast.Attribute: self._read,
            ast.Subscript: self._read,
            ast.List: self._list,
            ast.Compare: self._compare,
            ast.BoolOp: self._bool,
            ast.UnaryOp: self._unary,
            ast.BinOp: self._binary,
            ast.IfExp: self._if,
            ast.Call: self._call,
        }

    def fail(self, node: ast.AST, message: str) -> Invalid:
        self.problems.append(self.lines.problem(message, *self.lines.span(node)))
        return Invalid()

    def emit(self, node: ast.AST, logic: dict[str, Any], kind: str) -> dict[str, Any]:
        return self.emit_span(self.lines.span(node), logic, kind)

    def emit_span(self, span: tuple[int, int], logic: dict[str, Any], kind: str) -> dict[str, Any]:
        self.parts[id(logic)] = Part(*span, kind)
        self._kept.append(logic)
        return logic

    def expr(self, node: ast.expr, scope: _Scope | None) -> Any:
        handler = self._handlers.get(type(node))
        if handler is None:
            raise self.fail(node, refusal(node, self.lines.text))
        self.depth += 1
        try:
            if self.depth > MAX_DEPTH:
                raise self.fail(node, TOO_DEEP)
            return handler(node, scope)
        finally:
            self.depth -= 1

    def each(self, nodes: list[ast.expr], scope: _Scope | None) -> list[Any]:
        """Compile every node, recording the problems of all before giving up."""
        out, failed = [], False
        for node in nodes:
            try:
                out.append(self.expr(node, scope))
            except Invalid:
                failed = True
        if failed:
            raise Invalid()
        return out

    def test(self, node: ast.expr, scope: _Scope | None) -> Any:
        """An operand of and / or / not: shown with its own verdict when it is a condition."""
        logic = self.expr(node, scope)
        if scope is None and isinstance(node, ast.Compare | ast.Call | ast.UnaryOp | ast.BoolOp):
            part = self.parts.get(id(logic)) if isinstance(logic, dict) else None
            if part is not None:
                self.parts[id(logic)] = Part(part.start, part.end, "test")
        return logic

    # ------------------------------------------------------------ values

    def _constant(self, node: ast.Constant, scope: _Scope | None) -> Any:
        value = node.value
        if isinstance(value, bool) or value is None or isinstance(value, str):
            return value
        if isinstance(value, int) and abs(value) <= _MAX_INT:
            return value
        if isinstance(value, float) and math.isfinite(value):
            return value
        if isinstance(value, int | float):
            raise self.fail(node, f"expected a number of at most {_MAX_INT} in size, found {value:g}")
        raise self.fail(node, refusal(node, self.lines.text))

    def _list(self, node: ast.List, scope: _Scope | None) -> Any:
        return self.each(node.elts, scope)

    def _read(self, node: ast.expr, scope: _Scope | None) -> Any:
        root, keys = self._path(node)
        if root.id in LITERAL_NAMES and not keys:
            return LITERAL_NAMES[root.id]
        path = self._resolve(root, keys, scope)
        return self.emit(node, {"var": path}, "read" if scope is None else "inner")

    def _path(self, node: ast.expr) -> tuple[ast.Name, list[str]]:
        """`data.items[0].sku` -> (the Name `data`, ["items", "0", "sku"])."""
        keys: list[str] = []
        while not isinstance(node, ast.Name):
            if isinstance(node, ast.Attribute):
                keys.append(self._attribute_name(node))
                node = node.value
            elif isinstance(node, ast.Subscript):
                keys.append(self._index(node))
                node = node.value
            else:
                raise self.fail(
                    node,
                    "expected a field such as data.renter.name before '.' or '[', "
                    f"found {describe(node, self.lines.text)}",
                )
        return node, keys[::-1]

    def _attribute_name(self, node: ast.Attribute) -> str:
        if node.attr.isascii():
            return node.attr
        # The parser normalises names (NFKC); payload keys are read as the author wrote them.
        text, end = self.lines.text, self.lines.span(node)[1]
        start = end
        while start > 0 and not text[start - 1].isspace() and text[start - 1] != ".":
            start -= 1
        return text[start:end] or node.attr

    def _index(self, node: ast.Subscript) -> str:
        index = node.slice
        value = index.value if isinstance(index, ast.Constant) else None
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return str(value)
        if isinstance(value, str) and value and "." not in value:
            return value
        if isinstance(value, str) and value:
            raise self.fail(index, "a field name with '.' cannot be read; JsonLogic paths use '.'")
        if isinstance(index, ast.UnaryOp) or isinstance(value, int):
            raise self.fail(index, "expected an item number from 0 (the first item), found a negative one")
        if isinstance(index, ast.Slice):
            raise self.fail(index, "slices [a:b] are not available; read one item such as data.items[0]")
        raise self.fail(index, 'expected an item number such as [0] or a quoted name such as ["from"] in [ ]')

    def _resolve(self, root: ast.Name, keys: list[str], scope: _Scope | None) -> str:
        name = root.id
        if scope is not None and name == scope.name:
            self.reads += 1
            return ".".join([scope.prefix, *keys] if scope.prefix else keys)
        if scope is not None and (name in CONTEXT_NAMES or name in scope.outer):
            raise self.fail(
                root,
                f"inside {scope.label} only {scope.name} and its fields can be read, found {name}; "
                "JsonLogic cannot reach other fields from there: test them outside, joined with and",
            )
        if name in CONTEXT_NAMES:
            self.reads += 1
            return ".".join([name, *keys])
        raise self.fail(root, unknown_name(name, keys))

    # ------------------------------------------------------------ operators

    def _compare(self, node: ast.Compare, scope: _Scope | None) -> Any:
        operands = self.each([node.left, *node.comparators], scope)
        pairs = []
        for index, op in enumerate(node.ops):
            first = node.left if index == 0 else node.comparators[index - 1]
            span = (self.lines.span(first)[0], self.lines.span(node.comparators[index])[1])
            pairs.append(self._pair(span, op, operands[index], operands[index + 1], scope))
        if len(pairs) == 1:
            return pairs[0]
        return self.emit(node, {"and": pairs}, "value")

    def _pair(self, span: tuple[int, int], op: ast.cmpop, left: Any, right: Any, scope: _Scope | None) -> Any:
        kind = "value" if scope is None else "inner"
        if isinstance(op, ast.NotIn):
            return self.emit_span(span, {"!": [{"in": [left, right]}]}, kind)
        operator = _COMPARISONS.get(type(op))
        if operator is None:
            wanted = "!=" if isinstance(op, ast.IsNot) else "=="
            self.problems.append(
                self.lines.problem(
                    f"unexpected 'is': write {wanted} to compare (data.note {wanted} null)", *span
                )
            )
            raise Invalid()
        return self.emit_span(span, {operator: [left, right]}, kind)

    def _bool(self, node: ast.BoolOp, scope: _Scope | None) -> Any:
        operands, failed = [], False
        for value in node.values:
            try:
                operands.append(self.test(value, scope))
            except Invalid:
                failed = True
        if failed:
            raise Invalid()
        return self.emit(node, {"and" if isinstance(node.op, ast.And) else "or": operands}, "value")

    def _unary(self, node: ast.UnaryOp, scope: _Scope | None) -> Any:
        if isinstance(node.op, ast.Not):
            operand = node.operand
            if (
                isinstance(operand, ast.Call)
                and isinstance(operand.func, ast.Name)
                and operand.func.id == "any"
            ):
                return self.emit(node, {"none": self._list_test(operand, scope)}, "value")
            return self.emit(node, {"!": [self.test(operand, scope)]}, "value")
        if isinstance(node.op, ast.USub):
            self.no_list(node.operand)
            value = self.expr(node.operand, scope)
            if isinstance(value, int | float) and not isinstance(value, bool):
                return -value
            # 0 - x: JsonLogic's one-value `-` spreads a list ([1, 2] -> 1 - 2).
            return self.emit(node, {"-": [0, value]}, "value")
        if isinstance(node.op, ast.Invert):
            raise self.fail(node, "unexpected '~': write `not` to negate a condition")
        raise self.fail(node, "unexpected '+' before a value; remove it")

    def _binary(self, node: ast.BinOp, scope: _Scope | None) -> Any:
        if isinstance(node.op, ast.BitOr):
            return self._filter(node, scope)
        operator = _ARITHMETIC.get(type(node.op))
        if operator is None:
            raise self.fail(node, operator_hint(node.op))
        self.no_list(node.left, node.right)
        left, right = self.each([node.left, node.right], scope)
        flattens = isinstance(node.left, ast.BinOp) and type(node.left.op) is type(node.op)
        if operator in ("+", "*") and flattens and isinstance(left, dict):
            return self.emit(node, {operator: [*left[operator], right]}, "value")
        return self.emit(node, {operator: [left, right]}, "value")

    def no_list(self, *nodes: ast.expr) -> None:
        """Arithmetic on a written-out list is never meant (JsonLogic would spread it into arguments)."""
        for node in nodes:
            if isinstance(node, ast.List):
                raise self.fail(node, "expected a number in arithmetic, found a list")

    def _if(self, node: ast.IfExp, scope: _Scope | None) -> Any:
        test, body, orelse = self.each([node.test, node.body, node.orelse], scope)
        return self.emit(node, {"if": [test, body, orelse]}, "value")

    # ------------------------------------------------------------ filters and calls

    def _filter(self, node: ast.BinOp, scope: _Scope | None) -> Any:
        right = node.right
        if isinstance(right, ast.Name) and right.id == "length":
            return self._count(node, node.left, scope)
        if isinstance(right, ast.Call) and isinstance(right.func, ast.Name) and right.func.id == "default":
            if len(right.args) != 1 or right.keywords:
                raise self.fail(right, "expected one value in default(...), such as default(0)")
            if not isinstance(node.left, ast.Name | ast.Attribute | ast.Subscript):
                raise self.fail(node.left, "default(...) follows a field, such as data.quantity | default(0)")
            fallback = self._literal(right.args[0])
            root, keys = self._path(node.left)
            path = self._resolve(root, keys, scope)
            return self.emit(node, {"var": [path, fallback]}, "read" if scope is None else "inner")
        raise self.fail(
            node,
            "after | write default(value) or length, such as data.quantity | default(0); "
            "to join conditions write `or`",
        )

    def _literal(self, node: ast.expr) -> Any:
        """A written-out value (a default): number, text, true/false/null, or a list of those."""
        if isinstance(node, ast.List):
            return [self._literal(item) for item in node.elts]
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            value = self._literal(node.operand)
            if isinstance(value, int | float) and not isinstance(value, bool):
                return -value
        if isinstance(node, ast.Constant):
            return self._constant(node, None)
        if isinstance(node, ast.Name) and node.id in LITERAL_NAMES:
            return LITERAL_NAMES[node.id]
        raise self.fail(
            node, 'expected a written-out value in default(...): a number, "text", true, false, null'
        )

    def _count(self, node: ast.expr, target: ast.expr, scope: _Scope | None) -> Any:
        items = self.expr(target, scope)
        counted = {"reduce": [items, {"+": [{"var": "accumulator"}, 1]}, 0]}
        return self.emit(node, counted, "call" if scope is None else "inner")

    def _call(self, node: ast.Call, scope: _Scope | None) -> Any:
        name = node.func.id if isinstance(node.func, ast.Name) else None
        if name not in ("len", "exists", "any", "all", "sum"):
            raise self.fail(node, call_hint(node, self.lines.text))
        if len(node.args) != 1 or node.keywords or isinstance(node.args[0], ast.Starred):
            raise self.fail(node, f"expected one value in {name}(...), such as {name}(data.items)")
        kind = "call" if scope is None else "inner"
        argument = node.args[0]
        if name == "len":
            return self._count(node, argument, scope)
        if name == "exists":
            if not isinstance(argument, ast.Name | ast.Attribute | ast.Subscript):
                raise self.fail(argument, "expected a field in exists(...), such as exists(data.supplier)")
            root, keys = self._path(argument)
            path = self._resolve(root, keys, scope)
            return self.emit(node, {"!==": [{"var": [path, None]}, None]}, kind)
        if name == "sum" and not isinstance(argument, ast.GeneratorExp):
            items = self.expr(argument, scope)
            return self.emit(node, _sum(items, {"var": "current"}), kind)
        if name == "sum":
            items, body = self._generator(node, "current", scope)
            return self.emit(node, _sum(items, body), kind)
        return self.emit(node, {_LIST_TESTS[name]: self._list_test(node, scope)}, kind)

    def _list_test(self, node: ast.Call, scope: _Scope | None) -> list[Any]:
        if len(node.args) != 1 or node.keywords or not isinstance(node.args[0], ast.GeneratorExp):
            name = node.func.id  # type: ignore[attr-defined]
            raise self.fail(node, f"expected {name}(test for item in list), such as {_EXAMPLE}")
        items, body = self._generator(node, "", scope)
        return [items, body]

    def _generator(self, node: ast.Call, prefix: str, scope: _Scope | None) -> tuple[Any, Any]:
        generator = node.args[0]
        assert isinstance(generator, ast.GeneratorExp)
        name = node.func.id  # type: ignore[attr-defined]
        if len(generator.generators) != 1:
            raise self.fail(generator, f"expected one `for` in {name}(...), such as {_EXAMPLE}")
        loop = generator.generators[0]
        if loop.ifs:
            raise self.fail(loop.ifs[0], f"write the test before `for`, joined with and: {_EXAMPLE_IF}")
        if not isinstance(loop.target, ast.Name) or loop.target.id in (*CONTEXT_NAMES, *LITERAL_NAMES):
            raise self.fail(loop.target, f"expected a new name after `for`, such as {_EXAMPLE}")
        items = self.expr(loop.iter, scope)
        outer = (*scope.outer, scope.name) if scope else ()
        inner = _Scope(loop.target.id, prefix, f"{name}(...)", outer)
        body = self.test(generator.elt, inner) if prefix == "" else self.expr(generator.elt, inner)
        return items, body


def _sum(items: Any, body: Any) -> dict[str, Any]:
    return {"reduce": [items, {"+": [{"var": "accumulator"}, body]}, 0]}


_EXAMPLE = "any(item.quantity > 3 for item in data.items)"
_EXAMPLE_IF = 'any(item.category == "tents" and item.quantity > 3 for item in data.items)'
