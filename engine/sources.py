"""Read JSON and YAML files into plain values that remember where each value stood.

Rule and fixture files are written by people, so every error must point at a
line and column. `read_document()` parses a file once and returns a
`SourceDocument`: the value, plus a lazily built map from a path inside the
value (`("actions", 0, "type")`) to its position in the text. The map comes from
PyYAML's node marks, which also serve JSON files (JSON is YAML's flow syntax);
it is built only when an error needs it, so a large fixture costs one
`json.loads`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from engine.errors import SourceProblem

JsonPath = tuple[str | int, ...]

RULE_FILE_SUFFIXES = (".json", ".yaml", ".yml")
MAX_FILE_BYTES = 16 * 1024 * 1024
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


@dataclass(frozen=True, slots=True)
class Position:
    line: int  # 1-based
    column: int  # 1-based


@dataclass(slots=True)
class SourceDocument:
    """One parsed file: `value` is plain JSON-shaped data."""

    path: str
    text: str
    value: Any
    _values: dict[JsonPath, Position] | None = field(default=None, repr=False)
    _keys: dict[JsonPath, Position] = field(default_factory=dict, repr=False)

    def position(self, loc: JsonPath, *, key: bool = False) -> Position:
        """Where `loc` stands; `key=True` prefers the mapping key over its value.

        An unknown path falls back to its nearest known ancestor, and the file's
        first line when nothing is known.
        """
        if self._values is None:
            self._values, self._keys = _positions(self.text)
        if key and loc in self._keys:
            return self._keys[loc]
        for end in range(len(loc), -1, -1):
            found = self._values.get(loc[:end])
            if found is not None:
                return found
        return Position(1, 1)

    def problem(
        self, loc: JsonPath, message: str, *, rule_id: str | None = None, key: bool = False
    ) -> SourceProblem:
        where = self.position(loc, key=key)
        return SourceProblem(self.path, where.line, where.column, message, rule_id)


def iter_source_files(root: Path) -> Iterator[Path]:
    """Every rule or fixture file under `root` (or `root` itself), sorted, hidden ones skipped."""
    if root.is_file():
        yield root
        return
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root).parts
        if (
            path.suffix in RULE_FILE_SUFFIXES
            and path.is_file()
            and not any(part.startswith(".") for part in relative)
        ):
            yield path


def read_document(path: Path, display: str | None = None) -> SourceDocument | SourceProblem:
    """Parse `path` as JSON (`.json`) or YAML; a problem instead of raising."""
    name = display or str(path)
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            return SourceProblem(
                name,
                1,
                1,
                f"file is {size:,} bytes, more than the {MAX_FILE_BYTES:,} allowed; "
                "split it into several files",
            )
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        return SourceProblem(
            name,
            1,
            1,
            f"expected UTF-8 text, found byte {exc.object[exc.start]:#04x} at offset {exc.start}; "
            "save the file as UTF-8",
        )
    except OSError as exc:
        return SourceProblem(name, 1, 1, f"cannot read the file: {exc.strerror or exc}")
    return parse_text(text, name, yaml_syntax=path.suffix != ".json")


def parse_text(text: str, name: str, *, yaml_syntax: bool) -> SourceDocument | SourceProblem:
    """Parse `text`; JSON unless `yaml_syntax`. Never raises for bad input."""
    try:
        value = _parse_yaml(text) if yaml_syntax else json.loads(text)
    except json.JSONDecodeError as exc:
        return SourceProblem(name, exc.lineno, exc.colno, f"invalid JSON: {exc.msg}")
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, column = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        what = exc.problem or exc.context or "syntax error"
        return SourceProblem(name, line, column, f"invalid YAML: {what}")
    except yaml.YAMLError as exc:
        return SourceProblem(name, 1, 1, f"invalid YAML: {exc}")
    except RecursionError:
        return SourceProblem(name, 1, 1, f"nested too deeply: keep files under {MAX_NESTING} levels")
    depth_problem = _check_depth(value, name)
    if depth_problem is not None:
        return depth_problem
    return SourceDocument(name, text, value)


def _parse_yaml(text: str) -> Any:
    loader = _Loader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def _check_depth(value: Any, name: str) -> SourceProblem | None:
    """Refuse absurd nesting before anything recursive walks the value."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_NESTING:
            return SourceProblem(
                name,
                1,
                1,
                f"expected at most {MAX_NESTING} levels of nesting, found more; "
                "flatten the condition or split it into several rules",
            )
        if isinstance(item, dict):
            odd_key = next((key for key in item if not isinstance(key, str)), None)
            if odd_key is not None:
                return SourceProblem(
                    name,
                    1,
                    1,
                    f"expected text keys, found the key {odd_key!r}; quote it",
                )
            stack.extend((child, depth + 1) for child in item.values())
        elif isinstance(item, list):
            stack.extend((child, depth + 1) for child in item)
    return None


def _positions(text: str) -> tuple[dict[JsonPath, Position], dict[JsonPath, Position]]:
    """Map every path to the position of its value and, for mapping entries, its key."""
    values: dict[JsonPath, Position] = {}
    keys: dict[JsonPath, Position] = {}
    loader = _Loader(text)
    try:
        root = loader.get_single_node()
    except (yaml.YAMLError, RecursionError):
        return values, keys
    finally:
        loader.dispose()
    stack: list[tuple[yaml.Node, JsonPath]] = [(root, ())] if root is not None else []
    while stack:
        node, loc = stack.pop()
        values[loc] = _mark(node)
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                child = (*loc, str(key_node.value))
                keys[child] = _mark(key_node)
                stack.append((value_node, child))
        elif isinstance(node, yaml.SequenceNode):
            stack.extend((item, (*loc, index)) for index, item in enumerate(node.value))
    return values, keys


def _mark(node: yaml.Node) -> Position:
    return Position(node.start_mark.line + 1, node.start_mark.column + 1)


def format_loc(loc: JsonPath) -> str:
    """`("actions", 0, "params")` -> `actions[0].params`."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out
