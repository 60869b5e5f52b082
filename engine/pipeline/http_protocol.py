"""The receiver's connections: uvicorn's httptools protocol with the limits a server needs that
faces the internet on its own, without a proxy in front.

uvicorn (0.54) bounds none of what a hostile client can hold: a connection that sends nothing
stays open for ever, a request head may be of any size (httptools buffers it whole), and its
`limit_concurrency` answers 503 to requests on connections already established too. Here:

- **header deadline**: a request head must be complete within `header_timeout` seconds of
  the connection opening (or of the first byte of a later request on it). A connection
  that sent nothing is closed; one that had begun a request is answered 408.
- **head size**: the request line and headers together may be `max_header_bytes` long,
  counted as bytes arrive; the parser is never fed past that (a head pipelined behind
  another request in the same read: past that read at most). Answered 431.
- **idle keep-alive**: uvicorn's keep-alive timer, set to `keep_alive_timeout`.
- **connection limit**: a connection opened while `max_connections` are open is answered
  503 and closed at once; those already open are untouched. `serve` raises the soft limit
  of open files to the hard limit and keeps `max_connections` well below it.

An early answer (400 from the parser, 408, 431) is written, the sending side shut, and what the client still
sends is read and dropped for a moment before the close: closed at once, the unread bytes
would make the kernel reset the connection and could destroy the answer.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import time
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, ClassVar

import orjson
import uvicorn
from uvicorn.config import LifespanType
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger(__name__)

# After an early answer, how long and how much of what the client still sends is read and dropped.
LINGER_SECONDS = 2.0
LINGER_BYTES = 8 * 1024 * 1024
# File descriptors kept for everything but connections: the store and queue pools, rule files,
# the file watcher, logs. The connection limit stays this far below the open-files limit.
MIN_SPARE_FILES = 256
REFUSAL_LOG_SECONDS = 10.0


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """What one connection, and all of them together, may hold of the receiver."""

    header_timeout: float = 5.0
    max_header_bytes: int = 65_536
    keep_alive_timeout: float = 5.0
    max_connections: int = 1000


def raise_open_files_limit() -> int:
    """Raise this process's soft limit of open files to its hard limit; the soft limit after."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):  # an unlimited hard limit above the kernel's nr_open
            log.debug("open files limit stays at %d (hard limit %d)", soft, hard)
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return 1 << 30 if soft == resource.RLIM_INFINITY else soft


