"""JsonLogic conditions: compile once, evaluate per delivery, explain the verdict.

This is the only module that imports the JsonLogic library (datalogic-py).

`evaluate(condition, data)` is plain JsonLogic as jsonlogic.com defines it.
Rules go through `Condition`, which adds the missing-field guard of the spec:
a field the condition reads but the delivery lacks stops the rule from firing
(plain JsonLogic would read it as null, and `null <= 5` is true). The guard
runs on an engine configured with `missing_var: error`, so it is lazy: a read
the evaluation never reaches (the other branch of an `if`), a read with a
default (`{"var": ["data.quantity", 0]}`), `missing` and `missing_some` are
not misses. Reads inside the item scope of `some`/`all`/`none`/`map`/
`filter`/`reduce` are given an explicit null default when compiled, so they
keep the standard semantics.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import datalogic_py as dl

from engine.excerpt import cut, value_text
from engine.language.expressions import CompiledExpression
from engine.language.expressions.explain import explain as explain_expression
from engine.language.sources import JsonPath

FAMILIES = ["Core"]
SCOPED_OPERATORS = frozenset({"some", "all", "none", "map", "filter", "reduce"})

_standard = dl.Engine(families=FAMILIES)
_guarded = dl.Engine(families=FAMILIES, config={"missing_var": "error"})
_MISSING_VARIABLE = re.compile(r"Variable not found: (.*?)(?: \(in operator: \w+\))?$")


def new_session() -> dl.Session:
    """A per-thread evaluation session for `Condition.test`."""
    return _guarded.session()


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

    __slots__ = ("_guarded_rule", "_logic_json", "_reads", "expression", "logic")

    def __init__(self, logic: Any, expression: CompiledExpression | None = None) -> None:
        self.logic = logic
        self.expression = expression
        self._logic_json = json.dumps(logic)
        self._guarded_rule = _guarded.compile(json.dumps(_default_scoped_reads(logic)))
        facts = _standard.compile(self._logic_json).facts()
        # The paths the condition reads: explanations trace only these, not the whole payload.
        self._reads: list[list[str]] | None = facts["reads"] if facts["reads_complete"] else None

    def test(self, data: DeliveryData, session: dl.Session) -> Verdict:
        """Fire or not; never raises for a delivery's content."""
        try:
            fired = session.evaluate_truthy(self._guarded_rule, data.handle)
        except dl.EvaluateError as exc:
            if exc.error_type == "VariableNotFound":
                return Verdict(False, missing_field=_missing_name(exc))
            return Verdict(False, error=_runtime_error(exc))
        return _FIRED if fired else _NOT_FIRED

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


def _default_scoped_reads(logic: Any, scoped: bool = False) -> Any:
    """Copy `logic` with a null default on every `var` inside an item scope."""
    if isinstance(logic, list):
        return [_default_scoped_reads(item, scoped) for item in logic]
    if not isinstance(logic, dict):
        return logic
    if len(logic) != 1:
        return {key: _default_scoped_reads(value, scoped) for key, value in logic.items()}
    ((op, args),) = logic.items()
    if op == "var" and scoped:
        if isinstance(args, list):
            return {"var": [*args, None] if len(args) == 1 else args}
        return {"var": [args, None]}
    if op in SCOPED_OPERATORS and isinstance(args, list) and args:
        return {
            op: [
                _default_scoped_reads(args[0], scoped),
                *(_default_scoped_reads(a, True) for a in args[1:]),
            ]
        }
    return {op: _default_scoped_reads(args, scoped)}


def _missing_name(exc: dl.EvaluateError) -> str:
    match = _MISSING_VARIABLE.search(str(exc))
    return match.group(1) if match else str(exc)


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
