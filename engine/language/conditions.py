"""JsonLogic conditions: compile once, evaluate per delivery, explain the verdict.

This module and missing_field_guard.py are the only ones that import the JsonLogic
library (datalogic-py).

`evaluate(condition, data)` is plain JsonLogic as jsonlogic.com defines it.
Rules go through `Condition`, which adds the missing-field guard of the spec
(engine/language/missing_field_guard.py): a field the condition reads but the
delivery lacks stops the rule from firing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import datalogic_py as dl

from engine.excerpt import cut, value_text
from engine.language.expressions import CompiledExpression
from engine.language.expressions.explain import explain as explain_expression
from engine.language.missing_field_guard import (
    FAMILIES,
    guarded,
    guarded_json,
    guarded_trace,
    guarded_with_default,
    is_missing_field_error,
    missing_field,
    new_session,
)
from engine.language.sources import JsonPath

__all__ = [
    "Condition",
    "ConditionProblem",
    "DeliveryData",
    "Verdict",
    "check",
    "evaluate",
    "new_session",
    "truthy",
]

_standard = dl.Engine(families=FAMILIES)


def evaluate(condition: Any, data: Any) -> Any:
    """Evaluate JsonLogic `condition` against `data` with the standard semantics."""
    # A bare Python str is read as JSON text by datalogic: hand it JSON always.
    return _standard.compile(json.dumps(condition)).evaluate(data)


def truthy(value: Any) -> bool:
    """JsonLogic truthiness (`[]` and `"0"`-free JavaScript rules)."""
    return _standard.truthy(json.dumps(value))


@dataclass(frozen=True, slots=True)
class ConditionProblem:
    """A problem in a condition, at `loc` (a path inside the condition)."""

    loc: JsonPath
    message: str


def check(logic: Any) -> list[ConditionProblem]:
    """Every error the engine finds in `logic` before it runs (unknown operators included)."""
    try:
        diagnostics = _standard.check(json.dumps(logic))
    except dl.DataLogicError as exc:
        return [ConditionProblem((), f"not a valid JsonLogic condition: {exc}")]
    return [
        ConditionProblem(_pointer_to_loc(d["pointer"], logic), _describe(d))
        for d in diagnostics
        if d["severity"] == "error"
    ]


@dataclass(frozen=True, slots=True)
class Verdict:
    """The outcome of one condition for one delivery."""

    fired: bool
    missing_field: str | None = None
    error: str | None = None


# Shared verdicts for the common cases: no allocation per rule per delivery.
_FIRED = Verdict(True)
_NOT_FIRED = Verdict(False)


class DeliveryData:
    """A delivery's condition context, converted once and shared by every rule."""

    __slots__ = ("_json", "handle", "value")

    def __init__(self, value: dict[str, Any]) -> None:
        self.value = value
        self._json: str | None = None
        try:
            self.handle = dl.DataHandle(value)
        except dl.ParseError:  # an integer beyond 64 bits: the JSON reader takes it as a float
            self.handle = dl.DataHandle(self.json)

    @property
    def json(self) -> str:
        if self._json is None:
            self._json = json.dumps(self.value)
        return self._json


