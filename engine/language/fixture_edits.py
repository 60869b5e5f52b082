"""Replace the `expect` of fixtures inside a fixture file's text, leaving the rest as it was.

`edit_text(text, yaml_syntax, edits)` rewrites only the `expect` of each fixture named in
`edits` (by its position in the file); every other character of the file stays as the
author wrote it. In YAML the old `expect` block is loaded with ruamel.yaml, changed in
place and written back at its own indentation, so comments, key order, quoting and
flow or block style survive (engine/language/yaml_edits.py). In JSON the `expect` value
is written anew, in the file's indentation and newline, each object or list on one line
when it fits; key order is kept. A fixture without `expect` gets one, as its last key.

Each list of the new `expect` is given as `Entry`s: an entry either stands for an entry
of the old list (`source`, its index there, written as it was when `kept`) or is new.
"""

from __future__ import annotations

import json
import json.decoder
import re
from dataclasses import dataclass
from typing import Any

# The keys of `expect`, in the order a new one is written.
EXPECT_KEYS = ("fired", "not_fired", "errors", "actions")
JSON_LINE_WIDTH = 100


class EditRefused(Exception):
    """The file cannot be rewritten this way; the message says why and what to do."""


@dataclass(frozen=True, slots=True)
class Entry:
    """One item of a new `expect` list, as the file will read."""

    value: Any
    source: int | None = None  # its index in the old list, when it stands in the old one's place
    kept: bool = False  # written exactly as it was (only with a source)


NewExpect = dict[str, list[Entry]]  # by key of EXPECT_KEYS; an empty list removes the key


def plain(expect: NewExpect, old: Any) -> dict[str, Any]:
    """The new `expect` as a reader will see it, its keys in the order the writers leave them."""
    old = old if isinstance(old, dict) else {}
    keys = list(old)
    for key in EXPECT_KEYS:
        if expect.get(key):
            if key not in keys:
                keys.insert(new_key_position(keys, key), key)
        elif key in keys and old[key] != []:
            keys.remove(key)
    return {
        key: [entry.value for entry in expect.get(key, [])] if key in EXPECT_KEYS else old[key]
        for key in keys
    }


def new_key_position(keys: list[str], key: str) -> int:
    """Where a new key of `expect` goes: after the keys that come before it in EXPECT_KEYS."""
    before = EXPECT_KEYS[: EXPECT_KEYS.index(key)]
    return max((i + 1 for i, existing in enumerate(keys) if existing in before), default=0)


def edit_text(text: str, edits: dict[int, NewExpect], *, yaml_syntax: bool) -> str:
    """`text` with each fixture of `edits` (by index) given its new `expect`."""
    if yaml_syntax:
        from engine.language.yaml_edits import edit_yaml  # ruamel.yaml loads only to update

        return edit_yaml(text, edits)
    return edit_json(text, edits)


# ---------------------------------------------------------------- JSON


_WHITESPACE = re.compile(r"[ \t\r\n]*")
_decoder = json.JSONDecoder()
_scanstring: Any = getattr(json.decoder, "scanstring")  # noqa: B009 (not in the stubs)


@dataclass(frozen=True, slots=True)
class _Member:
    key: str
    key_start: int
    value_start: int
    value_end: int


def edit_json(text: str, edits: dict[int, NewExpect]) -> str:
    newline = "\r\n" if "\r\n" in text else "\n"
    unit = _json_indent_unit(text)
    objects = _fixture_objects(text)
    # From the end of the file backwards, so the offsets of the fixtures before stay true.
    for index in sorted(edits, reverse=True):
        if index >= len(objects):
            raise EditRefused(f"the file has no fixture #{index}")
        start = objects[index]
        members = _members(text, start)
        found = next((m for m in members if m.key == "expect"), None)
        old = _decoder.raw_decode(text, found.value_start)[0] if found else None
        value = plain(edits[index], old)
        if found is not None:
            indent = _line_indent(text, found.key_start)
            written = _dump(value, indent, unit, newline, len(indent) + len('"expect": '))
            text = text[: found.value_start] + written + text[found.value_end :]
        elif members:
            last = members[-1]
            if _starts_line(text, last.key_start):
                indent = _line_indent(text, last.key_start)
                before = f",{newline}{indent}"
            else:
                indent, before = "", ", "
            written = _dump(value, indent, unit, newline, len(indent) + len('"expect": '))
            text = f'{text[: last.value_end]}{before}"expect": {written}{text[last.value_end :]}'
        else:
            raise EditRefused(f"fixture #{index} is an empty object")
    return text


def _fixture_objects(text: str) -> list[int]:
    """Where each fixture object of the file starts (the file is one object or a list of them)."""
    at = _skip(text, 0)
    if text.startswith("{", at):
        return [at]
    if not text.startswith("[", at):
        raise EditRefused("expected a fixture object or a list of them")
    starts = []
    at = _skip(text, at + 1)
    while at < len(text) and text[at] != "]":
        starts.append(at)
        at = _skip(text, _decoder.raw_decode(text, at)[1])
        if text.startswith(",", at):
            at = _skip(text, at + 1)
    return starts


def _members(text: str, start: int) -> list[_Member]:
    """The members of the object at `start`, with where each key and value stand."""
    members = []
    at = _skip(text, start + 1)
    while at < len(text) and text[at] == '"':
        key, after = _scanstring(text, at + 1)
        colon = _skip(text, after)
        value_start = _skip(text, colon + 1)
        value_end = _decoder.raw_decode(text, value_start)[1]
        members.append(_Member(key, at, value_start, value_end))
        at = _skip(text, value_end)
        if text.startswith(",", at):
            at = _skip(text, at + 1)
    return members


def _skip(text: str, at: int) -> int:
    match = _WHITESPACE.match(text, at)
    return match.end() if match else at


def _line_indent(text: str, at: int) -> str:
    start = text.rfind("\n", 0, at) + 1
    head = text[start:at]
    return head if not head.strip() else head[: len(head) - len(head.lstrip())]


def _starts_line(text: str, at: int) -> bool:
    return not text[text.rfind("\n", 0, at) + 1 : at].strip()


def _json_indent_unit(text: str) -> str:
    """The file's step of indentation: a tab, or the smallest number of spaces a line starts with."""
    widths = []
    for line in text.splitlines():
        body = line.lstrip(" \t")
        if body and body != line:
            if line.startswith("\t"):
                return "\t"
            widths.append(len(line) - len(body))
    return " " * min(widths) if widths else "  "


def _dump(value: Any, indent: str, unit: str, newline: str, column: int) -> str:
    """`value` as JSON: each object or list on one line when it fits, else one item a line."""
    flat = json.dumps(value, ensure_ascii=False)
    if not isinstance(value, dict | list) or not value or column + len(flat) <= JSON_LINE_WIDTH:
        return flat
    inner = indent + unit
    if isinstance(value, dict):
        items = [
            f"{json.dumps(k, ensure_ascii=False)}: "
            + _dump(v, inner, unit, newline, len(inner) + len(json.dumps(k, ensure_ascii=False)) + 2)
            for k, v in value.items()
        ]
        opening, closing = "{", "}"
    else:
        items = [_dump(v, inner, unit, newline, len(inner)) for v in value]
        opening, closing = "[", "]"
    body = f",{newline}".join(inner + item for item in items)
    return f"{opening}{newline}{body}{newline}{indent}{closing}"
