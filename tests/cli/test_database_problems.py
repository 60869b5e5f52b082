"""A database that cannot be opened: one line that says what is wrong and what to do.

No SQLAlchemy or driver class names, no traceback, no password; run as a shell
runs the installed console script, against the real PostgreSQL.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from tests.cli.test_cli_ops import WEBHOOK_SECRET, _free_port, one_line, shell

pytestmark = pytest.mark.postgres

COMMANDS = [("db", "upgrade"), ("deliveries", "list"), ("serve",)]
CLASS_NAMES = ("DBAPIError", "sqlalchemy.", "asyncpg.", "Error:", "OperationalError", "Traceback")


def _env(tmp_path: Path, database_url: str) -> dict[str, str]:
    (tmp_path / "rules").mkdir(exist_ok=True)
    return {
        "DATABASE_URL": database_url,
        "RULES_DIR": str(tmp_path / "rules"),
        "STOCKAJ_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "PORT": str(_free_port()),
    }


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_a_missing_postgresql_database_is_named_with_the_createdb_that_makes_it(
    command: tuple[str, ...], tmp_path: Path, postgres_url: str
) -> None:
    name = f"t_missing_{uuid.uuid4().hex[:8]}"
    url = make_url(postgres_url).set(database=name, password="db-pa55word")

    completed = shell(*command, env=_env(tmp_path, url.render_as_string(hide_password=False)), cwd=tmp_path)

    assert completed.returncode == 2
    line = one_line(completed.stderr)
    assert f'database "{name}" does not exist on {url.host}:{url.port}: create it (createdb {name})' in line
    assert line.endswith("or fix DATABASE_URL"), line
    assert not [word for word in CLASS_NAMES if word in line], line
    assert "db-pa55word" not in completed.stderr


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_a_postgresql_that_does_not_answer_says_start_it_or_fix_the_address(
    command: tuple[str, ...], tmp_path: Path
) -> None:
    port = _free_port()
    url = f"postgresql+asyncpg://app:db-pa55word@127.0.0.1:{port}/app"

    completed = shell(*command, env=_env(tmp_path, url), cwd=tmp_path)

    assert completed.returncode == 2
    line = one_line(completed.stderr)
    assert line.endswith(
        f"nothing answers at 127.0.0.1:{port}: start PostgreSQL, or fix the host and port in DATABASE_URL"
    ), line
    assert not [word for word in CLASS_NAMES if word in line], line
    assert "db-pa55word" not in completed.stderr


def test_an_unknown_postgresql_user_says_fix_the_user_or_password(tmp_path: Path, postgres_url: str) -> None:
    url = make_url(postgres_url).set(username=f"nobody_{uuid.uuid4().hex[:6]}")

    completed = shell("deliveries", "list", env=_env(tmp_path, url.render_as_string()), cwd=tmp_path)

    assert completed.returncode == 2
    line = one_line(completed.stderr)
    assert "does not exist" in line
    assert line.endswith("fix the user or password in DATABASE_URL"), line
    assert not [word for word in CLASS_NAMES if word in line], line


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_a_sqlite_file_in_a_missing_folder_is_one_line_that_names_the_folder(
    command: tuple[str, ...], tmp_path: Path
) -> None:
    folder = tmp_path / "no-such-folder"

    completed = shell(*command, env=_env(tmp_path, f"sqlite+aiosqlite:///{folder}/x.db"), cwd=tmp_path)

    assert completed.returncode == 2
    line = one_line(completed.stderr)  # also: no traceback of a thread after it
    assert line.endswith(f"the folder {folder} does not exist: create it, or fix DATABASE_URL"), line
    assert not [word for word in CLASS_NAMES if word in line], line
