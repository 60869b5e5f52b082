"""The chaos soak's sink: the services a rule's actions call, on 127.0.0.1, misbehaving on purpose.

Run as its own process by `chaos_soak.py` (so its answers never wait on the load
generator's event loop). Each request gets, drawn from a seeded generator:

- 5 %: `500` (the engine retries it);
- 2 %: `429` with `Retry-After: 1`;
- 1 %: `200` after `--slow` seconds, longer than the action's timeout (the engine
  gives up on the call and retries it: the service has done the work, so this
  is the one kind of duplicate the engine cannot avoid besides a killed worker);
- otherwise `200` at once.

Every request is one JSON line in `--record` (written before the answer): arrival
time, the client's port, the Idempotency-Key, the delivery and action index from
the body, the status answered and whether the answer was slow. The port it
listens on is written to `--port-file` once it listens. SIGTERM stops it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import signal
import time
from pathlib import Path
from typing import IO, Any

MAX_HEAD_BYTES = 16_384
MAX_BODY_BYTES = 65_536
READ_TIMEOUT_SECONDS = 30.0


class ChaosSink:
    def __init__(self, record: IO[str], seed: int, slow_seconds: float) -> None:
        self._record = record
        self._random = random.Random(seed)
        self._slow_seconds = slow_seconds
        self.open: set[asyncio.StreamWriter] = set()

    def answer(self) -> tuple[int, dict[str, str], bool]:
        """(status, extra headers, slow) for the next request."""
        draw = self._random.random()
        if draw < 0.05:
            return 500, {}, False
        if draw < 0.07:
            return 429, {"Retry-After": "1"}, False
        if draw < 0.08:
            return 200, {}, True
        return 200, {}, False

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        port = writer.get_extra_info("peername")[1]
        self.open.add(writer)
        try:
            while True:
                async with asyncio.timeout(READ_TIMEOUT_SECONDS):
                    head = await reader.readuntil(b"\r\n\r\n")
                    headers = _headers(head)
                    length = min(int(headers.get("content-length", "0")), MAX_BODY_BYTES)
                    body = await reader.readexactly(length)
                status, extra, slow = self.answer()
                self._write_record(port, head, headers, body, status, slow)
                if slow:
                    await asyncio.sleep(self._slow_seconds)
                writer.write(_response(status, extra))
                await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        finally:
            self.open.discard(writer)
            writer.close()

    def _write_record(
        self, port: int, head: bytes, headers: dict[str, str], body: bytes, status: int, slow: bool
    ) -> None:
        try:
            payload: Any = json.loads(body) if body else {}
        except ValueError:
            payload = {}
        if not isinstance(payload, dict):
            payload = {}
        line = {
            "t": time.time(),
            "port": port,
            "path": head.split(b" ", 2)[1].decode(errors="replace") if b" " in head else "",
            "key": headers.get("idempotency-key"),
            "delivery": payload.get("delivery"),
            "action": payload.get("action"),
            "status": status,
            "slow": slow,
        }
        self._record.write(json.dumps(line) + "\n")


def _headers(head: bytes) -> dict[str, str]:
    found = {}
    for line in head.decode("latin-1").split("\r\n")[1:]:
        name, sep, value = line.partition(":")
        if sep:
            found[name.strip().lower()] = value.strip()
    return found


def _response(status: int, extra: dict[str, str]) -> bytes:
    body = b'{"ok": true}' if status == 200 else b'{"error": "chaos"}'
    reason = {200: "OK", 429: "Too Many Requests", 500: "Internal Server Error"}[status]
    lines = [f"HTTP/1.1 {status} {reason}", "Content-Type: application/json", f"Content-Length: {len(body)}"]
    lines += [f"{name}: {value}" for name, value in extra.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def serve(port_file: Path, record_path: Path, seed: int, slow_seconds: float) -> None:
    with record_path.open("a", buffering=1) as record:
        sink = ChaosSink(record, seed, slow_seconds)
        server = await asyncio.start_server(sink.handle, "127.0.0.1", 0, limit=MAX_HEAD_BYTES)
        port = server.sockets[0].getsockname()[1]
        await asyncio.to_thread(port_file.write_text, str(port))
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        async with server:
            await stop.wait()
            for writer in list(sink.open):  # their handlers end on the closed stream, not cancelled
                writer.close()
            await asyncio.sleep(0.2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port-file", type=Path, required=True)
    parser.add_argument("--record", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--slow", type=float, default=3.0, help="seconds of a slow answer")
    args = parser.parse_args()
    asyncio.run(serve(args.port_file, args.record, args.seed, args.slow))


if __name__ == "__main__":
    main()
