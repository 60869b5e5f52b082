"""The missing-field guard of the spec: a field a condition reads but the delivery lacks stops the rule.

Plain JsonLogic reads a missing field as null, and `null <= 5` is true: a rule
would fire on a delivery that never said anything about the quantity. Rules'
conditions are evaluated on an engine configured with `missing_var: error`
instead, so the guard is lazy: a read the evaluation never reaches (the other
branch of an `if`), a read with a default (`{"var": ["data.quantity", 0]}`),
`missing` and `missing_some` are not misses. Reads inside the item scope of
`some`/`all`/`none`/`map`/`filter`/`reduce` are given an explicit null default
when compiled, so they keep the standard semantics. engine/language/conditions.py
uses it for every rule's `when`; plain `evaluate` does not.
"""

from __future__ import annotations

import json
import re
from typing import Any

import datalogic_py as dl

# The JsonLogic operators conditions may use; the standard engine of conditions.py has the same.
FAMILIES = ["Core"]
SCOPED_OPERATORS = frozenset({"some", "all", "none", "map", "filter", "reduce"})

_guarded = dl.Engine(families=FAMILIES, config={"missing_var": "error"})
_MISSING_VARIABLE = re.compile(r"Variable not found: (.*?)(?: \(in operator: \w+\))?$")


def new_session() -> dl.Session:
    """A per-thread evaluation session for guarded conditions (`Condition.test`)."""
    return _guarded.session()


def guarded(logic: Any) -> Any:
    """`logic` compiled for the guard: a read of a missing field is an error, not null."""
    return _guarded.compile(json.dumps(_default_scoped_reads(logic)))


def guarded_json(logic: Any) -> str:
    """`logic` as the guard evaluates it, as JSON text (what a trace takes)."""
    return json.dumps(_default_scoped_reads(logic))


def guarded_trace(logic_json: str, data_json: str) -> str:
    """The trace (JSON text) of a guarded evaluation of `logic_json` (`guarded_json`) on `data_json`."""
    trace: str = _guarded.evaluate_with_trace(logic_json, data_json)
    return trace


def guarded_with_default(logic: Any, field: str, value: Any) -> Any:
    """`logic` compiled for the guard, with `value` as the default of every read of `field`.

    What the rule would do if its author gave the default the missing-field hint suggests.
    """
    return _guarded.compile(json.dumps(_with_default(_default_scoped_reads(logic), field, value)))


def _with_default(logic: Any, field: str, value: Any) -> Any:
    """Copy `logic` with `value` as the default of every read of `field` that has none."""
    if isinstance(logic, list):
        return [_with_default(item, field, value) for item in logic]
    if not isinstance(logic, dict):
        return logic
    if list(logic) == ["var"]:
        args = logic["var"]
        path = args[0] if isinstance(args, list) and len(args) == 1 else args
        return {"var": [field, value]} if path == field else logic
    return {key: _with_default(item, field, value) for key, item in logic.items()}


def is_missing_field_error(message: str) -> bool:
    """True when an error message of a trace step is the guard's missing field."""
    return _MISSING_VARIABLE.search(message) is not None


def missing_field(exc: dl.EvaluateError) -> str | None:
    """The field whose absence stopped a guarded evaluation, or None when `exc` is another error."""
    if exc.error_type != "VariableNotFound":
        return None
    match = _MISSING_VARIABLE.search(str(exc))
    return match.group(1) if match else str(exc)


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
