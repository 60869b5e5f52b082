"""What the benchmarks feed the engine: an item.low_stock payload, rules, fixtures, and the timing helpers.

Shared by `bench_conditions.py` and `bench_replay.py` (run as scripts, so this
module is imported from the script's own folder). Everything is generated from
a seeded `random.Random`, so two runs measure the same work.
"""

from __future__ import annotations

import gc
import json
import os
import platform
import random
import statistics
import subprocess
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

EVENT = "item.low_stock"
RULES_PER_FILE = 10
FIXTURES_PER_FILE = 100
WAREHOUSES = ["W-1", "W-2", "W-3", "W-4"]
CATEGORIES = ["camping", "climbing", "water", "winter", "bikes", "tools"]
TAGS = ["outdoor", "rental", "summer", "winter", "fragile", "bulky", "kids", "pro"]
SUPPLIERS = ["Acme Outdoor Supply", "Nordic Gear AB", "Alpine Parts GmbH", "Rental Depot Ltd"]


def payload(rng: random.Random | None = None, item_id: int = 42) -> dict[str, Any]:
    """An item.low_stock body of about 1 KB; `rng` varies the values (None: the fixed one)."""
    r = rng or random.Random(7)
    minimum = r.randint(2, 12)
    quantity = r.randint(0, minimum + 6)
    return {
        "event": EVENT,
        "timestamp": f"2026-03-01T{r.randint(0, 23):02d}:{r.randint(0, 59):02d}:00Z",
        "account_id": "acc_7Hq2mXv9Lp",
        "data": {
            "id": item_id,
            "external_id": f"SKU-{item_id % 50:04d}",
            "name": f"{r.choice(['Tent', 'Stove', 'Kayak', 'Harness', 'Lantern'])} {r.randint(1, 9)}p",
            "category": r.choice(CATEGORIES),
            "quantity": quantity,
            "minimum_quantity": minimum,
            "price": round(r.uniform(5, 400), 2),
            "currency": "EUR",
            "discontinued": r.random() < 0.1,
            "tags": r.sample(TAGS, 3),
            "location": {"warehouse": r.choice(WAREHOUSES), "shelf": f"B-{r.randint(1, 40)}"},
            "supplier": {
                "id": r.randint(1, 40),
                "name": r.choice(SUPPLIERS),
                "lead_time_days": r.randint(1, 21),
            },
            "items": [
                {
                    "sku": f"SKU-{item_id % 50:04d}-{n}",
                    "quantity": r.randint(0, 8),
                    "minimum_quantity": r.randint(1, 4),
                    "location": f"A-{r.randint(1, 9)}",
                }
                for n in range(5)
            ],
            "updated_at": "2026-03-01T08:59:58Z",
            "updated_by": {"id": 7, "name": "Warehouse scanner 2"},
            "notes": "Counted during the morning round; two units out for repair.",
        },
    }


def _var(path: str, default: Any = ...) -> dict[str, Any]:
    return {"var": path if default is ... else [path, default]}


