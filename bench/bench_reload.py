"""Loading big rules folders, and the receiver's latency while `serve` reloads one, side by side.

Three measurements, one run:

- load: `load_rules` of N rules in N / per-file YAML files (the bench workload:
  a condition and a text template per rule, every tenth throttled), each in a
  fresh process: once with every rule's template its own (the worst case), once
  with the templates shared (rules generated from a list, one per item or site).
- idle: the CPU `serve` uses over --idle seconds with that folder and nothing
  happening (change detection).
- reload: a real `stockaj-rules serve` (SQLite, REDIS_URL to a leased Redis
  database, no worker: the receiver alone) with the folder,
  signed item.low_stock deliveries at a fixed --rate (`pipeline_load.generate`:
  an open-loop schedule, latency from the scheduled send to the answer), in
  alternating windows of --window seconds: quiet, then one where every rule
  file is rewritten at the window's start, so `serve` reloads the whole folder
  while it answers. p50/p99/max per kind of window. (The folder's rules are on
  `item.updated`, the deliveries item.low_stock.)

Run: `.venv/bin/python bench/bench_reload.py` (~3 min); `--quick` for a smoke
run. Progress to stderr, Markdown tables to stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
import pipeline_load
import workload
import yaml
from loadrun import (
    BIN,
    PYTHON,
    REDIS_BASE,
    ROOT,
    Proc,
    free_port,
    log,
    process_cpu_seconds,
    redis_database,
    sign,
    wait_ready,
)

SECRET = "bench-reload-secret"
EVENT_OF_RULES = "item.updated"  # not the deliveries' event: matching stays the same throughout


def write_folder(folder: Path, count: int, per_file: int, *, shared: bool, version: int = 0) -> None:
    """`count` workload rules on EVENT_OF_RULES in files of `per_file`; `version` changes every file."""
    specs = workload.rules(count, scoped=True, throttle_every=10)
    for spec in specs:
        spec["on"] = EVENT_OF_RULES
        if shared:
            spec["actions"][0]["message"] = (
                "{{ data.name }} ({{ data.external_id }}) is at {{ data.quantity }}"
            )
        spec["description"] = f"version {version}"
    folder.mkdir(parents=True, exist_ok=True)
    for start in range(0, count, per_file):
        path = folder / f"rules-{start // per_file:04d}.yaml"
        path.write_text(yaml.safe_dump(specs[start : start + per_file], sort_keys=False), encoding="utf-8")


LOAD_ONE = """
import sys, time
from pathlib import Path
from actions.registry import load_registry
from engine.language.loader import load_rules
registry = load_registry()
started = time.perf_counter()
rules = load_rules(Path(sys.argv[1]), registry)
print(len(rules), time.perf_counter() - started)
"""


def measure_load(folder: Path, rounds: int) -> tuple[int, list[float]]:
    seconds = []
    count = 0
    for _ in range(rounds):
        done = subprocess.run(
            [PYTHON, "-c", LOAD_ONE, str(folder)], capture_output=True, text=True, check=True, cwd=ROOT
        )
        loaded, took = done.stdout.split()
        count, seconds = int(loaded), [*seconds, float(took)]
    return count, seconds


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def reloads_seen(proc: Proc) -> list[dict[str, Any]]:
    events = []
    for line in proc.log_path.read_text(errors="replace").splitlines():
        if line.startswith("{") and "rules reloaded" in line:
            events.append(json.loads(line))
    return events


async def windows(proc: Proc, port: int, folder: Path, args: argparse.Namespace) -> dict[str, list[float]]:
    body = orjson.dumps(workload.payload())
    signature = sign(body, SECRET)
    latencies: dict[str, list[float]] = {"quiet": [], "reloading": []}
    count = int(args.rate * args.window)
    for round_ in range(args.rounds):
        for kind in ("quiet", "reloading"):
            before = len(reloads_seen(proc))
            if kind == "reloading":
                shared = args.serve_templates == "shared"
                write_folder(folder, args.rules, args.per_file, shared=shared, version=round_ + 1)
            sent = await pipeline_load.generate(port, body, signature, args.rate, count, f"{kind}-{round_}")
            bad = [s for s in sent if s.status != 200]
            if bad:
                raise RuntimeError(f"{len(bad)} answers were not 200: {bad[0]}")
            latencies[kind] += [(s.acked - s.scheduled) * 1000 for s in sent]
            reloaded = len(reloads_seen(proc)) - before
            log(
                f"  round {round_ + 1} {kind}: {len(sent)} deliveries, "
                f"{reloaded} reload(s) finished in the window"
            )
            if kind == "reloading" and reloaded == 0:
                raise RuntimeError("the reload did not finish within the window: make --window longer")
    return latencies


def run_serve(root: Path, folder: Path, args: argparse.Namespace) -> tuple[float, dict[str, list[float]]]:
    """`serve` as a receiver only (SQLite, REDIS_URL, no worker): what is timed is the receiver's
    answer, not a worker on the same loop recording every rule's verdict for each delivery."""
    with redis_database(14) as index:
        return _run_serve(root, folder, args, f"{REDIS_BASE}/{index}")


