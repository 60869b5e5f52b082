"""Hot reload of RULES_DIR in a running process: beside the event loop, only stable files, loud drops.

The watcher of a real `LiveRules` runs on the test's event loop, with the real
filesystem events, as it does in `serve` and `worker`.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import jinja2
import pytest

from actions.registry import load_registry
from engine.language.rules import Rule
from engine.pipeline.metrics import Metrics
from engine.pipeline.rule_reload import LiveRules

RULE = "- id: {id}\n  on: item.updated\n  actions:\n    - type: log\n      message: '{id}: {{{{ data.name }}}}'\n"


def rules_text(*ids: str) -> str:
    return "".join(RULE.format(id=rule_id) for rule_id in ids)


def write_many(folder: Path, files: int, per_file: int, prefix: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for f in range(files):
        ids = [f"{prefix}-{f}-{r}" for r in range(per_file)]
        (folder / f"{prefix}-{f:03d}.yaml").write_text(rules_text(*ids))


@contextlib.asynccontextmanager
async def watching(live: LiveRules) -> AsyncIterator[None]:
    task = asyncio.create_task(live.watch())
    await asyncio.sleep(2.0)  # the watch is in place, and its first look at the files taken
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def until(condition: Callable[[], bool], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"after {within:g}s: {what}")
        await asyncio.sleep(0.01)


@pytest.fixture
def rules_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "rules"
    folder.mkdir()
    (folder / "base.yaml").write_text(rules_text("base"))
    return folder


@pytest.mark.timeout(120)
async def test_a_long_reload_never_holds_the_event_loop(rules_dir: Path) -> None:
    live = LiveRules(rules_dir, load_registry(), Metrics())
    async with watching(live):
        longest = 0.0
        write_many(rules_dir / "team", files=50, per_file=20, prefix="many")
        deadline = time.monotonic() + 90
        while len(live()) != 1001:
            before = time.monotonic()
            await asyncio.sleep(0.01)
            longest = max(longest, time.monotonic() - before - 0.01)
            assert time.monotonic() < deadline, "the new rules were never loaded"
    assert longest < 0.3, f"the event loop was held for {longest:.2f}s during the reload"


@pytest.mark.timeout(60)
async def test_a_half_written_file_never_becomes_the_live_rules(rules_dir: Path) -> None:
    live = LiveRules(rules_dir, load_registry(), Metrics())
    seen: set[tuple[str, ...]] = set()
    async with watching(live):
        path = rules_dir / "new.yaml"
        with path.open("w") as out:
            out.write(rules_text("first"))  # parses on its own: a list of one rule
            out.flush()
            for _ in range(50):  # the copy pauses for 0.5 s
                seen.add(tuple(live().ids()))
                await asyncio.sleep(0.01)
            out.write(rules_text("second", "third"))
        await until(lambda: len(live()) == 4, 20, "the whole file was never loaded")
        for _ in range(50):
            seen.add(tuple(live().ids()))
            await asyncio.sleep(0.01)
    assert seen <= {("base",), ("base", "first", "second", "third")}


async def test_a_reload_that_drops_rules_says_so_loudly_naming_them(
    rules_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (rules_dir / "team.yaml").write_text(rules_text("reorder-tents", "notify-sales", "keep-me"))
    live = LiveRules(rules_dir, load_registry(), Metrics())
    (rules_dir / "team.yaml").write_text(rules_text("keep-me"))
    with caplog.at_level(logging.INFO, logger="engine.pipeline.rule_reload"):
        assert live.reload()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, caplog.text
    assert "2 rule(s)" in warnings[0]
    assert "notify-sales" in warnings[0]
    assert "reorder-tents" in warnings[0]
    assert "keep-me" not in warnings[0]


@pytest.mark.timeout(60)
async def test_watching_an_unchanged_folder_does_not_list_it_again_and_again(
    rules_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_many(rules_dir / "team", files=20, per_file=1, prefix="idle")
    live = LiveRules(rules_dir, load_registry(), Metrics())
    listings: list[str] = []
    real_scandir = os.scandir

    def counting_scandir(path: str | os.PathLike[str] = ".") -> os._ScandirIterator[str]:
        if Path(path).resolve() == rules_dir.resolve():
            listings.append(str(path))
        return real_scandir(path)  # type: ignore[return-value]

    monkeypatch.setattr(os, "scandir", counting_scandir)
    async with watching(live):
        listings.clear()  # the one look taken as the watch starts
        await asyncio.sleep(4)
        idle = len(listings)
        (rules_dir / "new.yaml").write_text(rules_text("fresh"))
        await until(lambda: "fresh" in live().ids(), 20, "the change was never noticed")
    assert idle == 0


async def test_a_rule_file_that_changes_is_read_again_the_others_are_not(
    rules_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_many(rules_dir, files=5, per_file=2, prefix="kept")
    live = LiveRules(rules_dir, load_registry(), Metrics())
    kept = live().get("kept-0-0")
    (rules_dir / "kept-003.yaml").write_text(rules_text("changed"))
    assert live.reload()
    assert live().get("kept-0-0") is kept  # the same object: its file was not read again
    assert "changed" in live().ids()
    assert "kept-3-0" not in live().ids()


def test_a_replaced_rule_set_is_freed_without_the_cyclic_collector(rules_dir: Path) -> None:
    write_many(rules_dir, files=5, per_file=4, prefix="old")
    live = LiveRules(rules_dir, load_registry(), Metrics())
    for path in rules_dir.glob("old-*.yaml"):
        path.write_text(path.read_text().replace("data.name", "data.id"))
    collecting = gc.isenabled()
    gc.disable()  # only reference counting may free the replaced rules
    try:
        assert live.reload()
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.unfreeze()
        gc.collect()
        left = [type(found).__name__ for found in gc.garbage if isinstance(found, jinja2.Template | Rule)]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.freeze()
        if collecting:
            gc.enable()
    assert left == []  # a template in a reference cycle would wait for a full collection
