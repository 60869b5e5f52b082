"""The settings plugins declare: read by engine.config, checked and masked by their kinds.

An action class declared here stands for any plugin; the built-in actions declare theirs
the same way (their variables are the ones docs/operations.md lists per action).
"""

from __future__ import annotations

import io
import logging
import re
from pathlib import Path
from typing import Annotated

import pytest

from actions.base import (
    DATABASE_URL,
    INT,
    SECRET,
    SECRET_URL,
    TEXT,
    URL,
    Action,
    ActionContext,
    ActionParams,
    ActionResult,
    OutgoingURL,
    Setting,
)
from actions.purchase_order import PurchaseOrderAction
from actions.slack import SlackAction
from engine.config import error_line, load_settings
from engine.errors import ConfigurationError, PluginError
from engine.pipeline.logs import configure_logging
from engine.pipeline.service import masker_for
from engine.plugins import InstalledPlugin, checked, installed_plugins, plugin_of
from engine.testing import action_context

REPO = Path(__file__).resolve().parent.parent

SIGNING = Setting("ACME_SIGNING", SECRET, "the key requests are signed with")
ENDPOINT = Setting("ACME_ENDPOINT", SECRET_URL, "the webhook to post to; its path is its token")
API = Setting("ACME_API", URL, "the API")
WAREHOUSE = Setting("ACME_WAREHOUSE", DATABASE_URL, "the warehouse database")
RETRIES = Setting("ACME_RETRIES", INT, "how often to try")
REGION = Setting("ACME_REGION", TEXT, "the region the account is in", required=True)

ENDPOINT_URL = "https://hooks.acme.example/T0001/B0001/XXXXXXXXXXXX"
SIGNING_KEY = "acme-s1gning-k3y"


class AcmeParams(ActionParams):
    text: str
    url: str | None = None


class AcmeAction(Action[AcmeParams]):
    type = "acme"
    description = "Tell Acme."
    Params = AcmeParams
    settings = (SIGNING, ENDPOINT, API, WAREHOUSE, RETRIES, REGION)

    async def run(self, params: AcmeParams, ctx: ActionContext) -> ActionResult:
        return ActionResult(detail=f"{ctx.setting(REGION)} x{ctx.setting(RETRIES)}")


ACME = plugin_of(AcmeAction)
GOOD = {
    "ACME_SIGNING": SIGNING_KEY,
    "ACME_ENDPOINT": ENDPOINT_URL,
    "ACME_API": "https://bot:api-pa55word@api.acme.example/v1",
    "ACME_WAREHOUSE": "postgresql://wh:wh-pa55word@warehouse/wh",
    "ACME_RETRIES": "3",
    "ACME_REGION": "eu-north",
}


def acme_settings(**changed: str | None) -> dict[str, str]:
    env = {**GOOD, **changed}
    return {name: value for name, value in env.items() if value is not None}


def refused(env: dict[str, str], plugins: list[InstalledPlugin] | None = None) -> str:
    with pytest.raises(ConfigurationError) as raised:
        load_settings(env, plugins=[ACME] if plugins is None else plugins)
    return str(raised.value)


def test_declared_settings_are_read_as_their_kinds() -> None:
    settings = load_settings(acme_settings(), plugins=[ACME])

    assert settings.plugins.values == {
        **GOOD,
        "ACME_WAREHOUSE": "postgresql+asyncpg://wh:wh-pa55word@warehouse/wh",  # the async driver added
        "ACME_RETRIES": 3,
    }


def test_sensitive_values_follow_the_declared_kinds_not_the_names() -> None:
    settings = load_settings(acme_settings(), plugins=[ACME])

    assert set(settings.sensitive_values()) == {
        SIGNING_KEY,  # a secret, though its name does not say so
        ENDPOINT_URL,  # a secret URL as a whole, and its token path
        "T0001/B0001/XXXXXXXXXXXX",
        "api-pa55word",  # the password of a URL
        "wh-pa55word",  # the password of a database URL
    }


