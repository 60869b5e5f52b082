"""Replace the `expect` block of fixtures in a YAML file, keeping everything else as written.

Only the lines of each `expect` block are touched. The block is cut out of the file
(its key line and every line indented deeper), loaded with ruamel.yaml's round-trip
loader, changed in place (an entry kept is the same node, with its comments and
style; lists change by deleting and inserting items, which carries each remaining
item's comments along) and dumped at the file's own indentation, then put back where
it was. A fixture without `expect` gets the block after its last key.

Where each fixture and key stands comes from PyYAML's composed nodes (no values are
constructed, so aliases cost nothing here).
"""

from __future__ import annotations

import io
import itertools
import json
import re
from collections import Counter
from typing import Any

import yaml
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import YAMLError as RuamelError
from ruamel.yaml.scalarstring import DoubleQuotedScalarString

from engine.language.fixture_edits import EXPECT_KEYS, EditRefused, Entry, NewExpect, new_key_position

FLOW_WIDTH = 90  # a new entry longer than this on one line is written as a block
_Region = tuple[int, int, int]  # first line, the line after the last, the key's column
_Loader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_KEY_ALONE = re.compile(r"^(- )?[^#]*:(\s+#.*)?$")  # `key:` with its value on the lines below


def edit_yaml(text: str, edits: dict[int, NewExpect]) -> str:
    newline = "\r\n" if "\r\n" in text else "\n"
    lines = text.replace("\r\n", "\n").splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    fixtures = _fixture_nodes(text)
    # From the end backwards, so the line numbers of the fixtures before stay true.
    for index in sorted(edits, reverse=True):
        if index >= len(fixtures):
            raise EditRefused(f"the file has no fixture #{index}")
        node = fixtures[index]
        found = next(((k, v) for k, v in node.value if k.value == "expect"), None)
        if found is not None:
            first, end, column = _region(lines, found[0], found[1])
            writer = _writer(lines[first:end], lines)
            block = _load_block(writer, lines, first, end, column)
            _apply(block, edits[index])
            prefix = lines[first][:column]
            lines[first:end] = _indented(_dump(writer, block), column, prefix)
        else:
            if not node.value:
                raise EditRefused(f"fixture #{index} is an empty mapping")
            key, value = node.value[-1]
            _, end, column = _region(lines, key, value)
            writer = _writer([], lines)
            block = CommentedMap()
            block["expect"] = CommentedMap()
            _apply(block, edits[index])
            lines[end:end] = _indented(_dump(writer, block), column, " " * column)
    result = "".join(lines)
    if not text.endswith(("\n", "\r")):
        result = result.removesuffix("\n")
    return result.replace("\n", newline) if newline != "\n" else result


def _fixture_nodes(text: str) -> list[yaml.MappingNode]:
    try:
        root = yaml.compose(text, Loader=_Loader)
    except yaml.YAMLError as exc:
        raise EditRefused(f"the file does not read as YAML: {exc}") from None
    items = root.value if isinstance(root, yaml.SequenceNode) else [root]
    mappings = [item for item in items if isinstance(item, yaml.MappingNode)]
    if len(mappings) != len(items):
        raise EditRefused("expected a fixture mapping or a list of them")
    return mappings


def _region(lines: list[str], key: yaml.Node, value: yaml.Node) -> _Region:
    """The lines of a key and its value, and the key's column; refused unless the key starts its line."""
    first, column = key.start_mark.line, key.start_mark.column
    if first >= len(lines) or lines[first][:column].replace("-", " ").strip():
        raise EditRefused(
            f"line {first + 1}: the fixture is written on one line (flow style); "
            "write it one key a line so --update can change its expect"
        )
    end = first + 1
    while end < len(lines) and (not lines[end].strip() or _indent(lines[end]) > column):
        end += 1
    if isinstance(value, yaml.ScalarNode | yaml.CollectionNode) and getattr(value, "flow_style", True):
        close = value.end_mark.line + (1 if value.end_mark.column > 0 else 0)
        end = max(end, close)
    while end > first + 1 and not lines[end - 1].strip():
        end -= 1
    return first, end, column


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _load_block(reader: YAML, lines: list[str], first: int, end: int, column: int) -> CommentedMap:
    rest = lines[first + 1 : end]
    text = lines[first][column:] + "".join(line[column:] if line.strip() else "\n" for line in rest)
    try:
        block = reader.load(text)
    except (RuamelError, ValueError) as exc:
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise EditRefused(
            f"line {first + 1}: expect does not read on its own ({problem}); fix it by hand"
        ) from None
    if not isinstance(block, CommentedMap) or list(block) != ["expect"]:
        raise EditRefused(f"line {first + 1}: expect does not read as a mapping on its own; fix it by hand")
    return block


