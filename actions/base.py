"""The interface every action plugin implements, and what it may use.

An action is a small class: a `type` name, a one-line `description`, a pydantic
`Params` model (extra fields forbidden) that rule files are validated against
when they load, the `settings` it reads from the environment (each a `Setting`:
the variable, its kind, whether it is required; engine/config.py reads and
checks them, and masks them by their kinds), and `async run(params, ctx)`. It
reaches nothing global: the HTTP client, the clock, databases and the values of
its settings come in through `ActionContext`. docs/plugins.md shows one whole.

A failed run raises `ActionFailed`; `transient` says whether trying again later
may help (connection errors, timeouts, 408, 429, 5xx), and `retry_after`
carries the server's Retry-After in seconds when it sent one.
"""

from __future__ import annotations

import asyncio
import builtins
import email.utils
import hashlib
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar, cast

import httpx
from pydantic import BaseModel, ConfigDict

from actions.answers import READ_BYTES, excerpt, read_prefix
from engine.plugins import DATABASE_URL, INT, SECRET, SECRET_URL, TEXT, URL, Setting, SettingKind

V = TypeVar("V", str, int)

if TYPE_CHECKING:  # SQLAlchemy loads in the engine's processes, not for `check` (tests/cli/test_imports.py)
    from sqlalchemy.ext.asyncio import AsyncEngine

TRANSIENT_STATUSES = frozenset({408, 429}) | frozenset(range(500, 600))
DEFAULT_TIMEOUT_SECONDS = 10.0
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # RFC 9110 token
_HEADER_VALUE = re.compile(r"[\t\x20-\x7e]*")  # no line breaks, controls or non-ASCII


class ActionParams(BaseModel):
    """Base of every params model: unknown params are errors, never ignored."""

    model_config = ConfigDict(extra="forbid")


class OutgoingURL:
    """Marks a param as a URL the engine connects to: where it goes must not come from payload data.

    Use as `url: Annotated[str, OutgoingURL()]`; the rule loader checks it (engine/language/outgoing_urls.py)
    and `send_request` sends only to the origins it allowed. `default` is the action's
    `Setting` it falls back on when the param is left out (its origin is allowed then).
    `http=False` for a URL that is not an HTTP one (a database URL): all of it must be
    configuration.
    """

    def __init__(self, *, http: bool = True, default: Setting[str] | None = None) -> None:
        self.http = http
        self.default = default

    def __repr__(self) -> str:
        default = self.default.variable if self.default else None
        return f"OutgoingURL(http={self.http}, default={default!r})"


@dataclass(frozen=True, slots=True)
class Origin:
    """Where an HTTP request goes: scheme, host and port (the default port when none is written)."""

    scheme: str
    host: str
    port: int

    @classmethod
    def of(cls, url: str | httpx.URL) -> Origin | None:
        """The origin of an absolute http(s) URL, or None when it has no such scheme and a host."""
        try:
            parsed = url if isinstance(url, httpx.URL) else httpx.URL(url)
        except httpx.InvalidURL:
            return None
        if parsed.scheme not in ("http", "https") or not parsed.host:
            return None
        return cls(parsed.scheme, parsed.host, parsed.port or (443 if parsed.scheme == "https" else 80))

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return f"{self.scheme}://{host}" + ("" if self.port == default else f":{self.port}")


class NotTemplated:
    """Marks a param that must be written out in the rule, never rendered from a delivery.

    Use as `table: Annotated[str, NotTemplated()]`; the rule loader refuses a template there.
    """

    def __repr__(self) -> str:
        return "NotTemplated()"


class DatabaseEngines:
    """One SQLAlchemy async engine per database URL, created on first use, disposed together."""

    def __init__(self, factory: Callable[[str], AsyncEngine]) -> None:
        self._factory = factory
        self._engines: dict[str, AsyncEngine] = {}

    def get(self, url: str) -> AsyncEngine:
        engine = self._engines.get(url)
        if engine is None:
            engine = self._engines[url] = self._factory(url)
        return engine

    async def dispose(self) -> None:
        for engine in self._engines.values():
            await engine.dispose()
        self._engines.clear()


Clock = Callable[[], datetime]


def utc_now() -> datetime:
    """The default clock of the engine and its actions: aware UTC."""
    return datetime.now(UTC)


