"""Settings from the environment; the only module that reads `os.environ`.

Every variable of the spec's configuration table is a field here. `load_settings()`
turns a bad or missing value into one `ConfigurationError` line that names the
variable and says what to set, never a traceback.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from actions.base import ActionDefaults
from engine.errors import ConfigurationError

SECRET_PREFIX = "SECRET_"


class Settings(BaseModel):
    """The engine's configuration (spec section 10); each field is the lower-cased variable."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    stockaj_webhook_secret: str | None = None
    stockaj_webhook_secret_previous: str | None = None
    database_url: str = "sqlite+aiosqlite:///stockaj-rules.db"
    redis_url: str | None = None
    rules_dir: Path = Path("./rules")
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    max_body_bytes: int = Field(default=1_048_576, ge=1)
    slack_webhook_url: str | None = None
    purchase_order_url: str | None = None
    purchase_order_token: str | None = None
    sync_database_url: str | None = None
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    log_format: Literal["json", "console"] = Field(
        default_factory=lambda: "console" if sys.stderr.isatty() else "json"
    )
    requeue_after_seconds: float = Field(default=60, gt=0)
    max_attempts: int = Field(default=8, ge=1)
    # Beyond the spec's table: retry pacing, retention, in-process concurrency.
    retry_base_seconds: float = Field(default=1.0, gt=0)
    body_retention_days: float = Field(default=30, gt=0)
    delivery_retention_days: float = Field(default=30, gt=0)
    worker_concurrency: int = Field(default=8, ge=1)

    def require_webhook_secret(self) -> tuple[str, ...]:
        """The secrets signatures are checked against; refuses to go on without one."""
        if not self.stockaj_webhook_secret:
            raise ConfigurationError(
                "STOCKAJ_WEBHOOK_SECRET is not set: set it to the webhook secret configured in Stockaj"
            )
        previous = self.stockaj_webhook_secret_previous
        return (self.stockaj_webhook_secret, *([previous] if previous else []))

    @property
    def action_defaults(self) -> ActionDefaults:
        return ActionDefaults(
            slack_webhook_url=self.slack_webhook_url,
            purchase_order_url=self.purchase_order_url,
            purchase_order_token=self.purchase_order_token,
            sync_database_url=self.sync_database_url,
        )

    def sensitive_values(self) -> list[str]:
        """Values that must never appear in a log, a response or CLI output."""
        values = [
            self.stockaj_webhook_secret,
            self.stockaj_webhook_secret_previous,
            self.slack_webhook_url,
            self.purchase_order_token,
        ]
        for url in (self.database_url, self.sync_database_url, self.redis_url):
            values.append(_password_of(url))
        return [value for value in values if value]


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Read settings from `environ` (the process environment by default)."""
    env = dict(os.environ if environ is None else environ)
    fields = {name: env[name.upper()] for name in Settings.model_fields if name.upper() in env}
    try:
        return Settings.model_validate({name: value for name, value in fields.items() if value})
    except ValidationError as exc:
        first = exc.errors()[0]
        variable = str(first["loc"][0]).upper() if first["loc"] else "configuration"
        raise ConfigurationError(
            f"{variable}: {first['msg']} (got {_shown(variable, first.get('input'))}); "
            f"fix {variable} in the environment"
        ) from None


def secret_variables(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """`SECRET_NAME=value` variables as `{"NAME": value}`: what templates see as `secrets`."""
    env = os.environ if environ is None else environ
    return {
        name.removeprefix(SECRET_PREFIX): value
        for name, value in env.items()
        if name.startswith(SECRET_PREFIX) and len(name) > len(SECRET_PREFIX)
    }


def _password_of(url: str | None) -> str | None:
    if not url:
        return None
    try:
        password = make_url(url).password
        return str(password) if password else None
    except ArgumentError:
        return None


def _shown(variable: str, value: object) -> str:
    if any(word in variable for word in ("SECRET", "TOKEN", "URL")):
        return "a value that is not shown"
    return repr(value)
