"""The HTTP actions (slack, http, purchase_order) and send_request, against respx.

Each test asserts the request that was actually sent: URL, method, headers and body.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
import respx
from pydantic import ValidationError

from actions.base import (
    Action,
    ActionContext,
    ActionFailed,
    idempotency_key,
    parse_retry_after,
    send_request,
)
from actions.http import HttpAction, HttpParams
from actions.log import LogAction, LogParams
from actions.purchase_order import PurchaseOrderAction, PurchaseOrderParams
from actions.slack import SlackAction, SlackParams, slack_escape
from engine.testing import action_context

NOW = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)
SLACK_URL = "https://hooks.slack.com/services/T000/B000/XXXXSECRET"
PO_URL = "https://po.example.com/api/orders"
EXPECTED_KEY = idempotency_key("dlv-42", "reorder-low-stock", 1)

TEST_URLS = (SLACK_URL, PO_URL, "https://po2.example.com", "https://erp.example.com")

MakeContext = Callable[..., Awaitable[ActionContext]]


@pytest.fixture
async def make_ctx() -> AsyncIterator[MakeContext]:
    """`await make_ctx(SlackAction, SLACK_WEBHOOK_URL=...)`: a context with the action's settings."""
    async with httpx.AsyncClient() as client, AsyncExitStack() as stack:

        async def make(action: type[Action[Any]] | None = None, **settings: str) -> ActionContext:
            # What the engine works out from a rule (engine/language/outgoing_urls.py); here, the test's hosts.
            return await stack.enter_async_context(
                action_context(
                    action,
                    settings=settings,
                    allow=TEST_URLS,
                    http=client,
                    clock=lambda: NOW,
                    delivery_id="dlv-42",
                    rule_id="reorder-low-stock",
                    action_index=1,
                )
            )

        yield make


def sent(route: respx.Route) -> httpx.Request:
    assert route.call_count == 1
    return route.calls.last.request


# --- slack -------------------------------------------------------------------------------


async def test_slack_posts_text_to_configured_webhook_with_idempotency_key(
    respx_mock: respx.MockRouter, make_ctx: MakeContext
) -> None:
    route = respx_mock.post(SLACK_URL).respond(200, text="ok")
    ctx = await make_ctx(SlackAction, SLACK_WEBHOOK_URL=SLACK_URL)

    result = await SlackAction().run(SlackParams(text="SKU-1 is low"), ctx)

    request = sent(route)
    assert request.method == "POST"
    assert str(request.url) == SLACK_URL
    assert request.headers["Idempotency-Key"] == EXPECTED_KEY
    assert request.headers["Content-Type"] == "application/json"
    assert json.loads(request.content) == {"text": "SKU-1 is low"}
    assert (result.status, result.detail) == (200, "ok")


async def test_slack_sends_blocks_when_given_to_the_url_of_the_action(
    respx_mock: respx.MockRouter, make_ctx: MakeContext
) -> None:
    own_url = "https://hooks.slack.com/services/T111/B111/OWN"
    route = respx_mock.post(own_url).respond(200, text="ok")
    blocks = [{"type": "section", "text": {"type": "mrkdwn", "text": "*low*"}}]
    params = SlackParams.model_validate({"text": "low", "blocks": blocks, "webhook_url": own_url})

    await SlackAction().run(params, await make_ctx(SlackAction, SLACK_WEBHOOK_URL=SLACK_URL))

    assert json.loads(sent(route).content) == {"text": "low", "blocks": blocks}


async def test_slack_without_any_webhook_url_fails_permanently_saying_what_to_set(
    respx_mock: respx.MockRouter, make_ctx: MakeContext
) -> None:
    with pytest.raises(ActionFailed) as caught:
        await SlackAction().run(SlackParams(text="hi"), await make_ctx(SlackAction))

    assert caught.value.transient is False
    assert "SLACK_WEBHOOK_URL" in str(caught.value)
    assert "webhook_url" in str(caught.value)
    assert not respx_mock.calls


