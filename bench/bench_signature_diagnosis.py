"""What a flood of bad signatures costs the receiver, side by side with valid deliveries.

The real receiver app (create_app over a real DeliveryIntake and Store on a SQLite file in a
temporary folder, the in-process queue doing nothing) answers, in alternating rounds:

- valid: signed deliveries, each stored (the cost a bad signature is compared with);
- bad, diagnosed: deliveries signed with another secret, so the diagnosis tries every
  likely mistake and finds none (its most expensive path), budget as in production;
- bad, no budget: the same with an unlimited budget, every request diagnosed in full;
- bad, not diagnosed: the same with an empty budget (what `verify` alone costs).

    .venv/bin/python bench/bench_signature_diagnosis.py            # ~1 min
    .venv/bin/python bench/bench_signature_diagnosis.py --quick    # a few seconds

Times are per request, the median of the rounds, through Quart's test client (no sockets:
what is measured is the app's own work; log lines are built but not written).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson
from workload import machine

from engine.pipeline.intake import DeliveryIntake
from engine.pipeline.metrics import Metrics
from engine.pipeline.receiver import WEBHOOK_PATH, ReceiverParts, create_app
from engine.queue import InProcessQueue
from engine.signature_diagnosis import DiagnosisBudget
from engine.signing import sign
from engine.store import Store, database

SECRET = "whsec-bench-current-000000"
PREVIOUS = "whsec-bench-previous-11111"
BODY = orjson.dumps(
    {
        "event": "item.low_stock",
        "timestamp": "2026-03-01T09:00:00Z",
        "data": {"id": 42, "name": "Tent 4p", "quantity": 3, "minimum_quantity": 5, "note": "x" * 800},
    }
)


async def _nothing() -> dict[str, Any]:
    return {}


async def _refresh() -> None:
    return None


async def _process(_: str) -> None:
    return None


async def _round(app: Any, count: int, signature: str, unique: bool, start: int) -> float:
    client = app.test_client()
    began = time.perf_counter()
    for index in range(count):
        sent = {
            "Content-Type": "application/json",
            "X-Stockaj-Event": "item.low_stock",
            "X-Stockaj-Delivery": f"bench-{start + index}" if unique else "bench-bad",
            "X-Stockaj-Signature": signature,
        }
        await client.post(WEBHOOK_PATH, data=BODY, headers=sent)
    return (time.perf_counter() - began) / count


async def main(rounds: int, per_round: int) -> None:
    logging.getLogger().handlers[:] = [logging.NullHandler()]
    with tempfile.TemporaryDirectory() as folder:
        engine = database.create_engine(f"sqlite+aiosqlite:///{Path(folder) / 'bench.db'}")
        await database.upgrade(engine)
        store, metrics = Store(engine), Metrics()
        queue = InProcessQueue(_process)
        intake = DeliveryIntake(store, queue, metrics, timedelta(seconds=60))
        intake.start()
        parts = ReceiverParts(
            secrets=(SECRET, PREVIOUS),
            max_body_bytes=1 << 20,
            intake=intake,
            metrics=metrics,
            readiness=_nothing,
            refresh_metrics=_refresh,
        )
        budgets: dict[str, Callable[[], DiagnosisBudget]] = {
            "bad, diagnosed (production budget)": DiagnosisBudget,
            "bad, every one diagnosed (no budget)": lambda: DiagnosisBudget(bytes_per_second=1 << 62),
            "bad, not diagnosed (empty budget)": lambda: DiagnosisBudget(bytes_per_second=0),
        }
        apps: dict[str, Any] = {}
        for name, budget in budgets.items():
            apps[name] = create_app(dataclasses.replace(parts, diagnosis_budget=budget()))
        apps["valid (stored)"] = create_app(parts)
        times: dict[str, list[float]] = {name: [] for name in apps}
        wrong = sign(BODY, "another-secret-entirely")
        served = 0
        for number in range(rounds):
            for name, app in apps.items():
                valid = name.startswith("valid")
                signature = sign(BODY, SECRET) if valid else wrong
                times[name].append(await _round(app, per_round, signature, valid, served))
                served += per_round
            print(f"round {number + 1}/{rounds}", file=sys.stderr)
        await intake.stop()
        await queue.close()
        await engine.dispose()
    valid = statistics.median(times["valid (stored)"])
    print(machine())
    print(f"body {len(BODY)} bytes, {rounds} rounds x {per_round} requests, median per request\n")
    print("| requests | per request | vs valid |")
    print("|---|---|---|")
    for name, samples in times.items():
        median = statistics.median(samples)
        print(f"| {name} | {median * 1e6:,.0f} us | {median / valid:.2f} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few rounds, to check it runs")
    args = parser.parse_args()
    asyncio.run(main(rounds=3 if args.quick else 15, per_round=50 if args.quick else 300))
