"""The size of what an operation would build, worked out before it runs.

An operation whose result can be far bigger than its inputs (repetition, padding
widths, `%` formatting, replace, join, batch, slice, indent, wordwrap, splitting,
summing lists) has an estimator here: it raises `LimitExceeded` when the result
would be over the limits, before anything is built. Every other filter and
method can grow a value by a small factor at most (escaping, case changes, JSON),
and the sandbox checks its result afterwards. Each method templates may call is
listed; any other is refused.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import date
from typing import Any

from engine.language.templates.budget import (
    MAX_EXPONENT,
    MAX_ITEMS,
    MAX_STEPS,
    MAX_TEXT_CHARS,
    LimitExceeded,
    check_items,
    check_number,
    check_text,
    check_value,
    measure,
    number_digits,
)

Arguments = dict[str, Any]
FilterEstimate = Callable[[Arguments], None]
MethodEstimate = Callable[[Any, tuple[Any, ...], dict[str, Any]], None]

_LINE_BREAKS = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"
_WHITESPACE = " \t\x1f\xa0\u1680\u202f\u205f\u3000" + _LINE_BREAKS + "".join(map(chr, range(0x2000, 0x200B)))
_PRINTF = re.compile(
    r"%(?:\((?P<key>[^)]*)\))?[-+ #0]*(?P<width>\*|\d+)?(?:\.(?P<precision>\*|\d*))?"
    r"[hlL]?(?P<type>[diouxXeEfFgGcrsa%])"
)
_STRFTIME = re.compile(r"%[-_0^#]*(\d*)[EO]?.")
# Summing lists copies the running total at each item: quadratic, and in one C call.
MAX_SUM_COPIES = 50 * MAX_STEPS


def text_length(value: object) -> int:
    """About the length of `str(value)`, without building it."""
    return len(value) if isinstance(value, str) else measure(value)[0]


def items_of(arguments: Arguments, name: str, what: str) -> Sequence[Any]:
    """The argument as a sequence; an iterator is read into a list, within the limits."""
    value = arguments[name]
    if isinstance(value, str | list | tuple | range):
        return value
    found = read_within_limits(value.keys() if isinstance(value, Mapping) else value, what)
    arguments[name] = found
    return found


def read_within_limits(values: Iterable[Any], what: str) -> list[Any]:
    """Read an iterator (`map`, `select`...) into a list, stopping as soon as it holds too much.

    Its items are made one by one as it is read: a lazy `map` of a big result over many
    items is refused at the item that goes over, not after all of them were made.
    """
    found: list[Any] = []
    chars = 0
    for item in values:
        found.append(item)
        chars += text_length(item) + 2
        if len(found) > MAX_ITEMS or chars > MAX_TEXT_CHARS:
            raise LimitExceeded(
                f"{what} reads more than {MAX_ITEMS:,} items or {MAX_TEXT_CHARS:,} characters, the limit"
            )
    return found


def check_printf(template: str, values: object, what: str = "the % format") -> None:
    """Refuse `template % values` when its widths, precisions and values would make too much text."""
    positional = list(values) if isinstance(values, tuple) else [values]
    keyed = values if isinstance(values, Mapping) else None
    total, padding, at = len(template), 0, 0

    def take() -> Any:
        nonlocal at
        at += 1
        return positional[at - 1]

    try:
        for conversion in _PRINTF.finditer(template):
            if conversion["type"] == "%":
                continue
            width, precision = conversion["width"], conversion["precision"]
            width_value = take() if width == "*" else int(width or 0)
            precision_value = take() if precision == "*" else int(precision or 0)
            key = conversion["key"]
            value = keyed[key] if key is not None and keyed is not None else take()
            padding += abs(int(width_value)) + abs(int(precision_value))
            total += text_length(value) + 32
    except (IndexError, KeyError, TypeError, ValueError):
        return  # Python refuses these arguments itself, with its own message
    if padding > MAX_TEXT_CHARS:
        raise LimitExceeded(
            f"{what} asks for widths and precisions of {padding:,} characters, "
            f"over the {MAX_TEXT_CHARS:,} limit"
        )
    check_text(total + padding, what)


def check_repeat(left: object, right: object) -> None:
    """`left * right`: repetition of text or lists, or a product of numbers."""
    for sequence, count in ((left, right), (right, left)):
        if isinstance(sequence, str | list | tuple) and isinstance(count, int) and count > 1:
            if isinstance(sequence, str):
                check_text(len(sequence) * count, f"repeating {len(sequence):,} characters {count:,} times")
            else:
                what = f"repeating a list of {len(sequence):,} items {count:,} times"
                check_items(len(sequence) * count, what)
                check_value(sequence, what, count)
            return
    if isinstance(left, int) and isinstance(right, int):
        check_number(number_digits(left) + number_digits(right), "the product")


def check_power(base: object, exponent: object) -> None:
    if not isinstance(exponent, int | float) or abs(exponent) <= MAX_EXPONENT:
        if isinstance(base, int) and isinstance(exponent, int) and exponent > 0:
            check_number(number_digits(base) * exponent, "the power")
        return
    raise LimitExceeded(f"the exponent {exponent} is over the limit of {MAX_EXPONENT}")


def check_add(left: object, right: object) -> None:
    if isinstance(left, str) and isinstance(right, str):
        check_text(len(left) + len(right), "adding texts")
    elif isinstance(left, list | tuple) and isinstance(right, list | tuple):
        check_items(len(left) + len(right), "adding lists")


def check_replace(text: str, old: str, new: str, count: object, what: str) -> None:
    found = len(text) + 1 if old == "" else text.count(old)
    if isinstance(count, int) and count >= 0:
        found = min(found, count)
    check_text(len(text) + found * (len(new) - len(old)), what)


def check_join(separator: str, items: Sequence[Any], what: str) -> None:
    check_text(sum(text_length(item) for item in items) + max(len(items) - 1, 0) * len(separator), what)


def _count_any(text: str, characters: str) -> int:
    return sum(text.count(character) for character in characters)


# --- filters -----------------------------------------------------------------------------


def _batch(a: Arguments) -> None:
    items = items_of(a, "value", "batch")
    size, fill = a.get("linecount"), a.get("fill_with")
    if not isinstance(size, int) or size < 1:
        return
    groups, left = -(-len(items) // size), len(items) % size
    fills = size - left if fill is not None and left else 0
    check_items(len(items) + groups + fills, f"batch({size:,})")
    check_value(fill, "batch's fill value", fills)


def _slice(a: Arguments) -> None:
    items = items_of(a, "value", "slice")
    slices, fill = a.get("slices"), a.get("fill_with")
    if not isinstance(slices, int) or slices < 1:
        return
    fills = slices if fill is not None else 0
    check_items(len(items) + slices + fills, f"slice({slices:,})")
    check_value(fill, "slice's fill value", fills)


def _center(a: Arguments) -> None:
    width = a.get("width", 80)
    if isinstance(width, int):
        check_text(max(width, text_length(a["value"])), f"center({width:,})")


def _indent(a: Arguments) -> None:
    text, width = str(a["s"]), a.get("width", 4)
    indent = len(width) if isinstance(width, str) else width if isinstance(width, int) else 0
    lines = _count_any(text, _LINE_BREAKS) + 1
    check_text(len(text) + lines * max(indent, 0), "indent")


def _wordwrap(a: Arguments) -> None:
    text, width = str(a["s"]), a.get("width", 79)
    wrap = a.get("wrapstring") or "\n"
    lines = _count_any(text, _WHITESPACE) + len(text) // max(width if isinstance(width, int) else 1, 1) + 1
    check_text(len(text) + lines * len(str(wrap)), "wordwrap")


def _replace(a: Arguments) -> None:
    check_replace(str(a["s"]), str(a["old"]), str(a["new"]), a.get("count"), "replace")


def _join(a: Arguments) -> None:
    check_join(str(a.get("d", "")), items_of(a, "value", "join"), "join")


def _format(a: Arguments) -> None:
    args, kwargs = a.get("args", ()), a.get("kwargs", {})
    check_printf(str(a["value"]), kwargs or args, "format")


def _sum(a: Arguments) -> None:
    items = items_of(a, "iterable", "sum")
    start = a.get("start", 0)
    if isinstance(start, int | float) and all(isinstance(item, int | float) for item in items):
        return
    total = text_length(start) + sum(len(item) if isinstance(item, list | tuple) else 1 for item in items)
    if len(items) * total > MAX_SUM_COPIES:
        raise LimitExceeded(
            f"sum() of {len(items):,} lists would copy about {len(items) * total:,} items, over the "
            f"{MAX_SUM_COPIES:,} limit; use batch/map on fewer items"
        )


def _list(a: Arguments) -> None:
    value = a["value"]
    if isinstance(value, str | list | tuple | range | Mapping):
        check_items(len(value), "list")
    else:
        items_of(a, "value", "list")


FILTER_ESTIMATES: dict[str, FilterEstimate] = {
    "batch": _batch,
    "slice": _slice,
    "center": _center,
    "indent": _indent,
    "wordwrap": _wordwrap,
    "replace": _replace,
    "join": _join,
    "format": _format,
    "sum": _sum,
    "list": _list,
}

# Every filter of the Jinja version in use, reviewed: these grow a value by a small factor
# at most (checked afterwards), the others are estimated above. A filter in neither set
# (a new Jinja version) makes tests/test_templates.py fail until it is reviewed.
BOUNDED_FILTERS = frozenset(
    [
        "abs",
        "attr",
        "capitalize",
        "count",
        "d",
        "default",
        "dictsort",
        "e",
        "escape",
        "filesizeformat",
        "first",
        "float",
        "forceescape",
        "groupby",
        "int",
        "items",
        "last",
        "length",
        "lower",
        "map",
        "max",
        "min",
        "pprint",
        "random",
        "reject",
        "rejectattr",
        "reverse",
        "round",
        "safe",
        "select",
        "selectattr",
        "sort",
        "string",
        "striptags",
        "title",
        "tojson",
        "trim",
        "truncate",
        "unique",
        "upper",
        "urlencode",
        "urlize",
        "wordcount",
        "xmlattr",
    ]
)


# --- methods -----------------------------------------------------------------------------


def _str_replace(owner: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    if len(args) >= 2:
        count = args[2] if len(args) > 2 else kwargs.get("count")
        check_replace(owner, str(args[0]), str(args[1]), count, "replace")


def _str_join(owner: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    if args:
        holder = {"value": args[0]}
        check_join(owner, items_of(holder, "value", "join"), "join")


def _str_split(owner: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    separator = args[0] if args else kwargs.get("sep")
    most = args[1] if len(args) > 1 else kwargs.get("maxsplit", -1)
    parts = _count_any(owner, _WHITESPACE) + 1 if separator is None else owner.count(str(separator)) + 1
    if isinstance(most, int) and most >= 0:
        parts = min(parts, most + 1)
    check_items(parts, "split")


def _str_splitlines(owner: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    check_items(_count_any(owner, _LINE_BREAKS) + 1, "splitlines")


def _strftime(owner: date, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    form = str(args[0]) if args else str(kwargs.get("format", ""))
    widths = sum(int(width or 0) + 32 for width in _STRFTIME.findall(form))
    check_text(len(form) + widths, "strftime")


def _safe_methods(names: str) -> dict[str, MethodEstimate | None]:
    return dict.fromkeys(names.split())


# The methods templates may call, by the kind of value; None: no estimate needed.
METHODS: dict[type, dict[str, MethodEstimate | None]] = {
    str: {
        **_safe_methods(
            "capitalize casefold count endswith find index isalnum isalpha isascii isdecimal isdigit "
            "isidentifier islower isnumeric isprintable isspace istitle isupper lower lstrip partition "
            "removeprefix removesuffix rfind rindex rpartition rstrip startswith strip swapcase title "
            "upper striptags unescape"
        ),
        "replace": _str_replace,
        "join": _str_join,
        "split": _str_split,
        "rsplit": _str_split,
        "splitlines": _str_splitlines,
    },
    list: _safe_methods("count index copy"),
    tuple: _safe_methods("count index"),
    dict: _safe_methods("get items keys values copy"),
    date: {
        **_safe_methods(
            "isoformat date time timestamp weekday isoweekday isocalendar utcoffset tzname ctime "
            "toordinal astimezone replace"
        ),
        "strftime": _strftime,
    },
}


def method_estimate(owner: object, name: str) -> tuple[bool, MethodEstimate | None]:
    """Whether `owner.name(...)` may be called from a template, and its estimator."""
    for kind, methods in METHODS.items():
        if isinstance(owner, kind) and not isinstance(owner, bool):
            return name in methods, methods.get(name)
    return False, None
