"""Turn pydantic validation errors into messages a rule author can act on.

Each message says what was expected and what was found, and adds a
"did you mean" for a misspelt key: `unknown key 'whne' (did you mean 'when'?)`.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, get_args

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from engine.language.sources import JsonPath


@dataclass(frozen=True, slots=True)
class FieldProblem:
    """A problem at `loc`; `at_key` when the key itself is wrong (unknown key).

    `template_line` is the line inside a multi-line template where it was found.
    """

    loc: JsonPath
    message: str
    at_key: bool = False
    template_line: int = 1


def describe(
    exc: ValidationError,
    model: type[BaseModel] | None = None,
    expectations: Mapping[JsonPath, str] | None = None,
) -> list[FieldProblem]:
    """One problem per error; `expectations` replaces pydantic's wording for some fields.

    `model` is what was validated, so an unknown key is compared with the keys
    of the object it stands in (`throttle.pre` -> did you mean 'per'?).
    """
    problems = []
    for error in exc.errors(include_url=False):
        loc = tuple(error["loc"])
        keys = _keys_at(model, loc[:-1]) if model is not None else []
        problems.append(_describe_one(error, loc, keys, expectations or {}))
    return problems


def _keys_at(model: type[BaseModel], loc: JsonPath) -> list[str]:
    """The keys of the nested model found at `loc` inside `model` (by the names files use)."""
    current: type[BaseModel] | None = model
    for part in loc:
        if current is None:
            return []
        if isinstance(part, int):
            continue
        fields = {info.alias or name: info for name, info in current.model_fields.items()}
        current = _model_in(fields[part].annotation) if part in fields else None
    if current is None:
        return []
    return [info.alias or name for name, info in current.model_fields.items()]


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside an annotation such as `list[X]` or `X | None`, if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _describe_one(
    error: ErrorDetails, loc: JsonPath, keys: list[str], expectations: Mapping[JsonPath, str]
) -> FieldProblem:
    kind = error["type"]
    name = str(loc[-1]) if loc else ""
    if kind == "extra_forbidden":
        return FieldProblem(loc, unknown_key_message(name, keys), at_key=True)
    if kind == "missing":
        return FieldProblem(loc[:-1], f"missing required key '{name}'")
    found = describe_value(error.get("input"))
    if loc in expectations:
        return FieldProblem(loc, f"expected {expectations[loc]}, found {found}")
    message = error["msg"]
    if kind == "too_short":
        minimum = error.get("ctx", {}).get("min_length", 1)
        return FieldProblem(
            loc, f"expected at least {minimum} item{'s' if minimum != 1 else ''}, found {found}"
        )
    if kind in _PLAIN_TYPES:
        return FieldProblem(loc, f"expected {_PLAIN_TYPES[kind]}, found {found}")
    if kind == "value_error":
        return FieldProblem(loc, message.removeprefix("Value error, "))
    if message.startswith("Input should be "):
        message = "expected " + message.removeprefix("Input should be ").split(" [")[0]
    elif message.startswith(("List should have", "String should have", "Dictionary should have")):
        message = "expected " + message.split(" should ", 1)[1].removeprefix("have ")
    else:
        message = "expected " + message[0].lower() + message[1:]
    return FieldProblem(loc, f"{message}, found {found}")


_PLAIN_TYPES = {
    "string_type": "text",
    "int_type": "a whole number",
    "int_parsing": "a whole number",
    "int_from_float": "a whole number",
    "float_type": "a number",
    "float_parsing": "a number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "dict_type": "an object",
    "model_type": "an object",
    "model_attributes_type": "an object",
    "list_type": "a list",
}


def unknown_key_message(name: str, known: Iterable[str], what: str = "key") -> str:
    return f"unknown {what} '{name}' ({suggest(name, known)})"


def suggest(name: str, known: Iterable[str]) -> str:
    """`did you mean 'x'?` for a close name, else the list of what is known."""
    names = sorted(known)
    close = difflib.get_close_matches(name, names, n=1, cutoff=0.6)
    if close:
        return f"did you mean '{close[0]}'?"
    return f"expected one of: {', '.join(names)}" if names else "none are defined"


def describe_value(value: Any) -> str:
    """A short description of a found value that never dumps a whole payload."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return f"the number {value}"
    if isinstance(value, str):
        shown = value if len(value) <= 40 else value[:40] + "…"
        return f"the text {json.dumps(shown, ensure_ascii=False)}"
    if isinstance(value, list):
        return f"a list of {len(value)} item{'s' if len(value) != 1 else ''}"
    if isinstance(value, dict):
        return "an object"
    return f"a {type(value).__name__}"
