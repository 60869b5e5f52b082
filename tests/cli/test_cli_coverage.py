"""`stockaj-rules test --coverage` and `--coverage-json FILE`, through the real command line."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from engine.cli.main import cli

RULES = """\
- id: restock
  on: item.low_stock
  when: data.quantity <= data.minimum_quantity and not data.discontinued | default(false)
  actions: [{type: log, message: "restock {{ data.sku }}"}]
- id: rentals
  on: rent.created
  actions: [{type: log, message: rental}]
- id: returns
  on: rent.status_changed
  when: data.status == "returned"
  actions: [{type: log, message: returned}]
"""

FIXTURES = """\
- name: low tent
  event: item.low_stock
  payload: {data: {quantity: 2, minimum_quantity: 5, sku: TENT}}
  expect: {fired: [restock]}
- name: plenty
  event: item.low_stock
  payload: {data: {quantity: 9, minimum_quantity: 5, sku: CHAIR}}
  expect: {not_fired: [{rule: restock, because: condition}]}
"""


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "rules.yaml").write_text(RULES)
    (tmp_path / "fixtures").mkdir()
    (tmp_path / "fixtures" / "stock.yaml").write_text(FIXTURES)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run(*args: str) -> Result:
    env: dict[str, str | None] = {name: None for name in os.environ if name.startswith("SECRET_")}
    return CliRunner().invoke(cli, list(args), env={**env, "RULES_DIR": None}, catch_exceptions=False)


def test_coverage_prints_each_rule_its_operands_and_what_is_not_covered(project: Path) -> None:
    result = run("test", "--coverage")

    assert result.exit_code == 0, result.output
    coverage = result.output.split("Coverage of ")[1].splitlines()
    assert coverage == [
        "3 rule(s) by 2 fixture(s)",
        "restock  (rules/rules.yaml:1)",
        "  ✓ fired in 1: low tent",
        "  ✓ not fired in 1: plenty (condition)",
        "  when: data.quantity <= data.minimum_quantity and not data.discontinued | default(false)  true 1 · false 1",
        "    ✓ data.quantity <= data.minimum_quantity  true 1 · false 1",
        "    ✗ not data.discontinued | default(false)  never false, true 1 · not reached 1",
        "rentals  (rules/rules.yaml:5)",
        "  ✗ no fixture for its events (rent.created)",
        "returns  (rules/rules.yaml:8)",
        "  ✗ no fixture for its events (rent.status_changed)",
        "Not covered:",
        "  ✗ no fixture fires: rentals, returns",
        "  ✗ no fixture keeps from firing: returns",
        "  ✗ restock: not data.discontinued | default(false): never false",
        "2 passed, 0 failed",
    ]


def test_coverage_json_is_written_for_ci_and_replaces_its_own_earlier_report(project: Path) -> None:
    first = run("test", "--coverage-json", "build/coverage.json")
    second = run("test", "--coverage-json", "build/coverage.json")

    assert (first.exit_code, second.exit_code) == (0, 0)
    assert "Coverage of" not in first.output  # the JSON alone, unless --coverage too
    report = json.loads((project / "build" / "coverage.json").read_text())
    assert report["never_fired"] == ["rentals", "returns"]
    assert report["operands_never_false"] == [
        {"rule": "restock", "pointer": "/and/1", "text": "not data.discontinued | default(false)"}
    ]


def test_coverage_json_never_replaces_another_file_or_writes_through_a_link(project: Path) -> None:
    (project / "notes.json").write_text('{"mine": true}\n')
    (project / "link.json").symlink_to(project / "notes.json")

    other = run("test", "--coverage-json", "notes.json")
    link = run("test", "--coverage-json", "link.json")

    assert (other.exit_code, link.exit_code) == (2, 2)
    assert (
        "cannot write the coverage report: notes.json already exists and is not a coverage report"
        in other.output
    )
    assert "link.json is a symbolic link" in link.output
    assert (project / "notes.json").read_text() == '{"mine": true}\n'


def test_coverage_does_not_change_the_exit_code_of_failing_fixtures(project: Path) -> None:
    (project / "fixtures" / "wrong.yaml").write_text(
        "name: wrong\nevent: item.low_stock\npayload: {data: {quantity: 9, minimum_quantity: 5}}\n"
        "expect: {fired: [restock]}\n"
    )

    result = run("test", "--coverage")

    assert result.exit_code == 1
    assert result.output.splitlines()[-1] == "2 passed, 1 failed"
