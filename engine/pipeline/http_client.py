"""The HTTP client actions send their requests with: httpx, over aiohttp's connections.

Actions speak httpx: its requests, responses and errors (and respx mocks them in unit
tests). Underneath, the connections are aiohttp's, through the httpx-aiohttp transport.
httpx's own transport (httpcore) polls every pooled connection on every request to see
whether its server closed it, and writes headers and body separately; where system calls
are dear, as on the machine the benchmarks ran on, an action request cost 1.2-1.5 ms of
CPU at 8 at a time that way, and 0.4-0.7 ms over aiohttp. A worker's whole delivery went
from 3.5 to 2.1 ms (bench/README.md, "Receiver and pipeline").

As with httpx, HTTP_PROXY, HTTPS_PROXY, ALL_PROXY and NO_PROXY from the environment apply.
When none is set (the usual case), the session does not look for them at all: aiohttp
would otherwise look them up, and read ~/.netrc, in a thread for every request, which
cost a sixth of a serve process's CPU at 200 deliveries/s. When one is set, aiohttp
also takes credentials for a host from ~/.netrc, as curl does.

Answers are never decompressed here (aiohttp's auto-decompression is off, and httpx's
decoders are not used): `send_request` reads a bounded prefix of the raw body and
undoes its encoding within bounds (actions/answers.py). So requests ask only for the
encodings that code can undo, whatever compression libraries are installed.
"""

from __future__ import annotations

import importlib.metadata
import urllib.request

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport

from actions.answers import ACCEPT_ENCODING

MAX_CONNECTIONS = 100
KEEPALIVE_SECONDS = 5.0
# Who is calling, for the receiving side's logs; a rule's own User-Agent header replaces it.
USER_AGENT = f"stockaj-rules/{importlib.metadata.version('stockaj-rules')}"


def create_http_client() -> httpx.AsyncClient:
    """The client of one process; close it with `aclose()`."""
    ssl_context = httpx.create_ssl_context()
    proxied = bool(urllib.request.getproxies())

    def session() -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(
            ssl=ssl_context, limit=MAX_CONNECTIONS, keepalive_timeout=KEEPALIVE_SECONDS
        )
        return aiohttp.ClientSession(connector=connector, trust_env=proxied, auto_decompress=False)

    return httpx.AsyncClient(
        transport=_Transport(client=session),
        follow_redirects=False,
        headers={"Accept-Encoding": ACCEPT_ENCODING, "User-Agent": USER_AGENT},
    )


class _Transport(AiohttpTransport):
    """httpx-aiohttp's transport, naming connection failures as httpx's own transport does.

    It reports every aiohttp connection error as `httpx.ConnectTimeout`: a refused
    connection, an unknown host and a server that hung up would all read "timed out";
    and it lets other aiohttp errors through as they are: an answer aiohttp refuses to
    parse (too many or too long headers) would escape httpx's error classes.
    """

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        try:
            return await super().handle_async_request(request)
        except aiohttp.ClientError as exc:  # not mapped by httpx-aiohttp: a malformed answer
            raise httpx.RemoteProtocolError(type(exc).__name__, request=request) from exc
        except httpx.ConnectTimeout as exc:
            cause = exc.__cause__
            if cause is None or isinstance(cause, TimeoutError):  # aiohttp's timeouts are TimeoutErrors
                raise
            message = str(cause) or type(cause).__name__
            if isinstance(cause, aiohttp.ClientConnectorError):
                raise httpx.ConnectError(message, request=request) from cause
            raise httpx.RemoteProtocolError(message, request=request) from cause
