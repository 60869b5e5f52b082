"""Throttle windows: `per: 1d` is the 24 hours after a firing; `per: calendar day` ends at midnight."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest

from actions.registry import load_registry
from engine.errors import SourceErrors
from engine.language.delivery import Delivery
from engine.language.loader import load_rules
from engine.language.matching import Matcher, RuleStatus
from engine.language.throttle import InMemoryThrottleState
from engine.secrets import Secrets

RULE = """\
id: daily
on: item.low_stock
throttle: {key: "{{ data.sku }}", per: PER}
actions: [{type: log, message: "{{ data.sku }} is low"}]
"""


async def _fired(tmp_path: Path, per: str, moments: list[str]) -> list[bool]:
    (tmp_path / "rule.yaml").write_text(RULE.replace("per: PER", per))
    matcher = Matcher(load_rules(tmp_path, load_registry()), InMemoryThrottleState(), Secrets({}))
    fired = []
    for index, moment in enumerate(moments):
        delivery = Delivery("item.low_stock", f"d{index}", {"data": {"sku": "TENT"}})
        (outcome,) = await matcher.match(delivery, datetime.fromisoformat(moment))
        assert outcome.status in (RuleStatus.FIRED, RuleStatus.THROTTLED), outcome.reason
        fired.append(outcome.fired)
    return fired


async def test_one_day_is_the_24_hours_after_a_firing(tmp_path: Path) -> None:
    moments = ["2026-03-02T09:00:00+00:00", "2026-03-03T08:59:00+00:00", "2026-03-03T09:00:00+00:00"]
    assert await _fired(tmp_path, "per: 1d", moments) == [True, False, True]


async def test_a_calendar_day_ends_at_midnight_utc(tmp_path: Path) -> None:
    moments = ["2026-03-02T09:00:00+00:00", "2026-03-02T23:59:00+00:00", "2026-03-03T00:01:00+00:00"]
    assert await _fired(tmp_path, "per: calendar day", moments) == [True, False, True]


async def test_a_calendar_day_ends_at_the_midnight_of_the_time_zone_given(tmp_path: Path) -> None:
    # 22:30 UTC is 23:30 in Berlin (winter, UTC+1); 23:30 UTC is already the next day there.
    moments = ["2026-03-02T09:00:00+00:00", "2026-03-02T22:30:00+00:00", "2026-03-02T23:30:00+00:00"]
    per = "per: calendar day, timezone: Europe/Berlin"
    assert await _fired(tmp_path, per, moments) == [True, False, True]


async def test_a_calendar_day_throttle_says_which_day_it_counts(tmp_path: Path) -> None:
    (tmp_path / "rule.yaml").write_text(RULE.replace("per: PER", "per: calendar day"))
    matcher = Matcher(load_rules(tmp_path, load_registry()), InMemoryThrottleState(), Secrets({}))
    delivery = Delivery("item.low_stock", "d1", {"data": {"sku": "TENT"}})
    await matcher.match(delivery, datetime.fromisoformat("2026-03-02T09:00:00+00:00"))
    (outcome,) = await matcher.match(delivery, datetime.fromisoformat("2026-03-02T10:00:00+00:00"))
    assert outcome.reason == (
        "throttled: key 'TENT' already fired at 2026-03-02T09:00:00+00:00 (at most once per calendar day (UTC))"
    )


@pytest.mark.parametrize(
    ("per", "message"),
    [
        (
            "per: calendar day, timezone: Europe/Berln",
            "rule.yaml:3:64: daily: expected a time zone such as Europe/Berlin or UTC, "
            'found the text "Europe/Berln"',
        ),
        (
            "per: 1d, timezone: Europe/Berlin",
            "rule.yaml:3:54: daily: timezone applies to per: calendar day only; remove it, "
            "or write per: calendar day",
        ),
        (
            "per: calendar week",
            "rule.yaml:3:40: daily: expected a duration such as '30m', '6h' or '1d', or calendar day, "
            'found the text "calendar week"',
        ),
    ],
)
def test_a_wrong_window_or_time_zone_is_reported_where_it_is_written(
    tmp_path: Path, per: str, message: str
) -> None:
    (tmp_path / "rule.yaml").write_text(RULE.replace("per: PER", per))
    with pytest.raises(SourceErrors) as raised:
        load_rules(tmp_path, load_registry())
    assert [str(p).removeprefix(f"{tmp_path}/") for p in raised.value.problems] == [message]
