"""Read JSON and YAML files into plain values that remember where each value stood.

Rule and fixture files are written by people, so every error must point at a
line and column. `read_document()` parses a file once and returns a
`SourceDocument`: the value, plus a lazily built map from a path inside the
value (`("actions", 0, "type")`) to its position in the text. The map comes from
PyYAML's node marks, which also serve JSON files (JSON is YAML's flow syntax);
it is built only when an error or a rule's `source` needs it, so a large
fixture costs one `json.loads`.

YAML is composed into nodes first and constructed only when its anchors and
aliases expand to a bounded size: a few hundred bytes of nested aliases would
otherwise stand for billions of values to every walk of the result. The nodes
are kept for the position map, so a YAML file is parsed once.
"""

from __future__ import annotations

import json
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from engine.errors import SourceProblem
from engine.language.source_files import MAX_RULE_FILE_BYTES, SourceTooBig, read_source
from engine.language.yaml_nodes import Refused, check_aliases, construct

JsonPath = tuple[str | int, ...]

MAX_NESTING = 64

_BaseLoader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_BOOL = "tag:yaml.org,2002:bool"
_TIMESTAMP = "tag:yaml.org,2002:timestamp"


class _Loader(_BaseLoader):  # type: ignore[misc, valid-type]
    """YAML that reads like JSON: `on:` stays a key, `yes` stays text, dates stay text.

    YAML 1.1 resolves `on`, `off`, `yes` and `no` to booleans, which would turn a
    rule's `on:` key into `True`; only `true` and `false` are booleans here.
    Timestamps stay strings so payloads keep the exact text Stockaj sent.
    """


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag not in (_BOOL, _TIMESTAMP)]
    for first, resolvers in _BaseLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(_BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))


def _construct_int(loader: _Loader, node: yaml.ScalarNode) -> int:
    """An integer, or a located error for one longer than Python reads (4,300 digits)."""
    try:
        return int(yaml.constructor.SafeConstructor.construct_yaml_int(loader, node))
    except ValueError:
        raise Refused(None, None, _long_number(len(str(node.value))), node.start_mark) from None


_Loader.add_constructor("tag:yaml.org,2002:int", _construct_int)


def _long_number(digits: int) -> str:
    return (
        f"a number of {digits:,} digits, more than the {sys.get_int_max_str_digits():,} "
        "that can be read; write it as text (in quotes)"
    )


@dataclass(frozen=True, slots=True)
class Position:
    line: int  # 1-based
    column: int  # 1-based


@dataclass(frozen=True, slots=True)
class ScalarMark:
    """Where a scalar starts in the text (a character index) and its YAML style.

    `style` is None (plain), "'", '"' (JSON strings too), "|" or ">".
    """

    index: int
    style: str | None


@dataclass(slots=True)
class SourceDocument:
    """One parsed file: `value` is plain JSON-shaped data."""

    path: str
    text: str
    value: Any
    _root: yaml.Node | None = field(default=None, repr=False)  # YAML's nodes, kept for positions
    _values: dict[JsonPath, Position] | None = field(default=None, repr=False)
    _keys: dict[JsonPath, Position] = field(default_factory=dict, repr=False)
    _scalars: dict[JsonPath, ScalarMark] = field(default_factory=dict, repr=False)

    def position(self, loc: JsonPath, *, key: bool = False) -> Position:
        """Where `loc` stands; `key=True` prefers the mapping key over its value.

        An unknown path falls back to its nearest known ancestor, and the file's
        first line when nothing is known.
        """
        if self._values is None:
            if self._root is not None and not key:  # a rule's own line, on every load: no map needed
                node = _node_at(self._root, loc)
                if node is not None:
                    return _mark(node)
            self._build_maps()
        assert self._values is not None
        if key and loc in self._keys:
            return self._keys[loc]
        for end in range(len(loc), -1, -1):
            found = self._values.get(loc[:end])
            if found is not None:
                return found
        return Position(1, 1)

    def scalar(self, loc: JsonPath) -> ScalarMark | None:
        """The start and style of the text value at `loc` (None when it is not a scalar)."""
        if self._values is None:
            self._build_maps()
        return self._scalars.get(loc)

    def _build_maps(self) -> None:
        root = self._root if self._root is not None else _compose(self.text)
        self._values, self._keys, self._scalars = _positions(root)
        self._root = None

    def problem(
        self,
        loc: JsonPath,
        message: str,
        *,
        rule_id: str | None = None,
        key: bool = False,
        template_line: int = 1,
    ) -> SourceProblem:
        """A problem at `loc`; `template_line` > 1 points inside a YAML block scalar (`|`, `>`)."""
        where = self.position(loc, key=key)
        line, column = where.line, where.column
        lines = self.text.splitlines()
        if template_line > 1 and lines[line - 1][column - 1 : column] in ("|", ">"):
            # A block scalar's text starts on the line after its indicator.
            target = line + template_line
            if target <= len(lines):
                content = lines[target - 1]
                line, column = target, len(content) - len(content.lstrip()) + 1
        return SourceProblem(self.path, line, column, message, rule_id)


