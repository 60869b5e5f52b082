"""Every shipped fixture file passes against the shipped rules, through `stockaj-rules test`'s path."""

from __future__ import annotations

from pathlib import Path

import pytest

from actions.registry import load_registry
from engine.language.fixtures import load_fixtures
from engine.language.harness import replay
from engine.language.loader import load_rules
from engine.language.source_files import find_source_files

REPO = Path(__file__).resolve().parents[2]
FIXTURE_FILES, _ = find_source_files(REPO / "fixtures")


def test_there_are_fixtures_for_the_four_known_events() -> None:
    files, problems = load_fixtures([REPO / "fixtures"])
    assert problems == []
    events = {f.delivery.event for file in files for f in file.fixtures}
    assert events >= {"rent.created", "rent.status_changed", "item.low_stock", "item.updated"}


@pytest.mark.parametrize("path", FIXTURE_FILES, ids=[p.name for p in FIXTURE_FILES])
async def test_fixture_file_passes(path: Path) -> None:
    rules = load_rules(REPO / "rules", load_registry())
    files, problems = load_fixtures([path])
    assert problems == []
    results = await replay(rules, files, {})
    assert results, f"{path} holds no fixture"
    failures = {r.fixture.name: r.failures for r in results if not r.passed}
    assert failures == {}