class Condition:
    """A rule's `when`, compiled once when rules load.

    `expression` is set when the author wrote an expression: `logic` is its
    compiled JsonLogic, and explanations show the expression.
    """

    __slots__ = ("_guarded_json", "_guarded_rule", "_logic_json", "_reads", "expression", "logic")

    def __init__(self, logic: Any, expression: CompiledExpression | None = None) -> None:
        self.logic = logic
        self.expression = expression
        self._logic_json = json.dumps(logic)
        self._guarded_json: str | None = None  # for traces, made when first needed
        self._guarded_rule = guarded(logic)
        facts = _standard.compile(self._logic_json).facts()
        # The paths the condition reads: explanations trace only these, not the whole payload.
        self._reads: list[list[str]] | None = facts["reads"] if facts["reads_complete"] else None

    def test(self, data: DeliveryData, session: dl.Session) -> Verdict:
        """Fire or not; never raises for a delivery's content."""
        try:
            fired = session.evaluate_truthy(self._guarded_rule, data.handle)
        except dl.EvaluateError as exc:
            missing = missing_field(exc)
            if missing is not None:
                return Verdict(False, missing_field=missing)
            return Verdict(False, error=_runtime_error(exc))
        return _FIRED if fired else _NOT_FIRED

    def fires_with_default(self, data: DeliveryData, field: str, value: Any) -> bool:
        """Whether the condition would fire on `data` if its reads of `field` had the default `value`."""
        try:
            return bool(
                new_session().evaluate_truthy(guarded_with_default(self.logic, field, value), data.handle)
            )
        except dl.DataLogicError:  # another missing field, or an error: it would not fire
            return False

    def explain(self, data: DeliveryData) -> str:
        """The condition with the values it saw: `data.quantity (7) <= data.minimum_quantity (5) -> false`.

        Values are cut to a few hundred characters each (a long text keeps its start and its
        length, a long list its first items and its count), the whole to a few KB.
        """
        context = data.json if self._reads is None else json.dumps(_only(data.value, self._reads))
        trace = json.loads(_standard.evaluate_with_trace(self._logic_json, context))
        values = _TraceValues(trace)
        if self.expression is not None:
            text = explain_expression(self.expression, values.by_pointer)
        else:
            text = _render(self.logic, "", values, top=True)
        if trace.get("error"):
            return cut(f"{text} -> error: {cut(str(trace['error']), 500)}")
        return cut(f"{text} -> {_literal(trace.get('result'))}")

    def trace(self, context: dict[str, Any], pointers: frozenset[str]) -> dict[str, list[str]]:
        """The outcomes of the nodes at `pointers`: "true", "false", "missing" or "error" each time.

        Evaluated as `test` does, the missing-field guard included; a node inside
        any/all/sum has one outcome per item it was evaluated for, a node never reached
        none. For `test --coverage`, which asks for each operand of each and / or.
        """
        data = json.dumps(context if self._reads is None else _only(context, self._reads))
        if self._guarded_json is None:
            self._guarded_json = guarded_json(self.logic)
        trace = json.loads(guarded_trace(self._guarded_json, data))
        wanted = {node: pointer for node, pointer in trace.get("pointers", {}).items() if pointer in pointers}
        outcomes: dict[str, list[str]] = {}
        for step in trace.get("steps", []):
            pointer = wanted.get(str(step["node_id"]))
            if pointer is None:
                continue
            error = step.get("error")
            if error is not None:
                outcome = "missing" if is_missing_field_error(str(error)) else "error"
            else:
                # The engine's truthiness of a JSON value is Python's: [], {}, "", 0 and null are false.
                outcome = "true" if step.get("result") else "false"
            outcomes.setdefault(pointer, []).append(outcome)
        return outcomes


class Probe:
    """A piece of a condition outside any item scope, compiled to be evaluated on its own.

    Its outcome is what the piece gives when the whole condition is evaluated, the
    missing-field guard included: "true", "false", "missing" or "error". For `test
    --coverage`, where it is a hundred times cheaper than a trace.
    """

    __slots__ = ("_rule",)

    def __init__(self, logic: Any) -> None:
        self._rule = guarded(logic)

    def outcome(self, data: DeliveryData, session: dl.Session) -> str:
        try:
            return "true" if session.evaluate_truthy(self._rule, data.handle) else "false"
        except dl.EvaluateError as exc:
            return "missing" if exc.error_type == "VariableNotFound" else "error"