@pytest.mark.parametrize(
    ("changed", "line"),
    [
        (
            {"ACME_RETRIES": "many"},
            "ACME_RETRIES: not a whole number; write e.g. 10 (got 'many'); fix ACME_RETRIES in the environment",
        ),
        (
            {"ACME_ENDPOINT": "hooks.acme.example/T0001/B0001/XXXXXXXXXXXX"},
            "ACME_ENDPOINT: not an http(s) URL; write https://host/path (got a value that is not shown); "
            "fix ACME_ENDPOINT in the environment",
        ),
        (
            {"ACME_API": "ftp://bot:api-pa55word@api.acme.example/"},
            "ACME_API: not an http(s) URL; write https://host/path (got a value that is not shown); "
            "fix ACME_API in the environment",
        ),
        (
            {"ACME_WAREHOUSE": "mysql://wh:wh-pa55word@warehouse/wh"},
            "ACME_WAREHOUSE: unsupported database 'mysql'; write postgresql+asyncpg://user:password@host:5432/db "
            "or sqlite+aiosqlite:///path/to/file.db (got 'mysql://wh:***@warehouse/wh'); "
            "fix ACME_WAREHOUSE in the environment",
        ),
        (
            {"ACME_SIGNING": "k3y"},
            "ACME_SIGNING is 3 characters long; a secret needs at least 8 to be masked reliably: "
            "set ACME_SIGNING to the whole credential, or unset it",
        ),
        (
            {"ACME_REGION": None},
            "ACME_REGION is not set: the acme action needs it (the region the account is in); "
            "set it in the environment",
        ),
        (
            {"ACME_REGION": f"eu-{SIGNING_KEY}"},
            "ACME_REGION: holds the value of a secret, which is not shown (a secret belongs in its own "
            "variable); fix ACME_REGION in the environment",
        ),
    ],
    ids=["int", "secret URL", "URL", "database URL", "short secret", "required", "secret elsewhere"],
)
def test_a_bad_declared_setting_is_one_line_showing_its_value_only_as_its_kind_allows(
    changed: dict[str, str | None], line: str
) -> None:
    assert refused(acme_settings(**changed)) == line


def test_a_declared_secret_is_masked_in_the_logs() -> None:
    stream = io.StringIO()
    configure_logging("INFO", "json", masker_for(load_settings(acme_settings(), plugins=[ACME])), stream)

    logging.getLogger("engine.test").warning(f"posting to {ENDPOINT_URL} signed with {SIGNING_KEY}")

    assert SIGNING_KEY not in stream.getvalue()
    assert "T0001/B0001" not in stream.getvalue()
    assert stream.getvalue().count("***") == 2


def test_an_installed_plugins_secret_url_is_masked_in_any_configuration_error() -> None:
    slack = "https://hooks.slack.com/services/T0/B0/XXXXXXXXXXXXXXXX"
    line = error_line(f"PORT: not a port (got {slack})", {"SLACK_WEBHOOK_URL": slack})
    assert line == "PORT: not a port (got ***)"


def test_an_action_reads_only_the_settings_it_declares() -> None:
    settings = load_settings(
        {
            "SLACK_WEBHOOK_URL": "https://hooks.slack.com/services/T0/B0/XXXXXXXXXXXXXXXX",
            "PURCHASE_ORDER_TOKEN": "po-token-1",
        }
    )

    assert dict(settings.plugins.for_action(PurchaseOrderAction)) == {
        "PURCHASE_ORDER_URL": None,
        "PURCHASE_ORDER_TOKEN": "po-token-1",
    }
    assert set(settings.plugins.for_action(SlackAction)) == {"SLACK_WEBHOOK_URL"}


async def test_reading_a_setting_the_action_does_not_declare_says_to_declare_it() -> None:
    async with action_context(SlackAction) as ctx:
        with pytest.raises(LookupError, match=r"^ACME_REGION is not a setting of this action; list it"):
            ctx.setting(REGION)