def _indented(text: str, column: int, prefix: str) -> list[str]:
    out = []
    for number, line in enumerate(text.splitlines(keepends=True)):
        if not line.strip():
            out.append("\n")
        else:
            out.append((prefix if number == 0 else " " * column) + line)
    return out


def _writer(block: list[str], lines: list[str]) -> YAML:
    """A round-trip YAML indenting as the block, or else the file, does (mapping step, list dashes)."""
    mapping, offset = _style(block) if _style(block) != (None, None) else _style(lines)
    mapping, offset = mapping or 2, 2 if offset is None else offset
    writer = YAML(typ="rt")
    writer.preserve_quotes = True
    writer.width = 4096  # never fold a long line the author wrote on one
    writer.indent(mapping=mapping, sequence=offset + 2, offset=offset)
    return writer


def _style(lines: list[str]) -> tuple[int | None, int | None]:
    """The most common step between a `key:` line and the line under it, for mappings and lists."""
    steps: Counter[int] = Counter()
    dashes: Counter[int] = Counter()
    for line, following in itertools.pairwise(lines):
        body = line.strip()
        if not _KEY_ALONE.search(body) or not following.strip() or following.lstrip().startswith("#"):
            continue
        step = _indent(following) - _indent(line) - (2 if body.startswith("- ") else 0)
        if following.lstrip().startswith("- "):
            dashes[step] += 1
        elif step > 0:
            steps[step] += 1
    mapping = steps.most_common(1)[0][0] if steps else None
    offset = max(0, dashes.most_common(1)[0][0]) if dashes else None
    return mapping, offset


def _dump(writer: YAML, block: CommentedMap) -> str:
    out = io.StringIO()
    writer.dump(block, out)
    return out.getvalue()


# ---------------------------------------------------------------- changing the block


def _apply(block: CommentedMap, new: NewExpect) -> None:
    expect = block["expect"]
    if not isinstance(expect, CommentedMap):
        expect = block["expect"] = CommentedMap()
    for key in EXPECT_KEYS:
        entries = new.get(key, [])
        old = expect.get(key)
        if not entries:
            if key in expect and old != []:
                del expect[key]
            continue
        if isinstance(old, CommentedSeq):
            _edit_list(old, entries)
        else:
            seq = CommentedSeq(_node(e.value) for e in entries)
            if key in ("fired", "errors"):
                seq.fa.set_flow_style()
            else:
                seq.fa.set_block_style()
            if key in expect:
                expect[key] = seq
            else:
                expect.insert(new_key_position(list(expect), key), key, seq)


def _edit_list(seq: CommentedSeq, entries: list[Entry]) -> None:
    sources = [e.source for e in entries if e.source is not None]
    if sources != sorted(sources):
        raise EditRefused("entries would change their order")  # never planned: a guard
    if len(entries) == len(seq) and all(e.kept and e.source == i for i, e in enumerate(entries)):
        return
    for index in sorted(set(range(len(seq))) - set(sources), reverse=True):
        del seq[index]  # ruamel moves the comments of the items after it
    for position, entry in enumerate(entries):
        if entry.source is None:
            seq.insert(position, _node(entry.value))
        elif not entry.kept:
            seq[position] = _node(entry.value)


def _node(value: Any, flow: bool | None = None) -> Any:
    """`value` as ruamel nodes: a short entry on one line, text quoted when it would read otherwise."""
    if isinstance(value, str):
        return _text(value)
    if not isinstance(value, dict | list):
        return value
    if flow is None:
        flow = len(_flat(value)) <= FLOW_WIDTH and not _has_newline(value)
    node: CommentedMap | CommentedSeq
    if isinstance(value, dict):
        node = CommentedMap((_text(k), _node(v, flow or None)) for k, v in value.items())
    else:
        node = CommentedSeq(_node(v, flow or None) for v in value)
    if flow:
        node.fa.set_flow_style()
    else:
        node.fa.set_block_style()
    return node


def _text(value: str) -> Any:
    """Plain when it reads back as this text, else in double quotes (exact for any text)."""
    return value if _reads_back(value) else DoubleQuotedScalarString(value)


def _reads_back(value: str) -> bool:
    """A plain scalar reads as this same text in the project's YAML (YAML 1.1 numbers included)."""
    if not value or value != value.strip() or value[0] in "!&*?|>'\"%@`{[]}#,-:" or "\n" in value:
        return False
    if ": " in value or " #" in value or value.endswith(":"):
        return False
    try:
        return bool(yaml.safe_load(value) == value)
    except yaml.YAMLError:
        return False


def _flat(value: Any) -> str:
    """About as long as the value written on one line in YAML (no quotes)."""
    return json.dumps(value, ensure_ascii=False).replace('"', "")


def _has_newline(value: Any) -> bool:
    if isinstance(value, str):
        return "\n" in value
    if isinstance(value, dict):
        return any(_has_newline(k) or _has_newline(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_newline(v) for v in value)
    return False