async def test_slack_failure_message_hides_the_webhook_token(
    respx_mock: respx.MockRouter, make_ctx: MakeContext
) -> None:
    respx_mock.post(SLACK_URL).respond(404, text="no_service")

    with pytest.raises(ActionFailed) as caught:
        await SlackAction().run(
            SlackParams(text="hi"), await make_ctx(SlackAction, SLACK_WEBHOOK_URL=SLACK_URL)
        )

    assert caught.value.transient is False
    assert "no_service" in str(caught.value)
    assert "XXXXSECRET" not in str(caught.value)
    assert "T000" not in str(caught.value)


@pytest.mark.parametrize(
    ("raw", "escaped"),
    [
        ("a & b", "a &amp; b"),
        ("<!channel>", "&lt;!channel&gt;"),
        ("<https://evil|click>", "&lt;https://evil|click&gt;"),
        ("&lt;", "&amp;lt;"),  # `&` first: already-escaped text is escaped again, not kept
        ("plain *bold* text", "plain *bold* text"),
    ],
)
def test_slack_escape_escapes_ampersand_then_angle_brackets(raw: str, escaped: str) -> None:
    assert slack_escape(raw) == escaped


def test_slack_escapes_interpolated_values_in_text_and_blocks() -> None:
    assert dict(SlackAction.escaped_params) == {"text": slack_escape, "blocks": slack_escape}


# --- http ---------------------------------------------------------------------------------


async def test_http_sends_method_headers_and_json_body(
    respx_mock: respx.MockRouter, make_ctx: MakeContext
) -> None:
    url = "https://erp.example.com/api/stock?site=3"
    route = respx_mock.put(url).respond(204)
    params = HttpParams.model_validate(
        {
            "url": url,
            "method": "PUT",
            "headers": {"X-Api-Key": "k-123"},
            "json": {"sku": "SKU-1", "on_hand": 4},
        }
    )

    result = await HttpAction().run(params, await make_ctx())

    request = sent(route)
    assert request.method == "PUT"
    assert str(request.url) == url
    assert request.headers["X-Api-Key"] == "k-123"
    assert request.headers["Idempotency-Key"] == EXPECTED_KEY
    assert request.headers["Content-Type"] == "application/json"
    assert json.loads(request.content) == {"sku": "SKU-1", "on_hand": 4}
    assert result.status == 204


async def test_http_defaults_to_post_and_sends_raw_body_as_given(
    respx_mock: respx.MockRouter, make_ctx: MakeContext
) -> None:
    url = "https://erp.example.com/hook"
    route = respx_mock.post(url).respond(201)
    params = HttpParams.model_validate(
        {"url": url, "body": "sku=SKU-1", "headers": {"Content-Type": "text/plain"}}
    )

    await HttpAction().run(params, await make_ctx())

    request = sent(route)
    assert request.method == "POST"
    assert request.content == b"sku=SKU-1"
    assert request.headers["Content-Type"] == "text/plain"
    assert request.headers["Idempotency-Key"] == EXPECTED_KEY


async def test_http_passes_its_timeout_to_the_request(
    respx_mock: respx.MockRouter, make_ctx: MakeContext
) -> None:
    route = respx_mock.get("https://erp.example.com/ping").respond(200)
    params = HttpParams(url="https://erp.example.com/ping", method="GET", timeout=2.5)

    await HttpAction().run(params, await make_ctx())

    assert sent(route).extensions["timeout"] == dict.fromkeys(("connect", "read", "write", "pool"), 2.5)


async def test_http_rule_headers_cannot_replace_the_idempotency_key(
    respx_mock: respx.MockRouter, make_ctx: MakeContext
) -> None:
    route = respx_mock.post("https://erp.example.com/hook").respond(200)
    params = HttpParams(url="https://erp.example.com/hook", headers={"idempotency-key": "from-the-rule"})

    await HttpAction().run(params, await make_ctx())

    assert sent(route).headers.get_list("Idempotency-Key") == [EXPECTED_KEY]


async def test_http_expect_status_accepts_listed_non_2xx_answer(
    respx_mock: respx.MockRouter, make_ctx: MakeContext
) -> None:
    respx_mock.delete("https://erp.example.com/items/9").respond(404, text="gone")
    params = HttpParams.model_validate(
        {"url": "https://erp.example.com/items/9", "method": "DELETE", "expect_status": [200, 404]}
    )

    result = await HttpAction().run(params, await make_ctx())

    assert result.status == 404


