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
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from actions.base import ActionDefaults
from engine.errors import ConfigurationError

SECRET_PREFIX = "SECRET_"

# The store and `sql_upsert` speak to SQLite and PostgreSQL through these async drivers.
_ASYNC_DRIVERS = {"sqlite": "aiosqlite", "postgresql": "asyncpg", "postgres": "asyncpg"}
_DATABASE_EXAMPLES = "postgresql+asyncpg://user:password@host:5432/db or sqlite+aiosqlite:///path/to/file.db"
_MIN_TOKEN_PATH = 16
_REDIS_SCHEMES = ("redis", "rediss", "unix")
# Variables whose value may be shown in an error with its password hidden; other URLs hold tokens.
_SHOWN_URLS = ("DATABASE_URL", "SYNC_DATABASE_URL", "REDIS_URL")


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
    # Where people open a delivery's story: the address of `stockaj_rules.delivery_failed` alerts.
    console_url: str = "http://127.0.0.1:8001"

    @field_validator("log_level", mode="before")
    @classmethod
    def _level_any_case(cls, value: Any) -> Any:
        """`LOG_LEVEL=info` means INFO."""
        return value.strip().upper() if isinstance(value, str) else value

    @field_validator("log_format", mode="before")
    @classmethod
    def _format_any_case(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("database_url", "sync_database_url")
    @classmethod
    def _database(cls, value: str | None) -> str | None:
        return database_url(value) if value else value

    @field_validator("redis_url")
    @classmethod
    def _redis(cls, value: str | None) -> str | None:
        if value and (urlsplit(value).scheme not in _REDIS_SCHEMES or "://" not in value):
            raise ValueError("not a Redis URL; write redis://host:6379/0 (or rediss:// for TLS)")
        return value

    @field_validator("slack_webhook_url", "purchase_order_url")
    @classmethod
    def _http(cls, value: str | None) -> str | None:
        if value:
            parts = urlsplit(value)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError("not an http(s) URL; write https://host/path")
        return value

    @field_validator("console_url")
    @classmethod
    def _console(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
            raise ValueError("not the console's address; write https://rules.example.com (no ? or #)")
        return value.rstrip("/")

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
        if self.slack_webhook_url:
            # Its path is the token and may be shown without the host; a short path is no token
            # (`/slack` on a test server), and masking it would blot out ordinary words.
            path = urlsplit(self.slack_webhook_url).path.strip("/")
            values.append(path if len(path) >= _MIN_TOKEN_PATH else None)
        for url in (self.database_url, self.sync_database_url, self.redis_url):
            values += _passwords_of(url)
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
        message = first["msg"].removeprefix("Value error, ")
        raise ConfigurationError(
            f"{variable}: {message} (got {_shown(variable, first.get('input'))}); "
            f"fix {variable} in the environment"
        ) from None


def database_url(value: str) -> str:
    """`value` as an async SQLAlchemy URL; `postgresql://` and `sqlite://` get their async driver.

    Raises ValueError naming what to write instead for anything the store cannot use.
    """
    try:
        url = make_url(value)
    except ArgumentError:
        raise ValueError(f"not a database URL; write {_DATABASE_EXAMPLES}") from None
    backend, _, driver = url.drivername.partition("+")
    wanted = _ASYNC_DRIVERS.get(backend)
    if wanted is None:
        raise ValueError(f"unsupported database {backend!r}; write {_DATABASE_EXAMPLES}")
    backend = "postgresql" if backend == "postgres" else backend
    if driver and driver != wanted:
        raise ValueError(f"driver {driver!r} is not supported; use {backend}+{wanted}:// instead")
    if url.drivername == f"{backend}+{wanted}":
        return value
    return url.set(drivername=f"{backend}+{wanted}").render_as_string(hide_password=False)


def secret_variables(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """`SECRET_NAME=value` variables as `{"NAME": value}`: what templates see as `secrets`."""
    env = os.environ if environ is None else environ
    return {
        name.removeprefix(SECRET_PREFIX): value
        for name, value in env.items()
        if name.startswith(SECRET_PREFIX) and len(name) > len(SECRET_PREFIX)
    }


def _passwords_of(url: str | None) -> list[str]:
    """The password of `url` as written (maybe %-encoded) and decoded: either may be logged."""
    if not url:
        return []
    try:
        decoded = make_url(url).password
    except ArgumentError:
        decoded = None
    try:
        written = urlsplit(url).password
    except ValueError:
        written = None
    return sorted({str(password) for password in (decoded, written) if password})


def _shown(variable: str, value: object) -> str:
    if variable in _SHOWN_URLS and isinstance(value, str):
        try:
            return repr(make_url(value).render_as_string(hide_password=True))
        except ArgumentError:
            return repr(value) if "@" not in value else "a value that is not shown"
    if any(word in variable for word in ("SECRET", "TOKEN", "URL")):
        return "a value that is not shown"
    return repr(value)
