"""Rewrite the JsonLogic conditions of a rule file as expressions, changing nothing else.

Only the text of each `when` value is replaced (`when: {"<=": [...]}` becomes
`when: data.quantity <= data.minimum_quantity`): every other byte of the file stays as
it was, so comments, key order, indentation and quoting are kept. A comment inside a
replaced JsonLogic block is moved to its own line above `when:`. The text of each `when`
comes from engine.language.expressions.render; a condition with no expression form stays
JsonLogic, with the reason. The result is checked before it is returned: it parses to
the same rules, each rewritten `when` being exactly the expression text.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import yaml

from engine.errors import SourceProblem
from engine.language.expressions.render import NoExpression, to_expression
from engine.language.sources import JsonPath, SourceDocument, compose_nodes, parse_text


@dataclass(slots=True)
class Rewrite:
    """The file's new text; which rules were rewritten, and which stay JsonLogic and why."""

    text: str
    rewritten: list[str] = field(default_factory=list)
    kept: list[SourceProblem] = field(default_factory=list)  # at the `when` that stays JsonLogic


@dataclass(frozen=True, slots=True)
class _Edit:
    loc: JsonPath
    rule_id: str
    expression: str
    start: int  # just after the colon of `when:`
    end: int  # the end of the JsonLogic value
    line_start: int  # the start of the line holding `when`
    indent: str
    comments: tuple[str, ...]  # moved above `when:`
    trailing: str  # a comment on the `when:` line itself, kept after the expression


def rewrite_conditions(text: str, name: str, *, yaml_syntax: bool) -> Rewrite | SourceProblem:
    """`text` with every JsonLogic `when` that has an expression form written as one."""
    document = parse_text(text, name, yaml_syntax=yaml_syntax)
    if isinstance(document, SourceProblem):
        return document
    root = compose_nodes(text)
    result = Rewrite(text)
    if root is None:
        return result
    edits: list[_Edit] = []

    def keep(loc: JsonPath, rule_id: str, why: str) -> SourceProblem:
        return document.problem((*loc, "when"), f"kept in JsonLogic: {why}", rule_id=rule_id, key=True)

    for loc, rule in _rules(document.value):
        rule_id = str(rule.get("id", "?"))
        logic = rule.get("when")
        if logic is None or isinstance(logic, str):
            continue
        try:
            # In a JSON string a double quote needs a backslash: write text in single quotes there.
            expression = to_expression(logic, quote='"' if yaml_syntax else "'")
        except NoExpression as exc:
            result.kept.append(keep(loc, rule_id, str(exc)))
            continue
        edit = _edit(text, root, loc, rule_id, expression)
        if isinstance(edit, str):
            result.kept.append(keep(loc, rule_id, edit))
        else:
            edits.append(edit)
    newline = "\r\n" if "\r\n" in text else "\n"
    for edit in sorted(edits, key=lambda e: e.start, reverse=True):
        written = _written(result.text, edit, newline, name, yaml_syntax)
        if written is None:
            why = "no way to write the expression here read back the same; rewrite it by hand"
            result.kept.append(keep(edit.loc, edit.rule_id, why))
            continue
        result.text = written
        result.rewritten.insert(0, edit.rule_id)
    return _checked(result, text, document, edits, yaml_syntax)


def _checked(
    result: Rewrite, text: str, document: SourceDocument, edits: list[_Edit], yaml_syntax: bool
) -> Rewrite:
    """`result` when its text reads as `before` with the rewritten conditions; else nothing changed."""
    expected = json.loads(json.dumps(document.value))
    for edit in edits:
        if edit.rule_id in result.rewritten:
            rule = _value_at(expected, edit.loc)
            rule["when"] = edit.expression
    after = parse_text(result.text, document.path, yaml_syntax=yaml_syntax)
    if isinstance(after, SourceProblem) or after.value != expected:
        why = "kept in JsonLogic: the rewritten file did not read back the same; rewrite it by hand"
        kept = [
            document.problem((*edit.loc, "when"), why, rule_id=edit.rule_id, key=True)
            for edit in edits
            if edit.rule_id in result.rewritten
        ]
        return Rewrite(text, [], [*result.kept, *kept])
    return result


