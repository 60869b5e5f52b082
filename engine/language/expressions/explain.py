"""Explain a verdict in the author's own expression, with the values it saw.

`explain(compiled, values)` writes the expression as it was written, with the
value of each field read after it and the verdict of each operand of
and / or / not: `data.quantity (3) <= data.minimum_quantity (5)`. `values` maps
the JSON pointer of a JsonLogic node to the value the evaluation gave it (from
datalogic's trace, in engine.language.conditions); a node the evaluation never reached
(the other side of an `or`) shows no value. Values inside any/all/sum differ
per item and are not shown.
"""

from __future__ import annotations

import io
import json
import re
import tokenize
from collections.abc import Mapping
from typing import Any

from engine.language.expressions import CompiledExpression

MAX_VALUE_CHARS = 80


def explain(compiled: CompiledExpression, values: Mapping[str, Any]) -> str:
    """The expression with values inserted, on one line (without the final verdict)."""
    text = _without_comments(compiled.text)
    inserts: list[tuple[int, int, int, str]] = []  # (offset, order, tie, text)
    for pointer, part in compiled.parts.items():
        if pointer not in values or part.kind in ("value", "inner") or not pointer:
            continue
        shown = literal(values[pointer])
        size = part.end - part.start
        if part.kind in ("read", "call"):
            inserts.append((part.end, 0, size, f" ({shown})"))
        elif _parenthesised(text, part.start, part.end):
            inserts.append((part.end, 0, size, f" -> {shown}"))
        else:
            inserts.append((part.start, 1, -size, "("))
            inserts.append((part.end, 0, size, f" -> {shown})"))
    # At one offset, closings come before openings, inner closings first, outer openings first.
    out, last = [], 0
    for offset, _order, _tie, insert in sorted(set(inserts)):  # set: a chain reads its middle twice
        out += [text[last:offset], insert]
        last = offset
    out.append(text[last:])
    return re.sub(r"\s*\n\s*", " ", "".join(out)).strip()


def literal(value: Any) -> str:
    """A value as JSON, cut short when long."""
    shown = json.dumps(value, ensure_ascii=False)
    return shown if len(shown) <= MAX_VALUE_CHARS else f"{shown[: MAX_VALUE_CHARS - 1]}…"


def _parenthesised(text: str, start: int, end: int) -> bool:
    """The author already wrote parentheses around this piece: `(a or b) and c`."""
    return text[:start].rstrip().endswith("(") and text[end:].lstrip().startswith(")")


def _without_comments(text: str) -> str:
    """`text` with each `# comment` blanked out (offsets are kept)."""
    if "#" not in text:
        return text
    lines = text.split("\n")
    try:  # parsed as the compiler did, inside parentheses of its own, one line above
        for token in tokenize.generate_tokens(io.StringIO(f"(\n{text}\n)").readline):
            if token.type == tokenize.COMMENT and 2 <= token.start[0] <= len(lines) + 1:
                row, column = token.start[0] - 1, token.start[1]
                line = lines[row - 1]
                lines[row - 1] = line[:column] + " " * (len(line) - column)
    except (tokenize.TokenError, SyntaxError):
        return text
    return "\n".join(lines)
