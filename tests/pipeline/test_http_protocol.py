"""The receiver's connection protocol (engine/pipeline/http_protocol.py) on a real uvicorn server.

A small ASGI app that echoes the size of what it read stands behind the engine's protocol
with small limits, on an ephemeral port; every test talks raw HTTP/1.1 over a socket, so
reads split and join as the test chooses. Against a real `serve`, with the receiver's app:
tests/e2e/test_hostile_connections.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
import uvicorn

from engine.pipeline.http_protocol import MIN_SPARE_FILES, ConnectionLimits, connection_limit, server_config

LIMITS = ConnectionLimits(
    header_timeout=1.0, max_header_bytes=4096, keep_alive_timeout=1.0, max_connections=20
)


async def echo(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """200 with the path and the body's length, once the whole body is read."""
    size, more = 0, True
    while more:
        message = await receive()
        size += len(message.get("body", b""))
        more = message.get("more_body", False)
    body = orjson.dumps({"path": scope["path"], "read": size})
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % len(body))]}
    )
    await send({"type": "http.response.body", "body": body})


@contextlib.asynccontextmanager
async def server(limits: ConnectionLimits = LIMITS) -> AsyncIterator[int]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = server_config(echo, limits, lifespan="off", timeout_graceful_shutdown=2)
    running = uvicorn.Server(config)
    task = asyncio.create_task(running.serve(sockets=[sock]))
    try:
        while not running.started:
            assert not task.done(), "uvicorn did not start"
            await asyncio.sleep(0.01)
        yield sock.getsockname()[1]
    finally:
        running.should_exit = True
        await task
        sock.close()


def request(path: str = "/x", body: bytes = b"", pad: int = 0, close: bool = False) -> bytes:
    head = f"POST {path} HTTP/1.1\r\nHost: t\r\nContent-Length: {len(body)}\r\n"
    if pad:
        head += "X-Pad: " + "p" * pad + "\r\n"
    if close:
        head += "Connection: close\r\n"
    return (head + "\r\n").encode() + body


