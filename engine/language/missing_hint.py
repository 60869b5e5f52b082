"""Why a rule did not fire when its condition read a field the delivery lacks, and what default to give.

The default suggested has the type the condition uses the field as: a number where it
is compared with `<` or counted (`0`), a text where it is compared with a text (`""`), a
list where it is searched with `in` or walked by `any(...)` (`[]`), `false` where it is
a test on its own. The suggestion is tried on the delivery itself: when the rule would
then fire (`data.quantity == 0` with a default of 0 fires on every delivery without a
quantity), the reason says so instead of recommending it.
"""

from __future__ import annotations

import json
from typing import Any

from engine.language.conditions import Condition, DeliveryData

_NUMBER_OPERATORS = frozenset({"<", "<=", ">", ">=", "+", "-", "*", "/", "%", "min", "max"})
_EQUALITY = frozenset({"==", "!=", "===", "!=="})
_LISTS = frozenset({"some", "all", "none", "map", "filter", "reduce", "merge"})
_TESTS = frozenset({"!", "!!", "and", "or", "if"})
_UNKNOWN = object()


def missing_reason(condition: Condition, field: str, data: DeliveryData) -> str:
    """The reason of a rule stopped by the missing-field guard, with the default to write."""
    said = f"{field} is missing from the delivery, so the condition does not fire"
    value = default_for(condition.logic, field)
    if value is _UNKNOWN:
        return (
            f"{said} (to give it a value when it is missing, write {_default(condition, field, '…')} "
            'with a value of its type: 0 for a number, "" for a text, [] for a list)'
        )
    if value is None:  # a text or a list: `"@acme.com" in data.renter.email`, `"vip" in data.tags`
        kinds = [("[]", "a list"), ('""', "a text")]
        if not _plural(field):
            kinds.reverse()
        shown = " or ".join(f"{_default(condition, field, v)} for {what}" for v, what in kinds)
        return f"{said} (to give it a value when it is missing, write {shown})"
    written = _default(condition, field, json.dumps(value))
    if condition.fires_with_default(data, field, value):
        return (
            f"{said}; a default would not help: with {written} the rule would fire on this delivery, "
            f"and so on others without {field}. Leave it without a default unless that is meant"
        )
    return f"{said} (to give it a value when it is missing, write {written})"


def _plural(field: str) -> bool:
    """Whether the field's name reads as several things (tags, items): a list is the likelier."""
    name = field.rsplit(".", 1)[-1].lower()
    return name.endswith("s") and not name.endswith(("ss", "us", "is"))


def _default(condition: Condition, field: str, value: str) -> str:
    if condition.expression is not None:
        return f"{field} | default({value})"
    return f'{{"var": ["{field}", {value}]}}'


def default_for(logic: Any, field: str) -> Any:
    """A value of the type `logic` uses `field` as; None for "a text or a list", or _UNKNOWN."""
    found = _UNKNOWN
    for operator, position, operands in _uses(logic, field):
        kind = _kind(operator, position, operands)
        if kind is not _UNKNOWN:
            return kind
    return found


def _kind(operator: str, position: int, operands: list[Any]) -> Any:
    if operator in _NUMBER_OPERATORS:
        return 0
    if operator in _LISTS and position == 0:
        return []
    if operator in _EQUALITY and len(operands) == 2:
        other = operands[1 - position]
        if isinstance(other, bool):
            return False
        if isinstance(other, int | float):
            return 0
        if isinstance(other, str):
            return ""
        if isinstance(other, dict) and len(other) == 1 and next(iter(other)) in _NUMBER_OPERATORS:
            return 0
        return _UNKNOWN
    if operator == "in" and len(operands) == 2:
        if position == 1:
            return [] if not isinstance(operands[0], str) else None
        container = operands[1]
        if isinstance(container, list) and container and not any(isinstance(i, dict) for i in container):
            return "" if isinstance(container[0], str) else 0
        return "" if isinstance(container, str) else _UNKNOWN
    if operator in _TESTS:
        return False
    return _UNKNOWN


def _uses(
    logic: Any, field: str, parent: tuple[str, int, list[Any]] | None = None
) -> list[tuple[str, int, list[Any]]]:
    """(operator, operand position, operands) of each place `logic` reads `field` without a default."""
    found: list[tuple[str, int, list[Any]]] = []
    if isinstance(logic, list):
        for item in logic:
            found += _uses(item, field, parent)
        return found
    if not (isinstance(logic, dict) and len(logic) == 1):
        return found
    ((op, args),) = logic.items()
    if op == "var":
        path = args[0] if isinstance(args, list) and len(args) == 1 else args
        if path == field and parent is not None:
            found.append(parent)
        elif path == field:
            found.append(("!!", 0, [logic]))  # the whole condition: a test
        return found
    items = args if isinstance(args, list) else [args]
    for index, item in enumerate(items):
        if op in _LISTS and index > 0:
            continue  # inside an item scope: relative reads
        found += _uses(item, field, (op, index, items))
    return found
