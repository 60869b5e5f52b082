"""Short renderings of payload values for reasons and errors, so none copies a whole field.

A value is shown as JSON cut to a few hundred characters: a long text keeps its
start and says how long it was, a long list or object its first items and how
many it had. A whole reason is cut to a few KB, whatever it holds.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

MAX_VALUE_CHARS = 200
MAX_REASON_CHARS = 4_000
_MAX_DEPTH = 8


def value_text(value: Any, limit: int = MAX_VALUE_CHARS) -> str:
    """`value` as JSON, at most about `limit` characters; what is cut is counted."""
    return _short(value, limit, 0)


def cut(text: str, limit: int = MAX_REASON_CHARS) -> str:
    """`text` itself when short enough, else its start and how long it was."""
    if len(text) <= limit:
        return text
    note = f"… (cut at {limit:,} of {len(text):,} characters)"
    return text[: limit - len(note)] + note


def _short(value: Any, room: int, depth: int) -> str:
    if isinstance(value, str):
        if len(value) <= room:
            return json.dumps(value, ensure_ascii=False)
        return json.dumps(value[:room], ensure_ascii=False)[:-1] + f'…" ({len(value):,} characters)'
    if isinstance(value, list | tuple):
        return _container([(None, item) for item in value[: room // 2 + 1]], len(value), "[]", room, depth)
    if isinstance(value, Mapping):
        pairs = [(str(key), value[key]) for key in list(value)[: room // 4 + 1]]
        return _container(pairs, len(value), "{}", room, depth)
    try:
        return json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):  # not JSON, or an int too long to write out
        text = str(value) if not isinstance(value, int) else f"a number of {value.bit_length():,} bits"
        return cut(text, max(room, 40))


def _container(
    items: Sequence[tuple[str | None, Any]], total: int, brackets: str, room: int, depth: int
) -> str:
    if total and depth >= _MAX_DEPTH:
        return f"{brackets[0]}…{brackets[1]} ({total:,} items)"
    parts: list[str] = []
    used = 2
    for key, item in items:
        shown = _short(item, max(room - used, 20), depth + 1)
        if key is not None:
            shown = f"{_short(key, 40, depth + 1)}: {shown}"
        if parts and used + len(shown) > room:
            break
        parts.append(shown)
        used += len(shown) + 2
    if len(parts) == total:
        return brackets[0] + ", ".join(parts) + brackets[1]
    return f"{brackets[0]}{', '.join(parts)}, …{brackets[1]} ({total:,} items)"