async def responses(reader: asyncio.StreamReader, count: int) -> list[tuple[int, Any]]:
    """`count` responses with a Content-Length: (status, JSON body) each."""
    got = []
    for _ in range(count):
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        length = next(
            int(line.split(b":", 1)[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        got.append((int(head.split(b" ", 2)[1]), orjson.loads(await reader.readexactly(length))))
    return got


@contextlib.asynccontextmanager
async def connection(port: int) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        yield reader, writer
    finally:
        writer.close()


@pytest.mark.parametrize(
    ("wanted", "open_files", "taken"),
    [(1000, 1_048_576, 1000), (1000, 4096, 1000), (1000, 1024, 768), (5000, 4096, 3072), (50, 200, 1)],
)
def test_the_connection_limit_leaves_a_quarter_of_the_open_files_for_the_rest(
    wanted: int, open_files: int, taken: int
) -> None:
    assert connection_limit(wanted, open_files) == taken
    assert open_files - connection_limit(wanted, open_files) >= min(open_files - 1, MIN_SPARE_FILES)


async def test_many_requests_on_one_connection_are_each_counted_alone_against_the_cap() -> None:
    # 200 requests of ~1 KB head each: 200 KB on one connection, 50 times the cap of one head.
    async with server() as port, connection(port) as (reader, writer):
        for n in range(200):
            writer.write(request(f"/r{n}", b"{}", pad=1000))
            assert await responses(reader, 1) == [(200, {"path": f"/r{n}", "read": 2})]


async def test_pipelined_requests_in_one_read_are_all_answered_in_order() -> None:
    async with server() as port, connection(port) as (reader, writer):
        writer.write(b"".join(request(f"/p{n}", b"x" * n, pad=100) for n in range(30)))
        assert await responses(reader, 30) == [(200, {"path": f"/p{n}", "read": n}) for n in range(30)]


async def test_a_pipelined_head_over_the_cap_is_431_after_the_request_before_it_is_answered() -> None:
    async with server() as port, connection(port) as (reader, writer):
        writer.write(request("/first", b"abc") + request("/second", pad=LIMITS.max_header_bytes))
        first = await responses(reader, 1)
        second = await responses(reader, 1)
        closed = await asyncio.wait_for(reader.read(), 5)

    assert first == [(200, {"path": "/first", "read": 3})]
    assert second == [(431, {"error": f"request head larger than {LIMITS.max_header_bytes} bytes"})]
    assert closed == b""


@pytest.mark.parametrize("first_body", [0, 3000, 100_000])
@pytest.mark.parametrize("over", [False, True], ids=["under-the-cap", "over-the-cap"])
async def test_a_head_pipelined_behind_a_request_with_a_body_is_held_to_the_cap_exactly(
    first_body: int, over: bool
) -> None:
    cap = LIMITS.max_header_bytes
    second = request("/second", pad=cap - 100 + (200 if over else 0))
    async with server() as port, connection(port) as (reader, writer):
        writer.write(request("/first", b"b" * first_body) + second)
        answers = await responses(reader, 2)

    assert answers[0] == (200, {"path": "/first", "read": first_body})
    assert answers[1][0] == (431 if over else 200)


@pytest.mark.parametrize("body_size", [0, 10, 100_000])
async def test_a_head_of_exactly_the_cap_is_served_with_its_body_in_the_same_read(body_size: int) -> None:
    bare = len(request(body=b"x" * body_size, pad=1)) - body_size
    exact = request(body=b"x" * body_size, pad=1 + LIMITS.max_header_bytes - bare)
    assert exact.index(b"\r\n\r\n") + 4 == LIMITS.max_header_bytes
    async with server() as port, connection(port) as (reader, writer):
        writer.write(exact)
        assert await responses(reader, 1) == [(200, {"path": "/x", "read": body_size})]
        writer.write(request(body=b"x" * body_size, pad=2 + LIMITS.max_header_bytes - bare))
        assert (await responses(reader, 1))[0][0] == 431


async def test_a_head_over_the_cap_sent_in_small_pieces_is_431() -> None:
    head = request(pad=2 * LIMITS.max_header_bytes)
    async with server() as port, connection(port) as (reader, writer):
        for start in range(0, len(head), 100):
            writer.write(head[start : start + 100])
            await writer.drain()
            await asyncio.sleep(0)
        status = (await responses(reader, 1))[0][0]
    assert status == 431


async def test_a_connection_beyond_the_limit_is_answered_503_and_a_place_frees_when_one_closes() -> None:
    async with server() as port:
        held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(LIMITS.max_connections)]
        try:
            await asyncio.sleep(0.1)
            async with connection(port) as (reader, _):
                refused = await asyncio.wait_for(reader.read(), 2)
            assert refused.startswith(b"HTTP/1.1 503 ")
            assert orjson.loads(refused.split(b"\r\n\r\n", 1)[1]) == {
                "error": "too many connections; retry later"
            }

            reader, writer = held[0]
            writer.write(request("/held"))  # an open connection is served as ever
            assert await responses(reader, 1) == [(200, {"path": "/held", "read": 0})]
            writer.close()
            await asyncio.sleep(0.1)
            async with connection(port) as (reader, writer):
                writer.write(request("/new"))
                assert await responses(reader, 1) == [(200, {"path": "/new", "read": 0})]
        finally:
            for _, writer in held:
                writer.close()


async def test_a_parser_error_is_answered_400_in_json() -> None:
    async with server() as port, connection(port) as (reader, writer):
        writer.write(b"POST /x HTTP/1.1\r\nHost: t\r\nBad\x01Name: 1\r\n\r\n")
        answer = await asyncio.wait_for(reader.read(), 5)
    assert answer.startswith(b"HTTP/1.1 400 ")
    assert orjson.loads(answer.split(b"\r\n\r\n", 1)[1]) == {"error": "invalid HTTP request"}


async def test_the_header_deadline_counts_from_the_first_byte_of_a_later_request() -> None:
    async with server() as port, connection(port) as (reader, writer):
        writer.write(request("/one"))
        assert (await responses(reader, 1))[0][0] == 200
        await asyncio.sleep(0.6)  # idle, within the keep-alive timeout
        started = time.monotonic()
        writer.write(b"POST /two HTTP/1.1\r\nHost: t\r\n")  # and never the end of the head
        answer = await asyncio.wait_for(reader.read(), 5)
        waited = time.monotonic() - started

    assert answer.startswith(b"HTTP/1.1 408 ")
    assert LIMITS.header_timeout - 0.2 < waited < LIMITS.header_timeout + 0.8
