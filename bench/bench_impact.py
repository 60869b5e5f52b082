"""`stockaj-rules impact` over 10,000 stored deliveries and 100 rules, beside `test` over the same.

Generates 10,000 item.low_stock deliveries (bench/workload.py's payloads, received a minute
apart) into a SQLite store, 100 rules (every 10th throttled) as the current rules, and two
drafts: one rule changed (what an author usually does) and every rule changed (the worst
case: all 100 rules evaluated twice per delivery). The same deliveries are written as fixture
files (100 per file), so `test` replays exactly what `impact` replays. Then, in rounds that
alternate the variants:

- impact (engine):   `engine.language.impact.impact` over `engine.store.history.kept_deliveries`:
                     the store read in batches, both rule sets matched, outcomes compared.
- impact (CLI):      `stockaj-rules impact --rules DRAFT --against CURRENT --json`, end to end
                     (process start, imports, rule loading, the store, the JSON output).
- test (engine):     `load_fixtures` + `harness.replay` over the 10,000 fixtures, one rule set.
- test (CLI):        `stockaj-rules test FIXTURES`, end to end.

Run: `.venv/bin/python bench/bench_impact.py` (~3-5 min; `--quick` for 1,000 deliveries, one
round). Tables go to stdout as Markdown, progress to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import gc
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import workload

from actions.registry import load_registry
from engine.language import harness
from engine.language.fixtures import load_fixtures
from engine.language.impact import impact
from engine.language.loader import load_rules
from engine.store import NewDelivery, Store, database
from engine.store.history import HistoryFilter, kept_deliveries

RULES = 100
T0 = datetime(2026, 3, 1, tzinfo=UTC)
CLI = str(Path(sys.executable).with_name("stockaj-rules"))


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


async def fill_store(url: str, payloads: list[dict[str, Any]]) -> None:
    engine = database.create_engine(url)
    try:
        await database.upgrade(engine)
        store = Store(engine)
        for start in range(0, len(payloads), 500):
            batch = [
                NewDelivery(
                    f"d{index:06d}",
                    workload.EVENT,
                    {"Content-Type": "application/json"},
                    json.dumps(body).encode(),
                    T0 + timedelta(minutes=index),
                )
                for index, body in enumerate(payloads[start : start + 500], start)
            ]
            await store.add_deliveries(batch, T0)
    finally:
        await engine.dispose()


def drafts(current: list[dict[str, Any]], scoped: bool) -> dict[str, list[dict[str, Any]]]:
    one = copy.deepcopy(current)
    one[7]["when"] = {"!": [one[7]["when"]]}
    every = workload.rules(RULES, scoped=scoped, seed=2, throttle_every=10)
    return {"one rule changed": one, "every rule changed": every}


async def engine_impact(url: str, current_dir: Path, draft_dir: Path, expected: int) -> dict[str, Any]:
    registry = load_registry()
    current, draft = load_rules(current_dir, registry), load_rules(draft_dir, registry)
    engine = database.create_engine(url)
    batches = kept_deliveries(Store(engine), HistoryFilter())
    try:
        report = await impact(
            current, draft, batches, {}, folders=(current_dir, draft_dir), expected=expected
        )
    finally:
        await engine.dispose()
    return report.as_json()


def engine_test(fixtures_dir: Path, rules_dir: Path) -> int:
    rules = load_rules(rules_dir, load_registry())
    files, problems = load_fixtures([fixtures_dir])
    assert not problems, problems
    gc.disable()
    try:
        results = asyncio.run(harness.replay(rules, files, {}))
    finally:
        gc.enable()
    return len(results)


def cli(*args: str, env: dict[str, str]) -> None:
    done = subprocess.run([CLI, *args], env=env, capture_output=True, text=True, check=False)
    if done.returncode not in (0, 1):  # `test` exits 1 when a fixture fails: none have expectations
        raise SystemExit(f"{' '.join(args)} exited {done.returncode}: {done.stderr[-2000:]}")


def timed(work: Callable[[], Any]) -> tuple[float, float]:
    """Wall seconds, and CPU seconds of this process and of the processes it waited for."""
    gc.collect()
    start, cpu = time.perf_counter(), _cpu()
    work()
    return time.perf_counter() - start, _cpu() - cpu


def _cpu() -> float:
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="1,000 deliveries, one round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--mix", choices=["scoped", "broad"], default="scoped")
    options = parser.parse_args()
    count = 1000 if options.quick else 10_000
    rounds = 1 if options.quick else options.rounds
    scoped = options.mix == "scoped"
    rng = random.Random(11)
    payloads = [workload.payload(rng, item_id=i) for i in range(count)]
    with tempfile.TemporaryDirectory() as temporary:
        root = Path(temporary)
        url = f"sqlite+aiosqlite:///{root / 'store.db'}"
        log(f"storing {count:,} deliveries")
        asyncio.run(fill_store(url, payloads))
        current = workload.rules(RULES, scoped=scoped, throttle_every=10)
        workload.write_rules(root / "current", current)
        for name, specs in drafts(current, scoped).items():
            workload.write_rules(root / name.replace(" ", "-"), specs)
        fixtures = [
            {"name": f"d{i:06d}", "event": workload.EVENT, "delivery_id": f"d{i:06d}", "payload": body}
            for i, body in enumerate(payloads)
        ]
        workload.write_fixtures(root / "fixtures", fixtures)
        env = {**os.environ, "DATABASE_URL": url, "RULES_DIR": str(root / "current"), "LOG_FORMAT": "json"}
        variants: dict[str, Callable[[], Any]] = {}
        for name in drafts(current, scoped):
            folder = root / name.replace(" ", "-")
            variants[f"impact (engine), {name}"] = lambda f=folder: asyncio.run(
                engine_impact(url, root / "current", f, count)
            )
            variants[f"impact (CLI), {name}"] = lambda f=folder: cli(
                "impact", "--rules", str(f), "--json", env=env
            )
        variants["test (engine)"] = lambda: engine_test(root / "fixtures", root / "current")
        variants["test (CLI)"] = lambda: cli("test", str(root / "fixtures"), env=env)
        report = asyncio.run(engine_impact(url, root / "current", root / "every-rule-changed", count))
        changed = sum(
            len(r["newly_fired"]) + len(r["stopped_firing"]) + len(r["changed_params"])
            for r in report["rules"]
        )
        log(f"every rule changed: {changed:,} differences over {report['deliveries']:,} deliveries")
        samples: dict[str, list[float]] = {name: [] for name in variants}
        cpu: dict[str, list[float]] = {name: [] for name in variants}
        names = list(variants)
        for round_ in range(rounds):
            for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
                seconds, cpu_seconds = timed(variants[name])
                samples[name].append(seconds)
                cpu[name].append(cpu_seconds)
                log(f"round {round_ + 1}: {name}: {seconds:.2f} s (CPU {cpu_seconds:.2f} s)")
        print(f"\n{workload.machine()}\n")
        print(f"{count:,} stored deliveries × {RULES} rules ({options.mix} mix), {rounds} round(s)\n")
        rows = []
        baseline = statistics.median(samples["test (CLI)"])
        for name in names:
            median = statistics.median(samples[name])
            cpu_median = statistics.median(cpu[name])
            rows.append(
                [
                    name,
                    f"{median:.2f} s",
                    f"{min(samples[name]):.2f} s",
                    f"{cpu_median:.2f} s",
                    f"{median / baseline:.2f}x",
                ]
            )
        header = ["variant", "wall, median", "wall, best", "CPU, median", "wall vs test (CLI)"]
        print(workload.table(header, rows))


if __name__ == "__main__":
    main()
