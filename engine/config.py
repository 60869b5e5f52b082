"""Settings from the environment; the only module that reads `os.environ`.

Every variable of the engine's own configuration table is a field of `Settings`; the
installed action plugins declare theirs (engine/plugins.py), read here too and checked
by their kinds (engine/config_plugins.py). `load_settings()` turns a bad or missing
value into one `ConfigurationError` line that names the variable and says what to set,
never a traceback and never a secret (the wording and what a message may show:
engine/config_errors.py); a plugin that cannot be loaded is one `PluginError` line.
Secrets too short to be masked, or to resist guessing, are refused before anything else.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
)

from engine.config_errors import (
    Display,
    SettingProblem,
    environment_secrets,
    is_secret_name,
    printable_line,
    problem_line,
    url_passwords,
    validation_line,
)
from engine.config_plugins import PluginSettings, display, read_plugin_settings, refuse_taken
from engine.config_values import database_url, redis_url
from engine.config_values import listen_address as listen_address  # the operator's --host
from engine.errors import ConfigurationError, PluginError
from engine.plugins import SECRET, InstalledPlugin, installed_plugins

SECRET_PREFIX = "SECRET_"
_QUEUE_NAME = re.compile(r"[A-Za-z0-9_.:-]{1,100}")

# The webhook secret is an HMAC key: from one signed delivery (a log, a proxy) a short key can
# be found offline by trying them all, so 16 characters; the operator chooses it, here and in
# Stockaj. Other secrets (SECRET_*, plugins' secrets) are issued by other systems: 8
# characters, twice the masking minimum (engine/secrets.MIN_MASKED_LENGTH), so that masking
# them cannot blot out ordinary words and numbers, and a value that short is a mistake.
WEBHOOK_SECRET_MIN_LENGTH = 16
SECRET_MIN_LENGTH = 8
_WEBHOOK_SECRETS = ("STOCKAJ_WEBHOOK_SECRET", "STOCKAJ_WEBHOOK_SECRET_PREVIOUS")
# Linux limits: a longer RULES_DIR fails every file operation (ENAMETOOLONG).
_NAME_MAX, _PATH_MAX = 255, 4095


class Settings(BaseModel):
    """The engine's configuration (spec section 10); each field is the lower-cased variable.

    The values of the settings plugins declare are in `plugins` (not fields: they vary
    with what is installed).
    """

    # No inf or nan: every number becomes a duration, a count or a size.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    stockaj_webhook_secret: str | None = None
    stockaj_webhook_secret_previous: str | None = None
    # After this moment the previous secret is refused; a delivery still signed with it is
    # diagnosed `previous_secret_expired` (engine/signature_diagnosis.py). Unset: no end.
    stockaj_webhook_rotation_ends_at: AwareDatetime | None = None
    database_url: str = "sqlite+aiosqlite:///stockaj-rules.db"
    redis_url: str | None = None
    # The Redis queue's name (arq's by default): installations sharing a Redis database keep
    # apart by it, their jobs, keys and connection names carrying it (engine/queue).
    queue_name: str = "arq:queue"
    rules_dir: Path = Path("./rules")
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)  # 0: a free port; `serve` logs the one it bound
    max_body_bytes: int = Field(default=1_048_576, ge=1)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    log_format: Literal["json", "console"] = Field(
        default_factory=lambda: "console" if sys.stderr.isatty() else "json"
    )
    requeue_after_seconds: float = Field(default=60, gt=0, le=86_400)
    max_attempts: int = Field(default=8, ge=1)
    # Beyond the spec's table: retry pacing, retention, in-process concurrency.
    # Upper bounds: beyond them dates overflow, or a process would start millions of tasks.
    retry_base_seconds: float = Field(default=1.0, gt=0, le=3600)
    body_retention_days: float = Field(default=30, gt=0, le=36_500)
    delivery_retention_days: float = Field(default=30, gt=0, le=36_500)
    worker_concurrency: int = Field(default=8, ge=1, le=1024)
    # The receiver's connections (engine/pipeline/http_protocol.py): it faces the internet without a proxy.
    header_timeout_seconds: float = Field(default=5, gt=0, le=3600)
    max_header_bytes: int = Field(default=65_536, ge=1024, le=16 * 1024 * 1024)
    keep_alive_timeout_seconds: float = Field(default=5, gt=0, le=3600)
    max_connections: int = Field(default=1000, ge=1, le=1_000_000)
    # Prometheus metrics on a port of their own (serve and worker); unset: /metrics on PORT.
    metrics_host: str | None = None
    metrics_port: int | None = Field(default=None, ge=0, le=65535)
    # Where people open a delivery's story: the address of `stockaj_rules.delivery_failed` alerts.
    console_url: str = "http://127.0.0.1:8001"
    _plugins: PluginSettings = PrivateAttr(default_factory=PluginSettings)
    # The console (SPEC section 16): `stockaj-rules console`, and `serve` in the embedded default.
    console_host: str = "127.0.0.1"
    console_port: int = Field(default=8001, ge=1, le=65535)
    console_password: str | None = None  # required to listen beyond loopback; masked
    console_read_only: bool = False  # refuse redeliver and saving
    console_rules_writable: bool = False  # saving writes into RULES_DIR (else: a download)
    console_enabled: bool = True  # false: `serve` starts no console
    console_fixtures_dir: Path = Path("./fixtures")  # the playground's fixtures

    @field_validator("log_level", mode="before")
    @classmethod
    def _level_any_case(cls, value: Any) -> Any:
        """`LOG_LEVEL=info` means INFO."""
        return value.strip().upper() if isinstance(value, str) else value

    @field_validator("log_format", mode="before")
    @classmethod
    def _format_any_case(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("database_url")
    @classmethod
    def _database(cls, value: str | None) -> str | None:
        return database_url(value) if value else value

    @field_validator("redis_url")
    @classmethod
    def _redis(cls, value: str | None) -> str | None:
        return redis_url(value) if value else value

    @field_validator("queue_name")
    @classmethod
    def _queue(cls, value: str) -> str:
        if not _QUEUE_NAME.fullmatch(value):
            raise SettingProblem("not a queue name; write 1 to 100 letters, digits, _ . : or -, e.g. stockaj")
        return value

    @field_validator("host", "metrics_host", "console_host")
    @classmethod
    def _host(cls, value: str) -> str:
        return listen_address(value)

    @field_validator("rules_dir")
    @classmethod
    def _folder(cls, value: Path) -> Path:
        try:
            path = os.fsencode(value)
        except UnicodeError:
            raise SettingProblem("not a path this system can use; write the folder's path") from None
        if len(path) > _PATH_MAX or any(len(part) > _NAME_MAX for part in path.split(b"/")):
            raise SettingProblem(
                f"a path component is longer than {_NAME_MAX} bytes, or the path than {_PATH_MAX}; "
                "write the folder's real path"
            )
        return value

    @field_validator("console_url")
    @classmethod
    def _console(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
            raise SettingProblem("not the console's address; write https://rules.example.com (no ? or #)")
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
    def plugins(self) -> PluginSettings:
        """The settings the installed action plugins declare, and their values."""
        return self._plugins

    def sensitive_values(self) -> list[str]:
        """Values that must never appear in a log, a response or CLI output."""
        values = [self.stockaj_webhook_secret, self.stockaj_webhook_secret_previous, self.console_password]
        for url in (self.database_url, self.redis_url):
            values += _passwords_of(url)
        values += self._plugins.sensitive_values()
        return [value for value in values if value]


def load_settings(
    environ: Mapping[str, str] | None = None, *, plugins: Sequence[InstalledPlugin] | None = None
) -> Settings:
    """Read settings from `environ` (the process environment by default).

    `plugins`: the action plugins whose declared settings are read too (by default every
    installed one: loading them raises PluginError for one that cannot be used).
    Raises ConfigurationError: one printable line naming the variable, never a secret of
    `environ`. Secrets are checked first: a secret too short to mask could show in any
    other message.
    """
    env = dict(os.environ if environ is None else environ)
    declared = PluginSettings(installed_plugins() if plugins is None else tuple(plugins))
    refuse_taken(declared, {name.upper() for name in Settings.model_fields}, SECRET_PREFIX)
    secrets = environment_secrets(env, declared.secret_variables())
    problem = (
        _secret_problem(env, declared)
        or _text_problem(env, declared, secrets)
        or _misplaced_secret(env, declared, secrets)
    )
    if problem:
        raise ConfigurationError(problem)
    fields = {name: env[name.upper()] for name in Settings.model_fields if name.upper() in env}
    try:
        settings = Settings.model_validate({name: value for name, value in fields.items() if value})
    except ValidationError as exc:
        raise ConfigurationError(validation_line(exc, secrets)) from None
    settings._plugins = read_plugin_settings(env, declared.plugins, secrets)
    return settings


def error_line(message: str, environ: Mapping[str, str] | None = None) -> str:
    """A configuration error as a command prints it: one line, no secret of the environment.

    The last gate for every ConfigurationError, whoever raised it.
    """
    try:
        declared = PluginSettings(installed_plugins()).secret_variables()
    except PluginError:  # the error being printed, maybe: the names of secrets all say so
        declared = []
    env = os.environ if environ is None else environ
    return printable_line(message, environment_secrets(env, declared))


def _variables(declared: PluginSettings) -> dict[str, Display | None]:
    """Every variable read, with how an error may show its value (None: as its name says).

    The engine's own settings first, then the plugins' in declaration order.
    """
    own: dict[str, Display | None] = {name.upper(): None for name in Settings.model_fields}
    return own | {setting.variable: display(setting) for setting, _ in declared.declared()}


def _secret_problem(env: Mapping[str, str], declared: PluginSettings) -> str | None:
    """A secret that is not UTF-8 text or is too short, named with its length, never its value."""
    named = [name.upper() for name in Settings.model_fields if is_secret_name(name)]
    named += [setting.variable for setting, _ in declared.declared() if setting.kind == SECRET]
    prefixed = sorted(secret_variable_names(env))
    for variable in [*named, *prefixed]:
        value = env.get(variable)
        if not value:  # unset or empty: nothing to leak
            continue
        if _not_text(value):
            return problem_line(variable, f"not UTF-8 text ({_not_text(value)})", value, [], "hidden")
        webhook = variable in _WEBHOOK_SECRETS
        minimum = WEBHOOK_SECRET_MIN_LENGTH if webhook else SECRET_MIN_LENGTH
        if len(value) < minimum:
            length = f"{len(value)} character{'s' if len(value) > 1 else ''}"
            why = "to be masked reliably and resist guessing" if webhook else "to be masked reliably"
            todo = (
                f"set a longer secret in Stockaj and in {variable}, e.g. "
                "python3 -c 'import secrets; print(secrets.token_hex(32))'"
                if webhook
                else f"set {variable} to the whole credential, or unset it"
            )
            return printable_line(
                f"{variable} is {length} long; a secret needs at least {minimum} {why}: {todo}"
            )
    return None


def _text_problem(env: Mapping[str, str], declared: PluginSettings, secrets: list[str]) -> str | None:
    """A setting that is not text: bytes that are not UTF-8 (RULES_DIR may hold them), a NUL."""
    for variable, shown_as in _variables(declared).items():
        value = env.get(variable)
        if value and variable != "RULES_DIR" and _not_text(value):
            return problem_line(variable, f"not UTF-8 text ({_not_text(value)})", value, secrets, shown_as)
        if value and "\x00" in value:
            return problem_line(variable, "a NUL character is not allowed", value, secrets, shown_as)
    return None


def _misplaced_secret(env: Mapping[str, str], declared: PluginSettings, secrets: list[str]) -> str | None:
    """A setting that is not a secret yet holds one: it would be shown later (a path, a host).

    URLs are left out: they hold their own password, and may rightly name what a secret names.
    """
    for variable, shown_as in _variables(declared).items():
        value = env.get(variable)
        if (
            not value
            or shown_as not in (None, "value")
            or is_secret_name(variable)
            or variable.endswith("_URL")
        ):
            continue
        # Shorter values of variables merely named like secrets (TOKEN_TTL=8) are too common.
        if any(len(secret) >= SECRET_MIN_LENGTH and secret in value for secret in secrets):
            return printable_line(
                f"{variable}: holds the value of a secret, which is not shown (a secret belongs in "
                f"its own variable); fix {variable} in the environment"
            )
    return None


def _not_text(value: str) -> str | None:
    """Where `value` stops being UTF-8 text; os.environ keeps a stray byte as a lone surrogate."""
    for index, char in enumerate(value):
        if "\ud800" <= char <= "\udfff":
            code = ord(char)
            what = f"byte 0x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF else f"U+{code:04X}"
            return f"{what} at character {index + 1}"
    return None


def secret_variables(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """`SECRET_NAME=value` variables as `{"NAME": value}`: what templates see as `secrets`."""
    env = os.environ if environ is None else environ
    return {name.removeprefix(SECRET_PREFIX): env[name] for name in secret_variable_names(env)}


def secret_variable_names(environ: Mapping[str, str]) -> list[str]:
    """The `SECRET_NAME` variables of `environ` (a bare `SECRET_` names nothing)."""
    return [name for name in environ if name.startswith(SECRET_PREFIX) and len(name) > len(SECRET_PREFIX)]


def _passwords_of(url: str | None) -> list[str]:
    """The password of `url` as written (maybe %-encoded) and decoded: either may be logged."""
    return url_passwords(url) if url else []


def colour_wanted(environ: Mapping[str, str] | None = None) -> bool | None:
    """False when NO_COLOR is set and not empty (https://no-color.org); None: colour on a terminal only."""
    env = os.environ if environ is None else environ
    return False if env.get("NO_COLOR") else None
