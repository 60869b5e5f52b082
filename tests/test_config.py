"""Configuration: defaults, one clear line for bad values, what counts as sensitive."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.config import load_settings, secret_variables
from engine.errors import ConfigurationError


def test_defaults_follow_the_spec() -> None:
    settings = load_settings({})
    assert settings.database_url == "sqlite+aiosqlite:///stockaj-rules.db"
    assert settings.redis_url is None
    assert settings.rules_dir == Path("./rules")
    assert (settings.host, settings.port) == ("127.0.0.1", 8000)
    assert settings.max_body_bytes == 1_048_576
    assert settings.requeue_after_seconds == 60
    assert settings.max_attempts == 8


def test_bad_value_is_one_line_naming_the_variable() -> None:
    with pytest.raises(ConfigurationError) as raised:
        load_settings({"PORT": "eighty"})
    assert str(raised.value) == (
        "PORT: Input should be a valid integer, unable to parse string as an integer "
        "(got 'eighty'); fix PORT in the environment"
    )


def test_bad_url_values_are_not_echoed() -> None:
    with pytest.raises(ConfigurationError) as raised:
        load_settings({"MAX_BODY_BYTES": "0", "SLACK_WEBHOOK_URL": "x"})
    assert "MAX_BODY_BYTES" in str(raised.value)


def test_sensitive_values_include_tokens_secrets_and_database_passwords() -> None:
    settings = load_settings(
        {
            "STOCKAJ_WEBHOOK_SECRET": "whsec-current-5f1c0e",
            "STOCKAJ_WEBHOOK_SECRET_PREVIOUS": "whsec-previous-9b2e47",
            "SLACK_WEBHOOK_URL": "https://hooks.slack.example/T000/B000/XXXX",
            "PURCHASE_ORDER_TOKEN": "po-token",
            "DATABASE_URL": "postgresql+asyncpg://app:db-password@db/app",
            "SYNC_DATABASE_URL": "postgresql+asyncpg://sync:sync-password@crm/crm",
        }
    )
    assert set(settings.sensitive_values()) == {
        "whsec-current-5f1c0e",
        "whsec-previous-9b2e47",
        "https://hooks.slack.example/T000/B000/XXXX",
        "po-token",
        "db-password",
        "sync-password",
    }


def test_templates_see_only_secret_prefixed_variables() -> None:
    env = {"SECRET_CRM_TOKEN": "t", "STOCKAJ_WEBHOOK_SECRET": "w", "SECRET_": "empty-name", "PATH": "/bin"}
    assert secret_variables(env) == {"CRM_TOKEN": "t"}


def test_settings_beyond_the_spec_table_have_defaults() -> None:
    settings = load_settings({})
    assert settings.retry_base_seconds == 1.0
    assert (settings.body_retention_days, settings.delivery_retention_days) == (30, 30)
    assert settings.worker_concurrency == 8
    tuned = load_settings(
        {
            "RETRY_BASE_SECONDS": "0.5",
            "BODY_RETENTION_DAYS": "7",
            "DELIVERY_RETENTION_DAYS": "90",
            "WORKER_CONCURRENCY": "32",
        }
    )
    assert (tuned.retry_base_seconds, tuned.body_retention_days) == (0.5, 7)
    assert (tuned.delivery_retention_days, tuned.worker_concurrency) == (90, 32)


@pytest.mark.parametrize(
    ("given", "used"),
    [
        ("postgresql://app:pw@db:5432/app", "postgresql+asyncpg://app:pw@db:5432/app"),
        ("postgres://app:pw@db/app", "postgresql+asyncpg://app:pw@db/app"),
        ("postgresql+asyncpg://app:pw@db/app", "postgresql+asyncpg://app:pw@db/app"),
        ("sqlite:///data/rules.db", "sqlite+aiosqlite:///data/rules.db"),
        ("sqlite+aiosqlite:///data/rules.db", "sqlite+aiosqlite:///data/rules.db"),
    ],
)
def test_database_url_without_an_async_driver_gets_the_one_the_store_uses(given: str, used: str) -> None:
    assert load_settings({"DATABASE_URL": given}).database_url == used
    assert load_settings({"SYNC_DATABASE_URL": given}).plugins.values["SYNC_DATABASE_URL"] == used


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (
            "nonsense://x",
            "DATABASE_URL: unsupported database 'nonsense'; write postgresql+asyncpg://user:password@host:5432/db "
            "or sqlite+aiosqlite:///path/to/file.db (got 'nonsense://x'); fix DATABASE_URL in the environment",
        ),
        (
            "postgresql+psycopg2://app:db-pa55@db/app",
            "DATABASE_URL: driver 'psycopg2' is not supported; use postgresql+asyncpg:// instead "
            "(got 'postgresql+psycopg2://app:***@db/app'); fix DATABASE_URL in the environment",
        ),
        (
            "mysql+aiomysql://app:db-pa55@db/app",
            "DATABASE_URL: unsupported database 'mysql'; write postgresql+asyncpg://user:password@host:5432/db "
            "or sqlite+aiosqlite:///path/to/file.db (got 'mysql+aiomysql://app:***@db/app'); "
            "fix DATABASE_URL in the environment",
        ),
        (
            "db-pa55@db",
            "DATABASE_URL: not a database URL; write postgresql+asyncpg://user:password@host:5432/db "
            "or sqlite+aiosqlite:///path/to/file.db (got a value that is not shown); "
            "fix DATABASE_URL in the environment",
        ),
    ],
)
def test_unusable_database_url_is_one_line_saying_what_to_write_without_its_password(
    value: str, message: str
) -> None:
    with pytest.raises(ConfigurationError) as raised:
        load_settings({"DATABASE_URL": value})
    assert str(raised.value) == message
    assert "db-pa55" not in str(raised.value)


def test_redis_url_must_be_a_redis_url() -> None:
    assert load_settings({"REDIS_URL": "rediss://:pw@cache:6380/1"}).redis_url == "rediss://:pw@cache:6380/1"
    with pytest.raises(ConfigurationError) as raised:
        load_settings({"REDIS_URL": "cache:6379"})
    assert str(raised.value) == (
        "REDIS_URL: not a Redis URL; write redis://host:6379/0 (or rediss:// for TLS) "
        "(got 'cache:6379'); fix REDIS_URL in the environment"
    )


def test_queue_name_is_arqs_by_default_and_a_plain_name_otherwise() -> None:
    assert load_settings({}).queue_name == "arq:queue"
    assert load_settings({"QUEUE_NAME": "shop-eu:v2"}).queue_name == "shop-eu:v2"
    with pytest.raises(ConfigurationError) as raised:
        load_settings({"QUEUE_NAME": "shop eu"})
    assert str(raised.value) == (
        "QUEUE_NAME: not a queue name; write 1 to 100 letters, digits, _ . : or -, e.g. stockaj "
        "(got 'shop eu'); fix QUEUE_NAME in the environment"
    )


def test_port_zero_asks_for_a_free_port() -> None:
    assert load_settings({"PORT": "0", "METRICS_PORT": "0"}).port == 0


@pytest.mark.parametrize("variable", ["SLACK_WEBHOOK_URL", "PURCHASE_ORDER_URL"])
def test_action_default_urls_must_be_http_and_are_never_echoed(variable: str) -> None:
    with pytest.raises(ConfigurationError) as raised:
        load_settings({variable: "hooks.slack.com/services/T0/B0/secret-path"})
    assert str(raised.value) == (
        f"{variable}: not an http(s) URL; write https://host/path (got a value that is not shown); "
        f"fix {variable} in the environment"
    )


def test_log_level_and_format_are_read_in_any_case() -> None:
    settings = load_settings({"LOG_LEVEL": "debug", "LOG_FORMAT": "JSON"})
    assert (settings.log_level, settings.log_format) == ("DEBUG", "json")
    with pytest.raises(ConfigurationError, match=r"^LOG_FORMAT: "):
        load_settings({"LOG_FORMAT": "xml"})


def test_sensitive_values_include_both_forms_of_an_encoded_password_and_the_slack_token_path() -> None:
    settings = load_settings(
        {
            "DATABASE_URL": "postgresql+asyncpg://app:p%40ss-w0rd@db/app",
            "REDIS_URL": "redis://:r3dis-pa55@cache:6379/0",
            "SLACK_WEBHOOK_URL": "https://hooks.slack.com/services/T0001/B0001/XXXXXXXXXXXX",
        }
    )
    assert set(settings.sensitive_values()) == {
        "p@ss-w0rd",
        "p%40ss-w0rd",
        "r3dis-pa55",
        "https://hooks.slack.com/services/T0001/B0001/XXXXXXXXXXXX",
        "services/T0001/B0001/XXXXXXXXXXXX",
    }


def test_a_short_slack_path_on_a_test_server_is_not_masked_as_a_token() -> None:
    settings = load_settings({"SLACK_WEBHOOK_URL": "http://127.0.0.1:9000/slack"})
    assert settings.sensitive_values() == ["http://127.0.0.1:9000/slack"]


def test_console_url_is_where_alerts_point_people_without_a_trailing_slash() -> None:
    assert load_settings({}).console_url == "http://127.0.0.1:8001"
    assert (
        load_settings({"CONSOLE_URL": "https://rules.example.com/"}).console_url
        == "https://rules.example.com"
    )
    assert load_settings({"CONSOLE_URL": "https://example.com/stockaj"}).console_url == (
        "https://example.com/stockaj"
    )


@pytest.mark.parametrize("value", ["rules.example.com", "ftp://rules.example.com", "https://x.example/?a=1"])
def test_a_console_url_that_is_no_web_address_is_refused_in_one_line(value: str) -> None:
    with pytest.raises(ConfigurationError) as raised:
        load_settings({"CONSOLE_URL": value})
    assert str(raised.value).startswith("CONSOLE_URL: not the console's address; write https://")
    assert str(raised.value).endswith("fix CONSOLE_URL in the environment")
