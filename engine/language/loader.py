"""Load a rules folder into a `RuleSet`, or report every problem in it at once.

Each problem is located in the source text:
`rules/stock.yaml:5:15: reorder-low-stock: unknown action type 'htpp' (did you mean 'http'?)`.

Each file is loaded on its own into a `LoadedFile`; ids are checked across
files afterwards. A running process keeps its `LoadedFile`s in a `FileCache`,
so a reload reads only the files whose stamp (inode, size, times) changed.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from pydantic import ValidationError

from actions.registry import ActionRegistry
from engine.errors import SourceErrors, SourceProblem
from engine.language import conditions
from engine.language.expressions import CompiledExpression, compile_expression
from engine.language.params import bind_action
from engine.language.rules import (
    CALENDAR_DAY,
    Rule,
    RuleSet,
    RuleSpec,
    Throttle,
    ThrottleSpec,
    parse_duration,
)
from engine.language.scalar_positions import position_in
from engine.language.source_files import Stamp, find_source_files
from engine.language.sources import JsonPath, Position, SourceDocument, read_document
from engine.language.templates import ParamTemplate, compile_value
from engine.language.validation import FieldProblem, describe, describe_value

_EXPECTATIONS: dict[JsonPath, str] = {
    ("id",): "an id of letters, digits, '.', '_' and '-' (starting with a letter or digit)",
    ("on",): "an event name such as 'rent.created', or a list of them",
    ("throttle", "per"): "a duration such as '30m', '6h' or '1d', or calendar day",
    ("enabled",): "true or false (write enabled: false to switch the rule off, without quotes; "
    "no, off, yes, on, 0 and 1 are not true or false here)",
}


@dataclass(frozen=True, slots=True)
class LoadedFile:
    """One file's rules, each with where its id stands, and the file's own problems."""

    rules: tuple[tuple[Rule, Position], ...]
    problems: tuple[SourceProblem, ...]


FileCache = dict[str, tuple[Stamp, LoadedFile]]


def load_rules(
    rules_dir: Path,
    registry: ActionRegistry,
    cache: FileCache | None = None,
    pace: Callable[[], None] | None = None,
) -> RuleSet:
    """Every rule under `rules_dir`; raises `SourceErrors` listing every problem found.

    With a `cache`, a file whose stamp is the one cached is not read again; the
    cache is left holding exactly the files found this time. `pace` is called
    before each file and rule is read (a reload beside a receiver lets it go first).
    """
    if not rules_dir.exists():
        raise SourceErrors(
            [SourceProblem(str(rules_dir), 1, 1, "rules folder not found; create it or set RULES_DIR")]
        )
    paths, problems = find_source_files(rules_dir)
    loaded: list[LoadedFile] = []
    kept: FileCache = {}
    for path in paths:
        name = str(path)
        stamp = Stamp.of(path)
        cached = cache.get(name) if cache is not None and stamp is not None else None
        fresh = cached is None or cached[0] != stamp
        file = load_file(path, registry, pace) if fresh or cached is None else cached[1]
        if stamp is not None:
            kept[name] = (stamp, file)
        loaded.append(file)
    if cache is not None:
        cache.clear()
        cache.update(kept)
    rules = _unique_rules(loaded, problems)
    if problems:
        raise SourceErrors(problems)
    return RuleSet(tuple(rules), tuple(str(path) for path in paths))


def load_rules_with(rules_dir: Path, registry: ActionRegistry, drafts: Mapping[Path, LoadedFile]) -> RuleSet:
    """The rules `rules_dir` would hold with `drafts` written at their paths (inside it): what
    saving them would load. Raises `SourceErrors` like `load_rules`."""
    if not rules_dir.exists():
        raise SourceErrors(
            [SourceProblem(str(rules_dir), 1, 1, "rules folder not found; create it or set RULES_DIR")]
        )
    found, problems = find_source_files(rules_dir)
    paths = sorted({*found, *drafts})
    loaded = [drafts[path] if path in drafts else load_file(path, registry) for path in paths]
    rules = _unique_rules(loaded, problems)
    if problems:
        raise SourceErrors(problems)
    return RuleSet(tuple(rules), tuple(str(path) for path in paths))


def load_file(path: Path, registry: ActionRegistry, pace: Callable[[], None] | None = None) -> LoadedFile:
    """The rules of one file, or its problems."""
    pace = pace or _no_pause
    pace()
    document = read_document(path)
    if isinstance(document, SourceProblem):
        return LoadedFile((), (document,))
    return load_document(document, registry, pace)


def load_document(
    document: SourceDocument, registry: ActionRegistry, pace: Callable[[], None] | None = None
) -> LoadedFile:
    """The rules of one parsed file (or of a draft typed in the console), or its problems."""
    pace = pace or _no_pause
    problems: list[SourceProblem] = []
    rules = []
    for loc, item in _rule_items(document, problems):
        pace()
        rule = _load_rule(document, loc, item, registry, problems)
        if rule is not None:
            rules.append((rule, document.position((*loc, "id"))))
    return LoadedFile(tuple(rules), tuple(problems))


def _no_pause() -> None:
    pass


def _unique_rules(files: list[LoadedFile], problems: list[SourceProblem]) -> list[Rule]:
    """The rules of every file in order; a second rule with an id already seen is a problem."""
    rules: list[Rule] = []
    seen: dict[str, str] = {}
    for file in files:
        problems += file.problems
        for rule, where in file.rules:
            if rule.id in seen:
                path = rule.source.rpartition(":")[0]
                problems.append(
                    SourceProblem(
                        path,
                        where.line,
                        where.column,
                        f"duplicate rule id: also defined at {seen[rule.id]}; give each rule its own id",
                        rule.id,
                    )
                )
                continue
            seen[rule.id] = rule.source
            rules.append(rule)
    return rules


def _rule_items(document: SourceDocument, problems: list[SourceProblem]) -> list[tuple[JsonPath, Any]]:
    value = document.value
    items: list[tuple[JsonPath, Any]] = (
        [((i,), item) for i, item in enumerate(value)] if isinstance(value, list) else [((), value)]
    )
    good = []
    for loc, item in items:
        if isinstance(item, dict):
            good.append((loc, item))
        else:
            problems.append(
                document.problem(
                    loc,
                    f"expected a rule (an object with id, on and actions), found {describe_value(item)}",
                )
            )
    return good


def _load_rule(
    document: SourceDocument,
    loc: JsonPath,
    item: dict[str, Any],
    registry: ActionRegistry,
    problems: list[SourceProblem],
) -> Rule | None:
    rule_id = item.get("id") if isinstance(item.get("id"), str) else None
    found: list[FieldProblem] = []
    spec: RuleSpec | None = None
    try:
        spec = RuleSpec.model_validate(item)
    except ValidationError as exc:
        found += describe(exc, RuleSpec, _EXPECTATIONS)

    condition, failed = None, False
    if "when" in item and item["when"] is not None:
        logic, expression = item["when"], None
        if isinstance(logic, str):  # an expression: never a truthy JsonLogic text constant
            expression = _compile_when(document, (*loc, "when"), logic, rule_id, problems)
            logic, failed = (expression.logic, False) if expression else (None, True)
        if not failed:
            checked = conditions.check(logic)
            found += [FieldProblem(("when", *p.loc), p.message) for p in checked]
            if not checked:
                condition = conditions.Condition(logic, expression)

    actions = []
    for index, action in enumerate(item.get("actions") or []):
        if isinstance(action, dict) and isinstance(action.get("type"), str):
            bound, action_problems = bind_action(action, index, registry)
            found += action_problems
            if bound is not None:
                actions.append(bound)

    throttle = None
    if spec is not None and spec.throttle is not None:
        key, key_problems = compile_value(spec.throttle.key, ("throttle", "key"))
        found += [FieldProblem(p.loc, p.message, template_line=p.line) for p in key_problems]
        throttle, throttle_problems = _throttle(spec.throttle, key)
        found += throttle_problems

    for problem in found:
        problems.append(
            document.problem(
                (*loc, *problem.loc),
                problem.message,
                rule_id=rule_id,
                key=problem.at_key,
                template_line=problem.template_line,
            )
        )
    if found or failed or spec is None:
        return None
    where = document.position(loc)
    return Rule(
        id=spec.id,
        description=spec.description,
        events=tuple(spec.on),
        condition=condition,
        actions=tuple(actions),
        enabled=spec.enabled,
        throttle=throttle,
        source=f"{document.path}:{where.line}",
        digest=_digest(item),
    )


def _throttle(spec: ThrottleSpec, key: ParamTemplate) -> tuple[Throttle, list[FieldProblem]]:
    if spec.per != CALENDAR_DAY:
        problems = []
        if spec.timezone is not None:
            message = "timezone applies to per: calendar day only; remove it, or write per: calendar day"
            problems.append(FieldProblem(("throttle", "timezone"), message))
        return Throttle(key, parse_duration(spec.per), spec.per), problems
    zone = spec.timezone or "UTC"
    return Throttle(key, timedelta(days=1), f"calendar day ({zone})", ZoneInfo(zone)), []


def _digest(item: dict[str, Any]) -> str:
    """The rule as written, whatever its layout and description: two rules with the same digest
    run alike."""
    running = {key: value for key, value in item.items() if key != "description"}
    written = json.dumps(running, sort_keys=True, ensure_ascii=False, default=repr)
    return hashlib.sha256(written.encode("utf-8", "surrogatepass")).hexdigest()


def _compile_when(
    document: SourceDocument,
    loc: JsonPath,
    text: str,
    rule_id: str | None,
    problems: list[SourceProblem],
) -> CompiledExpression | None:
    """The compiled expression, or None with each problem added at its line and column in the file."""
    compiled = compile_expression(text)
    if isinstance(compiled, CompiledExpression):
        return compiled
    for problem in compiled:
        where = position_in(document, loc, problem.start)
        problems.append(SourceProblem(document.path, where.line, where.column, problem.message, rule_id))
    return None
