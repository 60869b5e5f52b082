"""The CPU one action request costs the process that sends it: `send_request` over the engine's client.

A raw asyncio server in a child process answers every request on kept-alive connections
(`200`, a 27-byte JSON body), so only the sender's work is on this process's clock. This
process sends `--count` requests, `--concurrency` at a time, after a warm-up, and prints CPU
µs per request (`time.process_time`) and the wall time, per round.

To compare two checkouts side by side, run it from each in turn, alternating:

    for i in 1 2 3; do
      PYTHONPATH=/path/to/old .venv/bin/python bench/bench_send_request.py --label old
      .venv/bin/python bench/bench_send_request.py --label new
    done

Plain script, no pytest; the server binds 127.0.0.1 on a free port.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import subprocess
import sys
import time
from dataclasses import fields
from datetime import UTC, datetime
from typing import Any

ANSWER = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 27\r\n\r\n"
    b'{"ok": true, "id": "po-42"}'
)


async def _answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            await reader.readexactly(length)
            writer.write(ANSWER)
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


def _serve(port_out: Any) -> None:
    async def main() -> None:
        server = await asyncio.start_server(_answer, "127.0.0.1", 0)
        port_out.send(server.sockets[0].getsockname()[1])
        await server.serve_forever()

    asyncio.run(main())


async def _run(port: int, count: int, concurrency: int) -> tuple[float, float]:
    from actions.base import ActionContext, DatabaseEngines, send_request
    from engine.pipeline.http_client import create_http_client

    url = f"http://127.0.0.1:{port}/orders"
    http = create_http_client()
    extra: dict[str, Any] = {}
    context_fields = {f.name for f in fields(ActionContext)}
    if "allowed_origins" in context_fields:  # the checkout has the origin check
        from actions.base import Origin

        extra["allowed_origins"] = frozenset({Origin.of(url)})
    if "defaults" in context_fields:  # a checkout from before actions declared their settings
        from actions import base

        extra["defaults"] = base.ActionDefaults()  # type: ignore[attr-defined]
    ctx = ActionContext(
        http=http,
        databases=DatabaseEngines(lambda url: None),  # type: ignore[arg-type,return-value]
        delivery_id="bench",
        rule_id="bench",
        action_index=0,
        clock=lambda: datetime.now(UTC),
        **extra,
    )
    body = {"item_sku": "TENT-4P", "quantity": 12, "notes": "auto reorder"}

    async def worker(n: int) -> None:
        for _ in range(n):
            result = await send_request(ctx, "POST", url, json=body, timeout=5)
            assert result.status == 200

    await asyncio.gather(*(worker(200 // concurrency) for _ in range(concurrency)))  # warm-up
    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker(count // concurrency) for _ in range(concurrency)))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    await http.aclose()
    return cpu, wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=4000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--label", default="")
    args = parser.parse_args()
    receive, send = multiprocessing.Pipe(duplex=False)
    server = multiprocessing.Process(target=_serve, args=(send,), daemon=True)
    server.start()
    port = receive.recv()
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    where = os.environ.get("PYTHONPATH") or "this checkout"
    python = sys.version.split()[0]
    print(f"# {args.label or where} ({commit}), load {os.getloadavg()[0]:.2f}, Python {python}")
    try:
        for round_ in range(args.rounds):
            cpu, wall = asyncio.run(_run(port, args.count, args.concurrency))
            print(
                f"round {round_ + 1}: {cpu / args.count * 1e6:.0f} µs CPU per request, "
                f"{args.count / wall:,.0f} requests/s ({args.count} at {args.concurrency} at a time)"
            )
    finally:
        server.terminate()


if __name__ == "__main__":
    main()
