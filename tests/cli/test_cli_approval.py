"""`stockaj-rules test --update` as an author runs it: in a shell, on fixture files of their own.

Each test writes rules and fixtures in `tmp_path` and runs the installed console script
there, so the files, the diff on stdout and the exit code are exactly what a person sees.
"""

from __future__ import annotations

import json
import os
import pty
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

RULES = """\
- id: reorder
  on: item.low_stock
  when: data.quantity <= data.minimum_quantity
  actions:
    - type: purchase_order
      item_sku: "{{ data.sku }}"
      quantity: "{{ data.minimum_quantity * 2 - data.quantity }}"
- id: rental-to-crm
  on: rent.created
  actions:
    - type: http
      url: https://crm.example.com/rentals
      headers: {Authorization: "Bearer {{ secrets.CRM_TOKEN }}"}
      json: {rental: "{{ data.id }}"}
- id: vip
  on: rent.created
  when: {"==": [{var: data.renter.tags}, "vip"]}
  actions: [{type: log, message: vip}]
"""

YAML_FIXTURES = """\
# Low stock, as Stockaj sent it on 1 March.
- name: tent below minimum   # exported from delivery 7f1c
  event: item.low_stock
  payload:
    timestamp: "2026-03-01T09:00:00Z"
    data: {quantity: 3, minimum_quantity: 5, sku: TENT-4P}

- name: plenty of chairs
  event: item.low_stock
  payload:
    timestamp: "2026-03-01T10:00:00Z"
    data: {quantity: 12, minimum_quantity: 5, sku: CHAIR}
  expect:
    # the chairs are fine
    not_fired: [reorder]
"""

YAML_UPDATED = """\
# Low stock, as Stockaj sent it on 1 March.
- name: tent below minimum   # exported from delivery 7f1c
  event: item.low_stock
  payload:
    timestamp: "2026-03-01T09:00:00Z"
    data: {quantity: 3, minimum_quantity: 5, sku: TENT-4P}
  expect:
    fired: [reorder]
    actions:
      - {rule: reorder, type: purchase_order, params: {item_sku: TENT-4P, quantity: 7}}

- name: plenty of chairs
  event: item.low_stock
  payload:
    timestamp: "2026-03-01T10:00:00Z"
    data: {quantity: 12, minimum_quantity: 5, sku: CHAIR}
  expect:
    # the chairs are fine
    not_fired: [{rule: reorder, because: condition}]
"""

JSON_FIXTURE = """\
{
    "payload": {"timestamp": "2026-03-01T09:00:00Z", "data": {"id": 7, "renter": {"tags": "regular"}}},
    "name": "a rental reaches the CRM",
    "event": "rent.created",
    "expect": {"not_fired": ["vip"], "fired": []}
}
"""


def _console_script() -> str:
    found = shutil.which("stockaj-rules", path=str(Path(sys.executable).parent))
    if found is None:
        pytest.fail("the stockaj-rules console script is not installed next to this Python")
    return found


def _environment(extra: dict[str, str] | None = None) -> dict[str, str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("SECRET_") and k != "RULES_DIR"}
    environment.update(extra or {})
    return environment


def _shell(folder: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_console_script(), *args],
        cwd=folder,
        env=_environment(env),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _project(tmp_path: Path, fixtures: dict[str, str]) -> Path:
    (tmp_path / "rules").mkdir(parents=True)
    (tmp_path / "rules" / "rules.yaml").write_text(RULES)
    (tmp_path / "fixtures").mkdir()
    for name, text in fixtures.items():
        (tmp_path / "fixtures" / name).write_text(text)
    return tmp_path


def test_update_writes_what_happened_keeping_the_yaml_comments_and_prints_the_diff(tmp_path: Path) -> None:
    folder = _project(tmp_path, {"low-stock.yaml": YAML_FIXTURES})

    completed = _shell(folder, "test", "--update", "fixtures/low-stock.yaml")

    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert (folder / "fixtures" / "low-stock.yaml").read_text() == YAML_UPDATED
    diff = completed.stdout.split("updated the expectations")[0].splitlines()
    assert diff == [
        "--- fixtures/low-stock.yaml",
        "+++ fixtures/low-stock.yaml (updated)",
        "@@ -4,6 +4,10 @@",
        "   payload:",
        '     timestamp: "2026-03-01T09:00:00Z"',
        "     data: {quantity: 3, minimum_quantity: 5, sku: TENT-4P}",
        "+  expect:",
        "+    fired: [reorder]",
        "+    actions:",
        "+      - {rule: reorder, type: purchase_order, params: {item_sku: TENT-4P, quantity: 7}}",
        " ",
        " - name: plenty of chairs",
        "   event: item.low_stock",
        "@@ -12,4 +16,4 @@",
        "     data: {quantity: 12, minimum_quantity: 5, sku: CHAIR}",
        "   expect:",
        "     # the chairs are fine",
        "-    not_fired: [reorder]",
        "+    not_fired: [{rule: reorder, because: condition}]",
    ]
    assert (
        "updated the expectations of 2 of 2 fixture(s): review the diff above, then commit it"
        in completed.stdout
    )
    assert completed.stdout.splitlines()[-1] == "2 passed, 0 failed"


