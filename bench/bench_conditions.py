"""Per-delivery cost of matching one item.low_stock delivery against 10, 100 and 1,000 rules.

Variants, timed side by side with their repetitions interleaved (the order
rotates every repetition, so machine noise and cache effects hit all alike):

- match:            `Matcher.match` over a `RuleSet` loaded by `load_rules` from
                    generated YAML files (each rule has one `log` action): payload
                    conversion, conditions, and rendering the actions of the
                    rules that fire. Reasons stay lazy, as in the worker.
- match + reasons:  the same, then every `outcome.reason` read (what
                    `stockaj-rules replay` and `test` print). Sampled on every
                    k-th repetition only, since it is far slower.
- conditions only:  `DeliveryData` once, then `Condition.test` for each rule.
- panzi baseline:   the same conditions through panzi-json-logic's `jsonLogic`
                    on the context dict (pure Python, no conversion step).

Two rule mixes: "scoped" rules (each under a category, warehouse or supplier
scope, ~12 % fire) and "broad" rules (~48 % fire). Firing is what costs: a
fired rule renders and validates its action.

Each case loads its own rules and drops them when measured, so the process
holds one rule set at a time, as a worker does. A second table, for 1,000
rules, times `match` in alternating blocks with the cyclic GC as it is, with
the loaded rules frozen out of it (`gc.freeze()` after loading), and off: the
median hides GC pauses, the mean and the tail show them.

Run: `.venv/bin/python bench/bench_conditions.py` (add `--quick` for a smoke run).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import workload
from json_logic import jsonLogic

from actions.registry import load_registry
from engine.language.conditions import DeliveryData, new_session
from engine.language.delivery import Delivery
from engine.language.loader import load_rules
from engine.language.matching import Matcher
from engine.language.rules import RuleSet
from engine.language.throttle import InMemoryThrottleState
from engine.secrets import Secrets

SIZES = (10, 100, 1000)
# (repetitions, read reasons on every k-th repetition), per rule count
PLAN = {10: (2000, 2), 100: (600, 4), 1000: (100, 10)}
WARMUP = 20
GC_BLOCKS, GC_BLOCK_SIZE = 2, 150
TARGET_MS_AT_1000 = 5.0
VARIANTS = ("match", "match + reasons", "conditions only", "panzi baseline")
GC_MODES = ("GC as is", "GC frozen after load", "GC off")


@dataclass
class Measured:
    """One rule count and mix, measured: nanoseconds per delivery, by variant."""

    size: int
    scoped: bool
    fired: int = 0
    samples: dict[str, list[int]] = field(default_factory=dict)

    @property
    def mix(self) -> str:
        return "scoped" if self.scoped else "broad"


def load_case(root: Path, size: int, *, scoped: bool) -> RuleSet:
    folder = root / f"{'scoped' if scoped else 'broad'}-{size}"
    workload.write_rules(folder, workload.rules(size, scoped=scoped))
    return load_rules(folder, load_registry())


def runners(rules: RuleSet, delivery: Delivery) -> dict[str, Callable[[], Awaitable[int]]]:
    """Each variant as a coroutine function returning how many rules fired (for the cross-check)."""
    matcher = Matcher(rules, InMemoryThrottleState(), Secrets({}, placeholders=True))
    conditions = [rule.condition for rule in rules.rules if rule.condition is not None]
    logics = [condition.logic for condition in conditions]
    session = new_session()

    async def match() -> int:
        outcomes = await matcher.match(delivery)
        return sum(outcome.fired for outcome in outcomes)

    async def match_and_reasons() -> int:
        outcomes = await matcher.match(delivery)
        for outcome in outcomes:
            _ = outcome.reason
        return sum(outcome.fired for outcome in outcomes)

    async def conditions_only() -> int:
        data = DeliveryData(delivery.context())
        return sum(condition.test(data, session).fired for condition in conditions)

    async def baseline() -> int:
        context = delivery.context()
        return sum(bool(jsonLogic(logic, context)) for logic in logics)

    variants = (match, match_and_reasons, conditions_only, baseline)
    return dict(zip(VARIANTS, variants, strict=True))


async def measure(result: Measured, rules: RuleSet, repetitions: int, reasons_every: int) -> None:
    delivery = Delivery(workload.EVENT, "bench-delivery-1", workload.payload())
    run = runners(rules, delivery)
    fired = {name: await fn() for name, fn in run.items()}
    if len(set(fired.values())) != 1:
        raise SystemExit(f"the variants disagree on how many rules fire: {fired}")
    result.fired = fired["match"]
    for _ in range(WARMUP):
        for fn in run.values():
            await fn()
    workload.settle()
    result.samples = {name: [] for name in run}
    names = list(run)
    for rep in range(repetitions):
        shift = rep % len(names)
        for name in names[shift:] + names[:shift]:  # rotate the order every repetition
            if name == "match + reasons" and rep % reasons_every:
                continue
            fn = run[name]
            start = time.perf_counter_ns()
            await fn()
            result.samples[name].append(time.perf_counter_ns() - start)


@contextmanager
def gc_off() -> Iterator[None]:
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


async def measure_gc(rules: RuleSet, blocks: int, block_size: int) -> dict[str, list[int]]:
    """`match` in blocks, alternating the GC modes block by block; a full collection before each."""
    matcher = Matcher(rules, InMemoryThrottleState(), Secrets({}, placeholders=True))
    delivery = Delivery(workload.EVENT, "bench-delivery-1", workload.payload())
    samples: dict[str, list[int]] = {mode: [] for mode in GC_MODES}
    modes: dict[str, Callable[[], AbstractContextManager[None]]] = {
        "GC as is": nullcontext,
        "GC frozen after load": workload.frozen_gc,
        "GC off": gc_off,
    }
    for _ in range(blocks):
        for mode, context in modes.items():
            workload.settle()
            with context():
                for _ in range(block_size):
                    start = time.perf_counter_ns()
                    await matcher.match(delivery)
                    samples[mode].append(time.perf_counter_ns() - start)
    return samples


def report(results: list[Measured]) -> str:
    header = ["rules", "mix", "fired", "variant", "median", "p95", "per rule", "panzi / this", "n"]
    rows = []
    for result in results:
        base_median, _ = workload.median_p95(result.samples["panzi baseline"])
        for name in VARIANTS:
            median, p95 = workload.median_p95(result.samples[name])
            ratio = "—" if name == "panzi baseline" else f"{base_median / median:.2f}x"
            rows.append(
                [
                    f"{result.size:,}",
                    result.mix,
                    str(result.fired),
                    name,
                    workload.fmt_us(median),
                    workload.fmt_us(p95),
                    workload.fmt_us(median / result.size),
                    ratio,
                    str(len(result.samples[name])),
                ]
            )
    return workload.table(header, rows)


def gc_report(by_mix: dict[str, dict[str, list[int]]]) -> str:
    header = ["rules", "mix", "match with", "median", "mean", "p95", "p99", "max", "n"]
    rows = []
    for mix, samples in by_mix.items():
        for mode, values in samples.items():
            ordered = sorted(values)
            median, p95 = workload.median_p95(ordered)
            p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))] / 1000
            rows.append(
                [
                    f"{max(SIZES):,}",
                    mix,
                    mode,
                    workload.fmt_us(median),
                    workload.fmt_us(statistics.fmean(ordered) / 1000),
                    workload.fmt_us(p95),
                    workload.fmt_us(p99),
                    workload.fmt_us(ordered[-1] / 1000),
                    str(len(ordered)),
                ]
            )
    return workload.table(header, rows)


def verdicts(results: list[Measured]) -> list[str]:
    met = {True: "met", False: "MISSED"}
    lines = []
    for result in results:
        if result.size != max(SIZES):
            continue
        median, p95 = workload.median_p95(result.samples["match"])
        lines.append(
            f"target: 1,000 rules under {TARGET_MS_AT_1000:g} ms per delivery ({result.mix} mix, "
            f"{result.fired} fire): match median {workload.fmt_us(median)} -> "
            f"{met[median / 1000 < TARGET_MS_AT_1000]}, p95 {workload.fmt_us(p95)} -> "
            f"{met[p95 / 1000 < TARGET_MS_AT_1000]}"
        )
    return lines


async def main_async(quick: bool) -> None:
    results: list[Measured] = []
    gc_samples: dict[str, dict[str, list[int]]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-conditions-") as tmp:
        for scoped in (True, False):
            for size in SIZES:
                rules = load_case(Path(tmp), size, scoped=scoped)
                repetitions, reasons_every = PLAN[size]
                if quick:
                    repetitions = max(10, repetitions // 20)
                result = Measured(size, scoped)
                await measure(result, rules, repetitions, reasons_every)
                if size == max(SIZES):
                    blocks, block_size = (1, 20) if quick else (GC_BLOCKS, GC_BLOCK_SIZE)
                    gc_samples[result.mix] = await measure_gc(rules, blocks, block_size)
                results.append(result)
                del rules  # one rule set alive at a time, as in a worker
                print(f"  measured {size:>5,} rules, {result.mix}", file=sys.stderr, flush=True)
    body = workload.payload()
    print(f"\nbench_conditions — {workload.machine()}")
    size = workload.payload_bytes(body)
    print(f"one {workload.EVENT} delivery, payload {size:,} bytes; times per delivery\n")
    print(report(results))
    print("\n`match` at 1,000 rules in alternating blocks, by what the cyclic GC may scan\n")
    print(gc_report(gc_samples))
    print()
    for line in verdicts(results):
        print(line)
    print(f"load average at the end: {workload.load_average()}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="few repetitions: check the script runs")
    args: Any = parser.parse_args(argv)
    asyncio.run(main_async(args.quick))


if __name__ == "__main__":
    main()
