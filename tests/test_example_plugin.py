"""The example plugin of docs/plugins.md, installed with pip and used as an operator would.

tests/plugins/stockaj-rules-ntfy is a whole plugin distribution: its pyproject.toml
registers the `ntfy` action under the engine's entry-point group. The suite builds and
installs it with pip (offline, into a folder of its own put on PYTHONPATH, so the
project's environment is left as it was), then runs the real console script on the
plugin's rule and fixtures, and the plugin's own tests, which use engine.testing.
"""

from __future__ import annotations

import itertools
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from actions import base
from engine.plugins import KINDS, SettingKind

PLUGIN = Path(__file__).resolve().parent / "plugins" / "stockaj-rules-ntfy"
TOKEN = "tk_live_0123456789abcdef"


@pytest.fixture(scope="session")
def ntfy(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(the plugin's folder, copied; the folder pip installed it into)."""
    root = tmp_path_factory.mktemp("ntfy")
    source = root / "stockaj-rules-ntfy"
    # A copy: building writes build/ and *.egg-info next to the sources.
    shutil.copytree(PLUGIN, source, ignore=shutil.ignore_patterns("__pycache__", "build", "*.egg-info"))
    site = root / "site"
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index"]
    command += ["--no-build-isolation", "--target", str(site), str(source)]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert completed.returncode == 0, completed.stderr
    return source, site


def run(ntfy: tuple[Path, Path], *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """A command of the plugin's author or operator, in the plugin's folder, with it installed."""
    source, site = ntfy
    environment = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "TMPDIR")}
    environment.update(PYTHONPATH=str(site), **env)
    return subprocess.run(
        [*args], cwd=source, env=environment, capture_output=True, text=True, timeout=300, check=False
    )


def stockaj_rules(ntfy: tuple[Path, Path], *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    script = shutil.which("stockaj-rules", path=str(Path(sys.executable).parent))
    assert script is not None, "the stockaj-rules console script is not installed next to this Python"
    return run(ntfy, script, *args, **env)


def test_the_installed_plugins_rule_checks_and_its_fixtures_pass(ntfy: tuple[Path, Path]) -> None:
    checked = stockaj_rules(ntfy, "check", "--rules", "rules")
    assert (checked.returncode, checked.stdout) == (0, "OK: 1 rule(s) in 1 file(s) under rules\n"), (
        checked.stderr
    )

    tested = stockaj_rules(ntfy, "test", "--rules", "rules", "fixtures")

    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert (
        '→ ntfy  topic: "warehouse-alerts", message: "3 left of Tent 4p (TENT-4P), minimum 5."'
        in tested.stdout
    )
    assert tested.stdout.endswith("2 passed, 0 failed\n")


def test_the_plugins_own_tests_pass_with_the_engines_test_helpers(ntfy: tuple[Path, Path]) -> None:
    completed = run(ntfy, sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests")

    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert "7 passed" in completed.stdout


def test_plugins_lists_the_installed_plugin_and_its_settings_never_their_values(
    ntfy: tuple[Path, Path],
) -> None:
    completed = stockaj_rules(ntfy, "plugins", NTFY_TOKEN=TOKEN)

    assert completed.returncode == 0, completed.stderr
    lines = completed.stdout.splitlines()
    start = lines.index("ntfy: Publish a notification to a topic on an ntfy server.")
    assert lines[start + 1 : start + 5] == [
        "  from stockaj-rules-ntfy 1.0.0 (entry point ntfy = stockaj_rules_ntfy:NtfyAction)",
        "  NTFY_URL       URL, unset: the ntfy server to publish to when the rule names no server",
        "  NTFY_TOKEN     secret, set: an access token of the server, sent as Authorization: Bearer …",
        "  NTFY_PRIORITY  int, unset: the priority when the rule gives none: 1 (min) to 5 (max)",
    ]
    assert TOKEN not in completed.stdout


def test_a_bad_value_of_the_plugins_setting_stops_check_with_one_line(ntfy: tuple[Path, Path]) -> None:
    completed = stockaj_rules(ntfy, "check", "--rules", "rules", NTFY_PRIORITY="high")

    assert completed.returncode == 2
    assert completed.stderr == (
        "configuration error: NTFY_PRIORITY: not a whole number; write e.g. 10 (got 'high'); "
        "fix NTFY_PRIORITY in the environment\n"
    )


def test_check_masks_the_plugins_secret_wherever_a_rule_file_quotes_it(ntfy: tuple[Path, Path]) -> None:
    source, _ = ntfy
    broken = source / "broken"
    broken.mkdir(exist_ok=True)
    # An env file copied into the rules folder by mistake: the loader quotes what it found.
    # NTFY_TOKEN is a secret by its declared kind, not by a name the engine would guess from.
    (broken / "env.yaml").write_text(f"{TOKEN}\n")

    completed = stockaj_rules(ntfy, "check", "--rules", "broken", NTFY_TOKEN=TOKEN)

    assert completed.returncode == 1
    assert "broken/env.yaml:1:1: " in completed.stderr
    assert TOKEN not in completed.stdout + completed.stderr
    assert "***" in completed.stderr


# --- docs/plugins.md is this plugin -------------------------------------------------------------

GUIDE = PLUGIN.parent.parent.parent / "docs" / "plugins.md"
FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
FILE_BLOCK = re.compile(r"^<!-- file: (\S+) -->\n```[^\n]*\n(.*?)^```$", re.MULTILINE | re.DOTALL)


def _plugin_files() -> set[str]:
    ignored = {"__pycache__", "build"}
    return {
        path.relative_to(PLUGIN).as_posix()
        for path in PLUGIN.rglob("*")
        if path.is_file() and not ignored & set(path.parts) and ".egg-info" not in path.as_posix()
    }


def test_the_guide_shows_every_file_of_the_example_plugin_exactly() -> None:
    shown = dict(FILE_BLOCK.findall(GUIDE.read_text(encoding="utf-8")))

    assert set(shown) == _plugin_files()
    for path, text in shown.items():
        assert text == (PLUGIN / path).read_text(encoding="utf-8"), f"docs/plugins.md shows another {path}"


def _console_blocks() -> list[tuple[str, list[str]]]:
    blocks = []
    for language, body in FENCE.findall(GUIDE.read_text(encoding="utf-8")):
        if language.strip() == "console":
            command, *output = body.splitlines()
            assert command.startswith("$ "), f"a console block starts with its command: {command}"
            blocks.append((command[2:], output))
    return blocks


def _matches(expected: list[str], actual: list[str]) -> bool:
    """`actual` is `expected`, where a line `...` stands for any number of lines."""
    if not expected:
        return not actual
    if expected[0] == "...":
        return any(_matches(expected[1:], actual[at:]) for at in range(len(actual) + 1))
    return bool(actual) and actual[0] == expected[0] and _matches(expected[1:], actual[1:])


@pytest.mark.parametrize(("command", "output"), _console_blocks(), ids=[c for c, _ in _console_blocks()])
def test_the_guides_commands_print_what_it_shows(
    ntfy: tuple[Path, Path], command: str, output: list[str]
) -> None:
    words = shlex.split(command)
    env = dict(word.split("=", 1) for word in itertools.takewhile(lambda word: "=" in word, words))
    args = words[len(env) :]
    assert args[0] == "stockaj-rules"

    completed = stockaj_rules(ntfy, *args[1:], **env)

    actual = (completed.stdout + completed.stderr).splitlines()
    assert _matches(output, actual), "\n".join(actual)


def _slugs(markdown: str) -> set[str]:
    headings = re.findall(r"^#+ (.+)$", re.sub(r"```.*?```", "", markdown, flags=re.DOTALL), re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-") for heading in headings}


def test_the_guides_links_lead_somewhere() -> None:
    text = GUIDE.read_text(encoding="utf-8")
    links = re.findall(r"\]\(([\w./-]*)(?:#([\w-]+))?\)", text)
    assert links, "the guide links to its sections and the other guides"
    for target, anchor in links:
        linked = (GUIDE.parent / target).read_text(encoding="utf-8") if target else text
        assert not anchor or anchor in _slugs(linked), f"{target}#{anchor} is no heading"


def test_the_guides_table_of_kinds_names_every_kind_the_sdk_exports() -> None:
    rows = re.findall(
        r"^\| `(\w+)` \|", GUIDE.read_text(encoding="utf-8").split("| kind | holds |", 1)[1], re.MULTILINE
    )
    exported = [name for name in base.__all__ if isinstance(getattr(base, name), SettingKind)]

    assert sorted(rows) == sorted(exported)
    assert {getattr(base, name) for name in exported} == set(KINDS)
