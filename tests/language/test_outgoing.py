"""Where outgoing requests may go: decided from the rule when it loads, checked again per delivery.

The load-time check reads the template's syntax tree; the render-time check compares the
rendered URL's origin with the origin of its configuration-only start, rendered with the
same secrets. Both are exercised the way the engine runs them: rules loaded from files,
matched by the Matcher that dry runs and the worker share.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from actions.registry import load_registry
from engine.errors import SourceErrors
from engine.language.delivery import Delivery
from engine.language.loader import load_rules
from engine.language.matching import Matcher, PlannedAction
from engine.language.rules import RuleSet
from engine.language.throttle import InMemoryThrottleState
from engine.secrets import Secrets

EVIL = {"callback_url": "https://evil.example/steal", "host": "evil.example", "x": ".evil.example"}


def _rule(action: dict[str, Any]) -> str:
    # JSON is YAML: the template goes in verbatim, whatever quotes and braces it holds.
    return json.dumps({"id": "r", "on": "*", "actions": [action]})


def _load(tmp_path: Path, action: dict[str, Any]) -> RuleSet:
    (tmp_path / "r.json").write_text(_rule(action))
    return load_rules(tmp_path, load_registry())


def _problem(tmp_path: Path, action: dict[str, Any]) -> str:
    """The origin problem of the action (a secret transformed is also refused on its own)."""
    with pytest.raises(SourceErrors) as raised:
        _load(tmp_path, action)
    problems = [str(p).removeprefix(f"{tmp_path}/") for p in raised.value.problems]
    # "file:line:col: rule: message": the secret's own problems start with "secrets".
    about_origin = [p for p in problems if not p.split(": ", 2)[2].startswith("secrets")]
    assert len(about_origin) == 1, problems
    return about_origin[0]


# Each of these lets the delivery choose the scheme, host or port (or could, for another payload).
PAYLOAD_REACHES_THE_HOST = [
    "{% if data.callback_url is defined %}{{ data.callback_url }}{% else %}https://crm.example.com/hook{% endif %}",
    "{% for h in [data.host] %}http://{{ h }}/x{% endfor %}",
    "{% with h = data.host %}http://{{ h }}/x{% endwith %}",
    "{% filter lower %}http://{{ data.host }}/x{% endfilter %}",
    "{% set h = data.host %}https://{{ h }}/x",
    "{% set h %}{{ data.host }}{% endset %}https://{{ h }}/x",
    "{% macro h() %}{{ data.host }}{% endmacro %}https://{{ h() }}/x",
    "{% macro u() %}https://crm.example.com{% endmacro %}{{ u() }}{{ data.x }}/y",
    "{% call caller() %}x{% endcall %}https://crm.example.com/",
    "{% include data.t %}/x",
    "{% import 'hosts' as h %}https://{{ h.crm }}/x",
    "{% block b %}https://{{ data.host }}{% endblock %}/x",
    "{% autoescape false %}https://{{ data.host }}{% endautoescape %}/x",
    "https://crm.example.com{{ data.x }}",
    "https://crm.example.com{{ data.x }}/items",
    "https://crm.example.com:{{ data.port }}/items",
    "https://{{ data.user }}@crm.example.com/items",
    "https://[{{ data.ip }}]/items",
    "https://crm.example.com\\{{ data.x }}/items",
    "https://crm.example.com {{- data.x }}/items",
    "https://crm.example.com{# a comment #}{{ data.x }}/items",
    "{% raw %}https://crm.example.com{% endraw %}{{ data.x }}/items",
    "{{ secrets.BASE }}{{ data.path }}",
    "{{ secrets.BASE ~ data.path }}/x",
    "https://{{ secrets[data.which] }}/x",
    "https://{{ secrets.HOST | replace('crm', data.x) }}/x",
    "{{ 'https://crm.example.com' | replace('crm.example.com', data.host) }}/x",
    "{{ 'https://' ~ data.host }}/x",
    "https://{{ now }}/x",
    "//{{ data.host }}/x",
    "https:/{{ data.host }}/x",
    "https:///{{ data.host }}/x",
    "{{ data.scheme }}://crm.example.com/x",
    "http{{ data.s }}://crm.example.com/x",
]


@pytest.mark.parametrize("url", PAYLOAD_REACHES_THE_HOST)
def test_a_url_whose_origin_the_delivery_can_reach_is_refused_where_it_is_written(
    tmp_path: Path, url: str
) -> None:
    problem = _problem(tmp_path, {"type": "http", "url": url})

    assert problem.startswith("r.json:1:"), problem
    assert "r: expected the URL's host written in the rule (or taken from secrets), found " in problem
    assert "; write " in problem


@pytest.mark.parametrize(
    ("url", "found"),
    [
        (PAYLOAD_REACHES_THE_HOST[0], "found a {% if %} tag where the URL starts"),
        (PAYLOAD_REACHES_THE_HOST[1], "found a {% for %} tag where the URL starts"),
        ("https://crm.example.com{{ data.x }}", "found {{ data.x }} before the host ends"),
        ("{{ secrets.BASE }}{{ data.path }}", "found {{ data.path }} right after {{ secrets.BASE }}"),
        (
            "//{{ data.host }}/x",
            "found {{ data.host }} after '//', which has no scheme and host before its first /",
        ),
    ],
)
def test_the_refusal_says_what_it_found_and_where(tmp_path: Path, url: str, found: str) -> None:
    assert found in _problem(tmp_path, {"type": "http", "url": url})


@pytest.mark.parametrize(
    ("action", "param"),
    [
        (
            {"type": "slack", "text": "hi", "webhook_url": "{% for u in [data.hook] %}{{ u }}{% endfor %}"},
            "webhook_url",
        ),
        (
            {
                "type": "purchase_order",
                "item_sku": "S",
                "quantity": 1,
                "url": "https://po.example.com{{ data.x }}",
            },
            "url",
        ),
    ],
)
def test_every_outgoing_url_param_is_checked(tmp_path: Path, action: dict[str, Any], param: str) -> None:
    assert "expected the URL's host written in the rule" in _problem(tmp_path, action)


@pytest.mark.parametrize(
    "url",
    [
        "https://crm.example.com/items/{{ data.id }}",
        "https://crm.example.com?item={{ data.id }}",
        "https://crm.example.com#{{ data.id }}",
        "https://crm.example.com:8443/items/{{ data.id }}",
        "https://[::1]:8080/items/{{ data.id }}",
        "https://{{ secrets.CRM_HOST }}/items/{{ data.id }}",
        "https://{{ secrets['CRM_HOST'] }}:{{ secrets.CRM_PORT }}/items/{{ data.id }}",
        "{{ secrets.CRM_URL }}/items/{{ data.id }}",
        "{{ secrets.CRM_HOOK_URL }}",
        "{{ 'https://crm.example.com' }}/items/{{ data.id }}",
        "{% raw %}https://crm.example.com/{% endraw %}{{ data.id }}",
        "https://crm.example.com/{# the item #}{{ data.id }}",
        "https://crm.example.com/{% if data.id %}items/{{ data.id }}{% else %}all{% endif %}",
        "https://crm.example.com/{% for i in data.ids %}{{ i }},{% endfor %}",
    ],
)
def test_a_url_whose_origin_comes_from_the_rule_or_secrets_loads(tmp_path: Path, url: str) -> None:
    assert _load(tmp_path, {"type": "http", "url": url}).ids() == ["r"]


@pytest.mark.parametrize(
    "url",
    [
        "https://{{ secrets.HOST }}/x{% set secrets = data %}",
        "{% for secrets in [data] %}{% endfor %}https://{{ secrets.HOST }}/x",
        "https://{{ secrets.HOST }}/{% macro m(secrets) %}{% endmacro %}",
        "https://crm.example.com/{% extends data.t %}",
    ],
)
def test_a_url_template_may_not_give_secrets_another_meaning_or_extend(tmp_path: Path, url: str) -> None:
    problem = _problem(tmp_path, {"type": "http", "url": url})
    assert problem.startswith("r.json:1:")
    assert "expected" in problem


@pytest.mark.parametrize(
    "database_url",
    [
        "postgresql+asyncpg://sync@{{ data.warehouse }}/inventory",
        "{{ secrets.DB }}{{ data.suffix }}",
        "{{ secrets.DB }}/{{ data.name }}",
        "{% if data.big %}{{ secrets.BIG_DB }}{% else %}{{ secrets.DB }}{% endif %}",
        "{% for d in [data.db] %}{{ d }}{% endfor %}",
        "sqlite+aiosqlite:///{{ data.file }}",
    ],
)
def test_a_database_url_must_be_configuration_throughout(tmp_path: Path, database_url: str) -> None:
    action = {"type": "sql_upsert", "database_url": database_url, "table": "t", "key": {"id": 1}}
    assert "expected the database URL written in the rule (or taken from secrets)" in _problem(
        tmp_path, action
    )


def test_a_database_url_from_secrets_loads(tmp_path: Path) -> None:
    url = "postgresql+asyncpg://sync:{{ secrets.DB_PASSWORD }}@{{ secrets.DB_HOST }}/inventory"
    action = {"type": "sql_upsert", "database_url": url, "table": "t", "key": {"id": 1}}
    assert _load(tmp_path, action).ids() == ["r"]


# --- per delivery: the rendered origin must be the one the rule and its secrets allow ---------


async def _planned(
    rules: RuleSet, secrets: dict[str, str], data: dict[str, Any], *, dry_run: bool = False
) -> PlannedAction:
    matcher = Matcher(rules, InMemoryThrottleState(), Secrets(secrets, placeholders=dry_run))
    (outcome,) = await matcher.match(Delivery("item.updated", "d-1", {"data": data}))
    (planned,) = outcome.actions
    return planned


@pytest.mark.parametrize("dry_run", [False, True], ids=["live", "dry-run"])
@pytest.mark.parametrize(
    ("url", "secrets", "data"),
    [
        # The secret holds only a scheme: the host comes after the written `//`, from the delivery.
        ("{{ secrets.SCHEME }}//{{ data.host }}/x", {"SCHEME": "https:"}, {"host": "evil.example"}),
        ("{{ secrets.BASE }}/{{ data.rest }}", {"BASE": "https:/"}, {"rest": "evil.example/x"}),
        # Two secrets make the start of a host; the delivery finishes it.
        (
            "{{ secrets.A }}/{{ secrets.B }}{{ data.x }}",
            {"A": "https:", "B": "/crm.example.com"},
            {"x": ".evil.example"},
        ),
        (
            "{{ secrets.A }}/{{ secrets.B }}{{ data.x }}",
            {"A": "https:", "B": "/crm.example.com"},
            {"x": ":8443"},
        ),
    ],
)
async def test_a_rendered_url_that_leaves_the_allowed_origin_is_refused_and_not_sent(
    tmp_path: Path, url: str, secrets: dict[str, str], data: dict[str, Any], dry_run: bool
) -> None:
    rules = _load(tmp_path, {"type": "http", "url": url})

    planned = await _planned(rules, secrets, data, dry_run=dry_run)

    assert planned.error is not None, planned.params
    assert planned.error.startswith("actions[0] (http): url: refused, nothing sent: ")
    assert planned.validated is None


@pytest.mark.parametrize(
    ("url", "secrets", "data", "sent"),
    [
        (
            "{{ secrets.CRM_URL }}/items/{{ data.id }}",
            {"CRM_URL": "https://crm.example.com/api"},
            {"id": "@evil.example"},
            "https://crm.example.com/api/items/@evil.example",
        ),
        (
            "https://{{ secrets.HOST }}/items?x={{ data.id }}",
            {"HOST": "crm.example.com:8443"},
            {"id": "1"},
            "https://crm.example.com:8443/items?x=1",
        ),
        (
            "https://crm.example.com/{{ data.id }}",
            {},
            {"id": "/evil.example"},
            "https://crm.example.com//evil.example",
        ),
    ],
)
async def test_a_rendered_url_in_its_allowed_origin_goes_out(
    tmp_path: Path, url: str, secrets: dict[str, str], data: dict[str, Any], sent: str
) -> None:
    rules = _load(tmp_path, {"type": "http", "url": url})

    planned = await _planned(rules, secrets, data)

    assert planned.error is None
    assert planned.params is not None
    assert planned.params["url"] == sent
