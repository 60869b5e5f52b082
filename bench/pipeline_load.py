"""End-to-end load for `bench_receiver.py`: a fixed-rate delivery generator and an action sink.

The generator posts signed deliveries at t0 + i / rate over keep-alive
connections without waiting for earlier answers; the sink is the local HTTP
endpoint a rule's `http` action posts to, timestamping each arrival on the
same clock, so sink arrival minus send time is the delivery's end-to-end
latency.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import workload
from loadrun import HOST, WEBHOOK, Workspace

RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"


class Sink:
    """A local HTTP server playing the action's endpoint: it timestamps each request's arrival."""

    def __init__(self) -> None:
        self.arrivals: dict[str, list[float]] = {}
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._handle, HOST, 0)
        port: int = self.server.sockets[0].getsockname()[1]
        return port

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                body = await reader.readexactly(_content_length(head))
                arrived = time.perf_counter()
                delivery_id = orjson.loads(body)["delivery_id"]
                self.arrivals.setdefault(delivery_id, []).append(arrived)
                writer.write(RESPONSE)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


@dataclass
class Sent:
    delivery_id: str
    scheduled: float
    sent: float
    acked: float
    status: int


async def generate(
    port: int, body: bytes, signature: str, rate: float, count: int, prefix: str
) -> list[Sent]:
    """POST `count` signed deliveries at a fixed schedule (t0 + i / rate), over keep-alive connections.

    Sends do not wait for earlier answers (an open-loop schedule); a send that
    finds every connection busy waits for one, which shows as schedule lag.
    """
    pool: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()
    for _ in range(32):
        pool.put_nowait(await asyncio.open_connection(HOST, port))
    common = (
        f"POST {WEBHOOK} HTTP/1.1\r\nHost: {HOST}:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nX-Stockaj-Event: {workload.EVENT}\r\n"
        f"X-Stockaj-Signature: {signature}\r\nX-Stockaj-Delivery: "
    ).encode()
    results: list[Sent] = []

    async def send(delivery_id: str, scheduled: float) -> None:
        reader, writer = await pool.get()
        if reader.at_eof():  # the server closed it while it was idle (keep-alive timeout, low rates)
            writer.close()
            reader, writer = await asyncio.open_connection(HOST, port)
        sent = time.perf_counter()
        writer.write(common + delivery_id.encode() + b"\r\n\r\n" + body)
        head = await reader.readuntil(b"\r\n\r\n")
        await reader.readexactly(_content_length(head))
        results.append(Sent(delivery_id, scheduled, sent, time.perf_counter(), int(head.split(b" ", 2)[1])))
        pool.put_nowait((reader, writer))

    tasks = []
    start = time.perf_counter() + 0.1
    for i in range(count):
        at = start + i / rate
        delay = at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(send(f"{prefix}-{i:06d}", at)))
    await asyncio.wait_for(asyncio.gather(*tasks), 60)
    while not pool.empty():
        _, writer = pool.get_nowait()
        writer.close()
    return results


@dataclass
class EndToEnd:
    case: str
    rate: float
    sent: int
    non_200: int
    arrived: int
    missing: int
    duplicated: int
    e2e: list[float]  # ms, delivery sent -> action request at the sink
    ack: list[float]  # ms, delivery sent -> 200 received
    lag: list[float]  # ms, scheduled -> sent
    cpu: dict[str, float] = field(default_factory=dict)
    cpu_by_process: dict[str, float] = field(default_factory=dict)  # cores, per server process
    profiles: list[Path] = field(default_factory=list)


async def end_to_end(
    ws: Workspace, case: str, sink: Sink, port: int, rate: float, warm_seconds: float, seconds: float
) -> EndToEnd:
    body = ws.body_file.read_bytes()
    prefix = f"e2e-{case}-{uuid.uuid4().hex[:6]}"
    await generate(port, body, ws.signature, rate, int(rate * warm_seconds), prefix + "-w")
    sent = await generate(port, body, ws.signature, rate, int(rate * seconds), prefix + "-m")
    deadline = time.perf_counter() + 20
    while time.perf_counter() < deadline:
        if all(s.delivery_id in sink.arrivals for s in sent):
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)  # let a duplicate action show, if there were one
    arrived = [s for s in sent if s.delivery_id in sink.arrivals]
    return EndToEnd(
        case=case,
        rate=rate,
        sent=len(sent),
        non_200=sum(1 for s in sent if s.status != 200),
        arrived=len(arrived),
        missing=len(sent) - len(arrived),
        duplicated=sum(1 for s in arrived if len(sink.arrivals[s.delivery_id]) > 1),
        e2e=[(sink.arrivals[s.delivery_id][0] - s.sent) * 1000 for s in arrived],
        ack=[(s.acked - s.sent) * 1000 for s in sent],
        lag=[(s.sent - s.scheduled) * 1000 for s in sent],
    )


def write_sink_rules(folder: Path, sink_port: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sink.yaml").write_text(
        "id: bench-e2e-sink\n"
        f"on: {workload.EVENT}\n"
        "actions:\n"
        "  - type: http\n"
        f'    url: "http://{HOST}:{sink_port}/sink"\n'
        "    json:\n"
        '      delivery_id: "{{ delivery_id }}"\n',
        encoding="utf-8",
    )
