"""`stockaj-rules test --coverage` against the replay it follows, side by side.

Reads the rules and fixtures `bench_replay.py --keep DIR` wrote (DIR/scoped and
DIR/broad: 1,000 fixtures x 100 rules each), then, in alternating rounds with the
garbage collector off (as the CLI runs), times `replay` (dry run and expectations)
and `coverage` over its results (every and/or operand of every condition, per fixture).

Run: `.venv/bin/python bench/bench_replay.py --keep /tmp/bench-files` once, then
`.venv/bin/python bench/bench_coverage.py /tmp/bench-files`.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import statistics
import time
from pathlib import Path

from actions.registry import load_registry
from engine.language.coverage import coverage
from engine.language.expectations import replay
from engine.language.fixtures import load_fixtures
from engine.language.loader import load_rules

ROUNDS = 3


def measure(folder: Path) -> tuple[list[float], list[float], int]:
    rules = load_rules(folder / "rules", load_registry())
    files, problems = load_fixtures([folder / "fixtures"])
    assert not problems, problems[:3]
    gc.freeze()
    gc.disable()
    replays, coverages, operands = [], [], 0
    try:
        for _ in range(ROUNDS):
            start = time.perf_counter()
            results = asyncio.run(replay(rules, files, {}))
            replays.append(time.perf_counter() - start)
            start = time.perf_counter()
            found = coverage(rules, results)
            coverages.append(time.perf_counter() - start)
            operands = sum(len(r.operands) for r in found.rules)
    finally:
        gc.enable()
    return replays, coverages, operands


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("folder", type=Path, help="the folder bench_replay.py --keep wrote")
    folder = parser.parse_args().folder
    print(f"load average at the start: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print("| mix | replay (median) | coverage (median) | coverage / replay | operands |")
    print("|---|---|---|---|---|")
    for mix in ("scoped", "broad"):
        replays, coverages, operands = measure(folder / mix)
        r, c = statistics.median(replays), statistics.median(coverages)
        print(f"| {mix} | {r:.2f} s | {c:.2f} s | {c / r:.2f}x | {operands} |")
    print(f"load average at the end: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