async def test_http_expect_status_rejects_other_2xx_answer_permanently(
    respx_mock: respx.MockRouter, make_ctx: MakeContext
) -> None:
    respx_mock.post("https://erp.example.com/orders").respond(200, text="already there")
    params = HttpParams(url="https://erp.example.com/orders", expect_status=201)

    with pytest.raises(ActionFailed) as caught:
        await HttpAction().run(params, await make_ctx())

    assert (caught.value.transient, caught.value.status) == (False, 200)


@pytest.mark.parametrize("url", ["ftp://files.example.com/x", "erp.example.com/hook"])
async def test_http_url_that_is_not_http_fails_permanently(make_ctx: MakeContext, url: str) -> None:
    # No respx here: httpx's real transport refuses the scheme before any connection.
    with pytest.raises(ActionFailed, match="use an absolute http:// or https:// URL") as caught:
        await HttpAction().run(HttpParams(url=url), await make_ctx())

    assert caught.value.transient is False


@pytest.mark.parametrize(
    "headers",
    [
        {"Authorization": "Bearer tok-SECRET\r\nX-Injected: y"},
        {"Authorization": "Bearer tok-SECRET-é"},
        {"Bad Name": "tok-SECRET"},
    ],
)
async def test_http_malformed_header_fails_permanently_without_showing_its_value(
    respx_mock: respx.MockRouter, make_ctx: MakeContext, headers: dict[str, str]
) -> None:
    params = HttpParams(url="https://erp.example.com/hook", headers=headers)

    with pytest.raises(ActionFailed, match="value not shown") as caught:
        await HttpAction().run(params, await make_ctx())

    assert caught.value.transient is False
    assert "tok-SECRET" not in str(caught.value)
    assert not respx_mock.calls


# --- purchase_order -----------------------------------------------------------------------


async def test_purchase_order_sends_bearer_token_and_idempotency_key(
    respx_mock: respx.MockRouter, make_ctx: MakeContext
) -> None:
    route = respx_mock.post(PO_URL).respond(201, json={"id": "po-7"})
    ctx = await make_ctx(PurchaseOrderAction, PURCHASE_ORDER_URL=PO_URL, PURCHASE_ORDER_TOKEN="po-token-1")
    params = PurchaseOrderParams(item_sku="SKU-1", quantity=12, notes="auto reorder")

    result = await PurchaseOrderAction().run(params, ctx)

    request = sent(route)
    assert request.method == "POST"
    assert str(request.url) == PO_URL
    assert request.headers["Authorization"] == "Bearer po-token-1"
    assert request.headers["Idempotency-Key"] == EXPECTED_KEY
    assert request.headers["Content-Type"] == "application/json"
    assert json.loads(request.content) == {
        "item_sku": "SKU-1",
        "quantity": 12,
        "notes": "auto reorder",
    }
    assert result.status == 201


async def test_purchase_order_without_token_sends_no_authorization_to_its_own_url(
    respx_mock: respx.MockRouter, make_ctx: MakeContext
) -> None:
    own_url = "https://po2.example.com/orders"
    route = respx_mock.post(own_url).respond(200)
    params = PurchaseOrderParams(item_sku="SKU-2", quantity=1, url=own_url)

    await PurchaseOrderAction().run(params, await make_ctx(PurchaseOrderAction, PURCHASE_ORDER_URL=PO_URL))

    request = sent(route)
    assert "Authorization" not in request.headers
    assert json.loads(request.content) == {"item_sku": "SKU-2", "quantity": 1, "notes": ""}


async def test_purchase_order_without_any_url_fails_permanently_saying_what_to_set(
    respx_mock: respx.MockRouter, make_ctx: MakeContext
) -> None:
    params = PurchaseOrderParams(item_sku="SKU-1", quantity=3)

    with pytest.raises(ActionFailed) as caught:
        await PurchaseOrderAction().run(
            params, await make_ctx(PurchaseOrderAction, PURCHASE_ORDER_TOKEN="po-token")
        )

    assert caught.value.transient is False
    assert "PURCHASE_ORDER_URL" in str(caught.value)
    assert not respx_mock.calls


