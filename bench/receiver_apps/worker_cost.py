"""Where a worker's time goes: `DeliveryProcessor.process` run one delivery at a time, each step timed.

Stores `--count` signed-and-verified deliveries (the bench's 1 KB item.low_stock
body) through `Store.add_deliveries`, then processes them one after the other
with the service `stockaj-rules serve` builds (`open_service`), with one rule
whose `http` action posts to a sink in this process. Every store query, the
matcher and the HTTP client are wrapped with a timer, so the table says how
much of a delivery's wall time each step takes with nothing else running.
Wall time and CPU time (this process, all threads) per delivery are printed
too: with one delivery at a time, throughput is 1 / wall.

Settings come from the environment as for `serve` (DATABASE_URL; a PostgreSQL
database must be upgraded first). Run by `bench_receiver.py --only
worker-sqlite worker-pg`, which prints the table and the JSON line it reads.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import json
import os
import tempfile
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"


async def _sink(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(
                (
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length")
                ),
                0,
            )
            await reader.readexactly(length)
            writer.write(RESPONSE)
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


def _timed(
    totals: dict[str, float], counts: dict[str, int], name: str, fn: Callable[..., Awaitable[Any]]
) -> Callable[..., Awaitable[Any]]:
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return await fn(*args, **kwargs)
        finally:
            totals[name] += time.perf_counter() - started
            counts[name] += 1

    return wrapper


def _write_rules(rules_dir: Path, port: int) -> None:
    rules_dir.mkdir(parents=True, exist_ok=True)
    (rules_dir / "sink.yaml").write_text(
        "id: bench-e2e-sink\non: item.low_stock\nactions:\n  - type: http\n"
        f'    url: "http://127.0.0.1:{port}/sink"\n    json:\n      delivery_id: "{{{{ delivery_id }}}}"\n',
        encoding="utf-8",
    )


async def main(
    count: int, body_file: Path, rules_dir: Path, log_lines: bool, concurrency: int = 1
) -> dict[str, Any]:
    from engine.config import load_settings
    from engine.language import matching
    from engine.pipeline.logs import configure_logging
    from engine.pipeline.service import masker_for, open_service
    from engine.store import NewDelivery

    server = await asyncio.start_server(_sink, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    _write_rules(rules_dir, port)
    settings = load_settings({**os.environ, "RULES_DIR": str(rules_dir)})
    if log_lines:  # as `serve` and `worker` log: structured lines, masked (to stderr, dropped by the caller)
        configure_logging(settings.log_level, settings.log_format, masker_for(settings))
    service = await open_service(settings, receive=False, process_in_process=True)
    try:
        body = await asyncio.to_thread(body_file.read_bytes)
        now = datetime.now(UTC)
        headers = {"Content-Type": "application/json", "X-Stockaj-Event": "item.low_stock"}
        ids = [f"cost-{n:06d}" for n in range(count + 20)]
        deliveries = [
            NewDelivery(i, "item.low_stock", {**headers, "X-Stockaj-Delivery": i}, body, now) for i in ids
        ]
        for start in range(0, len(deliveries), 500):
            await service.store.add_deliveries(deliveries[start : start + 500], now + timedelta(hours=1))
        for delivery_id in ids[:20]:  # warm-up: caches, prepared statements, the HTTP connection
            await service.processor.process(delivery_id)

        totals: dict[str, float] = defaultdict(float)
        counts: dict[str, int] = defaultdict(int)
        store = service.store
        recent = store.recent  # for the check at the end, untimed
        for name in dir(store):  # every query the store has, whatever this commit calls them
            if not name.startswith("_") and inspect.iscoroutinefunction(getattr(store, name)):
                setattr(store, name, _timed(totals, counts, f"store.{name}", getattr(store, name)))
        original_match = matching.Matcher.match
        matching.Matcher.match = _timed(totals, counts, "Matcher.match", original_match)  # type: ignore[method-assign]
        service.http.request = _timed(totals, counts, "http action (httpx request)", service.http.request)  # type: ignore[method-assign]

        waiting = list(reversed(ids[20:]))

        async def run_tasks() -> None:  # as the in-process queue and arq's max_jobs run them
            while waiting:
                await service.processor.process(waiting.pop())

        cpu, wall = time.process_time(), time.perf_counter()
        await asyncio.gather(*(run_tasks() for _ in range(concurrency)))
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        matching.Matcher.match = original_match  # type: ignore[method-assign]
        statuses = {s.status.value for s in await recent(limit=5)}
    finally:
        await service.close()
        server.close()
    steps = {name: (totals[name] / count * 1000, counts[name] / count) for name in sorted(totals)}
    return {
        "database": settings.database_url.split(":", 1)[0] + ("" if log_lines else ", logging off"),
        "count": count,
        "concurrency": concurrency,
        "wall_ms": wall / count * 1000,
        "cpu_ms": cpu / count * 1000,
        "steps": steps,
        "statuses": sorted(statuses),
    }


def report(result: dict[str, Any]) -> str:
    tasks = result.get("concurrency", 1)
    how = "one at a time" if tasks == 1 else f"{tasks} at a time"
    lines = [
        f"{result['database']}: {result['count']} deliveries {how}: "
        f"{result['wall_ms']:.2f} ms wall, {result['cpu_ms']:.2f} ms CPU per delivery "
        f"({1000 / result['wall_ms']:,.0f} deliveries/s, final status {result['statuses']})",
        f"  {'step':<30} {'calls':>6} {'ms/delivery':>12} {'share':>6}",
    ]
    timed = 0.0
    for name, (ms, calls) in sorted(result["steps"].items(), key=lambda kv: -kv[1][0]):
        if name.startswith("store.") or name.startswith("http"):
            timed += ms
        lines.append(f"  {name:<30} {calls:>6.2f} {ms:>12.3f} {ms / result['wall_ms']:>6.1%}")
    match = result["steps"].get("Matcher.match", (0.0, 0))[0]
    rest = result["wall_ms"] - timed - match
    if tasks == 1:
        lines.append(f"  {'everything else':<30} {'':>6} {rest:>12.3f} {rest / result['wall_ms']:>6.1%}")
    else:  # the tasks' waits overlap: a step's time is summed over them, calls show the batching
        lines.append("  (steps overlap across tasks: their times add up to more than the wall time)")
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--count", type=int, default=500)
    parser.add_argument(
        "--concurrency", type=int, default=1, help="deliveries processed at once (WORKER_CONCURRENCY is 8)"
    )
    parser.add_argument("--body", type=Path, required=True)
    parser.add_argument(
        "--no-logging", action="store_true", help="leave logging unconfigured (lines dropped)"
    )
    args = parser.parse_args()
    import uvloop

    with tempfile.TemporaryDirectory() as folder:
        outcome = uvloop.run(
            main(args.count, args.body, Path(folder) / "rules", not args.no_logging, args.concurrency)
        )
    print(report(outcome))
    print("WORKER_JSON " + json.dumps(outcome))
