"""What a configuration error may show: one printable line that never holds a secret.

A setting's value (or a piece of it) reaches a message only through `shown()`, which
knows every secret of the environment: the values of variables named like secrets
(`*SECRET*`, `*TOKEN*`, `*PASSWORD*`, ...) or declared secrets by a plugin (engine/plugins.py),
and the password of any URL. A value that holds a secret, or shares a run of `SHARED_RUN` characters
with one, is not shown at all; whatever variable it was put in. Validators raise
`SettingProblem` so the pieces they quote go through the same gate, and
`printable_line()` is the last pass over every line: secrets masked, control
characters escaped, length capped.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any, Literal
from urllib.parse import quote, unquote

from pydantic import ValidationError

MASK = "***"
NOT_SHOWN = "a value that is not shown"
# A value sharing this many consecutive characters with a secret is not shown: it may be a
# piece of one (a secret split across two lines of an env file, a truncated paste).
SHARED_RUN = 8
# Shorter secrets are masked only where they are the whole value: they would blot out words.
MIN_MASKED = 4
SHOWN_CHARS = 80
MAX_LINE = 500
SECRET_WORDS = ("SECRET", "TOKEN", "PASSWORD", "PASSWD", "CREDENTIAL", "API_KEY", "PRIVATE_KEY", "ACCESS_KEY")
# URLs shown with their userinfo hidden; other URL settings may hold tokens in their path.
SHOWN_URLS = ("DATABASE_URL", "REDIS_URL")
# How a value may be shown: as it is (still not when it holds a secret), as a URL with its
# password hidden, or not at all. None: as the variable's name says (`shown()`).
Display = Literal["value", "redacted URL", "hidden"]
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*:")
_URL = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*)://(?P<rest>.*)", re.DOTALL)
# SQLAlchemy's reading of userinfo: the password runs from the first ':' to the first '@'.
_SQLALCHEMY_USERINFO = re.compile(r"[\w+]+://[^:/]*:(?P<password>[^@]*)@")
_SECRET_QUERY = re.compile(r"([?&][^=&#]*(?:password|secret|token|key)[^=&#]*=)[^&#]*", re.IGNORECASE)


class SettingProblem(ValueError):
    """A validator's complaint: `text` with `{part}` filled by `part` as `shown()` allows."""

    def __init__(self, text: str, part: object = None) -> None:
        super().__init__(text)
        self.text = text
        self.part = part


def is_secret_name(variable: str) -> bool:
    return any(word in variable.upper() for word in SECRET_WORDS)


def environment_secrets(environ: Mapping[str, str], secret_names: Iterable[str] = ()) -> list[str]:
    """Every secret an environment holds, longest first; the empty value is none.

    `secret_names`: variables that hold secrets whatever their names (declared by plugins).
    """
    declared = set(secret_names)
    found: set[str] = set()
    for name, value in environ.items():
        if is_secret_name(name) or name in declared:
            found.add(value)
        found.update(url_passwords(value))
        if name.upper().endswith("_URL") or _SCHEME.match(value):
            found.update(_possible_passwords(value))
    return sorted((value for value in found if value), key=len, reverse=True)


def url_passwords(value: str) -> list[str]:
    """The password of `value` as each URL parser reads it, as written and percent-decoded."""
    candidates: set[str] = set()
    match = _SQLALCHEMY_USERINFO.match(value)
    if match:
        candidates.add(match["password"])
    userinfo = _userinfo(value)
    if userinfo is not None and ":" in userinfo:
        candidates.add(userinfo.partition(":")[2])
    decoded = {unquote(candidate) for candidate in candidates}
    return sorted(password for password in candidates | decoded if password)


def _possible_passwords(value: str) -> set[str]:
    """What a malformed URL may hold as its password: what follows a ':' before its last '@'.

    `postgresql:/app:pw@db` parses nowhere, yet `pw` was meant as a password. Asked of
    `*_URL` variables and values that start with a scheme; bounded (the last 2,048
    characters before the '@', the first 16 colons of those) for hostile values.
    """
    if "@" not in value:
        return set()
    head = value.rpartition("@")[0][-2048:]
    colons = [i for i, char in enumerate(head) if char == ":"][:16]
    found = {head[i + 1 :] for i in colons}
    return found | {unquote(candidate) for candidate in found}


def _userinfo(value: str) -> str | None:
    """What urllib (and redis, arq) read as userinfo: the netloc up to its last '@'."""
    match = _URL.fullmatch(value)
    if not match:
        return None
    netloc = re.split(r"[/?#]", match["rest"], maxsplit=1)[0]
    return netloc.rpartition("@")[0] if "@" in netloc else None


def url_ports(value: str) -> list[str]:
    """The port of each host of a URL's authority (`h1:5432,h2:5433`), as written."""
    match = _URL.fullmatch(value)
    if not match:
        return []
    netloc = re.split(r"[/?#]", match["rest"], maxsplit=1)[0].rpartition("@")[2]
    ports = []
    for host in netloc.split(","):
        after_brackets = host.rpartition("]")[2] if host.startswith("[") else host
        if ":" in after_brackets:
            ports.append(after_brackets.rpartition(":")[2])
    return ports


