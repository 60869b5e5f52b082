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
            "STOCKAJ_WEBHOOK_SECRET": "whsec-current",
            "STOCKAJ_WEBHOOK_SECRET_PREVIOUS": "whsec-previous",
            "SLACK_WEBHOOK_URL": "https://hooks.slack.example/T000/B000/XXXX",
            "PURCHASE_ORDER_TOKEN": "po-token",
            "DATABASE_URL": "postgresql+asyncpg://app:db-password@db/app",
            "SYNC_DATABASE_URL": "postgresql+asyncpg://sync:sync-password@crm/crm",
        }
    )
    assert set(settings.sensitive_values()) == {
        "whsec-current",
        "whsec-previous",
        "https://hooks.slack.example/T000/B000/XXXX",
        "po-token",
        "db-password",
        "sync-password",
    }


def test_templates_see_only_secret_prefixed_variables() -> None:
    env = {"SECRET_CRM_TOKEN": "t", "STOCKAJ_WEBHOOK_SECRET": "w", "SECRET_": "empty-name", "PATH": "/bin"}
    assert secret_variables(env) == {"CRM_TOKEN": "t"}