@pytest.mark.parametrize("quantity", [0, -1, True, False, 2.5, "many", None])
def test_purchase_order_rejects_quantity_that_is_not_a_positive_whole_number(
    quantity: object,
) -> None:
    with pytest.raises(ValidationError, match="quantity"):
        PurchaseOrderParams.model_validate({"item_sku": "SKU-1", "quantity": quantity})


@pytest.mark.parametrize("sku", ["", "   "])
def test_purchase_order_rejects_empty_item_sku(sku: str) -> None:
    with pytest.raises(ValidationError, match="item_sku"):
        PurchaseOrderParams.model_validate({"item_sku": sku, "quantity": 1})


# --- send_request: failures and their classification --------------------------------------


@pytest.mark.parametrize("error", [httpx.ConnectTimeout, httpx.ReadTimeout, httpx.PoolTimeout])
async def test_timeout_is_transient(
    respx_mock: respx.MockRouter, make_ctx: MakeContext, error: type[httpx.TimeoutException]
) -> None:
    respx_mock.post(PO_URL).mock(side_effect=error)

    with pytest.raises(ActionFailed, match="timed out after 10s") as caught:
        await send_request(await make_ctx(), "POST", PO_URL, json={})

    assert caught.value.transient is True
    assert caught.value.status is None


@pytest.mark.parametrize("error", [httpx.ConnectError, httpx.RemoteProtocolError])
async def test_connection_error_is_transient(
    respx_mock: respx.MockRouter, make_ctx: MakeContext, error: type[httpx.TransportError]
) -> None:
    respx_mock.post(PO_URL).mock(side_effect=error)

    with pytest.raises(ActionFailed, match="could not connect") as caught:
        await send_request(await make_ctx(), "POST", PO_URL, json={})

    assert caught.value.transient is True


@pytest.mark.parametrize("status", [408, 429, 500, 503])
@pytest.mark.parametrize(
    ("retry_after", "seconds"),
    [("120", 120.0), ("Sat, 01 Mar 2025 12:00:30 GMT", 30.0), (None, None)],
)
async def test_retryable_status_is_transient_with_retry_after(
    respx_mock: respx.MockRouter,
    make_ctx: MakeContext,
    status: int,
    retry_after: str | None,
    seconds: float | None,
) -> None:
    headers = {"Retry-After": retry_after} if retry_after else {}
    respx_mock.post(PO_URL).respond(status, headers=headers, text="busy")

    with pytest.raises(ActionFailed) as caught:
        await send_request(await make_ctx(), "POST", PO_URL, json={})

    assert caught.value.transient is True
    assert caught.value.status == status
    assert caught.value.retry_after == seconds


@pytest.mark.parametrize("status", [400, 401, 404, 422])
async def test_client_error_status_is_permanent(
    respx_mock: respx.MockRouter, make_ctx: MakeContext, status: int
) -> None:
    respx_mock.post(PO_URL).respond(status, headers={"Retry-After": "5"}, text="bad sku")

    with pytest.raises(ActionFailed, match=f"answered {status}: bad sku") as caught:
        await send_request(await make_ctx(), "POST", PO_URL, json={})

    assert caught.value.transient is False
    assert caught.value.status == status
    assert caught.value.retry_after is None


async def test_failure_message_hides_credentials_and_query_of_the_url(
    respx_mock: respx.MockRouter, make_ctx: MakeContext
) -> None:
    url = "https://user:pa55word@erp.example.com/?token=tok-SECRET"
    respx_mock.post(url).respond(500)

    with pytest.raises(ActionFailed) as caught:
        await send_request(await make_ctx(), "POST", url)

    message = str(caught.value)
    assert "erp.example.com" in message
    assert "pa55word" not in message
    assert "tok-SECRET" not in message


