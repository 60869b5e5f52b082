"""Find where a character of a text value stands in its file, whatever the quoting.

A condition expression is a YAML or JSON string, and a problem in it must be
reported at its line and column in the rule file. The value's first character
stands at different places in a plain, quoted (`'...'`, `"..."`, JSON) and
block (`|`, `>`) scalar; escapes (`\\"`, `\\u00e9`, `''`) and folded line breaks
shift the rest. `offsets()` walks the source text beside the value to map each
character of the value to its index in the file.
"""

from __future__ import annotations

from engine.language.sources import JsonPath, Position, ScalarMark, SourceDocument

_SIMPLE_ESCAPES = {
    "0": "\0",
    "a": "\a",
    "b": "\b",
    "t": "\t",
    "\t": "\t",
    "n": "\n",
    "v": "\v",
    "f": "\f",
    "r": "\r",
    "e": "\x1b",
    " ": " ",
    '"': '"',
    "/": "/",
    "\\": "\\",
    "N": "\x85",
    "_": "\xa0",
    "L": "\u2028",
    "P": "\u2029",
}
_HEX_ESCAPES = {"x": 2, "u": 4, "U": 8}


def position_in(document: SourceDocument, loc: JsonPath, offset: int) -> Position:
    """The line and column in `document` of character `offset` of the text value at `loc`."""
    value = _value_at(document, loc)
    mark = document.scalar(loc)
    if mark is None or not isinstance(value, str):
        return document.position(loc)
    mapped = offsets(document.text, mark, value)
    index = mapped[min(max(offset, 0), len(mapped) - 1)]
    line = document.text.count("\n", 0, index) + 1
    return Position(line, index - (document.text.rfind("\n", 0, index) + 1) + 1)


def offsets(text: str, mark: ScalarMark, value: str) -> list[int]:
    """For each character of `value` (and one past its end), its index in `text`."""
    at = _content_start(text, mark)
    found: list[int] = []
    for char in value:
        while at < len(text):
            decoded, size = _decode(text, at, mark.style)
            if decoded == char:
                found.append(at)
                at += size
                break
            if char.isspace():  # a folded line break, or indentation the value does not keep
                found.append(at)
                break
            if decoded == "" or text[at].isspace():
                at += size
                continue
            # Not the value's text: stop mapping and point at the last good place.
            return found + [found[-1] if found else at] * (len(value) + 1 - len(found))
        else:
            found.append(len(text))
    found.append(at)
    return found


def _content_start(text: str, mark: ScalarMark) -> int:
    if mark.style in ("'", '"'):
        return mark.index + 1
    if mark.style in ("|", ">"):
        newline = text.find("\n", mark.index)
        return len(text) if newline < 0 else newline + 1
    return mark.index


def _decode(text: str, at: int, style: str | None) -> tuple[str, int]:
    """The value character that starts at `text[at]` and how many source characters it takes."""
    char = text[at]
    if style == "'" and text.startswith("''", at):
        return "'", 2
    if style != '"' or char != "\\" or at + 1 >= len(text):
        return char, 1
    code = text[at + 1]
    if code in _SIMPLE_ESCAPES:
        return _SIMPLE_ESCAPES[code], 2
    if code in ("\n", "\r"):  # an escaped line break: nothing in the value
        return "", 2
    width = _HEX_ESCAPES.get(code)
    if width is None:
        return char, 1
    digits = text[at + 2 : at + 2 + width]
    try:
        point = int(digits, 16)
    except ValueError:
        return char, 1
    size = 2 + width
    low = text[at + size : at + size + 6]
    if 0xD800 <= point < 0xDC00 and low.startswith("\\u"):  # a JSON surrogate pair: one character
        try:
            second = int(low[2:], 16)
        except ValueError:
            second = 0
        if 0xDC00 <= second < 0xE000:
            return chr(0x10000 + ((point - 0xD800) << 10) + (second - 0xDC00)), size + 6
    return chr(point), size


def _value_at(document: SourceDocument, loc: JsonPath) -> object:
    value: object = document.value
    for key in loc:
        try:
            value = value[key]  # type: ignore[index]
        except (KeyError, IndexError, TypeError):
            return None
    return value
