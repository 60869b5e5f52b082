"""The `stockaj-rules` command line as a rule author meets it (spec sections 4, 5, 8, 9).

Each test runs the real CLI on small rule and fixture files kept in
`tests/cli/cli_cases/` (see its README), from inside that folder so the paths in
messages read as a person would type them. Most tests go through click's
CliRunner; a few run the installed console script in a subprocess, to see the
exit codes and the absence of tracebacks exactly as a shell does. Cases too big
to keep in the repository (a 10 MB fixture, 1,000 levels of nesting) are
generated in `tmp_path`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from engine.cli.main import cli

CASES = Path(__file__).parent / "cli_cases"

# Configuration that would change what the CLI reads or masks; every run starts without it.
_CONFIG_VARIABLES = (
    "RULES_DIR",
    "SLACK_WEBHOOK_URL",
    "PURCHASE_ORDER_URL",
    "PURCHASE_ORDER_TOKEN",
    "SYNC_DATABASE_URL",
    "STOCKAJ_WEBHOOK_SECRET",
    "STOCKAJ_WEBHOOK_SECRET_PREVIOUS",
)

# `path:line:col: message`: a problem line starts with its location, nothing before it.
_PROBLEM = re.compile(r"(?P<path>[^\s:]+):(?P<line>\d+):(?P<col>\d+): (?P<rest>.*)$")


def _clean_env(extra: dict[str, str] | None = None) -> dict[str, str | None]:
    env: dict[str, str | None] = {name: None for name in _CONFIG_VARIABLES}
    env.update({name: None for name in os.environ if name.startswith("SECRET_")})
    env.update(extra or {})
    return env


def run(*args: str, env: dict[str, str] | None = None) -> Result:
    """Run the CLI in-process; an exception escaping it fails the test (it would be a traceback)."""
    return CliRunner().invoke(cli, list(args), env=_clean_env(env), catch_exceptions=False)


def problems(text: str) -> list[str]:
    """Every line of `text` that is a `file:line:col: ...` problem (a line with a prefix is not)."""
    return [line for line in text.splitlines() if _PROBLEM.match(line)]


def fixture_block(output: str, name: str) -> list[str]:
    """The lines `test` printed for the fixture called `name`, stripped, header first."""
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if re.match(rf"(PASS|FAIL)  {re.escape(name)}  ", line))
    end = next(
        (i for i in range(start + 1, len(lines)) if re.match(r"(PASS|FAIL)  |\d+ passed, ", lines[i])),
        len(lines),
    )
    return [line.strip() for line in lines[start:end]]


def replay_json(*fixtures: str, rules: str = "pack/rules") -> dict[str, Any]:
    result = run("replay", "--rules", rules, "--json", *fixtures)
    assert result.exit_code == 0, result.output
    document: dict[str, Any] = json.loads(result.stdout)
    return document


def rule_result(document: dict[str, Any], fixture: str, rule_id: str) -> dict[str, Any]:
    (result,) = [r for r in document["results"] if r["fixture"] == fixture]
    (rule,) = [r for r in result["rules"] if r["id"] == rule_id]
    found: dict[str, Any] = rule
    return found


@pytest.fixture(autouse=True)
def _in_cases_folder(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(CASES)


# --- check: a good pack ------------------------------------------------------------------


def test_check_accepts_json_and_yaml_rules_in_nested_folders_and_exits_0() -> None:
    result = run("check", "--rules", "pack/rules")

    assert result.exit_code == 0, result.output
    assert result.stdout == "OK: 6 rule(s) in 3 file(s) under pack/rules\n"
    assert result.stderr == ""


def test_check_reads_rules_dir_from_the_environment_when_no_option_is_given() -> None:
    result = run("check", env={"RULES_DIR": "pack/rules"})

    assert result.exit_code == 0, result.output
    assert "OK: 6 rule(s) in 3 file(s)" in result.stdout


def test_check_searches_a_folder_named_like_a_rule_file_instead_of_reading_it(tmp_path: Path) -> None:
    inner = tmp_path / "x.yaml" / "inner.yaml"
    inner.parent.mkdir()
    inner.write_text(
        "id: inner\non: item.updated\nactions:\n  - type: log\n    message: hi\n", encoding="utf-8"
    )

    result = run("check", "--rules", str(tmp_path))

    assert result.exit_code == 0, result.output
    assert "OK: 1 rule(s) in 1 file(s)" in result.stdout


# --- check: each mistake reported at its line, with a hint ---------------------------------


def _check_problems(folder: str) -> list[str]:
    result = run("check", "--rules", f"broken/{folder}")
    assert result.exit_code == 1, result.output
    found = problems(result.stderr)
    files = len({p.split(":", 1)[0] for p in found})
    assert result.stderr.rstrip().endswith(
        f"{len(found)} problem(s) in {files} file(s) under broken/{folder}"
    )
    assert result.stdout == ""
    return found


def test_check_points_at_the_value_a_json_syntax_error_stands_on() -> None:
    (problem,) = _check_problems("json-syntax")

    # `"on": item.updated,` - the unquoted value at column 9 is where JSON stops making sense.
    assert problem.startswith("broken/json-syntax/rule.json:3:9: invalid JSON: ")


def test_check_points_at_the_line_of_a_yaml_indentation_error() -> None:
    (problem,) = _check_problems("yaml-syntax")

    assert problem.startswith("broken/yaml-syntax/rule.yaml:5:13: invalid YAML: ")


def test_check_points_at_a_misspelt_top_level_key_and_suggests_the_right_one() -> None:
    assert _check_problems("unknown-key") == [
        "broken/unknown-key/rule.yaml:3:1: key-typo: unknown key 'whne' (did you mean 'when'?)"
    ]


def test_check_points_at_the_second_of_two_duplicate_ids_and_names_the_first_file() -> None:
    assert _check_problems("duplicate-ids") == [
        "broken/duplicate-ids/more/second.json:3:10: same-id: duplicate rule id: "
        "also defined at broken/duplicate-ids/first.yaml:1; give each rule its own id"
    ]


def test_check_refuses_an_on_that_is_not_a_string() -> None:
    assert _check_problems("on-not-a-string") == [
        "broken/on-not-a-string/rule.yaml:2:5: on-number: "
        "expected an event name such as 'rent.created', or a list of them, found the number 42"
    ]


def test_check_points_at_the_bad_item_of_an_on_list() -> None:
    assert _check_problems("on-list-item") == [
        "broken/on-list-item/rule.yaml:2:20: on-item: expected an event name such as "
        "'rent.created', a prefix such as 'rent.*', or '*', found the text \"item.*.low\""
    ]


def test_check_refuses_an_on_with_a_star_in_the_middle() -> None:
    assert _check_problems("on-star-in-the-middle") == [
        "broken/on-star-in-the-middle/rule.yaml:2:5: on-star: expected an event name such as "
        "'rent.created', a prefix such as 'rent.*', or '*', found the text \"rent.*.created\""
    ]


def test_check_points_at_a_misspelt_action_type_and_suggests_the_right_one() -> None:
    assert _check_problems("unknown-action-type") == [
        "broken/unknown-action-type/rule.yaml:6:11: type-typo: "
        "unknown action type 'slak' (did you mean 'slack'?)"
    ]


def test_check_points_at_a_misspelt_param_and_suggests_the_right_one() -> None:
    assert _check_problems("unknown-param") == [
        "broken/unknown-param/rule.yaml:7:5: param-typo: unknown param 'note' (did you mean 'notes'?)"
    ]


def test_check_refuses_a_quantity_written_as_text() -> None:
    assert _check_problems("quantity-lots") == [
        'broken/quantity-lots/rule.yaml:6:15: lots: expected a whole number, found the text "lots"'
    ]


def test_check_refuses_a_quantity_of_zero() -> None:
    (problem,) = _check_problems("quantity-zero")

    assert problem.startswith("broken/quantity-zero/rule.yaml:6:15: zero: expected ")
    assert "greater than 0" in problem
    assert problem.endswith("found the number 0")


def test_check_points_at_the_line_of_an_unknown_operator_nested_in_yaml() -> None:
    assert _check_problems("unknown-operator-yaml") == [
        "broken/unknown-operator-yaml/rule.yaml:8:11: op-typo: expected a JsonLogic operator, found 'lessthan'"
    ]


def test_check_points_at_the_line_of_an_unknown_operator_nested_in_json() -> None:
    assert _check_problems("unknown-operator-json") == [
        "broken/unknown-operator-json/rule.json:6:6: op-typo: expected a JsonLogic operator, found 'lessthan'"
    ]


def test_check_points_at_the_param_holding_a_jinja_syntax_error() -> None:
    assert _check_problems("jinja-syntax") == [
        "broken/jinja-syntax/rule.yaml:7:11: jinja-typo: template syntax error: unexpected '}'"
    ]


def test_check_refuses_an_empty_actions_list() -> None:
    assert _check_problems("empty-actions") == [
        "broken/empty-actions/rule.yaml:3:10: no-actions: expected at least 1 item, found a list of 0 items"
    ]


def test_check_refuses_a_throttle_window_it_cannot_read() -> None:
    assert _check_problems("bad-throttle") == [
        "broken/bad-throttle/rule.yaml:5:8: throttle-typo: "
        "expected a duration such as '30m', '6h' or '1d', or calendar day, found the text \"2 hours\""
    ]


@pytest.mark.parametrize(
    ("folder", "rule_id", "found"),
    [
        ("url-from-payload", "payload-url", "found {{ data.url }} where the URL starts"),
        ("url-host-from-payload", "payload-host", "found {{ data.host }} before the host ends"),
        # The host part ends at the first `/` outside template tags: here the `/` is inside one.
        (
            "url-host-and-path-in-one-tag",
            "host-and-path",
            "found {{ secrets.CRM_HOST ~ '/items/' ~ data.id }} before the host ends",
        ),
    ],
)
def test_check_refuses_an_http_url_whose_host_comes_from_the_payload(
    folder: str, rule_id: str, found: str
) -> None:
    (problem,) = _check_problems(folder)

    assert problem.startswith(f"broken/{folder}/rule.yaml:5:10: {rule_id}: expected the URL's host written")
    assert found in problem
    assert "'https://crm.example.com/items/{{ data.id }}'" in problem


def test_check_reports_every_problem_of_a_file_in_one_run_in_line_order() -> None:
    assert _check_problems("several-problems") == [
        "broken/several-problems/rules.yaml:4:7: first: missing required param 'message' for action type 'log'",
        "broken/several-problems/rules.yaml:5:3: expected a rule (an object with id, on and actions), "
        "found the number 42",
        "broken/several-problems/rules.yaml:6:7: bad id!: expected an id of letters, digits, '.', '_' and '-' "
        '(starting with a letter or digit), found the text "bad id!"',
        "broken/several-problems/rules.yaml:9:62: bad id!: "
        "expected 'GET', 'POST', 'PUT', 'PATCH' or 'DELETE', found the text \"FETCH\"",
    ]


def test_check_refuses_a_database_url_whose_host_comes_from_the_payload() -> None:
    (problem,) = _check_problems("database-host-from-payload")

    assert problem == (
        "broken/database-host-from-payload/rule.yaml:5:19: payload-database: expected the database URL "
        "written in the rule (or taken from secrets), found {{ data.warehouse }}; write it out "
        "or use {{ secrets.NAME }}, with nothing from the delivery in it"
    )


def test_check_accepts_a_url_host_from_secrets_or_written_out_with_the_rest_from_the_payload() -> None:
    result = run("check", "--rules", "addresses/rules")

    assert result.exit_code == 0, result.output
    assert result.stdout == "OK: 1 rule(s) in 1 file(s) under addresses/rules\n"


_QUOTE_HINT = "quote values that start with {, * or & (write \"{{ data.id }}\", '*')"


def test_check_hints_at_quotes_for_an_unquoted_template() -> None:
    assert _check_problems("yaml-unquoted-template") == [
        f"broken/yaml-unquoted-template/rule.yaml:5:15: invalid YAML: found unhashable key; {_QUOTE_HINT}"
    ]


def test_check_hints_at_quotes_for_an_unquoted_star() -> None:
    (problem,) = _check_problems("yaml-unquoted-star")

    assert re.fullmatch(
        r"broken/yaml-unquoted-star/rule\.yaml:2:\d+: invalid YAML: "
        r"did not find expected alphabetic or numeric character; " + re.escape(_QUOTE_HINT),
        problem,
    )


def test_check_reports_an_unclosed_quote_where_it_opens() -> None:
    assert _check_problems("yaml-unclosed-quote") == [
        "broken/yaml-unclosed-quote/rule.yaml:5:14: invalid YAML: a quoted scalar is never closed"
    ]


def test_check_reports_a_json_trailing_comma_at_the_comma() -> None:
    assert _check_problems("json-trailing-comma") == [
        "broken/json-trailing-comma/rule.json:3:42: invalid JSON: a comma before ']'; remove the trailing comma"
    ]


def test_check_refuses_nan_in_json_at_its_place() -> None:
    assert _check_problems("json-nan") == [
        "broken/json-nan/rule.json:4:44: invalid JSON: NaN is not a JSON number; write a number or null"
    ]


def test_check_suggests_the_keys_of_the_nested_object_for_a_misspelt_nested_key() -> None:
    assert _check_problems("throttle-key-typo") == [
        "broken/throttle-key-typo/rule.yaml:3:11: throttle-pre: missing required key 'per'",
        "broken/throttle-key-typo/rule.yaml:3:34: throttle-pre: unknown key 'pre' (did you mean 'per'?)",
    ]


@pytest.mark.parametrize("command", ["check", "test", "replay"])
def test_a_problem_line_starts_with_file_line_and_column(command: str) -> None:
    fixtures = [] if command == "check" else ["pack/fixtures/small-rental.json"]

    result = run(command, "--rules", "broken/unknown-param", *fixtures)

    assert result.stderr.splitlines()[0] == (
        "broken/unknown-param/rule.yaml:7:5: param-typo: unknown param 'note' (did you mean 'notes'?)"
    )


# --- check: bad input ----------------------------------------------------------------------


def test_check_of_a_missing_rules_folder_says_so_and_exits_1() -> None:
    result = run("check", "--rules", "no-such-folder")

    assert result.exit_code == 1
    (problem,) = problems(result.stderr)
    assert problem.startswith("no-such-folder:")
    assert problem.endswith("rules folder not found; create it or set RULES_DIR")


def test_check_of_an_empty_rules_folder_warns_that_it_found_no_rule_files(tmp_path: Path) -> None:
    result = run("check", "--rules", str(tmp_path))

    assert f"no rule files (*.json, *.yaml, *.yml) found under {tmp_path}" in result.stderr
    assert "OK: 0 rule(s) in 0 file(s)" in result.stdout


def test_check_refuses_a_rule_file_that_is_not_utf8(tmp_path: Path) -> None:
    (tmp_path / "latin1.yaml").write_bytes(
        b'id: cafe\non: item.updated\nactions:\n  - type: log\n    message: "caf\xe9"\n'
    )

    result = run("check", "--rules", str(tmp_path))

    assert result.exit_code == 1
    # The byte is on line 5, column 18: `    message: "caf` is 17 characters.
    assert problems(result.stderr) == [
        f"{tmp_path / 'latin1.yaml'}:5:18: expected UTF-8 text, found the byte 0xe9; save the file as UTF-8"
    ]


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root reads any file")
def test_check_reports_an_unreadable_rule_file(tmp_path: Path) -> None:
    unreadable = tmp_path / "secret.yaml"
    unreadable.write_text("id: a\non: x\nactions: [{type: log, message: m}]\n", encoding="utf-8")
    unreadable.chmod(0)
    try:
        result = run("check", "--rules", str(tmp_path))
    finally:
        unreadable.chmod(0o600)

    assert result.exit_code == 1
    assert problems(result.stderr) == [f"{unreadable}:1:1: cannot read the file: Permission denied"]


def _nested_condition(levels: int) -> str:
    condition = '{"==": [1, 1]}'
    for _ in range(levels):
        condition = '{"and": [' + condition + "]}"
    return condition


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_check_refuses_a_condition_nested_1000_levels_deep_without_a_traceback(
    tmp_path: Path, suffix: str
) -> None:
    rule = tmp_path / f"deep{suffix}"
    condition = _nested_condition(1000)
    if suffix == ".json":
        rule.write_text(
            '{"id": "deep", "on": "item.updated", "when": ' + condition + ', "actions": '
            '[{"type": "log", "message": "x"}]}\n',
            encoding="utf-8",
        )
    else:
        rule.write_text(
            f"id: deep\non: item.updated\nwhen: {condition}\nactions:\n  - type: log\n    message: x\n",
            encoding="utf-8",
        )

    started = time.monotonic()
    result = run("check", "--rules", str(tmp_path))

    assert time.monotonic() - started < 10
    assert result.exit_code == 1
    (problem,) = problems(result.stderr)
    assert problem.startswith(f"{rule}:")
    assert "nest" in problem.lower()


# --- test -----------------------------------------------------------------------------------


def test_test_passes_every_fixture_of_the_pack_and_exits_0() -> None:
    result = run("test", "--rules", "pack/rules", "pack/fixtures")

    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[-1] == "6 passed, 0 failed"
    headers = [line for line in result.stdout.splitlines() if line.startswith(("PASS", "FAIL"))]
    assert [h.split("  ")[1] for h in headers] == [
        "low tent is reordered",
        "same tent an hour later is throttled",
        "a delivery without quantity does not reorder",
        "lights are not reordered",
        "big rental for a renter with a template-like name",
        "pack/fixtures/small-rental.json#0",
    ]
    assert all(h.startswith("PASS") for h in headers)


def test_test_reads_fixtures_from_the_fixtures_folder_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(CASES / "pack")

    result = run("test", "--rules", "rules")

    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[-1] == "6 passed, 0 failed"


def test_test_lists_only_fired_rules_for_a_passing_fixture_and_counts_the_rest() -> None:
    result = run("test", "--rules", "pack/rules", "pack/fixtures/items/low-stock.yaml")

    throttled = fixture_block(result.stdout, "same tent an hour later is throttled")
    assert "· 2 other rule(s) for this event did not fire (-v shows why)" in throttled
    assert "reorder-tents" not in throttled


def test_test_verbose_says_why_a_rule_did_not_fire_for_each_fixture() -> None:
    result = run("test", "--rules", "pack/rules", "-v", "pack/fixtures/items/low-stock.yaml")

    throttled = fixture_block(result.stdout, "same tent an hour later is throttled")
    assert (
        "· reorder-tents     throttled: key 'TENT-4P' already fired at 2026-03-01T09:00:00+00:00 "
        "(at most once per 6h)"
    ) in throttled
    assert "· switched-off      disabled: the rule has enabled: false" in throttled
    assert (
        "· reorder-tents     data.quantity is missing from the delivery, so the condition does not fire; "
        'a default would not help: with {"var": ["data.quantity", 0]} the rule would fire on this delivery, '
        "and so on others without data.quantity. Leave it without a default unless that is meant"
    ) in fixture_block(result.stdout, "a delivery without quantity does not reorder")
    assert (
        "· reorder-tents     (data.quantity (1) <= data.minimum_quantity (5) -> true) and "
        '(data.category ("lights") in ["tents", "chairs"] -> false) -> false'
    ) in fixture_block(result.stdout, "lights are not reordered")


def test_test_hides_rules_for_other_events_unless_verbose() -> None:
    quiet = run("test", "--rules", "pack/rules", "pack/fixtures/rent-created.json")
    verbose = run("test", "--rules", "pack/rules", "-v", "pack/fixtures/rent-created.json")

    assert quiet.exit_code == verbose.exit_code == 0
    assert "· 3 other rule(s) are not for this event" in quiet.stdout
    assert "reorder-tents" not in quiet.stdout
    assert "other rule(s) are not for this event" not in verbose.stdout
    assert "· reorder-tents     event rent.created does not match on: item.low_stock" in fixture_block(
        verbose.stdout, "big rental for a renter with a template-like name"
    )


def test_test_fails_a_param_of_the_right_value_but_the_wrong_type_showing_expected_and_actual() -> None:
    result = run("test", "--rules", "pack/rules", "failing")

    assert result.exit_code == 1
    assert fixture_block(result.stdout, "quantity expected as text but sent as a number")[:4] == [
        "FAIL  quantity expected as text but sent as a number  "
        "(failing/wrong-expectations.yaml, event item.low_stock)",
        "✗ reorder-tents: a purchase_order action with these params",
        'expected: quantity: "7"',
        'actual:   item_sku: "TENT-4P", quantity: 7, notes: "Reorder Tent (was 3)"',
    ]


def test_test_shows_the_evaluated_condition_of_a_rule_that_should_have_fired() -> None:
    result = run("test", "--rules", "pack/rules", "failing")

    assert fixture_block(result.stdout, "stock above minimum expected to reorder")[1:7] == [
        "✗ reorder-tents should fire",
        "expected: fired",
        "actual:   did not fire: (data.quantity (9) <= data.minimum_quantity (5) -> false) and "
        '(data.category in ["tents", "chairs"]) -> false',
        "✗ sync-items should not fire",
        "expected: not fired",
        'actual:   fired: (data.quantity (9) > 0 -> true) or (missing("data.quantity")) -> true',
    ]


def test_test_suggests_the_rule_a_fixture_misspelt() -> None:
    result = run("test", "--rules", "pack/rules", "failing")

    assert fixture_block(result.stdout, "misspelt rule id")[1] == (
        "✗ no rule has the id 'sync-item' (did you mean 'sync-items'?)"
    )


def test_test_counts_passes_and_failures_and_exits_1_on_a_failure() -> None:
    result = run("test", "--rules", "pack/rules", "failing")

    assert result.exit_code == 1
    assert fixture_block(result.stdout, "this one passes")[0].startswith("PASS")
    assert result.stdout.splitlines()[-1] == "1 passed, 3 failed"


def test_test_writes_junit_with_one_testcase_per_fixture_and_the_failure_details(tmp_path: Path) -> None:
    report = tmp_path / "reports" / "rules.xml"

    result = run("test", "--rules", "pack/rules", "--junit", str(report), "failing")

    assert result.exit_code == 1
    suite = ET.parse(report).getroot()
    assert suite.attrib == {"name": "stockaj-rules", "tests": "4", "failures": "3", "errors": "0"}
    cases = {case.attrib["name"]: case for case in suite.iter("testcase")}
    assert list(cases) == [
        "quantity expected as text but sent as a number",
        "stock above minimum expected to reorder",
        "misspelt rule id",
        "this one passes",
    ]
    assert {case.attrib["classname"] for case in cases.values()} == {"failing/wrong-expectations.yaml"}
    failure = cases["quantity expected as text but sent as a number"].find("failure")
    assert failure is not None
    assert failure.attrib["message"] == "reorder-tents: a purchase_order action with these params"
    assert failure.text is not None
    assert '  expected: quantity: "7"' in failure.text.splitlines()
    assert cases["this one passes"].find("failure") is None


def test_test_junit_lists_a_broken_fixture_as_an_error(tmp_path: Path) -> None:
    report = tmp_path / "rules.xml"

    result = run("test", "--rules", "pack/rules", "--junit", str(report), "bad_fixtures/no-payload.yaml")

    assert result.exit_code == 2
    suite = ET.parse(report).getroot()
    assert suite.attrib["errors"] == "1"
    error = suite.find("testcase/error")
    assert error is not None
    assert (
        "bad_fixtures/no-payload.yaml:1:1: no payload: missing required key 'payload'"
        in error.attrib["message"]
    )


@pytest.mark.parametrize(
    ("fixture", "expected"),
    [
        (
            "bad_fixtures/no-event.yaml",
            [
                "bad_fixtures/no-event.yaml:1:1: no event anywhere: missing the event: "
                'add "event": "item.low_stock" (or the payload\'s "event")'
            ],
        ),
        (
            "bad_fixtures/no-payload.yaml",
            ["bad_fixtures/no-payload.yaml:1:1: no payload: missing required key 'payload'"],
        ),
        (
            "bad_fixtures/payload-not-object.json",
            [
                "bad_fixtures/payload-not-object.json:1:67: payload is a list: "
                "expected an object, found a list of 3 items"
            ],
        ),
        (
            "bad_fixtures/not-fixtures.json",
            [
                "bad_fixtures/not-fixtures.json:1:2: "
                "expected a fixture (an object with event and payload), found the number 1",
                "bad_fixtures/not-fixtures.json:1:5: "
                'expected a fixture (an object with event and payload), found the text "two"',
                "bad_fixtures/not-fixtures.json:1:12: "
                "expected a fixture (an object with event and payload), found null",
            ],
        ),
    ],
    ids=["without-event", "without-payload", "payload-not-an-object", "not-fixture-objects"],
)
def test_test_and_replay_locate_a_broken_fixture_and_exit_2(fixture: str, expected: list[str]) -> None:
    tested = run("test", "--rules", "pack/rules", fixture)
    replayed = run("replay", "--rules", "pack/rules", fixture)

    assert tested.exit_code == 2
    assert problems(tested.stderr) == expected
    assert tested.stdout.splitlines()[-1] == f"0 passed, 0 failed, {len(expected)} fixture problem(s)"
    assert replayed.exit_code == 2
    assert problems(replayed.stderr) == expected
    assert replayed.stdout == ""


def test_test_points_at_a_misspelt_expectation_key() -> None:
    result = run("test", "--rules", "pack/rules", "bad_fixtures/expect-typo.yaml")

    assert result.exit_code == 2
    assert problems(result.stderr) == [
        "bad_fixtures/expect-typo.yaml:5:3: typo in expect: unknown key 'fird' (did you mean 'fired'?)"
    ]


def test_test_still_runs_the_good_fixtures_next_to_a_broken_one() -> None:
    result = run(
        "test", "--rules", "pack/rules", "pack/fixtures/small-rental.json", "bad_fixtures/no-payload.yaml"
    )

    assert result.exit_code == 2
    assert result.stdout.splitlines()[-1] == "1 passed, 0 failed, 1 fixture problem(s)"


def test_test_of_a_fixtures_path_that_does_not_exist_exits_2() -> None:
    result = run("test", "--rules", "pack/rules", "no-such-fixtures.yaml")

    assert result.exit_code == 2
    (problem,) = problems(result.stderr)
    assert problem.startswith("no-such-fixtures.yaml:")
    assert problem.endswith("no such file or folder")


def test_test_with_no_fixtures_at_all_says_where_it_looked_and_exits_2(tmp_path: Path) -> None:
    result = run("test", "--rules", "pack/rules", str(tmp_path))

    assert result.exit_code == 2
    assert "no fixtures found" in result.stderr


def test_test_with_broken_rules_exits_2_and_lists_the_rule_problems() -> None:
    result = run("test", "--rules", "broken/unknown-action-type", "pack/fixtures")

    assert result.exit_code == 2
    assert problems(result.stderr) == [
        "broken/unknown-action-type/rule.yaml:6:11: type-typo: unknown action type 'slak' (did you mean 'slack'?)"
    ]
    assert "stockaj-rules check" in result.stderr
    assert result.stdout == ""


def test_test_with_a_missing_rules_folder_exits_2() -> None:
    result = run("test", "--rules", "no-such-folder", "pack/fixtures")

    assert result.exit_code == 2
    assert "rules folder not found" in result.stderr


def test_test_with_an_unknown_option_is_a_usage_error_with_exit_2() -> None:
    result = run("test", "--rules", "pack/rules", "--bogus")

    assert result.exit_code == 2
    assert "No such option '--bogus'" in result.stderr


def _junit_run(report: Path) -> Result:
    return run("test", "--rules", "pack/rules", "--junit", str(report), "pack/fixtures/small-rental.json")


@pytest.mark.parametrize("dangling", [False, True], ids=["to a file", "dangling"])
def test_test_junit_never_writes_through_a_symbolic_link(tmp_path: Path, dangling: bool) -> None:
    victim = tmp_path / "victim.txt"
    if not dangling:
        victim.write_text("precious\n", encoding="utf-8")
    report = tmp_path / "reports" / "rules.xml"
    report.parent.mkdir()
    report.symlink_to(victim)

    result = _junit_run(report)

    assert result.exit_code == 2
    assert result.stderr.splitlines()[-1] == (
        f"cannot write the JUnit report: {report} is a symbolic link: it is not written through; "
        "give another --junit path, or remove what is there"
    )
    assert report.is_symlink()
    assert victim.read_text(encoding="utf-8") == "precious\n" if not dangling else not victim.exists()
    assert sorted(p.name for p in report.parent.iterdir()) == ["rules.xml"]


def test_test_junit_replaces_its_own_previous_report_and_an_empty_file(tmp_path: Path) -> None:
    report = tmp_path / "rules.xml"
    report.touch()  # e.g. made by mktemp in a CI script

    first = _junit_run(report)
    second = _junit_run(report)

    assert (first.exit_code, second.exit_code) == (0, 0), second.output
    assert ET.parse(report).getroot().attrib["tests"] == "1"
    assert [p.name for p in tmp_path.iterdir()] == ["rules.xml"], "no temporary file is left behind"


def test_test_junit_refuses_to_replace_a_file_that_is_not_its_report(tmp_path: Path) -> None:
    notes = tmp_path / "notes.xml"
    notes.write_text("<notes>my own file</notes>\n", encoding="utf-8")

    result = _junit_run(notes)

    assert result.exit_code == 2
    assert result.stderr.splitlines()[-1] == (
        f"cannot write the JUnit report: {notes} already exists and is not a JUnit report of "
        "stockaj-rules; give another --junit path, or remove what is there"
    )
    assert notes.read_text(encoding="utf-8") == "<notes>my own file</notes>\n"


def test_test_with_an_unwritable_junit_path_says_so_in_one_line_and_exits_2(tmp_path: Path) -> None:
    not_a_folder = tmp_path / "reports"
    not_a_folder.write_text("a file where a folder should be", encoding="utf-8")
    report = not_a_folder / "rules.xml"

    result = run("test", "--rules", "pack/rules", "--junit", str(report), "pack/fixtures/small-rental.json")

    assert result.exit_code == 2
    (line,) = result.stderr.splitlines()
    # The reason is the system's (creating the folder `reports` fails: "File exists").
    assert line.startswith(f"cannot write the JUnit report to {report}: ")
    assert line.endswith("; give another --junit path")
    assert "Traceback" not in result.output


def test_test_with_an_empty_rules_folder_warns_that_no_rules_loaded(tmp_path: Path) -> None:
    result = run("test", "--rules", str(tmp_path), "pack/fixtures/small-rental.json")

    assert result.stderr == f"warning: no rules loaded from {tmp_path}\n"


def test_test_treats_7_and_7_0_as_the_same_json_number() -> None:
    result = run("test", "--rules", "numbers/rules", "numbers/fixtures/same-number.yaml")

    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[-1] == "1 passed, 0 failed"


def test_test_still_tells_true_from_1() -> None:
    result = run("test", "--rules", "numbers/rules", "numbers/fixtures/true-is-not-1.yaml")

    assert result.exit_code == 1
    assert fixture_block(result.stdout, "true is not 1")[1:4] == [
        "✗ fixed-order: a http action with these params",
        'expected: json: {"urgent": 1}',
        'actual:   url: "https://crm.example.com/orders", json: {"urgent": true, "count": 1}, timeout: 5.0',
    ]


def test_test_accepts_urls_made_from_unset_secrets_in_a_dry_run() -> None:
    result = run("test", "--rules", "addresses/rules", "addresses/fixture.yaml")

    assert result.exit_code == 0, result.output
    assert fixture_block(result.stdout, "addresses from secrets")[2:] == [
        '→ http  url: "https://***/items/42"',
        '→ http  url: "***/items/42"',
        '→ http  url: "***"',
        '→ http  url: "https://crm.example.com?item=42"',
    ]


def test_test_still_checks_a_url_secret_that_is_set() -> None:
    result = run(
        "test",
        "--rules",
        "addresses/rules",
        "addresses/fixture.yaml",
        env={"SECRET_CRM_HOOK_URL": "ftp://files.example.com/drop"},
    )

    assert result.exit_code == 1
    assert fixture_block(result.stdout, "addresses from secrets")[1] == (
        "✗ crm-addresses: actions[2] (http): expected an http:// or https:// URL with a host, "
        "found the scheme ftp:"
    )


def test_test_handles_a_10_mb_fixture_in_seconds(tmp_path: Path) -> None:
    items = [{"sku": f"SKU-{i}", "qty": i % 20, "note": "x" * 60} for i in range(110_000)]
    fixture = {
        "name": "ten megabytes of rental",
        "event": "rent.created",
        "payload": {"event": "rent.created", "data": {"id": 1, "renter": {"name": "Big"}, "items": items}},
        "expect": {
            "fired": ["big-rental-slack"],
            "actions": [
                {"rule": "big-rental-slack", "params": {"text": "Big rental #1 for *Big*: 110000 lines"}}
            ],
        },
    }
    path = tmp_path / "big.json"
    path.write_text(json.dumps(fixture), encoding="utf-8")
    assert path.stat().st_size > 10 * 1024 * 1024

    started = time.monotonic()
    result = run("test", "--rules", "pack/rules", str(path))

    assert time.monotonic() - started < 30
    assert result.exit_code == 0, result.output[-2000:]
    assert result.stdout.splitlines()[-1] == "1 passed, 0 failed"


def test_test_refuses_a_fixture_over_the_size_limit_with_a_clear_line(tmp_path: Path) -> None:
    path = tmp_path / "huge.json"
    path.write_text(
        json.dumps({"event": "item.updated", "payload": {"data": {"blob": "x" * (17 * 1024 * 1024)}}}),
        encoding="utf-8",
    )

    result = run("test", "--rules", "pack/rules", str(path))

    assert result.exit_code == 2
    (problem,) = problems(result.stderr)
    assert problem.startswith(f"{path}:1:1: file is ")
    assert "more than the 16,777,216 allowed; split it into several files" in problem


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_test_refuses_a_payload_nested_1000_levels_deep_without_a_traceback(
    tmp_path: Path, suffix: str
) -> None:
    data = '{"x": 1}'
    for _ in range(1000):
        data = '{"a": ' + data + "}"
    path = tmp_path / f"deep{suffix}"
    if suffix == ".json":
        path.write_text('{"event": "item.updated", "payload": {"data": ' + data + "}}", encoding="utf-8")
    else:
        path.write_text(f"event: item.updated\npayload:\n  data: {data}\n", encoding="utf-8")

    result = run("test", "--rules", "pack/rules", str(path))

    assert result.exit_code == 2
    (problem,) = problems(result.stderr)
    assert problem.startswith(f"{path}:")
    assert "nest" in problem.lower()


# --- replay ---------------------------------------------------------------------------------


def test_replay_json_has_one_result_per_fixture_listing_every_loaded_rule() -> None:
    document = replay_json("pack/fixtures/rent-created.json", "pack/fixtures/small-rental.json")

    assert list(document) == ["results"]
    results = document["results"]
    assert [(r["fixture"], r["file"], r["event"]) for r in results] == [
        (
            "big rental for a renter with a template-like name",
            "pack/fixtures/rent-created.json",
            "rent.created",
        ),
        ("pack/fixtures/small-rental.json#0", "pack/fixtures/small-rental.json", "rent.created"),
    ]
    for result in results:
        assert [rule["id"] for rule in result["rules"]] == [
            "sync-items",
            "crm-notify",
            "reorder-tents",
            "big-rental-slack",
            "rental-log",
            "switched-off",
        ]
        for rule in result["rules"]:
            assert {"id", "fired", "reason", "actions"} <= set(rule)
            assert isinstance(rule["fired"], bool)
            assert isinstance(rule["reason"], str)
            assert rule["reason"]
            for action in rule["actions"]:
                assert {"type", "params"} <= set(action)


def test_replay_json_keeps_native_types_of_single_expression_params() -> None:
    document = replay_json("pack/fixtures/items/low-stock.yaml")
    fixture = "low tent is reordered"

    (order, _slack) = rule_result(document, fixture, "reorder-tents")["actions"]
    assert order["type"] == "purchase_order"
    assert order["params"] == {
        "item_sku": "TENT-4P",
        "quantity": 7,
        "notes": "Reorder Tent <4p> & co (was 3)",
    }
    assert type(order["params"]["quantity"]) is int
    (upsert,) = rule_result(document, fixture, "sync-items")["actions"]
    assert upsert["params"] == {
        "table": "inventory",
        "key": {"stockaj_id": 42},
        "values": {"name": "Tent <4p> & co", "qty": 3, "synced": True},
    }
    (call,) = rule_result(document, fixture, "crm-notify")["actions"]
    assert call["params"]["url"] == "https://crm.example.com/items/42"
    assert call["params"]["json"] == {"id": 42, "name": "Tent <4p> & co", "label": "item 42"}
    assert call["params"]["timeout"] == 5.0
    assert type(call["params"]["timeout"]) is float  # as validated: the float param written as 5
    assert call["params"]["expect_status"] == [200, 204]


def test_replay_escapes_interpolated_values_in_slack_text_but_not_the_literal_text() -> None:
    document = replay_json("pack/fixtures/items/low-stock.yaml")

    (_, slack) = rule_result(document, "low tent is reordered", "reorder-tents")["actions"]
    assert slack["type"] == "slack"
    # The rule's own `<...|PO list>` link and `&` stay; the payload's `<4p> & co` is escaped.
    assert slack["params"] == {
        "text": "Reordered <Tent &lt;4p&gt; &amp; co> & more, see <https://po.example.com|PO list>"
    }


def test_replay_sends_a_template_in_payload_data_as_literal_text() -> None:
    document = replay_json("pack/fixtures/rent-created.json")
    fixture = "big rental for a renter with a template-like name"

    (slack,) = rule_result(document, fixture, "big-rental-slack")["actions"]
    assert slack["params"]["text"] == "Big rental #7 for *{{ 7*7 }} &lt;@U123&gt; &amp; Co*: 2 lines"
    (log,) = rule_result(document, fixture, "rental-log")["actions"]
    assert log["params"]["message"] == "rent.created 7 by {{ 7*7 }} <@U123> & Co"
    assert "49" not in json.dumps(document)


def test_replay_counts_items_with_the_length_filter_not_the_dict_method() -> None:
    document = replay_json("pack/fixtures/small-rental.json", "pack/fixtures/rent-created.json")

    (slack,) = rule_result(document, "big rental for a renter with a template-like name", "big-rental-slack")[
        "actions"
    ]
    assert slack["params"]["text"].endswith(": 2 lines")


def test_replay_names_the_missing_field_when_a_condition_does_not_fire() -> None:
    document = replay_json("pack/fixtures/items/low-stock.yaml")

    rule = rule_result(document, "a delivery without quantity does not reorder", "reorder-tents")
    assert rule["fired"] is False
    assert rule["actions"] == []
    assert rule["reason"] == (
        "data.quantity is missing from the delivery, so the condition does not fire; "
        'a default would not help: with {"var": ["data.quantity", 0]} the rule would fire on this delivery, '
        "and so on others without data.quantity. Leave it without a default unless that is meant"
    )


def test_replay_uses_a_var_default_for_a_missing_field() -> None:
    document = replay_json("pack/fixtures/items/low-stock.yaml")

    rule = rule_result(document, "a delivery without quantity does not reorder", "sync-items")
    assert rule["fired"] is True
    assert rule["actions"][0]["params"]["values"]["qty"] == 0


def test_replay_shows_the_condition_with_the_values_it_saw() -> None:
    document = replay_json("pack/fixtures/small-rental.json")

    rule = rule_result(document, "pack/fixtures/small-rental.json#0", "big-rental-slack")
    assert rule["fired"] is False
    assert rule["reason"] == "some(data.items, (qty (1) >= 10 -> false)) -> false"


def test_replay_text_lists_each_rule_verdict_and_the_rendered_actions() -> None:
    result = run("replay", "--rules", "pack/rules", "pack/fixtures/small-rental.json")

    assert result.exit_code == 0, result.output
    lines = [line.strip() for line in result.stdout.splitlines() if line.strip()]
    assert lines[0].startswith(
        "pack/fixtures/small-rental.json#0  (pack/fixtures/small-rental.json, event rent.created"
    )
    assert "· big-rental-slack  some(data.items, (qty (1) >= 10 -> false)) -> false" in lines
    assert "✓ rental-log        fired: no condition: fires on every matching event" in lines
    assert '→ log  message: "rent.created 8 by Ann"' in lines


def test_replay_shows_params_as_they_will_be_sent() -> None:
    result = run("replay", "--rules", "numbers/rules", "numbers/fixtures/same-number.yaml")

    assert result.exit_code == 0, result.output
    lines = [line.strip() for line in result.stdout.splitlines()]
    # `quantity: "7"` is sent as the number 7, the float `timeout: 5` as 5.0.
    assert '→ purchase_order  item_sku: "LANTERN", quantity: 7' in lines
    assert (
        '→ http  url: "https://crm.example.com/orders", json: {"urgent": true, "count": 1}, timeout: 5.0'
        in lines
    )


def _template_actions(rule_id: str) -> list[dict[str, Any]]:
    document = replay_json("templates/fixture.yaml", rules="templates/rules")
    actions: list[dict[str, Any]] = rule_result(document, "an item update", rule_id)["actions"]
    return actions


def test_replay_writes_now_inside_text_as_iso_8601() -> None:
    (log,) = _template_actions("now-in-text")

    assert log["params"] == {"message": "Processed at 2026-03-03T12:00:00+00:00"}


def test_replay_applies_the_wordwrap_and_truncate_filters() -> None:
    wrapped, cut = _template_actions("wrap-and-cut")

    assert wrapped["params"] == {"message": "Please handle the\nbig tent with care"}
    assert cut["params"] == {"message": "Please handle..."}


def test_replay_escapes_interpolated_values_in_slack_blocks_like_text() -> None:
    (slack,) = _template_actions("slack-blocks")

    assert slack["params"] == {
        "text": "Tent &lt;!channel&gt; &amp; co changed",
        "blocks": [
            {
                "type": "section",
                "text": {"type": "mrkdwn", "text": "*Tent &lt;!channel&gt; &amp; co* changed"},
            }
        ],
    }


def test_replay_stops_a_percent_format_width_over_the_limit() -> None:
    width, _ = _template_actions("runaway")

    assert width["error"] == (
        "actions[0] (log) param message: template stopped: the % format asks for widths and precisions "
        "of 50,000,000 characters, over the 1,000,000 limit"
    )


def test_replay_refuses_single_expression_text_over_the_limit() -> None:
    _, text = _template_actions("runaway")

    assert text["error"] == (
        "actions[1] (log) param message: template stopped: joining texts with ~ would make "
        "1,000,001 characters, over the 1,000,000 limit"
    )


def test_replay_says_which_operator_met_a_value_that_is_not_a_number() -> None:
    document = replay_json("conditions/fixture.yaml", rules="conditions/rules")

    rule = rule_result(document, "per box written as words", "few-pieces")
    assert (rule["fired"], rule["status"]) == (False, "error")
    assert rule["reason"] == (
        "condition could not be evaluated in '*': "
        "a value is not a number (text or a missing value where a number is needed), or a division by zero"
    )


def test_replay_masks_secret_values_in_rendered_params() -> None:
    token = "tok-supersecret-123"

    text = run("replay", "--rules", "secrets/rules", "secrets/fixture.yaml", env={"SECRET_CRM_TOKEN": token})
    as_json = run(
        "replay",
        "--rules",
        "secrets/rules",
        "--json",
        "secrets/fixture.yaml",
        env={"SECRET_CRM_TOKEN": token},
    )

    assert text.exit_code == as_json.exit_code == 0
    assert token not in text.output
    assert token not in as_json.output
    (action,) = json.loads(as_json.stdout)["results"][0]["rules"][0]["actions"]
    assert action["params"]["headers"] == {"Authorization": "Bearer ***"}


def test_replay_of_a_fixture_path_that_does_not_exist_exits_2() -> None:
    result = run("replay", "--rules", "pack/rules", "no-such-fixture.json")

    assert result.exit_code == 2
    assert problems(result.stderr)[0].startswith("no-such-fixture.json:")


def test_replay_with_broken_rules_exits_2() -> None:
    result = run("replay", "--rules", "broken/jinja-syntax", "pack/fixtures/small-rental.json")

    assert result.exit_code == 2
    assert problems(result.stderr) == [
        "broken/jinja-syntax/rule.yaml:7:11: jinja-typo: template syntax error: unexpected '}'"
    ]


def test_replay_without_a_fixture_is_a_usage_error_with_exit_2() -> None:
    result = run("replay", "--rules", "pack/rules")

    assert result.exit_code == 2
    assert "Missing argument 'FIXTURES...'" in result.stderr


# --- through the installed console script -------------------------------------------------


def _console_script() -> str:
    found = shutil.which("stockaj-rules", path=str(Path(sys.executable).parent))
    if found is None:
        pytest.fail("the stockaj-rules console script is not installed next to this Python")
    return found


def _shell(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environment = {
        k: v for k, v in os.environ.items() if k not in _CONFIG_VARIABLES and not k.startswith("SECRET_")
    }
    environment.update(env or {})
    return subprocess.run(
        [_console_script(), *args],
        cwd=CASES,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_console_script_exit_codes_follow_the_spec() -> None:
    assert _shell("check", "--rules", "pack/rules").returncode == 0
    assert _shell("check", "--rules", "broken/unknown-param").returncode == 1
    assert _shell("test", "--rules", "pack/rules", "pack/fixtures").returncode == 0
    assert _shell("test", "--rules", "pack/rules", "failing").returncode == 1
    assert _shell("test", "--rules", "broken/unknown-param", "pack/fixtures").returncode == 2
    assert _shell("replay", "--rules", "pack/rules", "pack/fixtures/rent-created.json").returncode == 0
    assert _shell("replay", "--rules", "pack/rules", "bad_fixtures/no-event.yaml").returncode == 2


def test_console_script_never_shows_a_traceback_for_bad_rules_or_fixtures() -> None:
    runs = [
        _shell("check", "--rules", "broken/yaml-syntax"),
        _shell("check", "--rules", "no-such-folder"),
        _shell("test", "--rules", "pack/rules", "bad_fixtures"),
        _shell("replay", "--rules", "pack/rules", "bad_fixtures/payload-not-object.json"),
    ]

    for completed in runs:
        assert "Traceback" not in completed.stderr, completed.stderr
        assert completed.returncode in (1, 2)


def test_console_script_reports_bad_configuration_in_one_line_with_exit_2() -> None:
    completed = _shell("check", "--rules", "pack/rules", env={"MAX_BODY_BYTES": "lots"})

    assert completed.returncode == 2
    assert completed.stdout == ""
    assert completed.stderr.count("\n") == 1
    assert completed.stderr.startswith("configuration error: MAX_BODY_BYTES: ")
    assert "fix MAX_BODY_BYTES in the environment" in completed.stderr


# --- what the CLI prints about broken files is masked, and confined to the rules folder ----------


# Short enough to be quoted whole where a broken file is (the start of a value is).
SLACK_HOOK = "https://h.example/T1/B1/XXXXXXXXXXXXXX"


def test_check_never_prints_a_secret_value_a_broken_file_quotes(tmp_path: Path) -> None:
    rules = tmp_path / "rules"
    rules.mkdir()
    # An env file copied into the rules folder by mistake: the loader quotes what it found.
    (rules / "env.yaml").write_text("crm-token-7f3a9c-live\n")
    # A secret by the kind the slack action declares it as, not by its name.
    (rules / "hook.yaml").write_text(f"{SLACK_HOOK}\n")
    (rules / "bad.yaml").write_text(
        "id: r\non: item.updated\nactions: [{type: slak, text: whsec-live-1234-5678}]\n"
    )
    env = {
        "SECRET_CRM_TOKEN": "crm-token-7f3a9c-live",
        "STOCKAJ_WEBHOOK_SECRET": "whsec-live-1234-5678",
        "SLACK_WEBHOOK_URL": SLACK_HOOK,
    }
    for command in (["check"], ["test"], ["replay", "fixtures-none.json"]):
        result = run(*command, "--rules", str(rules), env=env)
        assert result.exit_code != 0
        assert "crm-token-7f3a9c-live" not in result.output
        assert "whsec-live-1234-5678" not in result.output
        assert "T1/B1/XXXXXXXX" not in result.output
        assert f"{rules}/hook.yaml:1:1: " in result.output
        assert f"{rules}/env.yaml:1:1: " in result.output
        assert "***" in result.output


def test_check_refuses_a_rule_file_that_links_outside_the_rules_folder(tmp_path: Path) -> None:
    outside = tmp_path / "passwd"
    outside.write_text("root:x:0:0:root:/root:/bin/bash\n")
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "users.yaml").symlink_to(outside)
    result = run("check", "--rules", str(rules))
    assert result.exit_code == 1
    [problem] = problems(result.stderr)
    assert problem.startswith(f"{rules}/users.yaml:1:1: this link leads to the file ")
    assert "outside the rules folder" in problem
    assert "root:x" not in result.output
