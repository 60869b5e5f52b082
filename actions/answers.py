"""Reading what a server answered, within bounds: a prefix of the body, decoded within bounds.

Only an excerpt of an answer is ever kept (the delivery log shows `EXCERPT_CHARS`), so
only `READ_BYTES` of a body are read off the connection, and a compressed body is
decompressed to at most `DECODED_BYTES`, whatever it would expand to: a huge answer
or a compression bomb costs what a small answer does. A body not read to its end is
not drained: closing the response closes its connection (aiohttp does not put a
connection whose body was not read out back in its pool).

Requests ask for `ACCEPT_ENCODING` only, the encodings undone here within bounds; an
answer in any other encoding is not decoded, only its size is shown.
"""

from __future__ import annotations

import codecs
import zlib
from collections.abc import AsyncGenerator
from typing import cast

import httpx

READ_BYTES = 16 * 1024
DECODED_BYTES = 4 * 1024
EXCERPT_CHARS = 200
ACCEPT_ENCODING = "gzip, deflate"
_MAX_CODINGS = 3
# Control characters (C0, DEL, C1) and bidi controls: an excerpt is shown in terminals and logs.
_UNPRINTABLE = dict.fromkeys(
    [*range(0x20), *range(0x7F, 0xA0), 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A)], " "
)


async def read_prefix(response: httpx.Response, chunks: list[bytes]) -> bool:
    """Read the raw body into `chunks` up to `READ_BYTES` (and a chunk); True when that is all of it.

    The caller bounds the time it takes, keeps what `chunks` holds when that runs out or
    the connection fails, and closes `response`.
    """
    size = 0
    # An async generator: closed below, so no half-read stream is left for the loop to finalise.
    raw = cast(AsyncGenerator[bytes, None], response.aiter_raw())
    try:
        async for chunk in raw:
            chunks.append(chunk)
            size += len(chunk)
            if size >= READ_BYTES:
                return False
    finally:
        await raw.aclose()
    return True


def excerpt(response: httpx.Response, raw: bytes, complete: bool) -> str:
    """The start of the answer as one line of printable text, at most `EXCERPT_CHARS` (and `…`)."""
    coding = response.headers.get("Content-Encoding", "")
    data = decoded_prefix(raw, coding)
    if data is None:
        size = f"{len(raw):,}{'' if complete else '+'} bytes"
        return f"({size} encoded as {coding[:40]!r}, not shown)"
    more = not complete or len(data) >= DECODED_BYTES
    charset = _charset(response.headers.get("Content-Type", ""))
    try:
        text = codecs.getincrementaldecoder(charset)(errors="replace").decode(data, final=not more)
    except LookupError:
        text = data.decode("utf-8", errors="replace")
    text = text.strip()
    cut = more or len(text) > EXCERPT_CHARS
    text = " ".join(text[: EXCERPT_CHARS + 1].translate(_UNPRINTABLE).split())[:EXCERPT_CHARS]
    return text + "…" if cut and text else text


def _charset(content_type: str) -> str:
    """The charset parameter of a Content-Type, else UTF-8 (httpx's own parsing costs ~10x more)."""
    at = content_type.lower().find("charset=")
    if at < 0:
        return "utf-8"
    return content_type[at + 8 :].split(";", 1)[0].strip().strip("\"'") or "utf-8"


def decoded_prefix(raw: bytes, content_encoding: str) -> bytes | None:
    """At most `DECODED_BYTES` of the body with its Content-Encoding undone; None: cannot undo it."""
    codings = [c.strip().lower() for c in content_encoding.split(",")]
    codings = [c for c in codings if c and c != "identity"]
    if len(codings) > _MAX_CODINGS:
        return None
    data = raw
    for coding in reversed(codings):  # the last coding listed was applied last
        undone = _undo(coding, data)
        if undone is None:
            return None
        data = undone
    return data[:DECODED_BYTES]


def _undo(coding: str, data: bytes) -> bytes | None:
    # `max_length` bounds the output, so a bomb stops expanding at DECODED_BYTES.
    try:
        if coding in ("gzip", "x-gzip"):
            return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(data, DECODED_BYTES)
        if coding == "deflate":
            try:
                return zlib.decompressobj().decompress(data, DECODED_BYTES)
            except zlib.error:  # servers also send raw deflate, without the zlib wrapper
                return zlib.decompressobj(-zlib.MAX_WBITS).decompress(data, DECODED_BYTES)
    except zlib.error:
        return None
    return None
