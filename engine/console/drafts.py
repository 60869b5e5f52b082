"""Rule files edited in the playground: read from text, checked with the whole rule set, saved.

A draft is the text of one rule file of RULES_DIR (or of a new one), named by its path inside
the folder. It is loaded exactly as the loader loads a file, so its problems are the ones
`check` reports, located at their line and column in the text. Saving writes it only when the
whole folder with the draft in place still loads, atomically (a hidden temporary file beside
it, renamed over it: the running engine's reload never sees half a file).
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from actions.registry import ActionRegistry
from engine.errors import SourceErrors, SourceProblem
from engine.language.loader import LoadedFile, load_document, load_rules_with
from engine.language.rules import Rule, RuleSet
from engine.language.source_files import MAX_RULE_FILE_BYTES, RULE_FILE_SUFFIXES
from engine.language.sources import parse_text

NEW_RULE = """\
id: my-new-rule
description: what this rule is for
on: item.low_stock
when: data.quantity <= data.minimum_quantity
actions:
  - type: log
    message: "{{ data.name }} is at {{ data.quantity }}"
"""


@dataclass(frozen=True, slots=True)
class Draft:
    path: str  # inside RULES_DIR, e.g. "stock/reorder.yaml"
    text: str
    loaded: LoadedFile

    @property
    def rules(self) -> list[Rule]:
        return [rule for rule, _where in self.loaded.rules]

    @property
    def problems(self) -> list[SourceProblem]:
        return list(self.loaded.problems)


def file_problem(path: str) -> str | None:
    """Why `path` cannot name a rule file inside RULES_DIR, or None."""
    parts = PurePosixPath(path).parts
    if not path or path.startswith("/") or "\\" in path or "\x00" in path:
        return "give the file's path inside the rules folder, such as stock/reorder.yaml"
    if any(part in ("..", ".") or part.startswith(".") for part in parts):
        return "the path may not hold '..' or hidden names: give a path inside the rules folder"
    if PurePosixPath(path).suffix not in RULE_FILE_SUFFIXES:
        return f"a rule file ends in {', '.join(RULE_FILE_SUFFIXES)}: {path!r} would not be loaded"
    if len(path) > 200:
        return "the path is too long: at most 200 characters"
    return None


def resolved_inside(rules_dir: Path, path: str) -> Path | None:
    """`rules_dir / path` when it stays inside the folder once links are followed, else None
    (a link in the folder may lead anywhere; the loader refuses those too)."""
    target = rules_dir / path
    root = rules_dir.resolve()
    try:
        target.resolve().relative_to(root)
    except (ValueError, OSError):
        return None
    return target


def read_draft(text: str, path: str, registry: ActionRegistry) -> Draft:
    """The draft's rules, or its problems located in `text` (at most MAX_RULE_FILE_BYTES)."""
    if len(text.encode("utf-8", "surrogatepass")) > MAX_RULE_FILE_BYTES:
        problem = SourceProblem(path, 1, 1, f"a rule file may hold at most {MAX_RULE_FILE_BYTES:,} bytes")
        return Draft(path, text, LoadedFile((), (problem,)))
    document = parse_text(text, path, yaml_syntax=not path.endswith(".json"))
    if isinstance(document, SourceProblem):
        return Draft(path, text, LoadedFile((), (document,)))
    return Draft(path, text, load_document(document, registry))


def rules_with_draft(current: RuleSet, rules_dir: Path, draft: Draft) -> RuleSet:
    """The running rules with the draft's file replaced by the draft (for its impact)."""
    target = str(rules_dir / draft.path)
    kept = [rule for rule in current.rules if rule.source.rpartition(":")[0] != target]
    taken = {rule.id for rule in draft.rules}
    return RuleSet(tuple([*(r for r in kept if r.id not in taken), *draft.rules]))


def check_saved(rules_dir: Path, draft: Draft, registry: ActionRegistry) -> list[SourceProblem]:
    """Every problem of the rules folder with the draft written: none means it may be saved."""
    if draft.problems:
        return draft.problems
    located = read_draft(draft.text, str(rules_dir / draft.path), registry)
    try:
        load_rules_with(rules_dir, registry, {rules_dir / draft.path: located.loaded})
    except SourceErrors as exc:
        return exc.problems
    return []


def write_draft(rules_dir: Path, draft: Draft) -> Path:
    """Write the draft's text at its path, atomically; the folders on the way are made."""
    target = resolved_inside(rules_dir, draft.path)
    if target is None:
        raise OSError(f"{draft.path} leads outside the rules folder: not written")
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.is_symlink() or (target.exists() and not target.is_file()):
        raise OSError(f"{draft.path} is not a regular file: not replaced")
    handle, temporary = tempfile.mkstemp(prefix=".console-", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(draft.text if draft.text.endswith("\n") else draft.text + "\n")
            out.flush()
            os.fsync(out.fileno())
        os.chmod(temporary, 0o644)
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return target


def source_file(rules_dir: Path, rule: Rule) -> str | None:
    """The path inside `rules_dir` of the file `rule` was loaded from."""
    path = Path(rule.source.rpartition(":")[0])
    try:
        return path.relative_to(rules_dir).as_posix()
    except ValueError:
        return None
