"""Text from outside, safe to print: characters that move or hide what is around them, found
and escaped.

A delivery id is shown in logs, on the command line and in the console. Control characters
(C0, DEL, C1), bidirectional embeddings, overrides, isolates and marks, zero-width and other
invisible format characters, and line or paragraph separators can make such a line read as
something it is not; the receiver refuses ids and events that hold one, and whatever prints
a value from outside that may hold one escapes them.
"""

from __future__ import annotations

import re
import unicodedata

_ASCII_CONTROLS = re.compile(r"[\x00-\x1f\x7f]")
# Cc: C0, DEL and C1 controls; Cf: format characters (bidi controls, zero-width characters,
# the byte order mark, soft hyphen, tags, ...); Zl, Zp: line and paragraph separators;
# Cs: lone surrogates.
_UNSEEN_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs"})


def _unseen(character: str) -> bool:
    return unicodedata.category(character) in _UNSEEN_CATEGORIES


def has_unseen_characters(value: str) -> bool:
    """Whether `value` holds a control, format or separator character."""
    if value.isascii():  # the usual case, without a look-up per character
        return _ASCII_CONTROLS.search(value) is not None
    return any(_unseen(character) for character in value)


def printable(value: str) -> str:
    """`value` with each control, format or separator character escaped (`\\x85`, `\\u202e`)."""
    if not has_unseen_characters(value):
        return value
    return "".join(ascii(c)[1:-1] if _unseen(c) else c for c in value)
