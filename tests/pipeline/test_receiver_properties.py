"""Property-based tests of the receiver: whatever arrives, the answer is one of the spec's.

Random requests (bodies of every size and encoding, signatures right and wrong, headers
missing, empty, too long or full of control characters, delivery ids that repeat) go to the
real app over the real intake and store. Two properties hold for every one:

- the status is a row of SPEC section 3 (200, 400, 401, 413, 503) or a 4xx of the HTTP
  layer, never a 500;
- a delivery is stored exactly when it was answered 2xx: a new id then holds the body sent,
  a duplicate leaves the first body, and a refusal stores nothing.

And where the answer is certain it is that one: a signature that does not match is 401,
a clean signed delivery is 200. Most examples go through Quart's test client; a smaller
run sends raw bytes to the real server (httptools, the engine's connection limits).
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import re
import string
from collections import Counter
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.printable import has_unseen_characters
from engine.signing import sign
from engine.store.tables import ID_LENGTH
from tests.examples import examples as example_count
from tests.pipeline.test_receiver import (
    PREVIOUS,
    SECRET,
    WEBHOOK_PATH,
    Receiver,
    exchange,
    receiver,
    serving,
    status_of,
)

T = TypeVar("T")
HTTP_LAYER_REFUSES = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")  # in a header value: httptools' 400

SPEC_STATUSES = {200, 400, 401, 413, 503}
MAX_BODY = 1024 * 1024  # the receiver() of test_receiver

# --- the requests -------------------------------------------------------------------------

# Text that may hold anything a header can carry: ASCII, C0 and C1 controls, bidi controls,
# zero-width and other format characters, separators, letters of other scripts.
TRICKY = "\x00\t\x1b\x7f\x85\x9b\xad\u061c\u200b\u200e\u202e\u2028\u2066\ufeffśł納😀 "
header_text = st.text(alphabet=st.sampled_from(string.ascii_letters + string.digits + ".-_:" + TRICKY))
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


class Request:
    """A drawn request. A plain class: hypothesis would print a dataclass field by field, with
    its 1 MB body whole."""

    def __init__(self, body: bytes, headers: dict[str, str], signed_right: bool) -> None:
        self.body = body
        self.headers = headers
        self.signed_right = signed_right  # signed over these bytes with a configured secret, well formed

    def __repr__(self) -> str:
        body = self.body if len(self.body) <= 200 else self.body[:200] + b"...(%d bytes)" % len(self.body)
        return f"Request(body={body!r}, headers={self.headers!r}, signed_right={self.signed_right})"


def _json_object(payload: dict[str, Any], encoding: str) -> bytes:
    text = orjson.dumps(payload).decode()
    return gzip.compress(text.encode()) if encoding == "gzip" else text.encode(encoding)


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["object"] * 4 + ["json-not-object", "bytes", "nested", "huge", "empty"]))
    if kind == "object":
        payload = {"event": "item.low_stock", "data": draw(st.dictionaries(st.text(max_size=8), json_values))}
        encoding = draw(st.sampled_from(["utf-8"] * 4 + ["utf-8-sig", "utf-16", "latin-1", "gzip"]))
        try:
            return _json_object(payload, encoding)
        except UnicodeEncodeError:
            return _json_object(payload, "utf-8")
    if kind == "json-not-object":
        return orjson.dumps(draw(json_values.filter(lambda v: not isinstance(v, dict))))
    if kind == "bytes":
        return draw(st.binary(max_size=300))
    if kind == "nested":
        depth = draw(st.integers(90, 120))
        return b'{"a": ' * depth + b"1" + b"}" * depth
    if kind == "huge":
        return b'{"pad": "' + b"x" * (MAX_BODY + draw(st.integers(-20, 20))) + b'"}'
    return b""


@st.composite
def signatures(draw: st.DrawFn, body: bytes) -> tuple[str | None, bool]:
    """(the X-Stockaj-Signature value or None, whether it is right)."""
    wrong = ["wrong-key", "other-bytes", "cut", "junk", "none"]
    kind = draw(st.sampled_from(["right"] * 5 + ["previous", "upper", "spaces", *wrong]))
    right = sign(body, SECRET)
    return {
        "right": (right, True),
        "previous": (sign(body, PREVIOUS), True),
        "upper": (right.upper(), True),
        "spaces": (f"  {right} ", True),
        "wrong-key": (sign(body, draw(st.text(min_size=1, max_size=10))), False),
        "other-bytes": (sign(body + b" ", SECRET), False),
        "cut": (right[: draw(st.integers(0, 63))], False),
        "junk": (draw(header_text), False),
        "none": (None, False),
    }[kind]


def ids(pool: list[str]) -> st.SearchStrategy[str | None]:
    """A delivery id: often one of a few (duplicates), sometimes random, long or missing."""
    clean = st.text(alphabet=string.ascii_letters + string.digits + "-", min_size=1, max_size=40)
    return st.one_of(
        st.sampled_from(pool),
        st.sampled_from(pool),
        clean,
        clean,
        header_text,
        st.text(alphabet="abc-", min_size=ID_LENGTH - 2, max_size=ID_LENGTH + 2),
        st.none(),
    )


@st.composite
def requests(draw: st.DrawFn) -> Request:
    body = draw(bodies())
    signature, right = draw(signatures(body))
    events = st.sampled_from(["item.low_stock", "rent.created", "rent.status_changed"])
    event = draw(st.one_of(events, events, events, header_text, st.none()))
    delivery = draw(ids(["dlv-1", "dlv-2", "dlv-3", "dlv-ś"]))
    sent = {"Content-Type": draw(st.sampled_from(["application/json", "text/plain", ""]))}
    for name, value in (
        ("X-Stockaj-Signature", signature),
        ("X-Stockaj-Event", event),
        ("X-Stockaj-Delivery", delivery),
    ):
        if value is not None:
            sent[name] = value
    return Request(body, sent, right)


@st.composite
def deliveries(draw: st.DrawFn) -> Request:
    """A delivery as Stockaj sends it, new or repeated: what must be stored."""
    payload = {"event": "item.low_stock", "data": draw(st.dictionaries(st.text(max_size=8), json_values))}
    body = orjson.dumps(payload)
    delivery = draw(st.one_of(st.sampled_from(["dlv-1", "dlv-ś", "納品-7"]), st.uuids().map(str)))
    sent = {
        "Content-Type": "application/json",
        "X-Stockaj-Signature": sign(body, draw(st.sampled_from([SECRET, PREVIOUS]))),
        "X-Stockaj-Event": draw(st.sampled_from(["item.low_stock", "rent.created"])),
        "X-Stockaj-Delivery": delivery,
    }
    return Request(body, sent, True)


# --- the properties -----------------------------------------------------------------------


def _clean(value: str | None) -> bool:
    """A header value the receiver takes as an id or event name."""
    if value is None:
        return False
    value = value.strip(" \t")
    return bool(value) and len(value) <= ID_LENGTH and not has_unseen_characters(value)


def _is_object(body: bytes) -> bool:
    """A body surely taken: at most MAX_BODY bytes of a JSON object that cannot nest too deep."""
    if len(body) > MAX_BODY or body.count(b"{") + body.count(b"[") > 100:
        return False
    try:
        return isinstance(orjson.loads(body), dict)
    except orjson.JSONDecodeError:
        return False


class Model:
    """What the store must hold (the first body stored under each id) and the statuses seen."""

    def __init__(self) -> None:
        self.stored: dict[str, bytes] = {}
        self.statuses: Counter[int] = Counter()

    async def check(self, r: Receiver, request: Request, status: int, answer: Any, certain: bool) -> None:
        """The properties, for one answered request; `certain`: the headers arrived as drawn."""
        self.statuses[status] += 1
        assert status != 500
        assert status in SPEC_STATUSES or 400 <= status < 500, status
        event, delivery = request.headers.get("X-Stockaj-Event"), request.headers.get("X-Stockaj-Delivery")
        if certain and not request.signed_right and len(request.body) <= MAX_BODY:
            assert status == 401, (status, answer)
        if (
            certain
            and request.signed_right
            and _clean(event)
            and _clean(delivery)
            and _is_object(request.body)
        ):
            assert status == 200, (status, answer)
        looked_up = {delivery.strip(" \t")} if delivery and certain else set()
        if 200 <= status < 300:
            delivery_id = answer["delivery_id"]
            assert answer["duplicate"] == (delivery_id in self.stored)
            self.stored.setdefault(delivery_id, request.body)
            looked_up.add(delivery_id)
        assert await r.rows() == len(self.stored)
        for delivery_id in looked_up:
            stored = await r.store.get(delivery_id)
            assert (stored.body if stored else None) == self.stored.get(delivery_id), delivery_id
            if stored is not None:  # nothing stored can print as something it is not
                assert _clean(stored.delivery_id), stored.delivery_id
                assert _clean(stored.event), stored.event


class Wire(bytes):
    """Request bytes, shown short."""

    def __repr__(self) -> str:
        return f"Wire({bytes(self[:300])!r}{'...' if len(self) > 300 else ''}, {len(self)} bytes)"


class Harness:
    """One receiver on its own event loop, kept across the examples of a test (so ids repeat)."""

    def __init__(self, tmp_path: Path) -> None:
        self.runner = asyncio.Runner()
        self.stack = contextlib.AsyncExitStack()
        self.receiver: Receiver = self.run(self.stack.enter_async_context(receiver(tmp_path)))
        self.model = Model()

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return self.runner.run(coroutine)

    def close(self) -> None:
        self.run(self.stack.aclose())
        self.runner.close()


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    made = Harness(tmp_path)
    yield made
    made.close()


PROPERTY = settings(
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    database=None,
)


def signed_oversize() -> Request:
    """A signed delivery one byte too many: the 413 row, which random draws may miss in a run."""
    body = b'{"pad": "' + b"x" * (MAX_BODY - 10) + b'"}'
    headers = {
        "Content-Type": "application/json",
        "X-Stockaj-Signature": sign(body, SECRET),
        "X-Stockaj-Event": "item.low_stock",
        "X-Stockaj-Delivery": "dlv-oversize",
    }
    assert len(body) == MAX_BODY + 1
    return Request(body, headers, True)


def _report(name: str, model: Model) -> None:
    counts = ", ".join(f"{status}: {count}" for status, count in sorted(model.statuses.items()))
    print(f"\n{name}: {model.statuses.total()} examples ({counts}); {len(model.stored)} deliveries stored")


def test_any_request_through_the_app_gets_a_spec_answer_and_is_stored_exactly_when_2xx(
    harness: Harness,
) -> None:
    r = harness.receiver

    async def one(request: Request) -> None:
        response = await r.app.test_client().post(WEBHOOK_PATH, data=request.body, headers=request.headers)
        raw = await response.get_data()
        assert isinstance(raw, bytes)
        assert response.content_type == "application/json"
        await harness.model.check(r, request, response.status_code, orjson.loads(raw), certain=True)

    @settings(PROPERTY, max_examples=example_count(200, 1000))
    @given(request=st.one_of(requests(), requests(), deliveries()))
    def examples(request: Request) -> None:
        harness.run(one(request))

    examples()
    harness.run(one(signed_oversize()))  # every row of the table is exercised, whatever was drawn
    _report("app", harness.model)
    assert {200, 400, 401, 413} <= set(harness.model.statuses), harness.model.statuses
    assert any(len(body) > 1 for body in harness.model.stored.values())


# --- the same over a real socket, with raw header bytes ---------------------------------------


@st.composite
def raw_requests(draw: st.DrawFn) -> tuple[bytes, Request, bool]:
    """(the request's bytes, the request, whether its headers went out as drawn): header values
    as UTF-8; in one request of four, one header with a byte added that the server may refuse
    or read otherwise."""
    request = draw(st.one_of(requests(), deliveries()))
    lines = [b"POST /webhooks/stockaj HTTP/1.1", b"Host: 127.0.0.1"]
    as_drawn = True
    spoiled = draw(st.one_of(st.none(), st.none(), st.none(), st.sampled_from(list(request.headers))))
    for name, value in request.headers.items():
        raw = value.encode("utf-8")
        as_drawn &= not HTTP_LAYER_REFUSES.search(raw)  # the server's parser answers 400 itself
        if name == spoiled:
            raw += draw(st.sampled_from([b"\r", b"\n", b"\x00", b"\x85", b"\xff", b"\xc3"]))
            as_drawn = False
        lines.append(name.encode() + b": " + raw)
    lines += [b"Content-Length: %d" % len(request.body), b"Connection: close", b"", request.body]
    return Wire(b"\r\n".join(lines)), request, as_drawn


def test_any_request_over_a_real_socket_gets_a_spec_or_http_layer_answer(harness: Harness) -> None:
    r = harness.receiver
    port = harness.run(harness.stack.enter_async_context(serving(r.app)))

    async def one(data: bytes, request: Request, as_drawn: bool) -> None:
        response = await exchange(port, data)
        status = status_of(response)
        head, _, body = response.partition(b"\r\n\r\n")
        json_answer = b"content-type: application/json" in head.lower()
        if status in (200, 401, 413):  # the app's answers (a 400 may be the HTTP layer's, in text)
            assert json_answer, head
        await harness.model.check(r, request, status, orjson.loads(body) if json_answer else None, as_drawn)

    @settings(PROPERTY, max_examples=example_count(150, 600))
    @given(sent=raw_requests())
    def examples(sent: tuple[bytes, Request, bool]) -> None:
        harness.run(one(*sent))

    examples()
    oversize = signed_oversize()
    wire = [b"POST /webhooks/stockaj HTTP/1.1", b"Host: 127.0.0.1"]
    wire += [name.encode() + b": " + value.encode() for name, value in oversize.headers.items()]
    wire += [b"Content-Length: %d" % len(oversize.body), b"Connection: close", b"", oversize.body]
    harness.run(one(Wire(b"\r\n".join(wire)), oversize, True))  # the 413 row, whatever was drawn
    _report("socket", harness.model)
    assert {200, 400, 401, 413} <= set(harness.model.statuses), harness.model.statuses