async def test_the_test_context_checks_settings_as_configuration_does() -> None:
    with pytest.raises(ConfigurationError, match=r"^ACME_RETRIES: not a whole number"):
        async with action_context(AcmeAction, settings=acme_settings(ACME_RETRIES="x")):
            pass
    with pytest.raises(
        ValueError, match=r"^ACME_TYPO: not a setting of AcmeAction, which declares ACME_SIGNING"
    ):
        async with action_context(AcmeAction, settings={"ACME_TYPO": "1"}):
            pass
    async with action_context(AcmeAction, settings=acme_settings()) as ctx:
        result = await AcmeAction().run(AcmeParams(text="hi"), ctx)
    assert result.detail == "eu-north x3"


class FallbackParams(ActionParams):
    url: Annotated[str | None, OutgoingURL(default=API)] = None


class FallbackAction(Action[FallbackParams]):
    type = "fallback"
    description = "Call the API of the rule, else the configured one."
    Params = FallbackParams
    settings = (API,)

    async def run(self, params: FallbackParams, ctx: ActionContext) -> ActionResult:
        return ActionResult()


async def test_the_test_context_allows_the_origin_of_a_url_setting_an_action_falls_back_on() -> None:
    async with action_context(FallbackAction, settings={"ACME_API": "https://api.acme.example/v1"}) as ctx:
        assert {str(origin) for origin in ctx.allowed_origins} == {"https://api.acme.example"}
    async with action_context(FallbackAction, allow=["http://127.0.0.1:9000/x"]) as ctx:
        assert {str(origin) for origin in ctx.allowed_origins} == {"http://127.0.0.1:9000"}


def test_a_plugin_may_not_declare_a_setting_the_engine_reads() -> None:
    class Sneaky(AcmeAction):
        type = "sneaky"
        settings = (Setting("DATABASE_URL", DATABASE_URL, "mine"),)

    with pytest.raises(
        PluginError, match=r"declares the setting DATABASE_URL, which the engine reads itself"
    ):
        load_settings({}, plugins=[plugin_of(Sneaky)])


def test_two_plugins_may_share_a_variable_declared_alike_but_not_otherwise() -> None:
    class Twin(AcmeAction):
        type = "twin"

    class Other(AcmeAction):
        type = "other"
        settings = (Setting("ACME_RETRIES", TEXT, "the retries, as text"),)

    assert [p.type_name for p in checked([ACME, plugin_of(Twin)])] == ["acme", "twin"]
    with pytest.raises(PluginError) as raised:
        checked([ACME, plugin_of(Other)])
    assert str(raised.value).startswith(
        "setting ACME_RETRIES is declared as an optional int by tests.test_config_plugins.AcmeAction "
        "and as an optional text by "
    )


def test_a_setting_must_be_named_as_an_environment_variable() -> None:
    with pytest.raises(ValueError, match=r"^setting 'acme-token' is not an environment variable name"):
        Setting("acme-token", SECRET, "the token")


def test_the_built_in_actions_declare_the_settings_the_engine_used_to_name() -> None:
    declared = {
        plugin.type_name: {(s.variable, s.kind.name, s.required) for s in plugin.settings}
        for plugin in installed_plugins()
        if plugin.distribution.startswith("stockaj-rules ")
    }
    assert declared == {
        "http": set(),
        "log": set(),
        "purchase_order": {
            ("PURCHASE_ORDER_URL", "URL", False),
            ("PURCHASE_ORDER_TOKEN", "secret", False),
        },
        "slack": {("SLACK_WEBHOOK_URL", "secret URL", False)},
        "sql_upsert": {("SYNC_DATABASE_URL", "database URL", False)},
    }


def test_the_core_names_no_action_of_its_own() -> None:
    """engine/ knows actions only as plugins: no Slack, purchase orders or sync database in it."""
    named = re.compile(r"slack|purchase[ _-]?orders?|sync[ _-]?database", re.IGNORECASE)
    found = [
        f"{path.relative_to(REPO)}:{number}: {line.strip()}"
        for path in sorted((REPO / "engine").rglob("*"))
        if path.is_file() and path.suffix in (".py", ".md", ".html", ".j2", ".mako", ".txt", ".toml", ".ini")
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if named.search(line)
    ]
    assert found == []
