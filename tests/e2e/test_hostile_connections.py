"""Hostile connections against a real `serve`: the receiver stands on its own, without a proxy.

Idle connections, request heads that trickle in a byte at a time, heads of
100 MB and more connections than it may hold must neither starve Stockaj's
deliveries nor cost the receiver more than a bounded amount of time, memory
and file descriptors. Every test starts `serve` (embedded, on SQLite) with short
limits and talks to it over raw sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import resource
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from engine.signing import sign

from .conftest import SECRET, Deployment, Sink, low_stock

pytestmark = pytest.mark.e2e

HEADER_TIMEOUT = 2.0
KEEP_ALIVE = 1.0
MAX_HEADER_BYTES = 65536


@contextlib.asynccontextmanager
async def started(tmp_path: Path, sink: Sink, **settings: str) -> AsyncIterator[Deployment]:
    """`serve` alone on SQLite with these settings; its log printed when the test fails."""
    deployment = Deployment(tmp_path, sink, f"sqlite+aiosqlite:///{tmp_path / 'stockaj-rules.db'}", None)
    deployment.env.update(settings)
    ok = False
    try:
        await deployment.start_serve()
        yield deployment
        ok = True
    finally:
        await deployment.close()
        if not ok:
            deployment.dump_logs()
    assert deployment.serve is not None
    assert "Traceback" not in deployment.serve.log()


@pytest.fixture
async def hardened(tmp_path: Path, sink: Sink) -> AsyncIterator[Deployment]:
    async with started(
        tmp_path,
        sink,
        HEADER_TIMEOUT_SECONDS=str(HEADER_TIMEOUT),
        KEEP_ALIVE_TIMEOUT_SECONDS=str(KEEP_ALIVE),
        MAX_HEADER_BYTES=str(MAX_HEADER_BYTES),
    ) as deployment:
        yield deployment


def signed_request(delivery_id: str, keep_alive: bool = False) -> bytes:
    body = json.dumps(low_stock(delivery_id)).encode()
    head = [
        "POST /webhooks/stockaj HTTP/1.1",
        "Host: 127.0.0.1",
        "Content-Type: application/json",
        "X-Stockaj-Event: item.low_stock",
        f"X-Stockaj-Delivery: {delivery_id}",
        f"X-Stockaj-Signature: {sign(body, SECRET)}",
        f"Content-Length: {len(body)}",
        *([] if keep_alive else ["Connection: close"]),
    ]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


_HEAD_TOO_LARGE = json.dumps({"error": f"request head larger than {MAX_HEADER_BYTES} bytes"}).encode()


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes, bytes]:
    """(status, head, body) of one response with a Content-Length."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return int(head.split(b" ", 2)[1]), head, await reader.readexactly(length)


async def post_once(port: int, delivery_id: str) -> tuple[int, float]:
    """A signed delivery on a new connection, as Stockaj sends it: (status, seconds to the answer)."""
    started_at = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(signed_request(delivery_id))
        status, _, _ = await asyncio.wait_for(read_response(reader), 10)
        return status, time.monotonic() - started_at
    finally:
        writer.close()


async def closed_by_server(reader: asyncio.StreamReader, within: float) -> bool:
    """Whether the server hangs up within `within` seconds (whatever it says first)."""
    try:
        await asyncio.wait_for(reader.read(), within)
    except ConnectionError:
        return True
    except TimeoutError:
        return False
    return True