def test_a_second_update_changes_nothing(tmp_path: Path) -> None:
    folder = _project(tmp_path, {"low-stock.yaml": YAML_UPDATED})

    completed = _shell(folder, "test", "--update")

    assert completed.returncode == 0
    assert completed.stdout.startswith(
        "nothing to update: every fixture's expect already says what happened\n"
    )
    assert (folder / "fixtures" / "low-stock.yaml").read_text() == YAML_UPDATED


def test_update_keeps_a_json_fixtures_key_order_and_indentation(tmp_path: Path) -> None:
    folder = _project(tmp_path, {"rental.json": JSON_FIXTURE})

    completed = _shell(folder, "test", "--update", env={"SECRET_CRM_TOKEN": "crm-live-0a1b2c3d"})

    assert completed.returncode == 0, completed.stdout + completed.stderr
    text = (folder / "fixtures" / "rental.json").read_text()
    assert text.startswith(JSON_FIXTURE.split('    "expect"')[0])  # all before expect as it was
    fixture = json.loads(text)
    assert list(fixture) == ["payload", "name", "event", "expect"]
    assert list(fixture["expect"]) == ["not_fired", "fired", "actions"]
    assert fixture["expect"]["not_fired"] == [{"rule": "vip", "because": "condition"}]
    assert fixture["expect"]["fired"] == ["rental-to-crm"]
    assert fixture["expect"]["actions"][0]["params"]["headers"] == {"Authorization": "Bearer ***"}
    assert re.search(r'^        "fired": \["rental-to-crm"\],$', text, re.MULTILINE), text
    assert "crm-live-0a1b2c3d" not in completed.stdout + text


def test_the_diff_is_coloured_on_a_terminal_and_plain_in_a_pipe(tmp_path: Path) -> None:
    folder = _project(tmp_path, {"low-stock.yaml": YAML_FIXTURES})
    parent, child = pty.openpty()
    with subprocess.Popen(
        [_console_script(), "test", "--update"], cwd=folder, env=_environment(), stdout=child, stderr=child
    ) as process:
        os.close(child)
        output = b""
        while True:
            try:
                chunk = os.read(parent, 65536)
            except OSError:  # the terminal closed: the command ended
                break
            if not chunk:
                break
            output += chunk
        assert process.wait(timeout=60) == 0
    os.close(parent)

    assert b"\x1b[32m+    fired: [reorder]\x1b[0m" in output
    assert b"\x1b[31m-    not_fired: [reorder]\x1b[0m" in output
    piped = _shell(_project(tmp_path / "again", {"low-stock.yaml": YAML_FIXTURES}), "test", "--update")
    assert "\x1b[" not in piped.stdout


def test_update_does_not_approve_an_error_and_the_fixture_still_fails(tmp_path: Path) -> None:
    vip = JSON_FIXTURE.replace('"regular"', '["vip"]')
    folder = _project(tmp_path, {"rental.json": vip})

    completed = _shell(folder, "test", "--update")

    assert completed.returncode == 1
    fixture = json.loads((folder / "fixtures" / "rental.json").read_text())
    assert fixture["expect"]["not_fired"] == ["vip"]  # left as the author wrote it
    assert "errors" not in fixture["expect"]
    assert "✗ vip did not fire because of an error, which not_fired does not accept" in completed.stdout
    assert completed.stdout.splitlines()[-1] == "0 passed, 1 failed"


def test_update_never_writes_through_a_symbolic_link(tmp_path: Path) -> None:
    folder = _project(tmp_path, {})
    elsewhere = tmp_path / "elsewhere.yaml"
    elsewhere.write_text(YAML_FIXTURES)
    (folder / "fixtures" / "low-stock.yaml").symlink_to(elsewhere)

    completed = _shell(folder, "test", "--update")

    assert completed.returncode == 2
    assert elsewhere.read_text() == YAML_FIXTURES
    assert (
        "fixtures/low-stock.yaml:1:1: not updated: fixtures/low-stock.yaml is a symbolic link"
        in completed.stderr
    )
    assert "--- fixtures/low-stock.yaml" not in completed.stdout


def test_update_refuses_a_one_line_fixture_with_what_to_do_and_writes_nothing(tmp_path: Path) -> None:
    one_line = (
        "- {name: x, event: item.low_stock, payload: {data: {quantity: 1, minimum_quantity: 5, sku: A}}}\n"
    )
    folder = _project(tmp_path, {"one-line.yaml": one_line})

    completed = _shell(folder, "test", "--update")

    assert completed.returncode == 2
    assert (folder / "fixtures" / "one-line.yaml").read_text() == one_line
    assert (
        "fixtures/one-line.yaml:1:1: not updated: line 1: the fixture is written on one line (flow style); "
        "write it one key a line so --update can change its expect"
    ) in completed.stderr
