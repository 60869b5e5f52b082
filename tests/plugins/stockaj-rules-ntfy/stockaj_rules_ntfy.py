"""The `ntfy` action: publish a notification to a topic on an ntfy server (https://ntfy.sh).

An example action plugin for Stockaj Rules, walked through in docs/plugins.md. It
declares the three settings it reads, and posts the notification as ntfy's JSON
publishing API expects: `POST https://ntfy.sh/` with the topic in the body.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field

from actions.base import (
    INT,
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

SERVER = Setting("NTFY_URL", URL, "the ntfy server to publish to when the rule names no server")
TOKEN = Setting("NTFY_TOKEN", SECRET, "an access token of the server, sent as Authorization: Bearer …")
PRIORITY = Setting("NTFY_PRIORITY", INT, "the priority when the rule gives none: 1 (min) to 5 (max)")


class NtfyParams(ActionParams):
    topic: Annotated[str, Field(pattern=r"^[-_A-Za-z0-9]{1,64}$")]
    message: Annotated[str, Field(min_length=1, max_length=4096)]
    title: str | None = None
    priority: Annotated[int, Field(ge=1, le=5)] | None = None
    tags: list[str] = Field(default_factory=list)
    server: Annotated[str | None, OutgoingURL(default=SERVER)] = None


class NtfyAction(Action[NtfyParams]):
    type = "ntfy"
    description = "Publish a notification to a topic on an ntfy server."
    Params = NtfyParams
    settings = (SERVER, TOKEN, PRIORITY)

    async def run(self, params: NtfyParams, ctx: ActionContext) -> ActionResult:
        server = params.server or ctx.setting(SERVER)
        if not server:
            raise ActionFailed(
                "ntfy: no server to publish to; set NTFY_URL in the environment or server in the action",
                transient=False,
            )
        notification: dict[str, Any] = {"topic": params.topic, "message": params.message}
        if params.title:
            notification["title"] = params.title
        priority = params.priority or ctx.setting(PRIORITY)
        if priority is not None and not 1 <= priority <= 5:
            raise ActionFailed(
                f"ntfy: NTFY_PRIORITY is {priority}, but ntfy knows 1 to 5; set NTFY_PRIORITY to one of them",
                transient=False,
            )
        if priority:
            notification["priority"] = priority
        if params.tags:
            notification["tags"] = params.tags
        token = ctx.setting(TOKEN)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return await send_request(ctx, "POST", server, headers=headers, json=notification)
