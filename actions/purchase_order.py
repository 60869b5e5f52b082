"""The `purchase_order` action: ask the purchase-order system to order an item.

It POSTs `{"item_sku", "quantity", "notes"}` as JSON, with the bearer token from
PURCHASE_ORDER_TOKEN when one is configured; the Idempotency-Key lets that system
recognise a retried order instead of placing it twice.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BeforeValidator, Field, StringConstraints

from actions.base import (
    SECRET,
    URL,
    Action,
    ActionContext,
    ActionFailed,
    ActionParams,
    ActionResult,
    OutgoingURL,
    Setting,
    send_request,
)

ORDERS_URL = Setting(
    "PURCHASE_ORDER_URL", URL, "where purchase_order actions post when the rule names no url"
)
TOKEN = Setting("PURCHASE_ORDER_TOKEN", SECRET, "sent as Authorization: Bearer … by purchase_order actions")


def _not_bool(value: Any) -> Any:
    # bool is an int to Python and to pydantic's lax mode: `quantity: true` would order 1.
    if isinstance(value, bool):
        raise ValueError(f"quantity must be a whole number greater than 0, not {value}")
    return value


class PurchaseOrderParams(ActionParams):
    item_sku: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]
    quantity: Annotated[int, BeforeValidator(_not_bool), Field(gt=0)]
    notes: str = ""
    url: Annotated[str | None, OutgoingURL(default=ORDERS_URL)] = None


class PurchaseOrderAction(Action[PurchaseOrderParams]):
    type = "purchase_order"
    description = "Create a purchase order for an item in the purchase-order system."
    Params = PurchaseOrderParams
    settings = (ORDERS_URL, TOKEN)

    async def run(self, params: PurchaseOrderParams, ctx: ActionContext) -> ActionResult:
        url = params.url or ctx.setting(ORDERS_URL)
        if not url:
            raise ActionFailed(
                "purchase_order: no purchase-order system to send to; "
                "set PURCHASE_ORDER_URL in the environment or url in the action",
                transient=False,
            )
        headers = {}
        token = ctx.setting(TOKEN)
        if token:
            headers["Authorization"] = f"Bearer {token}"
        order = {"item_sku": params.item_sku, "quantity": params.quantity, "notes": params.notes}
        return await send_request(ctx, "POST", url, headers=headers, json=order)
