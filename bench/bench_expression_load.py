"""Loading 1,000 rules whose conditions are expressions, against the same rules in JsonLogic.

The target (issue 13): expressions add at most 1 s to loading 1,000 rules.
`workload.rules(1000)` gives the bench's usual conditions (eleven shapes, with
and without a scope); each is written as an expression (engine.language.expressions.render)
and the JsonLogic folder holds exactly what those expressions compile to, so
both folders load the same rules and differ only in how `when` is written.
Both are generated into a temporary folder as YAML files of 10 rules, then
loaded with `load_rules` in alternating rounds (the order flips every round).

A third row times `compile_expression` alone over the 1,000 texts: the part of
the difference that is the compiler's. Last, both folders are loaded once more and
every rule's condition compared: evaluation is unchanged because what runs is the
same JsonLogic.

Run: `.venv/bin/python bench/bench_expression_load.py` (`--quick` for a smoke run).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import workload

from actions.registry import load_registry
from engine.language.expressions import CompiledExpression, compile_expression
from engine.language.expressions.render import to_expression
from engine.language.loader import load_rules

RULES = 1000
TARGET_EXTRA_S = 1.0


def rule_sets(count: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[str]]:
    """(rules in JsonLogic, the same rules with expressions, the expression texts)."""
    logic_rules, expression_rules, texts = [], [], []
    for scoped in (True, False):
        for spec in workload.rules(count // 2, scoped=scoped, seed=7 if scoped else 8):
            spec = {**spec, "id": f"{spec['id']}-{'s' if scoped else 'b'}"}
            text = to_expression(spec["when"])
            compiled = compile_expression(text)
            assert isinstance(compiled, CompiledExpression), (text, compiled)
            logic_rules.append({**spec, "when": compiled.logic})
            expression_rules.append({**spec, "when": text})
            texts.append(text)
    return logic_rules, expression_rules, texts


def timed_load(folder: Path) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this thread): on a shared machine the CPU time is steadier."""
    registry = load_registry()
    wall, cpu = time.perf_counter(), time.thread_time()
    rules = load_rules(folder, registry)
    wall, cpu = time.perf_counter() - wall, time.thread_time() - cpu
    assert len(rules) == RULES
    return wall, cpu


def same_logic(logic_folder: Path, expression_folder: Path) -> int:
    """How many rules load to identical JsonLogic both ways (all of them, or this fails)."""
    registry = load_registry()
    written = {rule.id: rule for rule in load_rules(logic_folder, registry).rules}
    compiled = {rule.id: rule for rule in load_rules(expression_folder, registry).rules}
    assert written.keys() == compiled.keys()
    for rule_id, rule in compiled.items():
        other = written[rule_id].condition
        assert rule.condition is not None
        assert rule.condition.expression is not None
        assert other is not None
        assert other.logic == rule.condition.logic, rule_id
    return len(compiled)


def timed_compile(texts: list[str]) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.thread_time()
    for text in texts:
        compile_expression(text)
    return time.perf_counter() - wall, time.thread_time() - cpu


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 rounds instead of 11")
    rounds = 3 if parser.parse_args(argv).quick else 11
    logic_rules, expression_rules, texts = rule_sets(RULES)
    samples: dict[str, list[tuple[float, float]]] = {
        "JsonLogic": [],
        "expressions": [],
        "compile_expression only": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        folders = {"JsonLogic": Path(tmp, "logic"), "expressions": Path(tmp, "expressions")}
        workload.write_rules(folders["JsonLogic"], logic_rules)
        workload.write_rules(folders["expressions"], expression_rules)
        for round_index in range(rounds + 1):
            order = list(folders) if round_index % 2 == 0 else list(folders)[::-1]
            for name in order:
                workload.settle()
                elapsed = timed_load(folders[name])
                if round_index:  # the first round warms caches and imports
                    samples[name].append(elapsed)
            workload.settle()
            if round_index:
                samples["compile_expression only"].append(timed_compile(texts))
            print(f"  round {round_index}/{rounds}", file=sys.stderr, flush=True)
        same = same_logic(folders["JsonLogic"], folders["expressions"])
    report(samples, texts)
    print(f"evaluation unchanged: the {same} loaded conditions are the same JsonLogic in both folders")


def report(samples: dict[str, list[tuple[float, float]]], texts: list[str]) -> None:
    wall = {name: statistics.median(w for w, _ in values) for name, values in samples.items()}
    cpu = {name: statistics.median(c for _, c in values) for name, values in samples.items()}
    rows = [
        [
            name,
            f"{wall[name] * 1000:,.0f} ms",
            f"{cpu[name] * 1000:,.0f} ms",
            f"{min(c for _, c in samples[name]) * 1000:,.0f} ms",
            f"{cpu[name] / cpu['JsonLogic']:.2f}",
        ]
        for name in samples
    ]
    print(f"\nbench_expression_load — {workload.machine()}")
    print(f"{RULES} rules (half scoped), {len(samples['JsonLogic'])} rounds, YAML files of 10 rules\n")
    print(workload.table(["load", "median wall", "median CPU", "min CPU", "CPU ratio to JsonLogic"], rows))
    extra = cpu["expressions"] - cpu["JsonLogic"]
    verdict = "within" if extra <= TARGET_EXTRA_S else "OVER"
    print(
        f"\nexpressions add {extra * 1000:,.0f} ms of CPU to loading {RULES} rules: {verdict} the 1 s target"
    )
    each_us = cpu["compile_expression only"] / len(texts) * 1e6
    print(f"compile_expression: {each_us:,.1f} µs of CPU per expression")
    print(f"example: {texts[0]}")
    print(f"load average at the end: {workload.load_average()}")


if __name__ == "__main__":
    main()
