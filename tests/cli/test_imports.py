"""The rule author's commands start without the server stack (issue 12).

`check`, `test`, `replay` and `schema` run in a fresh interpreter, as a shell starts them, in a
rule author's environment (no DATABASE_URL, no REDIS_URL); afterwards the test reads which
top-level modules were loaded. The server stack must not be among them, and every third-party
package loaded must be one the rule language needs. bench/bench_cli_start.py measures what
this is worth in time.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from engine.cli.main import OPERATOR_COMMANDS, cli

ROOT = Path(__file__).resolve().parents[2]

# What only `serve`, `worker` and the delivery-log commands need.
SERVER_STACK = frozenset(
    {
        "aiohttp",
        "aiosqlite",
        "alembic",
        "arq",
        "asyncpg",
        "httpx_aiohttp",
        "hypercorn",
        "orjson",
        "prometheus_client",
        "quart",
        "redis",
        "sqlalchemy",
        "structlog",
        "uvicorn",
        "uvloop",
        "watchfiles",
    }
)
# The third-party packages the rule language may load: YAML, validation, templates, JsonLogic,
# the command line, and httpx, whose URL parser decides where actions may send (one parser for
# the check and the request); pygments and rich are what httpx's own command line tries to import.
RULE_LANGUAGE = frozenset(
    {
        "annotated_types",
        "click",
        "datalogic_py",
        "httpx",
        "idna",
        "jinja2",
        "markupsafe",
        "pydantic",
        "pydantic_core",
        "pygments",
        "rich",
        "typing_extensions",
        "typing_inspection",
        "yaml",
    }
)
OURS = frozenset({"engine", "actions"})

# Runs the command as the console script does, then writes the names of the loaded modules.
DRIVER = """
import json, sys
from engine.cli.main import main
out, sys.argv = sys.argv[1], ["stockaj-rules", *sys.argv[2:]]
try:
    main()
except SystemExit as exc:
    code = exc.code
else:
    code = 0
with open(out, "w") as file:
    json.dump({"exit": code, "modules": sorted(sys.modules)}, file)
"""

AUTHOR_COMMANDS = {
    "check": ["check", "--rules", "rules"],
    "test": ["test", "--rules", "rules", "fixtures"],
    "replay": ["replay", "--rules", "rules", "fixtures/item-low-stock.yaml"],
    "schema": ["schema"],
}


def _author_environment() -> dict[str, str]:
    """A rule author's shell: no engine setting (SECRET_* included), this test's Python path."""
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/"),
        "LANG": "C.UTF-8",
    }


def _loaded_modules(command: list[str], tmp_path: Path) -> set[str]:
    out = tmp_path / "modules.json"
    done = subprocess.run(
        [sys.executable, "-c", DRIVER, str(out), *command],
        cwd=ROOT,
        env=_author_environment(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.exists(), done.stderr
    report = json.loads(out.read_text())
    assert report["exit"] == 0, done.stderr
    return set(report["modules"])


def _packages(modules: set[str]) -> set[str]:
    return {name.partition(".")[0] for name in modules}


def _third_party(packages: set[str]) -> set[str]:
    standard = set(sys.stdlib_module_names) | set(sys.builtin_module_names)
    # `__main__`, the editable install's finder, compiled helpers (_cython_..., cython_runtime)...
    return {name for name in packages - standard if not name.startswith("_") and name != "cython_runtime"}


@pytest.mark.parametrize("command", AUTHOR_COMMANDS.values(), ids=AUTHOR_COMMANDS.keys())
def test_the_rule_authors_commands_load_nothing_of_the_server_stack(
    command: list[str], tmp_path: Path
) -> None:
    modules = _loaded_modules(command, tmp_path)
    packages = _packages(modules)

    assert sorted(packages & SERVER_STACK) == []
    assert sorted(_third_party(packages) - RULE_LANGUAGE - OURS) == []
    assert "engine.cli.operator" not in modules
    assert "engine.language.loader" in modules


def test_an_operator_command_still_loads_what_it_needs(tmp_path: Path) -> None:
    # The pin above would pass for a CLI that lost its operator commands: `db --help` imports them.
    packages = _packages(_loaded_modules(["db", "--help"], tmp_path))

    assert {"sqlalchemy", "uvicorn", "arq", "redis"} <= packages


def test_the_top_level_help_lists_every_command_with_its_description() -> None:
    result = CliRunner().invoke(cli, ["--help"], catch_exceptions=False)

    assert result.exit_code == 0
    lines = result.output.split("Commands:\n", 1)[1].splitlines()
    listed = {line.split()[0]: line for line in lines if line.startswith("  ") and not line.startswith("   ")}
    assert set(listed) == {"check", "test", "replay", "schema", "fields", "conditions", *OPERATOR_COMMANDS}
    with click.Context(cli) as context:
        for name in listed:
            command = cli.get_command(context, name)
            assert command is not None
            assert command.help, name
            first_words = " ".join(command.help.split()[:3])
            assert first_words in listed[name], (name, listed[name])