class Attacker:
    """Keeps `idle` connections that send nothing and `slow` ones whose request head trickles in
    a byte every 0.2 s open against the receiver, opening a new one whenever one is closed.
    Records how long each connection lived before the server closed it (inf: never)."""

    HEAD = b"POST /webhooks/stockaj HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: " + b"a" * 4000

    def __init__(self, port: int, idle: int, slow: int, patience: float) -> None:
        self.port = port
        self.kinds = [False] * idle + [True] * slow
        self.patience = patience
        self.lifetimes: list[float] = []
        self.open_now = 0
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._slot(slow)) for slow in self.kinds]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _slot(self, slow: bool) -> None:
        while True:
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:
                await asyncio.sleep(0.05)
                continue
            opened = time.monotonic()
            self.open_now += 1
            trickle = asyncio.create_task(self._trickle(writer)) if slow else None
            try:
                closed = await closed_by_server(reader, self.patience)
                self.lifetimes.append(time.monotonic() - opened if closed else math.inf)
            finally:
                self.open_now -= 1
                if trickle is not None:
                    trickle.cancel()
                writer.close()

    async def _trickle(self, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            for byte in self.HEAD:
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.sleep(0.2)


async def test_deliveries_get_their_200_within_a_second_while_hundreds_of_connections_idle_or_trickle(
    hardened: Deployment,
) -> None:
    attacker = Attacker(hardened.port, idle=300, slow=300, patience=3 * HEADER_TIMEOUT + 5)
    attacker.start()
    try:
        deadline = time.monotonic() + 10
        while attacker.open_now < 600:
            assert time.monotonic() < deadline, f"only {attacker.open_now} connections opened"
            await asyncio.sleep(0.05)
        answers = []
        # Through two generations of hostile connections: before and after the deadline hit them.
        for n in range(50):
            answers.append(await post_once(hardened.port, f"under-attack-{n}"))
            await asyncio.sleep(0.1)
        await asyncio.sleep(HEADER_TIMEOUT + 1)
    finally:
        await attacker.stop()

    slowest = max(seconds for _, seconds in answers)
    print(
        f"\n50 deliveries under attack: slowest answer {slowest * 1000:.0f} ms; "
        f"{len(attacker.lifetimes)} hostile connections closed, the longest after {max(attacker.lifetimes):.2f}s"
    )
    assert [status for status, _ in answers] == [200] * 50
    assert slowest < 1.0, f"a delivery waited {slowest:.2f}s for its answer"
    for n in range(50):
        assert await hardened.store.get(f"under-attack-{n}") is not None
    # Every hostile connection was closed once the header deadline passed: none lives on.
    assert len(attacker.lifetimes) >= 600
    longest = max(attacker.lifetimes)
    assert longest < HEADER_TIMEOUT + 1.5, f"a connection without a request head lived {longest:.1f}s"


def _huge_head(kind: str) -> Iterator[bytes]:
    """A request head of about 100 MB, in 1 MB pieces, that never ends."""
    if kind == "one-huge-value":
        yield b"POST /webhooks/stockaj HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: "
        piece = b"a" * 1024 * 1024
    elif kind == "many-headers":
        yield b"POST /webhooks/stockaj HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        piece = b"X-Pad: " + b"a" * 1015 + b"\r\n"
        piece *= 1024
    elif kind == "huge-name":
        yield b"POST /webhooks/stockaj HTTP/1.1\r\nHost: 127.0.0.1\r\nX-"
        piece = b"a" * 1024 * 1024
    else:  # a request line of 100 MB: the URL
        yield b"POST /webhooks/stockaj?pad="
        piece = b"a" * 1024 * 1024
    for _ in range(100):
        yield piece


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.mark.parametrize("kind", ["one-huge-value", "many-headers", "huge-name", "huge-url"])
async def test_a_huge_request_head_is_answered_431_quickly_without_being_read(
    hardened: Deployment, kind: str
) -> None:
    assert hardened.serve is not None
    cpu_before = _cpu_seconds(hardened.serve.pid)
    reader, writer = await asyncio.open_connection("127.0.0.1", hardened.port)
    sent = 0

    async def send() -> None:
        nonlocal sent
        with contextlib.suppress(ConnectionError):
            for piece in _huge_head(kind):
                writer.write(piece)
                await writer.drain()
                sent += len(piece)

    started_at = time.monotonic()
    sender = asyncio.create_task(send())
    try:
        try:
            status, head, body = await asyncio.wait_for(read_response(reader), 20)
            hung_up = await closed_by_server(reader, 5)
        except ConnectionError:
            # The server answered and closed while this client was still writing: the kernel may
            # then reset the connection and drop the answer before it is read (TCP, not the
            # engine; Stockaj never sends such a head). What is asserted then: it was cut fast.
            status, head, body, hung_up = 431, b"connection: close", _HEAD_TOO_LARGE, True
        elapsed = time.monotonic() - started_at
    finally:
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sender
        writer.close()

    cpu = _cpu_seconds(hardened.serve.pid) - cpu_before
    print(
        f"\n{kind}: {status} after {elapsed * 1000:.0f} ms, {sent >> 20} MiB sent, {cpu:.2f} s of serve's CPU"
    )
    assert status == 431, head
    assert json.loads(body) == json.loads(_HEAD_TOO_LARGE)
    assert b"connection: close" in head.lower()
    assert hung_up
    assert elapsed < 2.0, f"431 took {elapsed:.2f}s"
    assert sent < 32 * 1024 * 1024, f"the receiver read {sent >> 20} MiB of the head"
    assert cpu < 1.0
    # And it answers deliveries as before.
    assert (await post_once(hardened.port, f"after-{kind}"))[0] == 200


async def test_a_head_just_under_the_cap_is_served_and_one_just_over_is_431(hardened: Deployment) -> None:
    def padded(total: int, delivery_id: str) -> bytes:
        request = signed_request(delivery_id)
        head, _, body = request.partition(b"\r\n\r\n")
        pad = b"\r\nX-Pad: "
        filler = total - len(head) - len(pad) - 4
        return head + pad + b"p" * filler + b"\r\n\r\n" + body

    answers = []
    for total, delivery_id in ((MAX_HEADER_BYTES, "at-the-cap"), (MAX_HEADER_BYTES + 1, "over-the-cap")):
        reader, writer = await asyncio.open_connection("127.0.0.1", hardened.port)
        try:
            writer.write(padded(total, delivery_id))
            answers.append((await asyncio.wait_for(read_response(reader), 5))[0])
        finally:
            writer.close()

    assert answers == [200, 431]
    assert await hardened.store.get("at-the-cap") is not None
    assert await hardened.store.get("over-the-cap") is None


async def test_a_silent_connection_and_a_trickling_head_are_closed_at_the_header_deadline(
    hardened: Deployment,
) -> None:
    silent_reader, silent_writer = await asyncio.open_connection("127.0.0.1", hardened.port)
    slow_reader, slow_writer = await asyncio.open_connection("127.0.0.1", hardened.port)
    started_at = time.monotonic()
    slow_writer.write(b"POST /webhooks/stockaj HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    try:
        silent_closed = await closed_by_server(silent_reader, HEADER_TIMEOUT + 1.5)
        silent_after = time.monotonic() - started_at
        answer = await asyncio.wait_for(slow_reader.read(), 2)
    finally:
        silent_writer.close()
        slow_writer.close()

    assert silent_closed
    assert HEADER_TIMEOUT - 0.3 < silent_after < HEADER_TIMEOUT + 1.0
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1]) == {
        "error": f"the request head did not arrive within {HEADER_TIMEOUT:g} seconds"
    }


