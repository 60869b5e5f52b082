"""The client actions send their requests with (engine/pipeline/http_client.py), against real local servers.

What matters here is the transport itself, so nothing is mocked: each test starts a
server on 127.0.0.1 that answers, hangs up, stalls or plays a proxy, and the action's
own `send_request` goes through the client to it.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import json
import socket
import time
import tracemalloc
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from datetime import UTC, datetime

import httpx
import pytest

from actions.base import (
    ActionContext,
    ActionFailed,
    ActionResult,
    send_request,
)
from engine import testing
from engine.pipeline.http_client import create_http_client

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@asynccontextmanager
async def local_server(handler: Handler) -> AsyncIterator[int]:
    """A server on 127.0.0.1 answering with `handler`; leaving waits until its handlers end."""
    running: set[asyncio.Task[None]] = set()

    async def tracked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        running.add(task)  # type: ignore[arg-type]
        try:
            await handler(reader, writer)
        finally:
            writer.close()

    server = await asyncio.start_server(tracked, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await asyncio.wait_for(asyncio.gather(*running, return_exceptions=True), 10)


async def dribble(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, data: bytes) -> None:
    """Write `data` a byte every 50 ms (each read is quick, the whole is not), until the client leaves."""
    for byte in data:
        if writer.is_closing() or reader.at_eof():
            return
        writer.write(bytes([byte]))
        with suppress(ConnectionError):
            await writer.drain()
        await asyncio.sleep(0.05)


async def read_request(reader: asyncio.StreamReader) -> tuple[list[bytes], bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")[:-2]
    length = next(
        (int(line.split(b":")[1]) for line in lines if line.lower().startswith(b"content-length")), 0
    )
    return lines, await reader.readexactly(length)


@asynccontextmanager
async def action_context(*allowed: str) -> AsyncIterator[ActionContext]:
    """A context sending through the engine's client, to the origins of the `allowed` URLs only."""
    async with (
        create_http_client() as http,
        testing.action_context(
            allow=allowed,
            http=http,
            clock=lambda: datetime(2026, 1, 1, tzinfo=UTC),
            delivery_id="dlv-http-1",
            rule_id="notify",
        ) as ctx,
    ):
        yield ctx


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_a_request_goes_out_whole_and_its_answer_comes_back() -> None:
    seen: list[tuple[list[bytes], bytes]] = []

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for _ in range(2):  # two requests on one kept-alive connection
            seen.append(await read_request(reader))
            writer.write(
                b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n"
            )
            writer.write(b'{"id": 42}\n')
        writer.close()

    async with local_server(answer) as port, action_context(f"http://127.0.0.1:{port}") as ctx:
        url = f"http://127.0.0.1:{port}/orders"
        for n in range(2):
            result = await send_request(ctx, "POST", url, headers={"X-Team": "ops"}, json={"n": n})
            assert result.status == 201
            assert result.detail == '{"id": 42}'

    assert len(seen) == 2
    for n, (lines, body) in enumerate(seen):
        assert lines[0] == b"POST /orders HTTP/1.1"
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(b":") for line in lines[1:])}
        assert headers[b"x-team"] == b"ops"
        assert headers[b"idempotency-key"] == ctx.idempotency_key.encode()
        assert headers[b"content-type"] == b"application/json"
        assert json.loads(body) == {"n": n}


async def test_a_refused_connection_is_a_transient_connect_error_not_a_timeout() -> None:
    url = f"http://127.0.0.1:{free_port()}/hook"
    async with action_context(url) as ctx:
        with pytest.raises(ActionFailed, match="could not connect: ConnectError") as caught:
            await send_request(ctx, "POST", url, json={})
    assert caught.value.transient
    assert isinstance(caught.value.__cause__, httpx.ConnectError)


async def test_a_server_that_hangs_up_is_a_transient_protocol_error() -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.close()

    async with local_server(hang_up) as port, action_context(f"http://127.0.0.1:{port}") as ctx:
        with pytest.raises(ActionFailed, match="could not connect: RemoteProtocolError") as caught:
            await send_request(ctx, "POST", f"http://127.0.0.1:{port}/hook", json={})
    assert caught.value.transient