@dataclass(slots=True, kw_only=True)
class ActionContext:
    """Everything an action may use for one execution (engine/testing.py makes one for tests)."""

    http: httpx.AsyncClient
    databases: DatabaseEngines
    delivery_id: str
    rule_id: str
    action_index: int
    clock: Clock = utc_now
    # Where `send_request` may send (engine/language/outgoing_urls.py works them out); none: nowhere.
    allowed_origins: frozenset[Origin] = frozenset()
    # The values of the settings the action declares, None when unset; no other setting.
    settings: Mapping[str, str | int | None] = field(default_factory=dict)

    @property
    def idempotency_key(self) -> str:
        return idempotency_key(self.delivery_id, self.rule_id, self.action_index)

    def setting(self, setting: Setting[V]) -> V | None:
        """The value of one of the action's settings, checked by its kind; None when it is unset."""
        if setting.variable not in self.settings:
            raise LookupError(
                f"{setting.variable} is not a setting of this action; "
                "list it in the action's settings to read it"
            )
        return cast("V | None", self.settings[setting.variable])


@dataclass(frozen=True, slots=True)
class ActionResult:
    """What a successful run reports for the delivery log."""

    status: int | None = None
    detail: str | None = None


class ActionFailed(Exception):
    """A run failed; `transient` failures may succeed if tried again later."""

    def __init__(
        self,
        message: str,
        *,
        transient: bool,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.transient = transient
        self.status = status
        self.retry_after = retry_after


P = TypeVar("P", bound=ActionParams)


class Action(ABC, Generic[P]):
    """An action type. Subclasses set the class attributes and implement `run`."""

    type: ClassVar[str]
    description: ClassVar[str]
    # `builtins.type`: the `type` class attribute above shadows the builtin in this body.
    Params: builtins.type[P]
    # Params whose interpolated values are escaped with this function (Slack's `text`).
    escaped_params: ClassVar[Mapping[str, Callable[[str], str]]] = {}
    # The environment variables it reads, each declared once (docs/plugins.md).
    settings: ClassVar[tuple[Setting[Any], ...]] = ()

    @abstractmethod
    async def run(self, params: P, ctx: ActionContext) -> ActionResult:
        """Perform the action once; raise `ActionFailed` on failure."""


def idempotency_key(delivery_id: str, rule_id: str, action_index: int) -> str:
    """Stable across retries of the same action for the same delivery."""
    raw = f"{delivery_id}\x1f{rule_id}\x1f{action_index}".encode()
    return hashlib.sha256(raw).hexdigest()[:32]


async def send_request(
    ctx: ActionContext,
    method: str,
    url: str,
    *,
    headers: Mapping[str, str] | None = None,
    json: Any = None,
    content: str | bytes | None = None,
    timeout: float = DEFAULT_TIMEOUT_SECONDS,  # noqa: ASYNC109 - the deadline of the whole call
    expect_status: Callable[[int], bool] | None = None,
) -> ActionResult:
    """Send one request with the Idempotency-Key; classify every failure.

    `timeout` is the deadline of the whole call: connecting, sending, and the answer's
    status and headers (a later body is read only until then, and only its start).
    Only the origins in `ctx.allowed_origins` are sent to.
    """
    all_headers = httpx.Headers(_checked_headers(method, url, headers or {}))
    # Set, not setdefault: downstream dedupes on this key, so a rule cannot replace it.
    all_headers["Idempotency-Key"] = ctx.idempotency_key
    target = _checked_origin(ctx, method, url)
    response: httpx.Response | None = None
    chunks: list[bytes] = []
    complete = False
    try:
        # One deadline for the call; a body still coming then is cut, not waited for.
        async with asyncio.timeout_at(asyncio.get_running_loop().time() + timeout):
            request = ctx.http.build_request(
                method, target, headers=all_headers, json=json, content=content, timeout=timeout
            )
            response = await ctx.http.send(request, stream=True)
            complete = await read_prefix(response, chunks)
    except (TimeoutError, httpx.TransportError, httpx.InvalidURL) as exc:
        if response is None:
            raise _send_failure(method, url, timeout, exc) from exc
        # The status and headers are the answer; a body cut short only shortens its excerpt.
    finally:
        if response is not None:
            await response.aclose()
    text = excerpt(response, b"".join(chunks)[:READ_BYTES], complete)
    return _classify(ctx, method, url, response, text, expect_status)


def _send_failure(method: str, url: str, timeout: float, exc: Exception) -> ActionFailed:
    """What failed before an answer came, and whether trying again later may help."""
    if isinstance(exc, httpx.TimeoutException | TimeoutError):
        why = type(exc).__name__ if isinstance(exc, httpx.TimeoutException) else "no answer in time"
        return ActionFailed(
            f"{method} {redact_url(url)} timed out after {timeout:g}s ({why})", transient=True
        )
    # The request itself is malformed in the next two cases: sending it again cannot help.
    if isinstance(exc, httpx.InvalidURL | httpx.UnsupportedProtocol):
        return ActionFailed(
            f"{method} {redact_url(url)} is not a usable URL: {exc}; use an absolute http:// or https:// URL",
            transient=False,
        )
    if isinstance(exc, httpx.LocalProtocolError):
        # Not `{exc}`: h11 quotes the offending header value, which may be a token.
        return ActionFailed(
            f"{method} {redact_url(url)} could not be sent ({type(exc).__name__}); "
            "check the header names and values",
            transient=False,
        )
    return ActionFailed(f"{method} {redact_url(url)} could not connect: {type(exc).__name__}", transient=True)


def _checked_origin(ctx: ActionContext, method: str, url: str) -> httpx.URL:
    """The URL, parsed once; refused when its scheme, host or port is not one allowed."""
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise _send_failure(method, url, 0, exc) from exc
    target = Origin.of(parsed)
    if target is None:
        raise ActionFailed(
            f"{method} {redact_url(url)} is not a usable URL: no http:// or https:// scheme and host; "
            "use an absolute http:// or https:// URL",
            transient=False,
        )
    if target not in ctx.allowed_origins:
        allowed = ", ".join(sorted(map(str, ctx.allowed_origins))) or "none"
        raise ActionFailed(
            f"{method} {redact_url(url)} refused: it goes to {target}, but this action may send only "
            f"to {allowed} (the scheme, host and port come from the rule or configuration, never "
            "from the delivery); write the host in the rule, e.g. 'https://crm.example.com/{{ data.id }}'",
            transient=False,
        )
    return parsed


def _checked_headers(method: str, url: str, headers: Mapping[str, str]) -> Mapping[str, str]:
    """Refuse what HTTP cannot carry before sending, naming the header but never its value."""
    for name, value in headers.items():
        if not _HEADER_NAME.fullmatch(name) or not _HEADER_VALUE.fullmatch(value):
            raise ActionFailed(
                f"{method} {redact_url(url)}: header {name[:40]!r} has a name or value HTTP cannot "
                "carry (value not shown); use printable ASCII without line breaks",
                transient=False,
            )
    return headers


def _classify(
    ctx: ActionContext,
    method: str,
    url: str,
    response: httpx.Response,
    text: str,
    expect_status: Callable[[int], bool] | None,
) -> ActionResult:
    accepted = expect_status(response.status_code) if expect_status else response.is_success
    if accepted:
        return ActionResult(status=response.status_code, detail=text)
    transient = response.status_code in TRANSIENT_STATUSES
    raise ActionFailed(
        f"{method} {redact_url(url)} answered {response.status_code}: {text}",
        transient=transient,
        status=response.status_code,
        retry_after=parse_retry_after(response.headers.get("Retry-After"), ctx.clock())
        if transient
        else None,
    )


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - now).total_seconds())


def redact_url(url: str) -> str:
    """Scheme, host and port only: credentials, paths and queries of webhook URLs are tokens."""
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL:
        return "<invalid URL>"
    if not parsed.scheme or not parsed.host:
        return "<URL without scheme or host>"
    host = f"[{parsed.host}]" if ":" in parsed.host else parsed.host
    port = f":{parsed.port}" if parsed.port else ""
    hidden = parsed.path not in ("", "/") or parsed.query or parsed.fragment
    return f"{parsed.scheme}://{host}{port}/{'…' if hidden else ''}"


__all__ = [
    "DATABASE_URL",
    "INT",
    "SECRET",
    "SECRET_URL",
    "TEXT",
    "URL",
    "Action",
    "ActionContext",
    "ActionFailed",
    "ActionParams",
    "ActionResult",
    "Clock",
    "DatabaseEngines",
    "NotTemplated",
    "Origin",
    "OutgoingURL",
    "Setting",
    "SettingKind",
    "idempotency_key",
    "parse_retry_after",
    "redact_url",
    "send_request",
    "utc_now",
]
