"""What the receiver's connection protocol costs per request, next to uvicorn's plain httptools.

In one process, without sockets: each variant's protocol object gets a transport that
records what is written, and the same signed request (the bench's 1 KB `item.low_stock`
body with the receiver's headers) fed in one read, answered by a small ASGI app that reads
the body and answers 200, keep-alive, request after request. Blocks of requests alternate
between the variants, and CPU time (`time.process_time`) is taken per block, so load from
other processes on the machine changes the ratio little. The wrk runs of bench_receiver.py
(`--only verify-uvicorn verify-uvicorn-bounded hello-uvicorn hello-uvicorn-bounded`)
measure the same over real sockets.

Run: `.venv/bin/python bench/bench_http_protocol.py` (~20 s; `--quick` for a smoke run).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from typing import Any

import uvicorn
import uvloop
import workload
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from engine.pipeline.http_protocol import BoundedHttpToolsProtocol
from engine.signing import sign


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    more = True
    while more:
        more = (await receive()).get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"{}"})


class Transport(asyncio.Transport):
    """Counts the responses written; never pauses."""

    def __init__(self) -> None:
        super().__init__()
        self.written = 0
        self.closing = False

    def write(self, data: Any) -> None:
        self.written += 1

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 8000) if name in ("sockname", "peername") else default

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def request_bytes() -> bytes:
    body = json.dumps(workload.payload()).encode()
    head = (
        "POST /webhooks/stockaj HTTP/1.1\r\nHost: 127.0.0.1:8000\r\nContent-Type: application/json\r\n"
        "User-Agent: Stockaj-Webhooks/1.0\r\nX-Stockaj-Event: item.low_stock\r\n"
        f"X-Stockaj-Delivery: dlv-0123456789abcdef\r\nX-Stockaj-Signature: {sign(body, 'bench')}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def block(cls: type[HttpToolsProtocol], config: uvicorn.Config, data: bytes, n: int) -> float:
    """CPU seconds per request for `n` keep-alive requests on one new connection."""
    loop = asyncio.get_running_loop()
    state = ServerState()
    protocol = cls(config=config, server_state=state, app_state={}, _loop=loop)
    transport = Transport()
    started = time.process_time()
    protocol.connection_made(transport)
    for _ in range(n):
        protocol.data_received(data)
        await asyncio.gather(*state.tasks)  # the request's task: the app, then the answer
    elapsed = time.process_time() - started
    protocol.connection_lost(None)
    assert transport.written == 2 * n, transport.written  # head and body of every response
    return elapsed / n


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--blocks", type=int, default=30)
    parser.add_argument("--requests", type=int, default=3000, help="per block")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.blocks, args.requests = 4, 500
    config = uvicorn.Config(app, lifespan="off", access_log=False, log_config=None, ws="none")
    config.load()
    data = request_bytes()
    variants = {"httptools (uvicorn)": HttpToolsProtocol, "receiver (bounded)": BoundedHttpToolsProtocol}
    times: dict[str, list[float]] = {name: [] for name in variants}
    for cls in variants.values():  # warm-up
        await block(cls, config, data, args.requests)
    for index in range(args.blocks):
        order = list(variants.items()) if index % 2 == 0 else list(reversed(variants.items()))
        for name, cls in order:
            times[name].append(await block(cls, config, data, args.requests))
    plain = statistics.median(times["httptools (uvicorn)"])
    print(f"{len(data)}-byte request, {args.blocks} blocks of {args.requests} keep-alive requests each\n")
    print("| protocol | CPU per request (median) | p10–p90 of blocks | vs httptools |")
    print("|---|---|---|---|")
    for name, values in times.items():
        deciles = statistics.quantiles(values, n=10)
        median = statistics.median(values)
        print(
            f"| {name} | {median * 1e6:.1f} µs | {deciles[0] * 1e6:.1f}–{deciles[-1] * 1e6:.1f} µs "
            f"| {median / plain:.3f}x |"
        )


if __name__ == "__main__":
    uvloop.run(main())
