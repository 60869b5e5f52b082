"""Bad configuration ends in one masked line: never a traceback, never a secret (spec section 10).

Three layers: examples of each kind of mistake against `load_settings`; property-based
tests (hypothesis) that throw random malformed values at every variable of `Settings`
(URLs with random ports, hosts, userinfo and percent-escapes, numbers, unicode, control
characters, very long values) next to secrets that must never show in the message; and
the real commands, in-process through `engine.cli.main.main` and in a subprocess as a shell
runs them, which must exit 2 with one line on stderr.

Run with `--hypothesis-show-statistics` to see how many examples each property tried
and how many of them were refused (the `event`s).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, get_args, get_origin
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from engine.cli import main as cli_module
from engine.config import Settings, load_settings
from engine.errors import ConfigurationError
from tests.examples import examples

WEBHOOK_SECRET = "whsec-config-5ecret-2f9c"
CRM_TOKEN = "crm-t0ken-5ecret-61"
PO_TOKEN = "po-t0ken-5ecret-44"
DB_PASSWORD = "db-pa55word-7e1d"
VARIABLES = {name.upper(): info for name, info in Settings.model_fields.items()}
# Variables whose value is itself a secret: never shown, whatever is wrong with it.
SECRET_VARIABLES = sorted(
    name for name in VARIABLES if any(w in name for w in ("SECRET", "TOKEN", "PASSWORD"))
)
URL_VARIABLES = sorted(name for name in VARIABLES if name.endswith("_URL"))


def refusal(environ: dict[str, str]) -> str:
    """The message `load_settings` refuses `environ` with; fails the test if it accepts it."""
    with pytest.raises(ConfigurationError) as raised:
        load_settings(environ)
    return str(raised.value)


def printable_forms(secret: str) -> set[str]:
    """The ways a secret could be written in a message: as is, percent-encoded, escaped."""
    escaped = "".join(c if c.isprintable() else ascii(c)[1:-1] for c in secret)
    return {secret, quote(secret, safe=""), quote(secret), escaped, repr(secret)[1:-1]}


def assert_one_clean_line(message: str, hidden: list[str]) -> None:
    assert message.isprintable(), repr(message)  # one line: no newline, no control character
    assert len(message) <= 600, len(message)
    for secret in hidden:
        for form in printable_forms(secret):
            assert form not in message, (form, message)


# --- examples ---------------------------------------------------------------------------------


@pytest.mark.parametrize("variable", ["DATABASE_URL", "SYNC_DATABASE_URL"])
@pytest.mark.parametrize(
    ("value", "says"),
    [
        (f"postgresql://app:{DB_PASSWORD}@db.internal:abc/app", "port 'abc' is not a number"),
        (f"postgresql://app:{DB_PASSWORD}@db.internal:99999/app", "port '99999' is out of range"),
        (f"postgresql://app:{DB_PASSWORD}@[::1/app", "not a database URL"),
        (f"postgresql://app:{DB_PASSWORD}@db1:5432,db2:x/app", "port 'x' is not a number"),
        (f"postgresql+asyncpg://app:{quote(DB_PASSWORD + '/@:')}@db:5432/app?timeout=soon", "timeout"),
        ("sqlite+aiosqlite:///data/rules.db?timeout=soon", "timeout"),
    ],
)
def test_a_malformed_database_url_is_one_line_without_its_password(
    variable: str, value: str, says: str
) -> None:
    message = refusal({variable: value})

    assert message.startswith(f"{variable}: "), message
    assert says in message, message
    assert message.endswith(f"fix {variable} in the environment"), message
    assert_one_clean_line(message, [DB_PASSWORD, DB_PASSWORD + "/@:"])


@pytest.mark.parametrize(
    ("value", "says"),
    [
        (f"redis://user:{DB_PASSWORD}@cache:abc/0", "port 'abc' is not a number"),
        (f"redis://:{DB_PASSWORD}@cache:6379/zero", "database 'zero' is not a number"),
        (f"rediss://:{DB_PASSWORD}@cache:70000/0", "port '70000' is out of range"),
        (f"redis://:{DB_PASSWORD}@cache:6379/0?socket_timeout=soon", "not a usable Redis URL"),
        (f"redis://:{DB_PASSWORD}@[::1/0", "not a usable Redis URL"),
    ],
)
def test_a_malformed_redis_url_is_one_line_without_its_password(value: str, says: str) -> None:
    message = refusal({"REDIS_URL": value})

    assert message.startswith("REDIS_URL: "), message
    assert says in message, message
    assert_one_clean_line(message, [DB_PASSWORD])


def test_a_bad_port_still_shows_the_url_with_its_password_hidden() -> None:
    message = refusal({"DATABASE_URL": f"postgresql://app:{DB_PASSWORD}@db.internal:abc/app"})

    assert "(got 'postgresql://app:***@db.internal:abc/app')" in message, message


@pytest.mark.parametrize(
    ("holder", "secret"),
    [
        ("STOCKAJ_WEBHOOK_SECRET", WEBHOOK_SECRET),
        ("STOCKAJ_WEBHOOK_SECRET_PREVIOUS", WEBHOOK_SECRET),
        ("PURCHASE_ORDER_TOKEN", PO_TOKEN),
        ("SECRET_CRM_TOKEN", CRM_TOKEN),
        ("PGPASSWORD", CRM_TOKEN),  # not the engine's, still a password
        ("SLACK_WEBHOOK_URL", "https://hooks.slack.com/services/T0/B0/XXXXXXXXXXXXXXXX"),
    ],
)
@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("MAX_BODY_BYTES", "{secret}"),
        ("PORT", "80{secret}"),
        ("LOG_LEVEL", "{secret}\n"),
        ("WORKER_CONCURRENCY", "{half}"),
        ("REQUEUE_AFTER_SECONDS", "x {quoted} x"),
        ("REDIS_URL", "cache:6379/{secret}"),
        ("DATABASE_URL", "nonsense://{secret}"),
    ],
)
def test_a_setting_holding_a_secret_never_echoes_it(
    holder: str, secret: str, variable: str, value: str
) -> None:
    shown = value.format(secret=secret, half=secret[: len(secret) // 2], quoted=quote(secret, safe=""))

    message = refusal({holder: secret, variable: shown})

    assert message.startswith(f"{variable}: "), message
    assert_one_clean_line(message, [secret, secret[: len(secret) // 2]])


@pytest.mark.parametrize("variable", ["RULES_DIR", "HOST", "LOG_LEVEL", "PORT"])
@pytest.mark.parametrize("value", ["{secret}", "/srv/{secret}/rules"])
def test_a_setting_that_holds_a_secret_is_refused_at_start_so_it_is_never_shown_later(
    variable: str, value: str
) -> None:
    message = refusal({"SECRET_CRM_TOKEN": CRM_TOKEN, variable: value.format(secret=CRM_TOKEN)})

    assert message == (
        f"{variable}: holds the value of a secret, which is not shown (a secret belongs in its own "
        f"variable); fix {variable} in the environment"
    )


def test_a_short_value_of_a_variable_named_like_a_secret_does_not_block_a_setting() -> None:
    settings = load_settings({"SESSION_TOKEN_TTL": "8", "MAX_ATTEMPTS": "8"})

    assert settings.max_attempts == 8


def test_a_url_may_name_what_a_secret_names() -> None:
    dsn = "postgresql+asyncpg://sync:sync-pa55word@warehouse.internal:5432/warehouse"
    settings = load_settings(
        {"SECRET_WAREHOUSE_DSN": dsn, "SYNC_DATABASE_URL": dsn, "SECRET_DB": "warehouse"}
    )

    assert settings.plugins.values["SYNC_DATABASE_URL"] == dsn


def test_a_database_password_put_in_another_setting_is_not_echoed() -> None:
    message = refusal(
        {
            "DATABASE_URL": f"postgresql://app:{quote(DB_PASSWORD + '@')}@db/app",
            "MAX_ATTEMPTS": DB_PASSWORD + "@",
        }
    )

    assert message.startswith("MAX_ATTEMPTS: "), message
    assert "holds the value of a secret, which is not shown" in message, message
    assert_one_clean_line(message, [DB_PASSWORD])


def short_secret_message(variable: str, length: int) -> str:
    """The whole message for a short secret: there is no room in it for the value."""
    size = f"{length} character{'s' if length > 1 else ''}"
    if variable.startswith("STOCKAJ_WEBHOOK_SECRET"):
        return (
            f"{variable} is {size} long; a secret needs at least 16 to be masked reliably and resist "
            f"guessing: set a longer secret in Stockaj and in {variable}, "
            "e.g. python3 -c 'import secrets; print(secrets.token_hex(32))'"
        )
    return (
        f"{variable} is {size} long; a secret needs at least 8 to be masked reliably: "
        f"set {variable} to the whole credential, or unset it"
    )


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("STOCKAJ_WEBHOOK_SECRET", "x"),
        ("STOCKAJ_WEBHOOK_SECRET", "fifteen-chars-x"),
        ("STOCKAJ_WEBHOOK_SECRET_PREVIOUS", "abc"),
        ("PURCHASE_ORDER_TOKEN", "tok"),
        ("SECRET_CRM_TOKEN", "a"),
        ("SECRET_ERP", "seven-7"),
    ],
)
def test_a_short_secret_is_refused_naming_the_variable_and_its_length_never_its_value(
    variable: str, value: str
) -> None:
    message = refusal({variable: value, "PORT": "eighty"})

    assert message == short_secret_message(variable, len(value))


def test_secrets_of_the_minimum_lengths_and_the_development_secret_are_accepted() -> None:
    settings = load_settings(
        {
            "STOCKAJ_WEBHOOK_SECRET": "dev-secret-not-for-production",  # scripts/run's
            "STOCKAJ_WEBHOOK_SECRET_PREVIOUS": "s" * 16,
            "PURCHASE_ORDER_TOKEN": "t" * 8,
            "SECRET_CRM_TOKEN": "c" * 8,
            "SECRET_EMPTY": "",  # empty is unset: nothing to leak
        }
    )
    assert settings.require_webhook_secret() == ("dev-secret-not-for-production", "s" * 16)


@pytest.mark.parametrize(
    ("variable", "value", "says"),
    [
        ("REQUEUE_AFTER_SECONDS", "inf", "REQUEUE_AFTER_SECONDS: Input should be a finite number"),
        (
            "REQUEUE_AFTER_SECONDS",
            "1e300",
            "REQUEUE_AFTER_SECONDS: Input should be less than or equal to 86400",
        ),
        ("RETRY_BASE_SECONDS", "1e309", "RETRY_BASE_SECONDS: Input should be a finite number"),
        ("BODY_RETENTION_DAYS", "1e12", "BODY_RETENTION_DAYS: Input should be less than or equal to 36500"),
        ("DELIVERY_RETENTION_DAYS", "nan", "DELIVERY_RETENTION_DAYS: Input should be a finite number"),
        ("WORKER_CONCURRENCY", "100000000", "WORKER_CONCURRENCY: Input should be less than or equal to 1024"),
        ("MAX_ATTEMPTS", "9" * 5000, "MAX_ATTEMPTS: Unable to parse input string as an integer"),
    ],
)
def test_numbers_the_engine_cannot_use_are_refused_at_start(variable: str, value: str, says: str) -> None:
    message = refusal({variable: value})

    assert message.startswith(says), message
    assert_one_clean_line(message, [])


@pytest.mark.parametrize("host", ["a" * 64, "ü" * 70, "db..internal"])
def test_a_host_the_resolver_cannot_take_is_refused_at_start(host: str) -> None:
    message = refusal({"HOST": host})

    assert message.startswith("HOST: not a host name or IP address; write e.g. 127.0.0.1 or 0.0.0.0"), message


def test_a_very_long_value_is_shown_cut_with_its_length() -> None:
    message = refusal({"PORT": "8" * 100_000})

    assert "… (100000 characters)" in message, message
    assert_one_clean_line(message, [])


@pytest.mark.parametrize("variable", ["STOCKAJ_WEBHOOK_SECRET", "SECRET_CRM_TOKEN", "PURCHASE_ORDER_TOKEN"])
def test_a_secret_that_is_not_utf8_text_is_refused_without_showing_it(variable: str) -> None:
    value = "whsec-\udcff\udcfe-long-enough-secret"  # bytes 0xff 0xfe, as os.environ decodes them

    message = refusal({variable: value})

    assert message == (
        f"{variable}: not UTF-8 text (byte 0xff at character 7) (got a value that is not shown); "
        f"fix {variable} in the environment"
    )


@pytest.mark.parametrize("variable", ["DATABASE_URL", "HOST", "LOG_LEVEL"])
def test_a_setting_that_is_not_utf8_text_is_refused_with_the_bytes_escaped(variable: str) -> None:
    message = refusal({variable: "h\udcffost"})

    assert message.startswith(f"{variable}: not UTF-8 text (byte 0xff at character 2) (got "), message
    assert_one_clean_line(message, [])


def test_a_rules_folder_whose_name_is_not_utf8_is_accepted() -> None:
    assert load_settings({"RULES_DIR": "rules-\udcff"}).rules_dir == Path(os.fsdecode(b"rules-\xff"))


def test_a_rules_folder_name_longer_than_the_system_allows_is_refused() -> None:
    message = refusal({"RULES_DIR": "r" * 5000})

    assert message.startswith(
        "RULES_DIR: a path component is longer than 255 bytes, or the path than 4095"
    ), message
    assert_one_clean_line(message, [])


def test_control_characters_in_a_value_never_reach_the_terminal() -> None:
    message = refusal({"LOG_FORMAT": "json\x1b[2J\r\n\x85\u2028\x00"})

    assert "\\x1b[2J\\r\\n\\x85\\u2028\\x00" in message, message
    assert_one_clean_line(message, [])


# --- properties ---------------------------------------------------------------------------------

# Secrets are any text at least as long as the shortest accepted secret; URL passwords too.
# NUL excluded: no environment can hold it.
secret_text = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=16, max_size=40)
# Any code point, and often one that breaks parsers or terminals: control, bidi, surrogates.
junk_text = st.text(
    st.one_of(st.characters(), st.sampled_from("\x00\x1b\n\r\x85\u2028\u202e\udcff\ud800%@:/[]?#")),
    max_size=30,
)
numbers = st.one_of(
    st.integers().map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["1e309", "-0", "0x10", "1_0", " 8 ", "٨", "inf", "NaN", "", "9" * 5000]),
)
hosts = st.one_of(
    st.sampled_from(["db.internal", "127.0.0.1", "[::1]", "[::1", "::1]", "", "h\u00e9te", "a@b"]),
    junk_text,
)
ports = st.one_of(st.integers(-10, 10**6).map(str), junk_text, st.just(""))
schemes = st.one_of(
    st.sampled_from(
        [
            *("postgresql", "postgresql+asyncpg", "postgres", "sqlite", "sqlite+aiosqlite", "redis"),
            *("rediss", "unix", "http", "https", "mysql", "postgresql+psycopg2", ""),
        ]
    ),
    junk_text,
)


@st.composite
def urls(draw: st.DrawFn) -> tuple[str, list[str]]:
    """A URL with random parts, and the passwords it holds (raw and as written)."""
    scheme = draw(schemes)
    separator = draw(st.sampled_from(["://", "://", "://", ":/", ":", "//", ""]))
    hidden: list[str] = []
    userinfo = ""
    if draw(st.booleans()):
        password = draw(secret_text)
        written = quote(password, safe="") if draw(st.booleans()) else password
        hidden += [password, written]
        user = draw(st.sampled_from(["app", "", "user%40corp", "u:v"]))
        userinfo = f"{user}:{written}@"
    host = draw(hosts)
    port = f":{draw(ports)}" if draw(st.booleans()) else ""
    path = draw(st.sampled_from(["/app", "/0", "", "/", "/x/y", "/db?timeout=soon", "/0?db=x"]))
    extra = draw(st.one_of(st.just(""), junk_text.map(lambda text: "?" + text)))
    return f"{scheme}{separator}{userinfo}{host}{port}{path}{extra}", hidden


@st.composite
def malformed_values(draw: st.DrawFn, variable: str, secrets: list[str]) -> tuple[str, list[str]]:
    """A value for `variable` that is probably wrong, maybe holding a secret; and new secrets in it."""
    parts: list[str] = []
    hidden: list[str] = []
    annotation = VARIABLES[variable].annotation
    kinds = [junk_text, numbers] if variable not in URL_VARIABLES else [junk_text]
    for _ in range(draw(st.integers(1, 3))):
        if variable in URL_VARIABLES and draw(st.booleans()):
            url, passwords = draw(urls())
            parts.append(url)
            hidden += passwords
        elif secrets and draw(st.integers(0, 3)) == 0:
            secret = draw(st.sampled_from(secrets))
            parts.append(draw(st.sampled_from([secret, quote(secret, safe=""), secret[:8]])))
        else:
            parts.append(draw(st.one_of(*kinds)))
    if draw(st.integers(0, 20)) == 0:
        parts.append(draw(st.sampled_from(["x", "8", "/"])) * draw(st.integers(1000, 200_000)))
    event(f"{variable} ({_kind(annotation)})")
    return "".join(parts), hidden


def _kind(annotation: Any) -> str:
    arguments = [a for a in get_args(annotation) if a is not type(None)]
    if get_origin(annotation) is not None and arguments:
        return "literal" if all(isinstance(a, str) for a in arguments) else _kind(arguments[0])
    return getattr(annotation, "__name__", str(annotation))


@st.composite
def hostile_environments(draw: st.DrawFn) -> tuple[dict[str, str], list[str], list[str]]:
    """An environment with secrets and 1-3 malformed settings; the secrets; the malformed names."""
    environ: dict[str, str] = {}
    for variable in SECRET_VARIABLES:
        if draw(st.booleans()):
            environ[variable] = draw(secret_text)
    for name in draw(st.lists(st.from_regex(r"[A-Z][A-Z0-9_]{0,10}", fullmatch=True), max_size=2)):
        environ[f"SECRET_{name}"] = draw(secret_text)
    foreign = draw(st.sampled_from(["PGPASSWORD", "GITHUB_TOKEN", "AWS_SECRET_ACCESS_KEY", "MY_API_TOKEN"]))
    environ[foreign] = draw(secret_text)
    secrets = list(environ.values())
    if draw(st.booleans()):  # a URL password of another variable
        url, passwords = draw(urls())
        environ["UPSTREAM_URL"] = url
        secrets += passwords
    shown = sorted(set(VARIABLES) - set(SECRET_VARIABLES))
    malformed = draw(st.lists(st.sampled_from(shown), min_size=1, max_size=3, unique=True))
    for variable in malformed:
        value, passwords = draw(malformed_values(variable, [s for s in secrets if len(s) >= 8]))
        environ[variable] = value
        secrets += passwords
    return environ, secrets, malformed


@pytest.mark.timeout(300)  # about 30 s alone at 1,000 examples; more on a machine busy with other tests
@settings(
    max_examples=examples(250, 2000),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(hostile_environments())
def test_any_malformed_settings_give_one_line_naming_a_variable_and_no_secret(
    case: tuple[dict[str, str], list[str], list[str]],
) -> None:
    environ, secrets, malformed = case
    try:
        load_settings(environ)
    except ConfigurationError as exc:
        message = str(exc)
        event("refused")
        assert_one_clean_line(message, [s for s in secrets if len(s) >= 4])
        for secret in secrets:  # not even a piece of one
            assert not [piece for piece in pieces(secret) if piece in message], (secret, message)
        if not any(secret in name for secret in secrets for name in malformed if len(secret) >= 4):
            # (hypothesis tries engine constants as secrets: one inside a name is masked there too)
            assert message.startswith(tuple(malformed)), message
        assert message.endswith(" in the environment"), message
    else:
        event("accepted")


def pieces(secret: str) -> set[str]:
    """Runs of 8 characters of `secret` that cannot come from a message's own words.

    Messages are ASCII (but for `…`), and hypothesis borrows the engine's string constants
    ("a valid ", "password") for its examples: only runs with another character count.
    """
    runs = {secret[i : i + 8] for i in range(len(secret) - 7)}
    return {run for run in runs if any(ord(c) > 127 and c != "…" for c in run)}


@st.composite
def short_secret_environments(draw: st.DrawFn) -> tuple[dict[str, str], str]:
    """A valid environment but for one secret variable shorter than its minimum."""
    variable = draw(st.sampled_from([*SECRET_VARIABLES, "SECRET_CRM_TOKEN", "SECRET_X"]))
    minimum = 16 if variable.startswith("STOCKAJ_WEBHOOK_SECRET") else 8
    environ = {variable: draw(st.text(st.characters(codec="utf-8"), min_size=1, max_size=minimum - 1))}
    # Other settings may be malformed too: the short secret is reported first, as nothing
    # could mask it in the other messages.
    for other in draw(st.lists(st.sampled_from(sorted(VARIABLES)), max_size=2, unique=True)):
        if other != variable and other not in SECRET_VARIABLES:
            environ[other] = draw(junk_text)
    return environ, variable


@pytest.mark.timeout(120)
@settings(max_examples=examples(500, 2000), deadline=None)
@given(short_secret_environments())
def test_a_short_secret_is_reported_first_by_name_and_length_only(case: tuple[dict[str, str], str]) -> None:
    environ, variable = case
    length = len(environ[variable])

    message = refusal(environ)

    assert message == short_secret_message(variable, length)


# --- the commands ---------------------------------------------------------------------------------

_CONFIG_PREFIXES = ("SECRET_",)
BAD_SETTINGS = {
    "database port": {"DATABASE_URL": f"postgresql://app:{DB_PASSWORD}@db.internal:abc/app"},
    "sync database port": {"SYNC_DATABASE_URL": f"postgresql://sync:{DB_PASSWORD}@wh:abc/wh"},
    "redis port": {"REDIS_URL": f"redis://:{DB_PASSWORD}@cache:abc/0"},
    "secret in a number": {"SECRET_CRM_TOKEN": CRM_TOKEN, "MAX_BODY_BYTES": CRM_TOKEN},
    "short webhook secret": {"STOCKAJ_WEBHOOK_SECRET": "abc"},
    "secret as the rules folder": {"SECRET_CRM_TOKEN": CRM_TOKEN, "RULES_DIR": CRM_TOKEN},
}
COMMANDS = {
    "check": ["check"],
    "test": ["test"],
    "replay": ["replay", "fixture.json"],
    "serve": ["serve", "--port", "8000"],
    "worker": ["worker"],
    "deliveries list": ["deliveries", "list"],
    "deliveries show": ["deliveries", "show", "some-id"],
    "deliveries export": ["deliveries", "export", "some-id", "-o", "out.json"],
    "redeliver": ["redeliver", "some-id"],
    "db upgrade": ["db", "upgrade"],
}


def _environment(extra: dict[str, str]) -> dict[str, str]:
    """This process's environment without any engine setting, plus `extra`."""
    kept = {
        name: value
        for name, value in os.environ.items()
        if name.upper() not in VARIABLES and not name.startswith(_CONFIG_PREFIXES)
    }
    return {**kept, "STOCKAJ_WEBHOOK_SECRET": WEBHOOK_SECRET, **extra}


