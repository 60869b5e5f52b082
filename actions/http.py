"""The `http` action: one generic HTTP request, with a JSON or a raw-text body."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from actions.base import (
    DEFAULT_TIMEOUT_SECONDS,
    Action,
    ActionContext,
    ActionParams,
    ActionResult,
    OutgoingURL,
    send_request,
)

StatusCode = Annotated[int, Field(ge=100, le=599)]


class HttpParams(ActionParams):
    url: Annotated[str, OutgoingURL()]
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"] = "POST"
    headers: dict[str, str] = Field(default_factory=dict)
    # `json` would shadow BaseModel.json(); the rule file still says `json`.
    json_: Any = Field(default=None, alias="json")
    body: str | None = None
    timeout: float = Field(default=DEFAULT_TIMEOUT_SECONDS, gt=0, le=60)
    expect_status: StatusCode | list[StatusCode] | None = None

    @field_validator("expect_status")
    @classmethod
    def _not_empty(cls, value: int | list[int] | None) -> int | list[int] | None:
        if value == []:
            raise ValueError(
                "expect_status is an empty list, so no answer could succeed; "
                "list the accepted codes, e.g. [200, 201], or leave it out to accept any 2xx"
            )
        return value

    @model_validator(mode="after")
    def _one_body(self) -> HttpParams:
        if self.json_ is not None and self.body is not None:
            raise ValueError(
                "both json and body are given, but a request has one body; "
                "keep json to send JSON (it sets Content-Type), or body to send raw text"
            )
        return self

    def accepts(self, status: int) -> bool:
        expected = self.expect_status
        if expected is None:
            return 200 <= status < 300
        return status == expected if isinstance(expected, int) else status in expected


class HttpAction(Action[HttpParams]):
    type = "http"
    description = "Send one HTTP request (JSON or raw body) and check the answer's status."
    Params = HttpParams

    async def run(self, params: HttpParams, ctx: ActionContext) -> ActionResult:
        return await send_request(
            ctx,
            params.method,
            params.url,
            headers=params.headers,
            json=params.json_,
            content=params.body,
            timeout=params.timeout,
            expect_status=params.accepts,
        )