async def test_an_idle_keep_alive_connection_is_closed_after_the_keep_alive_timeout(
    hardened: Deployment,
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", hardened.port)
    try:
        writer.write(signed_request("keep-alive-1", keep_alive=True))
        first = (await asyncio.wait_for(read_response(reader), 5))[0]
        await asyncio.sleep(KEEP_ALIVE / 2)  # still open: the connection is reused
        writer.write(signed_request("keep-alive-2", keep_alive=True))
        second = (await asyncio.wait_for(read_response(reader), 5))[0]
        idle_from = time.monotonic()
        closed = await closed_by_server(reader, KEEP_ALIVE + 3)
        idle = time.monotonic() - idle_from
    finally:
        writer.close()

    assert (first, second) == (200, 200)
    assert closed
    assert KEEP_ALIVE - 0.2 < idle < KEEP_ALIVE + 1.0, f"closed after {idle:.2f}s idle"


async def test_connections_beyond_max_connections_are_refused_at_once_and_established_ones_go_on(
    tmp_path: Path, sink: Sink
) -> None:
    limit = 40
    async with started(
        tmp_path,
        sink,
        MAX_CONNECTIONS=str(limit),
        HEADER_TIMEOUT_SECONDS="30",
        KEEP_ALIVE_TIMEOUT_SECONDS="30",
    ) as deployment:
        await deployment.http.aclose()  # its pooled connection would count against the limit
        deployment.http = httpx.AsyncClient(timeout=30)
        await asyncio.sleep(0.3)
        stockaj_reader, stockaj_writer = await asyncio.open_connection("127.0.0.1", deployment.port)
        stockaj_writer.write(signed_request("established-1", keep_alive=True))
        assert (await asyncio.wait_for(read_response(stockaj_reader), 5))[0] == 200
        idle = [await asyncio.open_connection("127.0.0.1", deployment.port) for _ in range(limit - 1)]
        try:
            held = await asyncio.gather(*(closed_by_server(reader, 0.5) for reader, _ in idle))
            assert not any(held), "a connection within the limit was closed"

            started_at = time.monotonic()
            over_reader, over_writer = await asyncio.open_connection("127.0.0.1", deployment.port)
            refused = await closed_by_server(over_reader, 2)
            refused_after = time.monotonic() - started_at
            over_writer.close()
            assert refused, f"connection {limit + 1} was kept open"
            assert refused_after < 1.0

            # The established connection goes on as before.
            started_at = time.monotonic()
            stockaj_writer.write(signed_request("established-2", keep_alive=True))
            assert (await asyncio.wait_for(read_response(stockaj_reader), 5))[0] == 200
            assert time.monotonic() - started_at < 1.0

            # Room again once connections close.
            for _, writer in idle[:10]:
                writer.close()
            await asyncio.sleep(0.3)
            assert (await post_once(deployment.port, "after-room"))[0] == 200
        finally:
            stockaj_writer.close()
            for _, writer in idle:
                writer.close()
        assert deployment.serve is not None
        log = deployment.serve.log()
        assert f"MAX_CONNECTIONS ({limit})" in log
        assert log.count("refused") < 5, "one refusal is one line at most, not a line per connection"


def _open_files_limit(pid: int) -> tuple[int, int]:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return int(soft), int(hard)
    raise AssertionError("no Max open files line")


async def test_serve_raises_its_open_files_limit_to_the_hard_limit(tmp_path: Path, sink: Sink) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard <= 512:
        pytest.skip(f"the hard limit of open files here is {hard}")

    def low_soft_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (512, hard))

    deployment = Deployment(tmp_path, sink, f"sqlite+aiosqlite:///{tmp_path / 'stockaj-rules.db'}", None)
    try:
        serve = await deployment.start_serve(preexec_fn=low_soft_limit)
        soft_now, hard_now = _open_files_limit(serve.pid)
    finally:
        await deployment.close()

    assert hard_now == hard or hard == resource.RLIM_INFINITY
    assert soft_now == hard_now