async def test_a_server_that_does_not_answer_in_time_is_a_timeout() -> None:
    release = asyncio.Event()

    async def stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await release.wait()
        writer.close()

    async with local_server(stall) as port, action_context(f"http://127.0.0.1:{port}") as ctx:
        try:
            with pytest.raises(ActionFailed, match=r"timed out after 0\.3s") as caught:
                await send_request(ctx, "POST", f"http://127.0.0.1:{port}/hook", json={}, timeout=0.3)
        finally:
            release.set()
    assert caught.value.transient


async def test_the_proxy_from_the_environment_carries_the_request(monkeypatch: pytest.MonkeyPatch) -> None:
    request_lines: list[bytes] = []

    async def proxy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        lines, _ = await read_request(reader)
        request_lines.append(lines[0])
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        writer.close()

    async with local_server(proxy) as port:
        monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{port}")
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        async with action_context("http://po.example.invalid") as ctx:
            result = await send_request(ctx, "POST", "http://po.example.invalid/orders", json={})

    assert result.status == 200
    assert request_lines == [b"POST http://po.example.invalid/orders HTTP/1.1"]


async def test_hosts_in_no_proxy_are_reached_directly(monkeypatch: pytest.MonkeyPatch) -> None:
    proxied: list[bytes] = []

    async def proxy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        lines, _ = await read_request(reader)
        proxied.append(lines[0])
        writer.write(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
        writer.close()

    async def direct(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\ndirect")
        writer.close()

    async with local_server(proxy) as proxy_port, local_server(direct) as port:
        monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{proxy_port}")
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        async with action_context(f"http://127.0.0.1:{port}") as ctx:
            result = await send_request(ctx, "POST", f"http://127.0.0.1:{port}/hook", json={})

    assert (result.status, result.detail) == (200, "direct")
    assert proxied == []


# --- answers read within bounds (issue 11, finding 4) ---------------------------------------

MB = 1 << 20


async def peak_memory_of(call: Awaitable[object]) -> tuple[object, int]:
    """What `call` returned (or raised), and the most memory Python held meanwhile, in bytes."""
    tracemalloc.start()
    try:
        try:
            outcome: object = await call
        except ActionFailed as failure:
            outcome = failure
        return outcome, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_a_huge_error_answer_is_cut_short_and_its_connection_closed_not_drained(chunked: bool) -> None:
    total = 64 * MB
    sent = 0
    finished = asyncio.Event()

    async def huge(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal sent
        await read_request(reader)
        writer.write(b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: text/plain\r\n")
        framing = b"Transfer-Encoding: chunked" if chunked else b"Content-Length: %d" % total
        writer.write(framing + b"\r\n\r\n")
        chunk = b"disk full " * 6554
        if chunked:
            chunk = b"%x\r\n%s\r\n" % (len(chunk), chunk)
        try:
            while sent < total:
                writer.write(chunk)
                sent += len(chunk)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            finished.set()
            writer.close()

    async with local_server(huge) as port, action_context(f"http://127.0.0.1:{port}") as ctx:
        started = time.monotonic()
        outcome, peak = await peak_memory_of(
            send_request(ctx, "POST", f"http://127.0.0.1:{port}/hook", json={})
        )
        elapsed = time.monotonic() - started
        await asyncio.wait_for(finished.wait(), 10)

    assert isinstance(outcome, ActionFailed)
    assert outcome.status == 500
    assert outcome.transient
    assert "answered 500: disk full disk full" in str(outcome)
    assert len(str(outcome)) < 400
    assert peak < 2 * MB, f"held {peak / MB:.0f} MB for a {total // MB} MB answer"
    assert sent < 16 * MB, f"the server got to send {sent / MB:.0f} MB of {total // MB} MB"
    assert elapsed < 5


def gzip_bomb(expanded: int, layers: int = 1) -> bytes:
    data = b""
    for layer in range(layers):
        compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
        if layer == 0:
            zeros = bytes(MB)
            data = b"".join(compressor.compress(zeros) for _ in range(expanded // MB))
        else:
            data = compressor.compress(data)
        data += compressor.flush()
    return data


@pytest.mark.parametrize(
    ("encoding", "body"),
    [
        ("gzip", gzip_bomb(32 * MB)),
        ("gzip, gzip", gzip_bomb(32 * MB, layers=2)),
        ("deflate", zlib.compress(bytes(32 * MB), 9)),
    ],
    ids=["gzip", "gzip-twice", "deflate"],
)
async def test_a_compressed_answer_is_never_decompressed_past_a_small_prefix(
    encoding: str, body: bytes
) -> None:
    seen: list[list[bytes]] = []

    async def bomb(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        lines, _ = await read_request(reader)
        seen.append(lines)
        head = f"HTTP/1.1 200 OK\r\nContent-Encoding: {encoding}\r\nContent-Length: {len(body)}\r\n\r\n"
        writer.write(head.encode() + body)
        with suppress(ConnectionError):
            await writer.drain()
        writer.close()

    async with local_server(bomb) as port, action_context(f"http://127.0.0.1:{port}") as ctx:
        result, peak = await peak_memory_of(
            send_request(ctx, "POST", f"http://127.0.0.1:{port}/hook", json={})
        )

    assert isinstance(result, ActionResult)
    assert result.status == 200
    assert result.detail is not None
    assert len(result.detail) <= 201
    assert peak < 2 * MB, f"held {peak / MB:.0f} MB for a {len(body)} byte answer"
    accept = [line for line in seen[0] if line.lower().startswith(b"accept-encoding:")]
    assert accept == [b"accept-encoding: gzip, deflate"]


async def test_the_timeout_bounds_an_answer_whose_headers_trickle_in() -> None:
    answer = b"HTTP/1.1 200 OK\r\nX-Padding: " + b"p" * 40 + b"\r\nContent-Length: 2\r\n\r\nok"

    async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await dribble(reader, writer, answer)

    async with local_server(trickle) as port, action_context(f"http://127.0.0.1:{port}") as ctx:
        started = time.monotonic()
        with pytest.raises(ActionFailed, match=r"timed out after 0\.5s") as caught:
            await send_request(ctx, "POST", f"http://127.0.0.1:{port}/hook", json={}, timeout=0.5)
        elapsed = time.monotonic() - started

    assert caught.value.transient
    assert elapsed < 1.5


async def test_the_timeout_bounds_the_reading_of_a_slow_body_and_keeps_what_came() -> None:
    async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\naccepted")
        await dribble(reader, writer, b"." * 92)

    async with local_server(trickle) as port, action_context(f"http://127.0.0.1:{port}") as ctx:
        started = time.monotonic()
        result = await send_request(ctx, "POST", f"http://127.0.0.1:{port}/hook", json={}, timeout=0.5)
        elapsed = time.monotonic() - started

    assert result.status == 200
    assert result.detail is not None
    assert result.detail.startswith("accepted")
    assert elapsed < 1.5


async def test_an_answer_with_endless_headers_is_a_transient_protocol_error_not_a_crash() -> None:
    async def flood(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\n")
        with suppress(ConnectionError):
            for n in range(200_000):
                writer.write(b"X-Filler-%d: %s\r\n" % (n, b"v" * 100))
                if n % 1000 == 0:
                    await writer.drain()
                    if writer.is_closing():
                        return

    async with local_server(flood) as port, action_context(f"http://127.0.0.1:{port}") as ctx:
        outcome, peak = await peak_memory_of(
            send_request(ctx, "POST", f"http://127.0.0.1:{port}/hook", json={})
        )

    assert isinstance(outcome, ActionFailed)
    assert outcome.transient
    assert "could not connect: RemoteProtocolError" in str(outcome)
    assert peak < 2 * MB


async def test_requests_name_the_engine_and_its_version_as_user_agent_unless_the_rule_sets_one() -> None:
    seen: list[list[bytes]] = []

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for _ in range(2):
            seen.append((await read_request(reader))[0])
            writer.write(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n")
        writer.close()

    async with local_server(answer) as port, action_context(f"http://127.0.0.1:{port}") as ctx:
        url = f"http://127.0.0.1:{port}/hook"
        await send_request(ctx, "POST", url, json={})
        await send_request(ctx, "POST", url, headers={"User-Agent": "crm-sync/2"}, json={})

    agents = [
        [line.partition(b":")[2].strip() for line in lines if line.lower().startswith(b"user-agent:")]
        for lines in seen
    ]
    version = importlib.metadata.version("stockaj-rules")
    assert agents == [[f"stockaj-rules/{version}".encode()], [b"crm-sync/2"]]
