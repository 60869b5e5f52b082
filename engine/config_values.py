"""The checks of setting values that are addresses: database, Redis and HTTP URLs, hosts.

Each returns the value as the engine uses it, or raises `SettingProblem` (a ValueError)
saying what to write instead; engine/config.py turns that into one line naming the
variable. The settings that plugins declare are checked with the same functions.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from engine.config_errors import SettingProblem, url_ports

if TYPE_CHECKING:  # the readers of URLs load with the URL: `check` without them stays light
    from sqlalchemy.engine import URL

# The store, and plugins given a database URL, speak to SQLite and PostgreSQL through these drivers.
_ASYNC_DRIVERS = {"sqlite": "aiosqlite", "postgresql": "asyncpg", "postgres": "asyncpg"}
_DATABASE_EXAMPLES = "postgresql+asyncpg://user:password@host:5432/db or sqlite+aiosqlite:///path/to/file.db"
_REDIS_SCHEMES = ("redis", "rediss", "unix")
_REDIS_EXAMPLE = "redis://host:6379/0 (or rediss:// for TLS)"


def http_url(value: str) -> str:
    """`value` if it is an absolute http(s) URL with a host (and no port 0)."""
    try:
        parts = urlsplit(value)
        usable = parts.scheme in ("http", "https") and bool(parts.hostname) and parts.port != 0
    except ValueError:  # a bad port or IPv6 address
        usable = False
    if not usable:
        raise SettingProblem("not an http(s) URL; write https://host/path")
    return value


def database_url(value: str) -> str:
    """`value` as an async SQLAlchemy URL; `postgresql://` and `sqlite://` get their async driver.

    Raises SettingProblem (a ValueError) naming what to write instead for anything the
    store cannot use: a URL SQLAlchemy cannot parse, a port out of range, an unknown
    database or driver, query options the driver refuses.
    """
    url = _parsed_database_url(value)
    backend, _, driver = url.drivername.partition("+")
    wanted = _ASYNC_DRIVERS.get(backend)
    if wanted is None:
        raise SettingProblem(f"unsupported database {{part}}; write {_DATABASE_EXAMPLES}", backend)
    backend = "postgresql" if backend == "postgres" else backend
    if driver and driver != wanted:
        raise SettingProblem(f"driver {{part}} is not supported; use {backend}+{wanted}:// instead", driver)
    if url.drivername != f"{backend}+{wanted}":
        url = url.set(drivername=f"{backend}+{wanted}")
        value = url.render_as_string(hide_password=False)
    try:  # what the engine does with it first: the driver's reading of the options
        url.get_dialect()().create_connect_args(url)
    except Exception:
        given = ", ".join(sorted(url.query)) or "none"
        problem = f"the {url.drivername} driver cannot use its options ({{part}}); fix or remove them"
        raise SettingProblem(problem, given) from None
    return value


def _parsed_database_url(value: str) -> URL:
    from sqlalchemy.engine import make_url

    try:
        url = make_url(value)
    except Exception:  # ArgumentError, or ValueError for a port that is not a number
        url = None
    for port in url_ports(value):
        if not port.isdecimal():
            raise SettingProblem("port {part} is not a number; write host:5432", port)
    if url is None:
        raise SettingProblem(f"not a database URL; write {_DATABASE_EXAMPLES}")
    if url.port is not None and not 0 < url.port < 65536:
        raise SettingProblem("port {part} is out of range; write host:5432 (1 to 65535)", str(url.port))
    return url


def listen_address(value: str) -> str:
    """`value` if it can name an address to listen on: an IP address or a host name.

    The resolver takes names in IDNA: a label over 63 characters fails there with a
    UnicodeError, not the OSError `serve` reports as "cannot listen on".
    """
    try:
        value.encode("idna")
    except UnicodeError:
        raise SettingProblem("not a host name or IP address; write e.g. 127.0.0.1 or 0.0.0.0") from None
    return value


def redis_url(value: str) -> str:
    """`value` if both readers of REDIS_URL accept it (redis-py's, the receiver's; arq's, the worker's)."""
    scheme, _, rest = value.partition("://")
    if scheme not in _REDIS_SCHEMES or not rest:
        raise SettingProblem(f"not a Redis URL; write {_REDIS_EXAMPLE}")
    for port in url_ports(value):
        if not port.isdecimal():
            raise SettingProblem("port {part} is not a number; write host:6379", port)
        if not 0 < int(port) < 65536:
            raise SettingProblem("port {part} is out of range; write host:6379 (1 to 65535)", port)
    database = re.split(r"[?#]", rest.partition("/")[2], maxsplit=1)[0].strip("/")
    if scheme != "unix" and database and not database.isdecimal() and "db=" not in rest:
        raise SettingProblem("database {part} is not a number; write redis://host:6379/0", database)
    from arq.connections import RedisSettings
    from redis.asyncio.connection import parse_url as parse_redis_url

    try:
        parse_redis_url(value)
        RedisSettings.from_dsn(value)
    except Exception:
        raise SettingProblem(f"not a usable Redis URL; write {_REDIS_EXAMPLE}") from None
    return value
