"""Replay fixtures dry and check their expectations: the path of `stockaj-rules test`.

The work is in two parts: engine.language.dry_run (what a delivery does to the rules,
nothing sent) and engine.language.expectations (whether that is what the fixture
expects). This module keeps the names callers have always imported from here.
"""

from __future__ import annotations

from engine.language.dry_run import recorded_at
from engine.language.expectations import (
    Failure,
    FixtureResult,
    check_expectations,
    contains,
    masked_results,
    replay,
)

__all__ = [
    "Failure",
    "FixtureResult",
    "check_expectations",
    "contains",
    "masked_results",
    "recorded_at",
    "replay",
]
