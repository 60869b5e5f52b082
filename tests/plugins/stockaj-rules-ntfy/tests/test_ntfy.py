"""The ntfy action, run as the engine runs it: a context from engine.testing, ntfy played by respx."""

from __future__ import annotations

import json

import httpx
import pytest
import respx
from stockaj_rules_ntfy import NtfyAction, NtfyParams

from actions.base import ActionFailed
from engine.testing import FakeClock, action_context

SERVER = "https://ntfy.example.com/"
SETTINGS = {"NTFY_URL": SERVER, "NTFY_TOKEN": "tk_0123456789abcdef", "NTFY_PRIORITY": "4"}


def sent(route: respx.Route) -> httpx.Request:
    assert route.call_count == 1
    return route.calls.last.request


async def test_a_notification_is_published_to_the_configured_server_with_its_token(
    respx_mock: respx.MockRouter,
) -> None:
    route = respx_mock.post(SERVER).respond(200, json={"id": "abc"})
    params = NtfyParams(
        topic="warehouse-alerts", message="3 left of Tent 4p", title="Low stock", tags=["package"]
    )

    async with action_context(NtfyAction, settings=SETTINGS) as ctx:
        result = await NtfyAction().run(params, ctx)

    request = sent(route)
    assert request.headers["Authorization"] == "Bearer tk_0123456789abcdef"
    assert request.headers["Idempotency-Key"] == ctx.idempotency_key
    assert json.loads(request.content) == {
        "topic": "warehouse-alerts",
        "message": "3 left of Tent 4p",
        "title": "Low stock",
        "priority": 4,  # NTFY_PRIORITY, as the rule gives none
        "tags": ["package"],
    }
    assert result.status == 200


async def test_the_rules_server_and_priority_win_over_the_settings(respx_mock: respx.MockRouter) -> None:
    own = "https://push.example.org/"
    route = respx_mock.post(own).respond(200)
    params = NtfyParams(topic="t", message="m", priority=1, server=own)

    async with action_context(NtfyAction, settings=SETTINGS, allow=[own]) as ctx:
        await NtfyAction().run(params, ctx)

    assert json.loads(sent(route).content) == {"topic": "t", "message": "m", "priority": 1}


async def test_without_a_server_it_fails_for_good_saying_what_to_set() -> None:
    async with action_context(NtfyAction) as ctx:
        with pytest.raises(ActionFailed, match="set NTFY_URL") as failed:
            await NtfyAction().run(NtfyParams(topic="t", message="m"), ctx)
    assert failed.value.transient is False


async def test_a_busy_server_is_tried_again_when_it_says(respx_mock: respx.MockRouter) -> None:
    respx_mock.post(SERVER).respond(429, headers={"Retry-After": "30"}, text="slow down")

    async with action_context(NtfyAction, settings={"NTFY_URL": SERVER}, clock=FakeClock()) as ctx:
        with pytest.raises(ActionFailed) as failed:
            await NtfyAction().run(NtfyParams(topic="t", message="m"), ctx)

    assert (failed.value.transient, failed.value.retry_after) == (True, 30.0)


@pytest.mark.parametrize("topic", ["", "has space", "x" * 65])
def test_a_topic_ntfy_would_refuse_is_refused_when_the_rule_loads(topic: str) -> None:
    with pytest.raises(ValueError, match="topic"):
        NtfyParams(topic=topic, message="m")
