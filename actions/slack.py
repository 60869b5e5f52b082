"""The `slack` action: POST a message to a Slack incoming webhook.

Values interpolated into `text` are escaped for Slack's mrkdwn (`&`, `<`, `>`), so
payload data cannot turn into mentions or links; the literal text of the rule is
left alone, so authors may still write `<!here>` or `<https://…|a link>`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Annotated, Any, ClassVar

from actions.base import (
    SECRET_URL,
    Action,
    ActionContext,
    ActionFailed,
    ActionParams,
    ActionResult,
    OutgoingURL,
    Setting,
    send_request,
)

WEBHOOK_URL = Setting(
    "SLACK_WEBHOOK_URL",
    SECRET_URL,
    "where slack actions post when the rule names no webhook_url; its path is its token",
)


def slack_escape(value: str) -> str:
    """Escape the three characters Slack treats as control characters in message text."""
    # `&` first, or the `&` of `&lt;` would be escaped again.
    return value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


class SlackParams(ActionParams):
    text: str
    blocks: list[dict[str, Any]] | None = None
    webhook_url: Annotated[str | None, OutgoingURL(default=WEBHOOK_URL)] = None


class SlackAction(Action[SlackParams]):
    type = "slack"
    description = "Post a message to a Slack incoming webhook."
    Params = SlackParams
    escaped_params: ClassVar[Mapping[str, Callable[[str], str]]] = {
        "text": slack_escape,
        "blocks": slack_escape,
    }
    settings = (WEBHOOK_URL,)

    async def run(self, params: SlackParams, ctx: ActionContext) -> ActionResult:
        url = params.webhook_url or ctx.setting(WEBHOOK_URL)
        if not url:
            raise ActionFailed(
                "slack: no webhook URL to post to; "
                "set SLACK_WEBHOOK_URL in the environment or webhook_url in the action",
                transient=False,
            )
        body: dict[str, Any] = {"text": params.text}
        if params.blocks is not None:
            body["blocks"] = params.blocks
        return await send_request(ctx, "POST", url, json=body)