def connection_limit(wanted: int, open_files: int) -> int:
    """`wanted` connections, or fewer so that a quarter of `open_files` (at least
    MIN_SPARE_FILES) stays for everything else."""
    spare = max(MIN_SPARE_FILES, open_files // 4)
    return max(1, min(wanted, open_files - spare))


def _early_answer(status: int, message: str) -> bytes:
    body = orjson.dumps({"error": message})
    head = (
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n"
        "content-type: application/json\r\n"
        f"content-length: {len(body)}\r\n"
        "connection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


class _RefusalLog:
    """One warning line per REFUSAL_LOG_SECONDS for connections refused, however many."""

    def __init__(self) -> None:
        self.count = 0
        self.next_at = 0.0

    def note(self, limit: int) -> None:
        self.count += 1
        now = time.monotonic()
        if now >= self.next_at:
            log.warning(
                "refused %d connection(s): MAX_CONNECTIONS (%d) connections are open; "
                "raise MAX_CONNECTIONS if they are legitimate",
                self.count,
                limit,
            )
            self.count, self.next_at = 0, now + REFUSAL_LOG_SECONDS


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """One HTTP/1.1 connection, within `limits` (see the module docstring)."""

    limits: ClassVar[ConnectionLimits] = ConnectionLimits()
    refusals: ClassVar[_RefusalLog] = _RefusalLog()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # uvicorn arms its keep-alive timer with this after each response; it is typed int there.
        self.timeout_keep_alive = self.limits.keep_alive_timeout  # type: ignore[assignment]
        self._awaiting_head = True  # no request head is complete and unanswered by the parser
        self._head_begun = False  # a byte of the awaited head has arrived
        self._head_bytes = 0  # bytes of the awaited head seen so far (whole reads)
        self._head_uncounted = False  # part of the awaited head came in a read not counted
        self._heads = 0  # request heads completed on this connection
        self._read_began_awaiting, self._heads_before_read = True, 0  # of the read being fed
        self._head_timer: asyncio.TimerHandle | None = None
        self._over_cap = False
        self._lingering = 0  # > 0: after an early answer, bytes read and dropped + 1
        self._early = b""  # the early answer, once decided

    # --- the connection --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if len(self.connections) >= self.limits.max_connections:
            self.transport = transport
            self._lingering = 1  # anything that still arrives is dropped
            transport.write(_REFUSED)
            transport.close()
            self.refusals.note(self.limits.max_connections)
            return
        super().connection_made(transport)
        self._head_timer = self.loop.call_later(self.limits.header_timeout, self._head_deadline)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._lingering:
            self._lingering += len(data)
            if self._lingering > LINGER_BYTES:
                self.transport.close()
            return
        self._read_began_awaiting, self._heads_before_read = self._awaiting_head, self._heads
        if self._awaiting_head:
            self._feed_head(data)
        else:
            super().data_received(data)
        if self._awaiting_head and self._head_begun:
            if not self._read_began_awaiting or self._heads != self._heads_before_read:
                self._head_uncounted = True  # it began within this read, after another request
            if self._head_timer is None and not self._lingering and not self.transport.is_closing():
                self._head_timer = self.loop.call_later(self.limits.header_timeout, self._head_deadline)

    def _feed_head(self, data: bytes) -> None:
        """Feed bytes while a head is awaited: never more than the cap allows."""
        room = self.limits.max_header_bytes - self._head_bytes
        heads = self._heads
        if len(data) <= room:
            super().data_received(data)
            if self._awaiting_head and heads == self._heads:  # the whole read was head
                self._head_bytes += len(data)
            return
        view = memoryview(data)  # no copy: httptools reads any buffer
        super().data_received(view[:room])  # type: ignore[arg-type]
        if self.transport.is_closing() or self._lingering:
            return
        if self._awaiting_head and heads == self._heads:
            self._too_large()
        else:  # the head ended within the cap: the rest is its body (and maybe more requests)
            if self._awaiting_head and self._head_begun:
                self._head_uncounted = True  # the next head began within the part just fed
            self.data_received(view[room:])  # type: ignore[arg-type]

    # --- the parser's callbacks ------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_begun = True

    def on_headers_complete(self) -> None:
        counted = self._read_began_awaiting and self._heads == self._heads_before_read
        if not counted or self._head_uncounted:
            # It began within a read, after another request (pipelining): `_feed_head` did not
            # count it from its first byte, and at most that one read went uncounted. Its size
            # as parsed decides.
            size = len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)
            if size > self.limits.max_header_bytes:
                self._over_cap = True
                raise OverflowError("request head too large")  # the parser stops: send_400_response
        self._awaiting_head = self._head_begun = self._head_uncounted = False
        self._head_bytes = 0
        self._heads += 1
        if self._head_timer is not None:
            self._cancel_head_timer()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._awaiting_head = True

    def send_400_response(self, msg: str) -> None:
        """The parser refused the request: uvicorn would write 400 and close at once, and a
        client still sending would see a reset instead of the answer."""
        if self._over_cap:  # the parser stopped because on_headers_complete refused the head
            self._too_large()
        else:
            self._answer_early(400, "invalid HTTP request")

    # --- refusals --------------------------------------------------------------------------

    def _too_large(self) -> None:
        limit = self.limits.max_header_bytes
        log.warning("request refused: head larger than %d bytes (MAX_HEADER_BYTES)", limit)
        self._answer_early(431, f"request head larger than {limit} bytes")

    def _head_deadline(self) -> None:
        self._head_timer = None
        if not self._awaiting_head or self.transport.is_closing() or self._lingering:
            return
        if self._head_begun:
            timeout = self.limits.header_timeout
            log.warning("request refused: head not received within %g s (HEADER_TIMEOUT_SECONDS)", timeout)
            self._answer_early(408, f"the request head did not arrive within {timeout:g} seconds")
        else:
            self.transport.close()  # it never sent a byte: nobody to answer

    def _answer_early(self, status: int, message: str) -> None:
        """Answer (after the answers to the requests read before), shut our side, read and drop
        what still comes for a moment, then close."""
        self._cancel_head_timer()
        self._lingering = 1  # the parser is fed no more: nothing after this request is read
        self._early = _early_answer(status, message)
        last = self.pipeline[0][0] if self.pipeline else self.cycle  # answered last (appendleft)
        if last is None or last.response_complete:
            self._send_early()
            return
        answered = last.on_response  # the protocol's on_response_complete

        def then_early() -> None:  # not an override of on_response_complete: no cost per request
            answered()
            if not self.transport.is_closing():
                self._send_early()

        last.on_response = then_early

    def _send_early(self) -> None:
        self._unset_keepalive_if_required()
        self.transport.write(self._early)
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.flow.resume_reading()
        self.loop.call_later(LINGER_SECONDS, self.transport.close)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None


_REFUSED = _early_answer(503, "too many connections; retry later")


def bounded_protocol(limits: ConnectionLimits) -> type[BoundedHttpToolsProtocol]:
    """The protocol class uvicorn instantiates per connection, with these limits."""
    chosen = limits

    class ReceiverHttpProtocol(BoundedHttpToolsProtocol):
        limits: ClassVar[ConnectionLimits] = chosen
        refusals: ClassVar[_RefusalLog] = _RefusalLog()

    return ReceiverHttpProtocol


def server_config(
    app: Any, limits: ConnectionLimits, *, lifespan: LifespanType = "on", **options: Any
) -> uvicorn.Config:
    """uvicorn as the receiver runs it: uvloop and httptools, bounded connections, no access log
    (it costs ~10 %), no websockets, no Server header."""
    return uvicorn.Config(
        app,
        http=bounded_protocol(limits),
        ws="none",
        lifespan=lifespan,
        access_log=False,
        log_config=None,
        server_header=False,
        **options,
    )
