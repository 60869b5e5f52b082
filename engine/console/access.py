"""Who may use the console, and how its pages defend themselves in the browser.

- Sessions live on the server (this process's memory, bounded): the cookie holds only a random
  id, HttpOnly, SameSite=Strict, Secure when the request came over HTTPS. Logging out ends the
  session itself, so a copied cookie is worthless afterwards. A restart logs everyone out.
- With CONSOLE_PASSWORD, every page but the login form and the static files needs a logged-in
  session. Without it the console must listen on loopback only (checked at start, see
  `check_listening`): it is then open to this machine's users, as `stockaj-rules` itself is.
- Every request that changes something (any method but GET and HEAD) carries the session's
  CSRF token (a form field or the `X-CSRF-Token` header htmx sends) and, when the browser says
  where it comes from (`Sec-Fetch-Site`, `Origin`), comes from the console's own origin.
- Failed logins are limited per client address and in all (`LoginLimiter`).
- Every answer carries a strict Content-Security-Policy (scripts and styles from the console
  only, no inline script, `frame-ancestors 'none'`) and is not cached.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from engine.errors import ConfigurationError

COOKIE = "stockaj_console"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"
SESSION_SECONDS = 12 * 3600
MAX_SESSIONS = 10_000
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

# `style_nonce`: the editor (CodeMirror) writes its style sheets as <style> elements, given the
# page's nonce; no script is ever allowed inline.
CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self' 'nonce-{style_nonce}'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "font-src 'self'",
        "form-action 'self'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
    ]
)
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    # Not no-referrer: with it, browsers send `Origin: null` on the console's own form posts.
    "Referrer-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}


@dataclass(slots=True)
class Session:
    id: str
    csrf: str
    authenticated: bool
    expires: float
    flash: str | None = None  # what the last action did, shown once on the next page


class Sessions:
    """Sessions by id, each living SESSION_SECONDS; beyond MAX_SESSIONS the oldest are dropped.

    Sessions that are not logged in (a visit to the login form) are kept apart: a flood of
    anonymous requests can never push a logged-in session out.
    """

    def __init__(self) -> None:
        self._anonymous: OrderedDict[str, Session] = OrderedDict()
        self._logged_in: OrderedDict[str, Session] = OrderedDict()

    def new(self, authenticated: bool) -> Session:
        session = Session(
            secrets.token_urlsafe(32),
            secrets.token_urlsafe(32),
            authenticated,
            time.monotonic() + SESSION_SECONDS,
        )
        kept = self._logged_in if authenticated else self._anonymous
        kept[session.id] = session
        while len(kept) > MAX_SESSIONS:
            kept.popitem(last=False)
        return session

    def get(self, session_id: str | None) -> Session | None:
        if not session_id:
            return None
        for kept in (self._logged_in, self._anonymous):
            session = kept.get(session_id)
            if session is not None:
                if session.expires >= time.monotonic():
                    return session
                del kept[session_id]
        return None

    def drop(self, session_id: str) -> None:
        self._anonymous.pop(session_id, None)
        self._logged_in.pop(session_id, None)


@dataclass(slots=True)
class LoginLimiter:
    """At most `per_client` failed logins per client address and `overall` in all, per `window` s."""

    per_client: int = 5
    overall: int = 50
    window: float = 300.0
    _failures: dict[str, deque[float]] = field(default_factory=dict)
    _all: deque[float] = field(default_factory=deque)

    def retry_after(self, client: str) -> int:
        """Seconds until `client` may try again; 0 when it may now."""
        now = time.monotonic()
        waits = [self._wait(self._all, self.overall, now)]
        mine = self._failures.get(client)
        if mine is not None:
            waits.append(self._wait(mine, self.per_client, now))
        return max(waits)

    def failed(self, client: str) -> None:
        now = time.monotonic()
        self._all.append(now)
        if len(self._failures) > MAX_SESSIONS:  # bounded: forget the clients seen longest ago
            self._failures.pop(next(iter(self._failures)))
        self._failures.setdefault(client, deque()).append(now)

    def _wait(self, failures: deque[float], limit: int, now: float) -> int:
        while failures and failures[0] <= now - self.window:
            failures.popleft()
        if len(failures) < limit:
            return 0
        return max(1, int(failures[-limit] + self.window - now) + 1)


def password_matches(given: str, password: str) -> bool:
    """Constant time, whatever the lengths."""
    return hmac.compare_digest(
        hashlib.sha256(given.encode("utf-8", "surrogatepass")).digest(),
        hashlib.sha256(password.encode("utf-8", "surrogatepass")).digest(),
    )


def token_matches(given: str | None, expected: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


def same_origin(origin: str | None, fetch_site: str | None, host_url: str) -> bool:
    """Whether the browser's own account of where a request comes from allows it (absent: yes)."""
    if fetch_site is not None and fetch_site not in ("same-origin", "none"):
        return False
    if origin is None:
        return True
    if origin == "null":  # a sandboxed frame, a file, or a page that hid its origin
        return fetch_site == "same-origin"
    mine = urlsplit(host_url)
    theirs = urlsplit(origin)
    return (theirs.scheme, theirs.netloc) == (mine.scheme, mine.netloc)


def safe_next(target: str | None) -> str:
    """A place inside the console to go after logging in; anything else is the log."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_listening(host: str, password: str | None) -> None:
    """Refuse to listen beyond loopback without a password (SPEC section 16)."""
    if not password and not is_loopback(host):
        raise ConfigurationError(
            f"the console would listen on {host}, beyond this machine, without a password: set "
            "CONSOLE_PASSWORD (at least 8 characters), or set CONSOLE_HOST=127.0.0.1 and reach it "
            "through a TLS proxy or an SSH tunnel"
        )
