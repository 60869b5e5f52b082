"""Replaying 1,000 recorded deliveries against 100 rules, the way `stockaj-rules test` does.

Generates 1,000 item.low_stock fixtures (10 YAML files of 100, each with
expectations on three rules and one rendered action) and 100 rules (10 YAML
files, every 10th rule throttled) into a temporary folder, then times, in
rounds that alternate the variants:

- load fixtures, load rules: `load_fixtures` and `load_rules` (the real loaders).
- replay:           `engine.language.harness.replay`: match, render every fired rule's
                    action, throttle, check expectations (the target).
- replay, GC frozen / GC off: diagnostics: the same replay with the loaded
                    rules and fixtures frozen out of the cyclic GC
                    (`gc.freeze()`), and with the GC off, to show its share.
- test report:      `engine.cli.report.test_report` over the results: the lines
                    `stockaj-rules test` prints, which read the reason of every
                    rule for the event, fired or not. Slow, so timed once per
                    mix on a fifth of the fixtures and scaled to all of them.
- conditions only:  the same 100k condition evaluations through our engine
                    (`DeliveryData` per fixture, `Condition.test` per rule).
- panzi baseline:   the same 100k evaluations through panzi-json-logic.

Expectations are worked out with the baseline, so every fixture passing is
also a cross-check of the two engines.

Run: `.venv/bin/python bench/bench_replay.py` (`--quick` for a smoke run,
`--keep DIR` to keep the generated rules and fixtures for the CLI).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import workload
from json_logic import jsonLogic

from actions.registry import load_registry
from engine.cli import report
from engine.language import harness
from engine.language.conditions import DeliveryData, new_session
from engine.language.delivery import Delivery
from engine.language.fixtures import FixtureFile, load_fixtures
from engine.language.loader import load_rules
from engine.language.matching import RuleStatus
from engine.language.rules import RuleSet
from engine.secrets import Masker

FIXTURES = 1000
RULES = 100
THROTTLE_EVERY = 10
ROUNDS = 3
TARGET_S = 5.0
REPORT_SAMPLE_DIVISOR = 5  # the test report is timed on a fifth of the fixtures
VARIANTS = (
    "load fixtures",
    "load rules",
    "replay",
    "replay, GC frozen",
    "replay, GC off",
    "conditions only",
    "panzi baseline",
)


def fixture_specs(count: int, rule_specs: list[dict[str, Any]], seed: int = 11) -> list[dict[str, Any]]:
    """Recorded deliveries with expectations worked out by the baseline (throttled rules left out)."""
    rng = random.Random(seed)
    checkable = [(i, spec) for i, spec in enumerate(rule_specs) if "throttle" not in spec]
    out = []
    for n in range(count):
        body = workload.payload(rng, item_id=1000 + n)
        context = Delivery(workload.EVENT, "recorded", body).context()
        picked = rng.sample(checkable, 3)
        verdicts = [(spec["id"], bool(jsonLogic(spec["when"], context))) for _, spec in picked]
        expect: dict[str, Any] = {
            "fired": [rule_id for rule_id, fired in verdicts if fired],
            "not_fired": [rule_id for rule_id, fired in verdicts if not fired],
        }
        fired = [(i, spec) for i, spec in checkable if jsonLogic(spec["when"], context)]
        if fired:
            i, spec = fired[0]
            data = body["data"]
            message = (
                f"rule {i}: {data['name']} ({data['external_id']}) is at {data['quantity']}, "
                f"minimum {data['minimum_quantity']}"
            )
            expect["actions"] = [{"rule": spec["id"], "type": "log", "params": {"message": message}}]
        out.append({"name": f"low stock #{n}", "event": workload.EVENT, "payload": body, "expect": expect})
    return out


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter_ns()
    value = fn()
    return (time.perf_counter_ns() - start) / 1e9, value


def conditions_only(rules: RuleSet, files: list[FixtureFile]) -> int:
    session = new_session()
    conditions = [rule.condition for rule in rules.rules if rule.condition is not None]
    fired = 0
    for fixture_file in files:
        for fixture in fixture_file.fixtures:
            data = DeliveryData(fixture.delivery.context())
            fired += sum(condition.test(data, session).fired for condition in conditions)
    return fired


def baseline(rules: RuleSet, files: list[FixtureFile]) -> int:
    logics = [rule.condition.logic for rule in rules.rules if rule.condition is not None]
    fired = 0
    for fixture_file in files:
        for fixture in fixture_file.fixtures:
            context = fixture.delivery.context()
            fired += sum(bool(jsonLogic(logic, context)) for logic in logics)
    return fired


def replay(rules: RuleSet, files: list[FixtureFile]) -> list[harness.FixtureResult]:
    return asyncio.run(harness.replay(rules, files, {}))


def replay_frozen(rules: RuleSet, files: list[FixtureFile]) -> list[harness.FixtureResult]:
    with workload.frozen_gc():
        return replay(rules, files)


def replay_gc_off(rules: RuleSet, files: list[FixtureFile]) -> list[harness.FixtureResult]:
    gc.disable()
    try:
        return replay(rules, files)
    finally:
        gc.enable()


@dataclass
class Mix:
    scoped: bool
    # variant -> seconds for all the fixtures, one per round
    seconds: dict[str, list[float]] = field(default_factory=dict)
    facts: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return "scoped" if self.scoped else "broad"


def run_mix(root: Path, *, scoped: bool, fixtures: int, rounds: int) -> Mix:
    """Generate one mix's files, then time every variant, alternating them round by round."""
    rule_specs = workload.rules(RULES, scoped=scoped, throttle_every=THROTTLE_EVERY)
    workload.write_rules(root / "rules", rule_specs)
    workload.write_fixtures(root / "fixtures", fixture_specs(fixtures, rule_specs))
    mix = Mix(scoped, {name: [] for name in VARIANTS})
    registry = load_registry()
    fired: dict[str, int] = {}
    results: list[harness.FixtureResult] = []
    for _ in range(rounds):
        workload.settle()
        seconds, (files, problems) = timed(lambda: load_fixtures([root / "fixtures"]))
        if problems:
            raise SystemExit(f"generated fixtures did not load: {problems[:3]}")
        mix.seconds["load fixtures"].append(seconds)
        seconds, rules = timed(lambda: load_rules(root / "rules", registry))
        mix.seconds["load rules"].append(seconds)
        steps: dict[str, Callable[[RuleSet, list[FixtureFile]], Any]] = {
            "replay": replay,
            "replay, GC frozen": replay_frozen,
            "replay, GC off": replay_gc_off,
            "conditions only": conditions_only,
            "panzi baseline": baseline,
        }
        for name, step in steps.items():
            workload.settle()
            seconds, value = timed(partial(step, rules, files))
            mix.seconds[name].append(seconds)
            if name == "replay":
                results = value
            elif isinstance(value, int):
                fired[name] = value
    if fired["conditions only"] != fired["panzi baseline"]:
        raise SystemExit(f"the engines disagree on how many rules fire: {fired}")
    failed = [r for r in results if not r.passed]
    if failed:
        first = failed[0]
        raise SystemExit(f"{len(failed)} fixture(s) failed, e.g. {first.fixture.name}: {first.failures}")
    # The report is timed once, on a sample: it is slow (see README), and per fixture it is flat.
    sample = results[: max(1, fixtures // REPORT_SAMPLE_DIVISOR)]
    workload.settle()
    seconds, lines = timed(lambda: list(report.test_report(sample, Masker(), verbose=False)))
    mix.seconds["test report (scaled)"] = [seconds * len(results) / len(sample)]
    outcomes = [o for r in results for o in r.outcomes]
    mix.facts.update(
        verdicts=len(outcomes),
        fired=sum(o.fired for o in outcomes),
        throttled=sum(o.status is RuleStatus.THROTTLED for o in outcomes),
        report_sample=len(sample),
        report_lines=len(lines),
    )
    return mix


def report_table(mixes: list[Mix], fixtures: int) -> str:
    header = ["mix", "variant", "median", "min", "per fixture", "panzi / this", "rounds"]
    compared = ("replay", "replay, GC frozen", "replay, GC off", "conditions only")
    rows = []
    for mix in mixes:
        base = statistics.median(mix.seconds["panzi baseline"])
        for name, samples in mix.seconds.items():
            median = statistics.median(samples)
            rows.append(
                [
                    mix.name,
                    name,
                    f"{median:.3f} s",
                    f"{min(samples):.3f} s",
                    "—" if name == "load rules" else workload.fmt_us(median / fixtures * 1e6),
                    f"{base / median:.2f}x" if name in compared else "—",
                    str(len(samples)),
                ]
            )
    return workload.table(header, rows)


def summary(mix: Mix, fixtures: int) -> list[str]:
    facts = mix.facts
    replay_s = statistics.median(mix.seconds["replay"])
    met = "met" if replay_s < TARGET_S else "MISSED"
    report_s = mix.seconds["test report (scaled)"][0]
    return [
        f"{mix.name}: {facts['verdicts']:,} rule verdicts, {facts['fired']:,} fired, "
        f"{facts['throttled']:,} throttled",
        f"  target: {fixtures:,} fixtures x {RULES} rules replayed under {TARGET_S:g} s: "
        f"median {replay_s:.2f} s -> {met}",
        f"  test report timed on {facts['report_sample']} fixtures ({facts['report_lines']:,} lines) and "
        f"scaled: replay + report ~ {replay_s + report_s:.1f} s, as `stockaj-rules test` would spend",
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="100 fixtures, one round: check the script runs")
    parser.add_argument("--keep", type=Path, help="write the generated files here and keep them")
    args: Any = parser.parse_args(argv)
    fixtures, rounds = (100, 1) if args.quick else (FIXTURES, ROUNDS)
    mixes = []
    with tempfile.TemporaryDirectory(prefix="bench-replay-") as tmp:
        for scoped in (True, False):
            root = (args.keep or Path(tmp)) / ("scoped" if scoped else "broad")
            mixes.append(run_mix(root, scoped=scoped, fixtures=fixtures, rounds=rounds))
            print(f"  measured the {mixes[-1].name} mix", file=sys.stderr, flush=True)
    print(f"\nbench_replay — {workload.machine()}")
    print(
        f"{fixtures:,} fixtures x {RULES} rules (every {THROTTLE_EVERY}th throttled), all fixtures passed\n"
    )
    print(report_table(mixes, fixtures))
    print()
    for mix in mixes:
        for line in summary(mix, fixtures):
            print(line)
    print(f"load average at the end: {workload.load_average()}")


if __name__ == "__main__":
    main()
