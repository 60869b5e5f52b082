"""A broken or clashing action plugin stops every command with one line, never a traceback.

Each test installs a small distribution of its own: a `*.dist-info` folder with an
`entry_points.txt` next to its module, in a folder put on PYTHONPATH, exactly what pip
leaves behind. The real console script then runs in a subprocess, as a shell runs it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
RULE = "id: r\non: item.low_stock\nactions:\n  - {type: log, message: hi}\n"
FIXTURE = '{"event": "item.low_stock", "payload": {"data": {}}, "expect": {"fired": ["r"]}}\n'


def install(site: Path, name: str, entry_points: dict[str, str], modules: dict[str, str]) -> None:
    """What `pip install` leaves in `site` for distribution `name` 1.0: its modules and metadata."""
    for module, source in modules.items():
        (site / f"{module}.py").write_text(textwrap.dedent(source), encoding="utf-8")
    info = site / f"{name.replace('-', '_')}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n", encoding="utf-8")
    lines = "".join(f"{key} = {value}\n" for key, value in entry_points.items())
    (info / "entry_points.txt").write_text(f"[stockaj_rules.actions]\n{lines}", encoding="utf-8")


def console_script() -> str:
    found = shutil.which("stockaj-rules", path=str(Path(sys.executable).parent))
    if found is None:
        pytest.fail("the stockaj-rules console script is not installed next to this Python")
    return found


def run(site: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The real command with `site` on the path, in a folder with one rule and one fixture."""
    work = site.parent / "work"
    (work / "rules").mkdir(parents=True, exist_ok=True)
    (work / "rules" / "r.yaml").write_text(RULE, encoding="utf-8")
    (work / "fixtures").mkdir(exist_ok=True)
    (work / "fixtures" / "f.json").write_text(FIXTURE, encoding="utf-8")
    env = {name: value for name, value in os.environ.items() if name in ("PATH", "HOME", "LANG", "TMPDIR")}
    env.update(
        PYTHONPATH=str(site),
        DATABASE_URL=f"sqlite+aiosqlite:///{work / 'store.db'}",
        STOCKAJ_WEBHOOK_SECRET="a-webhook-secret-of-32-characters",
    )
    return subprocess.run(
        [console_script(), *args], cwd=work, env=env, capture_output=True, text=True, timeout=60, check=False
    )


@pytest.fixture
def site(tmp_path: Path) -> Path:
    folder = tmp_path / "site"
    folder.mkdir()
    return folder


# Every command a broken plugin must stop: the author's, and the operator's.
COMMANDS = [
    ["check"],
    ["test"],
    ["replay", "fixtures/f.json"],
    ["schema"],
    ["db", "upgrade"],
    ["deliveries", "list"],
    ["serve", "--port", "1"],
    ["worker"],
    ["redeliver", "no-such-delivery"],
    ["send", "--url", "http://127.0.0.1:1/webhooks/stockaj", "fixtures/f.json"],
]


def assert_one_line(result: subprocess.CompletedProcess[str], *expected: str) -> str:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    for part in expected:
        assert part in lines[0]
    return lines[0]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda command: " ".join(command))
def test_a_plugin_that_fails_to_import_stops_every_command_with_one_line(
    site: Path, command: list[str]
) -> None:
    install(
        site,
        "acme-actions",
        {"acme": "acme_actions:AcmeAction"},
        {"acme_actions": "import acme_missing_dependency\n"},
    )

    line = assert_one_line(run(site, *command))

    assert line == (
        "configuration error: the action plugin 'acme' cannot be loaded: ModuleNotFoundError: No module "
        "named 'acme_missing_dependency' (distribution acme-actions 1.0, entry point "
        "acme = acme_actions:AcmeAction); install what it needs, or uninstall it: pip uninstall acme-actions"
    )


def test_a_plugin_whose_entry_point_names_nothing_is_one_line(site: Path) -> None:
    install(site, "acme-actions", {"acme": "acme_actions:Missing"}, {"acme_actions": "X = 1\n"})

    assert_one_line(
        run(site, "check"),
        "the action plugin 'acme' cannot be loaded: AttributeError:",
        "(distribution acme-actions 1.0, entry point acme = acme_actions:Missing)",
        "pip uninstall acme-actions",
    )


def test_a_plugin_with_a_syntax_error_is_one_line(site: Path) -> None:
    install(
        site,
        "acme-actions",
        {"acme": "acme_actions:AcmeAction"},
        {"acme_actions": "class AcmeAction(:\n    pass\n"},
    )

    assert_one_line(
        run(site, "check"), "cannot be loaded: SyntaxError:", "entry point acme = acme_actions:AcmeAction"
    )


def test_an_entry_point_that_is_not_an_action_class_is_one_line(site: Path) -> None:
    install(
        site, "acme-actions", {"acme": "acme_actions:helper"}, {"acme_actions": "def helper():\n    pass\n"}
    )

    assert_one_line(
        run(site, "check"),
        "the action plugin 'acme' is not an action class (got a function)",
        "(distribution acme-actions 1.0, entry point acme = acme_actions:helper)",
    )


ACME_SLACK = """\
from actions.base import Action, ActionParams, ActionResult


class Params(ActionParams):
    text: str


class AcmeSlack(Action[Params]):
    type = "slack"
    description = "Another slack."
    Params = Params

    async def run(self, params, ctx):
        return ActionResult()
"""


@pytest.mark.parametrize("command", [["check"], ["deliveries", "list"]], ids=" ".join)
def test_a_plugin_whose_type_clashes_with_a_built_in_stops_every_command_naming_both(
    site: Path, command: list[str]
) -> None:
    install(site, "acme-actions", {"acme-slack": "acme_actions:AcmeSlack"}, {"acme_actions": ACME_SLACK})

    line = assert_one_line(run(site, *command))

    assert line == (
        "configuration error: action type 'slack' is declared twice: by acme-actions 1.0 (entry point "
        "acme-slack = acme_actions:AcmeSlack) and by stockaj-rules 0.1.0 (entry point "
        "slack = actions.slack:SlackAction); uninstall one of them, or rename the type of one"
    )


def test_two_third_party_plugins_with_one_type_name_are_one_line_naming_both(site: Path) -> None:
    twin = ACME_SLACK.replace('"slack"', '"twin"')
    install(site, "acme-actions", {"twin": "acme_actions:AcmeSlack"}, {"acme_actions": twin})
    install(site, "other-actions", {"twin": "other_actions:AcmeSlack"}, {"other_actions": twin})

    assert_one_line(
        run(site, "check"),
        "action type 'twin' is declared twice",
        "acme-actions 1.0 (entry point twin = acme_actions:AcmeSlack)",
        "other-actions 1.0 (entry point twin = other_actions:AcmeSlack)",
    )


def test_a_working_third_party_plugin_is_usable_in_rules(site: Path) -> None:
    install(
        site,
        "acme-actions",
        {"acme": "acme_actions:AcmeSlack"},
        {"acme_actions": ACME_SLACK.replace('"slack"', '"acme"')},
    )
    rule = "id: r\non: item.low_stock\nactions:\n  - {type: acme, text: hi}\n"

    (site.parent / "work" / "rules").mkdir(parents=True)
    (site.parent / "work" / "rules" / "r.yaml").write_text(rule, encoding="utf-8")
    result = run(site, "check")

    assert result.returncode == 0, result.stderr
