"""Every error the engine raises on purpose, under one base class.

    StockajRulesError
    ├── SourceErrors          one or more problems in rule or fixture files
    ├── TemplateRenderError   a template failed for one delivery
    └── ConfigurationError    bad settings at start-up
        └── PluginError       an installed action plugin cannot be used

A problem in a file is a `SourceProblem`: path, line, column, the rule id when
known, and a message in three parts (what was expected, what was found, a hint).
Loaders collect every problem of a run before raising, so a rule author fixes
them all in one go.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


class StockajRulesError(Exception):
    """Base class of the errors this project raises deliberately."""


@dataclass(frozen=True, slots=True)
class SourceProblem:
    """One problem found in a rule or fixture file, located in its source text."""

    path: str
    line: int
    column: int
    message: str
    rule_id: str | None = None

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}:{self.column}"
        if self.rule_id:
            return f"{where}: {self.rule_id}: {self.message}"
        return f"{where}: {self.message}"


class SourceErrors(StockajRulesError):
    """Raised with every problem a loader found; `problems` keeps them in file order."""

    def __init__(self, problems: Iterable[SourceProblem]) -> None:
        self.problems = sorted(problems, key=lambda p: (p.path, p.line, p.column))
        super().__init__("\n".join(str(p) for p in self.problems))


class TemplateRenderError(StockajRulesError):
    """A template could not be rendered for one delivery (a missing field, a runaway loop)."""


class ConfigurationError(StockajRulesError):
    """A setting is missing or malformed; the message is one line saying which and what to do."""


class PluginError(ConfigurationError):
    """An installed action plugin cannot be used: one line naming its distribution and entry point."""