def _run_serve(
    root: Path, folder: Path, args: argparse.Namespace, redis_url: str
) -> tuple[float, dict[str, list[float]]]:
    port = free_port()
    env = {
        "REDIS_URL": redis_url,
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(root),
        "STOCKAJ_WEBHOOK_SECRET": SECRET,
        "DATABASE_URL": f"sqlite+aiosqlite:///{root / 'bench.db'}",
        "RULES_DIR": str(folder),
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "LOG_FORMAT": "json",
        "LOG_LEVEL": "INFO",
    }
    proc = Proc("serve", [str(BIN / "stockaj-rules"), "serve"], env, ROOT, root / "serve.log")
    try:
        wait_ready([proc], port, timeout=120)
        time.sleep(3)  # the watch starts and takes its first look
        cpu_before = process_cpu_seconds(proc.pid)
        time.sleep(args.idle)
        idle = (process_cpu_seconds(proc.pid) - cpu_before) / args.idle
        log(f"  idle: {idle * 100:.2f} % of a core over {args.idle:g}s")
        latencies = asyncio.run(windows(proc, port, folder, args))
    finally:
        proc.stop()
    return idle, latencies


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rules", type=int, default=10_000)
    parser.add_argument("--per-file", type=int, default=10)
    parser.add_argument("--rate", type=float, default=200.0, help="deliveries per second")
    parser.add_argument("--window", type=float, default=20.0, help="seconds per window")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--idle", type=float, default=10.0)
    parser.add_argument("--load-rounds", type=int, default=3)
    parser.add_argument(
        "--serve-templates",
        choices=["shared", "unique"],
        default="shared",
        help="the folder `serve` reloads: templates shared (default) or each rule's its own",
    )
    parser.add_argument("--quick", action="store_true", help="1,000 rules, short windows")
    args = parser.parse_args()
    if args.quick:
        args.rules, args.window, args.rounds, args.idle, args.load_rounds = 1_000, 6.0, 1, 3.0, 1
    print(workload.machine() + "\n")
    with tempfile.TemporaryDirectory(prefix="bench-reload-") as tmp:
        root = Path(tmp)
        rows = []
        for shared in (False, True):
            folder = root / ("shared" if shared else "unique")
            write_folder(folder, args.rules, args.per_file, shared=shared)
            log(f"load: {args.rules:,} rules, templates {'shared' if shared else 'each its own'}")
            count, seconds = measure_load(folder, args.load_rounds)
            files = args.rules // args.per_file
            templates = "shared" if shared else "each its own"
            rows.append([f"{count:,}", f"{files:,}", templates, f"{statistics.median(seconds):.2f} s",
                         f"{min(seconds):.2f} s", str(len(seconds))])  # fmt: skip
        print(workload.table(["rules", "files", "templates", "load median", "min", "runs"], rows))
        log("serve: idle, then alternating quiet and reloading windows")
        idle, latencies = run_serve(root, root / args.serve_templates, args)
        print(f"\nIdle `serve` with {args.rules:,} rules in {args.rules // args.per_file:,} files: "
              f"{idle * 100:.2f} % of a core over {args.idle:g} s.\n")  # fmt: skip
        quiet = latencies["quiet"]
        rows = []
        for kind, values in latencies.items():
            ratio = percentile(values, 0.99) / percentile(quiet, 0.99)
            p50, p99 = statistics.median(values), percentile(values, 0.99)
            cells = [f"{p50:.2f} ms", f"{p99:.2f} ms", f"{max(values):.1f} ms", f"{ratio:.2f}x"]
            rows.append([kind, f"{len(values):,}", *cells])
        print(f"`serve` at {args.rate:g} deliveries/s, reloading {args.rules:,} rules "
              f"(templates {args.serve_templates}) in each reloading window:\n")  # fmt: skip
        print(workload.table(["window", "deliveries", "p50", "p99", "max", "p99 / quiet p99"], rows))
    sys.exit(0)


if __name__ == "__main__":
    main()