@pytest.mark.parametrize("command", COMMANDS.values(), ids=COMMANDS.keys())
@pytest.mark.parametrize("bad", BAD_SETTINGS.values(), ids=BAD_SETTINGS.keys())
def test_every_command_stops_on_bad_settings_with_one_masked_line(
    command: list[str], bad: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        monkeypatch.delenv(name)
    for name, value in _environment(bad).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(sys, "argv", ["stockaj-rules", *command])

    with pytest.raises(SystemExit) as exited:
        cli_module.main()

    captured = capsys.readouterr()
    assert exited.value.code == 2, captured
    assert captured.out == ""
    assert captured.err.count("\n") == 1, captured.err
    assert captured.err.startswith("configuration error: "), captured.err
    assert_one_clean_line(
        captured.err.rstrip("\n"), [DB_PASSWORD, CRM_TOKEN, WEBHOOK_SECRET, "abc"[:0] or DB_PASSWORD]
    )
    assert list(tmp_path.iterdir()) == [], "nothing is created before the settings are good"


def _console_script() -> str:
    found = shutil.which("stockaj-rules", path=str(Path(sys.executable).parent))
    if found is None:
        pytest.fail("the stockaj-rules console script is not installed next to this Python")
    return found


# A few runs as a shell sees them (each start costs seconds): the in-process test above has the rest.
SHELL_RUNS = {
    "check database port": (["check"], "database port"),
    "check secret in a number": (["check"], "secret in a number"),
    "check short webhook secret": (["check"], "short webhook secret"),
    "serve sync database port": (["serve", "--port", "8000"], "sync database port"),
    "serve redis port": (["serve", "--port", "8000"], "redis port"),
}


@pytest.mark.parametrize(("command", "bad"), SHELL_RUNS.values(), ids=SHELL_RUNS.keys())
def test_the_console_script_stops_on_bad_settings_with_exit_2_and_one_line(
    command: list[str], bad: str, tmp_path: Path
) -> None:
    completed = subprocess.run(
        [_console_script(), *command],
        cwd=tmp_path,
        env=_environment(BAD_SETTINGS[bad]),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert completed.returncode == 2, completed.stderr
    assert "Traceback" not in completed.stderr
    assert completed.stderr.count("\n") == 1, completed.stderr
    assert completed.stderr.startswith("configuration error: ")
    assert_one_clean_line(completed.stderr.rstrip("\n"), [DB_PASSWORD, CRM_TOKEN, WEBHOOK_SECRET])
    assert list(tmp_path.iterdir()) == []


def test_a_url_setting_holding_bytes_that_are_not_utf8_is_one_line_not_a_traceback() -> None:
    # Found by the property test once CONSOLE_URL joined the settings: the masking of the
    # password guessed from a malformed URL failed to percent-encode a lone surrogate.
    environ = {
        "STOCKAJ_WEBHOOK_SECRET": "0" * 16,
        "CONSOLE_URL": "postgresql://db.internal/app?\ud800postgresql://app:" + "0" * 16 + "@db.internal/app",
    }
    with pytest.raises(ConfigurationError) as raised:
        load_settings(environ)
    assert "\n" not in str(raised.value)
    assert "0" * 16 not in str(raised.value)
