"""`stockaj-rules test --update`: write what happened into the fixtures' `expect`.

For each fixture, the new `expect` says what its dry run did: the rules that fired,
each rule that did not with its reason (`because`), and the params each action was
prepared with (secrets masked). It changes as little as it can: an entry that still
holds is kept as written (a subset of params, a comment, its style), an entry that no
longer holds is rewritten in its place, new ones are added after. Rules for other
events are listed only when the fixture already named them. Errors are never approved:
entries about a rule that ran into an error are left as they were, `errors` keeps only
the rules that still fail, and such a fixture still fails until the rule is fixed (or
the author lists it under `errors`). Review of the printed diff is the approval.

A file is written only if reading it back gives exactly the old fixtures with the new
expectations; otherwise nothing of it is written and a problem says why.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.errors import SourceProblem
from engine.language.dry_run import because_of, errors_of
from engine.language.expectations import FixtureResult, checked, holds
from engine.language.fixture_edits import EditRefused, Entry, NewExpect, edit_text, plain
from engine.language.fixtures import Expectations
from engine.language.matching import PlannedAction, RuleOutcome, RuleStatus
from engine.language.rules import RuleSet
from engine.language.source_files import MAX_FIXTURE_FILE_BYTES
from engine.language.sources import SourceDocument, parse_text, read_document
from engine.secrets import Masker


@dataclass(frozen=True, slots=True)
class FileUpdate:
    """A fixture file's text before and after; `fixtures` counts the fixtures whose expect changed."""

    path: str
    before: str
    after: str
    fixtures: int


@dataclass(slots=True)
class Approval:
    updates: list[FileUpdate]
    problems: list[SourceProblem]
    results: list[FixtureResult]  # checked again, against the new expectations


def approve(results: list[FixtureResult], rules: RuleSet, masker: Masker) -> Approval:
    """Work out every fixture file's new text; nothing is written here (see `FileUpdate`)."""
    approval = Approval([], [], [])
    for path, in_file in _by_file(results).items():
        update, rechecked, problem = _approve_file(path, in_file, rules, masker)
        if update is not None:
            approval.updates.append(update)
        if problem is not None:
            approval.problems.append(problem)
        approval.results += rechecked
    return approval


def _by_file(results: list[FixtureResult]) -> dict[str, list[FixtureResult]]:
    grouped: dict[str, list[FixtureResult]] = {}
    for result in results:
        grouped.setdefault(result.fixture.file, []).append(result)
    return grouped


def _approve_file(
    path: str, results: list[FixtureResult], rules: RuleSet, masker: Masker
) -> tuple[FileUpdate | None, list[FixtureResult], SourceProblem | None]:
    document = read_document(Path(path), path, max_bytes=MAX_FIXTURE_FILE_BYTES)
    if isinstance(document, SourceProblem):
        return None, results, document
    items = _items(document.value)
    if any(not _same_fixture(items, result) for result in results):
        return None, results, SourceProblem(path, 1, 1, "the file changed while it was tested; run it again")
    plans = {}
    for result in results:
        plan = plan_expect(items[result.fixture.index].get("expect"), result.outcomes, masker)
        if plan is not None:
            plans[result.fixture.index] = plan
    if not plans:
        return None, results, None
    yaml_syntax = not path.endswith(".json")
    try:
        after = edit_text(document.text, plans, yaml_syntax=yaml_syntax)
    except EditRefused as exc:
        return None, results, SourceProblem(path, 1, 1, f"not updated: {exc}")
    except Exception as exc:  # a file shape the rewrite does not handle: one located line, not a traceback
        reason = f"{type(exc).__name__}: {exc}"
        return (
            None,
            results,
            SourceProblem(path, 1, 1, f"not updated: {reason}; this is a bug, please report it"),
        )
    problem = _misread(document, after, plans, yaml_syntax=yaml_syntax)
    if problem is not None:
        return None, results, SourceProblem(path, 1, 1, f"not updated: {problem}")
    rechecked = [_rechecked(result, items, plans, rules, masker) for result in results]
    return FileUpdate(path, document.text, after, len(plans)), rechecked, None