@pytest.mark.parametrize(
    "url",
    [
        "https://evil.example/steal?token=tok-SECRET",
        "http://erp.example.com/hook?token=tok-SECRET",  # another scheme
        "https://erp.example.com:8443/hook?token=tok-SECRET",  # another port
        "https://erp.example.com@evil.example/hook?token=tok-SECRET",  # userinfo, then the host
        "https://erp.example.com\\@evil.example/hook?token=tok-SECRET",
        "https://erp.example.com.evil.example/hook?token=tok-SECRET",
    ],
)
async def test_a_request_to_an_origin_the_rule_did_not_allow_is_refused_and_not_sent(
    respx_mock: respx.MockRouter, make_ctx: MakeContext, url: str
) -> None:
    route = respx_mock.route().respond(200)

    with pytest.raises(ActionFailed, match="refused: it goes to ") as caught:
        await send_request(await make_ctx(), "POST", url, json={})

    assert caught.value.transient is False
    assert "may send only to https://erp.example.com, " in str(caught.value)
    assert "tok-SECRET" not in str(caught.value)
    assert route.call_count == 0


async def test_an_answer_excerpt_is_one_line_of_printable_text(
    respx_mock: respx.MockRouter, make_ctx: MakeContext
) -> None:
    body = "\x1b[31mno\x1b[0m such\r\nitem \u202eevil\x00 " + "x" * 300
    respx_mock.post(PO_URL).respond(404, text=body)

    with pytest.raises(ActionFailed) as caught:
        await send_request(await make_ctx(), "POST", PO_URL, json={})

    message = str(caught.value)
    assert message.startswith("POST https://po.example.com/… answered 404: [31mno [0m such item evil xxx")
    assert message.endswith("x…")
    assert all(character.isprintable() for character in message)


async def test_an_answer_in_an_encoding_not_asked_for_is_not_decoded(
    respx_mock: respx.MockRouter, make_ctx: MakeContext
) -> None:
    respx_mock.post(PO_URL).respond(502, headers={"Content-Encoding": "br"}, content=bytes(range(256)) * 4)

    with pytest.raises(ActionFailed, match=r"answered 502: \(1,024 bytes encoded as 'br', not shown\)"):
        await send_request(await make_ctx(), "POST", PO_URL, json={})


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("0", 0.0),
        (" 45 ", 45.0),
        ("Sat, 01 Mar 2025 12:01:00 GMT", 60.0),
        ("Sat, 01 Mar 2025 11:00:00 GMT", 0.0),  # already past: retry now, never negative
        ("soon", None),
        ("-5", None),
        ("²", None),
        ("", None),
        (None, None),
    ],
)
def test_parse_retry_after_reads_delta_seconds_and_http_dates(
    header: str | None, seconds: float | None
) -> None:
    assert parse_retry_after(header, NOW) == seconds


# --- params validation shared by the HTTP actions ----------------------------------------


@pytest.mark.parametrize(
    ("model", "params", "message"),
    [
        (SlackParams, {"text": "hi", "channel": "#ops"}, "channel"),
        (HttpParams, {"url": "https://x.example", "methd": "GET"}, "methd"),
        (PurchaseOrderParams, {"item_sku": "S", "quantity": 1, "qty": 2}, "qty"),
    ],
)
def test_unknown_param_is_rejected(
    model: type[SlackParams | HttpParams | PurchaseOrderParams],
    params: dict[str, Any],
    message: str,
) -> None:
    with pytest.raises(ValidationError, match=f"(?s){message}.*Extra inputs are not permitted"):
        model.model_validate(params)


def test_http_rejects_json_and_body_together_saying_which_to_keep() -> None:
    with pytest.raises(ValidationError, match=r"keep json to send JSON.*or body to send raw text"):
        HttpParams.model_validate({"url": "https://x.example", "json": {"a": 1}, "body": "a=1"})


@pytest.mark.parametrize(
    "bad",
    [
        {"method": "FETCH"},
        {"timeout": 0},
        {"timeout": 61},
        {"expect_status": []},
        {"expect_status": 99},
        {"expect_status": [200, 600]},
    ],
)
def test_http_rejects_out_of_range_params(bad: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        HttpParams.model_validate({"url": "https://x.example", **bad})


# --- log ----------------------------------------------------------------------------------


async def test_log_returns_its_message_and_sends_nothing(
    respx_mock: respx.MockRouter, make_ctx: MakeContext
) -> None:
    result = await LogAction().run(LogParams(message="would reorder SKU-1"), await make_ctx())

    assert result.detail == "would reorder SKU-1"
    assert result.status is None
    assert not respx_mock.calls
