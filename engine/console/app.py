"""The console's Quart app: what it is given (`ConsoleParts`), its guards, login and logout.

Pages live in their own modules as blueprints (`deliveries`, `rules_page`, `playground`) and
reach the parts through `parts()`. Templates are Jinja2 with autoescaping: every value from a
delivery is text. Nothing is ever marked safe; the scripts (htmx, the editor, console.js) are
files served from `static/`, and payload text only ever reaches the page through the templates.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, cast

from quart import Blueprint, Quart, Response, current_app, g, redirect, render_template, request
from werkzeug.exceptions import HTTPException

from actions.registry import ActionRegistry
from engine.config import Settings
from engine.console.access import (
    CONTENT_SECURITY_POLICY,
    COOKIE,
    CSRF_FIELD,
    CSRF_HEADER,
    SAFE_METHODS,
    SECURITY_HEADERS,
    LoginLimiter,
    Session,
    Sessions,
    password_matches,
    safe_next,
    same_origin,
    token_matches,
)
from engine.console.catalog import CachedCatalog
from engine.language.rules import RuleSet
from engine.secrets import Masker
from engine.store import Store

log = logging.getLogger(__name__)

HERE = Path(__file__).parent
OPEN_ENDPOINTS = frozenset({"static", "console.login", "console.healthz"})


class LiveRuleSet(Protocol):
    """The rules the engine runs now, and where the newest files were refused (LiveRules)."""

    current: RuleSet
    error: str | None


# Redeliver: (delivery id, force) -> what happened, in a few words; None for an unknown id.
Redeliver = Callable[[str, bool], Awaitable[str | None]]


@dataclass
class ConsoleParts:
    """Everything the console reads and does, given by whoever serves it."""

    store: Store
    rules: LiveRuleSet
    rules_dir: Path
    fixtures_dir: Path
    registry: ActionRegistry
    masker: Masker
    secrets: Mapping[str, str]  # dry runs read them as placeholders when unset
    redeliver: Redeliver
    password: str | None = None
    read_only: bool = False
    rules_writable: bool = False
    settings: Settings | None = None  # for the health page (`stockaj-rules doctor`'s findings)
    impact_last: int = 2_000  # the playground's impact replays at most this many deliveries
    sessions: Sessions = field(default_factory=Sessions)
    fields: CachedCatalog = field(default_factory=CachedCatalog)
    logins: LoginLimiter = field(default_factory=LoginLimiter)


def parts() -> ConsoleParts:
    return cast(ConsoleParts, current_app.config["CONSOLE_PARTS"])


def session() -> Session:
    return cast(Session, g.console_session)


def create_console(console_parts: ConsoleParts) -> Quart:
    from engine.console import deliveries, health_page, playground, rules_page

    app = Quart(__name__, template_folder=str(HERE / "templates"), static_folder=str(HERE / "static"))
    app.config["CONSOLE_PARTS"] = console_parts
    app.config["MAX_CONTENT_LENGTH"] = 2 * 1024 * 1024  # a rule file, a pasted payload
    app.config["SEND_FILE_MAX_AGE_DEFAULT"] = 3600
    app.jinja_env.globals["read_only"] = console_parts.read_only
    app.jinja_env.globals["with_password"] = bool(console_parts.password)
    app.jinja_env.filters["mask"] = console_parts.masker.mask
    app.context_processor(_page_context)
    app.before_request(_guard)
    app.after_request(_secure)
    app.register_error_handler(HTTPException, _http_error)
    for blueprint in (guard, deliveries.pages, rules_page.pages, playground.pages, health_page.pages):
        app.register_blueprint(blueprint)
    return app


guard = Blueprint("console", __name__)


async def _page_context() -> dict[str, Any]:
    return {"csrf": session().csrf, "style_nonce": g.style_nonce, "logged_in": session().authenticated}


async def _guard() -> Response | None:
    """Every request: its session (a new one when it has none), the login and CSRF checks."""
    g.started = time.perf_counter()
    g.style_nonce = secrets.token_urlsafe(16)
    console = parts()
    found = console.sessions.get(request.cookies.get(COOKIE))
    g.new_session = found is None
    g.console_session = found or console.sessions.new(authenticated=not console.password)
    if request.endpoint in OPEN_ENDPOINTS and request.method in SAFE_METHODS:
        return None
    if request.method not in SAFE_METHODS:
        refused = await _forged()
        if refused is not None:
            return refused
    if request.endpoint not in OPEN_ENDPOINTS and not session().authenticated:
        if request.method in SAFE_METHODS and not request.headers.get("HX-Request"):
            return cast(Response, redirect(f"/login?next={_quoted(request.full_path)}"))
        return _plain("log in first: this console needs its password", 401)
    return None


async def _forged() -> Response | None:
    """Why a state-changing request is refused as not the console's own, or None."""
    if not same_origin(
        request.headers.get("Origin"), request.headers.get("Sec-Fetch-Site"), request.host_url
    ):
        log.warning("console: refused a %s %s from another site", request.method, request.path)
        return _plain("refused: this request did not come from the console's own pages", 403)
    form = await request.form
    given = request.headers.get(CSRF_HEADER) or form.get(CSRF_FIELD)
    if g.new_session or not token_matches(given, session().csrf):
        log.warning("console: refused a %s %s without a valid CSRF token", request.method, request.path)
        return _plain("refused: the form has expired or did not come from this console; reload the page", 403)
    return None


async def _secure(response: Response) -> Response:
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY.format(
        style_nonce=g.get("style_nonce") or "none"
    )
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    if request.endpoint != "static":
        response.headers["Cache-Control"] = "no-store"
    if "started" in g:
        response.headers["Server-Timing"] = f"app;dur={(time.perf_counter() - g.started) * 1000:.1f}"
    if g.get("new_session"):
        response.set_cookie(
            COOKIE,
            session().id,
            httponly=True,
            samesite="Strict",
            secure=request.scheme == "https",
            path="/",
        )
    return response


async def _http_error(error: HTTPException) -> Response:
    return _plain(error.description or error.name, error.code or 500)


def _plain(message: str, status: int) -> Response:
    return Response(message + "\n", status=status, content_type="text/plain; charset=utf-8")


def _quoted(path: str) -> str:
    from urllib.parse import quote

    return quote(path.rstrip("?"), safe="/")


@guard.get("/healthz")
async def healthz() -> Response:
    return _plain("ok", 200)


@guard.route("/login", methods=["GET", "POST"])
async def login() -> Any:
    console = parts()
    target = safe_next(request.args.get("next"))
    if not console.password:
        return redirect(target)
    if request.method == "GET":
        return await render_template("login.html", next=target, problem=None)
    client = request.remote_addr or "unknown"
    wait = console.logins.retry_after(client)
    if wait:
        response = await _login_page(target, f"too many failed logins: try again in {wait} s", 429)
        response.headers["Retry-After"] = str(wait)
        return response
    given = (await request.form).get("password", "")
    if not password_matches(given, console.password):
        console.logins.failed(client)
        log.warning("console: failed login from %s", client)
        return await _login_page(target, "wrong password", 401)
    console.sessions.drop(session().id)  # a new id once logged in: no session fixation
    g.console_session = console.sessions.new(authenticated=True)
    g.new_session = True
    return redirect(target)


async def _login_page(target: str, problem: str, status: int) -> Response:
    return Response(await render_template("login.html", next=target, problem=problem), status=status)


@guard.post("/logout")
async def logout() -> Any:
    console = parts()
    console.sessions.drop(session().id)
    g.console_session = console.sessions.new(authenticated=not console.password)
    g.new_session = True
    return redirect("/login" if console.password else "/")