def read_document(
    path: Path, display: str | None = None, *, max_bytes: int = MAX_RULE_FILE_BYTES
) -> SourceDocument | SourceProblem:
    """Parse `path` as JSON (`.json`) or YAML; a problem instead of raising."""
    name = display or str(path)
    try:
        text = read_source(path, max_bytes).decode("utf-8")
    except SourceTooBig as exc:
        return SourceProblem(name, 1, 1, str(exc))
    except UnicodeDecodeError as exc:
        before = exc.object[: exc.start]
        line = before.count(b"\n") + 1
        column = exc.start - (before.rfind(b"\n") + 1) + 1
        return SourceProblem(
            name,
            line,
            column,
            f"expected UTF-8 text, found the byte {exc.object[exc.start]:#04x}; save the file as UTF-8",
        )
    except OSError as exc:
        return SourceProblem(name, 1, 1, f"cannot read the file: {exc.strerror or exc}")
    return parse_text(text, name, yaml_syntax=path.suffix != ".json")


def parse_text(text: str, name: str, *, yaml_syntax: bool) -> SourceDocument | SourceProblem:
    """Parse `text`; JSON unless `yaml_syntax`. Never raises for bad input."""
    root = None
    try:
        if yaml_syntax:
            value, root = _parse_yaml(text)
        else:
            value = json.loads(text, parse_constant=_not_json)
    except json.JSONDecodeError as exc:
        return _json_problem(exc, text, name)
    except yaml.MarkedYAMLError as exc:
        return _yaml_problem(exc, name)
    except yaml.YAMLError as exc:
        return SourceProblem(name, 1, 1, f"invalid YAML: {exc}")
    except RecursionError:
        return SourceProblem(name, 1, 1, TOO_DEEP)
    except ValueError as exc:  # NaN or Infinity, refused by _not_json; a number too long to read
        return _json_value_problem(exc, text, name)
    document = SourceDocument(name, text, value, root)
    return _check_shape(document) or document


TOO_DEEP = (
    f"expected at most {MAX_NESTING} levels of nesting, found more; "
    "flatten the condition or split it into several rules"
)
_JSON_CONSTANT = re.compile(r"(?<![\w\"])-?(?:NaN|Infinity)(?![\w\"])")
_LONG_NUMBER = re.compile(rf"(?<![\w.\"])-?\d{{{sys.get_int_max_str_digits() + 1},}}")


def _line_column(text: str, offset: int) -> tuple[int, int]:
    line = text.count("\n", 0, offset) + 1
    return line, offset - (text.rfind("\n", 0, offset) + 1) + 1


def _json_problem(exc: json.JSONDecodeError, text: str, name: str) -> SourceProblem:
    closing = text[exc.pos : exc.pos + 1]
    comma = text.rfind(",", 0, exc.pos)
    if closing in ("]", "}") and comma >= 0 and not text[comma + 1 : exc.pos].strip():
        line, column = _line_column(text, comma)
        return SourceProblem(
            name, line, column, f"invalid JSON: a comma before '{closing}'; remove the trailing comma"
        )
    return SourceProblem(name, exc.lineno, exc.colno, f"invalid JSON: {exc.msg}")


def _yaml_problem(exc: yaml.MarkedYAMLError, name: str) -> SourceProblem:
    problem = exc.problem or "syntax error"
    mark = exc.problem_mark or exc.context_mark
    if "end of stream" in problem and exc.context_mark is not None:
        # An unclosed quote or bracket: point where it was opened, not at the end of the file.
        mark = exc.context_mark
        problem = f"{(exc.context or 'a value').removeprefix('while scanning ')} is never closed"
    if "unhashable key" in problem or "alphabetic or numeric character" in problem:
        problem += "; quote values that start with {, * or & (write \"{{ data.id }}\", '*')"
    if "maximum nesting depth" in problem:
        problem = TOO_DEEP
    elif not isinstance(exc, Refused):
        problem = f"invalid YAML: {problem}"
    line, column = (mark.line + 1, mark.column + 1) if mark else (1, 1)
    return SourceProblem(name, line, column, problem)