def condition(index: int, rng: random.Random) -> dict[str, Any]:
    """One of eleven realistic condition shapes, with thresholds drawn from `rng`."""
    k = rng.randint(0, 8)
    shapes: list[Callable[[], dict[str, Any]]] = [
        lambda: {"<=": [_var("data.quantity"), {"-": [_var("data.minimum_quantity"), k % 4]}]},
        lambda: {
            "and": [
                {">": [_var("data.price"), 40 * k]},
                {"in": [_var("data.category"), rng.sample(CATEGORIES, 2)]},
            ]
        },
        lambda: {
            "or": [
                {"==": [_var("data.location.warehouse"), rng.choice(WAREHOUSES)]},
                {"<": [_var("data.quantity"), k // 2]},
            ]
        },
        lambda: {"some": [_var("data.items"), {"<": [_var("quantity"), k // 3]}]},
        lambda: {"in": [rng.choice(TAGS), _var("data.tags")]},
        lambda: {"<": [{"+": [_var("data.quantity"), _var("data.incoming", 0)]}, k]},
        lambda: {
            "and": [
                {"==": [_var("event"), EVENT]},
                {"!": _var("data.discontinued")},
                {">": [_var("data.supplier.lead_time_days"), 2 * k]},
            ]
        },
        lambda: {
            "some": [
                _var("data.items"),
                {
                    "and": [
                        {"==": [_var("location"), f"A-{k + 1}"]},
                        {"<=": [_var("quantity"), _var("minimum_quantity")]},
                    ]
                },
            ]
        },
        lambda: {"in": [rng.choice(["Acme", "Nordic", "Alpine", "Depot"]), _var("data.supplier.name")]},
        lambda: {"!=": [_var("data.status", "active"), "archived"]},
        lambda: {"in": [_var("data.external_id"), [f"SKU-{rng.randint(0, 49):04d}" for _ in range(5)]]},
    ]
    return shapes[index % len(shapes)]()


def scope(rng: random.Random) -> dict[str, Any]:
    """A rule's scope, as rules kept per category, warehouse or supplier have: about 1 in 3 holds."""
    return rng.choice(
        [
            {"in": [_var("data.category"), rng.sample(CATEGORIES, 2)]},
            {"==": [_var("data.location.warehouse"), rng.choice(WAREHOUSES)]},
            {"==": [_var("data.supplier.name"), rng.choice(SUPPLIERS)]},
        ]
    )


def rule(index: int, rng: random.Random, *, scoped: bool, throttled: bool = False) -> dict[str, Any]:
    """One rule on item.low_stock with a single `log` action (a text template).

    `scoped` puts the condition under a category, warehouse or supplier scope,
    so far fewer rules fire for one delivery.
    """
    when = condition(index, rng)
    spec: dict[str, Any] = {
        "id": f"bench-rule-{index:04d}",
        "on": EVENT,
        "when": {"and": [scope(rng), when]} if scoped else when,
        "actions": [
            {
                "type": "log",
                "message": f"rule {index}: {{{{ data.name }}}} ({{{{ data.external_id }}}}) "
                "is at {{ data.quantity }}, minimum {{ data.minimum_quantity }}",
            }
        ],
    }
    if throttled:
        spec["throttle"] = {"key": "{{ data.external_id }}", "per": "6h"}
    return spec


def rules(count: int, *, scoped: bool, seed: int = 1, throttle_every: int = 0) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    return [
        rule(i, rng, scoped=scoped, throttled=bool(throttle_every) and i % throttle_every == 0)
        for i in range(count)
    ]


def write_rules(folder: Path, specs: Sequence[dict[str, Any]]) -> None:
    """YAML rule files of RULES_PER_FILE rules each, as a rule author would keep them."""
    folder.mkdir(parents=True, exist_ok=True)
    for start in range(0, len(specs), RULES_PER_FILE):
        chunk = list(specs[start : start + RULES_PER_FILE])
        path = folder / f"rules-{start // RULES_PER_FILE:03d}.yaml"
        path.write_text(yaml.safe_dump(chunk, sort_keys=False), encoding="utf-8")


def write_fixtures(folder: Path, fixtures: Sequence[dict[str, Any]]) -> None:
    """YAML fixture files of FIXTURES_PER_FILE fixtures each (each file has its own throttle state)."""
    folder.mkdir(parents=True, exist_ok=True)
    for start in range(0, len(fixtures), FIXTURES_PER_FILE):
        chunk = list(fixtures[start : start + FIXTURES_PER_FILE])
        path = folder / f"fixtures-{start // FIXTURES_PER_FILE:03d}.yaml"
        path.write_text(yaml.safe_dump(chunk, sort_keys=False), encoding="utf-8")


def payload_bytes(body: dict[str, Any]) -> int:
    return len(json.dumps(body).encode())


# --- timing -------------------------------------------------------------------------------------


def settle() -> None:
    """Collect garbage between phases, so one variant's garbage is not charged to the next."""
    gc.collect()


@contextmanager
def frozen_gc() -> Iterator[None]:
    """Everything alive now (loaded rules, fixtures) moved out of the cyclic GC's reach, as
    `gc.freeze()` after start-up would do in a worker; undone on exit. Both are O(1)."""
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def median_p95(samples_ns: Sequence[int]) -> tuple[float, float]:
    """Median and 95th percentile, in microseconds."""
    ordered = sorted(samples_ns)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return statistics.median(ordered) / 1000, p95 / 1000


def fmt_us(value_us: float) -> str:
    if value_us >= 10_000:
        return f"{value_us / 1000:,.1f} ms"
    if value_us >= 1000:
        return f"{value_us / 1000:,.2f} ms"
    return f"{value_us:,.1f} µs"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table, columns padded so it also reads well in a terminal."""
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    rule_line = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), rule_line, *(line(row) for row in rows)])


def machine() -> str:
    """Date, Python, cores and the load average (other work on the machine skews absolute figures)."""
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (
        f"{stamp}; Python {platform.python_version()}; {platform.machine()}; {os.cpu_count()} cores; "
        f"load average {load_average()}; {revision()}"
    )


def load_average() -> str:
    """1, 5 and 15 minute load averages: above ~1 on 2 cores, something else ran alongside."""
    return ", ".join(f"{value:.2f}" for value in os.getloadavg())


def revision() -> str:
    """The checkout's commit, and whether engine/ or actions/ have uncommitted changes."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--", "engine", "actions"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "commit unknown"
    return f"commit {commit}{' + uncommitted engine changes' if dirty else ''}"
