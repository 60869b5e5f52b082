"""Chaos soak: signed deliveries at a steady rate while the engine's parts are killed on a schedule.

Two shapes, one after the other, each followed by a drain (the load stops and the
engine is given time to finish: sweeper re-queues, retries, takeovers):

- **production**: `stockaj-rules serve` and two `stockaj-rules worker`s on
  PostgreSQL (a database of the run's own, dropped at the end) and a
  `redis-server` of the run's own on a free port. Faults in turn, one every
  `--fault-every` seconds: SIGKILL of a worker (restarted 1 s later), a rule
  file rewritten atomically (reload), Redis FLUSHALL, SIGKILL of the receiver
  (restarted), `pg_terminate_backend` of every session of the engine, Redis
  killed and restarted empty.
- **embedded**: `stockaj-rules serve` alone on SQLite, no Redis, SIGKILLed and
  restarted every `--fault-every` seconds.

Every delivery of `soak.order` fires one rule with two `http` actions posting to
a local sink (bench/chaos_sink.py) that answers 5 % 500, 2 % 429 with
Retry-After, 1 % slower than the action's timeout. One delivery in 20 is of an
event no rule takes (`no_match`). A process that exits by itself is restarted,
as systemd would, and counted.

The figures per shape (bench/chaos_report.py): acknowledged, stored, finished,
lost, actions executed once, twice (same Idempotency-Key: at a killed process or
after a timed-out call) and never. Exit 1 when an acknowledged delivery is lost,
an action of a succeeded delivery never ran, a request carries another action's
key, or an action ran again without a kill or a timeout to explain it.

    .venv/bin/python bench/chaos_soak.py --duration 120            # two minutes of load
    .venv/bin/python bench/chaos_soak.py --duration 1800 --json    # the documented soak
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
from chaos_load import ACTIONS_PER_DELIVERY, EVENT, RULE_ID, Sender
from chaos_parts import CLI, RedisServer, Run, SoakDatabase, log
from chaos_report import failures, figures, markdown

BENCH = Path(__file__).resolve().parent
SLOW_ANSWER_SECONDS = 3.0
PENDING = ("received", "processing")


async def run_faults(
    run: Run, faults: list[Callable[[], Awaitable[str]]], every: float, until: float
) -> None:
    """Apply `faults` in turn, one every `every` seconds, until `until` (time.monotonic())."""
    start = time.monotonic()
    for n in range(10**6):
        at = start + (n + 1) * every
        if at >= until:
            return
        await asyncio.sleep(at - time.monotonic())
        began = time.time()
        fault = faults[n % len(faults)]
        what = await fault()
        run.faults.append({"t": round(began - run_started, 1), "kind": fault.__name__, "fault": what})
        log(f"{run.shape}: {what}")


async def load(
    run: Run, args: argparse.Namespace, duration: float, faults: list[Callable[[], Awaitable[str]]]
) -> Sender:
    rate, every, give_up = args.rate, args.fault_every, args.give_up
    sender = Sender(run.url + "/webhooks/stockaj", run.secret, f"soak-{run.shape}", rate, give_up)
    supervisor = asyncio.create_task(run.supervise())
    schedule = asyncio.create_task(run_faults(run, faults, every, time.monotonic() + duration))
    try:
        await sender.run(duration)
        await schedule
        return sender
    finally:
        schedule.cancel()
        supervisor.cancel()


async def drain(run: Run, pending: Callable[[], Awaitable[int]], within: float) -> float:
    """Wait until no delivery is received/processing; the seconds it took (or `within`)."""
    start = time.monotonic()
    supervisor = asyncio.create_task(run.supervise())
    try:
        while time.monotonic() - start < within:
            try:
                left = await pending()
            except (OSError, asyncpg.PostgresError, sqlite3.Error) as exc:
                log(f"{run.shape}: reading the store failed ({exc}); trying again")
                left = -1
            if left == 0:
                return time.monotonic() - start
            await asyncio.sleep(2)
        log(f"{run.shape}: not drained after {within:g}s")
        return within
    finally:
        supervisor.cancel()


async def production(args: argparse.Namespace, work: Path, sink_port: int, duration: float) -> dict[str, Any]:
    database = SoakDatabase()
    await database.create()
    redis = None
    run = None
    try:
        redis = RedisServer(work)
        run = Run("production", work / "production", sink_port, database.url, redis.url)
        await asyncio.to_thread(
            subprocess.run, [CLI, "db", "upgrade"], env=run.env, check=True, capture_output=True, timeout=120
        )
        run.start("worker-1", "worker")
        run.start("worker-2", "worker")
        run.start("serve", "serve")
        await run.wait_ready()
        live_redis = redis

        async def kill_worker() -> str:
            victim = f"worker-{sum(k.name.startswith('worker') for k in run.kills) % 2 + 1}"
            return await run.kill_and_restart(victim, 1.0)

        async def reload_rules() -> str:
            return run.reload_rules()

        async def flushall() -> str:
            await asyncio.to_thread(live_redis.flushall)
            return "Redis FLUSHALL"

        async def kill_receiver() -> str:
            return await run.kill_and_restart("serve", 0.5)

        async def terminate_backends() -> str:
            return f"pg_terminate_backend of {await database.terminate_sessions()} sessions"

        async def restart_redis() -> str:
            await asyncio.to_thread(live_redis.kill)
            await asyncio.sleep(1.0)
            await asyncio.to_thread(live_redis.start)
            return "Redis SIGKILLed and restarted empty"

        faults = [kill_worker, reload_rules, flushall, kill_receiver, terminate_backends, restart_redis]
        sender = await load(run, args, duration, faults)

        async def pending() -> int:
            connection = await asyncpg.connect(_plain(database.url))
            try:
                count: int = await connection.fetchval(
                    "SELECT count(*) FROM deliveries WHERE status = ANY($1::text[])", list(PENDING)
                )
                return count
            finally:
                await connection.close()

        drained = await drain(run, pending, args.drain_timeout)
        exits = run.stop()
        connection = await asyncpg.connect(_plain(database.url))
        try:
            stored = {
                r["delivery_id"]: r["status"]
                for r in await connection.fetch("SELECT delivery_id, status FROM deliveries")
            }
        finally:
            await connection.close()
        return _report(run, sender, stored, drained, exits)
    finally:
        if run is not None:
            run.stop()
        if redis is not None:
            redis.stop()
        await database.drop()


async def embedded(args: argparse.Namespace, work: Path, sink_port: int, duration: float) -> dict[str, Any]:
    path = work / "embedded.db"
    run = Run("embedded", work / "embedded", sink_port, f"sqlite+aiosqlite:///{path}", None)
    try:
        run.start("serve", "serve")
        await run.wait_ready()

        async def kill_serve() -> str:
            return await run.kill_and_restart("serve", 0.5)

        sender = await load(run, args, duration, [kill_serve])

        async def pending() -> int:
            return _sqlite(
                path, "SELECT count(*) FROM deliveries WHERE status IN ('received', 'processing')"
            )[0][0]

        drained = await drain(run, pending, args.drain_timeout)
        exits = run.stop()
        stored = dict(_sqlite(path, "SELECT delivery_id, status FROM deliveries"))
        return _report(run, sender, stored, drained, exits)
    finally:
        run.stop()


def _first_traceback(log_text: str, lines: int = 40) -> str:
    """The log's first traceback (a JSON line's event and exception, or plain lines), cut to 4,000
    characters."""
    all_lines = log_text.splitlines()
    start = next(i for i, line in enumerate(all_lines) if "Traceback" in line)
    try:
        event = json.loads(all_lines[start])
        return f"{event.get('event')}\n{event.get('exception', '')}"[-4000:]
    except ValueError:
        return "\n".join(all_lines[max(0, start - 1) : start + lines])[-4000:]


def _sqlite(path: Path, query: str) -> list[Any]:
    connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    try:
        return connection.execute(query).fetchall()
    finally:
        connection.close()


def _plain(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


def _report(
    run: Run, sender: Sender, stored: dict[str, str], drained: float, exits: dict[str, int | None]
) -> dict[str, Any]:
    records = [json.loads(line) for line in (run.work.parent / "sink.jsonl").read_text().splitlines() if line]
    prefix = f"soak-{run.shape}-"
    mine = [r for r in records if isinstance(r.get("delivery"), str) and r["delivery"].startswith(prefix)]
    actions = {EVENT: (RULE_ID, ACTIONS_PER_DELIVERY)}
    report = figures(run.shape, sender.sent, stored, mine, run.kills, actions)
    report["sender_refusal_samples"] = sender.refusal_samples
    report["drain_seconds"] = round(drained, 1)
    report["faults"] = run.faults
    report["faults_by_kind"] = dict(Counter(fault["kind"] for fault in run.faults))
    report["unexpected_exits"] = {
        n: p.unexpected_exits for n, p in run.processes.items() if p.unexpected_exits
    }
    report["final_exit_codes"] = exits
    logs = {name: process.log_path.read_text(errors="replace") for name, process in run.processes.items()}
    report["tracebacks"] = {name: text.count("Traceback") for name, text in logs.items()}
    report["first_tracebacks"] = {
        name: _first_traceback(text) for name, text in logs.items() if "Traceback" in text
    }
    return report


run_started = time.time()


def start_sink(work: Path) -> tuple[subprocess.Popen[bytes], int]:
    """The sink process (bench/chaos_sink.py) and its port."""
    port_file = work / "sink.port"
    cmd = [sys.executable, str(BENCH / "chaos_sink.py"), "--port-file", str(port_file)]
    cmd += ["--record", str(work / "sink.jsonl"), "--slow", str(SLOW_ANSWER_SECONDS)]
    sink = subprocess.Popen(cmd, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while not (port_file.exists() and port_file.read_text()):
        if time.monotonic() > deadline or sink.poll() is not None:
            sink.kill()
            raise RuntimeError("the sink did not start within 10 s")
        time.sleep(0.05)
    return sink, int(port_file.read_text())


async def soak(args: argparse.Namespace, work: Path, sink_port: int) -> dict[str, Any]:
    shapes = []
    embedded_seconds = args.duration * args.embedded_share
    if not args.embedded_only:
        log(f"production shape: {args.duration - embedded_seconds:g}s at {args.rate:g}/s")
        shapes.append(await production(args, work, sink_port, args.duration - embedded_seconds))
    log(f"embedded shape: {embedded_seconds:g}s at {args.rate:g}/s")
    shapes.append(await embedded(args, work, sink_port, embedded_seconds))
    return {
        "command": " ".join(["bench/chaos_soak.py", *sys.argv[1:]]),
        "started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(run_started)),
        "seconds": round(time.time() - run_started),
        "rate": args.rate,
        "fault_every": args.fault_every,
        "cores": os.cpu_count(),
        "load_average_at_end": os.getloadavg(),
        "shapes": shapes,
        "failures": [f"{s['shape']}: {problem}" for s in shapes for problem in failures(s)],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=120, help="seconds of load, both shapes together")
    parser.add_argument("--rate", type=float, default=50, help="deliveries a second")
    parser.add_argument(
        "--fault-every",
        type=float,
        default=None,
        help="seconds between faults (default: duration/20, 5-20 s)",
    )
    parser.add_argument(
        "--embedded-share", type=float, default=1 / 3, help="share of the duration for the embedded shape"
    )
    parser.add_argument("--embedded-only", action="store_true", help="skip the production shape")
    parser.add_argument(
        "--drain-timeout", type=float, default=300, help="seconds to wait for the engine to finish"
    )
    parser.add_argument(
        "--give-up", type=float, default=600, help="seconds the sender tries a delivery before giving up"
    )
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--keep", type=Path, default=None, help="keep logs and records in this folder")
    args = parser.parse_args()
    if args.fault_every is None:
        args.fault_every = min(20.0, max(5.0, args.duration / 20))
    work = args.keep or Path(tempfile.mkdtemp(prefix="chaos-soak-"))
    work.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # stopped: clean up as after Ctrl-C
    sink, sink_port = start_sink(work)
    try:
        result = asyncio.run(soak(args, work, sink_port))
    finally:
        sink.terminate()
        sink.wait(10)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"chaos soak {result['started']}, {result['seconds']} s, {args.rate:g} deliveries/s, ", end="")
        print(f"a fault every {args.fault_every:g} s\n")
        for shape in result["shapes"]:
            print(markdown(shape) + "\n")
        print("failures: " + ("; ".join(result["failures"]) or "none"))
    if result["failures"] or args.keep:
        log(f"logs and records kept in {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if result["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