def _items(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _same_fixture(items: list[Any], result: FixtureResult) -> bool:
    index = result.fixture.index
    return (
        index < len(items)
        and isinstance(items[index], dict)
        and _json(items[index].get("payload")) == _json(result.fixture.delivery.payload)
    )


def _rechecked(
    result: FixtureResult, items: list[Any], plans: dict[int, NewExpect], rules: RuleSet, masker: Masker
) -> FixtureResult:
    index = result.fixture.index
    if index not in plans:
        return result
    expect = Expectations.model_validate(plain(plans[index], items[index].get("expect")))
    return checked(dataclasses.replace(result.fixture, expect=expect), result.outcomes, rules, masker)


def _misread(
    document: SourceDocument, after: str, plans: dict[int, NewExpect], *, yaml_syntax: bool
) -> str | None:
    """None when `after` reads as the old fixtures with exactly the planned expectations."""
    reread = parse_text(after, document.path, yaml_syntax=yaml_syntax)
    if isinstance(reread, SourceProblem):
        return f"the new text would not read ({reread.message}); this is a bug, please report it"
    old, new = _items(document.value), _items(reread.value)
    wanted = []
    for index, item in enumerate(old):
        if index in plans and isinstance(item, dict):
            item = {**item, "expect": plain(plans[index], item.get("expect"))}
        wanted.append(item)
    if len(new) != len(old) or any(_json(w) != _json(n) for w, n in zip(wanted, new, strict=True)):
        return "rewriting the expectations would change more than them; this is a bug, please report it"
    return None


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


# ---------------------------------------------------------------- the new expect of one fixture


@dataclass(frozen=True, slots=True)
class _Facts:
    """What the dry run did, by rule id."""

    order: dict[str, int]  # every loaded rule, in rule order
    fired: dict[str, RuleOutcome]
    failed: set[str]  # rules that ran into an error (their entries are left alone)
    designed: dict[str, str]  # rules that did not fire by design: their `because`


def plan_expect(raw: Any, outcomes: list[RuleOutcome], masker: Masker) -> NewExpect | None:
    """The fixture's new `expect`, or None when the one it has already says what happened."""
    old = raw if isinstance(raw, dict) else {}
    facts = _Facts(
        {o.rule.id: i for i, o in enumerate(outcomes)},
        {o.rule.id: o for o in outcomes if o.fired},
        {o.rule.id for o in outcomes if errors_of(o)},
        {o.rule.id: b for o in outcomes if (b := because_of(o)) is not None},
    )
    old_lists = {key: value if isinstance(value, list) else [] for key, value in old.items()}
    mentioned = {_rule_of(item) for items in old_lists.values() for item in items}
    plan: NewExpect = {
        "fired": _fired(old_lists.get("fired", []), facts),
        "not_fired": _not_fired(old_lists.get("not_fired", []), facts, outcomes, mentioned),
        "errors": _kept(old_lists.get("errors", []), lambda rule: rule in facts.failed),
        "actions": _actions(old_lists.get("actions", []), facts, masker),
    }
    if raw is None and not any(plan.values()):
        return None
    if isinstance(raw, dict) and all(
        _unchanged(old_lists.get(key), entries) for key, entries in plan.items()
    ):
        return None
    return plan


def _unchanged(old: list[Any] | None, entries: list[Entry]) -> bool:
    if old is None:
        return not entries
    return len(old) == len(entries) and all(e.kept and e.source == i for i, e in enumerate(entries))


def _rule_of(item: Any) -> str | None:
    return item if isinstance(item, str) else item.get("rule") if isinstance(item, dict) else None


def _kept(old: list[Any], keep: Callable[[str], bool]) -> list[Entry]:
    """The old entries to keep as they are (each rule once)."""
    seen: set[str] = set()
    entries = []
    for index, item in enumerate(old):
        rule = _rule_of(item)
        if rule is not None and rule not in seen and keep(rule):
            seen.add(rule)
            entries.append(Entry(item, index, kept=True))
    return entries


def _fired(old: list[Any], facts: _Facts) -> list[Entry]:
    entries = _kept(old, lambda rule: rule in facts.fired or rule in facts.failed)
    listed = {entry.value for entry in entries}
    return entries + [Entry(rule) for rule in facts.fired if rule not in listed]


def _not_fired(
    old: list[Any], facts: _Facts, outcomes: list[RuleOutcome], mentioned: set[str | None]
) -> list[Entry]:
    entries, seen = [], set()
    for index, item in enumerate(old):
        rule = _rule_of(item)
        if rule is None or rule in seen:
            continue
        seen.add(rule)
        because = facts.designed.get(rule)
        if rule in facts.failed or (
            because is not None and isinstance(item, dict) and item.get("because") == because
        ):
            entries.append(Entry(item, index, kept=True))
        elif because is not None:
            entries.append(Entry({"rule": rule, "because": because}, index))
    for outcome in outcomes:
        rule = outcome.rule.id
        because = facts.designed.get(rule)
        if rule in seen or because is None:
            continue
        if outcome.status is not RuleStatus.EVENT_NOT_MATCHED or rule in mentioned:
            entries.append(Entry({"rule": rule, "because": because}))
    return entries


def _actions(old: list[Any], facts: _Facts, masker: Masker) -> list[Entry]:
    """Kept where an old entry still holds, rewritten in place where its action changed, then the new ones."""
    actual = [
        (rule, action)
        for rule, outcome in facts.fired.items()
        if rule not in facts.failed
        for action in outcome.actions
    ]
    claimed: set[int] = set()
    slots: list[Entry | None] = []
    for index, item in enumerate(old):
        rule = _rule_of(item)
        if rule in facts.failed:
            slots.append(Entry(item, index, kept=True))
            continue
        params = item.get("params", {}) if isinstance(item, dict) else {}
        found = _claim(actual, claimed, item, _holding(params, masker))
        slots.append(Entry(item, index, kept=True) if found is not None else None)
    for index, item in enumerate(old):  # an entry whose action changed: the same action, as it is now
        if slots[index] is None:
            found = _claim(actual, claimed, item, _any_action)
            if found is not None:
                slots[index] = Entry(_written(*actual[found], masker), index)
    entries = [slot for slot in slots if slot is not None]
    for position, (rule, action) in enumerate(actual):
        if position not in claimed:
            after = max(
                (i + 1 for i, e in enumerate(entries) if _rule_of(e.value) == rule), default=len(entries)
            )
            entries.insert(after, Entry(_written(rule, action, masker)))
            claimed.add(position)
    return entries


def _claim(
    actual: list[tuple[str, PlannedAction]],
    claimed: set[int],
    item: Any,
    fits: Callable[[PlannedAction], bool],
) -> int | None:
    """The first unclaimed action of the entry's rule and type that `fits`, now claimed."""
    if not isinstance(item, dict):
        return None
    for position, (rule, action) in enumerate(actual):
        if position in claimed or rule != item.get("rule") or item.get("type") not in (None, action.type):
            continue
        if action.params is not None and fits(action):
            claimed.add(position)
            return position
    return None


def _holding(params: dict[str, Any], masker: Masker) -> Callable[[PlannedAction], bool]:
    return lambda action: holds(params, action, masker)


def _any_action(_: PlannedAction) -> bool:
    return True


def _written(rule: str, action: PlannedAction, masker: Masker) -> dict[str, Any]:
    entry: dict[str, Any] = {"rule": rule, "type": action.type}
    if action.params:
        entry["params"] = masker.mask(action.params)
    return entry
