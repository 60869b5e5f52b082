"""Who may use the console and how its answers defend the browser (SPEC section 16)."""

from __future__ import annotations

import pytest

from engine.config import load_settings
from engine.console import access
from engine.console.access import LoginLimiter, check_listening, is_loopback, safe_next, same_origin
from engine.errors import ConfigurationError
from engine.pipeline.service import masker_for
from tests.console.conftest import PASSWORD, Console


async def test_every_page_needs_the_password_and_the_login_leads_back(console: Console) -> None:
    for path in ["/", "/rules", "/playground", "/deliveries/x", "/chart", "/playground/fields.json"]:
        answer = await console.client.get(path)
        assert answer.status_code == 302, path
        assert answer.headers["Location"].startswith("/login?next=")

    token = await console.csrf("/login")
    answer = await console.client.post("/login?next=/rules", form={"password": PASSWORD, "csrf_token": token})

    assert (answer.status_code, answer.headers["Location"]) == (302, "/rules")
    assert (await console.client.get("/rules")).status_code == 200


async def test_the_session_cookie_is_httponly_strict_and_changes_at_login(console: Console) -> None:
    first = await console.client.get("/login")
    cookie = first.headers["Set-Cookie"]
    assert "HttpOnly" in cookie
    assert "SameSite=Strict" in cookie
    assert "Secure" not in cookie  # plain http on loopback; Secure behind https (below)
    before = console.session_cookie()

    await console.login()

    after = console.session_cookie()
    assert before
    assert after
    assert before != after  # no session fixation


async def test_over_https_the_cookie_is_secure(console: Console) -> None:
    answer = await console.client.get("/login", scheme="https")

    assert "Secure" in answer.headers["Set-Cookie"]


async def test_a_wrong_password_is_refused_and_logins_are_rate_limited(console: Console) -> None:
    token = await console.csrf("/login")
    for _ in range(5):
        answer = await console.client.post("/login", form={"password": "guess", "csrf_token": token})
        assert answer.status_code == 401
        assert "wrong password" in await answer.get_data(as_text=True)

    answer = await console.client.post("/login", form={"password": PASSWORD, "csrf_token": token})

    assert answer.status_code == 429  # even the right one, until the window passes
    assert int(answer.headers["Retry-After"]) > 0
    assert (await console.client.get("/rules")).status_code == 302


async def test_logout_ends_the_session_itself(console: Console) -> None:
    await console.login()
    cookie = console.session_cookie()

    answer = await console.post("/logout")

    assert (answer.status_code, answer.headers["Location"]) == (302, "/login")
    assert console.parts.sessions.get(cookie) is None  # a copied cookie is worthless now
    assert (await console.client.get("/rules")).status_code == 302


async def test_a_post_without_the_csrf_token_is_refused_even_when_logged_in(console: Console) -> None:
    await console.login()

    missing = await console.client.post("/redeliver/d1", form={})
    wrong = await console.client.post("/redeliver/d1", form={"csrf_token": "not-it"})

    assert missing.status_code == wrong.status_code == 403
    assert console.redelivered == []


@pytest.mark.parametrize(
    "headers",
    [{"Origin": "https://evil.example"}, {"Sec-Fetch-Site": "cross-site"}, {"Origin": "null"}],
)
async def test_a_cross_site_post_is_refused_even_with_the_token(
    console: Console, headers: dict[str, str]
) -> None:
    await console.login()
    token = await console.csrf()

    answer = await console.client.post("/redeliver/d1", form={"csrf_token": token}, headers=headers)

    assert answer.status_code == 403
    assert "did not come from the console" in await answer.get_data(as_text=True)
    assert console.redelivered == []


async def test_every_answer_has_a_strict_content_security_policy(console: Console) -> None:
    await console.login()
    for path in ["/", "/rules", "/playground", "/login", "/static/console.js"]:
        answer = await console.client.get(path)
        policy = answer.headers["Content-Security-Policy"]
        assert "script-src 'self';" in policy, path
        assert "unsafe-inline" not in policy
        assert "unsafe-eval" not in policy
        assert "frame-ancestors 'none'" in policy
        assert answer.headers["X-Content-Type-Options"] == "nosniff"


@pytest.mark.console(password=None)
async def test_without_a_password_the_console_is_open_but_still_needs_csrf(console: Console) -> None:
    assert (await console.client.get("/rules")).status_code == 200
    assert (await console.client.post("/redeliver/d1", form={})).status_code == 403
    answer = await console.post("/redeliver/d1")
    assert answer.status_code == 302
    assert console.redelivered == [("d1", False)]


@pytest.mark.parametrize(
    ("host", "refused"),
    [
        ("127.0.0.1", False),
        ("::1", False),
        ("localhost", False),
        ("0.0.0.0", True),
        ("192.168.1.5", True),
        ("rules.example.com", True),
    ],
)
def test_the_console_refuses_to_listen_beyond_loopback_without_a_password(host: str, refused: bool) -> None:
    assert is_loopback(host) is not refused
    if refused:
        with pytest.raises(ConfigurationError, match="set CONSOLE_PASSWORD"):
            check_listening(host, None)
    check_listening(host, "a-password-123")


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("/rules", "/rules"),
        ("//evil.example", "/"),
        ("https://evil.example", "/"),
        ("/\\evil", "/"),
        (None, "/"),
    ],
)
def test_after_login_only_places_inside_the_console(target: str | None, expected: str) -> None:
    assert safe_next(target) == expected


def test_same_origin_reads_what_the_browser_says() -> None:
    mine = "http://127.0.0.1:8001/"
    assert same_origin(None, None, mine)
    assert same_origin("http://127.0.0.1:8001", "same-origin", mine)
    assert not same_origin("http://127.0.0.1:8002", None, mine)
    assert not same_origin(None, "same-site", mine)


def test_the_login_limiter_counts_per_client_and_in_all() -> None:
    limiter = LoginLimiter(per_client=2, overall=3, window=60)
    limiter.failed("a")
    assert limiter.retry_after("a") == 0
    limiter.failed("a")
    assert limiter.retry_after("a") > 0
    assert limiter.retry_after("b") == 0
    limiter.failed("b")
    assert limiter.retry_after("c") > 0  # three failures in all: everyone waits


def test_a_flood_of_anonymous_visits_never_pushes_out_a_logged_in_session(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(access, "MAX_SESSIONS", 3)
    sessions = access.Sessions()
    logged_in = sessions.new(authenticated=True)
    visits = [sessions.new(authenticated=False) for _ in range(10)]

    assert sessions.get(logged_in.id) is logged_in
    assert sessions.get(visits[0].id) is None  # the oldest visits went
    assert sessions.get(visits[-1].id) is visits[-1]


def test_the_console_password_is_masked_like_every_secret_and_must_be_long_enough() -> None:
    settings = load_settings({"CONSOLE_PASSWORD": "console-secret-42"})

    assert masker_for(settings).mask("logged in with console-secret-42") == "logged in with ***"
    with pytest.raises(ConfigurationError, match=r"CONSOLE_PASSWORD is 5 characters long") as refused:
        load_settings({"CONSOLE_PASSWORD": "short"})
    assert "short" not in str(refused.value)
