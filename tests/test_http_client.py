"""The client actions send their requests with (engine/http_client.py), against real local servers.

What matters here is the transport itself, so nothing is mocked: each test starts a
server on 127.0.0.1 that answers, hangs up, stalls or plays a proxy, and the action's
own `send_request` goes through the client to it.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime

import httpx
import pytest
from sqlalchemy.ext.asyncio import create_async_engine

from actions.base import ActionContext, ActionDefaults, ActionFailed, DatabaseEngines, send_request
from engine.http_client import create_http_client

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@asynccontextmanager
async def local_server(handler: Handler) -> AsyncIterator[int]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


async def read_request(reader: asyncio.StreamReader) -> tuple[list[bytes], bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")[:-2]
    length = next(
        (int(line.split(b":")[1]) for line in lines if line.lower().startswith(b"content-length")), 0
    )
    return lines, await reader.readexactly(length)


@asynccontextmanager
async def action_context() -> AsyncIterator[ActionContext]:
    http = create_http_client()
    databases = DatabaseEngines(lambda url: create_async_engine(url))
    try:
        yield ActionContext(
            http=http,
            databases=databases,
            defaults=ActionDefaults(),
            delivery_id="dlv-http-1",
            rule_id="notify",
            action_index=0,
            clock=lambda: datetime(2026, 1, 1, tzinfo=UTC),
        )
    finally:
        await http.aclose()
        await databases.dispose()


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

    async with local_server(answer) as port, action_context() as ctx:
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
    async with action_context() as ctx:
        with pytest.raises(ActionFailed, match="could not connect: ConnectError") as caught:
            await send_request(ctx, "POST", f"http://127.0.0.1:{free_port()}/hook", json={})
    assert caught.value.transient
    assert isinstance(caught.value.__cause__, httpx.ConnectError)


async def test_a_server_that_hangs_up_is_a_transient_protocol_error() -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.close()

    async with local_server(hang_up) as port, action_context() as ctx:
        with pytest.raises(ActionFailed, match="could not connect: RemoteProtocolError") as caught:
            await send_request(ctx, "POST", f"http://127.0.0.1:{port}/hook", json={})
    assert caught.value.transient


async def test_a_server_that_does_not_answer_in_time_is_a_timeout() -> None:
    release = asyncio.Event()

    async def stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await release.wait()
        writer.close()

    async with local_server(stall) as port, action_context() as ctx:
        try:
            with pytest.raises(ActionFailed, match=r"timed out after 0\.3s \(ReadTimeout\)") as caught:
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
        async with action_context() as ctx:
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
        async with action_context() as ctx:
            result = await send_request(ctx, "POST", f"http://127.0.0.1:{port}/hook", json={})

    assert (result.status, result.detail) == (200, "direct")
    assert proxied == []