def _only(value: dict[str, Any], reads: list[list[str]]) -> dict[str, Any]:
    """A copy of `value` holding just the paths in `reads` (each a list of keys).

    A path through a list copies its whole top-level field; nothing of `value` is modified.
    """
    trimmed: dict[str, Any] = {}
    copied: set[tuple[str, ...]] = set()
    for path in sorted(reads, key=len):
        if not path or any(tuple(path[:end]) in copied for end in range(1, len(path) + 1)):
            continue
        source: Any = value
        for key in path:
            if not isinstance(source, dict):
                path, source = path[:1], value.get(path[0])
                break
            if key not in source:
                source = _ABSENT
                break
            source = source[key]
        if source is _ABSENT or any(tuple(path[:end]) in copied for end in range(1, len(path) + 1)):
            continue
        target = trimmed
        for key in path[:-1]:
            target = target.setdefault(key, {})
        target[path[-1]] = source
        copied.add(tuple(path))
    return trimmed


_ABSENT = object()


class _TraceValues:
    """Each traced node's value, by the JSON pointer of the rule part it came from."""

    def __init__(self, trace: dict[str, Any]) -> None:
        by_node = {str(step["node_id"]): step for step in trace.get("steps", [])}
        self.by_pointer: dict[str, Any] = {}
        for node_id, pointer in trace.get("pointers", {}).items():
            step = by_node.get(node_id)
            if step is not None and step.get("error") is None:
                self.by_pointer[pointer] = step.get("result")

    @cached_property
    def evaluated(self) -> frozenset[str]:
        return frozenset(self.by_pointer)


_INFIX = frozenset({"==", "===", "!=", "!==", "<", "<=", ">", ">=", "+", "-", "*", "/", "%", "in"})


def _render(logic: Any, pointer: str, values: _TraceValues, *, top: bool = False) -> str:
    if not (isinstance(logic, dict) and len(logic) == 1):
        return _literal(logic)
    ((op, args),) = logic.items()
    here = f"{pointer}/{_escape(op)}"
    seen = f" ({_literal(values.by_pointer[pointer])})" if pointer in values.evaluated else ""
    if op == "var":
        path = args[0] if isinstance(args, list) and args else args
        return f"{path if isinstance(path, str) else _literal(path)}{seen}"
    items = args if isinstance(args, list) else [args]
    parts = [_render(arg, f"{here}/{i}", values) for i, arg in enumerate(items)]
    if (op in _INFIX and len(parts) >= 2) or op in ("and", "or"):
        text = f" {op} ".join(parts)
    elif op in ("!", "!!"):
        text = f"{'not' if op == '!' else 'truthy'} {parts[0] if parts else ''}".rstrip()
    else:
        text = f"{op}({', '.join(parts)})"
    if top:
        return text
    if pointer in values.evaluated:
        return f"({text} -> {_literal(values.by_pointer[pointer])})"
    return f"({text})"


def _literal(value: Any) -> str:
    return value_text(value)


def _runtime_error(exc: dl.DataLogicError) -> str:
    where = f" in '{exc.operator}'" if exc.operator else ""
    detail = str(exc).split(" (in operator")[0]
    if '"NaN"' in detail:
        detail = (
            "a value is not a number (text or a missing value where a number is needed), "
            "or a division by zero"
        )
    return f"could not be evaluated{where}: {detail}"


def _describe(diagnostic: dl.Diagnostic) -> str:
    message = str(diagnostic["message"]).replace("`", "'")
    if diagnostic["code"] == "UnknownOperator":
        return f"expected a JsonLogic operator, found {message.removeprefix('unknown operator ')}"
    return message


def _escape(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")


def _pointer_to_loc(pointer: str, logic: Any) -> JsonPath:
    """The path a JSON pointer names in `logic`: a part is a list index only where `logic` has a list.

    A key made of digits ("12", "³") is an object's key: only `logic` tells the two apart.
    """
    if not pointer:
        return ()
    parts: list[str | int] = []
    node = logic
    for raw in pointer.lstrip("/").split("/"):
        part = raw.replace("~1", "/").replace("~0", "~")
        if isinstance(node, list) and part.isascii() and part.isdigit() and int(part) < len(node):
            parts.append(int(part))
            node = node[int(part)]
        else:
            parts.append(part)
            node = node.get(part) if isinstance(node, dict) else None
    return tuple(parts)