def _rules(value: Any) -> Iterator[tuple[JsonPath, dict[str, Any]]]:
    items = list(enumerate(value)) if isinstance(value, list) else [(None, value)]
    for index, item in items:
        if isinstance(item, dict):
            yield ((index,) if index is not None else ()), item


def _edit(text: str, root: yaml.Node, loc: JsonPath, rule_id: str, expression: str) -> _Edit | str:
    rule = root.value[loc[0]] if loc else root
    if not isinstance(rule, yaml.MappingNode):
        return "the rule could not be found in the file"
    pairs = [(key, value) for key, value in rule.value if key.value == "when"]
    if len(pairs) != 1:
        return "the rule has more than one `when`"
    key, value = pairs[0]
    if value.start_mark.index < key.end_mark.index or text[value.start_mark.index] in "&*":
        return "its condition is a YAML anchor or alias; rewrite it by hand"
    colon = text.find(":", key.end_mark.index)
    end = _end(value)
    if colon < 0 or colon >= value.start_mark.index:
        return "the rule could not be found in the file"
    line_start = text.rfind("\n", 0, key.start_mark.index) + 1
    indent = " " * key.start_mark.column
    comments = list(_comments(text, colon + 1, end, value))
    trailing = ""
    if comments and "\n" not in text[colon : comments[0][0]]:
        trailing = comments.pop(0)[1]
    above = tuple(comment for _, comment in comments)
    return _Edit(loc, rule_id, expression, colon + 1, end, line_start, indent, above, trailing)


def _end(node: yaml.Node) -> int:
    """Where the node's own text ends: a block collection's mark runs on to the next key."""
    if isinstance(node, yaml.ScalarNode) or getattr(node, "flow_style", False) or not node.value:
        return int(node.end_mark.index)
    last = node.value[-1]
    return _end(last[1] if isinstance(node, yaml.MappingNode) else last)


def _scalar_spans(node: yaml.Node) -> Iterator[tuple[int, int]]:
    if isinstance(node, yaml.ScalarNode):
        yield node.start_mark.index, node.end_mark.index
    elif isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            yield from _scalar_spans(key)
            yield from _scalar_spans(value)
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            yield from _scalar_spans(item)


def _comments(text: str, start: int, end: int, node: yaml.Node) -> Iterator[tuple[int, str]]:
    """The `# ...` comments between `start` and `end` (not a `#` inside a value), with where."""
    spans = list(_scalar_spans(node))
    for match in re.finditer(r"(?:(?<=\s)|^)#[^\n\r]*", text[start:end], flags=re.MULTILINE):
        at = start + match.start()
        if not any(a <= at < b for a, b in spans):
            yield at, match.group().rstrip()
    # A comment after the value on its last line is not in the span: it stays where it is.


def _written(text: str, edit: _Edit, newline: str, name: str, yaml_syntax: bool) -> str | None:
    """`text` with the edit made in the first style that reads back as the expression."""
    above = "".join(f"{edit.indent}{comment}{newline}" for comment in edit.comments)
    for scalar in _scalars(edit.expression, yaml_syntax):
        candidate = (
            text[: edit.line_start]
            + above
            + text[edit.line_start : edit.start]
            + " "
            + scalar
            + (f"  {edit.trailing}" if edit.trailing else "")
            + text[edit.end :]
        )
        document = parse_text(candidate, name, yaml_syntax=yaml_syntax)
        if isinstance(document, SourceProblem):
            continue
        if _value_at(document.value, (*edit.loc, "when")) == edit.expression:
            return candidate
    return None


def _scalars(expression: str, yaml_syntax: bool) -> Iterator[str]:
    """The ways to write the expression, plainest first."""
    if yaml_syntax:
        yield expression
        yield "'" + expression.replace("'", "''") + "'"
    yield json.dumps(expression, ensure_ascii=False)


def _value_at(value: Any, loc: JsonPath) -> Any:
    for part in loc:
        try:
            value = value[part]
        except (KeyError, IndexError, TypeError):
            return None
    return value