def _json_value_problem(exc: ValueError, text: str, name: str) -> SourceProblem:
    long_number = _LONG_NUMBER.search(text)
    if long_number is not None:
        line, column = _line_column(text, long_number.start())
        digits = len(long_number.group().lstrip("-"))
        return SourceProblem(name, line, column, f"invalid JSON: {_long_number(digits)}")
    found = _JSON_CONSTANT.search(text)
    line, column = _line_column(text, found.start()) if found else (1, 1)
    return SourceProblem(name, line, column, f"invalid JSON: {exc}")


def _not_json(constant: str) -> Any:
    raise ValueError(f"{constant} is not a JSON number; write a number or null")


def _parse_yaml(text: str) -> tuple[Any, yaml.Node | None]:
    """The value and the nodes it was built from; aliases are bounded before anything is built."""
    loader = _Loader(text)
    try:
        root = loader.get_single_node()
        if root is None:
            return None, None
        if "&" in text:  # no anchor, no alias
            check_aliases(root)
        return construct(loader, root), root
    finally:
        loader.dispose()


def compose_nodes(text: str) -> yaml.Node | None:
    """The YAML nodes of `text` (JSON or YAML), with their marks; None when it does not compose."""
    return _compose(text)


def _compose(text: str) -> yaml.Node | None:
    """The nodes of `text` (JSON or YAML) for positions; None when it does not compose."""
    # libyaml refuses JSON's surrogate pairs ("\ud83d\ude00"), which the pure-Python reader takes.
    for loader in (_Loader(text), yaml.SafeLoader(text)):
        try:
            root: yaml.Node | None = loader.get_single_node()
            if root is not None:
                check_aliases(root)
            return root
        except (yaml.YAMLError, RecursionError):
            continue
        finally:
            loader.dispose()
    return None


def _check_shape(document: SourceDocument) -> SourceProblem | None:
    """Refuse absurd nesting and values JSON cannot hold, before anything recursive walks them."""
    stack: list[tuple[Any, JsonPath]] = [(document.value, ())]
    while stack:
        item, loc = stack.pop()
        if len(loc) >= MAX_NESTING:
            return SourceProblem(document.path, 1, 1, TOO_DEEP)
        if isinstance(item, dict):
            odd_key = next((key for key in item if not isinstance(key, str)), None)
            if odd_key is not None:
                return document.problem(loc, f"expected text keys, found the key {odd_key!r}; quote it")
            stack.extend((child, (*loc, key)) for key, child in item.items())
        elif isinstance(item, list):
            stack.extend((child, (*loc, index)) for index, child in enumerate(item))
        elif isinstance(item, float) and not math.isfinite(item):
            return document.problem(loc, f"expected a number, found {item}; write a number or null")
        elif not (item is None or isinstance(item, str | int | float | bool)):
            return document.problem(
                loc,
                "expected text, a number, true/false, null, a list or an object, "
                f"found a {type(item).__name__}",
            )
    return None


def _positions(
    root: yaml.Node | None,
) -> tuple[dict[JsonPath, Position], dict[JsonPath, Position], dict[JsonPath, ScalarMark]]:
    """Map every path to the position of its value and, for mapping entries, its key;
    and every text value to its start and style (engine.language.scalar_positions reads inside it)."""
    values: dict[JsonPath, Position] = {}
    keys: dict[JsonPath, Position] = {}
    scalars: dict[JsonPath, ScalarMark] = {}
    stack: list[tuple[yaml.Node, JsonPath]] = [(root, ())] if root is not None else []
    while stack:
        node, loc = stack.pop()
        values[loc] = _mark(node)
        if isinstance(node, yaml.ScalarNode):
            scalars[loc] = ScalarMark(node.start_mark.index, node.style or None)
        elif isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                child = (*loc, str(key_node.value))
                keys[child] = _mark(key_node)
                stack.append((value_node, child))
        elif isinstance(node, yaml.SequenceNode):
            stack.extend((item, (*loc, index)) for index, item in enumerate(node.value))
    return values, keys, scalars


def _node_at(root: yaml.Node, loc: JsonPath) -> yaml.Node | None:
    """The node at `loc`, found by walking down from `root`; None when it is not there."""
    node = root
    for part in loc:
        if isinstance(node, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
            node = node.value[part]
        elif isinstance(node, yaml.MappingNode) and isinstance(part, str):
            found = [value for key, value in node.value if key.value == part]
            if len(found) != 1:
                return None
            node = found[0]
        else:
            return None
    return node


def _mark(node: yaml.Node) -> Position:
    return Position(node.start_mark.line + 1, node.start_mark.column + 1)


def format_loc(loc: JsonPath) -> str:
    """`("actions", 0, "params")` -> `actions[0].params`."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out