def redacted_url(value: str) -> str | None:
    """`value` with its userinfo's password and secret-looking query values hidden; None if unsure.

    Unsure is an '@' without a `scheme://` before it: there is no telling what is a password.
    """
    match = _URL.fullmatch(value)
    if match is None or "@" not in match["rest"]:
        return None if "@" in value else _SECRET_QUERY.sub(rf"\1{MASK}", value)
    # Up to the last '@': whichever parser's reading of the userinfo applies, it is inside.
    userinfo, _, rest = match["rest"].rpartition("@")
    user = userinfo.partition(":")[0] if ":" in userinfo and not re.search(r"[/?#@]", userinfo) else ""
    hidden = f"{user}:{MASK}" if user else MASK
    return f"{match['scheme']}://{hidden}@" + _SECRET_QUERY.sub(rf"\1{MASK}", rest)


def shown(variable: str, value: object, secrets: Iterable[str], display: Display | None = None) -> str:
    """`value` as an error message may show it: quoted, cut when long, or not at all."""
    if not isinstance(value, str):
        value = str(value)
    if display is None:
        display = _display_by_name(variable)
    if display == "hidden" or is_secret_name(variable):
        return NOT_SHOWN
    if display == "redacted URL":
        redacted = redacted_url(value)
        if redacted is None:
            return NOT_SHOWN
        value = redacted
    if _holds_secret(value, secrets):
        return f"{NOT_SHOWN}: it holds a secret's value"
    if len(value) > SHOWN_CHARS:
        return f"{value[: SHOWN_CHARS - 20]!r}… ({len(value)} characters)"
    return repr(value)


def _display_by_name(variable: str) -> Display:
    if variable in SHOWN_URLS:
        return "redacted URL"
    return "hidden" if variable.endswith("_URL") else "value"


def _holds_secret(value: str, secrets: Iterable[str]) -> bool:
    """Whether `value` is, holds, or shares a run of `SHARED_RUN` characters with a secret.

    Any written form of the secret counts (`secret_forms`). Only the start of a long value
    is looked at: the part that is shown, and as far beyond as a secret crossing the cut.
    """
    forms = {form for secret in secrets for form in secret_forms(secret)}
    if len(value) > SHOWN_CHARS:
        value = value[: SHOWN_CHARS + max(map(len, forms), default=0)]
    runs = _runs(value)
    for form in forms:
        if value == form or (len(form) >= MIN_MASKED and form in value):
            return True
        if len(value) >= SHARED_RUN and value in form:
            return True
        if not runs.isdisjoint(_runs(form)):
            return True
    return False


def _runs(text: str) -> set[str]:
    return {text[i : i + SHARED_RUN] for i in range(len(text) - SHARED_RUN + 1)}


def secret_forms(secret: str) -> set[str]:
    """How a secret may be written: as is, percent-encoded, escaped as Python would show it."""
    # A value read from the environment may hold lone surrogates (bytes that were not UTF-8).
    encoded = {quote(secret, safe=safe, errors="backslashreplace") for safe in ("", "/")}
    return {secret, *encoded, _escaped(secret), repr(secret)[1:-1]}


def problem_line(
    variable: str, problem: str, value: object, secrets: Iterable[str], display: Display | None = None
) -> str:
    """`VARIABLE: problem (got value); fix VARIABLE in the environment`, safe to print."""
    secrets = list(secrets)
    got = shown(variable, value, secrets, display)
    line = f"{variable}: {problem} (got {got}); fix {variable} in the environment"
    return printable_line(line, secrets)


def validation_line(error: ValidationError, secrets: Iterable[str]) -> str:
    """The first problem pydantic found, as `problem_line`.

    Only pydantic's own messages (which never quote the input) and `SettingProblem`
    texts are used: any other exception's text may hold a piece of the value.
    """
    secrets = list(secrets)
    first = error.errors()[0]
    if not first["loc"]:  # not about one variable: its input is every value, secrets included
        return printable_line(f"configuration: {first['msg']}", secrets)
    variable = str(first["loc"][0]).upper()
    cause: Any = (first.get("ctx") or {}).get("error")
    if isinstance(cause, SettingProblem):
        return setting_problem_line(variable, cause, first.get("input"), secrets)
    # A value_error's text is not a SettingProblem's: it may quote the value.
    quoting = first["type"] in ("value_error", "assertion_error")
    problem = "not a valid value" if quoting else first["msg"]
    return problem_line(variable, problem, first.get("input"), secrets)


def setting_problem_line(
    variable: str,
    problem: SettingProblem,
    value: object,
    secrets: Iterable[str],
    display: Display | None = None,
) -> str:
    """A validator's `SettingProblem` as `problem_line`, the part it quotes shown as the value is."""
    secrets = list(secrets)
    part = shown(variable, problem.part, secrets, display) if problem.part is not None else ""
    return problem_line(variable, problem.text.replace("{part}", part), value, secrets, display)


def printable_line(text: str, secrets: Iterable[str] = ()) -> str:
    """`text` on one printable line: every secret masked, control characters escaped, capped."""
    secrets = [secret for secret in secrets if len(secret) >= MIN_MASKED]
    text = _mask(_escaped(_mask(text, secrets)), secrets)
    return text if len(text) <= MAX_LINE else text[: MAX_LINE - 1] + "…"


def _escaped(text: str) -> str:
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)


def _mask(text: str, secrets: list[str]) -> str:
    forms = sorted({form for secret in secrets for form in secret_forms(secret)}, key=len, reverse=True)
    # Each replacement shortens the text (a form is longer than the mask), so this ends; it
    # repeats because a replacement can join two halves into a new occurrence.
    while found := [form for form in forms if len(form) > len(MASK) and form in text]:
        for form in found:
            text = text.replace(form, MASK)
    return text
