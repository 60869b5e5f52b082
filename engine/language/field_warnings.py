"""The warnings of `stockaj-rules check` (SPEC section 14): fields no delivery of the rule's
events has, a list compared with `==` to one value, and secrets that are not set.

Each warning is a `SourceProblem` at the read's line and column in the rule file, its
message starting with `warning:`. Fields are compared with a `FieldCatalog` built from
the fixtures; a rule whose events no fixture has gets one warning saying its fields were
not checked. Warnings do not stop anything: `check --strict` makes them errors.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.errors import SourceProblem
from engine.language.field_catalog import (
    EACH,
    FieldCatalog,
    FieldInfo,
    Segments,
    close_paths,
    json_type,
    lookup,
    written,
)
from engine.language.field_reads import (
    FieldRead,
    SecretRead,
    condition_reads,
    template_reads,
    template_strings,
)
from engine.language.rules import Rule, RuleSet
from engine.language.scalar_positions import position_in
from engine.language.sources import JsonPath, Position, SourceDocument, read_document

WARNING = "warning: "
MAX_WARNINGS_PER_RULE = 50


@dataclass(frozen=True, slots=True)
class _Located:
    """A read with its place in the file and the words the author wrote for it."""

    read: FieldRead
    where: Position
    text: str
    in_expression: bool


def rule_warnings(
    rules: RuleSet, catalog: FieldCatalog | None, secret_names: Collection[str]
) -> list[SourceProblem]:
    """Every warning for the loaded `rules`; fields are checked only when `catalog` has deliveries."""
    by_id = {rule.id: rule for rule in rules.rules}
    found: list[SourceProblem] = []
    for path in rules.files:
        document = read_document(Path(path))
        if isinstance(document, SourceProblem):
            continue  # changed since it loaded: the next check reports it
        for loc, item in _rule_items(document.value):
            rule_id = item.get("id")
            rule = by_id.get(rule_id) if isinstance(rule_id, str) else None
            if rule is None or not rule.source.startswith(f"{document.path}:"):
                continue
            warnings = list(_warnings(document, loc, item, rule, catalog, secret_names))
            found += warnings[:MAX_WARNINGS_PER_RULE]
    return sorted(found, key=lambda p: (p.path, p.line, p.column))


def _rule_items(value: Any) -> Iterator[tuple[JsonPath, dict[str, Any]]]:
    items = list(enumerate(value)) if isinstance(value, list) else [(None, value)]
    for index, item in items:
        if isinstance(item, dict):
            yield ((index,) if index is not None else ()), item


def _warnings(
    document: SourceDocument,
    loc: JsonPath,
    item: dict[str, Any],
    rule: Rule,
    catalog: FieldCatalog | None,
    secret_names: Collection[str],
) -> Iterator[SourceProblem]:
    reads, secrets = _reads(document, loc, item, rule)

    def warn(where: Position, message: str) -> SourceProblem:
        return SourceProblem(document.path, where.line, where.column, WARNING + message, rule.id)

    for secret, where in secrets:
        if secret.name not in secret_names:
            yield warn(where, _unset_secret(secret.name, secret_names))
    if not catalog or not reads:
        return
    events = catalog.matching(rule.events)
    if not events:
        names = ", ".join(dict.fromkeys(r.text for r in reads))
        on = ", ".join(rule.events)
        yield warn(
            document.position((*loc, "on")),
            f"no fixture is a delivery of {on}, so the fields this rule reads ({_short(names)}) are not "
            "checked; add a fixture of that event (stockaj-rules deliveries export ID prints one)",
        )
        return
    fields = catalog.for_events(events)
    seen = _seen(catalog, events)
    for located in reads:
        message = _field_message(located, fields, seen)
        if message is not None:
            yield warn(located.where, message)


def _reads(
    document: SourceDocument, loc: JsonPath, item: dict[str, Any], rule: Rule
) -> tuple[list[_Located], list[tuple[SecretRead, Position]]]:
    reads: list[_Located] = []
    if rule.condition is not None:
        expression = rule.condition.expression
        for read in condition_reads(rule.condition.logic):
            if expression is not None:
                part = expression.parts.get(_pointer(read.node or read.loc))
                start = part.start if part is not None else 0
                text = expression.text[part.start : part.end] if part is not None else read.written
                if read.has_default:  # the part is `data.x | default(0)`: name the field
                    text = text.split("|")[0].strip()
                where = position_in(document, (*loc, "when"), start)
                reads.append(_Located(read, where, text, True))
            else:
                reads.append(
                    _Located(read, document.position((*loc, "when", *read.loc)), read.written, False)
                )
    secrets: list[tuple[SecretRead, Position]] = []
    for place, text in _templates(item):
        fields, names = template_reads(text, place)
        for read in fields:
            where = position_in(document, (*loc, *place), read.offset or 0)
            reads.append(_Located(read, where, read.written, False))
        secrets += [(s, position_in(document, (*loc, *place), s.offset)) for s in names]
    return reads, secrets


def _templates(item: dict[str, Any]) -> Iterator[tuple[JsonPath, str]]:
    actions = item.get("actions")
    for index, action in enumerate(actions if isinstance(actions, list) else []):
        if isinstance(action, dict):
            for key, value in action.items():
                if key != "type":
                    yield from template_strings(value, ("actions", index, key))
    throttle = item.get("throttle")
    if isinstance(throttle, dict):
        yield from template_strings(throttle.get("key"), ("throttle", "key"))


def _field_message(located: _Located, fields: Mapping[Segments, FieldInfo], seen: str) -> str | None:
    read = located.read
    if read.path is None:
        return (
            f"{read.written} is not a field: fields start with data, payload, event, timestamp or "
            f"delivery_id, so as written the condition never fires; write data.{read.written} for "
            "the delivery's field"
        )
    info = lookup(fields, read.path)
    if info is None:
        close = close_paths(fields, read.path)
        hint = f" (did you mean {' or '.join(close)}?)" if close else ""
        name = written(read.path)
        if EACH in read.path:
            name = f"{located.text} ({name})"
        return (
            f"{name} is not in {seen}{hint}; check the spelling, or add a fixture whose delivery "
            "has it (stockaj-rules fields lists what the fixtures have)"
        )
    if read.is_compared and "array" in info.types:
        return _list_compared(located, seen)
    if read.has_default:
        return _default_of_another_type(located, info, seen)
    return None


_WRITTEN_DEFAULT = {"array": "[]", "string": '""', "number": "0", "boolean": "false"}
_TYPE_WORDS = {"array": "a list", "string": "a text", "number": "a number", "boolean": "true or false"}


def _default_of_another_type(located: _Located, info: FieldInfo, seen: str) -> str | None:
    """`data.tags | default(0)` where the fixtures have a list: the default of its type is `[]`."""
    read = located.read
    types = set(info.types) - {"null"}
    wanted = next(iter(types)) if len(types) == 1 else None
    if wanted not in _WRITTEN_DEFAULT or read.default is None or json_type(read.default) == wanted:
        return None
    assert wanted is not None
    assert read.path is not None
    given = json.dumps(read.default, ensure_ascii=False)
    if located.in_expression:
        better = f"{written(read.path)} | default({_WRITTEN_DEFAULT[wanted]})"
    else:
        better = f'{{"var": ["{read.written}", {_WRITTEN_DEFAULT[wanted]}]}}'
    return (
        f"{written(read.path)} is {_TYPE_WORDS[wanted]} in {seen}, and its default {given} is "
        f"{_TYPE_WORDS[json_type(read.default)]}; give a default of its type: {better}"
    )


def _list_compared(located: _Located, seen: str) -> str:
    read = located.read
    value = json.dumps(read.compared, ensure_ascii=False)
    negated = read.operator in ("!=", "!==")
    if located.in_expression:
        better = f"{value} {'not in' if negated else 'in'} {located.text}"
    else:
        inside: dict[str, Any] = {"in": [read.compared, {"var": read.written}]}
        better = json.dumps({"!": inside} if negated else inside, ensure_ascii=False)
    return (
        f"{located.text} is a list in {seen}, and {read.operator} compares the whole list with "
        f"{value}, an error when the rule runs; did you mean {better}?"
    )


def _unset_secret(name: str, known: Collection[str]) -> str:
    close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.6)
    hint = f" (did you mean secrets.{close[0]}?)" if close else ""
    return (
        f"secrets.{name} is not set: there is no SECRET_{name} in the environment{hint}; set it "
        "where the engine runs, or correct the name (tests show an unset secret as ***)"
    )


def _seen(catalog: FieldCatalog, events: list[str]) -> str:
    """`the fixture of rent.created`, `any of the 4 fixtures of rent.created, rent.updated`."""
    total = sum(catalog.events[event].deliveries for event in events)
    names = ", ".join(events)
    return f"the {catalog.noun} of {names}" if total == 1 else f"the {total} {catalog.plural} of {names}"


def _short(text: str, limit: int = 120) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _pointer(loc: JsonPath) -> str:
    return "".join("/" + str(part).replace("~", "~0").replace("/", "~1") for part in loc)
